"""The translator kinds (`translate.kind`), one registry: `safetune list` prints it, `build_translator`
builds one, `parse_translator` reads the `--translator [KIND:]MODEL` option.

`auto` reads the model's files (no weights): a decoder-only model is `chat`; an encoder-decoder model is
`marian` by its model type, else `nllb`, `m2m100` or `madlad` by its tokenizer's language tokens
(eng_Latn, __en__, <2en>), else `seq2seq`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from safetune.config import TranslateConfig
from safetune.errors import ConfigError
from safetune.translation.base import Translator


@dataclass(frozen=True)
class TranslatorSpec:
    name: str
    summary: str
    example: str  # a model of that kind


TRANSLATORS: dict[str, TranslatorSpec] = {
    spec.name: spec
    for spec in (
        TranslatorSpec(
            "nllb",
            "NLLB-200 (200 languages, FLORES-200 codes: ben_Beng, swh_Latn, zho_Hans)",
            "facebook/nllb-200-distilled-600M",
        ),
        TranslatorSpec("m2m100", "M2M100 (100 languages, __bn__ codes)", "facebook/m2m100_418M"),
        TranslatorSpec("madlad", "MADLAD-400 (T5; <2en> target token)", "google/madlad400-3b-mt"),
        TranslatorSpec(
            "marian", "Marian opus-mt: one model per language pair", "Helsinki-NLP/opus-mt-mul-en"
        ),
        TranslatorSpec("seq2seq", "any other AutoModelForSeq2SeqLM (one pair, or a prompt)", "t5-base"),
        TranslatorSpec(
            "chat",
            "a chat model with a translation request, through its chat template",
            "Qwen/Qwen2.5-7B-Instruct",
        ),
    )
}
KINDS = ("auto", *TRANSLATORS)


def parse_translator(text: str) -> tuple[str | None, str]:
    """`--translator [KIND:]MODEL` -> (kind or None, model): the part before the first colon is a kind
    only when it names one (so a folder with a colon in its name still works)."""
    head, sep, tail = text.partition(":")
    if sep and head.strip().lower() in KINDS and tail.strip():
        return head.strip().lower(), tail.strip()
    if not text.strip():
        raise ConfigError("--translator: empty (give a model: hub id or folder, optionally KIND:MODEL)")
    return None, text.strip()


def with_translator(config: TranslateConfig, text: str | None) -> TranslateConfig:
    """The section with `--translator`'s kind and model applied (None: unchanged)."""
    if text is None:
        return config
    kind, model = parse_translator(text)
    return replace(config, model=model, kind=kind or config.kind)


def build_translator(config: TranslateConfig) -> Translator:
    """The translator of the `translate` section, checked (files, kind, tokenizer) without its weights."""
    from safetune.translation import chat, seq2seq

    if not config.model:
        raise ConfigError("no translation model: set translate.model (or --translator MODEL)")
    kind = config.kind.strip().lower()
    if kind not in KINDS:
        raise ConfigError(f"unknown translate.kind {config.kind!r} (known: {', '.join(KINDS)})")
    if kind == "auto":
        model_config = seq2seq.load_config(config.model, config.revision, config.trust_remote_code)
        if not getattr(model_config, "is_encoder_decoder", False):
            return chat.build(config)
        return seq2seq.build(config)
    if kind == "chat":
        model_config = seq2seq.load_config(config.model, config.revision, config.trust_remote_code)
        if getattr(model_config, "is_encoder_decoder", False):
            raise ConfigError(
                f"translate.kind=chat: {config.model!r} is an encoder-decoder model (use auto or seq2seq)"
            )
        return chat.build(config)
    return seq2seq.build(config, kind)
