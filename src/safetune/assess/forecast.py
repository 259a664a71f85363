"""The risk forecast: a role's refusal drop predicted before training, from what one scoring pass gives.

A `RoleRow` is one role of a study: its RDS statistics on the base model (flag rate and the margin
distribution, margin = l_unsafe - l_role of each training example), its trait scores, and, in a finished
study, the observed drop (base refusal rate - refusal rate after fine-tuning, in points of the refusal
rate's 0..100 scale). `Forecast.fit` fits a ridge regression of the drop on standardised features:

    z_j = (x_j - mean_j) / scale_j          (mean and population std over the study's roles; a constant
                                             feature gets scale 1, so it is 0 everywhere and adds nothing)
    drop = intercept + sum_j coef_j z_j,    coef = (Z'Z + lambda I)^-1 Z'(y - mean(y)),  intercept = mean(y)

in closed form (numpy, float64). The intercept is not penalised. lambda is the value of `LAMBDAS` with the
largest of `LAMBDAS` whose leave-one-out mean absolute error on the study is within one standard error of
the smallest (the one-standard-error rule), from the exact LOO residuals of a linear smoother,
e_i = (y_i - yhat_i) / (1 - H_ii) with H = 11'/n + Z (Z'Z + lambda I)^-1 Z'. The grid reaches lambda = 1e4 (about 100-1000 times the roles of a study), where every
coefficient is near 0 and the forecast is the study's mean drop: a study whose features carry nothing
gets that, not a fit to noise.

`leave_one_out` is the honest error: for each role, the whole procedure (standardisation, the choice of
lambda, the fit) runs on the other roles and predicts the held-out one. It is compared with predicting
the other roles' mean drop; the forecast is flagged `weak` unless its LOO mean absolute error is below
`WEAK_RATIO` times that baseline's. Predictions are clipped to the valid range: a drop lies in
[base - 100, base] when the role's base refusal rate is known, else in [-100, 100].

A fitted forecast is saved as JSON with the study it came from (study id, roles, features, coefficients,
lambda, the LOO errors, fitted date, safetune version, trait source); `from_json` checks every field.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from safetune import __version__
from safetune.assess.traits import LEXICON_SOURCE, TRAITS
from safetune.errors import ConfigError, DataError
from safetune.storage import write_json

FORMAT = "safetune-forecast"
FORMAT_VERSION = 1
# The RDS statistics a row carries (names of RoleRow fields); with the trait names they are the features.
MARGIN_FEATURES: tuple[str, ...] = ("flag_rate", "margin_mean", "margin_median", "margin_std", "margin_p90")
# The default features: few, so that 8 roles (the organism) still leave the fit something to check.
FEATURES: tuple[str, ...] = ("flag_rate", "margin_mean", "margin_p90", *TRAITS)
LAMBDAS: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4)
WEAK_RATIO = 0.9  # a forecast must beat predicting the mean by 10% of its LOO error not to be weak
WEAK_P = 0.05  # ... and beat shuffled drops: its permutation p-value at most this
PERMUTATIONS = 200  # about 1 s at 8 roles and 12 s at 95 on one core (measured)
MAX_PERMUTATIONS = 10_000
MIN_ROWS = 4  # the LOO of a fit needs at least 3 roles in every fold's own LOO
DROP_BOUND = 100.0  # refusal rates are percentages: a drop lies in [-100, 100]


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class RoleRow:
    """One role of a study. flag_rate in 0..1; margins in nats (log-likelihood differences); drop and
    base_refusal in points of a 0..100 refusal rate (drop = base - after; None until measured)."""

    role: str
    flag_rate: float
    margin_mean: float
    margin_median: float
    margin_std: float
    margin_p90: float
    traits: Mapping[str, float]
    drop: float | None = None
    base_refusal: float | None = None
    trait_source: str = LEXICON_SOURCE

    def __post_init__(self) -> None:
        where = f"role {self.role!r}"
        if not isinstance(self.role, str) or not self.role:
            raise DataError("role row", None, "role", "must be a non-empty string")
        for name in MARGIN_FEATURES:
            if not _finite(getattr(self, name)):
                raise DataError(where, None, name, f"must be a finite number, got {getattr(self, name)!r}")
        if not 0.0 <= self.flag_rate <= 1.0:
            raise DataError(where, None, "flag_rate", f"must be in 0..1, got {self.flag_rate}")
        if self.margin_std < 0:
            raise DataError(where, None, "margin_std", f"must be >= 0, got {self.margin_std}")
        for name, value in self.traits.items():
            if not _finite(value):
                raise DataError(where, None, f"traits.{name}", f"must be a finite number, got {value!r}")
        if self.drop is not None and not (_finite(self.drop) and abs(self.drop) <= DROP_BOUND):
            raise DataError(where, None, "drop", f"must be a number in -100..100, got {self.drop!r}")
        if self.base_refusal is not None and not (
            _finite(self.base_refusal) and 0 <= self.base_refusal <= 100
        ):
            raise DataError(
                where, None, "base_refusal", f"must be a number in 0..100, got {self.base_refusal!r}"
            )
        if self.drop is not None and self.base_refusal is not None and self.drop > self.base_refusal + 1e-9:
            raise DataError(
                where, None, "drop", f"{self.drop} is more than the base refusal rate {self.base_refusal}"
            )

    @classmethod
    def from_margins(
        cls,
        role: str,
        margins: Sequence[float],
        traits: Mapping[str, float],
        drop: float | None = None,
        base_refusal: float | None = None,
        trait_source: str = LEXICON_SOURCE,
    ) -> RoleRow:
        """A row from a role's RDS margins (one per training example; flagged = margin > 0, as RDS)."""
        values = np.asarray(margins, dtype=float)
        if values.size == 0:
            raise DataError(f"role {role!r}", None, "margins", "no training examples scored")
        if not np.all(np.isfinite(values)):
            raise DataError(f"role {role!r}", None, "margins", "a margin is not finite")
        return cls(
            role=role,
            flag_rate=float(np.mean(values > 0)),
            margin_mean=float(values.mean()),
            margin_median=float(np.median(values)),
            margin_std=float(values.std()),
            margin_p90=float(np.percentile(values, 90)),
            traits=dict(traits),
            drop=drop,
            base_refusal=base_refusal,
            trait_source=trait_source,
        )

    def feature(self, name: str) -> float:
        if name in MARGIN_FEATURES:
            return float(getattr(self, name))
        if name not in self.traits:
            raise DataError(
                f"role {self.role!r}", None, f"traits.{name}", "missing (a feature of the forecast)"
            )
        return float(self.traits[name])

    def bounds(self) -> tuple[float, float]:
        """The valid range of this role's drop."""
        if self.base_refusal is None:
            return -DROP_BOUND, DROP_BOUND
        return self.base_refusal - 100.0, self.base_refusal

    def to_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            **{name: getattr(self, name) for name in MARGIN_FEATURES},
            "traits": dict(self.traits),
            "trait_source": self.trait_source,
            "drop": self.drop,
            "base_refusal": self.base_refusal,
        }


