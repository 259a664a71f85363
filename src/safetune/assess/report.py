"""A study's outputs from its finished units: results.csv (one row per role), summary.json (typed),
report.md with the per-role drop chart (sorted by drop, the paper's figure), the drop-vs-trait scatter
per trait, the judges' agreement and incoherent answers per role and method, the risk forecast fitted on
the study with its leave-one-role-out error, and the per-role flagged-example viewer (what RDS thinks is
risky in the data).

Traits are the lexicon's (assess/traits.py, `score_traits`) from each role's profile; a role whose
profile is missing or has no words left gets no traits (counted and named in the report), not an error.
The plots are assess/plots.py's.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetune.assess import plots
from safetune.assess.aggregate import (
    BASE,
    RoleRow,
    TurnRate,
    aggregate,
    judges_of,
    method_means,
    pooled_turn_rates,
    selection_by_role,
    sort_by_drop,
    turn_order,
)
from safetune.assess.data import row_key
from safetune.assess.forecast import MIN_ROWS, Forecast
from safetune.assess.forecast import RoleRow as ForecastRow
from safetune.assess.traits import LEXICON_SOURCE, score_traits, spearman
from safetune.assess.traits import Correlation as TraitCorrelation
from safetune.data.records import RoleProfile
from safetune.data.sources import role_key
from safetune.errors import DataError
from safetune.storage import atomic_open, write_json

if TYPE_CHECKING:
    from safetune.assess.layout import StudyPlan

SUMMARY_VERSION = 3  # 3: by_turn (flag rates by turn position, conversation data)
CHART = "plots/drop_by_role.png"
FORECAST_PLOT = "plots/forecast_vs_observed.png"
FORECAST_FILE = "forecast.json"
EXCERPT = 160  # characters of a flagged example's input and output shown in report.md
BOOTSTRAP = 1000  # resamples of the roles for each correlation's CI


def scatter_path(trait: str) -> str:
    return f"plots/drop_vs_{trait}.png"


@dataclass(frozen=True)
class Correlation:
    """Spearman's rho of one method's drop with one trait over the roles, with its bootstrap 95% CI."""

    method: str
    trait: str
    rho: float | None
    ci95: tuple[float, float] | None
    n: int
    bootstrap: int = 0
    seed: int = 0

    def spearman(self) -> TraitCorrelation:
        return TraitCorrelation(self.rho, self.ci95, self.n, self.bootstrap, self.seed)


@dataclass(frozen=True)
class StudySummary:
    """summary.json: the study, one row per role, the per-method means, the trait correlations, the
    judges, and the forecast's leave-one-role-out error (None with too few roles: `forecast_note`)."""

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
    trait_source: str = LEXICON_SOURCE
    no_traits: tuple[str, ...] = ()  # roles without trait scores (no profile, or no words in it)
    judge_primary: str | None = None
    judge_secondary: str | None = None  # the judge the agreement columns compare with (None: one judge)
    forecast: Mapping[str, Any] | None = None  # forecast.json's loo block, and its file
    forecast_note: str | None = None  # why there is no forecast
    # The decoding defence every unit's answers were generated under (its record, as in the identity and
    # each unit's results.json); None: plain generation.
    defence: Mapping[str, Any] | None = None
    # Conversation data: RDS flag rates by turn position pooled over the study's roles (each role's own
    # are its row's `by_turn`); None for single-turn data or before a fine-tune has finished
    by_turn: Mapping[str, TurnRate] | None = None
    summary_version: int = SUMMARY_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- traits ----


def trait_scores(
    profiles: Mapping[str, RoleProfile], roles: Sequence[str]
) -> tuple[dict[str, dict[str, float]], list[str]]:
    """Lexicon trait scores per role_key of `roles` from each role's profile (its description, else its
    role prompt), and the roles that get none: no profile, or no words in it once RoleBench's
    boilerplate is cut (a score of 0 would claim a benign character without evidence)."""
    scores: dict[str, dict[str, float]] = {}
    missing: list[str] = []
    for role in roles:
        profile = profiles.get(role_key(role))
        text = "" if profile is None else (profile.description or profile.role_prompt or "")
        try:
            scores[role_key(role)] = score_traits(text, where=f"role {role!r}")
        except DataError:
            missing.append(role)
    return scores, missing


