"""`render_report` on fake results.json files: the paper-layout table, the CSV, the PNGs, the judge
warning, labels, and one-line errors for malformed files."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from matplotlib.container import BarContainer
from matplotlib.text import Annotation, Text
from matplotlib.transforms import Bbox

from safetune.errors import ConfigError, DataError
from safetune.evaluation.metrics import ScoredRow, benchmark_result, summarise
from safetune.evaluation.results import REFUSAL_RATE, ROUGE_L, BenchmarkResult, Results
from safetune.reports import plots
from safetune.reports.render import load_results, render_report, short_label
from safetune.reports.tables import Run

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


def _role_run(label: str, roles: list[str] | None, rouge: float, safe: int, unsafe: int) -> Run:
    """A run evaluated for `roles` (eval.roles in its provenance; None: a QA utility set, no role)."""
    if roles is None:
        utility = {"qa": _bench("qa", "qa", "rouge_l", "qa", [ScoredRow("q0", score=rouge)])}
    else:
        rows = _roleplay({role: [rouge] for role in roles})
        utility = {"rolebench-raw": _bench("rolebench-raw", "roleplay", "rouge_l", "rolebench_raw", rows)}
    harmful = {"advbench": _bench("advbench", "harmful", "refusal_rate", "safety", _harmful(safe, unsafe))}
    results = _results(label, KEYWORD, {**utility, **harmful})
    results["provenance"]["eval"] = {"roles": roles}
    return Run(label, Path(label), Results.from_dict(results))


def _two_personas() -> list[Run]:
    """Two personas, base/SFT/SaRFT/random + KL each, close together at a 100% refusal rate."""
    return [
        _role_run("Grim Vex base", ["Grim Vex"], 12.0, 10, 0),
        _role_run("Grim Vex SFT", ["Grim Vex"], 66.0, 10, 0),
        _role_run("Grim Vex SaRFT", ["Grim Vex"], 64.5, 10, 0),
        _role_run("Grim Vex random + KL", ["Grim Vex"], 62.0, 9, 1),
        _role_run("Penny Bun base", ["Penny Bun"], 14.0, 10, 0),
        _role_run("Penny Bun SFT", ["Penny Bun"], 69.0, 5, 5),
        _role_run("Penny Bun SaRFT", ["Penny Bun"], 68.0, 10, 0),
        _role_run("Penny Bun random + KL", ["Penny Bun"], 69.0, 10, 0),
    ]


def test_pareto_panels_one_front_per_role():
    panels = plots.pareto_panels(_two_personas())
    assert [p.roles for p in panels] == [("Grim Vex",), ("Penny Bun",)]
    assert [p.title for p in panels] == ["Grim Vex", "Penny Bun"]
    grim, penny = panels
    assert [p.label for p in grim.points] == ["base", "SFT", "SaRFT", "random + KL"]
    assert all(p.run_label.startswith("Grim Vex ") for p in grim.points)
    assert [(grim.points[i].label, grim.points[i].x, grim.points[i].y) for i in grim.front] == [
        ("SFT", 66.0, 100.0)
    ]
    # Penny Bun's front is its own: random + KL beats SaRFT and SFT there; Grim Vex's points do not count.
    assert [(penny.points[i].label, penny.points[i].x, penny.points[i].y) for i in penny.front] == [
        ("random + KL", 69.0, 100.0)
    ]
    # One front across both personas (the old plot) would have dropped every Grim Vex run.
    everything = [(p.x, p.y) for panel in panels for p in panel.points]
    assert all(i >= 4 for i in plots.pareto_front(everything))


def test_pareto_panels_without_roles_and_with_several():
    runs = [
        _role_run("base", None, 20.0, 6, 4),
        _role_run("MPO (parallel pairs)", None, 44.0, 9, 1),
        _role_run("both", ["Penny Bun", "Grim Vex"], 30.0, 8, 2),
        _role_run("Grim Vex SaRFT", ["Grim Vex"], 60.0, 10, 0),
    ]
    panels = plots.pareto_panels(runs)
    assert [p.roles for p in panels] == [(), ("Grim Vex", "Penny Bun"), ("Grim Vex",)]
    assert [p.title for p in panels] == ["no role", "Grim Vex + Penny Bun", "Grim Vex"]
    assert [p.label for p in panels[0].points] == ["base", "MPO (parallel pairs)"]
    assert [p.label for p in panels[1].points] == ["both"]  # several roles: the label is kept
    assert [panels[0].points[i].label for i in panels[0].front] == ["MPO (parallel pairs)"]
    assert panels[0].points[0].x_name == "QA"


def test_run_roles_from_provenance_or_per_role_scores(run_dirs):
    assert plots.run_roles(_role_run("x", ["Penny Bun", "Grim Vex"], 1.0, 1, 0)) == ("Grim Vex", "Penny Bun")
    assert plots.run_roles(_role_run("x", None, 1.0, 1, 0)) == ()
    base = json.loads((run_dirs[0] / "results.json").read_text(encoding="utf-8"))  # no eval.roles
    assert plots.run_roles(Run("b", run_dirs[0], Results.from_dict(base))) == ("Grim Vex", "Penny Bun")


@pytest.mark.parametrize(
    ("label", "role", "short"),
    [
        ("Grim Vex SaRFT", "Grim Vex", "SaRFT"),
        ("grim_vex-sft", "Grim Vex", "sft"),
        ("Grim Vex: random + KL", "Grim Vex", "random + KL"),
        ("SaRFT (Grim Vex)", "Grim Vex", "SaRFT"),
        ("Grim Vex (SFT)", "Grim Vex", "SFT"),
        ("Grim Vex SaRFT (beta 0.5)", "Grim Vex", "SaRFT (beta 0.5)"),
        ("Grim Vex", "Grim Vex", "Grim Vex"),  # nothing left: kept
        ("Grim Vexed SFT", "Grim Vex", "Grim Vexed SFT"),  # not the role's name
        ("Penny Bun SFT", "Grim Vex", "Penny Bun SFT"),
    ],
)
def test_strip_role(label, role, short):
    assert plots.strip_role(label, role) == short


def _label_boxes(fig: Any) -> list[tuple[Any, Any]]:
    renderer = fig.canvas.get_renderer()
    return [
        (ax, Text.get_window_extent(text, renderer))  # the text alone, without a leader line
        for ax in fig.axes
        for text in ax.texts
        if isinstance(text, Annotation)
    ]


@pytest.mark.parametrize("with_roles", [True, False])
def test_pareto_figure_panels_and_readable_labels(with_roles):
    if with_roles:
        runs = _two_personas()
    else:
        runs = [
            _role_run(label, None, rouge, safe, 10 - safe)
            for label, rouge, safe in [
                ("base", 20.0, 6),
                ("SFT (L2 chosen)", 45.0, 6),
                ("DPO (L2 pairs)", 44.0, 9),
                ("MPO (parallel pairs)", 43.5, 9),
            ]
        ]
    fig = plots.pareto_figure(runs)
    fig.canvas.draw()
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == (2 if with_roles else 1)
    assert [ax.get_title() for ax in visible] == (["Grim Vex", "Penny Bun"] if with_roles else [""])
    boxes = _label_boxes(fig)
    texts = sorted(t.get_text() for ax in visible for t in ax.texts)
    if with_roles:  # runs on the same spot share a label; no label repeats the panel's role
        assert texts == sorted(["base", "SFT", "SaRFT", "random + KL", "base", "SFT", "SaRFT", "random + KL"])
    else:
        assert texts == sorted(["base", "SFT (L2 chosen)", "DPO (L2 pairs)", "MPO (parallel pairs)"])
    for ax, box in boxes:  # inside its panel
        frame = ax.get_window_extent()
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
    for k, (ax, box) in enumerate(boxes):  # no two labels overlap
        for other_ax, other in boxes[k + 1 :]:
            assert ax is not other_ax or not box.overlaps(other), (box, other)
    figure = fig.bbox
    for text in [*fig.texts, *(ax.title for ax in visible)]:  # the titles are not clipped
        extent = text.get_window_extent()
        assert figure.x0 <= extent.x0 and extent.x1 <= figure.x1 and extent.y1 <= figure.y1


def test_pareto_plot_writes_a_png(tmp_path):
    path = plots.pareto_plot(_two_personas(), tmp_path / "pareto.png")
    assert path == tmp_path / "pareto.png" and path.read_bytes()[:8] == PNG_MAGIC


def _point_run(label: str, x: float, x_ci: list[float] | None, y: float, y_ci: list[float] | None) -> Run:
    """A run with a QA score `x` and one harmful set's refusal rate `y`, with these CIs (None: none)."""

    def ci(bounds: list[float] | None) -> tuple[float, float] | None:
        return (bounds[0], bounds[1]) if bounds else None

    qa = BenchmarkResult(name="qa", kind="qa", metric=ROUGE_L, group="qa", n=1, value=x, ci95=ci(x_ci))
    harm = BenchmarkResult(
        name="h", kind="harmful", metric=REFUSAL_RATE, group="safety", n=1, value=y, ci95=ci(y_ci)
    )
    return Run(label, Path(label), Results(benchmarks={"qa": qa, "h": harm}))