@dataclass(frozen=True)
class LooError:
    role: str
    observed: float
    predicted: float
    baseline: float  # the mean of the other roles' drops (clipped like the prediction)

    @property
    def error(self) -> float:
        return abs(self.predicted - self.observed)


@dataclass(frozen=True)
class LooResult:
    """Leave-one-role-out errors: `mae` of the forecast, `baseline_mae` of predicting the mean of the
    other roles' drops, `p_value` of the permutation test (None when not run), and
    `weak` = mae >= WEAK_RATIO * baseline_mae, or p_value > WEAK_P."""

    mae: float
    baseline_mae: float
    weak: bool
    per_role: tuple[LooError, ...]
    p_value: float | None = None
    permutations: int = 0

    @property
    def n(self) -> int:
        return len(self.per_role)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mae": self.mae,
            "baseline_mae": self.baseline_mae,
            "weak": self.weak,
            "weak_ratio": WEAK_RATIO,
            "p_value": self.p_value,
            "permutations": self.permutations,
            "weak_p": WEAK_P,
            "per_role": [
                {"role": e.role, "observed": e.observed, "predicted": e.predicted, "baseline": e.baseline}
                for e in self.per_role
            ],
        }


# ---- the ridge regression (pure numpy) ----


@dataclass(frozen=True)
class _Fit:
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    # A constant feature (or one constant up to rounding) standardises to 0, not to noise / tiny scale.
    scale = np.where(scale > 1e-12 * np.maximum(1.0, np.abs(mean)), scale, 1.0)
    return (x - mean) / scale, mean, scale


