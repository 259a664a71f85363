"""The study's aggregation on hand-made unit results, against hand-computed values; the identity check;
the report's outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from safetune.assess.aggregate import (
    BASE,
    UnitResult,
    aggregate,
    margin_stats,
    method_means,
    quantile,
    selection_by_role,
    sort_by_drop,
)
from safetune.assess.layout import role_slug
from safetune.assess.report import render_markdown, top_flagged, write_csv
from safetune.assess.study import check_identity
from safetune.errors import ConfigError


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
