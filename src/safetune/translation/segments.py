"""Long texts split into pieces a translation model takes, and the pieces' translations joined back.

Sentence-level translation models (NLLB-200, M2M100, Marian) were trained on sentences: given a
paragraph, they tend to translate its first sentences and drop the rest, and inputs past their
training length (NLLB: 512 tokens) degrade. So a text is split, by default, into sentences:

1. lines: the text is cut at line breaks; blank lines and the line breaks themselves are kept and
   never translated, so lists and paragraphs keep their layout;
2. sentences (`split="sentence"`): each line is cut after sentence-final punctuation (. ! ? … and
   the CJK 。！？, the Devanagari/Bengali danda । ॥, the Arabic ؟ ۔, the Ethiopic ። and the Thai/
   Myanmar/Khmer ones) followed by a space, or directly after the full-width ones; `split="line"`
   keeps whole lines (chat translators read paragraphs well);
3. length: a piece still longer than `max_tokens` (by the translator's own tokenizer) is cut at the
   last whitespace that fits, or, for text without spaces (Chinese, Japanese, Thai), at the last
   character that fits.

`join` puts the translated pieces back: the pieces of one line joined by a space (no space when the
target language writes without spaces: zh, ja, th, lo, km, my, yue), the lines by the original line
breaks. Leading indentation of a line is kept.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# A sentence ends after these, when a space follows (or the line ends).
_SPACED_END = r"[.!?…։؟۔।॥።၊။។]['\")\]»”’]*"
# These end a sentence with or without a following space (full-width punctuation).
_TIGHT_END = r"[。！？]['\")\]»”’」』）]*"
_SENTENCE_END = re.compile(rf"(?:{_SPACED_END}(?=\s)|{_TIGHT_END})\s*")
# Languages written without spaces between words: their pieces are joined with no space.
NO_SPACE_LANGUAGES = frozenset({"zh", "zh-Hant", "ja", "th", "lo", "km", "my", "yue", "bo", "dz"})

TokenCounter = Callable[[str], int]


@dataclass(frozen=True)
class Split:
    """A text cut into pieces: `pieces` (to translate, in order) and `layout`, one entry per line of
    the text: (indent, number of pieces of that line), with blank lines as (the line as is, 0)."""

    pieces: tuple[str, ...]
    layout: tuple[tuple[str, int], ...]


def sentences(line: str) -> list[str]:
    """A line cut after each sentence end (see the module docstring), whitespace around pieces dropped."""
    pieces, start = [], 0
    for match in _SENTENCE_END.finditer(line):
        pieces.append(line[start : match.end()].strip())
        start = match.end()
    pieces.append(line[start:].strip())
    return [p for p in pieces if p]


def fit(piece: str, max_tokens: int, count: TokenCounter) -> list[str]:
    """A piece cut so that each part has at most `max_tokens` tokens: at the last whitespace that fits,
    else (no space inside the budget) at the last character that fits."""
    parts: list[str] = []
    rest = piece.strip()
    while rest and count(rest) > max_tokens:
        # The longest prefix that fits, by bisection over characters (token counts grow with length).
        low, high = 1, len(rest)
        while low < high:
            middle = (low + high + 1) // 2
            if count(rest[:middle]) <= max_tokens:
                low = middle
            else:
                high = middle - 1
        cut = low
        space = rest.rfind(" ", 0, cut + 1)
        if space > 0:
            cut = space
        parts.append(rest[:cut].strip())
        rest = rest[cut:].strip()
    if rest:
        parts.append(rest)
    return [p for p in parts if p]


def split(text: str, max_tokens: int, count: TokenCounter, mode: str = "sentence") -> Split:
    """Cut `text` into pieces of at most `max_tokens` tokens (see the module docstring)."""
    if mode not in ("sentence", "line"):
        raise ValueError(f"split mode must be 'sentence' or 'line', got {mode!r}")
    pieces: list[str] = []
    layout: list[tuple[str, int]] = []
    for line in text.split("\n"):
        if not line.strip():
            layout.append((line, 0))
            continue
        indent = line[: len(line) - len(line.lstrip())]
        units = sentences(line) if mode == "sentence" else [line.strip()]
        parts = [part for unit in units for part in fit(unit, max_tokens, count)]
        pieces.extend(parts)
        layout.append((indent, len(parts)))
    return Split(tuple(pieces), tuple(layout))


def join(cut: Split, translated: Sequence[str], target: str) -> str:
    """The translated pieces put back in the layout of `cut`; `target` is the language they are in."""
    if len(translated) != len(cut.pieces):
        raise ValueError(f"{len(translated)} translations for {len(cut.pieces)} pieces")
    glue = "" if target in NO_SPACE_LANGUAGES else " "
    lines, at = [], 0
    for indent, count in cut.layout:
        if count == 0:
            lines.append(indent)  # a blank line, as it was
            continue
        lines.append(indent + glue.join(t.strip() for t in translated[at : at + count]))
        at += count
    return "\n".join(lines)
