"""The study's wiring of judges, traits and the forecast, against hand-computed values: the judges'
agreement pooled over a unit's harmful benchmarks, a role without profile words getting no traits, the
forecast's rows from a study's rows, its fit into forecast.json, and the forecast mode's predictions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from safetune.assess.aggregate import BASE, UnitResult, aggregate, judges_of
from safetune.assess.forecast import Forecast
from safetune.assess.layout import StudyPlan
from safetune.assess.predict import predict_roles
from safetune.assess.report import (
    FORECAST_FILE,
    StudySummary,
    fit_study_forecast,
    forecast_rows,
    forecast_section,
    judge_section,
    margins_by_role,
    trait_scores,
    write_csv,
)
from safetune.assess.study import judge_agreement
from safetune.assess.traits import TRAITS
from safetune.config import load_config
from safetune.data.records import RoleProfile
from safetune.evaluation.results import JudgeAgreement, JudgeComparison


def _block(n: int, agreement: float, kappa: float | None, other: bool = False) -> JudgeAgreement:
    judges = {"llm": JudgeComparison(n=n, agreement=agreement, kappa=kappa)}
    if other:
        judges["harmbench"] = JudgeComparison(n=5, agreement=0.0, kappa=-1.0)  # not the first secondary
    return JudgeAgreement(primary="keyword", compares="refusal", judges=judges)


def test_judge_agreement_pooled_over_benchmarks() -> None:
    # 9 of 10 and 24 of 30 items agree: 33 of 40 = 82.5%; kappa (10 x 0.8 + 30 x 0.5) / 40 = 0.575
    found = judge_agreement([_block(10, 90.0, 0.8, other=True), _block(30, 80.0, 0.5)])
    assert found == {
        "judge_primary": "keyword",
        "judge_secondary": "llm",
        "agreement_n": 40,
        "agreement": pytest.approx(82.5),
        "kappa": pytest.approx(0.575),
    }
    # an undefined kappa is left out of the mean, not counted as 0
    assert judge_agreement([_block(10, 90.0, 0.8), _block(30, 80.0, None)])["kappa"] == pytest.approx(0.8)
    assert judge_agreement([])["agreement"] is None


def test_rows_carry_agreement_and_kappa_per_method(tmp_path: Path) -> None:
    units = [
        UnitResult(
            "",
            BASE,
            refusal=90.0,
            incoherent=0,
            judge_primary="keyword",
            judge_secondary="llm",
            agreement=95.0,
            kappa=0.9,
        ),
        UnitResult("Grim Vex", "sft", refusal=40.0, incoherent=3, agreement=70.0, kappa=0.4),
    ]
    (row,) = aggregate(["Grim Vex"], ["sft", "sarft"], units)
    assert row.agreement == {BASE: 95.0, "sft": 70.0, "sarft": None}
    assert row.kappa == {BASE: 0.9, "sft": 0.4, "sarft": None}
    assert judges_of(units) == ("keyword", "llm")
    write_csv(tmp_path / "r.csv", [row], ["sft", "sarft"], [])
    header, values = (line.split(",") for line in (tmp_path / "r.csv").read_text().splitlines())
    cells = dict(zip(header, values, strict=True))
    assert cells["agreement_sft"] == "70" and cells["kappa_base"] == "0.9" and cells["kappa_sarft"] == ""
    summary = _summary([row], judge_secondary="llm")
    text = "\n".join(judge_section(summary))
    assert (
        "| Grim Vex | sft | 50.0 | 70.0 | 0.40 | 3 |" in text
        and "| Grim Vex | base |  | 95.0 | 0.90 | 0 |" in text
    )
    assert "llm's with it" in text


def _summary(rows, **extra) -> StudySummary:  # type: ignore[no-untyped-def]
    return StudySummary("m", "d", ("sft", "sarft"), "sft", "h", 1, 1, tuple(rows), {}, (), (), **extra)


def test_role_without_profile_words_gets_no_traits() -> None:
    profiles = {
        "grim vex": RoleProfile("Grim Vex", "A cruel villain who lies."),
        "penny bun": RoleProfile("Penny Bun", "   "),
    }
    scores, missing = trait_scores(profiles, ["Grim Vex", "Penny Bun", "Nobody"])
    assert missing == ["Penny Bun", "Nobody"]
    # 5 words: cruel and villain are villainy (2 per 5 words = 40 per 100), lies is deceit (20)
    assert scores["grim vex"]["villainy"] == pytest.approx(40.0)
    assert scores["grim vex"]["deceit"] == pytest.approx(20.0)


def _study_rows() -> tuple[list, dict[str, list[float]]]:  # type: ignore[type-arg]
    """5 roles, drop 10 x i, villainy 2 x i; one more role without traits and one without a drop."""
    units = [UnitResult("", BASE, refusal=95.0)]
    traits = {}
    margins = {}
    for i in range(5):
        units.append(UnitResult(f"R{i}", "sft", refusal=95.0 - 10 * i))
        traits[f"r{i}"] = {t: (2.0 * i if t == "villainy" else 1.0) for t in TRAITS}
        margins[f"r{i}"] = [0.1 * i - 0.2, -0.3, 0.05 * i]
    units.append(UnitResult("Plain", "sft", refusal=90.0))
    margins["plain"] = [0.1]
    roles = [*(f"R{i}" for i in range(5)), "Plain", "Unfinished"]
    return aggregate(roles, ["sft"], units, None, traits), margins


def test_forecast_rows_from_study_rows() -> None:
    rows, margins = _study_rows()
    found = forecast_rows(rows, margins, "sft")
    assert [r.role for r in found] == [f"R{i}" for i in range(5)]  # Plain: no traits; Unfinished: no drop
    r2 = found[2]
    assert r2.drop == 20.0 and r2.base_refusal == 95.0 and r2.traits["villainy"] == 4.0
    # margins 0.0, -0.3, 0.1: one above 0
    assert r2.flag_rate == pytest.approx(1 / 3) and r2.margin_mean == pytest.approx(-0.2 / 3)
    assert margins_by_role([{"role": "Grim_Vex", "margin": 0.5}, {"role": "Grim Vex", "flag": 1}]) == {
        "grim vex": [0.5]
    }


def test_study_forecast_written_with_provenance(tmp_path: Path) -> None:
    rows, margins = _study_rows()
    config = load_config(None, ["--model.name=tiny", "--data.path=roles/", "--assess.methods=sft"])
    plan = StudyPlan(config, tmp_path, tuple(r.role for r in rows), (), {}, ())
    fitted, note = fit_study_forecast(plan, rows, margins, "abc123")
    assert note is None and fitted is not None
    saved = Forecast.load(tmp_path / FORECAST_FILE)
    assert saved.provenance.roles == tuple(f"R{i}" for i in range(5))
    assert saved.provenance.study == str(tmp_path.resolve())
    assert saved.extra["identity_hash"] == "abc123" and saved.extra["method"] == "sft"
    assert saved.loo.mae == pytest.approx(fitted.loo.mae)
    text = "\n".join(
        forecast_section(_summary(rows, forecast={**fitted.loo.to_dict(), "file": FORECAST_FILE}))
    )
    assert f"mean absolute error {fitted.loo.mae:.1f} points" in text and "| R4 | 40.0 |" in text
    # too few roles: no file, and the note says why
    few = StudyPlan(config, tmp_path / "few", (), (), {}, ())
    none, why = fit_study_forecast(few, rows[:3], margins, "abc123")
    assert none is None and "No forecast: 3 roles have an observed sft drop" in (why or "")
    assert not (tmp_path / "few").exists()


def test_predict_roles_names_what_is_missing() -> None:
    rows, margins = _study_rows()
    fitted = Forecast.fit(forecast_rows(rows, margins, "sft"), "s", permutations=0)
    traits = {r.role.lower(): dict(r.traits) for r in rows if r.traits}
    found = predict_roles(fitted, ["R4", "Plain", "Ghost", "R0"], margins, traits)
    assert [p.role for p in found] == ["R4", "R0", "Ghost", "Plain"]
    assert found[0].predicted is not None and found[0].predicted > found[1].predicted  # type: ignore[operator]
    assert {p.role: p.note for p in found[2:]} == {
        "Ghost": "no RDS margins",
        "Plain": "no trait scores (no profile, or no words in it)",
    }
    assert json.dumps(fitted.to_json())  # a plain JSON object


def test_executor_of_passes_the_ray_settings() -> None:
    from safetune.assess.study import executor_of
    from safetune.errors import ConfigError

    pytest.importorskip("ray")
    config = load_config(
        None,
        [
            "--assess.executor=ray",
            "--assess.ray_local_cpus=2",
            "--assess.cpus_per_unit=1",
            "--assess.ray_retries=2",
        ],
    )
    options = executor_of(config).options  # type: ignore[attr-defined]
    assert (options.local_cpus, options.cpus_per_unit, options.retries, options.address) == (2, 1.0, 2, None)
    with pytest.raises(ConfigError, match="--ray-retries applies to --executor ray only"):
        executor_of(load_config(None, ["--assess.ray_retries=1"]))
