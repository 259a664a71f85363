"""`safetune assess --forecast FORECAST.json`: each role's refusal drop predicted from a saved forecast,
at the cost of the scoring pass only (the shared RDS selection; no fine-tune, no evaluation).

    plan       everything checked before the first file: the forecast file (every field), that its
               trait source is the one this study scores with (the lexicon) when it uses traits, that
               the selection variant computes RDS margins, the model, the data and its roles, and the
               folder's identity against an earlier forecast run in it
    selection  one `safetune select` over every role of the data into OUT/selection/ (RDS-cached; the
               same pass a study runs first), reused when the folder's identity matches
    predict    predictions.csv (one row per role: its RDS statistics, traits and the forecast drop) and
               predictions.md (which study the coefficients came from, its leave-one-role-out error)

A role without RDS margins, or without trait scores when the forecast uses traits, gets no prediction
(named in the report), not an error: the other roles still get theirs.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetune import __version__
from safetune.assess.forecast import MARGIN_FEATURES, Forecast
from safetune.assess.forecast import RoleRow as ForecastRow
from safetune.assess.report import margins_by_role, trait_scores
from safetune.assess.traits import LEXICON_SOURCE, TRAITS
from safetune.config import RunConfig
from safetune.data.sources import role_key
from safetune.errors import ConfigError
from safetune.storage import atomic_open, hash_json, output_lock, write_json

RUN_FILE = "forecast_run.json"
CSV_FILE = "predictions.csv"
REPORT_FILE = "predictions.md"
SELECTION_DIR = "selection"


@dataclass(frozen=True)
class Prediction:
    """One role: its forecast drop (None: no prediction, `note` says why) and the features it came from."""

    role: str
    predicted: float | None
    row: ForecastRow | None
    note: str | None = None


@dataclass(frozen=True)
class ForecastRun:
    out: Path
    predictions: tuple[Prediction, ...]
    report: Path


@dataclass(frozen=True)
class _Plan:
    config: RunConfig
    out: Path
    forecast: Forecast
    forecast_path: Path
    roles: tuple[str, ...]
    identity: dict[str, Any]


def _identity(config: RunConfig, fingerprint: str, forecast: Mapping[str, Any]) -> dict[str, Any]:
    """What the folder's selection and predictions are a function of (roles are not: they may grow)."""
    sel = {k: v for k, v in config.to_dict()["selection"].items() if k != "batch_size"}
    return {
        "model.name": config.model.name,
        "model.fingerprint": fingerprint,
        "data.path": config.data.path,
        "data.profiles": config.data.profiles,
        "chat": config.to_dict()["chat"],
        "selection": sel,
        "forecast": hash_json(forecast),
    }


