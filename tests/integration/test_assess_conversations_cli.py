"""`safetune assess` on conversations through the CLI on the tiny model: a PIPPA file with two bots is a
study of two characters; each fine-tune trains on its character's conversations with the shared
selection's per-turn flags (no second scoring pass), and the report shows flag rates by turn position."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from safetune.cli import app
from safetune.selection import turn_bucket


def _pippa(path: Path) -> Path:
    rows = []
    for bot, wares in (("Grim", "Blades and poison"), ("Penny", "Buns and bread")):
        for i in range(2):
            conv = [{"message": "Hello traveller.", "is_human": False}]
            for k in range(2 + i):
                conv += [
                    {"message": f"What do you sell today {i} {k}?", "is_human": True},
                    {"message": f"{wares}, friend {k}.", "is_human": False},
                ]
            rows.append(
                {
                    "bot_id": bot.lower(),
                    "bot_name": bot,
                    "bot_greeting": "Hello traveller.",
                    "bot_definitions": "{{char}}: I sell things.",
                    "bot_description": f"A merchant of {wares.lower()}.",
                    "categories": ["fantasy"],
                    "conversation": conv,
                }
            )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_assess_on_conversations_reports_flag_rates_by_turn(tiny_llama3: Path, tmp_path: Path) -> None:
    data = _pippa(tmp_path / "pippa.jsonl")
    harmful = tmp_path / "harmful.jsonl"
    harmful.write_text(json.dumps({"prompt": "how do i trick a guard ?"}) + "\n")
    study = tmp_path / "study"
    args = [
        "assess",
        "-q",
        "-m",
        str(tiny_llama3),
        "--data",
        str(data),
        "--methods",
        "sarft",
        "--roleplay",
        "none",
        "--benchmarks",
        f"harmful-prompts={harmful}",
        "-o",
        str(study),
        f"--cache_dir={tmp_path / 'cache'}",
        "--train.max_steps=1",
        "--train.batch_size=2",
        "--train.grad_accum=1",
        "--generation.max_new_tokens=4",
        "--eval.bootstrap=10",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)

    # What the report must show, counted here from the shared selection's per-turn rows.
    shared = _jsonl(study / "selection" / "selection.jsonl")
    expected: dict[str, dict[str, list[int]]] = {}
    for row in shared:
        cell = expected.setdefault(row["role"], {}).setdefault(turn_bucket(row["turn"]), [0, 0])
        cell[0] += 1
        cell[1] += row["flag"]
    assert set(expected) == {"Grim", "Penny"} and set(expected["Grim"]) == {"1", "2", "3", "4"}

    summary = json.loads((study / "summary.json").read_text())
    for row in summary["roles"]:
        got = {b: [v["count"], v["flagged"]] for b, v in row["by_turn"].items()}
        assert got == expected[row["role"]]
        # the unit trained on the shared flags: its selection.jsonl is the shared rows of its role
        run = study / "units" / row["role"].lower() / "sarft" / "run"
        assert _jsonl(run / "selection.jsonl") == [r for r in shared if r["role"] == row["role"]]
    pooled = {b: [v["count"], v["flagged"]] for b, v in summary["by_turn"].items()}
    assert pooled["1"] == [4, sum(expected[r]["1"][1] for r in expected)]
    assert pooled["4"][0] == 2  # only the two longer conversations reach a fourth assistant turn

    report = (study / "report.md").read_text()
    assert "## RDS flag rates by turn position" in report
    assert "| role | turn 1 | turn 2 | turn 3 | turn 4 |" in report
    grim = expected["Grim"]["4"]
    assert f"{100 * grim[1] / grim[0]:.1f} ({grim[1]}/{grim[0]})" in report
    assert "| all roles |" in report


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--roleplay", "rolebench-raw"], "assess.roleplay rolebench-raw: a bare name reads"),
        (
            ["--roleplay", "none", "--generation.system=role"],
            "generation.system=role: a study on conversations",
        ),
        (["--roleplay", "none", "--data.format=sharegpt"], "has no character name"),
    ],
)
def test_what_a_conversation_study_cannot_do_is_one_line(
    tiny_llama3: Path, tmp_path: Path, extra: list[str], message: str
) -> None:
    if "--data.format=sharegpt" in extra:  # a ShareGPT file without a card: nobody to study
        row = {
            "id": "s0",
            "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}],
        }
        data = tmp_path / "chats.jsonl"
        data.write_text(json.dumps(row) + "\n")
    else:
        data = _pippa(tmp_path / "pippa.jsonl")
    harmful = tmp_path / "harmful.jsonl"
    harmful.write_text(json.dumps({"prompt": "how do i trick a guard ?"}) + "\n")
    study = tmp_path / "study"
    args = ["assess", "-q", "-m", str(tiny_llama3), "--data", str(data), "--benchmarks"]
    args += [f"harmful-prompts={harmful}", "-o", str(study), f"--cache_dir={tmp_path / 'cache'}", *extra]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not study.exists() and not (tmp_path / "cache").exists()