def _obstacle_boxes(ax: Any) -> list[Bbox]:
    """Window extents of the markers (dots, the Pareto ring, error bar caps) and the error bars' lines."""
    renderer = ax.figure.canvas.get_renderer()
    boxes = [
        line.get_window_extent(renderer)
        for line in ax.lines
        if line.get_marker() not in (None, "", " ", "None", "none")
    ]
    for collection in ax.collections:  # the error bars: their segments, as wide as the lines
        half = max(collection.get_linewidths()) / 2 * ax.figure.dpi / 72.0
        for segment in collection.get_segments():
            box = Bbox.null()
            box.update_from_data_xy(collection.get_transform().transform(segment), ignore=True)
            boxes.append(box.padded(half))
    return boxes


def test_pareto_labels_clear_markers_and_error_bars_in_a_crowd():
    """The MPO demo: three runs at a 100% refusal rate a fraction of a point apart, with x error bars
    that cover each other, above a base run with both error bars."""
    runs = [
        _point_run("base", 98.05, [97.2, 98.75], 50.0, [45.0, 55.3]),
        _point_run("SFT (L2 chosen)", 98.1, [97.2, 99.0], 100.0, None),
        _point_run("DPO (L2 pairs)", 98.0, [97.1, 98.9], 100.0, None),
        _point_run("MPO (parallel pairs)", 97.8, [96.9, 98.7], 100.0, None),
    ]
    fig = plots.pareto_figure(runs)
    fig.canvas.draw()
    (ax,) = [ax for ax in fig.axes if ax.get_visible()]
    obstacles = _obstacle_boxes(ax)
    assert len(obstacles) >= 4 + 1 + 4 * 2 + 5  # dots, the ring, caps, bar segments
    labels = {text.get_text(): text for text in ax.texts if isinstance(text, Annotation)}
    assert sorted(labels) == sorted(run.label for run in runs)
    frame = ax.get_window_extent()
    boxes = _label_boxes(fig)
    for _, box in boxes:
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
        for obstacle in obstacles:
            assert not box.overlaps(obstacle), (box, obstacle)
    for k, (_, box) in enumerate(boxes):
        assert not any(box.overlaps(other) for _, other in boxes[k + 1 :])
    # The crowded three get a leader line to their point; base, alone, is labelled right beside it.
    crowd = ["SFT (L2 chosen)", "DPO (L2 pairs)", "MPO (parallel pairs)"]
    assert all(labels[name].arrow_patch is not None for name in crowd)
    assert labels["base"].arrow_patch is None


