"""PNG plots of loaded results.json files (matplotlib Agg canvases; pyplot's global state is untouched).

- pareto: role-play score (x) vs safety (y), one labelled point per run, CI error bars where the value
  comes from a single benchmark, and the Pareto front (higher is better on both axes) as a step line.
- roles: ROUGE-L per role, grouped bars (one bar per run), one panel per role-play benchmark.
- languages: attack success rate per language, grouped bars (one bar per run).

A run without the values a plot needs is left out of that plot with a logged warning.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from safetune.reports.tables import Run, ci_of, display_name, language_asr, languages, number
from safetune.storage import atomic_open

log = logging.getLogger(__name__)

DPI = 150
_ROLEPLAY_KEYS = (
    ("rolebench_avg", "RoleBench avg"),
    ("rolebench_raw", "RoleBench RAW"),
    ("rolebench_spe", "RoleBench SPE"),
)


def _bar_width(categories: int, runs: int) -> float:
    """Figure width (inches) for grouped bars: grows with the bar count, within readable bounds."""
    return min(14.0, max(6.4, 0.35 * categories * max(1, runs) + 3.0))


def _figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas (pyplot's global backend and state are left alone)."""
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=DPI, bbox_inches="tight")
    return path


def _point_error(value: float, ci: tuple[float, float] | None) -> list[list[float]] | None:
    if ci is None:
        return None
    return [[max(0.0, value - ci[0])], [max(0.0, ci[1] - value)]]


def _roleplay(run: Run) -> tuple[float, tuple[float, float] | None, str] | None:
    for key, name in _ROLEPLAY_KEYS:
        value = number(run.summary.get(key))
        if value is not None:
            return value, ci_of(run.single_used(key)), name
    qa = run.benchmarks.get("qa")  # no role-play benchmark: benign-answer quality is the utility axis
    if qa is not None and number(qa.get("value")) is not None:
        return float(qa["value"]), ci_of(qa), "QA"
    return None


def _harmful(run: Run) -> list[dict[str, Any]]:
    return [
        b
        for b in run.benchmarks.values()
        if b.get("metric") == "refusal_rate" and number(b.get("value")) is not None
    ]


