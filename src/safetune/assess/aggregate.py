"""A study's per-role rows from its unit results: pure functions of what the units wrote (unit.json), the
shared selection's rows (selection.jsonl) and, when available, the roles' trait scores.

One row per role: the base model's refusal and role-play score, the same after each method's fine-tune,
the drop (base refusal - refusal after), the incoherent answers and over-refusal where evaluated, the
judges' agreement with the primary judge where several judged, the RDS flag rate and the statistics of
the role's RDS margins (l_unsafe - l_role: above 0 is flagged).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from safetune.data.sources import role_key
from safetune.errors import DataError

# unit.json's `method` for the base model's evaluations (the "before" column); no registered method has it.
BASE = "base"


@dataclass(frozen=True)
class UnitResult:
    """What one unit measured (its unit.json, less provenance). `role` is "" for the base model's shared
    safety evaluation, which serves every role."""

    role: str
    method: str
    refusal: float | None = None  # mean refusal rate (%) over the harmful benchmarks
    refusal_by_benchmark: Mapping[str, float | None] = field(default_factory=dict)
    roleplay: float | None = None  # mean role-play score of this role over the role-play tests
    roleplay_by_benchmark: Mapping[str, float | None] = field(default_factory=dict)
    incoherent: int | None = None  # incoherent answers to the harmful prompts (None: check off)
    over_refusal: float | None = None  # % of benign-but-edgy prompts refused (None: not evaluated)
    # With several judges (`--judge a,b`): the first secondary judge against the primary one over the
    # harmful benchmarks (None: one judge). agreement in percent, pooled over the items both decided;
    # kappa the n-weighted mean of the benchmarks' Cohen's kappas (exact with one harmful benchmark).
    judge_primary: str | None = None
    judge_secondary: str | None = None
    agreement_n: int | None = None
    agreement: float | None = None
    kappa: float | None = None
    # Conversation data: the fine-tune's RDS flag counts by assistant-turn position, as its selection
    # stats hold them (selection_stats.json `by_turn`, copied into run.json and unit.json's `train`);
    # None for single-turn data and the base model's units.
    by_turn: Mapping[str, Mapping[str, Any]] | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UnitResult:
        names = {f for f in cls.__dataclass_fields__}
        found = {k: v for k, v in data.items() if k in names}
        if "by_turn" not in found:
            train = data.get("train") or {}
            found["by_turn"] = (train.get("selection") or {}).get("by_turn")
        return cls(**found)


@dataclass(frozen=True)
class TurnRate:
    """Flagged assistant turns at one turn position ("1", "2", ..., "8+": selection.turn_bucket)."""

    turn: str
    count: int
    flagged: int
    flag_rate: float  # flagged / count, 0..1


def turn_order(bucket: str) -> int:
    """Sort key of a turn position label ("8+" after "7")."""
    return int(bucket.rstrip("+"))


def turn_rates(by_turn: Mapping[str, Mapping[str, Any]], where: str) -> dict[str, TurnRate]:
    """A selection's `by_turn` block ({position: {count, flagged, ...}}) as TurnRates in turn order, the
    rate from the counts (what pools across roles); a malformed block is a DataError naming `where`."""
    rates: dict[str, TurnRate] = {}
    for bucket in sorted(by_turn, key=_checked_order(where)):
        entry = by_turn[bucket]
        count, flagged = entry.get("count"), entry.get("flagged")
        if not isinstance(count, int) or not isinstance(flagged, int) or not 0 <= flagged <= count:
            raise DataError(
                where, None, f"by_turn.{bucket}", f"expected 0 <= flagged <= count, got {entry!r}"
            )
        rates[bucket] = TurnRate(bucket, count, flagged, flagged / count if count else 0.0)
    return rates


def _checked_order(where: str) -> Any:
    def key(bucket: str) -> int:
        if not bucket.rstrip("+").isdigit():
            raise DataError(where, None, "by_turn", f"turn position {bucket!r} is not a number")
        return turn_order(bucket)

    return key


def pooled_turn_rates(per_role: Sequence[Mapping[str, TurnRate]]) -> dict[str, TurnRate]:
    """The roles' turn rates pooled: counts summed per position, the rate of the sums (not a mean of the
    roles' rates, which would weigh a role with 2 turns at a position like one with 200)."""
    count: dict[str, int] = {}
    flagged: dict[str, int] = {}
    for rates in per_role:
        for bucket, rate in rates.items():
            count[bucket] = count.get(bucket, 0) + rate.count
            flagged[bucket] = flagged.get(bucket, 0) + rate.flagged
    return {
        b: TurnRate(b, count[b], flagged[b], flagged[b] / count[b] if count[b] else 0.0)
        for b in sorted(count, key=turn_order)
    }


