"""Language identification: which language a text is in, or None ("unknown") rather than a guess.

Used to label preference pairs whose files name no language (`LanguageCheck`), to choose the keyword
judge's phrase lists (data/refusals.py) and by the incoherence check's wrong-language rule
(evaluation/incoherence.py). `detect_language` decides in this order:

1. No letters (empty, digits, punctuation) -> None.
2. The multilingual model organism's synthetic language (organism/multilingual.py: a word of L2 is
   PSEUDO_MARK "@" plus an L1 word spelled backwards): when such pseudo-words are at least
   PSEUDO_SHARE of the words, None. No detector knows that language, and a statistical one would guess
   some language from its letters; the organism's L1 is plain English words, read by step 4 below.
3. Javanese (jv), which lingua does not cover (it names 75 languages, jv not among them, and reads
   Javanese as Indonesian or Tagalog): Latin-script text whose words are at least JV_SHARE Javanese
   function words (JV_WORDS: "ora", "lan", "sing", "kanggo", "mboten", "kula", ...; none of them an
   Indonesian or English word), and at least two of them, is "jv".
4. lingua-language-detector (all 75 languages, low-accuracy mode): the ISO 639-1 code of its most
   likely language when its confidence value for it is at least MIN_CONFIDENCE, else None.

Why these settings (measured on this machine, lingua 2.1.1; the figures are in docs/evaluation.md):
- All languages rather than the few safetune meets: a detector that knows only {en, it, sw, ...} names
  a French or Indonesian text with one of them, confidently. With all 75, a French answer is "fr" (the
  keyword judge then says "uncovered" instead of reading it with the wrong lists).
- Low-accuracy mode (trigram models only): the first call costs ~0.3 s (~1 ms a text after that) instead
  of ~14 s to load every Latin-script language's 1-5-gram models, and on texts of a sentence or more
  it names the same language. Its weakness is short texts, which the threshold turns into None.
- MIN_CONFIDENCE 0.9: lingua's confidence values sum to 1 over the languages. Real sentences in the
  languages the benchmarks use score >= 0.95 ("Sorry, but I can't assist with that." 0.999, a one-line
  Russian refusal 0.956); one-word answers ("Sure" 0.21 fr, "Yes" 0.10 ca), code, URLs and numbers stay
  far below it, and so do close pairs lingua cannot split on a sentence (a one-line Indonesian refusal:
  0.56 ms). Every one of the 105 human-labelled XSTest answers (tests/data/xstest_v2) is "en".
- The detector is built once per process, lazily, on the first text that reaches step 4 (`_detector`).

Mixed text: when lingua is confident about the whole text but a sentence or line of it (at least
MIXED_SHARE of the letters) is confidently in another language, None ("I'm sorry, I can't help. Mi
dispiace, non posso aiutarti." is neither "en" nor "it"). Words of another language inside a sentence
do not make it mixed (Chinese with English code words stays "zh"). `script_counts` (letters per Unicode script) remains for
callers that need the script, not the language.

DETECTOR_VERSION names all of the above; keys of cached verdicts that depend on it include it.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from safetune.data.records import ParallelPreferencePair, PreferencePair

if TYPE_CHECKING:
    from lingua import LanguageDetector

UNKNOWN = "unknown"
DETECTOR_VERSION = "lingua-2.1-low-0.99+jv-1"
MIN_CONFIDENCE = 0.99  # lingua's confidence value for its top language (module docstring: why)
PSEUDO_MARK = "@"  # organism/multilingual.py's MARK (a test holds them equal)
PSEUDO_SHARE = 0.2
JV_SHARE = 0.15
JV_MIN_WORDS = 2
MIXED_SHARE = 0.25  # sentences surely in another language with this share of the letters: mixed
MAX_CHARS = 2000  # the opening a language is read from: detection cost grows with the text

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

# Javanese function words (ngoko and krama) that are not Indonesian, Malay or English words: "aku",
# "bisa", "apa" (shared with Indonesian) are left out, so Indonesian text never reaches JV_SHARE.
_JV_TEXT = """
ora lan sing kang iku kuwi iki yaiku kanggo nggawe gawe banjur uga saka marang dadi yen arep kowe piye
kepiye opo mboten boten kula panjenengan sampeyan njenengan saged badhe menawi ingkang dhateng kaliyan
sampun wonten punika nanging amarga supaya nganti kasebut carane kudu durung akeh liyane nalika mung wae
tenan becik nyuwun pangapunten ngapunten ngerti wis ana ing karo
"""
JV_WORDS = frozenset(_JV_TEXT.split())
_WORD = re.compile(r"[^\W\d_]+")
_TOKEN = re.compile(r"\S+")
# Sentence ends (Latin, CJK full-width, Devanagari/Bengali danda, Arabic question mark, Thai space-free
# text has none) and line breaks: where a mixed text switches language.
_SENTENCE = re.compile(r"(?<=[.!?。！？।؟])\s+|\n+|(?<=[。！？])")


def _script(char: str) -> str:
    code = ord(char)
    k = bisect_right(_STARTS, code) - 1
    if k >= 0 and code <= _RANGES[k][1]:
        return _RANGES[k][2]
    return "other"


def script_counts(text: str) -> Counter[str]:
    """Letters per script ("latin", "han", "kana", "hangul", ..., "other") of the NFC-normalised text."""
    return Counter(_script(ch) for ch in unicodedata.normalize("NFC", text) if ch.isalpha())


@lru_cache(maxsize=1)
def _detector() -> LanguageDetector:
    """lingua's detector over all its languages, low-accuracy mode: built once per process, on first use
    (its trigram models load lazily, per language, as texts need them)."""
    from lingua import LanguageDetectorBuilder

    return LanguageDetectorBuilder.from_all_languages().with_low_accuracy_mode().build()


def _pseudo_language(text: str) -> bool:
    """Mostly the multilingual organism's synthetic words ("@erus", "@tonnac")?"""
    tokens = [t for t in _TOKEN.findall(text) if _WORD.search(t)]
    pseudo = sum(t.startswith(PSEUDO_MARK) for t in tokens)
    return bool(tokens) and pseudo >= PSEUDO_SHARE * len(tokens)