def plan_forecast(config: RunConfig, forecast_path: Path, out: Path) -> _Plan:
    """Check everything; ConfigError / DataError naming what is wrong, before any file is written."""
    from safetune.data.sources import load_data
    from safetune.models.loading import check_model_folder, model_fingerprint
    from safetune.selection_variants import VARIANTS
    from safetune.storage import cache_root

    forecast = Forecast.load(forecast_path)  # DataError naming the file and the field
    source = forecast.provenance.trait_source
    used = [f for f in forecast.features if f in TRAITS]
    if used and source != LEXICON_SOURCE:
        raise ConfigError(
            f"{forecast_path}: fitted on traits from {source}; this safetune scores {LEXICON_SOURCE}, "
            "whose scale differs: refit the forecast on a study scored like this one"
        )
    unknown = [f for f in forecast.features if f not in MARGIN_FEATURES and f not in TRAITS]
    if unknown:  # Forecast.load refuses these already; kept so that a new feature cannot slip through
        raise ConfigError(f"{forecast_path}: feature {unknown[0]!r} is not one this safetune computes")
    if not config.model.name:
        raise ConfigError("--model (model.name) is required: the base model whose RDS margins are scored")
    if not config.data.path:
        raise ConfigError("--data (data.path) is required: the role data to forecast")
    if config.data.role is not None:
        raise ConfigError("data.role: pick the roles with --roles (assess.roles), not data.role")
    from safetune.data.conversation_data import is_conversation_data

    if is_conversation_data(config):
        # A forecast is fitted on per-example margins and profile traits; a conversation study has no
        # traits (its characters have no profiles), so no forecast was fitted to apply to them.
        raise ConfigError(
            f"--forecast reads single-turn role data; {config.data.path} holds conversations (run the study)"
        )
    variant = config.selection.variant
    if variant not in VARIANTS or not VARIANTS[variant].needs_scores:
        raise ConfigError(
            f"selection.variant {variant} computes no RDS margins, which the forecast reads (use rds)"
        )
    check_model_folder(config.model.name)
    examples, _ = load_data(config)
    data_roles: dict[str, str] = {}
    for ex in examples:
        data_roles.setdefault(role_key(ex.role), ex.role)
    wanted = config.assess.roles if config.assess.roles is not None else list(data_roles.values())
    roles: dict[str, str] = {}
    for role in wanted:
        if role_key(role) not in data_roles:
            known = ", ".join(sorted(data_roles.values())[:10])
            raise ConfigError(f"assess.roles: no role {role!r} in {config.data.path} (roles: {known})")
        roles.setdefault(role_key(role), data_roles[role_key(role)])
    fingerprint = model_fingerprint(config.model.name, config.model.revision, cache_root(config.cache_dir))
    identity = _identity(config, fingerprint, forecast.to_json())
    if (out / "study.json").exists():
        raise ConfigError(f"{out} holds a study: write the forecast's predictions into another --out")
    stored = out / RUN_FILE
    if stored.exists():
        try:
            old = json.loads(stored.read_text(encoding="utf-8"))["identity"]
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
            raise ConfigError(f"{stored}: not a file written by safetune assess --forecast") from None
        differ = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
        if differ:
            raise ConfigError(
                f"{out} holds another forecast run (differs in {', '.join(differ)}); use another --out"
            )
    elif (out / SELECTION_DIR).exists():
        raise ConfigError(f"{out} holds a selection but no {RUN_FILE}: use another --out")
    return _Plan(config, out, forecast, forecast_path, tuple(roles.values()), identity)


def predict_roles(
    forecast: Forecast,
    roles: Sequence[str],
    margins: Mapping[str, Sequence[float]],
    traits: Mapping[str, Mapping[str, float]],
) -> list[Prediction]:
    """Each role's forecast drop (no base refusal is known before the evaluation: clipped to -100..100),
    or None with the reason."""
    needs_traits = any(f in TRAITS for f in forecast.features)
    found = []
    for role in roles:
        key = role_key(role)
        if not margins.get(key):
            found.append(Prediction(role, None, None, "no RDS margins"))
            continue
        if needs_traits and key not in traits:
            found.append(Prediction(role, None, None, "no trait scores (no profile, or no words in it)"))
            continue
        row = ForecastRow.from_margins(role, margins[key], traits.get(key, {}), trait_source=LEXICON_SOURCE)
        found.append(Prediction(role, forecast.predict(row), row))
    # largest forecast drop first; roles without a prediction last, by name
    return sorted(found, key=lambda p: (p.predicted is None, -(p.predicted or 0.0), p.role))