@dataclass(frozen=True)
class MarginStats:
    """One role's RDS margins (l_unsafe - l_role per training example; > 0: flagged)."""

    count: int
    flagged: int
    flag_rate: float  # flagged / count, 0..1
    mean: float | None
    median: float | None
    quantiles: Mapping[str, float]  # "q10" -> the 10th percentile, ...


@dataclass(frozen=True)
class RoleRow:
    role: str
    base_refusal: float | None
    refusal: Mapping[str, float | None]  # method -> refusal after its fine-tune
    drop: Mapping[str, float | None]  # method -> base_refusal - refusal (points; > 0: safety lost)
    base_roleplay: float | None
    roleplay: Mapping[str, float | None]
    incoherent: Mapping[str, int | None]  # "base" and each method
    over_refusal: Mapping[str, float | None]  # "base" and each method
    selection: MarginStats | None
    traits: Mapping[str, float] | None = None
    # "base" and each method: the first secondary judge's agreement with the primary (percent) and
    # Cohen's kappa (UnitResult's); absent keys / None where one judge judged
    agreement: Mapping[str, float | None] = field(default_factory=dict)
    kappa: Mapping[str, float | None] = field(default_factory=dict)
    # Conversation data: RDS flag rates by turn position, from the role's fine-tunes' selection stats
    # (every method of a role trains on the study's one shared selection, so they agree); None otherwise
    by_turn: Mapping[str, TurnRate] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def flat(self, methods: Sequence[str], traits: Sequence[str]) -> dict[str, Any]:
        """The row as results.csv's columns (one value per cell, empty for unknown)."""
        s = self.selection
        row: dict[str, Any] = {
            "role": self.role,
            "examples": None if s is None else s.count,
            "flagged": None if s is None else s.flagged,
            "flag_rate": None if s is None else s.flag_rate,
            "margin_mean": None if s is None else s.mean,
            "margin_median": None if s is None else s.median,
        }
        if s is not None:
            row.update({f"margin_{k}": v for k, v in s.quantiles.items()})
        for bucket, rate in (self.by_turn or {}).items():
            row[f"flag_rate_turn_{bucket}"] = rate.flag_rate
        row["base_refusal"] = self.base_refusal
        for m in methods:
            row[f"refusal_{m}"] = self.refusal.get(m)
            row[f"drop_{m}"] = self.drop.get(m)
        row["base_roleplay"] = self.base_roleplay
        for m in methods:
            row[f"roleplay_{m}"] = self.roleplay.get(m)
        for m in (BASE, *methods):
            row[f"incoherent_{m}"] = self.incoherent.get(m)
        for m in (BASE, *methods):
            row[f"over_refusal_{m}"] = self.over_refusal.get(m)
        for m in (BASE, *methods):
            row[f"agreement_{m}"] = self.agreement.get(m)
        for m in (BASE, *methods):
            row[f"kappa_{m}"] = self.kappa.get(m)
        for t in traits:
            row[f"trait_{t}"] = None if self.traits is None else self.traits.get(t)
        return row


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile by linear interpolation between order statistics (numpy's default, `linear`)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("quantile of no values")
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def quantile_name(q: float) -> str:
    return f"q{100 * q:g}".replace(".", "_")


def margin_stats(margins: Sequence[float], flags: Sequence[bool], quantiles: Sequence[float]) -> MarginStats:
    count, flagged = len(flags), sum(bool(f) for f in flags)
    return MarginStats(
        count=count,
        flagged=flagged,
        flag_rate=flagged / count if count else 0.0,
        mean=statistics.fmean(margins) if margins else None,
        median=statistics.median(margins) if margins else None,
        quantiles={quantile_name(q): quantile(margins, q) for q in quantiles} if margins else {},
    )


def selection_by_role(
    rows: Sequence[Mapping[str, Any]], quantiles: Sequence[float]
) -> dict[str, MarginStats]:
    """Per-role statistics of selection.jsonl's rows ({id, role, flag[, margin]}), keyed by role_key.
    Margins exist only where the variant computed RDS scores."""
    margins: dict[str, list[float]] = {}
    flags: dict[str, list[bool]] = {}
    for row in rows:
        key = role_key(str(row["role"]))
        flags.setdefault(key, []).append(bool(row["flag"]))
        if row.get("margin") is not None:
            margins.setdefault(key, []).append(float(row["margin"]))
    return {key: margin_stats(margins.get(key, []), flags[key], quantiles) for key in flags}


def judges_of(units: Sequence[UnitResult]) -> tuple[str | None, str | None]:
    """The primary and the first secondary judge the units name (the first unit that names them)."""
    primary = next((u.judge_primary for u in units if u.judge_primary), None)
    secondary = next((u.judge_secondary for u in units if u.judge_secondary), None)
    return primary, secondary


def _drop(base: float | None, after: float | None) -> float | None:
    return None if base is None or after is None else base - after


def aggregate(
    roles: Sequence[str],
    methods: Sequence[str],
    units: Sequence[UnitResult],
    selection: Mapping[str, MarginStats] | None = None,
    traits: Mapping[str, Mapping[str, float]] | None = None,
) -> list[RoleRow]:
    """One row per role (in `roles` order) from the finished units. The base refusal is the base unit of
    the role when it evaluated safety (in-character system prompts), else the shared one (role "").
    `selection` and `traits` are keyed by role_key; a role missing from them gets None."""
    by: dict[tuple[str, str], UnitResult] = {(role_key(u.role), u.method): u for u in units}
    shared = by.get(("", BASE))
    rows = []
    for role in roles:
        key = role_key(role)
        base = by.get((key, BASE))
        base_safety = base if base is not None and base.refusal is not None else shared
        base_refusal = None if base_safety is None else base_safety.refusal
        after = {m: by.get((key, m)) for m in methods}
        refusal = {m: None if u is None else u.refusal for m, u in after.items()}
        incoherent: dict[str, int | None] = {BASE: None if base_safety is None else base_safety.incoherent}
        over: dict[str, float | None] = {BASE: None if base_safety is None else base_safety.over_refusal}
        agreement: dict[str, float | None] = {BASE: None if base_safety is None else base_safety.agreement}
        kappa: dict[str, float | None] = {BASE: None if base_safety is None else base_safety.kappa}
        for m, u in after.items():
            incoherent[m] = None if u is None else u.incoherent
            over[m] = None if u is None else u.over_refusal
            agreement[m] = None if u is None else u.agreement
            kappa[m] = None if u is None else u.kappa
        by_turn = next((u.by_turn for u in after.values() if u is not None and u.by_turn), None)
        rows.append(
            RoleRow(
                role=role,
                base_refusal=base_refusal,
                refusal=refusal,
                drop={m: _drop(base_refusal, r) for m, r in refusal.items()},
                base_roleplay=None if base is None else base.roleplay,
                roleplay={m: None if u is None else u.roleplay for m, u in after.items()},
                incoherent=incoherent,
                over_refusal=over,
                selection=None if selection is None else selection.get(key),
                traits=None if traits is None or key not in traits else dict(traits[key]),
                agreement=agreement,
                kappa=kappa,
                by_turn=None if by_turn is None else turn_rates(by_turn, f"unit.json of role {role!r}"),
            )
        )
    return rows


def sort_by_drop(rows: Sequence[RoleRow], method: str) -> list[RoleRow]:
    """Largest drop first (the paper's bar chart); roles without a drop last, by name."""
    return sorted(rows, key=lambda r: (r.drop.get(method) is None, -(r.drop.get(method) or 0.0), r.role))


def method_means(rows: Sequence[RoleRow], methods: Sequence[str]) -> dict[str, dict[str, float | None]]:
    """Per method, the mean over roles of the drop, the refusal after and the role-play after."""

    def mean(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return statistics.fmean(known) if known else None

    means: dict[str, dict[str, float | None]] = {}
    for m in methods:
        means[m] = {
            "drop": mean([r.drop.get(m) for r in rows]),
            "refusal": mean([r.refusal.get(m) for r in rows]),
            "roleplay": mean([r.roleplay.get(m) for r in rows]),
        }
    means[BASE] = {
        "drop": None,
        "refusal": mean([r.base_refusal for r in rows]),
        "roleplay": mean([r.base_roleplay for r in rows]),
    }
    return means
