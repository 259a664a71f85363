"""The study report's plots (matplotlib Agg canvases; pyplot's global state is untouched):

- `drop_vs_trait`: one point per role, trait score (x) vs refusal drop (y), with Spearman's rho and its
  bootstrap CI in the title. Roles are named beside their points up to LABEL_POINTS roles; above that
  only the LABEL_EXTREMES roles with the largest and smallest drops are, so 95 names do not pile up.
- `drop_bars`: the paper-style per-role chart, one horizontal bar per role and method, sorted by the
  first method's drop (largest at the top). Horizontal bars keep 95 role names readable: the figure
  grows 0.16 inch per role and method, and names are written in full.
- `forecast_vs_observed`: each role's leave-one-out forecast against its observed drop, with the
  y = x line and the LOO error in the title.

Role names in scripts the default font cannot draw use reports/plots.py's `role_labels` (a fallback font,
or ids "R1".. that the report lists). Every PNG is written atomically.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from safetune.assess.forecast import LooResult
from safetune.assess.traits import Correlation
from safetune.errors import ConfigError
from safetune.reports.plots import DPI, role_labels
from safetune.storage import atomic_open

LABEL_POINTS = 30  # name every point of a scatter up to this many roles
LABEL_EXTREMES = 5  # above that, name this many roles at each end of the drop
BAR_INCH = 0.16  # figure height per bar
# One colour per method, in the order given (matplotlib's tab10, colour-blind friendlier than defaults).
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    fig.tight_layout()
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=DPI, bbox_inches="tight")
    return Path(path)


def _check_finite(values: Sequence[float | None], what: str) -> None:
    for i, value in enumerate(values):
        if value is not None and not math.isfinite(value):
            raise ConfigError(f"{what}[{i}] is not finite ({value})")


# Candidate label offsets (points), tried in turn for each label until one overlaps no label placed before
# it: right/left of the point, above/below, then further out. Ties are common (trait scores and drops are
# often round numbers, two villains can both lose 100 points), so roles at one point share one label.
_OFFSETS = ((5, 3), (5, -9), (-5, 3), (-5, -9), (5, 12), (-5, 12), (5, -18), (-5, -18), (5, 21), (-5, -27))


def _label(ax: Any, text: str, xy: tuple[float, float], offset: tuple[int, int], family: Any) -> Any:
    note = ax.annotate(
        text,
        xy,
        xytext=offset,
        textcoords="offset points",
        fontsize=7,
        ha="left" if offset[0] > 0 else "right",
    )
    if family:
        note.set_fontfamily(list(family))
    return note


def _annotate(
    ax: Any,
    named: Sequence[int],
    xs: Sequence[float],
    ys: Sequence[float],
    texts: Sequence[str],
    family: Sequence[str] | None,
) -> None:
    """Label the points `named`: roles at the same point share one label ("A, B"), and each label takes
    the first offset whose box, measured on the rendered figure, overlaps no label placed before it (the
    first offset when every one does)."""
    groups: dict[tuple[float, float], list[int]] = {}
    for i in sorted(named, key=lambda i: (ys[i], xs[i], texts[i])):
        groups.setdefault((round(xs[i], 9), round(ys[i], 9)), []).append(i)
    # The view limits are settled lazily: without this, points still outside the stale limits measure as
    # empty boxes and every label would keep its first offset.
    ax.autoscale_view()
    renderer = ax.figure.canvas.get_renderer()
    placed: list[Any] = []
    for (x, y), members in groups.items():
        text = ", ".join(texts[m] for m in members)
        for offset in _OFFSETS:
            note = _label(ax, text, (x, y), offset, family)
            box = note.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed):
                break
            note.remove()
        else:
            note = _label(ax, text, (x, y), _OFFSETS[0], family)
            box = note.get_window_extent(renderer)
        placed.append(box)


def drop_vs_trait(
    path: str | Path,
    roles: Sequence[str],
    traits: Sequence[float],
    drops: Sequence[float],
    trait: str,
    correlation: Correlation,
    method: str = "",
) -> Path:
    """The scatter of `drops` against one trait's scores (same order as `roles`)."""
    if not len(roles) == len(traits) == len(drops):
        raise ConfigError(
            f"drop_vs_trait: {len(roles)} roles, {len(traits)} trait scores, {len(drops)} drops"
        )
    _check_finite(traits, trait)
    _check_finite(drops, "drops")
    labels = role_labels(list(roles))
    fig = _figure(7.0, 5.0)
    ax = fig.add_subplot()
    ax.scatter(traits, drops, s=28, color=COLOURS[0], alpha=0.8, edgecolors="white", linewidths=0.5)
    if len(roles) <= LABEL_POINTS:
        named = list(range(len(roles)))
    else:
        order = sorted(range(len(roles)), key=lambda i: drops[i])
        named = [*order[:LABEL_EXTREMES], *order[-LABEL_EXTREMES:]]
    _annotate(ax, named, traits, drops, labels.texts, labels.family)
    ax.axhline(0.0, color="grey", linewidth=0.6, linestyle=":")
    ax.set_xlabel(f"{trait} (trait score)")
    ax.set_ylabel("refusal drop (points)" + (f", {method}" if method else ""))
    ax.set_title(f"Refusal drop vs {trait}: Spearman {correlation.describe()}", fontsize=10)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def drop_bars(
    path: str | Path,
    roles: Sequence[str],
    drops: Mapping[str, Sequence[float | None]],
    title: str = "Refusal drop per role",
) -> Path:
    """Per-role bars of each method's drop (`drops`: method -> one value per role, None where a role
    has no result), sorted by the first method's drop, largest first; a missing value draws no bar."""
    if not drops:
        raise ConfigError("drop_bars: no method to plot")
    for method, values in drops.items():
        if len(values) != len(roles):
            raise ConfigError(f"drop_bars: {method} has {len(values)} drops for {len(roles)} roles")
        _check_finite(values, f"drops[{method}]")
    first = next(iter(drops.values()))
    # largest drop at the top; roles without a value for the first method go to the bottom
    order = sorted(range(len(roles)), key=lambda i: (first[i] is None, -(first[i] or 0.0), roles[i]))
    labels = role_labels([roles[i] for i in order])
    methods = list(drops)
    bar = 0.8 / len(methods)
    height = max(3.0, BAR_INCH * len(roles) * len(methods) + 1.5)
    longest = max((len(t) for t in labels.texts), default=8)
    fig = _figure(min(12.0, 6.0 + 0.06 * longest), height)
    ax = fig.add_subplot()
    for m, method in enumerate(methods):
        ys, xs = [], []
        for row, i in enumerate(order):
            value = drops[method][i]
            if value is not None:
                ys.append(row + (m - (len(methods) - 1) / 2) * bar)
                xs.append(value)
        ax.barh(ys, xs, height=bar, color=COLOURS[m % len(COLOURS)], label=method)
    ax.set_yticks(range(len(order)))
    ax.set_yticklabels(labels.texts, fontsize=7 if len(roles) > 40 else 8)
    if labels.family:
        for tick in ax.get_yticklabels():
            tick.set_fontfamily(list(labels.family))
    ax.set_ylim(len(order) - 0.5, -0.5)  # first row at the top
    ax.axvline(0.0, color="black", linewidth=0.6)
    ax.set_xlabel("refusal drop (points of refusal rate; base - after fine-tuning)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    if len(methods) > 1:
        ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def forecast_vs_observed(
    path: str | Path, loo: LooResult, title: str = "Risk forecast, leave one role out"
) -> Path:
    """Each role's LOO forecast (y) against its observed drop (x)."""
    if not loo.per_role:
        raise ConfigError("forecast_vs_observed: no roles")
    observed = [e.observed for e in loo.per_role]
    predicted = [e.predicted for e in loo.per_role]
    labels = role_labels([e.role for e in loo.per_role])
    fig = _figure(6.0, 5.5)
    ax = fig.add_subplot()
    ax.scatter(observed, predicted, s=28, color=COLOURS[0], alpha=0.8, edgecolors="white", linewidths=0.5)
    low = min(*observed, *predicted)
    high = max(*observed, *predicted)
    pad = max(1.0, 0.05 * (high - low))
    ax.plot([low - pad, high + pad], [low - pad, high + pad], color="grey", linewidth=0.8, linestyle="--")
    if len(observed) <= LABEL_POINTS:
        _annotate(ax, range(len(observed)), observed, predicted, labels.texts, labels.family)
    ax.set_xlabel("observed refusal drop (points)")
    ax.set_ylabel("forecast drop, role held out (points)")
    weak = ", weak" if loo.weak else ""
    if loo.p_value is not None:
        weak = f", permutation p = {loo.p_value:.3f}{weak}"
    ax.set_title(
        f"{title}\nMAE {loo.mae:.1f} vs {loo.baseline_mae:.1f} predicting the mean{weak} (n = {loo.n})",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    return _save(fig, path)