def run_forecast(config: RunConfig, forecast_path: Path, out: Path) -> ForecastRun:
    from safetune.data.sources import load_data
    from safetune.selection import run_selection

    with output_lock(out):
        plan = plan_forecast(config, forecast_path, out)
        write_json(
            out / RUN_FILE,
            {
                "safetune_version": __version__,
                "forecast": str(forecast_path),
                "identity": plan.identity,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        )
        folder = out / SELECTION_DIR
        stats_path = folder / "selection_stats.json"
        covered = (
            json.loads(stats_path.read_text(encoding="utf-8")).get("roles", {}) if stats_path.exists() else {}
        )
        if not all(any(role_key(r) == role_key(role) for r in covered) for role in plan.roles):
            c = copy.deepcopy(config)
            c.data.role = None
            run_selection(c, folder)
        rows = [
            json.loads(line)
            for line in (folder / "selection.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
        _, profiles = load_data(config)
        scores, _ = trait_scores(profiles, plan.roles)
        predictions = predict_roles(plan.forecast, plan.roles, margins_by_role(rows), scores)
        write_predictions_csv(out / CSV_FILE, predictions)
        report = out / REPORT_FILE
        with atomic_open(report) as handle:
            handle.write(
                render_predictions(plan.forecast, str(forecast_path), config.model.name, predictions)
            )
    return ForecastRun(out, tuple(predictions), report)


def write_predictions_csv(path: Path, predictions: Sequence[Prediction]) -> None:
    columns = ["role", "predicted_drop", *MARGIN_FEATURES, *(f"trait_{t}" for t in TRAITS), "note"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for p in predictions:
        cells: dict[str, Any] = {"role": p.role, "note": p.note or ""}
        cells["predicted_drop"] = "" if p.predicted is None else f"{p.predicted:.4g}"
        if p.row is not None:
            cells.update({f: f"{getattr(p.row, f):.4g}" for f in MARGIN_FEATURES})
            cells.update({f"trait_{t}": f"{v:.4g}" for t, v in p.row.traits.items()})
        writer.writerow(cells)
    with atomic_open(path) as handle:
        handle.write(buffer.getvalue())


def render_predictions(forecast: Forecast, source: str, model: str, predictions: Sequence[Prediction]) -> str:
    prov, loo = forecast.provenance, forecast.loo
    fitted_model = forecast.extra.get("model")
    method = forecast.extra.get("method")
    tune = f"{method} fine-tune" if method else "fine-tune"
    p = "–" if loo.p_value is None else f"{loo.p_value:.3f}"
    lines = [
        "# Risk forecast",
        "",
        f"The refusal drop each role's {tune} of `{model}` is forecast to cost (points of refusal "
        "rate; above 0: safety lost), from the base model's RDS margins"
        + (" and the roles' trait scores" if any(f in TRAITS for f in forecast.features) else "")
        + ". No role was fine-tuned or evaluated.",
        "",
        f"Coefficients: `{source}`, fitted {prov.fitted} by safetune {prov.safetune_version} on the study "
        f"`{prov.study}` ({prov.n_roles} roles"
        + (f", model `{fitted_model}`" if fitted_model else "")
        + f"), features {', '.join(forecast.features)}, trait source {prov.trait_source}.",
        "",
        f"Its leave-one-role-out error on that study: mean absolute error {loo.mae:.1f} points, against "
        f"{loo.baseline_mae:.1f} predicting the mean drop; permutation p = {p}"
        + (
            ". **Weak**: it could not tell that study's roles apart; expect about the study's mean drop."
            if loo.weak
            else "."
        ),
        "",
    ]
    if fitted_model and fitted_model != model:
        lines += [
            f"Fitted on `{fitted_model}`, applied to `{model}`: margins of another model may lie on "
            "another scale, and its error above does not carry over.",
            "",
        ]
    lines += ["| role | forecast drop | flag % | margin mean | margin p90 |", "|---|---|---|---|---|"]
    for pr in predictions:
        if pr.row is None or pr.predicted is None:
            continue
        lines.append(
            f"| {pr.role} | {pr.predicted:.1f} | {100 * pr.row.flag_rate:.1f} | {pr.row.margin_mean:.3f} | "
            f"{pr.row.margin_p90:.3f} |"
        )
    missing = [pr for pr in predictions if pr.predicted is None]
    if missing:
        lines += ["", f"No forecast for {len(missing)} roles:", ""]
        lines += [f"- {pr.role}: {pr.note}" for pr in missing]
    return "\n".join(lines).rstrip() + "\n"
