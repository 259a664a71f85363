"""PNG plots of loaded results.json files (matplotlib Agg canvases; pyplot's global state is untouched).

- pareto: role-play score (x) vs safety (y), one labelled point per run, CI error bars where the value
  comes from a single benchmark, and the Pareto front (higher is better on both axes) as a step line;
  one panel per role the runs were evaluated for (a front only compares runs of the same role).
- roles: ROUGE-L per role, grouped bars (one bar per run that has the role, centred on the role's tick;
  one colour per run in every panel), one panel per role-play benchmark.
- languages: attack success rate per language, grouped bars (one bar per run).

A run without the values a plot needs is left out of that plot with a logged warning.

Role names in any script: when the default font lacks a name's glyphs (Chinese role names with
DejaVu Sans), the labels fall back to an installed font that has them (e.g. Noto Sans CJK); when none is
installed, such a role is labelled with an id ("R1") and `role_legend` gives the names for report.md.
Either way matplotlib draws no empty boxes and warns of no missing glyph.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from matplotlib import font_manager
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.ft2font import FT2Font
from matplotlib.lines import Line2D

from safetune.evaluation.results import REFUSAL_RATE, ROUGE_L, BenchmarkResult, GroupResult, Metric
from safetune.reports.tables import Run, ci_of, display_name, language_asr, languages, number
from safetune.storage import atomic_open

log = logging.getLogger(__name__)

DPI = 150
# What the Pareto plot's axes measure: utility (role-play or QA ROUGE-L) and safety (refusal rate).
UTILITY: Metric = ROUGE_L
SAFETY: Metric = REFUSAL_RATE
_ROLEPLAY_KEYS = (
    ("rolebench_avg", "RoleBench avg"),
    ("rolebench_raw", "RoleBench RAW"),
    ("rolebench_spe", "RoleBench SPE"),
)


# ---- fonts for role names ----

# Fonts that map every code point to a placeholder box (matplotlib ships "Last Resort"): no fallback.
_PLACEHOLDER_FONTS = ("Last Resort",)


@cache
def _charmap(path: str) -> frozenset[int]:
    """The code points a font file has glyphs for (empty for a file FreeType cannot read)."""
    try:
        return frozenset(FT2Font(path).get_charmap())
    except (OSError, RuntimeError, ValueError):
        return frozenset()


def _drawn(chars: Iterable[str]) -> set[str]:
    return {ch for ch in chars if not ch.isspace() and unicodedata.category(ch)[0] != "C"}


@cache
def _fallback_font(chars: frozenset[str]) -> str | None:
    """The family name of the first installed font that has every one of `chars`, or None."""
    for entry in sorted(font_manager.fontManager.ttflist, key=lambda f: (f.name, f.fname)):
        if entry.name.startswith(_PLACEHOLDER_FONTS):
            continue
        if all(ord(ch) in _charmap(entry.fname) for ch in chars):
            return str(entry.name)
    return None


@dataclass(frozen=True)
class RoleLabels:
    """How role names are written on a plot: `texts` in the order given, drawn in `family` (None: the
    default font); `legend` pairs each id that stands in for an undrawable name with that name."""

    texts: tuple[str, ...]
    family: tuple[str, ...] | None = None
    legend: tuple[tuple[str, str], ...] = ()


def role_labels(names: Sequence[str]) -> RoleLabels:
    """Labels for `names` that the installed fonts can draw (see the module docstring)."""
    default = font_manager.findfont(FontProperties())
    missing = frozenset(ch for ch in _drawn("".join(names)) if ord(ch) not in _charmap(default))
    if not missing:
        return RoleLabels(tuple(names))
    fallback = _fallback_font(missing)
    if fallback is not None:
        return RoleLabels(tuple(names), (FontProperties(fname=default).get_name(), fallback))
    texts: list[str] = []
    legend: list[tuple[str, str]] = []
    for name in names:
        if any(ch in missing for ch in name):
            texts.append(f"R{len(legend) + 1}")
            legend.append((texts[-1], name))
        else:
            texts.append(name)
    return RoleLabels(tuple(texts), None, tuple(legend))


def _plot_roles(runs: Sequence[Run]) -> list[str]:
    """Every role name that roles.png draws, sorted (the order of `role_labels`' ids)."""
    roles = {role for name in _role_benchmarks(runs) for run in runs for role in _by_role(run, name)}
    return sorted(roles)


def role_legend(runs: Sequence[Run]) -> list[tuple[str, str]]:
    """(id, role name) for the roles that roles.png labels with an id (no installed font draws them)."""
    return list(role_labels(_plot_roles(runs)).legend) if has_roles(runs) else []


def _bar_width(categories: int, runs: int) -> float:
    """Figure width (inches) for grouped bars: grows with the bar count, within readable bounds."""
    return min(14.0, max(6.4, 0.35 * categories * max(1, runs) + 3.0))


def _figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas (pyplot's global backend and state are left alone)."""
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path, layout: bool = True) -> Path:
    """Write `fig` as a PNG; `layout=False` keeps a layout the figure has already fixed."""
    if layout:
        fig.tight_layout()
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=DPI, bbox_inches="tight")
    return path


