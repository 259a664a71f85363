"""results.json's utility section from lm-eval's result dicts (hand-made, in lm-eval 0.4's layout), its
typed round trip, and the one-line errors of the utility stage."""

from __future__ import annotations

import math
import sys

import pytest

from safetune.config import load_config
from safetune.errors import ConfigError
from safetune.evaluation.results import Results
from safetune.evaluation.utility import lm_eval_version, metric_values, utility_entry


def _row(name: str, tasks: list[str], lm_eval: dict) -> dict:
    return {
        "lm_eval_task": name,
        "tasks": {t: {"version": 1, "config_hash": "h"} for t in tasks},
        "lm_eval": lm_eval,
    }


def test_metric_values_keeps_lm_evals_keys_and_pairs_the_stderr():
    entry = {
        "alias": "gsm8k",
        "exact_match,strict-match": 0.25,
        "exact_match_stderr,strict-match": 0.1,
        "exact_match,flexible-extract": 0.5,
        "exact_match_stderr,flexible-extract": "N/A",
    }
    assert metric_values(entry) == {
        "exact_match,strict-match": {"value": 0.25, "stderr": 0.1},
        "exact_match,flexible-extract": {"value": 0.5, "stderr": None},
    }


def test_a_tag_of_languages_is_the_mean_of_its_tasks_with_by_language():
    lm = {
        "results": {
            "m_mmlu_ar": {"acc,none": 0.3, "acc_stderr,none": 0.03},
            "m_mmlu_bn": {"acc,none": 0.5, "acc_stderr,none": 0.04},
        },
        "versions": {"m_mmlu_ar": 0.0, "m_mmlu_bn": 0.0},
        "n-shot": {"m_mmlu_ar": 5, "m_mmlu_bn": 5},
        "n-samples": {
            "m_mmlu_ar": {"original": 10, "effective": 10},
            "m_mmlu_bn": {"original": 10, "effective": 6},
        },
    }
    entry = utility_entry(_row("m_mmlu", ["m_mmlu_ar", "m_mmlu_bn"], lm))
    assert entry["aggregate"] == "mean of tasks" and entry["primary"] == "acc,none"
    assert entry["metrics"]["acc,none"]["value"] == pytest.approx(0.4)
    assert entry["metrics"]["acc,none"]["stderr"] == pytest.approx(math.sqrt(0.03**2 + 0.04**2) / 2)
    assert entry["n"] == 16 and entry["n_shot"] == 5
    assert entry["by_language"]["bn"] == {
        "task": "m_mmlu_bn",
        "n": 6,
        "metrics": {"acc,none": {"value": 0.5, "stderr": 0.04}},
    }


def test_a_group_with_its_own_aggregate_and_subject_tasks_has_no_languages():
    lm = {
        "results": {
            "mmlu_law": {"acc,none": 0.2, "acc_stderr,none": 0.1},
            "mmlu_abstract_algebra": {"acc,none": 0.6, "acc_stderr,none": 0.1},
        },
        "groups": {"mmlu": {"acc,none": 0.35, "acc_stderr,none": 0.07}},
        "versions": {"mmlu": "2"},
        "n-shot": {"mmlu": 0},
        "n-samples": {"mmlu_law": {"effective": 3}, "mmlu_abstract_algebra": {"effective": 5}},
    }
    entry = utility_entry(_row("mmlu", ["mmlu_law", "mmlu_abstract_algebra"], lm))
    assert entry["aggregate"] == "lm-eval" and entry["version"] == "2"
    assert entry["metrics"] == {"acc,none": {"value": 0.35, "stderr": 0.07}}
    assert entry["by_language"] == {}  # "law" reads like a code, "abstract_algebra" does not: no languages


def test_utility_section_round_trips_and_old_files_stay_the_same():
    base = {"schema_version": 1, "provenance": {}, "benchmarks": {}, "summary": {}}
    assert "utility" not in Results.from_dict(base).to_dict()
    lm = {"results": {"t_en": {"acc,none": 1.0}, "t_de": {"acc,none": 0.0}}, "n-samples": {}}
    data = {**base, "utility": {"t": utility_entry(_row("t", ["t_en", "t_de"], lm))}}
    typed = Results.from_dict(data)
    assert typed.utility["t"].by_language["de"].metrics["acc,none"].value == 0.0
    assert Results.from_dict(typed.to_dict()).to_dict() == typed.to_dict()
    bad = {**base, "utility": {"t": {"metrics": {"acc,none": {"value": "high"}}}}}
    with pytest.raises(Exception, match=r"utility\.t\.metrics\.acc,none\.value"):
        Results.from_dict(bad)


def test_missing_lm_eval_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval -> ImportError
    with pytest.raises(ConfigError, match=r"pip install 'safetune\[utility\]'"):
        lm_eval_version()


def test_utility_settings_are_range_checked():
    with pytest.raises(ConfigError, match=r"eval\.utility_limit"):
        load_config(None, ["eval.utility_limit=0"])
    with pytest.raises(ConfigError, match=r"eval\.utility_fewshot"):
        load_config(None, ["eval.utility_fewshot=-1"])
    assert load_config(None, ["eval.utility=mmlu,gsm8k"]).eval.utility == ["mmlu", "gsm8k"]