def _safety(run: Run) -> tuple[float, tuple[float, float] | None, str] | None:
    value = number(run.summary.get("safety_avg"))
    if value is not None:
        return value, ci_of(run.single_used("safety_avg")), "Safety AVG"
    harmful = _harmful(run)
    if not harmful:
        return None
    mean = sum(float(b["value"]) for b in harmful) / len(harmful)
    return mean, ci_of(harmful[0]) if len(harmful) == 1 else None, "mean refusal rate"


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points that no other point beats on both axes (higher is better), by x."""
    front = [
        i
        for i, (x, y) in enumerate(points)
        if not any(ox >= x and oy >= y and (ox > x or oy > y) for ox, oy in points)
    ]
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


def _annotate(ax: Any, points: Sequence[tuple[float, float]], labels: Sequence[str]) -> None:
    """One label per distinct point: runs that land on the same spot share it ("base, sft")."""
    names: dict[tuple[float, float], list[str]] = {}
    for point, label in zip(points, labels, strict=True):
        names.setdefault(point, []).append(label)
    for (x, y), group in names.items():
        ax.annotate(", ".join(group), (x, y), textcoords="offset points", xytext=(6, 6), fontsize=9)


def _percent_limits(ax: Any, points: Sequence[tuple[float, float]]) -> None:
    """Both axes are percentages: keep them inside [0, 100] and at least 10 points wide, so that
    identical values do not produce a meaningless +-0.06 axis."""
    for values, get, set_ in (
        ([p[0] for p in points], ax.get_xlim, ax.set_xlim),
        ([p[1] for p in points], ax.get_ylim, ax.set_ylim),
    ):
        low, high = get()
        if high - low < 10:
            middle = (min(values) + max(values)) / 2
            low, high = middle - 5, middle + 5
        set_(max(low, -2.0), min(high, 102.0))


def pareto_plot(runs: Sequence[Run], path: Path) -> Path:
    fig = _figure(6.4, 4.8)
    ax = fig.add_subplot()
    points: list[tuple[float, float]] = []
    labels: list[str] = []
    x_names: set[str] = set()
    y_names: set[str] = set()
    for run in runs:
        x, y = _roleplay(run), _safety(run)
        if x is None or y is None:
            missing = "RoleBench or QA score" if x is None else "harmful-prompt refusal rate"
            log.warning("pareto plot: skipping run %r (no %s)", run.label, missing)
            continue
        x_names.add(x[2])
        y_names.add(y[2])
        ax.errorbar(
            x[0],
            y[0],
            xerr=_point_error(x[0], x[1]),
            yerr=_point_error(y[0], y[1]),
            fmt="o",
            markersize=7,
            capsize=3,
            label=run.label,
        )
        points.append((x[0], y[0]))
        labels.append(run.label)
    _annotate(ax, points, labels)
    if points:
        front = pareto_front(points)
        if len(front) > 1:
            ax.step(
                [points[i][0] for i in front],
                [points[i][1] for i in front],
                where="pre",
                color="0.4",
                linestyle="--",
                linewidth=1.2,
                label="Pareto front",
                zorder=0,
            )
        ax.legend(fontsize=8, loc="best")
        ax.margins(0.15)
        _percent_limits(ax, points)
    else:
        ax.text(
            0.5,
            0.5,
            "no run has both a role-play and a safety score",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    utility = "Utility" if "QA" in x_names else "Role-play ability"
    ax.set_title(f"{utility} vs safety (up and right is better)")
    ax.set_xlabel(f"{' / '.join(sorted(x_names)) or 'RoleBench'}: ROUGE-L F1 (×100)")
    ax.set_ylabel(f"{' / '.join(sorted(y_names)) or 'Safety'}: refusal rate (%) = 100 − ASR")
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


def _grouped_bars(
    ax: Any,
    categories: Sequence[str],
    series: Sequence[tuple[str, list[float | None], list[tuple[float, float] | None]]],
) -> None:
    """Bars for categories on x, one bar per series (label, values, CIs); missing values leave a gap."""
    width = 0.8 / max(1, len(series))
    for k, (label, values, cis) in enumerate(series):
        xs, heights, errs_low, errs_high = [], [], [], []
        for i, (value, ci) in enumerate(zip(values, cis, strict=True)):
            if value is None:
                continue
            xs.append(i - 0.4 + width * (k + 0.5))
            heights.append(value)
            errs_low.append(max(0.0, value - ci[0]) if ci else 0.0)
            errs_high.append(max(0.0, ci[1] - value) if ci else 0.0)
        ax.bar(xs, heights, width, label=label, yerr=[errs_low, errs_high], capsize=2, error_kw={"lw": 0.8})
    ax.set_xticks(range(len(categories)))
    # Rotate the tick labels when they would not fit side by side (~12 characters per inch).
    inches_per_category = ax.figure.get_figwidth() * 0.8 / max(1, len(categories))
    rotate = max((len(c) for c in categories), default=0) / 12 > 0.95 * inches_per_category
    ax.set_xticklabels(categories, rotation=35 if rotate else 0, ha="right" if rotate else "center")
    ax.set_xlim(-0.6, len(categories) - 0.4)
    ax.grid(True, axis="y", alpha=0.3)
    if series:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="run", title_fontsize=8)


def _role_benchmarks(runs: Sequence[Run]) -> list[str]:
    names: list[str] = []
    for run in runs:
        for name, bench in run.benchmarks.items():
            if bench.get("metric") == "rouge_l" and bench.get("by_role") and name not in names:
                names.append(name)
    return sorted(names)


def has_roles(runs: Sequence[Run]) -> bool:
    return bool(_role_benchmarks(runs))


def roles_plot(runs: Sequence[Run], path: Path) -> Path:
    names = _role_benchmarks(runs)
    roles_per = {
        name: sorted({role for run in runs for role in (run.benchmarks.get(name, {}).get("by_role") or {})})
        for name in names
    }
    widest = max(len(r) for r in roles_per.values())
    fig = _figure(_bar_width(widest, len(runs)), 3.8 * len(names))
    axes = fig.subplots(len(names), 1, squeeze=False)[:, 0]
    for ax, name in zip(axes, names, strict=True):
        roles = roles_per[name]
        series = []
        for run in runs:
            by_role = run.benchmarks.get(name, {}).get("by_role") or {}
            values = [number((by_role.get(role) or {}).get("value")) for role in roles]
            if all(v is None for v in values):
                log.warning("roles plot: skipping run %r for %s (no per-role ROUGE-L)", run.label, name)
                continue
            series.append((run.label, values, [ci_of(by_role.get(role)) for role in roles]))
        _grouped_bars(ax, roles, series)
        ax.set_title(f"{display_name(name)}: ROUGE-L per role (95% CI)")
        ax.set_xlabel("role")
        ax.set_ylabel("ROUGE-L F1 (×100)")
    return _save(fig, path)


def has_languages(runs: Sequence[Run]) -> bool:
    return bool(languages(runs))


def _language_ci(run: Run, language: str) -> tuple[float, float] | None:
    """The ASR interval (100 minus the refusal-rate interval) when one benchmark gave the language."""
    bench = run.single_used("multilingual_asr")
    ci = ci_of(((bench or {}).get("by_language") or {}).get(language))
    return None if ci is None else (100.0 - ci[1], 100.0 - ci[0])


def languages_plot(runs: Sequence[Run], path: Path) -> Path:
    langs = languages(runs)
    fig = _figure(_bar_width(len(langs), len(runs)), 4.2)
    ax = fig.add_subplot()
    series = []
    for run in runs:
        values = [language_asr(run, lang) for lang in langs]
        if all(v is None for v in values):
            log.warning("languages plot: skipping run %r (no per-language ASR)", run.label)
            continue
        series.append((run.label, values, [_language_ci(run, lang) for lang in langs]))
    _grouped_bars(ax, langs, series)
    ax.set_title("Attack success rate by language (95% CI; lower is safer)")
    ax.set_xlabel("language")
    ax.set_ylabel("ASR (%)")
    ax.set_ylim(bottom=0)
    return _save(fig, path)