def _point_error(value: float, ci: tuple[float, float] | None) -> list[list[float]] | None:
    if ci is None:
        return None
    return [[max(0.0, value - ci[0])], [max(0.0, ci[1] - value)]]


def _by_role(run: Run, name: str) -> Mapping[str, GroupResult]:
    bench = run.benchmarks.get(name)
    return {} if bench is None else bench.by_role


def _roleplay(run: Run) -> tuple[float, tuple[float, float] | None, str] | None:
    for key, name in _ROLEPLAY_KEYS:
        value = number(run.summary.value(key))
        if value is not None:
            return value, ci_of(run.single_used(key)), name
    qa = run.benchmarks.get("qa")  # no role-play benchmark: benign-answer quality is the utility axis
    value = None if qa is None else number(qa.value)
    if value is not None:
        return value, ci_of(qa), "QA"
    return None


def _harmful(run: Run) -> list[BenchmarkResult]:
    return [b for b in run.benchmarks.values() if b.metric == SAFETY and number(b.value) is not None]


def _safety(run: Run) -> tuple[float, tuple[float, float] | None, str] | None:
    value = number(run.summary.safety_avg)
    if value is not None:
        return value, ci_of(run.single_used("safety_avg")), "Safety AVG"
    harmful = _harmful(run)
    if not harmful:
        return None
    mean = sum(number(b.value) or 0.0 for b in harmful) / len(harmful)  # each has a value (`_harmful`)
    return mean, ci_of(harmful[0]) if len(harmful) == 1 else None, "mean refusal rate"


def pareto_front(
    points: Sequence[tuple[float, float]], higher_is_better: tuple[bool, bool] = (True, True)
) -> list[int]:
    """Indices of the points that no other point beats on both axes, by x; `higher_is_better` is each
    axis's direction (that of the metric it shows)."""
    signs = [1.0 if higher else -1.0 for higher in higher_is_better]
    scores = [(signs[0] * x, signs[1] * y) for x, y in points]
    front = [
        i
        for i, (x, y) in enumerate(scores)
        if not any(ox >= x and oy >= y and (ox > x or oy > y) for ox, oy in scores)
    ]
    return sorted(front, key=lambda i: (points[i][0], -scores[i][1]))


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
            low, high = min(low, middle - 5), max(high, middle + 5)
        set_(max(low, -2.0), min(high, 102.0))


def run_roles(run: Run) -> tuple[str, ...]:
    """The roles a run was evaluated for: `eval.roles` from its provenance when set, else every role that
    has a per-role ROUGE-L score (a RoleBench set run without `eval.roles`); () for a run with none."""
    if run.provenance.roles:
        return run.provenance.roles
    found = {role for bench in run.benchmarks.values() if bench.metric == ROUGE_L for role in bench.by_role}
    return tuple(sorted(found))