def correlations(rows: Sequence[RoleRow], methods: Sequence[str], names: Sequence[str]) -> list[Correlation]:
    found = []
    for method in methods:
        for name in names:
            pairs = [
                (r.traits[name], drop)
                for r in rows
                if r.traits is not None and name in r.traits and (drop := r.drop.get(method)) is not None
            ]
            c = spearman([p[0] for p in pairs], [p[1] for p in pairs], bootstrap=BOOTSTRAP, seed=0)
            found.append(Correlation(method, name, c.rho, c.ci95, c.n, c.bootstrap, c.seed))
    return found


# ---- the forecast fitted on the study ----


def margins_by_role(selection_rows: Sequence[Mapping[str, Any]]) -> dict[str, list[float]]:
    """Per role_key, the RDS margins of its training examples (rows without a margin left out)."""
    margins: dict[str, list[float]] = {}
    for row in selection_rows:
        if row.get("margin") is not None:
            margins.setdefault(role_key(str(row["role"])), []).append(float(row["margin"]))
    return margins


def forecast_rows(
    rows: Sequence[RoleRow], margins: Mapping[str, Sequence[float]], method: str
) -> list[ForecastRow]:
    """The forecast's rows of the roles with an observed `method` drop, RDS margins and traits."""
    found = []
    for r in rows:
        drop = r.drop.get(method)
        if drop is None or r.traits is None or not margins.get(role_key(r.role)):
            continue
        found.append(
            ForecastRow.from_margins(
                r.role, margins[role_key(r.role)], r.traits, drop, r.base_refusal, LEXICON_SOURCE
            )
        )
    return found


def fit_study_forecast(
    plan: StudyPlan, rows: Sequence[RoleRow], margins: Mapping[str, Sequence[float]], identity_hash: str
) -> tuple[Forecast | None, str | None]:
    """The forecast of the primary method's drop fitted on the study (written to forecast.json with its
    provenance), or None and why."""
    method = plan.config.assess.methods[0]
    found = forecast_rows(rows, margins, method)
    if len(found) < MIN_ROWS:
        return None, (
            f"No forecast: {len(found)} roles have an observed {method} drop, RDS margins and trait scores; "
            f"its leave-one-role-out check needs at least {MIN_ROWS}"
        )
    fitted = Forecast.fit(found, study=str(plan.study.resolve()))
    fitted = dataclasses.replace(
        fitted,
        extra={
            "identity_hash": identity_hash,
            "model": plan.config.model.name,
            "data": plan.config.data.path,
            "method": method,
            "target": f"drop of {method}: base refusal - refusal after the {method} fine-tune (points)",
        },
    )
    fitted.save(plan.study / FORECAST_FILE)
    return fitted, None


# ---- the outputs ----


def write_outputs(plan: StudyPlan) -> Path:
    """results.csv, summary.json, the plots, forecast.json (enough roles) and report.md from whatever
    units have finished."""
    from safetune.assess.data import load_study_data
    from safetune.assess.layout import SELECTION_DIR, read_unit

    a = plan.config.assess
    units = [u for u in (read_unit(unit) for unit in plan.units) if u is not None]
    selection_rows = _read_jsonl(plan.study / SELECTION_DIR / "selection.jsonl")
    data = load_study_data(plan.config)
    scores, no_traits = trait_scores(data.profiles, plan.roles)
    rows = aggregate(
        plan.roles, a.methods, units, selection_by_role(selection_rows, a.margin_quantiles), scores
    )
    primary = a.methods[0]
    rows = sort_by_drop(rows, primary)
    names = sorted({t for r in rows if r.traits for t in r.traits})
    stored = json.loads((plan.study / "study.json").read_text(encoding="utf-8"))
    fitted, note = fit_study_forecast(plan, rows, margins_by_role(selection_rows), stored["identity_hash"])
    judge_primary, judge_secondary = judges_of(units)
    judge_primary = judge_primary or plan.config.judge.names[0]  # one judge: no agreement block names it
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
        no_traits=tuple(no_traits),
        judge_primary=judge_primary,
        judge_secondary=judge_secondary,
        forecast=None if fitted is None else {**fitted.loo.to_dict(), "file": FORECAST_FILE},
        forecast_note=note,
        defence=plan.defence,
        by_turn=pooled_turn_rates([r.by_turn for r in rows if r.by_turn]) or None,
    )
    write_csv(plan.study / "results.csv", rows, a.methods, names, plan.defence)
    write_json(plan.study / "summary.json", summary.to_dict())
    write_plots(plan.study, summary, fitted)
    flagged = top_flagged(selection_rows, a.top_flagged)
    report = plan.study / "report.md"
    with atomic_open(report) as handle:
        handle.write(render_markdown(summary, flagged, data.texts))
    return report


