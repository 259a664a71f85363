"""Agreement of two labellings (evaluation/agreement.py): accuracy, Cohen's kappa, per-class precision /
recall and the confusion table, against values computed by hand."""

from __future__ import annotations

import pytest

from safetune.evaluation.agreement import accuracy, agreement, cohen_kappa


def _pairs(*counts: tuple[str, str, int]) -> list[tuple[str, str]]:
    return [(ref, pred) for ref, pred, n in counts for _ in range(n)]


def test_two_classes_by_hand() -> None:
    # reference a 5 (4 right), b 5 (3 right); predicted a 6, b 4.
    pairs = _pairs(("a", "a", 4), ("a", "b", 1), ("b", "b", 3), ("b", "a", 2))
    # p_o = 7/10; p_e = (5*6 + 5*4) / 100 = 0.5; kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4
    assert accuracy(pairs) == pytest.approx(0.7)
    assert cohen_kappa(pairs) == pytest.approx(0.4)
    found = agreement(pairs)
    assert (found.n, found.accuracy, found.kappa) == (10, 0.7, 0.4)
    assert found.confusion == {"a": {"a": 4, "b": 1}, "b": {"a": 2, "b": 3}}
    # precision a = 4/6, recall a = 4/5; precision b = 3/4, recall b = 3/5
    assert found.per_class["a"].to_dict() == {"precision": 0.6667, "recall": 0.8, "support": 5}
    assert found.per_class["b"].to_dict() == {"precision": 0.75, "recall": 0.6, "support": 5}


def test_three_classes_with_a_class_never_predicted() -> None:
    pairs = _pairs(("compliance", "compliance", 2), ("refusal", "refusal", 1), ("partial", "refusal", 1))
    # p_o = 3/4; reference c2 r1 p1, predicted c2 r2 p0: p_e = (4 + 2 + 0) / 16 = 0.375
    # kappa = (0.75 - 0.375) / 0.625 = 0.6
    found = agreement(pairs, ("compliance", "refusal", "partial"))
    assert found.classes == ("compliance", "refusal", "partial")
    assert (found.accuracy, found.kappa) == (0.75, 0.6)
    assert found.per_class["partial"].to_dict() == {"precision": None, "recall": 0.0, "support": 1}
    assert found.per_class["refusal"].to_dict() == {"precision": 0.5, "recall": 1.0, "support": 1}
    assert found.confusion["partial"] == {"compliance": 0, "refusal": 1, "partial": 0}


def test_kappa_matches_a_published_example() -> None:
    # Cohen's kappa of the classic 2x2 table (yes/yes 20, yes/no 5, no/yes 10, no/no 15): 0.4
    pairs = _pairs(("yes", "yes", 20), ("yes", "no", 5), ("no", "yes", 10), ("no", "no", 15))
    assert cohen_kappa(pairs) == pytest.approx(0.4)


def test_undefined_and_empty() -> None:
    same = [("a", "a")] * 3
    assert cohen_kappa(same) is None  # p_e = 1: both raters gave one label to everything
    assert agreement(same).accuracy == 1.0
    empty = agreement([], ("x", "y"))
    assert (empty.n, empty.accuracy, empty.kappa) == (0, None, None)
    assert empty.per_class["x"].to_dict() == {"precision": None, "recall": None, "support": 0}
    # complete disagreement on two balanced classes: kappa -1
    assert cohen_kappa([("a", "b"), ("b", "a")]) == pytest.approx(-1.0)


def test_labels_outside_the_given_classes_follow_sorted() -> None:
    found = agreement([("z", "a"), ("a", "a")], ("a",))
    assert found.classes == ("a", "z")
