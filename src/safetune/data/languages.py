"""Language detection by Unicode script, for labelling preference pairs whose file names no language.

`detect_language` counts the letters of each script and maps the main script to the language it
stands for in multilingual-safety data (MultiJail, the MPO release):

    Han -> "zh" (but "ja" as soon as any kana is present), Hiragana/Katakana -> "ja", Hangul -> "ko",
    Arabic -> "ar", Bengali -> "bn", Devanagari -> "hi", Thai -> "th", Cyrillic -> "ru",
    Greek -> "el", Hebrew -> "he".

Latin script is shared by many languages, so it is only labelled when a small heuristic is confident:
"vi" when Vietnamese-only letters (đ, ơ, ư and the stacked-diacritic vowels such as ạ ế ộ) make up
at least 3% of the letters; otherwise, for mostly-ASCII text, "en" or "sw" when that language's
stop words make up at least 20% of the words (and at least two words) and at least twice the other's.

Limits, on purpose: anything else returns None ("unknown"), never a guess. Every other Latin-script
language (fr, de, es, id, jv, ...), short texts with fewer than two stop words, and scripts not listed
above are None. A script stands for one language: Persian or Urdu read as "ar", Ukrainian or
Bulgarian as "ru", Marathi or Nepali as "hi". Mixed text takes its main script, and a non-Latin script
wins over Latin once it has 20% of the letters (so Chinese with English code words stays "zh").
"""

from __future__ import annotations

import logging
import re
import unicodedata
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from safetune.data.records import ParallelPreferencePair, PreferencePair

UNKNOWN = "unknown"

log = logging.getLogger(__name__)

# (first, last, script), sorted by first code point; letters outside every range count as "other".
_RANGES: tuple[tuple[int, int, str], ...] = (
    (0x0041, 0x005A, "latin"),
    (0x0061, 0x007A, "latin"),
    (0x00C0, 0x024F, "latin"),  # Latin-1 letters and Latin Extended-A/B (isalpha drops × and ÷)
    (0x0370, 0x03FF, "greek"),
    (0x0400, 0x052F, "cyrillic"),
    (0x0590, 0x05FF, "hebrew"),
    (0x0600, 0x06FF, "arabic"),
    (0x0750, 0x077F, "arabic"),
    (0x08A0, 0x08FF, "arabic"),
    (0x0900, 0x097F, "devanagari"),
    (0x0980, 0x09FF, "bengali"),
    (0x0E00, 0x0E7F, "thai"),
    (0x1100, 0x11FF, "hangul"),
    (0x1E00, 0x1EFF, "latin"),  # Latin Extended Additional (Vietnamese)
    (0x1F00, 0x1FFF, "greek"),
    (0x3040, 0x30FF, "kana"),
    (0x3130, 0x318F, "hangul"),
    (0x31F0, 0x31FF, "kana"),
    (0x3400, 0x4DBF, "han"),
    (0x4E00, 0x9FFF, "han"),
    (0xAC00, 0xD7AF, "hangul"),
    (0xF900, 0xFAFF, "han"),
    (0xFB50, 0xFDFF, "arabic"),
    (0xFE70, 0xFEFF, "arabic"),
    (0xFF66, 0xFF9F, "kana"),  # half-width katakana
    (0x20000, 0x2FA1F, "han"),
)
_STARTS = [first for first, _, _ in _RANGES]

SCRIPT_LANGUAGES: dict[str, str] = {
    "hangul": "ko",
    "arabic": "ar",
    "bengali": "bn",
    "devanagari": "hi",
    "thai": "th",
    "cyrillic": "ru",
    "greek": "el",
    "hebrew": "he",
}
_MIN_SCRIPT_SHARE = 0.2  # a non-Latin script with this share of the letters names the language
_MIN_LATIN_SHARE = 0.8  # otherwise Latin must hold this share, or the text is unknown
_MIN_VI_SHARE = 0.03
_MAX_NON_ASCII = 0.05  # en / sw are written in plain ASCII
_MIN_STOP_SHARE = 0.2
_MIN_STOP_WORDS = 2

# ơ ư đ and the stacked-diacritic vowels (U+1EA0-U+1EF9); not ă â ê ô, which Romanian, French and
# Portuguese use too.
_VIETNAMESE = frozenset("đơưĐƠƯ") | frozenset(chr(c) for c in range(0x1EA0, 0x1EFA))


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_STOP_WORDS: dict[str, frozenset[str]] = {
    "en": _words(
        "the and of to in is are was were be been you your i my me we our they them their it this that"
        " these those for with how what why when where who which can could would should will do does"
        " did not have has had about from but or if there an at by as please"
    ),
    "sw": _words(
        "na ya wa kwa ni katika hii huu hili je kuwa za cha vya kama lakini hiyo sana au wao mimi wewe"
        " yako yangu yake zetu wetu nini jinsi gani bila pia kwamba hivyo hata ili baada kabla sisi"
        " yao hapa huo ndiyo hapana tu"
    ),
}
_WORD = re.compile(r"[^\W\d_]+")


