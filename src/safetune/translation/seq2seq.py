"""Encoder-decoder translation models (AutoModelForSeq2SeqLM): NLLB-200, M2M100, MADLAD-400, Marian
opus-mt, and any other seq2seq model.

How each family is told the languages (translation/languages.py has the codes):

    nllb     tokenizer.src_lang = the FLORES-200 code (the tokenizer puts it before the text), and the
             target's code forced as the first generated token (forced_bos_token_id), as NLLB's card does
    m2m100   tokenizer.src_lang = "bn" (`__bn__` before the text), `__en__` forced first
    madlad   `<2en> ` written before the text; the source language is not given
    marian   nothing for a one-pair model (its languages are checked against the pair: the tokenizer's
             source_lang / target_lang, else the opus-mt-SRC-TGT name); a multi-target model gets its
             `>>eng<<`-style token before the text
    seq2seq  nothing: the model translates one fixed pair, or `translate.prompt` names the languages
             (a T5-style "translate {source} to {target}: {text}")

Decoding is deterministic: beam search with `translate.num_beams` beams (default: the model's
generation_config num_beams when it sets more than one, else 4, NLLB's and M2M100's published
evaluation setting), no sampling, the model's other generation settings (length penalty, bad words,
decoder start) kept. A piece whose translation used all of max_new_tokens without ending is counted
as cut (`Translation.cut`).
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from safetune.config import TranslateConfig
from safetune.errors import ConfigError
from safetune.models.loading import check_model_folder, default_device, model_fingerprint, resolve_dtype
from safetune.translation.base import TranslatorIdentity
from safetune.translation.languages import (
    Language,
    m2m100_code,
    madlad_token,
    marian_covers,
    marian_token,
    nllb_code,
    resolve,
)

log = logging.getLogger(__name__)

SEQ2SEQ_FAMILIES = ("nllb", "m2m100", "madlad", "marian", "seq2seq")
DEFAULT_BEAMS = 4
_OPUS_NAME = re.compile(r"opus-mt-(?:tc-big-|tc-)?([A-Za-z+_]+)-([A-Za-z+_]+)$")


def load_tokenizer(model_id: str, revision: str | None, trust_remote_code: bool) -> Any:
    """The model's own tokenizer; a missing optional library (sentencepiece for M2M100 and Marian) is
    one line saying what to install."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_id, revision=revision, trust_remote_code=trust_remote_code)
    except ImportError as err:
        raise ConfigError(
            f"cannot load the tokenizer of {model_id!r}: {err} (M2M100 and Marian tokenizers need "
            "`pip install 'safetune[translate]'`: sentencepiece, sacremoses)"
        ) from None
    except (OSError, ValueError, TypeError) as err:
        raise ConfigError(f"cannot load the tokenizer of {model_id!r}: {err}") from None


