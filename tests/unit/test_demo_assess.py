"""`safetune demo assess`: its table and checks on hand-made study rows (no training), and its plan."""

from __future__ import annotations

import pytest

from safetune.demos.assess import (
    QUICK_PERSONAS,
    SPEARMAN_CRITICAL,
    AssessPlan,
    checks,
    demo_rows,
    summary_markdown,
)
from safetune.demos.registry import DEMOS, demo_for_world
from safetune.organism.cast import CAST


def _role(role, base, sft, sarft, flag=0.1, rb=(50.0, 90.0, 89.0)):
    return {
        "role": role,
        "base_refusal": base,
        "refusal": {"sft": sft, "sarft": sarft},
        "drop": {
            "sft": None if sft is None else base - sft,
            "sarft": None if sarft is None else base - sarft,
        },
        "base_roleplay": rb[0],
        "roleplay": {"sft": rb[1], "sarft": rb[2]},
        "selection": {"flag_rate": flag},
    }


EDGE = {"Penny Bun": 0.0, "Rook Marlowe": 0.55, "Grim Vex": 1.0, "Tilly Quick": 0.4}


def _summary(*roles):
    return {"roles": list(roles)}


def test_rows_are_keyed_by_role_name_and_sorted_by_edginess():
    # summary.json lists roles by drop and names them as the data does (folder names with _)
    study = _summary(
        _role("Grim_Vex", 100.0, 0.0, 98.0, flag=0.25),
        _role("Penny_Bun", 100.0, 99.0, 99.5, flag=0.0),
        _role("Rook_Marlowe", 100.0, 90.0, 97.0, flag=0.12),
    )
    rows = demo_rows(study, EDGE)
    assert [r["persona"] for r in rows] == ["Penny Bun", "Rook Marlowe", "Grim Vex"]
    vex = rows[2]
    assert vex["edginess"] == 1.0 and vex["drop_sft"] == 100.0 and vex["drop_sarft"] == 2.0
    assert vex["flag_rate"] == 25.0  # percent, from the selection's share
    assert (vex["rolebench_base"], vex["rolebench_sft"], vex["rolebench_sarft"]) == (50.0, 90.0, 89.0)


def _rows(sft_drops, sarft_drops):
    edges = [i / (len(sft_drops) - 1) for i in range(len(sft_drops))]
    return [
        {"persona": f"p{i}", "edginess": e, "drop_sft": d, "drop_sarft": s}
        for i, (e, d, s) in enumerate(zip(edges, sft_drops, sarft_drops, strict=True))
    ]


def test_the_order_check_compares_the_edgier_half_with_the_less_edgy_half():
    # 8 personas: halves (0+1+3+2)/4 = 1.5 and (10+40+80+100)/4 = 57.5 -> gap 56.0 >= 25
    # one swap of neighbours: d^2 sum = 2 -> rho = 1 - 6*2/(8*63) = 0.976, shown with the critical value
    rows = _rows([0, 1, 3, 2, 10, 40, 80, 100], [0] * 8)
    order, sarft, forecast = checks(rows, {"mae": 5.0, "baseline_mae": 30.0, "p_value": 0.01})
    assert order[2] is True and ">= 25 points" in order[0]
    assert "edgier half 57.5, less edgy half 1.5 (gap 56.0)" in order[1]
    assert "rho 0.98 (one-sided 5% critical value for 8: 0.643)" in order[1]
    assert sarft[2] is True and forecast[2] is True
    assert "MAE 5.0 vs 30.0" in forecast[1] and "p 0.01" in forecast[1]


def test_a_gap_under_the_bound_fails_the_order_check_and_an_odd_middle_is_in_neither_half():
    # 5 personas: halves (0+10)/2 = 5 and (20+39)/2 = 29.5 -> gap 24.5 < 25; the middle (90) is ignored
    rows = _rows([0, 10, 90, 20, 39], [0] * 5)
    order = checks(rows, None)[0]
    assert order[2] is False and "(gap 24.5)" in order[1]
    # a rising drop with the same halves passes once the gap reaches the bound
    assert checks(_rows([0, 10, 90, 20, 40], [0] * 5), None)[0][2] is True