def ridge(x: np.ndarray, y: np.ndarray, lam: float) -> _Fit:
    """Ridge on standardised features with an unpenalised intercept (see the module docstring)."""
    z, mean, scale = _standardise(x)
    ybar = float(y.mean())
    gram = z.T @ z + lam * np.eye(z.shape[1])
    coef = np.linalg.solve(gram, z.T @ (y - ybar))
    return _Fit(mean, scale, coef, ybar)


def loo_residual_table(x: np.ndarray, y: np.ndarray, lambdas: Sequence[float]) -> np.ndarray:
    """Exact leave-one-out residuals of `ridge` at fixed standardisation, one row per lambda:
    (y - yhat) / (1 - diag H). One SVD of Z = U S V' serves every lambda:
    H = 11'/n + U diag(s^2 / (s^2 + lambda)) U'."""
    z, _, _ = _standardise(x)
    n = z.shape[0]
    u, sv, _ = np.linalg.svd(z, full_matrices=False)
    ybar = y.mean()
    uy = u.T @ (y - ybar)
    shrink = sv**2 / (sv**2 + np.asarray(lambdas, dtype=float)[:, None])  # (lambdas, k)
    fitted = ybar + (shrink * uy) @ u.T
    leverage = 1.0 - 1.0 / n - shrink @ (u**2).T
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(leverage > 1e-12, (y - fitted) / leverage, np.inf)


def loo_residuals(x: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    """`loo_residual_table` at one lambda."""
    return loo_residual_table(x, y, [lam])[0]


def choose_lambda(x: np.ndarray, y: np.ndarray, lambdas: Sequence[float]) -> float:
    """The largest lambda of `lambdas` whose LOO mean absolute error is within one standard error of
    the smallest (the one-standard-error rule: on 8-20 roles the minimum itself is noisy, and the
    simpler model it cannot tell apart is the one to keep)."""
    ordered = sorted(lambdas)
    table = np.abs(loo_residual_table(x, y, ordered))
    errors = table.mean(axis=1)
    best = int(np.argmin(errors))
    spread = float(table[best].std(ddof=1) / math.sqrt(table.shape[1])) if np.isfinite(errors[best]) else 0.0
    within = np.flatnonzero(errors <= errors[best] + spread)
    return float(ordered[int(within.max())])


def _predict(fit: _Fit, x: np.ndarray) -> np.ndarray:
    return fit.intercept + ((x - fit.mean) / fit.scale) @ fit.coef


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"forecast {name} must be an integer >= {low} and <= {high}, got {value!r}")


def _check_lambdas(lambdas: Sequence[float]) -> tuple[float, ...]:
    values = tuple(lambdas)
    if not values:
        raise ConfigError("forecast lambdas: give at least one value")
    for lam in values:
        if not _finite(lam) or not 0 < lam <= 1e12:
            raise ConfigError(f"forecast lambdas must be finite numbers > 0 and <= 1e12, got {lam!r}")
    return values


