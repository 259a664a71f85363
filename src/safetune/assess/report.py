"""A study's outputs from its finished units: results.csv (one row per role), summary.json (typed),
report.md with the per-role drop chart (sorted by drop, the paper's figure), the drop-vs-trait scatter
when trait scores exist, and the per-role flagged-example viewer (what RDS thinks is risky in the data).

Traits plug in at one place, `trait_scores`: the lexicon of assess/traits.py when that module exists
(`score_traits(profile) -> {trait: score}`, `spearman(x, y, bootstrap, seed) -> Correlation`); without
it the study reports no traits and no correlations.
"""

from __future__ import annotations

import csv
import importlib
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from safetune.assess.aggregate import (
    BASE,
    RoleRow,
    aggregate,
    method_means,
    selection_by_role,
    sort_by_drop,
)
from safetune.data.records import RoleProfile
from safetune.data.sources import role_key
from safetune.reports.plots import DPI, role_labels
from safetune.storage import atomic_open, write_json

if TYPE_CHECKING:
    from safetune.assess.study import StudyPlan

SUMMARY_VERSION = 1
CHART = "plots/drop_by_role.png"
SCATTER = "plots/drop_vs_traits.png"
EXCERPT = 160  # characters of a flagged example's input and output shown in report.md


@dataclass(frozen=True)
class Correlation:
    """Spearman's rho of one method's drop with one trait over the roles, with its bootstrap 95% CI."""

    method: str
    trait: str
    rho: float | None
    ci95: tuple[float, float] | None
    n: int


@dataclass(frozen=True)
class StudySummary:
    """summary.json: the study, one row per role, the per-method means and the trait correlations."""

    model: str
    data: str
    methods: tuple[str, ...]
    primary_method: str  # the one the roles are sorted by (the first of assess.methods)
    identity_hash: str
    units_finished: int
    units_total: int
    roles: tuple[RoleRow, ...]
    means: Mapping[str, Mapping[str, float | None]]
    traits: tuple[str, ...]
    correlations: tuple[Correlation, ...]
    summary_version: int = SUMMARY_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- traits: the one place the lexicon plugs in ----


def _traits_module() -> Any | None:
    try:
        return importlib.import_module("safetune.assess.traits")
    except ModuleNotFoundError:
        return None


def trait_scores(profiles: Mapping[str, RoleProfile]) -> dict[str, dict[str, float]] | None:
    """Trait scores per role_key from each role's profile text, or None without a trait scorer."""
    traits = _traits_module()
    if traits is None:
        return None
    return {
        key: dict(traits.score_traits(p.description or p.role_prompt or "")) for key, p in profiles.items()
    }


def correlations(rows: Sequence[RoleRow], methods: Sequence[str], names: Sequence[str]) -> list[Correlation]:
    traits = _traits_module()
    if traits is None or not names:
        return []
    found = []
    for method in methods:
        for name in names:
            pairs = [
                (r.traits[name], r.drop[method])
                for r in rows
                if r.traits is not None and name in r.traits and r.drop.get(method) is not None
            ]
            if len(pairs) < 3:  # a rank correlation of fewer than 3 roles says nothing
                found.append(Correlation(method, name, None, None, len(pairs)))
                continue
            c = traits.spearman([p[0] for p in pairs], [p[1] for p in pairs], bootstrap=1000, seed=0)
            ci = None if c.ci95 is None else (float(c.ci95[0]), float(c.ci95[1]))
            rho = None if c.rho is None or math.isnan(c.rho) else float(c.rho)
            found.append(Correlation(method, name, rho, ci, int(c.n)))
    return found


# ---- the outputs ----


