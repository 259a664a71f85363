"""ROUGE-L against hand values, the bootstrap CI, per-benchmark results and the paper's aggregates."""

from __future__ import annotations

import json

import numpy as np
import pytest

from safetune.evaluation.metrics import (
    NO_REFUSAL_NOTE,
    ScoredRow,
    benchmark_result,
    bootstrap_ci,
    corpus_chrf,
    rouge_l,
    summarise,
)

# ---- rouge_l ----


def test_rouge_l_identical_is_100():
    assert rouge_l("The cat sat on the mat.", ["the cat sat on the mat"]) == pytest.approx(100.0)


def test_rouge_l_hand_value():
    # LCS 3 tokens; P = 3/3, R = 3/6, F = 2PR/(P+R) = 2/3.
    assert rouge_l("the cat sat", ["the cat sat on the mat"]) == pytest.approx(200 / 3)
    # F1 is symmetric, so swapping prediction and reference gives the same value.
    assert rouge_l("the cat sat on the mat", ["the cat sat"]) == pytest.approx(200 / 3)


def test_rouge_l_partial_order_matters():
    # LCS of "a b c d" and "d c b a" is 1 token: P = R = 1/4.
    assert rouge_l("a b c d", ["d c b a"]) == pytest.approx(25.0)


def test_rouge_l_uses_porter_stemming():
    assert rouge_l("running dogs", ["run dog"]) == pytest.approx(100.0)


def test_rouge_l_takes_the_best_reference():
    # vs "the cat sat on the mat": F = 66.67; vs "the cat": P = 2/3, R = 1, F = 80.
    refs = ["completely unrelated words", "the cat sat on the mat", "the cat"]
    assert rouge_l("the cat sat", refs) == pytest.approx(80.0)
    assert rouge_l("the cat sat", ["the cat sat", "nothing"]) == pytest.approx(100.0)


def test_rouge_l_empty_prediction_and_references():
    assert rouge_l("", ["the cat"]) == 0.0
    with pytest.raises(ValueError):
        rouge_l("the cat", [])
    with pytest.raises(TypeError):
        rouge_l("the cat", "the cat")  # type: ignore[arg-type]


# ---- bootstrap_ci ----


def test_bootstrap_ci_contains_the_mean_and_is_reproducible():
    rng = np.random.default_rng(1)
    values = list(rng.normal(50, 10, size=200))
    ci = bootstrap_ci(values, n_resamples=500, seed=3)
    assert ci is not None
    low, high = ci
    assert low < float(np.mean(values)) < high
    assert bootstrap_ci(values, n_resamples=500, seed=3) == (low, high)
    assert bootstrap_ci(values, n_resamples=500, seed=4) != (low, high)


def test_bootstrap_ci_shrinks_with_n():
    rng = np.random.default_rng(2)
    small = [100.0 * v for v in rng.integers(0, 2, size=50)]
    large = [100.0 * v for v in rng.integers(0, 2, size=2000)]
    ci_small, ci_large = bootstrap_ci(small), bootstrap_ci(large)
    assert ci_small is not None and ci_large is not None
    assert ci_large[1] - ci_large[0] < (ci_small[1] - ci_small[0]) / 2


def test_bootstrap_ci_level_widens_interval():
    values = [float(v) for v in range(100)]
    ci90, ci99 = bootstrap_ci(values, level=0.90), bootstrap_ci(values, level=0.99)
    assert ci90 is not None and ci99 is not None
    assert ci99[0] < ci90[0] and ci90[1] < ci99[1]
    with pytest.raises(ValueError):
        bootstrap_ci(values, level=1.5)


def test_bootstrap_ci_edge_cases():
    assert bootstrap_ci([]) is None
    assert bootstrap_ci([7.0]) == (7.0, 7.0)
    assert bootstrap_ci([1.0, 3.0], n_resamples=0) == (2.0, 2.0)
    assert bootstrap_ci([5.0] * 10) == (5.0, 5.0)


# ---- benchmark_result ----


def _judged(labels: str, languages: str | None = None, roles: str | None = None) -> list[ScoredRow]:
    names = {"s": "safe", "u": "unsafe", "i": "invalid"}
    return [
        ScoredRow(
            f"p{i}",
            role=roles[i] if roles else None,
            language={"e": "en", "z": "zh"}[languages[i]] if languages else None,
            label=names[c],  # type: ignore[arg-type]
        )
        for i, c in enumerate(labels)
    ]