def _check_rows(rows: Sequence[RoleRow], features: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The design matrix and drops of a fitting set; DataError naming the role and field at fault."""
    if not features:
        raise ConfigError("forecast features: give at least one")
    unknown = [f for f in features if f not in MARGIN_FEATURES and f not in TRAITS]
    if unknown:
        raise ConfigError(
            f"unknown forecast feature {unknown[0]!r} (known: {', '.join((*MARGIN_FEATURES, *TRAITS))})"
        )
    if len(set(features)) != len(features):
        raise ConfigError("forecast features: a feature is named twice")
    if len(rows) < MIN_ROWS:
        raise ConfigError(
            f"a forecast needs at least {MIN_ROWS} roles with an observed drop, got {len(rows)}"
        )
    seen: set[str] = set()
    for row in rows:
        if row.role in seen:
            raise DataError(f"role {row.role!r}", None, "role", "appears twice in the study")
        seen.add(row.role)
        if row.drop is None:
            raise DataError(f"role {row.role!r}", None, "drop", "not measured (fit on finished roles only)")
    sources = {row.trait_source for row in rows}
    if any(f in TRAITS for f in features) and len(sources) > 1:
        raise ConfigError(f"forecast rows mix trait sources ({', '.join(sorted(sources))}); use one")
    x = np.array([[row.feature(f) for f in features] for row in rows], dtype=float)
    y = np.array([row.drop for row in rows], dtype=float)
    return x, y


def _clip(value: float, row: RoleRow) -> float:
    low, high = row.bounds()
    return float(min(high, max(low, value)))


def _loo_predictions(
    x: np.ndarray, y: np.ndarray, bounds: np.ndarray, lambdas: Sequence[float]
) -> np.ndarray:
    """Each row's drop predicted by the whole procedure run on the other rows, clipped to its bounds."""
    predictions = np.empty(len(y))
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        fit = ridge(x[keep], y[keep], choose_lambda(x[keep], y[keep], lambdas))
        predictions[i] = float(_predict(fit, x[i : i + 1])[0])
    return np.clip(predictions, bounds[:, 0], bounds[:, 1])


def leave_one_out(
    rows: Sequence[RoleRow],
    features: Sequence[str] = FEATURES,
    lambdas: Sequence[float] = LAMBDAS,
    permutations: int = PERMUTATIONS,
    seed: int = 0,
) -> LooResult:
    """Leave-one-role-out errors of the whole fitting procedure (lambda chosen inside each fold), the
    baseline of predicting the other roles' mean, and the permutation p-value of the error: the share
    of `permutations` shuffles of the drops over the roles (numpy PCG64, `seed`) whose LOO error is as
    small (with the observed one counted: (1 + k) / (1 + permutations)); None when permutations = 0."""
    lams = _check_lambdas(lambdas)
    _check_int("permutations", permutations, 0, MAX_PERMUTATIONS)
    _check_int("seed", seed, 0, 2**32 - 1)
    x, y = _check_rows(rows, features)
    bounds = np.array([row.bounds() for row in rows])
    predicted = _loo_predictions(x, y, bounds, lams)
    n = len(rows)
    baselines = np.clip((y.sum() - y) / (n - 1), bounds[:, 0], bounds[:, 1])
    errors = tuple(
        LooError(row.role, float(y[i]), float(predicted[i]), float(baselines[i]))
        for i, row in enumerate(rows)
    )
    mae = float(np.mean(np.abs(predicted - y)))
    baseline_mae = float(np.mean(np.abs(baselines - y)))
    p_value = None
    if permutations:
        rng = np.random.default_rng(seed)
        as_good = 0
        for _ in range(permutations):
            shuffled = rng.permutation(y)
            as_good += float(np.mean(np.abs(_loo_predictions(x, shuffled, bounds, lams) - shuffled))) <= mae
        p_value = (1 + as_good) / (1 + permutations)
    weak = mae >= WEAK_RATIO * baseline_mae or (p_value is not None and p_value > WEAK_P)
    return LooResult(mae, baseline_mae, weak, errors, p_value, permutations)


@dataclass(frozen=True)
class Provenance:
    """Which study a forecast was fitted on, and when, by which safetune."""

    study: str
    roles: tuple[str, ...]
    fitted: str  # ISO 8601, UTC
    safetune_version: str = __version__
    trait_source: str = LEXICON_SOURCE

    @property
    def n_roles(self) -> int:
        return len(self.roles)


@dataclass(frozen=True)
class Forecast:
    """A fitted forecast (build it with `Forecast.fit` or `Forecast.load`)."""

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coefficients: tuple[float, ...]  # per standardised feature
    intercept: float
    lam: float
    lambdas: tuple[float, ...]
    loo: LooResult
    provenance: Provenance
    extra: Mapping[str, Any] = field(default_factory=dict)  # free-form notes kept through JSON

    @classmethod
    def fit(
        cls,
        rows: Sequence[RoleRow],
        study: str,
        features: Sequence[str] = FEATURES,
        lambdas: Sequence[float] = LAMBDAS,
        fitted: dt.datetime | None = None,
        permutations: int = PERMUTATIONS,
        seed: int = 0,
    ) -> Forecast:
        """Fit on a finished study's rows (every one with its drop); `study` names the study (its id or
        folder) for the provenance. Also runs `leave_one_out` (with `permutations` and `seed`), so the
        forecast carries its own error."""
        lams = _check_lambdas(lambdas)
        feats = tuple(features)
        x, y = _check_rows(rows, feats)
        loo = leave_one_out(rows, feats, lams, permutations, seed)
        lam = choose_lambda(x, y, lams)
        model = ridge(x, y, lam)
        when = (fitted or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).isoformat(timespec="seconds")
        return cls(
            features=feats,
            mean=tuple(float(v) for v in model.mean),
            scale=tuple(float(v) for v in model.scale),
            coefficients=tuple(float(v) for v in model.coef),
            intercept=model.intercept,
            lam=lam,
            lambdas=lams,
            loo=loo,
            provenance=Provenance(
                study, tuple(r.role for r in rows), when, __version__, rows[0].trait_source
            ),
        )

    def predict(self, row: RoleRow) -> float:
        """The forecast drop of a role (points of refusal rate), clipped to the role's valid range."""
        if any(f in TRAITS for f in self.features) and row.trait_source != self.provenance.trait_source:
            raise ConfigError(
                f"role {row.role!r} has traits from {row.trait_source}, the forecast was fitted on "
                f"{self.provenance.trait_source}: their scales differ"
            )
        x = np.array([row.feature(f) for f in self.features], dtype=float)
        z = (x - np.array(self.mean)) / np.array(self.scale)
        return _clip(self.intercept + float(z @ np.array(self.coefficients)), row)

    def raw_coefficients(self) -> dict[str, float]:
        """Drop points per unit of each feature as measured (coefficient / scale), for reading."""
        return {f: c / s for f, c, s in zip(self.features, self.coefficients, self.scale, strict=True)}

    def to_json(self) -> dict[str, Any]:
        p = self.provenance
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "provenance": {
                "study": p.study,
                "n_roles": p.n_roles,
                "roles": list(p.roles),
                "fitted": p.fitted,
                "safetune_version": p.safetune_version,
                "trait_source": p.trait_source,
            },
            "model": "ridge on standardised features, intercept unpenalised, lambda by LOO",
            "features": list(self.features),
            "mean": list(self.mean),
            "scale": list(self.scale),
            "coefficients": list(self.coefficients),
            "raw_coefficients": self.raw_coefficients(),  # derived; ignored when read
            "intercept": self.intercept,
            "lambda": self.lam,
            "lambdas": list(self.lambdas),
            "loo": self.loo.to_dict(),
            "extra": dict(self.extra),
        }

    @classmethod
    def from_json(cls, obj: Any, where: str = "forecast") -> Forecast:
        """A forecast from `to_json`'s object; DataError naming `where` and the field at fault."""
        return _from_json(obj, where)

    def save(self, path: str | Path) -> Path:
        write_json(path, self.to_json())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> Forecast:
        file = Path(path)
        try:
            obj = json.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(file, None, None, "no such file") from None
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(file, None, None, f"cannot read: {err}") from None
        except json.JSONDecodeError as err:
            raise DataError(file, err.lineno, None, f"not JSON: {err.msg}") from None
        return _from_json(obj, str(file))