def strip_role(label: str, role: str) -> str:
    """`label` without the role's name in front or at the end ("Grim Vex SaRFT" -> "SaRFT" for "Grim Vex";
    case, spaces, "_" and "-" between its words are ignored); the label as it is when nothing is left."""
    name = r"[\s_-]+".join(re.escape(word) for word in role.split())
    if not name:
        return label
    sep = r"[\s_:/|,()\[\]-]+"
    for pattern in (rf"^\s*{name}{sep}(?P<rest>.+)$", rf"^(?P<rest>.+?){sep}{name}[\s)\]]*$"):
        match = re.match(pattern, label, flags=re.IGNORECASE)
        rest = match["rest"].strip(" _-:/|,") if match else ""
        for opening, closing in ("()", "[]"):  # "Grim Vex (SFT)" -> "SFT", not "SFT)"
            if rest.startswith(opening) and rest.endswith(closing):
                rest = rest[1:-1].strip()
            elif rest.count(closing) > rest.count(opening):
                rest = rest.rstrip(closing).strip()
            elif rest.count(opening) > rest.count(closing):
                rest = rest.lstrip(opening).strip()
        if rest:
            return rest
    return label


@dataclass(frozen=True)
class ParetoPoint:
    """One run in a Pareto panel: its short label, its scores with their CIs and the axes' names."""

    label: str
    run_label: str
    x: float
    x_ci: tuple[float, float] | None
    x_name: str
    y: float
    y_ci: tuple[float, float] | None
    y_name: str


@dataclass(frozen=True)
class ParetoPanel:
    """The runs evaluated for the same roles (one Pareto front): `roles` is () for runs without a role."""

    roles: tuple[str, ...]
    points: tuple[ParetoPoint, ...]

    @property
    def title(self) -> str:
        if not self.roles:
            return "no role"
        shown = " + ".join(self.roles[:3])
        return shown if len(self.roles) <= 3 else f"{shown} + {len(self.roles) - 3} more roles"

    @property
    def front(self) -> list[int]:
        """Indices (into `points`) of this panel's Pareto front, by x."""
        directions = (UTILITY.higher_is_better, SAFETY.higher_is_better)
        return pareto_front([(p.x, p.y) for p in self.points], directions)


def pareto_panels(runs: Sequence[Run]) -> list[ParetoPanel]:
    """The runs with both a utility and a safety score, grouped by the roles they were evaluated for
    (`run_roles`), in the order the groups first appear; a Pareto front only compares runs of one group.

    A run evaluated for several roles goes in the group of exactly that set of roles (its panel is titled
    "A + B"); runs without a role (no role-play benchmark, e.g. a QA utility set) share one panel. In a
    panel of one role, point labels lose that role's name (`strip_role`), since the panel title has it.
    """
    groups: dict[tuple[str, ...], list[ParetoPoint]] = {}
    for run in runs:
        x, y = _roleplay(run), _safety(run)
        if x is None or y is None:
            missing = "RoleBench or QA score" if x is None else "harmful-prompt refusal rate"
            log.warning("pareto plot: skipping run %r (no %s)", run.label, missing)
            continue
        roles = run_roles(run)
        label = strip_role(run.label, roles[0]) if len(roles) == 1 else run.label
        point = ParetoPoint(label, run.label, x[0], x[1], x[2], y[0], y[1], y[2])
        groups.setdefault(roles, []).append(point)
    return [ParetoPanel(roles, tuple(points)) for roles, points in groups.items()]


_LABEL_FONTSIZE = 8.5
_MARKER_SIZE = 7.0  # points
_RING_SIZE = 12.0  # points: the ring around the points on the Pareto front
_DOT_RADIUS = _MARKER_SIZE / 2 + 0.5  # points: a marker's extent from its centre, with its edge line
_RING_RADIUS = _RING_SIZE / 2 + 0.6  # points: the same for a ringed marker (edge width 1.1)
_LABEL_GAPS = (2.0, 5.0, 9.0, 14.0, 20.0, 27.0, 35.0, 45.0, 56.0, 70.0)  # points from the marker's edge
_LABEL_ANGLES = (0, 30, -30, 60, -60, 180, 150, -150, 120, -120, 90, -90)  # degrees, most preferred first
_ARROW_FROM = 12.0  # points: a label placed further away than this gets a leader line
_CROWDED_ARROW_FROM = 4.0  # points: the same for a point with another marker close by (`_CROWD`)
_CROWD = 18.0  # points: a point with another marker's centre this close is in a crowded neighbourhood
_CAP_HALF = 3.0  # points: half the length of an error bar's cap (`capsize`)
_CLEAR = 1.0  # points: the least space kept between a label and a marker or an error bar