def _script(char: str) -> str:
    code = ord(char)
    k = bisect_right(_STARTS, code) - 1
    if k >= 0 and code <= _RANGES[k][1]:
        return _RANGES[k][2]
    return "other"


def script_counts(text: str) -> Counter[str]:
    """Letters per script ("latin", "han", "kana", "hangul", ..., "other") of the NFC-normalised text."""
    return Counter(_script(ch) for ch in unicodedata.normalize("NFC", text) if ch.isalpha())


def _latin_language(text: str, latin: int) -> str | None:
    letters = [ch for ch in unicodedata.normalize("NFC", text) if ch.isalpha() and _script(ch) == "latin"]
    vietnamese = sum(ch in _VIETNAMESE for ch in letters)
    if vietnamese >= 2 and vietnamese >= _MIN_VI_SHARE * latin:
        return "vi"
    if sum(not ch.isascii() for ch in letters) > _MAX_NON_ASCII * latin:
        return None
    words = _WORD.findall(text.lower())
    hits = {lang: sum(w in stops for w in words) for lang, stops in _STOP_WORDS.items()}
    best = max(hits, key=lambda lang: hits[lang])
    others = max((n for lang, n in hits.items() if lang != best), default=0)
    if (
        hits[best] >= _MIN_STOP_WORDS
        and hits[best] >= _MIN_STOP_SHARE * len(words)
        and others * 2 <= hits[best]
    ):
        return best
    return None


def detect_language(text: str) -> str | None:
    """The language code of `text` by its script (see the module docstring), or None when unsure."""
    counts = script_counts(text)
    total = sum(counts.values())
    if not total:
        return None
    groups = Counter({SCRIPT_LANGUAGES.get(s, s): n for s, n in counts.items() if s not in ("han", "kana")})
    cjk = counts["han"] + counts["kana"]
    if cjk:
        groups["ja" if counts["kana"] else "zh"] = cjk
    latin = groups.pop("latin", 0)
    if groups:
        best, n = max(groups.items(), key=lambda item: (item[1], item[0]))
        if n >= _MIN_SCRIPT_SHARE * total:
            return None if best == "other" else best
    if latin >= _MIN_LATIN_SHARE * total:
        return _latin_language(text, latin)
    return None


def language_counts(pairs: Iterable[ParallelPreferencePair | PreferencePair]) -> dict[str, int]:
    """Pairs per language (the target side's for parallel pairs), None counted as "unknown";
    most frequent first, ties by name."""
    counts = Counter(
        (p.target.language if isinstance(p, ParallelPreferencePair) else p.language) or UNKNOWN for p in pairs
    )
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


@dataclass
class LanguageCheck:
    """Labels one side of a preference pair (prompt, chosen, rejected) with the language its texts are
    detected in, and keeps every pair whose texts disagree.

    Real files have records whose prompt stayed in English while both answers were translated (21 in
    one MPO release file); labelled by the prompt alone they joined the English row. Here a side's
    language is the one every detected text agrees on; when two texts are detected in different
    languages the side is None ("unknown": never a guess) and the record is kept in `disagreements`,
    for the log and run.json. Texts that cannot be detected (short or Latin-script text other than en,
    sw, vi) do not vote, so a pair whose answers are undetected keeps its prompt's language, as before.
    """

    disagreements: list[dict[str, Any]] = field(default_factory=list)

    def detect(
        self, where: str, ident: str, side: str, prompt: str, chosen: str, rejected: str
    ) -> str | None:
        found = {"prompt": detect_language(prompt), "chosen": detect_language(chosen)}
        found["rejected"] = detect_language(rejected)
        known = {language for language in found.values() if language is not None}
        if len(known) <= 1:
            return next(iter(known), None)
        self.disagreements.append({"record": where, "id": ident, "side": side, "detected": found})
        return None

    def report(self) -> dict[str, Any]:
        """{"count", "records": [{"record": "path:line", "id", "side", "detected": {field: code}}]}."""
        return {"count": len(self.disagreements), "records": self.disagreements}

    def log_summary(self) -> None:
        if self.disagreements:
            shown = ", ".join(f"{d['record']} (id {d['id']}, {d['side']})" for d in self.disagreements[:10])
            more = len(self.disagreements) - 10
            log.warning(
                "%d pair side(s) whose prompt and answers are detected in different languages are labelled "
                "unknown (set the record's language to label them): %s%s",
                len(self.disagreements),
                shown,
                f" and {more} more" if more > 0 else "",
            )