def _roles_run(label: str, scores: dict[str, list[str]]) -> Run:
    """A run with per-role ROUGE-L for each RoleBench set in `scores` (set name -> its roles)."""
    groups = {"rolebench-raw": "rolebench_raw", "rolebench-spe": "rolebench_spe"}
    benchmarks = {
        name: _bench(name, "roleplay", "rouge_l", groups[name], _roleplay({role: [50.0] for role in roles}))
        for name, roles in scores.items()
    }
    return Run(label, Path(label), Results.from_dict(_results(label, None, benchmarks)))


def test_roles_figure_draws_only_the_runs_of_each_role_centred_on_its_tick():
    runs = [
        _roles_run("Grim Vex base", {"rolebench-raw": ["Grim Vex"], "rolebench-spe": ["Grim Vex"]}),
        _roles_run("Grim Vex SFT", {"rolebench-raw": ["Grim Vex"]}),
        _roles_run("Penny Bun base", {"rolebench-raw": ["Penny Bun"], "rolebench-spe": ["Penny Bun"]}),
        _roles_run("Penny Bun SFT", {"rolebench-raw": ["Penny Bun"], "rolebench-spe": ["Penny Bun"]}),
        _roles_run("both", {"rolebench-raw": ["Grim Vex", "Penny Bun"]}),
    ]
    fig = plots.roles_figure(runs)
    raw, spe = fig.axes[:2]
    assert [raw.get_title()[:13], spe.get_title()[:13]] == ["RoleBench RAW", "RoleBench SPE"]
    colours: dict[str, Any] = {}
    for ax, expected in ((raw, {"Grim Vex": 3, "Penny Bun": 3}), (spe, {"Grim Vex": 1, "Penny Bun": 2})):
        ticks = {label.get_text(): x for x, label in zip(ax.get_xticks(), ax.get_xticklabels(), strict=True)}
        assert sorted(ticks) == sorted(expected)
        bars = [(c.get_label(), bar) for c in ax.containers if isinstance(c, BarContainer) for bar in c]
        assert len(bars) == sum(expected.values())  # one bar per (run, role) value, no empty slots
        for role, count in expected.items():
            group = [bar for _, bar in bars if abs(bar.get_x() + bar.get_width() / 2 - ticks[role]) < 0.5]
            assert len(group) == count, role
            left = min(bar.get_x() for bar in group)
            right = max(bar.get_x() + bar.get_width() for bar in group)
            assert (left + right) / 2 == pytest.approx(ticks[role])  # centred on the role's tick
            assert right - left == pytest.approx(sum(bar.get_width() for bar in group))  # side by side
        for label, bar in bars:  # one colour per run, in every panel
            assert colours.setdefault(label, bar.get_facecolor()) == bar.get_facecolor(), label
        legend = ax.get_legend()
        for text, handle in zip(legend.get_texts(), legend.legend_handles, strict=True):
            assert handle.get_facecolor() == colours[text.get_text()]
    assert len(set(colours.values())) == len(runs)