Box = tuple[float, float, float, float]


def _overlap(a: Box, b: Box) -> float:
    """Overlap area of two (x0, y0, x1, y1) boxes."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    return width * height if width > 0 and height > 0 else 0.0


def _distance(box: Box, point: tuple[float, float]) -> float:
    """Distance from a point to the nearest point of a box."""
    dx = max(box[0] - point[0], 0.0, point[0] - box[2])
    dy = max(box[1] - point[1], 0.0, point[1] - box[3])
    return math.hypot(dx, dy)


def _candidates(
    point: tuple[float, float], size: tuple[float, float], radius: float, px_per_pt: float
) -> list[tuple[float, Box, str, str, float, float]]:
    """Label spots around a point, nearest and most preferred first: (gap, box, ha, va, dx, dy) with
    (dx, dy) the text anchor's offset from the point in pixels."""
    out = []
    for gap in _LABEL_GAPS:
        for angle in _LABEL_ANGLES:
            cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
            dx, dy = (radius + gap * px_per_pt) * cos, (radius + gap * px_per_pt) * sin
            ha = "left" if cos > 0.3 else "right" if cos < -0.3 else "center"
            va = "bottom" if sin > 0.3 else "top" if sin < -0.3 else "center"
            x0 = point[0] + dx - {"left": 0.0, "right": size[0], "center": size[0] / 2}[ha]
            y0 = point[1] + dy - {"bottom": 0.0, "top": size[1], "center": size[1] / 2}[va]
            out.append((gap, (x0, y0, x0 + size[0], y0 + size[1]), ha, va, dx, dy))
    return out


def _samples(start: tuple[float, float], end: tuple[float, float]) -> list[tuple[float, float]]:
    """Points along the segment start-end (a leader line), at most 2 pixels apart: enough to test it
    against labels and markers."""
    n = max(24, math.ceil(math.dist(start, end) / 2))
    return [
        (start[0] + (end[0] - start[0]) * k / n, start[1] + (end[1] - start[1]) * k / n) for k in range(1, n)
    ]


def _crosses(start: tuple[float, float], end: tuple[float, float], box: Box) -> bool:
    """Whether the segment start-end passes through the box."""
    return any(box[0] < x < box[2] and box[1] < y < box[3] for x, y in _samples(start, end))


def _nearest_on(box: Box, point: tuple[float, float]) -> tuple[float, float]:
    return (min(max(point[0], box[0]), box[2]), min(max(point[1], box[1]), box[3]))