def write_plots(study: Path, summary: StudySummary, fitted: Forecast | None) -> None:
    """The per-role drop chart, the primary method's drop against each trait, and the forecast's LOO
    predictions against the observed drops (assess/plots.py)."""
    rows = summary.roles
    roles = [r.role for r in rows]
    plots.drop_bars(
        study / CHART,
        roles,
        {m: [r.drop.get(m) for r in rows] for m in summary.methods},
        title=f"Refusal drop per role (sorted by the {summary.primary_method} drop)",
    )
    method = summary.primary_method
    for c in summary.correlations:
        if c.method != method:
            continue
        points = [
            (r.role, r.traits[c.trait], drop)
            for r in rows
            if r.traits is not None and c.trait in r.traits and (drop := r.drop.get(method)) is not None
        ]
        if points:
            plots.drop_vs_trait(
                study / scatter_path(c.trait),
                [p[0] for p in points],
                [p[1] for p in points],
                [p[2] for p in points],
                c.trait,
                c.spearman(),
                method,
            )
    if fitted is not None:
        plots.forecast_vs_observed(
            study / FORECAST_PLOT, fitted.loo, title=f"Risk forecast of the {method} drop, leave one role out"
        )


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_csv(
    path: Path,
    rows: Sequence[RoleRow],
    methods: Sequence[str],
    traits: Sequence[str],
    defence: Mapping[str, Any] | None = None,
) -> None:
    """One row per role; the columns before the trait scores say which decoding defence the study ran
    under (the same in every row, so that a row read apart, or rows of several studies put together,
    still say it)."""
    columns_of_defence = defence_columns(defence)
    flat = []
    for r in rows:
        measured = r.flat(methods, traits)
        # before the trait scores, which stay the last columns
        cut = next((i for i, k in enumerate(measured) if k.startswith("trait_")), len(measured))
        items = list(measured.items())
        flat.append({**dict(items[:cut]), **columns_of_defence, **dict(items[cut:])})
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


def defence_columns(defence: Mapping[str, Any] | None) -> dict[str, Any]:
    """results.csv's defence columns: name ("none" without one), purpose, alpha and the settings that
    differ from the defence's defaults."""
    if defence is None:
        return {"defence": "none", "defence_purpose": None, "defence_alpha": None, "defence_settings": None}
    from safetune.decoding.described import describe

    told = describe(defence)
    return {
        "defence": told.name,
        "defence_purpose": told.purpose or None,
        "defence_alpha": told.alpha,
        "defence_settings": told.settings_text() or None,
    }


