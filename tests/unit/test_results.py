"""results.json as a type: byte-identical round trips, one-line errors naming the field, which way each
metric is better."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from safetune.errors import DataError
from safetune.evaluation.metrics import NO_REFUSAL_NOTE, ScoredRow, benchmark_result, summarise
from safetune.evaluation.results import (
    AGGREGATES,
    ASR,
    METRICS,
    OVER_REFUSAL_RATE,
    REFUSAL_RATE,
    RESULTS_FILE,
    ROUGE_L,
    SCHEMA_VERSION,
    Results,
    load,
)

# A results.json as `safetune eval` wrote it before this module existed (every benchmark kind, a role-play
# set with roles, MultiJail with languages; paths shortened to /data).
GOLDEN = Path(__file__).parent / "data" / "results_v1.json"


def _text(content: dict[str, Any]) -> str:
    """What `storage.write_json` writes."""
    return json.dumps(content, indent=2, ensure_ascii=False) + "\n"


def test_a_file_the_runner_wrote_loads_and_reserialises_byte_for_byte(tmp_path):
    results = load(GOLDEN)
    assert _text(results.to_dict()) == GOLDEN.read_text(encoding="utf-8")
    results.save(tmp_path / RESULTS_FILE)
    assert (tmp_path / RESULTS_FILE).read_bytes() == GOLDEN.read_bytes()
    assert load(tmp_path) == results  # an evaluation folder stands for its results.json


def test_typed_attributes_of_the_golden_file():
    results = load(GOLDEN)
    multijail = results.benchmarks["multijail"]
    assert multijail.metric is REFUSAL_RATE and multijail.group == "multilingual"
    assert set(multijail.by_language) == {"en", "zh"} and multijail.by_language["zh"].n == 1
    raw = results.benchmarks["rolebench-raw"]
    assert raw.metric is ROUGE_L and set(raw.by_role) == {"Grim Vex", "Penny Bun"}
    assert isinstance(raw.ci95, tuple) and raw.asr is None and raw.note is None
    assert results.benchmarks["overrefusal"].metric is OVER_REFUSAL_RATE
    summary = results.summary
    assert summary.sources("safety_avg") == ("advbench", "hexphi", "beavertails")
    assert summary.sources("nothing") == ()
    assert list(summary.numbers()) == [k for k in AGGREGATES if k != "multilingual_asr"]
    assert summary.value("safety_avg") == summary.safety_avg
    with pytest.raises(KeyError):
        summary.value("multilingual_asr")
    provenance = results.provenance
    assert provenance.model is not None and provenance.model.base == "/data/tiny_chatml0"
    assert provenance.judge is not None and provenance.judge.name == "classifier"
    assert provenance.counts == {"requests": 22, "generated_now": 0, "judged_now": 17}
    assert provenance.roles == () and provenance.extra == {}


def _computed() -> dict[str, Any]:
    """Results computed as the runner computes them, with a note, roles and languages."""
    header = {"version": "1", "source": None}
    roleplay = [ScoredRow(f"r{i}", role=role, score=10.0 * i) for i, role in enumerate(["A", "B", "A"])]
    harmful = [ScoredRow(f"h{i}", language=lang, label="safe") for i, lang in enumerate(["en", "zh", "de"])]
    harmful.append(ScoredRow("h9", language="de", label="uncovered"))
    benign = [ScoredRow(f"b{i}", label="safe", refused=None) for i in range(3)]  # no refusal decisions
    benchmarks = {
        "rolebench-raw": {
            "name": "rolebench-raw",
            **header,
            "kind": "roleplay",
            "metric": "rouge_l",
            "group": "rolebench_raw",
            **benchmark_result("rouge_l", roleplay, 20, 0),
        },
        "multijail": {
            "name": "multijail",
            **header,
            "kind": "harmful",
            "metric": "refusal_rate",
            "group": "multilingual",
            **benchmark_result("refusal_rate", harmful, 20, 0),
        },
        "overrefusal": {
            "name": "overrefusal",
            **header,
            "kind": "overrefusal",
            "metric": "over_refusal_rate",
            "group": None,
            **benchmark_result("over_refusal_rate", benign, 20, 0),
        },
    }
    # The runner orders a benchmark's header before its numbers: name, version, kind, metric, group, source.
    order = ["name", "version", "kind", "metric", "group", "source"]
    benchmarks = {
        name: {**{k: b[k] for k in order}, **{k: v for k, v in b.items() if k not in order}}
        for name, b in benchmarks.items()
    }
    provenance = {
        "safetune_version": "0.1.0",
        "git_commit": None,
        "created": "2025-01-01T00:00:00+00:00",
        "model": {
            "label": "m",
            "base": "m",
            "adapter": "runs/x/final",
            "tokenizer": "m",
            "revision": None,
            "fingerprint": "f",
        },
        "backend": "mock",
        "generation": {"backend": "mock", "seed": 1},
        "judge": {"name": "keyword", "version": "kw-1", "key": "keyword:kw-1"},
        "eval": {"roles": ["B", "A", "B"]},
        "config_hash": "h",
        "seed": 1,
        "counts": {"requests": 10, "generated_now": 10, "judged_now": 7},
        "machine": {"threads": 1},  # a key this module does not know: kept, after the known ones
    }
    summary = summarise(benchmarks)
    return {"schema_version": 1, "provenance": provenance, "benchmarks": benchmarks, "summary": summary}


def test_computed_results_round_trip_with_notes_roles_languages_and_unknown_provenance():
    content = _computed()
    results = Results.from_dict(content)
    assert _text(results.to_dict()) == _text(content)
    assert results.benchmarks["overrefusal"].note == NO_REFUSAL_NOTE
    assert results.benchmarks["multijail"].by_language["de"].n_uncovered == 1
    assert results.provenance.extra == {"machine": {"threads": 1}}
    assert results.provenance.roles == ("A", "B")
    assert results.summary.multilingual_asr == {"de": 0.0, "en": 0.0, "zh": 0.0}


def test_partial_refusal_counts_round_trip():
    content = _computed()
    name, bench = next(iter(content["benchmarks"].items()))
    at = list(bench).index("ci95") + 1  # written right after ci95
    items = list(bench.items())
    content["benchmarks"][name] = dict([*items[:at], ("n_partial", 2), *items[at:]])
    results = Results.from_dict(content)
    assert next(iter(results.benchmarks.values())).n_partial == 2
    assert _text(results.to_dict()) == _text(content)


def _set(*keys: str, value: Any) -> Any:
    def mutate(content: dict[str, Any]) -> None:
        target = content
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return mutate


def _drop(*keys: str) -> Any:
    def mutate(content: dict[str, Any]) -> None:
        target = content
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]

    return mutate


@pytest.mark.parametrize(
    ("mutate", "field", "says"),
    [
        (_drop("schema_version"), "schema_version", "missing"),
        (_set("schema_version", value=2), "schema_version", "unsupported version 2"),
        (_set("schema_version", value="1"), "schema_version", "unsupported version '1'"),
        (_drop("provenance"), "provenance", "missing"),
        (_set("benchmarks", value=[]), "benchmarks", "expected an object"),
        (_set("provenance", "model", value="m"), "provenance.model", "expected an object or null"),
        (_drop("provenance", "model", "base"), "provenance.model.base", "missing or not a string"),
        (_set("provenance", "judge", "name", value=3), "provenance.judge.name", "expected a string"),
        (_set("provenance", "seed", value="42"), "provenance.seed", "expected an integer"),
        (_set("benchmarks", "multijail", value=7), "benchmarks.multijail", "expected an object"),
        (_drop("benchmarks", "multijail", "n"), "benchmarks.multijail.n", "missing"),
        (_set("benchmarks", "multijail", "n", value=True), "benchmarks.multijail.n", "expected an integer"),
        (_set("benchmarks", "multijail", "value", value="75"), "benchmarks.multijail.value", "a number"),
        (
            _set("benchmarks", "multijail", "n_invalid", value=1.5),
            "benchmarks.multijail.n_invalid",
            "integer",
        ),
        (
            _set("benchmarks", "multijail", "ci95", value=[1, 2, 3]),
            "benchmarks.multijail.ci95",
            "[low, high]",
        ),
        (_drop("benchmarks", "multijail", "metric"), "benchmarks.multijail.metric", "missing"),
        (_set("benchmarks", "multijail", "metric", value="bleu"), "benchmarks.multijail.metric", "unknown"),
        (_set("benchmarks", "multijail", "kind", value=1), "benchmarks.multijail.kind", "a string"),
        (
            _drop("benchmarks", "rolebench-raw", "by_role", "A", "value"),
            "benchmarks.rolebench-raw.by_role.A.value",
            "missing",
        ),
        (
            _set("benchmarks", "multijail", "by_language", value=["en"]),
            "benchmarks.multijail.by_language",
            "object",
        ),
        (_set("summary", "over_refusal", value="3"), "summary.over_refusal", "a number"),
        (_set("summary", "multilingual_asr", "en", value="x"), "summary.multilingual_asr.en", "a number"),
        (_set("summary", "used", value=[]), "summary.used", "an object of lists"),
        (_set("summary", "used", "safety_avg", value=[1]), "summary.used.safety_avg", "benchmark names"),
    ],
)
def test_load_names_file_and_field_in_one_line(tmp_path, mutate, field, says):
    content = copy.deepcopy(_computed())
    mutate(content)
    path = tmp_path / RESULTS_FILE
    path.write_text(json.dumps(content), encoding="utf-8")
    with pytest.raises(DataError) as info:
        load(path)
    assert info.value.field == field and says in info.value.message
    message = str(info.value)
    assert message.startswith(f"{path}: field '{field}'") and "\n" not in message


def test_load_missing_broken_and_non_object_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load(tmp_path / "nowhere")
    broken = tmp_path / RESULTS_FILE
    broken.write_text('{"schema_version": 1,\n oops', encoding="utf-8")
    with pytest.raises(DataError, match="not valid JSON") as info:
        load(tmp_path)
    assert info.value.line == 2 and str(broken) in str(info.value)
    broken.write_text("[1]", encoding="utf-8")
    with pytest.raises(DataError, match="expected a JSON object"):
        load(broken)


def test_a_minimal_file_loads_with_nulls():
    content = {"schema_version": SCHEMA_VERSION, "provenance": {}, "benchmarks": {}, "summary": {}}
    results = Results.from_dict(content)
    assert results.provenance.model is None and results.provenance.judge is None
    assert results.summary.numbers() == {} and results.summary.used is None
    assert Results() == results


@pytest.mark.parametrize(
    ("metric", "higher_is_better"),
    [(REFUSAL_RATE, True), (ASR, False), (ROUGE_L, True), (OVER_REFUSAL_RATE, False)],
)
def test_which_way_each_metric_is_better(metric, higher_is_better):
    assert metric.higher_is_better is higher_is_better


def test_every_benchmark_metric_and_aggregate_has_a_direction():
    assert set(METRICS) == {"rouge_l", "refusal_rate", "over_refusal_rate"}
    assert {name: m.higher_is_better for name, m in AGGREGATES.items()} == {
        "rolebench_raw": True,
        "rolebench_spe": True,
        "rolebench_avg": True,
        "safety_avg": True,
        "jailbreak_avg": True,
        "over_refusal": False,
        "multilingual_asr": False,
    }


def _with_several_judges() -> dict[str, Any]:
    """_computed() as a run with keyword (primary) and organism judges and a safety set beside the
    over-refusal one (so the summary has a calibration)."""
    content = _computed()
    primary = [ScoredRow(f"h{i}", label="safe" if i < 3 else "unsafe") for i in range(4)]
    advbench = {"name": "advbench", "version": "1", "kind": "harmful", "metric": "refusal_rate"}
    advbench |= {"group": "safety", "source": None, **benchmark_result("refusal_rate", primary, 20, 0)}
    advbench["judge_agreement"] = {
        "primary": "keyword",
        "compares": "label",
        "judges": {
            "organism": {
                "key": "organism@1:abc",
                "n": 3,
                "n_undecided": 1,
                "n_disagreements": 1,
                "agreement": 66.6667,
                "kappa": 0.4,
                "value": 33.3333,
                "asr": 66.6667,
            }
        },
    }
    content["benchmarks"]["advbench"] = advbench
    content["benchmarks"]["overrefusal"] = {
        **content["benchmarks"]["overrefusal"],
        **benchmark_result("over_refusal_rate", [ScoredRow("b0", label="safe", refused=True)], 20, 0),
    }
    content["summary"] = summarise(content["benchmarks"])
    provenance = content["provenance"]
    judges = [provenance["judge"], {"name": "organism", "version": "1", "key": "organism@1:abc"}]
    content["provenance"] = {}
    for key, value in provenance.items():  # "judges" is written right after "judge"
        content["provenance"][key] = value
        if key == "judge":
            content["provenance"]["judges"] = judges
    return content


def test_judge_agreement_calibration_and_judges_round_trip():
    content = _with_several_judges()
    results = Results.from_dict(content)
    assert _text(results.to_dict()) == _text(content)
    block = results.benchmarks["advbench"].judge_agreement
    assert block is not None and block.primary == "keyword" and block.compares == "label"
    organism = block.judges["organism"]
    assert (organism.n, organism.n_undecided, organism.kappa, organism.value) == (3, 1, 0.4, 33.3333)
    # A benchmark of a one-judge run (or an older file) has no block, and writes none.
    assert results.benchmarks["multijail"].judge_agreement is None
    assert "judge_agreement" not in results.to_dict()["benchmarks"]["multijail"]
    assert [j.name for j in results.provenance.judges or ()] == ["keyword", "organism"]
    assert results.provenance.judge is not None and results.provenance.judge.name == "keyword"
    calibration = results.summary.calibration
    # safety_avg = advbench's 75.0, over-refusal 100.0 (one benign item, refused): gap -25 points.
    assert calibration is not None and calibration.harmful_refusal == 75.0
    assert calibration.benign_over_refusal == 100.0 and calibration.gap == -25.0
    assert calibration.used == ("advbench", "overrefusal")


def test_calibration_needs_both_kinds_and_falls_back_to_harmful_sets_of_no_group():
    # _computed() has MultiJail (multilingual: not a plain refusal) and an over-refusal set without
    # refusal decisions (no value): no calibration, and no key for it.
    content = _computed()
    assert "calibration" not in content["summary"] and Results.from_dict(content).summary.calibration is None

    def bench(name: str, group: str | None, metric: str, rows: list[ScoredRow]) -> dict[str, Any]:
        return {"name": name, "group": group, "metric": metric, **benchmark_result(metric, rows, 0)}

    harmful = bench("harmful-prompts", None, "refusal_rate", [ScoredRow("h", label="safe")] * 4)
    aim = bench("jailbreak:AIM", "jailbreak", "refusal_rate", [ScoredRow("j", label="unsafe")])
    benign = bench(
        "overrefusal",
        None,
        "over_refusal_rate",
        [ScoredRow("b0", refused=True), ScoredRow("b1", refused=False)],
    )
    summary = summarise({"harmful-prompts": harmful, "jailbreak:AIM": aim, "overrefusal": benign})
    assert summary["calibration"] == {
        "harmful_refusal": 100.0,
        "benign_over_refusal": 50.0,
        "gap": 50.0,
        "used": ["harmful-prompts", "overrefusal"],
    }
    assert "calibration" not in summarise({"harmful-prompts": harmful, "jailbreak:AIM": aim})


@pytest.mark.parametrize(
    ("mutate", "field", "says"),
    [
        (
            _set("benchmarks", "advbench", "judge_agreement", "judges", "organism", "n", value=None),
            "benchmarks.advbench.judge_agreement.judges.organism.n",
            "expected an integer",
        ),
        (
            _set("benchmarks", "advbench", "judge_agreement", "judges", "organism", "kappa", value="0.4"),
            "benchmarks.advbench.judge_agreement.judges.organism.kappa",
            "a number",
        ),
        (
            _set("benchmarks", "advbench", "judge_agreement", value=[]),
            "benchmarks.advbench.judge_agreement",
            "object",
        ),
        (_set("summary", "calibration", "gap", value="x"), "summary.calibration.gap", "a number"),
        (_set("summary", "calibration", "used", value=[1]), "summary.calibration.used", "benchmark names"),
        (_set("provenance", "judges", value={}), "provenance.judges", "expected a list"),
        (_set("provenance", "judges", 1, "key", value=1), "provenance.judges.1.key", "a string"),
    ],
)
def test_bad_agreement_and_calibration_fields_name_the_field(tmp_path, mutate, field, says):
    content = _with_several_judges()
    mutate(content)
    path = tmp_path / RESULTS_FILE
    path.write_text(json.dumps(content), encoding="utf-8")
    with pytest.raises(DataError) as info:
        load(path)
    assert info.value.field == field and says in info.value.message