def write_outputs(plan: StudyPlan) -> Path:
    """results.csv, summary.json, the plots and report.md from whatever units have finished."""
    from safetune.assess.study import SELECTION_DIR, read_unit
    from safetune.data.sources import load_data

    a = plan.config.assess
    units = [u for u in (read_unit(unit) for unit in plan.units) if u is not None]
    selection_rows = _read_jsonl(plan.study / SELECTION_DIR / "selection.jsonl")
    examples, profiles = load_data(plan.config)
    scores = trait_scores(profiles)
    rows = aggregate(
        plan.roles, a.methods, units, selection_by_role(selection_rows, a.margin_quantiles), scores
    )
    primary = a.methods[0]
    rows = sort_by_drop(rows, primary)
    names = sorted({t for r in rows if r.traits for t in r.traits})
    stored = json.loads((plan.study / "study.json").read_text(encoding="utf-8"))
    summary = StudySummary(
        model=plan.config.model.name,
        data=plan.config.data.path,
        methods=tuple(a.methods),
        primary_method=primary,
        identity_hash=stored["identity_hash"],
        units_finished=len(units),
        units_total=len(plan.units),
        roles=tuple(rows),
        means=method_means(rows, a.methods),
        traits=tuple(names),
        correlations=tuple(correlations(rows, a.methods, names)),
    )
    write_csv(plan.study / "results.csv", rows, a.methods, names)
    write_json(plan.study / "summary.json", summary.to_dict())
    drop_chart(rows, a.methods, plan.study / CHART)
    if names:
        trait_scatter(rows, primary, names, plan.study / SCATTER)
    texts = {ex.id: (ex.input, ex.output) for ex in examples}
    flagged = top_flagged(selection_rows, a.top_flagged)
    report = plan.study / "report.md"
    with atomic_open(report) as handle:
        handle.write(render_markdown(summary, flagged, texts))
    return report


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_csv(path: Path, rows: Sequence[RoleRow], methods: Sequence[str], traits: Sequence[str]) -> None:
    flat = [r.flat(methods, traits) for r in rows]
    columns: list[str] = []
    for row in flat:
        columns += [c for c in row if c not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in flat:
        writer.writerow({k: _cell(row.get(k)) for k in columns})
    with atomic_open(path) as handle:
        handle.write(buffer.getvalue())


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return value


def top_flagged(rows: Sequence[Mapping[str, Any]], k: int) -> dict[str, list[Mapping[str, Any]]]:
    """Per role_key, its `k` flagged training examples with the largest RDS margins."""
    by_role: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        if row.get("flag") and row.get("margin") is not None:
            by_role.setdefault(role_key(str(row["role"])), []).append(row)
    return {key: sorted(found, key=lambda r: -float(r["margin"]))[:k] for key, found in by_role.items()}


# ---- plots ----


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=DPI, bbox_inches="tight")


def drop_chart(rows: Sequence[RoleRow], methods: Sequence[str], path: Path) -> None:
    """Horizontal grouped bars: each role's refusal drop per method, the largest drop on top (so that 95
    role names stay readable, one per line)."""
    labels = role_labels([r.role for r in rows])
    height = max(2.5, 0.32 * len(rows) * max(1, len(methods)) ** 0.5 + 1.4)
    fig = _figure(8.0, height)
    ax = fig.add_subplot()
    bar = 0.8 / max(1, len(methods))
    for k, method in enumerate(methods):
        values = [r.drop.get(method) for r in rows]
        ys = [i + (k - (len(methods) - 1) / 2) * bar for i in range(len(rows))]
        ax.barh(ys, [0.0 if v is None else v for v in values], height=bar, label=method)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(list(labels.texts))
    if labels.family is not None:
        for tick in ax.get_yticklabels():
            tick.set_fontfamily(list(labels.family))
    ax.invert_yaxis()  # the largest drop first, at the top
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("refusal drop after fine-tuning (points: base - after)")
    ax.set_title(f"Safety cost per role (sorted by the {methods[0]} drop)")
    ax.legend(loc="lower right", fontsize="small")
    ax.grid(axis="x", alpha=0.3)
    _save(fig, path)


def trait_scatter(rows: Sequence[RoleRow], method: str, traits: Sequence[str], path: Path) -> None:
    """One panel per trait: each role's drop (the primary method) against its trait score."""
    columns = min(2, len(traits))
    lines = math.ceil(len(traits) / columns)
    fig = _figure(4.6 * columns, 3.6 * lines)
    for i, trait in enumerate(traits):
        ax = fig.add_subplot(lines, columns, i + 1)
        points = [
            (r.traits[trait], drop, r.role)
            for r in rows
            if r.traits is not None and trait in r.traits and (drop := r.drop.get(method)) is not None
        ]
        ax.scatter([p[0] for p in points], [p[1] for p in points], s=18)
        if len(points) <= 12:  # names on every point while they stay legible
            for x, y, name in points:
                ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(f"{trait} score")
        ax.set_ylabel(f"{method} refusal drop (points)")
        ax.grid(alpha=0.3)
    _save(fig, path)


# ---- report.md ----


