"""The records and protocols that connect the evaluation stages.

    benchmarks (Prompt) -> backend (GenerationRequest -> GenerationResult) -> judge (JudgeItem -> Verdict)
    -> metrics (results.json)

Backends and judges yield finished work in batches so that the runner can append each batch to its
JSONL file as soon as it exists: a killed run loses at most one batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

Label = Literal["safe", "unsafe", "invalid", "uncovered"]
LABELS: tuple[str, ...] = ("safe", "unsafe", "invalid", "uncovered")
PARTIAL: Literal["partial"] = "partial"
# Whether a response refuses: True, False, PARTIAL (refuses a part and answers another), None (the judge
# cannot tell).
Refused = bool | Literal["partial"] | None


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt to answer. `id` is unique within an evaluation run ("<benchmark>/<prompt id>")."""

    id: str
    user: str
    system: str | None = None
    # The conversation before `user`, as (role, content) pairs with role "user" or "assistant": the
    # request is then rendered through the chat template as messages (backends.request_ids). Empty for
    # a single-turn request, whose rendering is exactly the single-turn one.
    history: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class GenerationResult:
    id: str
    text: str
    num_tokens: int  # generated tokens, end token included when produced
    finish_reason: Literal["stop", "length"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Backend(Protocol):
    """Generates answers. Implementations: evaluation/backends.py (hf, vllm, mock)."""

    name: str

    def generate(self, requests: Sequence[GenerationRequest]) -> Iterator[list[GenerationResult]]:
        """Yield results batch by batch (any order of requests inside; every request exactly once)."""
        ...


@dataclass(frozen=True)
class JudgeItem:
    id: str
    prompt: str  # the user prompt as the benchmark gave it (no template, no system prompt)
    response: str
    language: str | None = None  # the prompt's language tag, when the benchmark gives one
    # The conversation before `prompt` (a turn-k request's history: GenerationRequest.history, (role,
    # content) pairs, "user" / "assistant"); empty for a single-turn item. The judges that can read a
    # conversation (guard presets with `history`, the llm judge) are given it; the others judge the last
    # turn (evaluation/judges/*.py say why).
    history: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Verdict:
    """A judge's decision on one response.

    label: "safe" (refused or harmless), "unsafe" (complied: an attack success), "invalid" (the judge
        gave no usable answer), or "uncovered" (the judge does not cover the prompt's or the answer's
        language, e.g. the keyword judge on a Russian answer). invalid and uncovered are counted apart,
        never silently dropped, and excluded from rates' denominators.
    refused: whether the response is a refusal, for judges that can tell (keyword, action classifier);
        None otherwise. "partial" (keyword judge): it refuses a part of the request and answers another,
        or refuses and then answers anyway; its label is "safe" (no attack success), over-refusal
        rates count it as a refusal, and results count it apart (n_partial).
    raw: the judge's own output (matched phrase, class id, generated text), for auditing.
    probability: the judge's probability that the response is unsafe (complied), 0..1, for judges that
        give one (classifiers' softmax, yes/no guards' answer logits); None otherwise. The label does
        not depend on it being present; rows written before it existed read as None.
    """

    id: str
    label: Label
    refused: Refused
    raw: str
    probability: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Judge(Protocol):
    """Labels responses. Implementations: evaluation/judges/."""

    name: str
    version: str

    def key(self) -> str:
        """Identifies everything that changes verdicts (name, version, model fingerprint, prompt...).

        Judgements made under another key are not reused."""
        ...

    def judge(self, items: Sequence[JudgeItem]) -> Iterator[list[Verdict]]:
        """Yield verdicts batch by batch, one per item."""
        ...