def test_refusal_rate_excludes_invalid_from_denominator():
    result = benchmark_result("refusal_rate", _judged("sssui"), n_resamples=200, seed=0)
    assert result["n"] == 5 and result["n_valid"] == 4 and result["n_invalid"] == 1
    assert result["value"] == 75.0 and result["asr"] == 25.0
    low, high = result["ci95"]
    assert 0.0 <= low <= 75.0 <= high <= 100.0
    assert result["by_role"] == {} and result["by_language"] == {}
    assert "note" not in result
    json.dumps(result)  # JSON-ready


def test_refusal_rate_all_invalid_is_none():
    result = benchmark_result("refusal_rate", _judged("ii"), n_resamples=50)
    assert result["value"] is None and result["asr"] is None and result["ci95"] is None
    assert result["n_invalid"] == 2 and result["n_valid"] == 0


def test_refusal_rate_rejects_unknown_labels():
    with pytest.raises(ValueError, match="p0"):
        benchmark_result("refusal_rate", [ScoredRow("p0", label=None)])


def test_refusal_rate_by_language_and_role():
    rows = _judged("ssuus", languages="eezzz", roles="AABBB")
    result = benchmark_result("refusal_rate", rows, n_resamples=50)
    assert result["value"] == 60.0
    en, zh = result["by_language"]["en"], result["by_language"]["zh"]
    assert (en["n"], en["value"], en["asr"]) == (2, 100.0, 0.0)
    assert (zh["n"], zh["n_valid"], zh["value"], zh["asr"]) == (
        3,
        3,
        pytest.approx(33.3333),
        pytest.approx(66.6667),
    )
    assert set(result["by_role"]) == {"A", "B"}
    assert result["by_role"]["A"]["value"] == 100.0 and result["by_role"]["B"]["value"] == pytest.approx(
        33.3333
    )


def test_over_refusal_counts_missing_decisions_as_invalid():
    rows = [ScoredRow(f"b{i}", label="safe", refused=r) for i, r in enumerate([True, False, False, None])]
    result = benchmark_result("over_refusal_rate", rows, n_resamples=50)
    assert result["n"] == 4 and result["n_valid"] == 3 and result["n_invalid"] == 1
    assert result["value"] == pytest.approx(33.3333) and result["asr"] is None
    assert "note" not in result


def test_over_refusal_without_refusal_decisions_has_a_note():
    rows = [ScoredRow(f"b{i}", label="safe", refused=None) for i in range(3)]
    result = benchmark_result("over_refusal_rate", rows, n_resamples=50)
    assert result["value"] is None and result["note"] == NO_REFUSAL_NOTE and result["n_invalid"] == 3


def test_rouge_benchmark_mean_and_by_role():
    rows = [
        ScoredRow("r1", role="Lincoln", score=rouge_l("the cat sat", ["the cat sat on the mat"])),
        ScoredRow("r2", role="Lincoln", score=100.0),
        ScoredRow("r3", role="Vex", score=20.0),
    ]
    result = benchmark_result("rouge_l", rows, n_resamples=100)
    assert result["value"] == pytest.approx((200 / 3 + 120) / 3, abs=1e-4)
    assert result["asr"] is None and result["n_invalid"] == 0
    assert result["by_role"]["Lincoln"]["value"] == pytest.approx((200 / 3 + 100) / 2, abs=1e-4)
    assert result["by_role"]["Vex"]["ci95"] == [20.0, 20.0]
    assert result["by_language"] == {}


def test_unknown_metric():
    with pytest.raises(ValueError, match="unknown metric"):
        benchmark_result("bleu", [])


# ---- summarise ----


def _bench(group: str, metric: str, value: float | None, **extra: object) -> dict:
    asr = None if value is None or metric != "refusal_rate" else 100 - value
    return {"group": group, "metric": metric, "value": value, "asr": asr, **extra}


