"""How far two labellings of the same items agree: a judge against human labels (`safetune judge
--labels`), or one judge against another. Pure functions over (reference, predicted) label pairs.

- accuracy: the share of items with the same label.
- Cohen's kappa: (p_o - p_e) / (1 - p_e), p_o the accuracy and p_e the agreement expected by chance
  from the two labellings' own label frequencies (Cohen 1960). None when it is undefined (p_e = 1: both
  gave every item one and the same label).
- per class: precision = right / predicted as that class, recall = right / reference of that class
  (None when the denominator is 0), and the class's support (its reference count).
- the confusion table: reference label -> predicted label -> count, over every class of either side.

Numbers are rounded to 4 decimals; an empty list of pairs has n 0 and every number None.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_DECIMALS = 4


@dataclass(frozen=True)
class ClassScores:
    precision: float | None
    recall: float | None
    support: int  # items whose reference label is this class

    def to_dict(self) -> dict[str, Any]:
        return {"precision": self.precision, "recall": self.recall, "support": self.support}


@dataclass(frozen=True)
class Agreement:
    """The agreement of predicted with reference labels over `n` items; `classes` in a fixed order."""

    n: int
    classes: tuple[str, ...]
    accuracy: float | None
    kappa: float | None
    per_class: dict[str, ClassScores]
    confusion: dict[str, dict[str, int]]  # reference -> predicted -> count

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "accuracy": self.accuracy,
            "kappa": self.kappa,
            "per_class": {name: scores.to_dict() for name, scores in self.per_class.items()},
            "confusion": self.confusion,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, _DECIMALS)


def accuracy(pairs: Sequence[tuple[str, str]]) -> float | None:
    return sum(ref == pred for ref, pred in pairs) / len(pairs) if pairs else None


def cohen_kappa(pairs: Sequence[tuple[str, str]]) -> float | None:
    if not pairs:
        return None
    n = len(pairs)
    observed = sum(ref == pred for ref, pred in pairs) / n
    reference, predicted = Counter(ref for ref, _ in pairs), Counter(pred for _, pred in pairs)
    expected = sum(reference[label] * predicted[label] for label in reference) / (n * n)
    return None if expected == 1.0 else (observed - expected) / (1.0 - expected)


def agreement(pairs: Sequence[tuple[str, str]], classes: Sequence[str] = ()) -> Agreement:
    """Accuracy, kappa, per-class precision / recall and the confusion table of (reference, predicted)
    pairs. `classes` fixes the order of the tables; labels not in it follow, sorted."""
    seen = {label for pair in pairs for label in pair}
    order = tuple(classes) + tuple(sorted(seen - set(classes)))
    counts = Counter(pairs)
    confusion = {ref: {pred: counts[(ref, pred)] for pred in order} for ref in order}
    per_class = {}
    for label in order:
        right = counts[(label, label)]
        predicted = sum(confusion[ref][label] for ref in order)
        support = sum(confusion[label].values())
        per_class[label] = ClassScores(
            precision=_round(right / predicted) if predicted else None,
            recall=_round(right / support) if support else None,
            support=support,
        )
    return Agreement(
        n=len(pairs),
        classes=order,
        accuracy=_round(accuracy(pairs)),
        kappa=_round(cohen_kappa(pairs)),
        per_class=per_class,
        confusion=confusion,
    )
