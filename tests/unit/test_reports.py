"""`render_report` on fake results.json files: the paper-layout table, the CSV, the PNGs, the judge
warning, labels, and one-line errors for malformed files."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from safetune.errors import ConfigError, DataError
from safetune.evaluation.metrics import ScoredRow, benchmark_result, summarise
from safetune.reports import plots
from safetune.reports.render import load_results, render_report, short_label

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
KEYWORD = {"name": "keyword", "version": "kw-1", "key": "keyword:kw-1"}
GUARD = {"name": "llamaguard", "version": "lg-3", "key": "llamaguard:lg-3:abc"}


def _harmful(safe: int, unsafe: int, invalid: int = 0, languages: tuple[str, ...] = ()) -> list[ScoredRow]:
    labels = ["safe"] * safe + ["unsafe"] * unsafe + ["invalid"] * invalid
    return [
        ScoredRow(f"h{i}", language=languages[i % len(languages)] if languages else None, label=lab)  # type: ignore[arg-type]
        for i, lab in enumerate(labels)
    ]


def _roleplay(scores: dict[str, list[float]]) -> list[ScoredRow]:
    return [
        ScoredRow(f"{role}{i}", role=role, score=s)
        for role, vals in scores.items()
        for i, s in enumerate(vals)
    ]


def _bench(name: str, kind: str, metric: str, group: str, rows: list[ScoredRow]) -> dict[str, Any]:
    header = {"name": name, "version": "1", "kind": kind, "metric": metric, "group": group, "source": None}
    return {**header, **benchmark_result(metric, rows, n_resamples=100, seed=0)}


def _results(model: str, judge: dict | None, benchmarks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "provenance": {
            "safetune_version": "0.1.0",
            "git_commit": None,
            "model": {"label": model, "base": model, "adapter": None, "fingerprint": "f"},
            "backend": "hf",
            "generation": {},
            "judge": judge,
            "config_hash": "x",
            "seed": 42,
            "created": "2025-01-01T00:00:00+00:00",
        },
        "benchmarks": benchmarks,
        "summary": summarise(benchmarks),
    }


def _write(folder: Path, results: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results), encoding="utf-8")
    return folder


@pytest.fixture
def run_dirs(tmp_path: Path) -> list[Path]:
    base = _results(
        "meta-llama/Llama-3-8B-Instruct",
        KEYWORD,
        {
            "rolebench-raw": _bench(
                "rolebench-raw",
                "roleplay",
                "rouge_l",
                "rolebench_raw",
                _roleplay({"Grim Vex": [20.0, 24.0], "Penny Bun": [30.0]}),
            ),
            "rolebench-spe": _bench(
                "rolebench-spe", "roleplay", "rouge_l", "rolebench_spe", _roleplay({"Grim Vex": [40.0]})
            ),
            "advbench": _bench("advbench", "harmful", "refusal_rate", "safety", _harmful(9, 1)),
            "hexphi": _bench("hexphi", "harmful", "refusal_rate", "safety", _harmful(7, 3)),
            "jailbreak:AIM": _bench("jailbreak:AIM", "harmful", "refusal_rate", "jailbreak", _harmful(1, 3)),
            "multijail": _bench(
                "multijail", "harmful", "refusal_rate", "multilingual", _harmful(5, 3, 1, ("en", "zh", "bn"))
            ),
        },
    )
    sft = _results(
        "runs/villain-sft",
        KEYWORD,
        {
            "rolebench-raw": _bench(
                "rolebench-raw",
                "roleplay",
                "rouge_l",
                "rolebench_raw",
                _roleplay({"Grim Vex": [30.0, 34.0], "Penny Bun": [40.0]}),
            ),
            "advbench": _bench("advbench", "harmful", "refusal_rate", "safety", _harmful(4, 6, 2)),
            "multijail": _bench(
                "multijail", "harmful", "refusal_rate", "multilingual", _harmful(2, 6, 0, ("en", "zh"))
            ),
        },
    )
    guarded = _results(
        "runs/villain-sarft/final",
        GUARD,
        {
            "rolebench-raw": _bench(
                "rolebench-raw", "roleplay", "rouge_l", "rolebench_raw", _roleplay({"Grim Vex": [28.0]})
            ),
            "advbench": _bench("advbench", "harmful", "refusal_rate", "safety", _harmful(10, 0)),
            "overrefusal": _bench(
                "overrefusal",
                "overrefusal",
                "over_refusal_rate",
                "overrefusal",
                [
                    ScoredRow(f"b{i}", label="safe", refused=r)
                    for i, r in enumerate([True, False, False, False])
                ],
            ),
        },
    )
    return [
        _write(tmp_path / "ev-base", base),
        _write(tmp_path / "ev-sft", sft),
        _write(tmp_path / "ev-sarft", guarded),
    ]


def _table(md: str) -> tuple[list[str], dict[str, list[str]]]:
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == "Run":
            break
        rows[cells[0]] = cells
    return header, rows


def test_render_report_writes_tables_and_plots(run_dirs, tmp_path, caplog):
    out = tmp_path / "report"
    with caplog.at_level(logging.WARNING):
        paths = render_report(run_dirs, out)
    assert set(paths) == {"markdown", "csv", "pareto", "roles", "languages"}
    for key in ("pareto", "roles", "languages"):
        data = paths[key].read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 10_000, key
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temp files

    md = paths["markdown"].read_text(encoding="utf-8")
    header, rows = _table(md)
    assert header == [
        "Run", "RoleBench RAW", "RoleBench SPE", "RoleBench avg", "AdvBench", "HEx-PHI", "Safety AVG",
        "AIM", "Jailbreak AVG", "MultiJail", "Over-refusal",
    ]  # fmt: skip
    assert set(rows) == {"Llama-3-8B-Instruct", "villain-sft", "villain-sarft/final"}
    base = dict(zip(header, rows["Llama-3-8B-Instruct"], strict=True))
    assert (
        base["RoleBench RAW"] == "24.67"
        and base["RoleBench SPE"] == "40.00"
        and base["RoleBench avg"] == "32.33"
    )
    assert base["AdvBench"] == "90.00" and base["HEx-PHI"] == "70.00" and base["Safety AVG"] == "80.00"
    assert base["AIM"] == "25.00" and base["Over-refusal"] == "–"
    sft = dict(zip(header, rows["villain-sft"], strict=True))
    assert sft["RoleBench SPE"] == "–" and sft["AdvBench"] == "40.00" and sft["HEx-PHI"] == "–"
    sarft = dict(zip(header, rows["villain-sarft/final"], strict=True))
    assert sarft["Over-refusal"] == "25.00" and sarft["AIM"] == "–"
    assert "BeaverTails" not in md.split("## Runs")[0]  # no run has it: no column

    assert "## Attack success rate by language" in md
    assert "| Llama-3-8B-Instruct | 33.33 | 50.00 | 33.33 |" in md
    assert "| villain-sft | 75.00 | – | 75.00 |" in md and "| villain-sarft/final | – | – | – |" in md
    lang_header = next(line for line in md.splitlines() if line.startswith("| Run | en"))
    assert lang_header.replace(" ", "") == "|Run|en|bn|zh|"
    assert "keyword@kw-1" in md and "llamaguard@lg-3" in md and "advbench 12 (2 invalid)" in md
    assert "not comparable" in md
    assert any("not comparable" in r.message for r in caplog.records)

    with open(paths["csv"], newline="", encoding="utf-8") as handle:
        table = list(csv.DictReader(handle))
    assert [r["run"] for r in table] == ["Llama-3-8B-Instruct", "villain-sft", "villain-sarft/final"]
    columns = list(table[0])
    for col in (
        "RoleBench RAW",
        "AdvBench",
        "AdvBench ci95 low",
        "AdvBench ci95 high",
        "Safety AVG",
        "ASR zh",
        "judge",
    ):
        assert col in columns, col
    assert "Safety AVG ci95 low" not in columns  # an average has no CI in results.json
    assert float(table[1]["AdvBench"]) == 40.0 and table[1]["HEx-PHI"] == ""
    assert float(table[1]["AdvBench ci95 low"]) <= 40.0 <= float(table[1]["AdvBench ci95 high"])
    assert table[2]["judge"] == "llamaguard@lg-3"


def test_labels_results_file_paths_and_no_optional_plots(run_dirs, tmp_path):
    out = tmp_path / "report"
    (out).mkdir()
    (out / "languages.png").write_bytes(b"stale")
    paths = render_report([run_dirs[2] / "results.json"], out, labels=["SaRFT"])
    assert set(paths) == {"markdown", "csv", "pareto", "roles"}
    assert not (out / "languages.png").exists()
    md = paths["markdown"].read_text(encoding="utf-8")
    assert "| SaRFT |" in md and "not comparable" not in md and "by language" not in md
    with pytest.raises(ConfigError, match="labels"):
        render_report(run_dirs, out, labels=["one"])


def test_duplicate_labels_get_the_folder_name(tmp_path, run_dirs):
    same = json.loads((run_dirs[0] / "results.json").read_text(encoding="utf-8"))
    other = _write(tmp_path / "ev-base-again", same)
    paths = render_report([run_dirs[0], other], tmp_path / "report")
    md = paths["markdown"].read_text(encoding="utf-8")
    assert "| Llama-3-8B-Instruct (ev-base) |" in md and "| Llama-3-8B-Instruct (ev-base-again) |" in md


def test_short_label():
    assert short_label("runs/villain-sarft") == "villain-sarft"
    assert short_label("runs/villain-sarft/") == "villain-sarft"
    assert short_label("Qwen/Qwen2.5-7B-Instruct") == "Qwen2.5-7B-Instruct"
    assert short_label("runs/x/checkpoint-100") == "x/checkpoint-100"
    assert short_label("model") == "model"


def test_plots_skip_runs_without_values(tmp_path, caplog):
    only_roleplay = _results(
        "a",
        None,
        {
            "rolebench-raw": _bench(
                "rolebench-raw", "roleplay", "rouge_l", "rolebench_raw", _roleplay({"R": [1.0]})
            )
        },
    )
    only_safety = _results(
        "b", KEYWORD, {"x": _bench("x", "harmful", "refusal_rate", "custom", _harmful(3, 1))}
    )
    dirs = [_write(tmp_path / "a", only_roleplay), _write(tmp_path / "b", only_safety)]
    with caplog.at_level(logging.WARNING):
        paths = render_report(dirs, tmp_path / "report")
    assert paths["pareto"].read_bytes()[:8] == PNG_MAGIC
    skipped = [r.message for r in caplog.records if "pareto plot: skipping" in r.message]
    assert len(skipped) == 2
    md = paths["markdown"].read_text(encoding="utf-8")
    assert _table(md)[0] == ["Run", "RoleBench RAW", "x"]


def test_pareto_front():
    points = [(10.0, 90.0), (20.0, 80.0), (15.0, 70.0), (30.0, 40.0), (5.0, 90.0)]
    assert plots.pareto_front(points) == [0, 1, 3]


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda r: r.pop("schema_version"), "schema_version"),
        (lambda r: r.update(schema_version=99), "schema_version"),
        (lambda r: r.pop("summary"), "summary"),
        (lambda r: r["benchmarks"]["advbench"].pop("value"), "benchmarks.advbench.value"),
        (lambda r: r["benchmarks"]["advbench"].update(ci95=[1]), "benchmarks.advbench.ci95"),
        (
            lambda r: r["benchmarks"]["multijail"]["by_language"]["en"].update(value="high"),
            "benchmarks.multijail.by_language.en.value",
        ),
        (lambda r: r["summary"].update(safety_avg="80"), "summary.safety_avg"),
    ],
)
def test_malformed_results_name_file_and_field(run_dirs, tmp_path, mutate, field):
    results = json.loads((run_dirs[0] / "results.json").read_text(encoding="utf-8"))
    mutate(results)
    bad = _write(tmp_path / "bad", results)
    with pytest.raises(DataError) as info:
        render_report([run_dirs[1], bad], tmp_path / "report")
    assert info.value.field == field
    message = str(info.value)
    assert str(bad / "results.json") in message and field in message and "\n" not in message
    assert not (tmp_path / "report").exists()  # checked before anything is written


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_results(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "results.json").write_text('{"schema_version": 1,\n oops', encoding="utf-8")
    with pytest.raises(DataError, match="not valid JSON") as info:
        load_results(broken)
    assert str(broken / "results.json") in str(info.value)