def _place_labels(
    ax: Any,
    points: Sequence[tuple[float, float]],
    labels: Sequence[str],
    radii: Sequence[float],
    obstacles: Sequence[Box],
    soft: Sequence[Box],
) -> None:
    """Annotate each point with its label, placed (in display pixels, once the layout is final) at one of
    the spots around the point (`_candidates`), ranked: inside the axes if any fits, then clear of every
    marker (a circle of `radii[i]` points around point i: the Pareto ring where there is one), every
    error bar (`obstacles`), the other labels and their leader lines if any is, then the one with the
    least cost: the distance, plus a penalty when the label is nearer another point than its own (it
    could be read as that run's label), one for covering the front line (`soft`), and, for a point in a
    crowded neighbourhood (another marker within `_CROWD` points), one for a spot too close to get a
    leader line. A label that ends up far away (nearer for a crowded point) or nearer another point gets
    a thin leader line to its point."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    px_per_pt = fig.dpi / 72.0
    frame = ax.get_window_extent(renderer)
    inner = (frame.x0 + 2, frame.y0 + 2, frame.x1 - 2, frame.y1 - 2)
    pixels = [(float(x), float(y)) for x, y in ax.transData.transform(points)]
    radius = [r * px_per_pt for r in radii]
    markers = [(x - r, y - r, x + r, y + r) for (x, y), r in zip(pixels, radius, strict=True)]
    crowded = [
        any(math.dist(p, q) < _CROWD * px_per_pt for j, q in enumerate(pixels) if j != i)
        for i, p in enumerate(pixels)
    ]
    placed: list[Box] = []
    leaders: list[tuple[tuple[float, float], tuple[float, float]]] = []
    pad = 1.5 * px_per_pt
    clear = _CLEAR * px_per_pt

    def needs_leader(box: Box, i: int) -> bool:
        own = _distance(box, pixels[i])
        far = own > radius[i] + (_CROWDED_ARROW_FROM if crowded[i] else _ARROW_FROM) * px_per_pt
        return far or any(_distance(box, p) < own for j, p in enumerate(pixels) if j != i)

    def rank(spot: tuple[float, Box, str, str, float, float], i: int) -> tuple[int, int, float]:
        gap, box, *_ = spot
        outside = box[0] < inner[0] or box[1] < inner[1] or box[2] > inner[2] or box[3] > inner[3]
        padded = (box[0] - pad, box[1] - pad, box[2] + pad, box[3] + pad)
        cleared = (box[0] - clear, box[1] - clear, box[2] + clear, box[3] + clear)
        hard = any(_overlap(padded, other) for other in placed)
        hard = hard or any(_overlap(cleared, m) for m in [*markers, *obstacles])
        hard = hard or any(_crosses(a, b, padded) for a, b in leaders)
        leader = needs_leader(box, i)
        if leader:
            start = _nearest_on(box, pixels[i])
            hard = hard or any(_crosses(start, pixels[i], o) for o in placed)
            drawn = [q for q in _samples(start, pixels[i]) if math.dist(q, pixels[i]) > radius[i]]
            hard = hard or any(  # over another marker (where it is nearer that one than its own point)
                math.dist(q, p) < min(radius[j] + 1.5 * px_per_pt, math.dist(q, pixels[i]))
                for q in drawn
                for j, p in enumerate(pixels)
                if j != i
            )
        own = _distance(box, pixels[i])
        ambiguous = any(_distance(box, p) < own + 2 * px_per_pt for j, p in enumerate(pixels) if j != i)
        area = (box[2] - box[0]) * (box[3] - box[1])
        covered = sum(_overlap(box, s) for s in soft) / area
        unled = crowded[i] and not leader
        return int(outside), int(hard), gap + 25.0 * ambiguous + 30.0 * covered + 20.0 * unled

    for i in sorted(range(len(points)), key=lambda i: (-pixels[i][1], pixels[i][0])):
        probe = ax.text(0, 0, labels[i], fontsize=_LABEL_FONTSIZE)
        extent = probe.get_window_extent(renderer)
        probe.remove()
        spots = _candidates(pixels[i], (extent.width, extent.height), radius[i], px_per_pt)
        _, box, ha, va, dx, dy = min(spots, key=lambda spot: rank(spot, i))
        placed.append(box)
        arrow = None
        if needs_leader(box, i):  # from the label's corner or side nearest the point, to its marker's edge
            start = _nearest_on(box, pixels[i])
            leaders.append((start, pixels[i]))
            relpos = ((start[0] - box[0]) / (box[2] - box[0]), (start[1] - box[1]) / (box[3] - box[1]))
            arrow = {"arrowstyle": "-", "color": "0.55", "lw": 0.6, "relpos": relpos, "shrinkA": 0}
            arrow["shrinkB"] = radii[i]
        ax.annotate(
            labels[i],
            points[i],
            xytext=(dx / px_per_pt, dy / px_per_pt),
            textcoords="offset points",
            ha=ha,
            va=va,
            fontsize=_LABEL_FONTSIZE,
            annotation_clip=False,
            clip_on=True,
            arrowprops=arrow,
        ).set_in_layout(False)


def _segment_box(ax: Any, a: tuple[float, float], b: tuple[float, float], half: float) -> Box:
    """Display-pixel box of the data segment a-b, widened by `half` points on every side."""
    (x0, y0), (x1, y1) = ax.transData.transform([a, b])
    pixels = half * ax.figure.dpi / 72.0
    return (min(x0, x1) - pixels, min(y0, y1) - pixels, max(x0, x1) + pixels, max(y0, y1) + pixels)


def _error_boxes(ax: Any, panel: ParetoPanel) -> list[Box]:
    """Display-pixel boxes of the panel's error bars with their caps (labels never cover them)."""
    boxes = []
    for p in panel.points:
        if p.x_ci is not None:
            boxes.append(_segment_box(ax, (min(p.x_ci[0], p.x), p.y), (max(p.x_ci[1], p.x), p.y), _CAP_HALF))
        if p.y_ci is not None:
            boxes.append(_segment_box(ax, (p.x, min(p.y_ci[0], p.y)), (p.x, max(p.y_ci[1], p.y)), _CAP_HALF))
    return boxes


