"""The pair builder's keep rules: which dominant-language refusals are kept, and which translated rows
pass the quality filter. Pure functions of verdict rows, detected languages and scores, so each rule is
tested against hand-computed values.

Reasons a row is rejected (rejected.jsonl, the manifest's counts):

    not_refusal        the judge does not call the model's dominant-language answer a refusal
                       (complied, partial, invalid, uncovered or no refusal verdict)
    empty:FIELD        the translation of FIELD is empty (always: the release format refuses empty texts)
    language:FIELD     language identification of the translated FIELD (prompt, chosen, rejected) says
                       it is not in the target language (`pairs.language_check`)
    chrf:FIELD         the round-trip chrF of FIELD is below `pairs.min_chrf`
    refusal_lost       the translated chosen answer is not judged a refusal (`pairs.target_refusal`)

A row rejected for several reasons lists them all; the counts count each reason once per row.

Language identifiers (`pairs.identifier`) are a registry: a name -> (version, text -> ISO 639-1 code or
None when unsure). "lingua" is data/languages.py's `detect_language`; "organism" tells the multilingual
model organism's two languages apart (pairs/organism.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from safetune.data.languages import DETECTOR_VERSION, detect_language
from safetune.errors import ConfigError
from safetune.evaluation.items import PARTIAL
from safetune.pairs import organism
from safetune.translation.languages import Language

TRANSLATED_FIELDS: tuple[str, ...] = ("prompt", "chosen", "rejected")
NOT_REFUSAL = "not_refusal"
REFUSAL_LOST = "refusal_lost"
REASONS: tuple[str, ...] = (
    NOT_REFUSAL,
    *(f"empty:{f}" for f in TRANSLATED_FIELDS),
    *(f"language:{f}" for f in TRANSLATED_FIELDS),
    *(f"chrf:{f}" for f in TRANSLATED_FIELDS),
    REFUSAL_LOST,
)


@dataclass(frozen=True)
class Identifier:
    name: str
    version: str
    detect: Callable[[str], str | None]


IDENTIFIERS: dict[str, Identifier] = {
    "lingua": Identifier("lingua", DETECTOR_VERSION, detect_language),
    "organism": Identifier("organism", organism.VERSION, organism.detect),
}


def identifier(name: str) -> Identifier:
    if name not in IDENTIFIERS:
        raise ConfigError(f"unknown pairs.identifier {name!r} (known: {', '.join(IDENTIFIERS)})")
    return IDENTIFIERS[name]


def identified_code(language: Language) -> str:
    """The code an identifier names `language` by: its ISO 639-1 code without a script (identifiers
    tell languages, not scripts: zh-Hant is "zh")."""
    return language.code.split("-")[0]


def is_refusal(verdict: Mapping[str, Any]) -> bool:
    """A verdict row (Verdict.to_dict()) that calls the answer an outright refusal."""
    return verdict.get("label") not in ("invalid", "uncovered") and verdict.get("refused") is True


def language_reasons(detected: Mapping[str, str | None], target: str, mode: str) -> list[str]:
    """`language:FIELD` for each translated field whose detected language (ISO 639-1, None: unsure)
    fails `mode`: strict wants exactly `target`; lenient only refuses another detected language; none
    refuses nothing."""
    if mode == "none":
        return []
    if mode not in ("strict", "lenient"):
        raise ConfigError(f"pairs.language_check must be strict, lenient or none, got {mode!r}")
    reasons = []
    for name in TRANSLATED_FIELDS:
        found = detected.get(name)
        if found == target or (found is None and mode == "lenient"):
            continue
        reasons.append(f"language:{name}")
    return reasons


def chrf_reasons(scores: Mapping[str, float], minimum: float) -> list[str]:
    """`chrf:FIELD` for each field whose round-trip chrF is below `minimum` (0: the check is off)."""
    if minimum <= 0:
        return []
    return [f"chrf:{name}" for name in TRANSLATED_FIELDS if name in scores and scores[name] < minimum]


def refusal_reason(verdict: Mapping[str, Any] | None, mode: str) -> str | None:
    """`refusal_lost` when the verdict on the translated chosen answer fails `mode`: required wants an
    outright refusal; unless_contradicted refuses only a verdict that it complies (or partly); none
    (verdict None) refuses nothing."""
    if mode == "none":
        return None
    if verdict is None:
        raise ConfigError("pairs.target_refusal: no verdict on the translated chosen answer")
    if mode == "required":
        return None if is_refusal(verdict) else REFUSAL_LOST
    if mode == "unless_contradicted":
        refused = verdict.get("refused")
        return REFUSAL_LOST if refused is False or refused == PARTIAL else None
    raise ConfigError(f"pairs.target_refusal must be required, unless_contradicted or none, got {mode!r}")


def empty_reasons(fields: Mapping[str, str]) -> list[str]:
    """`empty:FIELD` for each translated field that is empty or only whitespace."""
    return [f"empty:{name}" for name in TRANSLATED_FIELDS if not fields.get(name, "").strip()]


def row_reasons(
    fields: Mapping[str, str],
    detected: Mapping[str, str | None],
    target: str,
    scores: Mapping[str, float],
    verdict: Mapping[str, Any] | None,
    language_check: str,
    min_chrf: float,
    target_refusal: str,
) -> list[str]:
    """Every reason a translated row is rejected (`fields`: the translations), in REASONS order ([]: kept)."""
    reasons = (
        empty_reasons(fields)
        + language_reasons(detected, target, language_check)
        + chrf_reasons(scores, min_chrf)
    )
    lost = refusal_reason(verdict, target_refusal)
    return reasons + ([lost] if lost else [])