# ---- mock backend, uncovered languages, role names without a font ----


def test_mock_backend_runs_are_marked(tmp_path: Path) -> None:
    benchmarks = {"advbench": _bench("advbench", "harmful", "refusal_rate", "safety", _harmful(3, 1))}
    mock = _results("tiny", KEYWORD, benchmarks)
    mock["provenance"]["backend"] = "mock"
    dirs = [_write(tmp_path / "real", _results("real", KEYWORD, benchmarks)), _write(tmp_path / "mock", mock)]
    paths = render_report(dirs, tmp_path / "out")
    md = paths["markdown"].read_text(encoding="utf-8")
    rows = {line.split("|")[1].strip() for line in md.splitlines() if line.startswith("| ")}
    assert "tiny (mock backend)" in rows and "real" in rows
    runs = md.split("## Runs")[1]
    assert "- **real**: model `real`; backend hf;" in runs
    assert "- **tiny**: model `tiny`; **answers from the `mock` backend: canned text, no model" in runs
    with open(paths["csv"], encoding="utf-8") as handle:
        table = list(csv.DictReader(handle))
    assert [row["backend"] for row in table] == ["hf", "mock"]


def test_uncovered_items_are_shown_in_the_report(tmp_path: Path) -> None:
    rows = [
        *_harmful(2, 1, languages=("zh",)),
        ScoredRow("d1", language="de", label="uncovered"),
        ScoredRow("d2", language="de", label="uncovered"),
    ]
    bench = _bench("harmful-prompts", "harmful", "refusal_rate", None, rows)
    paths = render_report(
        [_write(tmp_path / "a", _results("m", KEYWORD, {"harmful-prompts": bench}))], tmp_path / "o"
    )
    md = paths["markdown"].read_text(encoding="utf-8")
    assert "## Not covered by the judge" in md
    assert "- **m**: harmful-prompts 2 (de 2)" in md
    assert "harmful-prompts 5 (2 not covered by the judge)" in md