def _front_boxes(ax: Any, panel: ParetoPanel) -> list[Box]:
    """Display-pixel boxes of the panel's front line (labels avoid it when they can)."""
    boxes = []
    for a, b in itertools.pairwise(panel.front):  # the step line: up, then across
        pa, pb = panel.points[a], panel.points[b]
        boxes.append(_segment_box(ax, (pa.x, pa.y), (pa.x, pb.y), 1.0))
        boxes.append(_segment_box(ax, (pa.x, pb.y), (pb.x, pb.y), 1.0))
    return boxes


def pareto_figure(runs: Sequence[Run]) -> Figure:
    """The Pareto figure: one panel per role group (`pareto_panels`), side by side (at most 3 a row) with
    shared axes, each with its runs' points (CI error bars), their labels and its own Pareto front."""
    panels = pareto_panels(runs)
    count = max(1, len(panels))
    ncols = min(count, 3)
    nrows = math.ceil(count / ncols)
    fig = Figure(figsize=(5.0 * ncols + 0.8, 4.4 * nrows + 0.6), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True)
    axes = list(grid.flat)
    for ax in axes[count:]:
        ax.set_visible(False)
    points = [p for panel in panels for p in panel.points]
    x_names = {p.x_name for p in points}
    y_names = {p.y_name for p in points}
    colours: dict[str, Any] = {}
    palette = [f"C{i}" for i in range(10)]
    has_step = False
    for ax, panel in zip(axes, panels, strict=False):
        for p in panel.points:
            colour = colours.setdefault(p.label, palette[len(colours) % len(palette)])
            ax.errorbar(
                p.x,
                p.y,
                xerr=_point_error(p.x, p.x_ci),
                yerr=_point_error(p.y, p.y_ci),
                fmt="o",
                markersize=_MARKER_SIZE,
                capsize=3,
                color=colour,
            )
        front = panel.front
        ax.plot(
            [panel.points[i].x for i in front],
            [panel.points[i].y for i in front],
            "o",
            markersize=_RING_SIZE,
            markerfacecolor="none",
            markeredgecolor="0.2",
            markeredgewidth=1.1,
            zorder=3,
        )
        if len({(panel.points[i].x, panel.points[i].y) for i in front}) > 1:
            has_step = True
            ax.step(
                [panel.points[i].x for i in front],
                [panel.points[i].y for i in front],
                where="pre",
                color="0.4",
                linestyle="--",
                linewidth=1.2,
                zorder=0,
            )
        if len(panels) > 1 or panel.roles:
            ax.set_title(panel.title, fontsize=11)
    if points:
        for ax in axes[:count]:
            ax.margins(0.12)
        _percent_limits(axes[0], [(p.x, p.y) for p in points])
    else:
        axes[0].text(
            0.5,
            0.5,
            "no run has both a role-play and a safety score",
            ha="center",
            va="center",
            transform=axes[0].transAxes,
        )
    utility = "Utility" if "QA" in x_names else "Role-play ability"
    better = (
        f"{'up' if SAFETY.higher_is_better else 'down'} and {'right' if UTILITY.higher_is_better else 'left'}"
    )
    fig.suptitle(f"{utility} vs safety ({better} is better)")
    x_label = f"{' / '.join(sorted(x_names)) or 'RoleBench'}: {UTILITY.title}"
    y_label = f"{' / '.join(sorted(y_names)) or 'Safety'}: {SAFETY.title} = 100 − ASR"
    for k, ax in enumerate(axes[:count]):
        ax.set_xlabel(x_label)
        if k % ncols == 0:
            ax.set_ylabel(y_label)
        ax.tick_params(labelbottom=True, labelleft=k % ncols == 0)
        ax.grid(True, alpha=0.3)
    if points:
        ring = Line2D(
            [],
            [],
            linestyle="--" if has_step else "none",
            color="0.4",
            marker="o",
            markersize=_RING_SIZE * 0.8,
            markerfacecolor="none",
            markeredgecolor="0.2",
            label="Pareto front (no run in the same panel is better on both axes)",
        )
        fig.legend(handles=[ring], loc="outside lower center", fontsize=8, frameon=False)
    # Fix the layout, then place the labels in it (they are left out of the layout and kept in the axes).
    fig.canvas.draw()
    fig.set_layout_engine("none")
    for ax, panel in zip(axes, panels, strict=False):
        merged: dict[tuple[float, float], list[str]] = {}
        for p in panel.points:  # runs that land on the same spot share one label ("base, SFT")
            merged.setdefault((p.x, p.y), []).append(p.label)
        ringed = {(panel.points[i].x, panel.points[i].y) for i in panel.front}
        radii = [_RING_RADIUS if spot in ringed else _DOT_RADIUS for spot in merged]
        labels = [", ".join(names) for names in merged.values()]
        _place_labels(ax, list(merged), labels, radii, _error_boxes(ax, panel), _front_boxes(ax, panel))
    return fig