def defence_lines(defence: Mapping[str, Any] | None) -> list[str]:
    """report.md's paragraph on the decoding defence (none without one)."""
    if defence is None:
        return []
    from safetune.decoding.described import describe

    told = describe(defence)
    lines = [
        f"**Decoding defence: {told.text()}.** Every evaluation, the base model's and each fine-tune's, "
        "generated its answers under it: the refusal rates, drops and role-play scores are those of the "
        "defended models (the drop: what a fine-tune costs when both are decoded this way).",
    ]
    if told.over_refusal_mitigation:
        lines[0] += (
            f" {told.name} is an **over-refusal mitigation**: it moves away from a safety-prompted "
            "distribution, so expect fewer refusals, of harmful prompts too; it is no safety defence."
        )
    return [*lines, ""]


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
        *defence_lines(summary.defence),
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
        "the unsafe prompt than under the role's own (above 0: flagged)."
        + (
            " With conversations, an example is one assistant turn, its conversation so far as context."
            if summary.by_turn
            else ""
        ),
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
    lines += turn_section(summary)
    lines += judge_section(summary)
    lines += trait_section(summary)
    lines += forecast_section(summary)
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
            text, reply = texts.get(row_key(row), ("?", "?"))
            lines.append(f"| {float(row['margin']):.3f} | {_excerpt(text)} | {_excerpt(reply)} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def turn_section(summary: StudySummary) -> list[str]:
    """Conversation data: per role, the share of assistant turns RDS flagged at each turn position (as
    each role's fine-tunes read them from the shared selection), and all roles pooled; nothing for
    single-turn data."""
    rows = [r for r in summary.roles if r.by_turn]
    if not rows or not summary.by_turn:
        return []
    buckets = sorted({b for r in rows for b in (r.by_turn or {})} | set(summary.by_turn), key=turn_order)

    def cell(rate: TurnRate | None) -> str:
        return "–" if rate is None else f"{100 * rate.flag_rate:.1f} ({rate.flagged}/{rate.count})"

    lines = [
        "",
        "## RDS flag rates by turn position",
        "",
        "Per role, the percentage of assistant turns at each position of its conversations that RDS "
        "flagged (flagged/scored turns): where in a conversation the risky replies sit. Turn 1 is the "
        "first assistant message (a greeting, where a conversation opens with one).",
        "",
        "| role | " + " | ".join(f"turn {b}" for b in buckets) + " |",
        "|---|" + "---|" * len(buckets),
    ]
    for r in [*rows, None]:
        rates = summary.by_turn if r is None else r.by_turn or {}
        name = "all roles" if r is None else r.role
        lines.append(f"| {name} | " + " | ".join(cell(rates.get(b)) for b in buckets) + " |")
    return lines


def judge_section(summary: StudySummary) -> list[str]:
    """Per role and method: the primary judge's drop, the first secondary judge's agreement with it
    (percent, Cohen's kappa) and the incoherent answers, so that a role whose "safety" is broken text is
    not read as safe."""
    methods = summary.methods
    lines = ["", "## Judges", ""]
    if summary.judge_secondary is None:
        lines += [
            f"One judge ({summary.judge_primary}): no agreement to show; `--judge a,b` "
            "judges every unit with both.",
            "",
        ]
    else:
        lines += [
            f"The drop is the primary judge's ({summary.judge_primary}); agreement is "
            f"{summary.judge_secondary}'s with it on the harmful prompts both decided (percent, and "
            "Cohen's kappa).",
            "",
        ]
    lines += [
        "| role | run | drop | agreement % | kappa | incoherent |",
        "|---|---|---|---|---|---|",
    ]
    for r in summary.roles:
        for m in (BASE, *methods):
            drop = "" if m == BASE else _num(r.drop.get(m))
            lines.append(
                f"| {r.role} | {m} | {drop} | {_num(r.agreement.get(m))} | {_num(r.kappa.get(m), 2)} | "
                f"{_count(r.incoherent.get(m))} |"
            )
    return lines


def trait_section(summary: StudySummary) -> list[str]:
    lines = ["", "## Drop and traits", ""]
    if summary.no_traits:
        lines += [
            f"{len(summary.no_traits)} of {len(summary.roles)} roles have no trait scores (no profile, or "
            f"no words in it): {', '.join(summary.no_traits)}.",
            "",
        ]
    if not summary.traits:
        return [*lines, "No trait scores: no correlations.", ""]
    lines += [
        f"Trait scores: {summary.trait_source} (matches per 100 words of the profile). Spearman's rho of "
        f"each method's drop with each trait, with a {BOOTSTRAP}-resample bootstrap 95% interval.",
        "",
    ]
    for trait in summary.traits:
        lines += [f"![drop against {trait}]({scatter_path(trait)})"]
    lines += ["", "| method | trait | Spearman rho | 95% CI | roles |", "|---|---|---|---|---|"]
    for c in summary.correlations:
        ci = "–" if c.ci95 is None else f"[{c.ci95[0]:.2f}, {c.ci95[1]:.2f}]"
        lines.append(f"| {c.method} | {c.trait} | {_num(c.rho, 2)} | {ci} | {c.n} |")
    return lines


def forecast_section(summary: StudySummary) -> list[str]:
    method = summary.primary_method
    lines = ["", "## Risk forecast", ""]
    f = summary.forecast
    if f is None:
        return [*lines, f"{summary.forecast_note}.", ""]
    p = f["p_value"]
    verdict = (
        "**weak**: it does not beat predicting the mean by 10% with a permutation p <= 0.05; read it as "
        '"this study cannot tell roles apart"'
        if f["weak"]
        else "not weak"
    )
    lines += [
        f"A ridge forecast of the {method} drop from the base model's RDS statistics and the traits, fitted "
        f"on this study's {len(f['per_role'])} roles and saved as `{f['file']}` (for `safetune assess "
        f"--forecast {f['file']}`). Leave-one-role-out mean absolute error {f['mae']:.1f} points, against "
        f"{f['baseline_mae']:.1f} predicting the other roles' mean drop; permutation p = "
        f"{'–' if p is None else f'{p:.3f}'} ({f['permutations']} shuffles): {verdict}.",
        "",
        f"![forecast against observed]({FORECAST_PLOT})",
        "",
        "| role | observed | forecast (role held out) | mean of the others |",
        "|---|---|---|---|",
    ]
    for e in f["per_role"]:
        lines.append(f"| {e['role']} | {e['observed']:.1f} | {e['predicted']:.1f} | {e['baseline']:.1f} |")
    return lines
