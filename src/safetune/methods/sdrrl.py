"""SDRRL's transfer set (Zhang et al., ACL 2024, arXiv 2402.12204; docs/methods/sdrrl.md), built from
parallel preference pairs: pure Python, no torch, a function of the pairs, the settings and the seed.

SDRRL is supervised fine-tuning on a "transfer set" made from the model itself: its own answers in the
resource-rich (dominant) language, their machine translations, code-switched variants, and partially
translated and completion data. Parallel pairs already hold all of it: `dominant.chosen` is the model's
own dominant-language answer (the MPO release's `source_chosen`; `safetune pairs` writes the same) and
`target.chosen` its translation. Only the chosen answers are used: SDRRL has no rejected side.

The components (`SdrrlConfig` weights; each example says which one it belongs to):

* `self_distill`: dominant prompt -> the model's own dominant answer (duplicates dropped: the MPO
  release repeats the same English record in every target language's file);
* `translated`: target prompt -> the translated answer;
* `code_switch`: a code-switched prompt -> the translated answer. Granularity (ours; the paper's is not
  readable here): aligned sentences. When the prompt splits into the same number (>= 2) of sentences on
  both sides, each sentence comes from the target side with probability `switch_rate` (at least one from
  each side); otherwise the whole prompt switches (the dominant prompt with the target answer);
* `partial`: target prompt -> an answer begun in the target language and finished in the dominant one
  (its first `split_fraction` of aligned sentences translated, the rest not); needs both answers to
  split into the same number (>= 2) of sentences, else the pair is skipped for it (counted);
* `completion`: target prompt, with the first `split_fraction` of the translated answer given at the start
  of the assistant turn (`response_prefix`, not trained on) -> its remainder. Split at sentences, or at
  words for a one-sentence answer; an answer of one word is skipped (counted).

A weight w makes each of the component's examples enter the training rows floor(w) times, plus one more
time for a seeded draw of round(frac(w) * n) of them: weight 0 leaves the component out.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from safetune.config import SdrrlConfig
from safetune.data.records import ParallelPreferencePair
from safetune.errors import ConfigError

Component = Literal["self_distill", "translated", "code_switch", "partial", "completion"]
COMPONENTS: tuple[Component, ...] = ("self_distill", "translated", "code_switch", "partial", "completion")
# The language of a response that mixes both sides (partial translation).
MIXED = "mixed"

# A sentence ends at . ! ? followed by whitespace, at CJK/Devanagari full stops (no space follows them), or
# at a line break. The separator stays on the sentence before it, so the pieces join back to the text.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[。！？।])\s*|\n\s*")
_WORD = re.compile(r"\S+\s*")


@dataclass(frozen=True)
class TransferExample:
    """One example of the transfer set: the assistant turn is `response_prefix + response`; only
    `response` is trained on. `copies`: how many times it enters the training rows (its weight)."""

    id: str
    component: Component
    prompt: str
    response: str
    response_prefix: str = ""
    system: str | None = None
    language: str | None = None  # the response's language (MIXED for partial translation)
    granularity: str | None = None  # code_switch: "sentence" or "prompt"; completion: "sentence" / "word"
    copies: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TransferSet:
    """The distinct examples (each with its copies) and what was built, dropped and skipped per component."""

    examples: tuple[TransferExample, ...]
    counts: dict[str, dict[str, Any]]

    def rows(self) -> list[TransferExample]:
        """The training rows: each example `copies` times, in component order."""
        return [ex for ex in self.examples for _ in range(ex.copies)]


def sentences(text: str) -> list[str]:
    """`text` cut after each sentence end, separators kept: "".join(sentences(t)) == t."""
    pieces, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        if match.end() > start and text[start : match.start()].strip():
            pieces.append(text[start : match.end()])
            start = match.end()
    if text[start:].strip():
        pieces.append(text[start:])
    elif pieces:
        pieces[-1] += text[start:]
    return pieces


def words(text: str) -> list[str]:
    """`text` cut after each run of whitespace (leading whitespace on the first word)."""
    found = _WORD.findall(text)
    lead = text[: len(text) - len(text.lstrip())]
    return [lead + found[0], *found[1:]] if found and lead else found


def split_point(count: int, fraction: float) -> int:
    """How many of `count` pieces (>= 2) go before the split: round(fraction * count), half up, kept
    within [1, count - 1] so both parts are non-empty."""
    return min(count - 1, max(1, math.floor(fraction * count + 0.5)))


def _switched_prompt(pair: ParallelPreferencePair, rate: float, rng: random.Random) -> tuple[str, str]:
    """The code-switched prompt and its granularity ("sentence" or "prompt")."""
    dom, tgt = sentences(pair.dominant.prompt), sentences(pair.target.prompt)
    if len(dom) < 2 or len(dom) != len(tgt):
        return pair.dominant.prompt.strip(), "prompt"
    take = [rng.random() < rate for _ in dom]
    if all(take) or not any(take):  # a switch needs both languages: flip one sentence
        i = rng.randrange(len(take))
        take[i] = not take[i]
    return "".join(t if use else d for d, t, use in zip(dom, tgt, take, strict=True)).strip(), "sentence"


def _build(
    pair: ParallelPreferencePair, component: Component, cfg: SdrrlConfig, seed: int
) -> TransferExample | str:
    """The component's example for one pair, or the reason it has none (a string)."""
    d, t = pair.dominant, pair.target
    prompt, response, language = t.prompt, t.chosen, t.language
    prefix, how = "", None
    if component == "self_distill":
        prompt, response, language = d.prompt, d.chosen, d.language
    elif component == "code_switch":
        # One generator per pair: a pair's switch does not depend on the others or on the file order.
        rng = random.Random(f"{seed}:code_switch:{pair.id}")
        prompt, how = _switched_prompt(pair, cfg.switch_rate, rng)
    elif component == "partial":
        dom, tgt = sentences(d.chosen), sentences(t.chosen)
        if len(tgt) < 2:
            return "one_sentence"
        if len(dom) != len(tgt):
            return "unaligned"
        k = split_point(len(tgt), cfg.split_fraction)
        response, language, how = ("".join(tgt[:k]) + "".join(dom[k:])).strip(), MIXED, "sentence"
    elif component == "completion":
        pieces, how = sentences(t.chosen), "sentence"
        if len(pieces) < 2:
            pieces, how = words(t.chosen), "word"
        if len(pieces) < 2:
            return "one_word"
        k = split_point(len(pieces), cfg.split_fraction)
        prefix, response = "".join(pieces[:k]), "".join(pieces[k:])
    return TransferExample(
        id=f"{pair.id}:{component}",
        component=component,
        prompt=prompt,
        response=response,
        response_prefix=prefix,
        system=pair.system,
        language=language,
        granularity=how,
    )