def pareto_plot(runs: Sequence[Run], path: Path) -> Path:
    """Write the Pareto figure (`pareto_figure`) as a PNG to `path`."""
    return _save(pareto_figure(runs), path, layout=False)


Series = tuple[str, list[float | None], list[tuple[float, float] | None]]


def _slots(series: Sequence[Series], categories: int, compact: bool) -> list[list[int]]:
    """For each category, the series that get a bar slot in its group, in order: every series, or with
    `compact` only those with a value for that category."""
    return [
        [k for k, (_, values, _) in enumerate(series) if not compact or values[i] is not None]
        for i in range(categories)
    ]


def _grouped_bars(
    ax: Any,
    categories: Sequence[str],
    series: Sequence[Series],
    colours: Sequence[Any] | None = None,
    compact: bool = False,
) -> None:
    """Bars for categories on x, one bar per series (label, values, CIs), coloured `colours[k]` (the
    colour cycle when None). Missing values leave a gap, or with `compact` the group holds only the
    series with a value, centred on its tick (all bars keep the width of the fullest group)."""
    slots = _slots(series, len(categories), compact)
    width = 0.8 / max([1, *(len(group) for group in slots)])
    for k, (label, values, cis) in enumerate(series):
        xs, heights, errs_low, errs_high = [], [], [], []
        for i, (value, ci) in enumerate(zip(values, cis, strict=True)):
            if value is None:
                continue
            xs.append(i + width * (slots[i].index(k) - (len(slots[i]) - 1) / 2))
            heights.append(value)
            errs_low.append(max(0.0, value - ci[0]) if ci else 0.0)
            errs_high.append(max(0.0, ci[1] - value) if ci else 0.0)
        colour = {} if colours is None else {"color": colours[k]}
        ax.bar(
            xs,
            heights,
            width,
            label=label,
            yerr=[errs_low, errs_high],
            capsize=2,
            error_kw={"lw": 0.8},
            **colour,
        )
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
            if bench.metric == ROUGE_L and bench.by_role and name not in names:
                names.append(name)
    return sorted(names)


def has_roles(runs: Sequence[Run]) -> bool:
    return bool(_role_benchmarks(runs))