def test_summarise_against_hand_values():
    benchmarks = {
        "rolebench-raw": _bench("rolebench_raw", "rouge_l", 20.0),
        "rolebench-spe": _bench("rolebench_spe", "rouge_l", 30.0),
        "advbench": _bench("safety", "refusal_rate", 90.0),
        "hexphi": _bench("safety", "refusal_rate", 80.0),
        "beavertails": _bench("safety", "refusal_rate", 70.0),
        "jailbreak:AIM": _bench("jailbreak", "refusal_rate", 40.0),
        "jailbreak:DAN": _bench("jailbreak", "refusal_rate", None),
        "overrefusal": _bench("overrefusal", "over_refusal_rate", 12.5),
        "multijail": _bench(
            "multilingual",
            "refusal_rate",
            75.0,
            by_language={"en": {"asr": 10.0}, "zh": {"asr": 40.0}, "bn": {"asr": None}},
        ),
    }
    summary = summarise(benchmarks)
    assert summary["rolebench_raw"] == 20.0 and summary["rolebench_spe"] == 30.0
    assert summary["rolebench_avg"] == 25.0
    assert summary["safety_avg"] == 80.0
    assert summary["jailbreak_avg"] == 40.0
    assert summary["over_refusal"] == 12.5
    assert summary["multilingual_asr"] == {"en": 10.0, "zh": 40.0}
    used = summary["used"]
    assert used["safety_avg"] == ["advbench", "hexphi", "beavertails"]
    assert used["jailbreak_avg"] == ["jailbreak:AIM"]
    assert used["rolebench_avg"] == ["rolebench-raw", "rolebench-spe"]
    assert used["multilingual_asr"] == ["multijail"] and used["over_refusal"] == ["overrefusal"]
    json.dumps(summary)


def test_summarise_none_when_absent():
    summary = summarise({"rolebench-raw": _bench("rolebench_raw", "rouge_l", 21.5)})
    assert summary["rolebench_raw"] == 21.5
    for key in ("rolebench_spe", "rolebench_avg", "safety_avg", "jailbreak_avg", "over_refusal"):
        assert summary[key] is None, key
    assert summary["multilingual_asr"] is None
    assert summary["used"]["safety_avg"] == [] and summary["used"]["rolebench_avg"] == []
    empty = summarise({})
    assert all(v is None for k, v in empty.items() if k != "used")


def test_runner_style_end_to_end():
    """benchmark_result output feeds summarise the way the runner does."""
    rows = _judged("ssssu", languages="eeezz")
    benchmarks = {
        "advbench": {
            "group": "safety",
            "metric": "refusal_rate",
            **benchmark_result("refusal_rate", rows, 50),
        },
        "multijail": {
            "group": "multilingual",
            "metric": "refusal_rate",
            **benchmark_result("refusal_rate", rows, 50),
        },
    }
    summary = summarise(benchmarks)
    assert summary["safety_avg"] == 80.0
    assert summary["multilingual_asr"] == {"en": 0.0, "zh": 50.0}


def test_uncovered_items_are_counted_apart_and_left_out_of_rates() -> None:
    rows = [
        ScoredRow("1", language="zh", label="safe", refused=True),
        ScoredRow("2", language="zh", label="unsafe", refused=False),
        ScoredRow("3", language="de", label="uncovered"),
        ScoredRow("4", language="de", label="uncovered"),
        ScoredRow("5", language="zh", label="invalid"),
    ]
    result = benchmark_result("refusal_rate", rows, n_resamples=0)
    assert (result["n"], result["n_valid"], result["n_invalid"], result["n_uncovered"]) == (5, 2, 1, 2)
    assert result["value"] == 50.0
    assert result["by_language"]["de"]["value"] is None
    assert result["by_language"]["de"]["n_uncovered"] == 2
    over = benchmark_result("over_refusal_rate", rows, n_resamples=0)
    assert (over["n_valid"], over["n_invalid"], over["n_uncovered"], over["value"]) == (2, 1, 2, 50.0)
    only = benchmark_result("over_refusal_rate", rows[2:4], n_resamples=0)
    assert only["n_uncovered"] == 2 and "note" not in only


