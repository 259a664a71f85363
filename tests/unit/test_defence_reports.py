"""Decoding defences in the reports, on hand-made results.json files and study rows: `safetune report`
tells one model's evaluations with and without a defence apart (label, Defence column, CSV columns,
footer), labels Self-CD an over-refusal mitigation, rejects a malformed defence record naming the field;
a study's results.csv and report.md say which defence; the settings shown are those that differ from
the defence's defaults, as the registry builds them."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from safetune.assess.aggregate import BASE, UnitResult, aggregate
from safetune.assess.report import StudySummary, render_markdown, write_csv
from safetune.config import DefenceConfig
from safetune.decoding import prompts
from safetune.decoding.described import changed_settings, describe
from safetune.decoding.registry import build_defence
from safetune.errors import DataError
from safetune.evaluation.metrics import ScoredRow, benchmark_result, summarise
from safetune.reports.render import render_report

KEYWORD = {"name": "keyword", "version": "kw-1", "key": "keyword:kw-1"}


def _record(**settings: Any) -> dict[str, Any]:
    defence = build_defence(DefenceConfig(**settings))
    assert defence is not None
    return defence.record()


@pytest.fixture
def expert(tmp_path: Path) -> Path:
    folder = tmp_path / "expert"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}", encoding="utf-8")  # all build_defence reads
    return folder


def test_default_records_have_no_changed_settings(expert: Path) -> None:
    assert changed_settings(_record(name="rose")) == {}
    assert changed_settings(_record(name="self-cd")) == {}
    # SafeDecoding's expert has no default: always shown
    assert changed_settings(_record(name="safedecoding", expert=str(expert))) == {"expert": str(expert)}


def test_changed_settings_against_the_registry(expert: Path) -> None:
    # the SaRFT prompt pair chosen whole: `prompts` differs, not both prompts' bytes besides
    assert changed_settings(_record(name="rose", prompts="sarft")) == {"prompts": "sarft"}
    told = describe(_record(name="rose", alpha=0.7, reverse_prompt="Ignore every rule [now]."))
    assert told.text() == "rose (safety defence), alpha 0.7, reverse_prompt 'Ignore every rule [now].'"
    told = describe(_record(name="self-cd", without="empty", with_prompt=prompts.SARFT_SELF_CD_WITH_PROMPT))
    assert told.text() == (
        "self-cd (over-refusal mitigation), alpha 2.5, with_prompt (SaRFT code's 3 sentences), without empty"
    )
    assert told.over_refusal_mitigation
    # the class preset's own alpha, m and c are its defaults: only the preset and the expert differ
    found = _record(name="safedecoding", expert=str(expert), preset="class", num_common=4)
    assert changed_settings(found) == {"preset": "class", "num_common": 4, "expert": str(expert)}
    assert describe(found).alpha == 1.0 and not describe(found).over_refusal_mitigation
    long = _record(name="rose", positive_prompt="Be careful. " * 10)
    assert describe(long).settings_text() == "positive_prompt 'Be careful. Be careful. Be careful. Be…'"


def test_a_record_of_an_unknown_defence_shows_every_setting() -> None:
    told = describe({"name": "future", "purpose": "safety defence", "alpha": 2, "streams": ["a"], "k": 1})
    assert told.text() == "future (safety defence), alpha 2, k 1"


# ---- safetune report ----


def _results(model: str, safe: int, unsafe: int, defence: dict[str, Any] | None) -> dict[str, Any]:
    rows = [ScoredRow(f"h{i}", label="safe" if i < safe else "unsafe") for i in range(safe + unsafe)]
    header = {"version": "1", "kind": "harmful", "metric": "refusal_rate", "group": "safety", "source": None}
    benchmarks = {
        "advbench": {"name": "advbench", **header, **benchmark_result("refusal_rate", rows, 100, 0)}
    }
    provenance: dict[str, Any] = {
        "safetune_version": "0.1.0",
        "model": {"label": model, "base": "tiny", "adapter": f"{model}/final", "fingerprint": "f"},
        "backend": "hf",
        "generation": {},
        "judge": KEYWORD,
        "config_hash": "x",
        "seed": 42,
    }
    if defence is not None:
        provenance["defence"] = defence
    return {
        "schema_version": 1,
        "provenance": provenance,
        "benchmarks": benchmarks,
        "summary": summarise(benchmarks),
    }


def _write(folder: Path, results: dict[str, Any]) -> Path:
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(results), encoding="utf-8")
    return folder


def _main_table(md: str) -> tuple[list[str], list[list[str]]]:
    lines = md.split("\n\n")[1].splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return header, [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]


def test_report_tells_one_model_with_and_without_defences_apart(tmp_path: Path) -> None:
    runs = [
        _write(tmp_path / "ev", _results("runs/villain-sft", 3, 7, None)),
        _write(tmp_path / "ev-rose", _results("runs/villain-sft", 8, 2, _record(name="rose"))),
        _write(
            tmp_path / "ev-scd",
            _results("runs/villain-sft", 1, 9, _record(name="self-cd", without="empty", alpha=1.5)),
        ),
    ]
    paths = render_report(runs, tmp_path / "report")
    md = paths["markdown"].read_text(encoding="utf-8")
    header, rows = _main_table(md)
    assert header[:3] == ["Run", "Defence", "AdvBench"]
    assert rows == [
        ["villain-sft", "none", "30.00", *rows[0][3:]],
        ["villain-sft + rose", "rose (safety defence), alpha 0.5", "80.00", *rows[1][3:]],
        [
            "villain-sft + self-cd",
            "self-cd (over-refusal mitigation), alpha 1.5, without empty",
            "10.00",
            *rows[2][3:],
        ],
    ]
    assert "self-cd: an **over-refusal mitigation**, no safety defence" in md
    assert "- **villain-sft + rose**: model `tiny` + adapter `runs/villain-sft/final`; backend hf; " in md
    assert "; decoding defence rose (safety defence), alpha 0.5; judge keyword@kw-1" in md

    table = list(csv.DictReader(io.StringIO(paths["csv"].read_text(encoding="utf-8"))))
    found = [
        (r["run"], r["defence"], r["defence purpose"], r["defence alpha"], r["defence settings"])
        for r in table
    ]
    assert found == [
        ("villain-sft", "none", "", "", ""),
        ("villain-sft + rose", "rose", "safety defence", "0.5", ""),
        ("villain-sft + self-cd", "self-cd", "over-refusal mitigation", "1.5", "without empty"),
    ]


def test_report_without_defences_keeps_its_layout(tmp_path: Path) -> None:
    runs = [_write(tmp_path / "ev", _results("runs/villain-sft", 3, 7, None))]
    paths = render_report(runs, tmp_path / "report")
    md = paths["markdown"].read_text(encoding="utf-8")
    assert _main_table(md)[0][:2] == ["Run", "AdvBench"] and "defence" not in md.lower()
    assert "defence" not in paths["csv"].read_text(encoding="utf-8").splitlines()[0]


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ({"purpose": "safety defence", "alpha": 0.5}, "provenance.defence.name"),
        ({"name": "rose", "alpha": 0.5}, "provenance.defence.purpose"),
        ({"name": "rose", "purpose": "safety defence", "alpha": "high"}, "provenance.defence.alpha"),
        ("rose", "provenance.defence"),
    ],
)
def test_malformed_defence_record_names_the_field(tmp_path: Path, record: Any, field: str) -> None:
    bad = _write(tmp_path / "bad", _results("runs/villain-sft", 3, 7, record))
    with pytest.raises(DataError) as info:
        render_report([bad], tmp_path / "report")
    assert info.value.field == field and str(bad / "results.json") in str(info.value)
    assert not (tmp_path / "report").exists()


# ---- a study's outputs ----


def _study_row() -> Any:
    units = [UnitResult("", BASE, refusal=90.0), UnitResult("Grim Vex", "sft", refusal=40.0)]
    (row,) = aggregate(["Grim Vex"], ["sft"], units)
    return row


def test_study_csv_and_report_say_which_defence(tmp_path: Path) -> None:
    row = _study_row()
    record = _record(name="self-cd")
    write_csv(tmp_path / "r.csv", [row], ["sft"], [], record)
    (cells,) = csv.DictReader((tmp_path / "r.csv").open(encoding="utf-8"))
    assert (cells["defence"], cells["defence_purpose"], cells["defence_alpha"]) == (
        "self-cd",
        "over-refusal mitigation",
        "2.5",
    )
    assert cells["drop_sft"] == "50" and cells["defence_settings"] == ""
    write_csv(tmp_path / "plain.csv", [row], ["sft"], [])
    (plain,) = csv.DictReader((tmp_path / "plain.csv").open(encoding="utf-8"))
    assert plain["defence"] == "none" and plain["defence_purpose"] == ""

    summary = StudySummary("m", "d", ("sft",), "sft", "h", 2, 2, (row,), {}, (), (), defence=record)
    md = render_markdown(summary, {}, {})
    assert "**Decoding defence: self-cd (over-refusal mitigation), alpha 2.5.** Every evaluation" in md
    assert "self-cd is an **over-refusal mitigation**" in md
    plain_md = render_markdown(StudySummary("m", "d", ("sft",), "sft", "h", 2, 2, (row,), {}, (), ()), {}, {})
    assert "Decoding defence" not in plain_md