def _copies(count: int, weight: float, rng: random.Random) -> list[int]:
    """Copies per example: floor(weight) each, plus one for round(frac(weight) * count) drawn ones."""
    whole = math.floor(weight)
    extra = math.floor((weight - whole) * count + 0.5)
    drawn = set(rng.sample(range(count), min(extra, count)))
    return [whole + (i in drawn) for i in range(count)]


def build_transfer_set(pairs: Sequence[ParallelPreferencePair], cfg: SdrrlConfig, seed: int) -> TransferSet:
    """SDRRL's transfer set from `pairs` (module docstring). ConfigError when every weight is 0 or nothing
    is left to train on."""
    weights = {component: float(getattr(cfg, component)) for component in COMPONENTS}
    if not any(weights.values()):
        raise ConfigError("sdrrl: every component's weight is 0 (sdrrl.self_distill ... sdrrl.completion)")
    examples: list[TransferExample] = []
    counts: dict[str, dict[str, Any]] = {}
    for component in COMPONENTS:
        weight = weights[component]
        if weight == 0:
            counts[component] = {"weight": 0.0, "examples": 0, "rows": 0}
            continue
        built, skipped, seen = [], Counter[str](), set()
        duplicates = 0
        for pair in pairs:
            example = _build(pair, component, cfg, seed)
            if isinstance(example, str):
                skipped[example] += 1
                continue
            key = (example.system, example.prompt, example.response_prefix, example.response)
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            built.append(example)
        copies = _copies(len(built), weight, random.Random(f"{seed}:copies:{component}"))
        kept = [replace(ex, copies=n) for ex, n in zip(built, copies, strict=True) if n > 0]
        examples.extend(kept)
        entry: dict[str, Any] = {
            "weight": weight,
            "examples": len(kept),
            "rows": sum(ex.copies for ex in kept),
            "duplicates": duplicates,
            "skipped": dict(sorted(skipped.items())),
        }
        granularity = Counter(ex.granularity for ex in kept if ex.granularity)
        if granularity:
            entry["granularity"] = dict(sorted(granularity.items()))
        counts[component] = entry
    if not examples:
        raise ConfigError(
            "sdrrl: the transfer set is empty (every enabled component skipped every pair: see "
            "docs/methods/sdrrl.md for what each component needs)"
        )
    return TransferSet(tuple(examples), counts)