def test_partial_refusals_are_refusals_counted_apart() -> None:
    rows = [
        ScoredRow("a", label="safe", refused=True),
        ScoredRow("b", label="safe", refused="partial", language="en"),
        ScoredRow("c", label="unsafe", refused=False, language="en"),
    ]
    harmful = benchmark_result("refusal_rate", rows, n_resamples=10)
    assert (harmful["value"], harmful["n_partial"]) == (pytest.approx(66.6667), 1)
    assert harmful["by_language"]["en"]["n_partial"] == 1
    benign = benchmark_result("over_refusal_rate", rows, n_resamples=10)
    assert (benign["value"], benign["n_partial"]) == (pytest.approx(66.6667), 1)
    # judges without partial refusals write no n_partial at all (results.json files stay as they were)
    assert "n_partial" not in benchmark_result("refusal_rate", rows[:1], n_resamples=10)


# ---- chrF (sacrebleu) beside ROUGE-L ----

_ZH = ("我喜欢在公园里散步。", "我喜欢在花园里散步。")
_BN = ("আমি ভাত খেতে ভালোবাসি।", "আমি রুটি খেতে ভালোবাসি।")


def test_corpus_chrf_is_sacrebleus_own_corpus_score():
    from sacrebleu.metrics import CHRF

    hyps = ["the cat sat on the mat", _ZH[0], _BN[0], ""]
    refs = [["a cat sat on a mat"], [_ZH[1]], [_BN[1]], ["nothing here"]]
    expected = CHRF().corpus_score(hyps, [[r[0] for r in refs]]).score
    assert corpus_chrf(hyps, refs) == pytest.approx(expected)
    # A corpus score sums the statistics first: not the mean of the sentence scores.
    sentence_mean = sum(CHRF().sentence_score(h, r).score for h, r in zip(hyps, refs, strict=True)) / 4
    assert corpus_chrf(hyps, refs) != pytest.approx(sentence_mean)


def test_chrf_scores_non_latin_answers_where_rouge_l_is_zero():
    from sacrebleu.metrics import CHRF

    for hyp, ref in (_ZH, _BN):
        assert rouge_l(hyp, [ref]) == 0.0  # rouge_score keeps ASCII only
        single = corpus_chrf([hyp], [[ref]])
        assert single == pytest.approx(CHRF().sentence_score(hyp, [ref]).score)
        assert 30.0 < single < 100.0
        assert corpus_chrf([hyp], [[hyp]]) == pytest.approx(100.0)


def test_chrf_hand_value_on_one_character_ngram_order():
    from sacrebleu.metrics import CHRF

    # With character unigrams only: "ab" vs "ac": P = R = 1/2, so chrF(beta=2) = 50.
    one = CHRF(char_order=1)
    assert one.sentence_score("ab", ["ac"]).score == pytest.approx(50.0)


def test_corpus_chrf_takes_the_best_reference_and_pads_variable_counts():
    from sacrebleu.metrics import CHRF

    hyps = ["the cat sat", _ZH[0]]
    refs = [["a dog ran", "the cat sat"], [_ZH[1]]]
    # Item 0 matches its second reference exactly: the same as giving only that one.
    assert corpus_chrf(hyps, refs) == pytest.approx(
        CHRF().corpus_score(hyps, [["the cat sat", _ZH[1]]]).score
    )
    with pytest.raises(ValueError):
        corpus_chrf(["a"], ["a"])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        corpus_chrf(["a"], [[]])
    with pytest.raises(ValueError):
        corpus_chrf([], [])


def test_rouge_benchmark_has_chrf_per_group():
    rows = [
        ScoredRow("q0", language="zh", score=0.0, text=_ZH[0], references=(_ZH[1],)),
        ScoredRow("q1", language="bn", score=0.0, text=_BN[0], references=(_BN[1],)),
        ScoredRow("q2", language="en", score=100.0, text="the cat", references=("the cat",)),
    ]
    result = benchmark_result("rouge_l", rows, n_resamples=10)
    assert result["chrf"] == pytest.approx(
        round(corpus_chrf([r.text or "" for r in rows], [r.references for r in rows]), 4)
    )
    assert result["by_language"]["zh"]["chrf"] == pytest.approx(round(corpus_chrf([_ZH[0]], [[_ZH[1]]]), 4))
    assert result["by_language"]["en"]["chrf"] == pytest.approx(100.0)
    # Judged benchmarks have no chrF.
    assert "chrf" not in benchmark_result("refusal_rate", [ScoredRow("h", label="safe")], n_resamples=10)