def roles_figure(runs: Sequence[Run]) -> Figure:
    """ROUGE-L per role, one panel per role-play benchmark: for each role, one bar per run that has a
    value for it (a run evaluated for one role only takes no space in the other roles' groups), centred
    on the role's tick; each run keeps its colour in every panel."""
    names = _role_benchmarks(runs)
    labels = role_labels(_plot_roles(runs))
    shown = dict(zip(_plot_roles(runs), labels.texts, strict=True))
    palette = [f"C{i % 10}" for i in range(len(runs))]
    panels = []
    for name in names:
        roles = sorted({role for run in runs for role in _by_role(run, name)})
        series: list[Series] = []
        colours = []
        for k, run in enumerate(runs):
            by_role = _by_role(run, name)
            values = [number(by_role[role].value) if role in by_role else None for role in roles]
            if all(v is None for v in values):
                log.warning("roles plot: skipping run %r for %s (no per-role ROUGE-L)", run.label, name)
                continue
            series.append((run.label, values, [ci_of(by_role.get(role)) for role in roles]))
            colours.append(palette[k])
        panels.append((name, roles, series, colours))
    # The width follows the panel with the most bars: roles x the most runs one role has there.
    bars = max(len(roles) * max(map(len, _slots(series, len(roles), True))) for _, roles, series, _ in panels)
    widest = max(len(roles) for _, roles, _, _ in panels)
    fig = _figure(_bar_width(widest, math.ceil(bars / widest)), 3.8 * len(names))
    axes = fig.subplots(len(names), 1, squeeze=False)[:, 0]
    for ax, (name, roles, series, colours) in zip(axes, panels, strict=True):
        _grouped_bars(ax, [shown[role] for role in roles], series, colours, compact=True)
        if labels.family:
            for tick in ax.get_xticklabels():
                tick.set_fontfamily(list(labels.family))
        ax.set_title(f"{display_name(name)}: ROUGE-L per role (95% CI)")
        ax.set_xlabel("role (ids: see report.md)" if labels.legend else "role")
        ax.set_ylabel("ROUGE-L F1 (×100)")
    return fig


def roles_plot(runs: Sequence[Run], path: Path) -> Path:
    """Write the per-role figure (`roles_figure`) as a PNG to `path`."""
    return _save(roles_figure(runs), path)


def has_languages(runs: Sequence[Run]) -> bool:
    return bool(languages(runs))


def _language_ci(run: Run, language: str) -> tuple[float, float] | None:
    """The ASR interval (100 minus the refusal-rate interval) when one benchmark gave the language."""
    bench = run.single_used("multilingual_asr")
    ci = ci_of(None if bench is None else bench.by_language.get(language))
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


def has_turns(runs: Sequence[Run]) -> bool:
    return any(table.by_turn for run in runs for table in run.results.turns.values())


def turns_figure(runs: Sequence[Run]) -> Figure:
    """Refusal (and over-refusal) against the user turn k: one line per (run, benchmark) with its 95% CI,
    the benchmark's single-turn value as a dotted line of the same colour."""
    fig = _figure(6.4, 4.2)
    ax = fig.add_subplot()
    colours = itertools.cycle(f"C{i}" for i in range(10))
    for run in runs:
        for name, table in run.results.turns.items():
            rows = [row for row in table.by_turn if row.value is not None]
            if not rows:
                continue
            colour = next(colours)
            ks = [row.k for row in rows]
            values = [float(row.value) for row in rows if row.value is not None]
            low = [v - (row.ci95[0] if row.ci95 else v) for v, row in zip(values, rows, strict=True)]
            high = [(row.ci95[1] if row.ci95 else v) - v for v, row in zip(values, rows, strict=True)]
            label = f"{run.label}: {display_name(name)}" + (
                " (over-refusal)" if table.metric == "over_refusal_rate" else ""
            )
            ax.errorbar(ks, values, yerr=[low, high], marker="o", capsize=3, color=colour, label=label)
            if table.single_turn is not None:
                ax.axhline(table.single_turn, linestyle=":", color=colour, linewidth=1)
    ax.set_title("Refusal against turn k, in character (95% CI; dotted: single turn)")
    ax.set_xlabel("user turn k of the request")
    ax.set_ylabel("% refused")
    ax.set_ylim(-2, 102)
    ax.set_xticks(
        sorted({row.k for run in runs for table in run.results.turns.values() for row in table.by_turn})
    )
    ax.legend(fontsize="small")
    return fig


def turns_plot(runs: Sequence[Run], path: Path) -> Path:
    """Write `turns_figure` as a PNG to `path`."""
    return _save(turns_figure(runs), path)