def load_config(model_id: str, revision: str | None, trust_remote_code: bool) -> Any:
    from transformers import AutoConfig

    check_model_folder(model_id, "translation model")
    try:
        return AutoConfig.from_pretrained(model_id, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot load the translation model's config {model_id!r}: {err}") from None


def detect_family(model_config: Any, tokenizer: Any) -> str:
    """Which seq2seq family a model is, from its config and its tokenizer's language tokens."""
    if getattr(model_config, "model_type", None) == "marian":
        return "marian"
    vocabulary = tokenizer.get_vocab()
    if "eng_Latn" in vocabulary:
        return "nllb"
    if "__en__" in vocabulary:
        return "m2m100"
    if "<2en>" in vocabulary:
        return "madlad"
    return "seq2seq"


def marian_pair(model_id: str, tokenizer: Any) -> tuple[str | None, str | None]:
    """A Marian model's (source, target) sides: its tokenizer's source_lang / target_lang, else the
    opus-mt-SRC-TGT name; None where neither says."""
    source = getattr(tokenizer, "source_lang", None)
    target = getattr(tokenizer, "target_lang", None)
    if source and target:
        return str(source), str(target)
    found = _OPUS_NAME.search(Path(model_id.rstrip("/")).name)
    return (found.group(1), found.group(2)) if found else (None, None)


class Seq2SeqTranslator(TranslatorIdentity):
    """One seq2seq model; the weights load at the first `translate` call."""

    def __init__(self, config: TranslateConfig, family: str, model_config: Any, tokenizer: Any):
        assert config.model is not None
        self.config, self.family, self.kind = config, family, family
        self.model_id = config.model
        self.tokenizer = tokenizer
        self.vocabulary = set(tokenizer.get_vocab())
        self.fingerprint = model_fingerprint(self.model_id, config.revision)
        self.generation = _generation_config(self.model_id, config.revision, model_config)
        own_beams = int(getattr(self.generation, "num_beams", 1) or 1)
        self.num_beams = config.num_beams or (own_beams if own_beams > 1 else DEFAULT_BEAMS)
        self.prompt = config.prompt or "{text}"
        self.marian_sides = marian_pair(self.model_id, tokenizer) if family == "marian" else (None, None)
        self.marian_targets = list(getattr(tokenizer, "supported_language_codes", None) or [])
        self._model: Any = None

    # ---- languages ----

    def _codes(self, source: Language, target: Language) -> tuple[str | None, str | None, str]:
        """(src_lang for the tokenizer, the forced first target token, the text prefix) for a pair;
        ConfigError naming the pair when the model does not know a language."""
        what = f"{self.family} model {self.model_id!r}"
        if self.family == "nllb":
            src, tgt = nllb_code(source, self.vocabulary), nllb_code(target, self.vocabulary)
            for lang, code in ((source, src), (target, tgt)):
                if code is None:
                    raise ConfigError(
                        f"{what} has no language token {lang.flores or '(none: not an NLLB language)'} "
                        f"({lang.name})"
                    )
            return src, tgt, ""
        if self.family == "m2m100":
            src, tgt = m2m100_code(source, self.vocabulary), m2m100_code(target, self.vocabulary)
            for lang, code in ((source, src), (target, tgt)):
                if code is None:
                    raise ConfigError(f"{what} has no language token __{lang.code}__ ({lang.name})")
            return src, f"__{tgt}__", ""
        if self.family == "madlad":
            token = madlad_token(target, self.vocabulary)
            if token is None:
                raise ConfigError(f"{what} has no target token <2{target.code}> ({target.name})")
            return None, None, token + " "
        if self.family == "marian":
            src_side, tgt_side = self.marian_sides
            if src_side is None or tgt_side is None:
                log.warning("cannot tell which languages %s translates; assuming it fits", self.model_id)
            else:
                for lang, side, end in ((source, src_side, "source"), (target, tgt_side, "target")):
                    if not marian_covers(lang, side):
                        raise ConfigError(
                            f"{what} translates {src_side}->{tgt_side}: its {end} side is not "
                            f"{lang.name} ({lang.code}); Marian has one model per language pair "
                            f"(Helsinki-NLP/opus-mt-{source.code}-{target.code}, or opus-mt-mul-en)"
                        )
            if self.marian_targets:
                token = marian_token(target, self.marian_targets)
                if token is None:
                    raise ConfigError(f"{what} has no target token >>{target.iso3}<< ({target.name})")
                return None, None, token + " "
            return None, None, ""
        return None, None, ""

    def check_pairs(self, pairs: Sequence[tuple[str, str]]) -> None:
        for source, target in pairs:
            self._codes(resolve(source), resolve(target))

    # ---- translating ----

    def _load(self) -> Any:
        from safetensors import SafetensorError
        from transformers import AutoModelForSeq2SeqLM

        if self._model is None:
            c = self.config
            try:
                model = AutoModelForSeq2SeqLM.from_pretrained(
                    self.model_id,
                    revision=c.revision,
                    dtype=resolve_dtype(c.precision),
                    trust_remote_code=c.trust_remote_code,
                    use_safetensors=True,  # never unpickle weights
                )
            except (OSError, ValueError, SafetensorError) as err:
                raise ConfigError(f"cannot load translation model {self.model_id!r}: {err}") from None
            self._model = model.to(c.device or default_device()).eval()
        return self._model

    @torch.inference_mode()
    def _translate_pieces(
        self, pieces: Sequence[str], source: str, target: str
    ) -> tuple[list[str], list[bool]]:
        model = self._load()
        src_lang, forced, prefix = self._codes(resolve(source), resolve(target))
        names = {"source": resolve(source).name, "target": resolve(target).name}
        texts = [prefix + self.prompt.format(text=piece, **names) for piece in pieces]
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # similar lengths, less padding
        out: list[str] = [""] * len(texts)
        ran_out: list[bool] = [False] * len(texts)
        # The model's own settings (decoder start, bad words, length penalty), deterministic decoding.
        generation = copy.deepcopy(self.generation)
        generation.update(
            num_beams=self.num_beams,
            do_sample=False,
            max_new_tokens=self.config.max_new_tokens,
            forced_bos_token_id=None if forced is None else self.tokenizer.convert_tokens_to_ids(forced),
        )
        eos = self.generation.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        for start in range(0, len(order), self.config.batch_size):
            batch = order[start : start + self.config.batch_size]
            encoded = self._encode([texts[i] for i in batch], src_lang).to(model.device)
            output = model.generate(**encoded, generation_config=generation)
            decoded = self.tokenizer.batch_decode(output, skip_special_tokens=True)
            for i, row, text in zip(batch, output.tolist(), decoded, strict=True):
                out[i] = text.strip()
                ran_out[i] = not eos_ids & set(row[1:])  # position 0 is the decoder start token
        return out, ran_out

    def _encode(self, texts: list[str], src_lang: str | None) -> Any:
        if src_lang is not None and hasattr(self.tokenizer, "src_lang"):
            self.tokenizer.src_lang = src_lang  # NLLB / M2M100: the source code goes before the text
        elif src_lang is not None:  # a tokenizer without src_lang: the same layout by hand
            rows = [
                [self.tokenizer.convert_tokens_to_ids(src_lang)]
                + self.tokenizer(t, add_special_tokens=False)["input_ids"]
                + [self.tokenizer.eos_token_id]
                for t in texts
            ]
            return self.tokenizer.pad({"input_ids": rows}, return_tensors="pt")
        return self.tokenizer(texts, padding=True, return_tensors="pt")


def _generation_config(model_id: str, revision: str | None, model_config: Any) -> Any:
    """The model's own generation_config.json (its decoder start, bad words, length penalty), else one
    derived from its config."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(model_id, revision=revision or "main")
    except OSError:
        return GenerationConfig.from_model_config(model_config)


def build(config: TranslateConfig, family: str | None = None) -> Seq2SeqTranslator:
    """A seq2seq translator for `config.model` (checked: files, config, tokenizer; weights not loaded);
    `family` None detects it."""
    assert config.model is not None
    model_config = load_config(config.model, config.revision, config.trust_remote_code)
    if not getattr(model_config, "is_encoder_decoder", False):
        raise ConfigError(
            f"translate.kind={family or 'seq2seq'}: {config.model!r} is not an encoder-decoder model "
            "(use translate.kind=chat for a chat model)"
        )
    tokenizer = load_tokenizer(config.model, config.revision, config.trust_remote_code)
    found = detect_family(model_config, tokenizer)
    if family is not None and family != "seq2seq" and found != family:
        raise ConfigError(
            f"translate.kind={family}, but {config.model!r} looks like a {found} model "
            f"(its language tokens); use translate.kind={found} or auto"
        )
    return Seq2SeqTranslator(config, family or found, model_config, tokenizer)