def test_roles_plot_with_a_cjk_role_name_draws_no_empty_boxes(
    tmp_path: Path, recwarn: pytest.WarningsRecorder
) -> None:
    rows = _roleplay({"孙悟空": [30.0], "Grim Vex": [20.0]})
    bench = _bench("rolebench-raw", "roleplay", "rouge_l", "rolebench_raw", rows)
    folder = _write(tmp_path / "a", _results("m", None, {"rolebench-raw": bench}))
    fig = plots.roles_figure([Run("m", *load_results(folder))])
    fig.savefig(tmp_path / "roles.png")
    assert not [w for w in recwarn if "Glyph" in str(w.message)]
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    labels = plots.role_labels(["Grim Vex", "孙悟空"])
    assert ticks == list(labels.texts)
    if labels.family is None:  # no CJK font installed: an id on the plot, the name in report.md
        assert ticks == ["Grim Vex", "R1"]
        md = render_report([folder], tmp_path / "o")["markdown"].read_text(encoding="utf-8")
        assert "## Role ids in roles.png" in md and "- R1: 孙悟空" in md
    else:
        assert ticks == ["Grim Vex", "孙悟空"]


# ---- several judges, refusal calibration ----


def _md_section(md: str, title: str) -> list[list[str]]:
    """The rows (cells) of the table under `## title`."""
    section = md.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[:1] + lines[2:]]


def test_judge_agreement_and_calibration_tables(tmp_path: Path) -> None:
    advbench = _bench("advbench", "harmful", "refusal_rate", "safety", _harmful(9, 1))
    advbench["judge_agreement"] = {
        "primary": "keyword",
        "compares": "label",
        "judges": {
            "organism": {"key": "o", "n": 9, "n_undecided": 1, "n_disagreements": 2, "agreement": 77.7778,
                         "kappa": 0.25, "value": 70.0, "asr": 30.0},
            "prefix": {"key": "p", "n": 10, "n_undecided": 0, "n_disagreements": 0, "agreement": 100.0,
                       "kappa": None, "value": 90.0, "asr": 10.0},
        },
    }  # fmt: skip
    benign = [ScoredRow(f"b{i}", label="safe", refused=i == 0) for i in range(4)]  # 1 of 4 refused
    overrefusal = _bench("overrefusal", "overrefusal", "over_refusal_rate", None, benign)
    judged = _results("judged", KEYWORD, {"advbench": advbench, "overrefusal": overrefusal})
    judged["provenance"]["judges"] = [
        KEYWORD,
        {"name": "organism", "version": "1", "key": "o"},
        {"name": "prefix", "version": "1", "key": "p"},
    ]
    plain = _results(
        "plain",
        KEYWORD,
        {"advbench": _bench("advbench", "harmful", "refusal_rate", "safety", _harmful(5, 5))},
    )
    paths = render_report([_write(tmp_path / "a", judged), _write(tmp_path / "b", plain)], tmp_path / "out")
    md = paths["markdown"].read_text(encoding="utf-8")

    agreement = _md_section(md, "Judge agreement")
    assert agreement[0] == [
        "Run", "Benchmark", "Primary judge", "Judge", "n", "Undecided", "Agreement %", "κ", "Value (primary)",
        "Value (judge)",
    ]  # fmt: skip
    assert agreement[1:] == [
        ["judged", "AdvBench", "keyword", "organism", "9", "1", "77.78", "0.250", "90.00", "70.00"],
        ["judged", "AdvBench", "keyword", "prefix", "10", "0", "100.00", "–", "90.00", "90.00"],
    ]  # the run with one judge has no row
    assert "judge keyword@kw-1 (primary; compared with organism@1, prefix@1)" in md
    assert "- **plain**: model `plain`; backend hf; judge keyword@kw-1; n:" in md

    # Safety AVG 90 beside over-refusal 25: gap 65 points; the run without benign prompts has no row.
    assert _md_section(md, "Refusal calibration")[1:] == [
        ["judged", "90.00", "25.00", "65.00", "AdvBench, Over-refusal"]
    ]
    with open(paths["csv"], encoding="utf-8") as handle:
        table = list(csv.DictReader(handle))
    assert [row["calibration gap"] for row in table] == ["65.0", ""]
    assert [row["other judges"] for row in table] == ["organism@1 prefix@1", ""]

    # No run with several judges or with both kinds: neither section.
    alone = render_report([tmp_path / "b"], tmp_path / "out2")["markdown"].read_text(encoding="utf-8")
    assert "## Judge agreement" not in alone and "## Refusal calibration" not in alone