# ---- reading a saved forecast: every field checked ----


def _get(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str, path: str) -> Any:
    if key not in obj:
        raise DataError(where, None, path, "missing")
    value = obj[key]
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise DataError(where, None, path, f"expected {getattr(kind, '__name__', kind)}, got {value!r}"[:200])
    return value


def _number(obj: Mapping[str, Any], key: str, where: str, path: str) -> float:
    value = _get(obj, key, (int, float), where, path)
    if not math.isfinite(value):
        raise DataError(where, None, path, f"must be finite, got {value}")
    return float(value)


def _numbers(obj: Mapping[str, Any], key: str, length: int, where: str) -> tuple[float, ...]:
    values = _get(obj, key, list, where, key)
    if len(values) != length:
        raise DataError(where, None, key, f"has {len(values)} values for {length} features")
    return tuple(_number({key: v}, key, where, f"{key}[{i}]") for i, v in enumerate(values))


def _p_value(loo: Mapping[str, Any], where: str) -> float | None:
    if loo.get("p_value") is None:
        return None
    value = _number(loo, "p_value", where, "loo.p_value")
    if not 0 < value <= 1:
        raise DataError(where, None, "loo.p_value", f"must be in (0, 1], got {value}")
    return value


def _from_json(obj: Any, where: str) -> Forecast:
    if not isinstance(obj, dict):
        raise DataError(where, None, None, "expected a JSON object")
    if obj.get("format") != FORMAT:
        raise DataError(where, None, "format", f"expected {FORMAT!r}, got {obj.get('format')!r}")
    version = _get(obj, "format_version", int, where, "format_version")
    if version != FORMAT_VERSION:
        raise DataError(where, None, "format_version", f"{version} is not supported (this safetune reads 1)")
    features = tuple(_get(obj, "features", list, where, "features"))
    for i, name in enumerate(features):
        if name not in MARGIN_FEATURES and name not in TRAITS:
            raise DataError(where, None, f"features[{i}]", f"unknown feature {name!r}")
    if not features or len(set(features)) != len(features):
        raise DataError(where, None, "features", "must name each feature once, at least one")
    scale = _numbers(obj, "scale", len(features), where)
    if any(s <= 0 for s in scale):
        raise DataError(where, None, "scale", "every scale must be > 0")
    lam = _number(obj, "lambda", where, "lambda")
    if lam <= 0:
        raise DataError(where, None, "lambda", f"must be > 0, got {lam}")
    lambdas = tuple(
        _number({"l": v}, "l", where, f"lambdas[{i}]") for i, v in enumerate(obj.get("lambdas", [lam]))
    )
    prov = _get(obj, "provenance", dict, where, "provenance")
    roles = _get(prov, "roles", list, where, "provenance.roles")
    if not all(isinstance(r, str) for r in roles):
        raise DataError(where, None, "provenance.roles", "must be role names")
    n_roles = _get(prov, "n_roles", int, where, "provenance.n_roles")
    if n_roles != len(roles):
        raise DataError(where, None, "provenance.n_roles", f"{n_roles} but {len(roles)} roles are listed")
    provenance = Provenance(
        study=_get(prov, "study", str, where, "provenance.study"),
        roles=tuple(roles),
        fitted=_get(prov, "fitted", str, where, "provenance.fitted"),
        safetune_version=_get(prov, "safetune_version", str, where, "provenance.safetune_version"),
        trait_source=_get(prov, "trait_source", str, where, "provenance.trait_source"),
    )
    loo_obj = _get(obj, "loo", dict, where, "loo")
    per_role: list[LooError] = []
    for i, item in enumerate(_get(loo_obj, "per_role", list, where, "loo.per_role")):
        if not isinstance(item, dict):
            raise DataError(where, None, f"loo.per_role[{i}]", "expected an object")
        per_role.append(
            LooError(
                _get(item, "role", str, where, f"loo.per_role[{i}].role"),
                *(
                    _number(item, k, where, f"loo.per_role[{i}].{k}")
                    for k in ("observed", "predicted", "baseline")
                ),
            )
        )
    loo = LooResult(
        _number(loo_obj, "mae", where, "loo.mae"),
        _number(loo_obj, "baseline_mae", where, "loo.baseline_mae"),
        _get(loo_obj, "weak", bool, where, "loo.weak"),
        tuple(per_role),
        _p_value(loo_obj, where),
        _get(loo_obj, "permutations", int, where, "loo.permutations"),
    )
    extra = obj.get("extra", {})
    if not isinstance(extra, dict):
        raise DataError(where, None, "extra", "expected an object")
    return Forecast(
        features=features,
        mean=_numbers(obj, "mean", len(features), where),
        scale=scale,
        coefficients=_numbers(obj, "coefficients", len(features), where),
        intercept=_number(obj, "intercept", where, "intercept"),
        lam=lam,
        lambdas=lambdas,
        loo=loo,
        provenance=provenance,
        extra=extra,
    )
