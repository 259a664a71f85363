"""Which sampled answers become the expert's training rows, and the counts of the rest.

One seed prompt asks for `expert.samples` refusals (the authors' num_trials); each is a slot, sampled up
to `expert.attempts` times (their max_trials) until an answer is kept. An answer is kept when it is at
least `expert.min_chars` characters long (their `len(completion) < min_new_tokens` check, in characters)
and the judge says it refuses outright (Verdict.refused is True). Everything else is dropped, counted
under one reason:

    too_short           shorter than expert.min_chars
    complied            the judge says it answers (refused False)
    partial             it refuses a part and answers another (keyword judge's "partial")
    no_refusal_verdict  the judge labels safe/unsafe without telling refusals (refused None: llm)
    invalid             the judge gave no usable verdict (empty answers among them)
    uncovered           the judge does not cover the answer's language
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from safetune.evaluation.items import PARTIAL

REASONS: tuple[str, ...] = (
    "too_short",
    "complied",
    "partial",
    "no_refusal_verdict",
    "invalid",
    "uncovered",
)


def drop_reason(text: str, verdict: dict[str, Any], min_chars: int) -> str | None:
    """None when the answer is kept, else why it is dropped (one of REASONS). `verdict` is a verdict row
    (Verdict.to_dict(): label, refused, raw)."""
    if len(text.strip()) < min_chars:
        return "too_short"
    label, refused = verdict.get("label"), verdict.get("refused")
    if label == "invalid":
        return "invalid"
    if label == "uncovered":
        return "uncovered"
    if refused is True:
        return None
    if refused == PARTIAL:
        return "partial"
    if refused is False:
        return "complied"
    return "no_refusal_verdict"


def slot_id(prompt_id: str, sample: int) -> str:
    """One sought refusal of a prompt: "<prompt id>/s<k>" (k from 1)."""
    return f"{prompt_id}/s{sample}"


def request_id(prompt_id: str, sample: int, attempt: int) -> str:
    """One sampled answer: "<prompt id>/s<k>/a<n>"; the hf backend seeds its sample by this id, so every
    attempt draws anew and a resumed run draws the same."""
    return f"{slot_id(prompt_id, sample)}/a{attempt}"


@dataclass
class Tally:
    """What happened to every sampled answer and every slot."""

    answers: int = 0  # sampled answers judged
    dropped: Counter[str] = field(default_factory=Counter)  # answers dropped, by reason
    kept_by_attempt: Counter[int] = field(
        default_factory=Counter
    )  # kept slots by the attempt that filled them
    unfilled: int = 0  # slots with no kept answer after every attempt
    kept_by_category: Counter[str] = field(default_factory=Counter)

    def answer(self, reason: str | None) -> None:
        self.answers += 1
        if reason is not None:
            self.dropped[reason] += 1

    @property
    def kept(self) -> int:
        return sum(self.kept_by_attempt.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "answers": self.answers,
            "kept": self.kept,
            "dropped": {reason: self.dropped[reason] for reason in REASONS},
            "kept_by_attempt": {str(k): v for k, v in sorted(self.kept_by_attempt.items())},
            "unfilled_slots": self.unfilled,
            "kept_by_category": dict(sorted(self.kept_by_category.items())),
        }
