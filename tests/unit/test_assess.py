"""The study's aggregation on hand-made unit results, against hand-computed values; the identity check;
the report's outputs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from safetune.assess.aggregate import (
    BASE,
    TurnRate,
    UnitResult,
    aggregate,
    margin_stats,
    method_means,
    pooled_turn_rates,
    quantile,
    selection_by_role,
    sort_by_drop,
    turn_rates,
)
from safetune.assess.layout import role_slug
from safetune.assess.report import StudySummary, render_markdown, top_flagged, turn_section, write_csv
from safetune.assess.study import check_identity
from safetune.errors import ConfigError, DataError


def test_quantile_and_margin_stats_by_hand() -> None:
    values = [0.4, -0.2, 0.1, -0.5]  # sorted: -0.5 -0.2 0.1 0.4
    assert quantile(values, 0.5) == pytest.approx(-0.05)  # halfway between -0.2 and 0.1
    assert quantile(values, 0.25) == pytest.approx(-0.275)  # position 0.75: -0.5 + 0.75 * 0.3
    assert quantile(values, 1.0) == pytest.approx(0.4)
    stats = margin_stats(values, [True, False, True, False], [0.25, 0.9])
    assert stats.count == 4 and stats.flagged == 2 and stats.flag_rate == 0.5
    assert stats.mean == pytest.approx(-0.05) and stats.median == pytest.approx(-0.05)
    assert stats.quantiles == {"q25": pytest.approx(-0.275), "q90": pytest.approx(0.31)}  # 0.1 + 0.7 * 0.3


def test_selection_by_role_groups_by_role_key() -> None:
    rows = [
        {"id": "a", "role": "Grim Vex", "flag": 1, "margin": 0.3},
        {"id": "b", "role": "Grim_Vex", "flag": 0, "margin": -0.1},
        {"id": "c", "role": "Penny Bun", "flag": 0, "margin": -0.4},
    ]
    found = selection_by_role(rows, [0.5])
    assert set(found) == {"grim vex", "penny bun"}
    assert found["grim vex"].flag_rate == 0.5 and found["grim vex"].mean == pytest.approx(0.1)
    assert found["penny bun"].quantiles == {"q50": pytest.approx(-0.4)}
    no_scores = selection_by_role([{"id": "a", "role": "X", "flag": 1}], [0.5])
    assert no_scores["x"].mean is None and no_scores["x"].flag_rate == 1.0


UNITS = [
    UnitResult("", BASE, refusal=90.0, incoherent=1, over_refusal=10.0),  # the shared safety evaluation
    UnitResult("Grim Vex", BASE, roleplay=20.0),
    UnitResult("Penny Bun", BASE, roleplay=30.0),
    UnitResult("Grim Vex", "sft", refusal=40.0, roleplay=35.0, incoherent=3, over_refusal=5.0),
    UnitResult("Grim Vex", "sarft", refusal=85.0, roleplay=34.0, incoherent=0),
    UnitResult("Penny Bun", "sft", refusal=80.0, roleplay=40.0, incoherent=2),
    # Penny Bun / sarft not finished yet
]


def test_aggregate_rows_by_hand() -> None:
    selection = selection_by_role(
        [
            {"id": "a", "role": "Grim Vex", "flag": 1, "margin": 0.2},
            {"id": "b", "role": "Penny Bun", "flag": 0, "margin": -0.2},
        ],
        [0.5],
    )
    rows = aggregate(
        ["Penny Bun", "Grim Vex"], ["sft", "sarft"], UNITS, selection, {"grim vex": {"villainy": 0.8}}
    )
    penny, grim = rows
    assert grim.base_refusal == 90.0 and grim.drop == {"sft": 50.0, "sarft": 5.0}
    assert grim.base_roleplay == 20.0 and grim.roleplay == {"sft": 35.0, "sarft": 34.0}
    assert grim.incoherent == {BASE: 1, "sft": 3, "sarft": 0}
    assert grim.over_refusal == {BASE: 10.0, "sft": 5.0, "sarft": None}
    assert grim.traits == {"villainy": 0.8} and penny.traits is None
    assert penny.drop == {"sft": 10.0, "sarft": None} and penny.refusal["sarft"] is None
    assert penny.selection is not None and penny.selection.flagged == 0
    assert [r.role for r in sort_by_drop(rows, "sft")] == ["Grim Vex", "Penny Bun"]
    assert [r.role for r in sort_by_drop(rows, "sarft")] == ["Grim Vex", "Penny Bun"]  # None last
    means = method_means(rows, ["sft", "sarft"])
    assert means["sft"]["drop"] == pytest.approx(30.0) and means["sarft"]["drop"] == pytest.approx(5.0)
    assert means[BASE]["roleplay"] == pytest.approx(25.0)


def test_aggregate_in_character_base_wins_over_shared() -> None:
    units = [UnitResult("", BASE, refusal=90.0), UnitResult("Grim Vex", BASE, refusal=70.0, roleplay=1.0)]
    units.append(UnitResult("Grim Vex", "sft", refusal=60.0))
    (row,) = aggregate(["Grim Vex"], ["sft"], units)
    assert row.base_refusal == 70.0 and row.drop["sft"] == 10.0 and row.selection is None


def test_csv_chart_flagged_and_markdown(tmp_path: Path) -> None:
    rows = sort_by_drop(aggregate(["Penny Bun", "Grim Vex"], ["sft", "sarft"], UNITS), "sft")
    write_csv(tmp_path / "results.csv", rows, ["sft", "sarft"], ["villainy"])
    lines = (tmp_path / "results.csv").read_text().splitlines()
    header = lines[0].split(",")
    assert header[:2] == ["role", "examples"] and "drop_sft" in header and header[-1] == "trait_villainy"
    grim = dict(zip(header, lines[1].split(","), strict=True))
    assert grim["role"] == "Grim Vex" and grim["drop_sft"] == "50" and grim["refusal_sarft"] == "85"
    assert grim["trait_villainy"] == "" and grim["flag_rate"] == ""
    selection = [
        {"id": "a", "role": "Grim Vex", "flag": 1, "margin": 0.1},
        {"id": "b", "role": "Grim Vex", "flag": 1, "margin": 0.5},
        {"id": "c", "role": "Grim Vex", "flag": 0, "margin": -0.3},
        {"id": "d", "role": "Grim Vex", "flag": 1, "margin": 0.3},
    ]
    flagged = top_flagged(selection, 2)
    assert [r["id"] for r in flagged["grim vex"]] == ["b", "d"]
    from safetune.assess.report import StudySummary

    summary = StudySummary(
        "m",
        "d",
        ("sft", "sarft"),
        "sft",
        "h",
        6,
        7,
        tuple(rows),
        method_means(rows, ["sft", "sarft"]),
        (),
        (),
    )
    text = render_markdown(summary, flagged, {"b": ("how | to", "like this"), "d": ("q", "a")})
    assert "| Grim Vex | – | 90.0 | 40.0 | 85.0 | 50.0 | 5.0 |" in text
    assert "| 0.500 | how \\| to | like this |" in text
    assert "6 of 7 units finished" in text


def test_identity_refused_naming_keys(tmp_path: Path) -> None:
    assert check_identity(tmp_path, {"a": 1}) is None
    (tmp_path / "study.json").write_text(json.dumps({"roles": [], "identity": {"a": 1, "b": 2}}))
    assert check_identity(tmp_path, {"a": 1, "b": 2})["roles"] == []
    with pytest.raises(ConfigError, match=r"differs in a, c\)"):
        check_identity(tmp_path, {"a": 5, "b": 2, "c": 0})
    (tmp_path / "study.json").write_text("[1]")
    with pytest.raises(ConfigError, match="not a study file"):
        check_identity(tmp_path, {})


def test_role_slug() -> None:
    assert role_slug("Dr. Hannibal Lecter") == role_slug("Dr_Hannibal_Lecter") == "dr_hannibal_lecter"


def test_assess_config_ranges() -> None:
    from safetune.config import load_config

    with pytest.raises(ConfigError, match=r"assess\.top_flagged"):
        load_config(None, ["--assess.top_flagged=-1"])
    with pytest.raises(ConfigError, match="listed twice"):
        load_config(None, ["--assess.methods=sft,sft"])
    with pytest.raises(ConfigError, match="margin_quantiles"):
        load_config(None, ["--assess.margin_quantiles=[0.5, 2]"])
    assert load_config(None, ["--assess.methods=sft"]).assess.methods == ["sft"]


# ---- conversation data: flag rates by turn position ----


def _by_turn(cells: dict[str, tuple[int, int]]) -> dict[str, dict[str, float | int]]:
    """A selection_stats.json `by_turn` block: position -> (count, flagged); the stored rate is wrong on
    purpose, so that a test passes only if the rate is computed from the counts."""
    return {b: {"count": c, "flagged": f, "flag_rate": 0.99} for b, (c, f) in cells.items()}


def test_turn_rates_from_a_hand_made_by_turn_block() -> None:
    rates = turn_rates(_by_turn({"8+": (5, 1), "2": (4, 3), "1": (8, 2), "10": (0, 0)}), "unit.json")
    assert list(rates) == ["1", "2", "8+", "10"]  # turn order, not text order ("10" < "2" < "8+")
    assert rates["1"] == TurnRate("1", 8, 2, 0.25)
    assert rates["2"].flag_rate == 0.75 and rates["8+"].flag_rate == 0.2 and rates["10"].flag_rate == 0.0
    with pytest.raises(DataError, match=r"unit.json: field 'by_turn.2': expected 0 <= flagged <= count"):
        turn_rates({"2": {"count": 1, "flagged": 2}}, "unit.json")
    with pytest.raises(DataError, match="turn position 'first' is not a number"):
        turn_rates({"first": {"count": 1, "flagged": 0}}, "unit.json")


def test_pooled_turn_rates_sum_the_counts() -> None:
    grim = turn_rates(_by_turn({"1": (2, 2), "2": (2, 0)}), "g")
    penny = turn_rates(_by_turn({"1": (198, 0), "3": (1, 1)}), "p")
    pooled = pooled_turn_rates([grim, penny])
    # 2 of 200 first turns (1 %), not the mean of 100 % and 0 %
    assert pooled == {
        "1": TurnRate("1", 200, 2, 0.01),
        "2": TurnRate("2", 2, 0, 0.0),
        "3": TurnRate("3", 1, 1, 1.0),
    }
    assert pooled_turn_rates([]) == {}


def test_aggregate_reads_by_turn_from_the_units_train_selection() -> None:
    block = _by_turn({"1": (4, 1), "2": (4, 2)})
    unit = {"role": "Grim", "method": "sarft", "refusal": 50.0, "train": {"selection": {"by_turn": block}}}
    units = [
        UnitResult("", BASE, refusal=90.0),
        UnitResult.from_dict(unit),
        UnitResult("Penny", "sarft", refusal=80.0),  # single-turn data: no by_turn
    ]
    rows = {r.role: r for r in aggregate(["Grim", "Penny"], ["sarft"], units)}
    assert rows["Grim"].by_turn == {"1": TurnRate("1", 4, 1, 0.25), "2": TurnRate("2", 4, 2, 0.5)}
    assert rows["Penny"].by_turn is None
    flat = rows["Grim"].flat(["sarft"], [])
    assert flat["flag_rate_turn_1"] == 0.25 and flat["flag_rate_turn_2"] == 0.5
    assert "flag_rate_turn_1" not in rows["Penny"].flat(["sarft"], [])


def test_turn_section_of_the_report() -> None:
    rows = aggregate(
        ["Grim", "Penny"],
        ["sarft"],
        [
            UnitResult("Grim", "sarft", by_turn=_by_turn({"1": (2, 1), "2": (2, 0)})),
            UnitResult("Penny", "sarft", by_turn=_by_turn({"1": (2, 2)})),
        ],
    )
    summary = StudySummary(
        model="m",
        data="d",
        methods=("sarft",),
        primary_method="sarft",
        identity_hash="h",
        units_finished=2,
        units_total=2,
        roles=tuple(rows),
        means={},
        traits=(),
        correlations=(),
        by_turn=pooled_turn_rates([r.by_turn for r in rows if r.by_turn]),
    )
    assert turn_section(summary) == [
        "",
        "## RDS flag rates by turn position",
        "",
        turn_section(summary)[3],
        "",
        "| role | turn 1 | turn 2 |",
        "|---|---|---|",
        "| Grim | 50.0 (1/2) | 0.0 (0/2) |",
        "| Penny | 100.0 (2/2) | – |",
        "| all roles | 75.0 (3/4) | 0.0 (0/2) |",
    ]
    assert turn_section(dataclasses.replace(summary, by_turn=None)) == []  # single-turn data: no section
    assert json.loads(json.dumps(summary.to_dict()))["by_turn"]["1"] == {
        "turn": "1",
        "count": 4,
        "flagged": 3,
        "flag_rate": 0.75,
    }