def _num(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _count(value: int | None) -> str:
    return "–" if value is None else str(value)


def _excerpt(text: str) -> str:
    one = " ".join(text.split()).replace("|", "\\|")
    return one if len(one) <= EXCERPT else one[: EXCERPT - 1] + "…"


def render_markdown(
    summary: StudySummary,
    flagged: Mapping[str, Sequence[Mapping[str, Any]]],
    texts: Mapping[str, tuple[str, str]],
) -> str:
    methods = summary.methods
    lines = [
        "# Per-role safety risk study",
        "",
        f"Model `{summary.model}`, data `{summary.data}`, methods {', '.join(methods)}; "
        f"{summary.units_finished} of {summary.units_total} units finished. Refusal rates and drops are "
        "percentage points over the safety benchmarks (drop = base refusal - refusal after the fine-tune; "
        "above 0: safety lost). Incoherent answers count as neither refusals nor attack successes.",
        "",
        f"![refusal drop per role]({CHART})",
        "",
    ]
    head = ["role", "flag %", "base refusal"]
    head += [f"refusal {m}" for m in methods] + [f"drop {m}" for m in methods]
    head += ["base role-play"] + [f"role-play {m}" for m in methods]
    head += ["incoherent " + "/".join((BASE, *methods))]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary.roles:
        s = r.selection
        cells = [r.role, "–" if s is None else f"{100 * s.flag_rate:.1f}", _num(r.base_refusal)]
        cells += [_num(r.refusal.get(m)) for m in methods] + [_num(r.drop.get(m)) for m in methods]
        cells += [_num(r.base_roleplay)] + [_num(r.roleplay.get(m)) for m in methods]
        cells += ["/".join(_count(r.incoherent.get(m)) for m in (BASE, *methods))]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Means over the roles:", "", "| | refusal | drop | role-play |", "|---|---|---|---|"]
    for name, mean in summary.means.items():
        lines.append(
            f"| {name} | {_num(mean.get('refusal'))} | {_num(mean.get('drop'))} | {_num(mean.get('roleplay'))} |"
        )
    over = [r for r in summary.roles if any(v is not None for v in r.over_refusal.values())]
    if over:
        lines += ["", "Over-refusal (% of benign prompts refused):", ""]
        lines += ["| role | " + " | ".join((BASE, *methods)) + " |", "|---|" + "---|" * (len(methods) + 1)]
        for r in over:
            lines.append(
                f"| {r.role} | " + " | ".join(_num(r.over_refusal.get(m)) for m in (BASE, *methods)) + " |"
            )
    lines += ["", "## RDS margins per role", ""]
    lines += [
        "The margin of a training example is l_unsafe - l_role: how much more likely its response is under "
        "the unsafe prompt than under the role's own (above 0: flagged).",
        "",
    ]
    quantiles = next((list(r.selection.quantiles) for r in summary.roles if r.selection), [])
    lines += ["| role | examples | flagged | mean | median | " + " | ".join(quantiles) + " |"]
    lines += ["|---|---|---|---|---|" + "---|" * len(quantiles)]
    for r in summary.roles:
        s = r.selection
        if s is None:
            continue
        qs = [_num(s.quantiles.get(q), 3) for q in quantiles]
        lines.append(
            f"| {r.role} | {s.count} | {s.flagged} | {_num(s.mean, 3)} | {_num(s.median, 3)} | "
            + " | ".join(qs)
            + " |"
        )
    if summary.traits:
        lines += ["", "## Drop and traits", "", f"![drop against traits]({SCATTER})", ""]
        lines += ["| method | trait | Spearman rho | 95% CI | roles |", "|---|---|---|---|---|"]
        for c in summary.correlations:
            ci = "–" if c.ci95 is None else f"[{c.ci95[0]:.2f}, {c.ci95[1]:.2f}]"
            lines.append(f"| {c.method} | {c.trait} | {_num(c.rho, 2)} | {ci} | {c.n} |")
    lines += ["", "## Flagged training examples", ""]
    lines += ["Per role, the flagged examples with the largest RDS margins: what RDS thinks is risky.", ""]
    for r in summary.roles:
        found = flagged.get(role_key(r.role), [])
        lines += [f"### {r.role}", ""]
        if not found:
            lines += [
                "No flagged example." if r.selection else "No RDS scores (selection variant without them).",
                "",
            ]
            continue
        lines += ["| margin | input | output |", "|---|---|---|"]
        for row in found:
            text, reply = texts.get(str(row["id"]), ("?", "?"))
            lines.append(f"| {float(row['margin']):.3f} | {_excerpt(text)} | {_excerpt(reply)} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
