"""The multilingual model organism as the pair builder's translator and language identifier
(`translate.kind=organism`, `pairs.identifier=organism`).

The organism's second language is a word-level transform of its first (organism/multilingual.py: every
word reversed and marked "@"), so the transform is an exact translator between the two: `safetune demo
mpo` builds pairs through `safetune pairs`' own stages (the model's own refusals, judged; translated;
filtered; written in the release format) with it standing in for a translation model. Its languages are
the tags `l1` and `l2`, registered here as constructed languages (translation/languages.py
`register_language`), which no translation model takes. Nothing here is meant for real data.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from safetune.config import TranslateConfig
from safetune.errors import ConfigError
from safetune.organism import multilingual as ml
from safetune.translation.base import Translation, TranslationRequest, Translator
from safetune.translation.languages import Language, register_language, resolve
from safetune.translation.registry import build_translator as build_model_translator

KIND = "organism"
# Bump when the transform (organism/multilingual.py to_l2 / to_l1) or the identifier's rule changes.
VERSION = "organism-1"
LANGUAGES = {
    ml.L1: Language(ml.L1, ml.L1, None, "the organism's L1"),
    ml.L2: Language(ml.L2, ml.L2, None, "the organism's L2"),
}
for _language in LANGUAGES.values():
    register_language(_language)

# The identifier's bar: a text whose word tokens are at least this share L2 words is L2, at most
# 1 - this share L1; in between (mixed text), unsure.
CLEAR_SHARE = 0.8


class OrganismTranslator:
    """A Translator (translation/base.py) whose translation is the organism's transform: exact, so
    the round trip gives the text back and the quality filter rejects nothing it should keep."""

    kind = KIND

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size

    def key(self) -> str:
        return f"{KIND}@{VERSION}"

    def record(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "version": VERSION,
            "model": "the organism's L2 transform",
            "settings": {},
            "key": self.key(),
        }

    def check_pairs(self, pairs: Sequence[tuple[str, str]]) -> None:
        for source, target in pairs:
            found = {resolve(source).code, resolve(target).code}
            if found != set(LANGUAGES):
                raise ConfigError(
                    f"the organism translator translates between l1 and l2 only, not {source}->{target}"
                )

    def translate(self, requests: Sequence[TranslationRequest]) -> Iterator[list[Translation]]:
        for start in range(0, len(requests), self.batch_size):
            batch = []
            for request in requests[start : start + self.batch_size]:
                target = resolve(request.target).code
                text = ml.to_l2(request.text) if target == ml.L2 else ml.to_l1(request.text)
                batch.append(Translation(request.id, text, 1 if request.text.strip() else 0, 0))
            yield batch

    def release(self) -> None:
        """Nothing loaded."""


def build_translator(config: TranslateConfig) -> Translator:
    """The pair builder's translator: the organism's transform for `translate.kind=organism`, else the
    translation model of the `translate` section (translation/registry.py)."""
    if config.kind.strip().lower() == KIND:
        return OrganismTranslator(config.batch_size)
    return build_model_translator(config)


def detect(text: str) -> str | None:
    """The organism's language identifier: l2 when at least CLEAR_SHARE of the word tokens are L2 words,
    l1 when at most 1 - CLEAR_SHARE are, None (unsure) for mixed text or text without words."""
    if not any(ch.isalpha() for ch in text):
        return None
    share = ml.l2_fraction(text.lower())
    if share >= CLEAR_SHARE:
        return ml.L2
    if share <= 1 - CLEAR_SHARE:
        return ml.L1
    return None