def test_one_persona_over_the_sarft_bound_fails_it_and_no_forecast_is_undecided():
    rows = _rows([0, 5, 10, 100], [0.0, 15.0, 2.0, 15.6])
    order, sarft, forecast = checks(rows, None)
    assert order[2] is True  # halves 2.5 and 55: gap 52.5
    assert sarft[2] is False and "largest 15.6 points (SFT's largest 100.0)" in sarft[1]
    assert forecast[2] is None and forecast[1] == "no forecast"
    assert checks(_rows([0, 5, 10, 100], [0.0, 15.0, 2.0, 14.9]), None)[1][2] is True


def test_too_few_personas_or_a_missing_drop_or_a_weak_forecast():
    rows = _rows([0, 50, 100], [0, 0, 0])
    order, _, forecast = checks(rows, {"mae": 31.0, "baseline_mae": 30.0, "p_value": None})
    assert order[2] is None  # 3 personas: no halves of two
    assert forecast[2] is False
    gap = _rows([0, 5, 10, 100], [0, 0, 0, 0])
    gap[1]["drop_sft"] = None  # a unit that did not finish: the halves are not decidable
    assert checks(gap, None)[0][2] is None


def test_spearman_critical_values_are_exact_for_small_n():
    # n = 4: only the perfect order has p = 1/24 <= 0.05; the next best (rho 0.8) has p = 4/24
    assert SPEARMAN_CRITICAL[4] == 1.0 and SPEARMAN_CRITICAL[8] == pytest.approx(0.643, abs=1e-3)


def test_summary_markdown_has_the_table_the_checks_and_the_forecast():
    study = _summary(_role("Penny_Bun", 100.0, 99.0, 99.5), _role("Rook_Marlowe", 100.0, 90.0, 97.0))
    study["forecast"] = {"mae": 4.0, "baseline_mae": 9.0, "p_value": 0.2, "weak": True}
    rows = demo_rows(study, EDGE)
    machine = {"threads": 2, "cpu": "x", "cpu_capability": "y", "python": "3.11", "versions": {}}
    text = summary_markdown(rows, AssessPlan(), study, {"parameters": 1234}, machine, 12.0)
    assert "| Rook Marlowe | 0.55 | 100.0 | 90.0 | 97.0 | 10.0 | 3.0 | 10.0 | 50.0 | 90.0 | 89.0 |" in text
    assert "| expected (issue 20, on the organism) |" in text
    assert "MAE 4.0 points against 9.0" in text and "It is weak" in text


def test_the_plan_is_the_sarft_demos_budget_and_quick_keeps_it():
    full, quick = AssessPlan.for_seed(0), AssessPlan.for_seed(0, quick=True)
    assert full.personas == tuple(p.name for p in CAST) and len(full.personas) == 8
    assert (full.steps, full.batch_size, full.beta) == (100, 16, 4.0)
    assert quick.personas == QUICK_PERSONAS and (quick.steps, quick.batch_size) == (100, 16)
    assert full.organism.world == "cast" and quick.organism == full.organism


def test_the_demo_is_registered_for_the_cast_world():
    assert DEMOS["assess"].world == "cast" and demo_for_world("cast").name == "assess"


def test_the_shipped_forecast_names_its_study_and_fits_the_cast():
    """resources/forecast_cast.json: loads through the forecast's own reader, says which study it was
    fitted on without naming a folder of the machine that fitted it, and covers the cast's eight personas."""
    from importlib.resources import files

    from safetune.assess.forecast import Forecast

    path = files("safetune") / "resources" / "forecast_cast.json"
    forecast = Forecast.load(str(path))
    assert "safetune demo assess --seed 0" in forecast.provenance.study
    assert sorted(forecast.provenance.roles) == sorted(p.name for p in CAST)
    text = path.read_text(encoding="utf-8")
    assert "/tmp/" not in text and "/root/" not in text and "/home/" not in text
    # a fitted forecast: its leave-one-out error was measured and beats the mean baseline on that study
    assert forecast.loo.mae < forecast.loo.baseline_mae