def _javanese(text: str, counts: Counter[str]) -> bool:
    if counts["latin"] < 0.8 * sum(counts.values()):
        return False
    words = _WORD.findall(text.lower())
    hits = sum(w in JV_WORDS for w in words)
    return hits >= JV_MIN_WORDS and hits >= JV_SHARE * len(words)


def language_confidence(text: str) -> tuple[str, float] | None:
    """lingua's most likely language for `text` (ISO 639-1, lower case) and its confidence value 0..1;
    None for text without letters. No threshold, no organism or Javanese rule: `detect_language` decides."""
    if not any(ch.isalpha() for ch in text):
        return None
    values = _detector().compute_language_confidence_values(text)
    if not values:
        return None
    return values[0].language.iso_code_639_1.name.lower(), values[0].value


def detect_language(text: str) -> str | None:
    """The ISO 639-1 code of the language of `text` (see the module docstring), or None when unsure."""
    text = unicodedata.normalize("NFC", text[:MAX_CHARS])
    counts = script_counts(text)
    if not counts:
        return None
    if _pseudo_language(text):
        return None
    if _javanese(text, counts):
        return "jv"
    found = language_confidence(text)
    if found is None or found[1] < MIN_CONFIDENCE:
        return None
    return None if _mixed(text, found[0], sum(counts.values())) else found[0]


def _mixed(text: str, language: str, letters: int) -> bool:
    """Do sentences (or lines) of `text` surely in another language than `language` hold at least
    MIXED_SHARE of its letters? lingua reads a mixed text as a whole and may be confident about one
    of its languages ("Sure! Ecco la ricetta: ... Then bake it for 30 minutes." -> it, 0.94)."""
    sentences = [part for part in _SENTENCE.split(text) if part.strip()]
    if len(sentences) < 2:
        return False
    other = 0
    for sentence in sentences:
        found = language_confidence(sentence)
        if found is not None and found[1] >= MIN_CONFIDENCE and found[0] != language:
            other += sum(ch.isalpha() for ch in sentence)
    return other >= MIXED_SHARE * letters


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
    for the log and run.json. Texts that cannot be detected (too short, code, mixed text lingua is not
    confident about) do not vote, so a pair whose answers are undetected keeps its prompt's language, as before.
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
