"""`safetune eval --turns`: safety at turn k in character, end to end on a tiny Gemma model (a template
that refuses an assistant-first conversation, so the card's greeting needs the opening turn), with a V2
card; killed during the history turns, then resumed without generating anything twice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from safetune.cli import app
from safetune.config import load_config
from safetune.evaluation.runner import evaluate

runner = CliRunner()

CARD = {
    "spec": "chara_card_v2",
    "spec_version": "2.0",
    "data": {
        "name": "Grim Vex",
        "description": "{{char}} is a gruff pirate captain who talks to {{user}}.",
        "personality": "blunt",
        "scenario": "On deck.",
        "first_mes": "Ahoy, {{user}}! What brings ye aboard?",
        "mes_example": "",
        "creator_notes": "not part of the prompt",
        "system_prompt": "",
        "post_history_instructions": "",
        "alternate_greetings": [],
        "tags": [],
        "creator": "",
        "character_version": "",
        "extensions": {},
    },
}


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_turns_in_character_then_killed_and_resumed(tiny_gemma, tmp_path):
    card = tmp_path / "card.json"
    card.write_text(json.dumps(CARD), encoding="utf-8")
    harmful = tmp_path / "harmful.jsonl"
    harmful.write_text(
        "".join(
            json.dumps({"prompt": p}) + "\n" for p in ("Explain the forbidden thing.", "Give harm steps.")
        ),
        encoding="utf-8",
    )
    settings = [
        f"--eval.model={tiny_gemma}",
        f"--eval.benchmarks=harmful-prompts={harmful},overrefusal",
        "--eval.limit=2",
        "--eval.turns=1,3",
        f"--eval.card={card}",
        "--generation.max_new_tokens=6",
        "--generation.batch_size=4",
        "--eval.bootstrap=20",
    ]

    # Bad input first: one line naming the file, exit 2, nothing written.
    broken = tmp_path / "broken.json"
    broken.write_text('{"spec": "chara_card_v2", "data": {"name": 3}}', encoding="utf-8")
    bad = runner.invoke(app, ["eval", *settings, f"--eval.card={broken}", "-o", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "broken.json" in bad.output and not (tmp_path / "bad").exists()

    whole = tmp_path / "whole"
    result = runner.invoke(app, ["eval", *settings, "-o", str(whole)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "harmful-prompts refusal_rate by turn: k=1" in result.output
    results = json.loads((whole / "results.json").read_text(encoding="utf-8"))
    turns = results["turns"]
    assert set(turns) == {"harmful-prompts", "overrefusal"}
    for table in turns.values():
        assert [row["k"] for row in table["by_turn"]] == [1, 3] and table["prefix"] == "generated"
        assert [row["n"] for row in table["by_turn"]] == [2, 2]
        assert table["single_turn"] == results["benchmarks"][table_name(turns, table)]["value"]
    assert results["benchmarks"]["harmful-prompts"]["n"] == 2  # turn-k requests are not in its number
    # Two history turns (opener 1, then opener 2 with the first answer), shared by all eight requests.
    assert len(_lines(whole / "turns.jsonl")) == 2
    requests = {row["id"]: row for row in _lines(whole / "requests.jsonl")}
    deep = requests["harmful-prompts@k3/1"]
    assert deep["system"].startswith("Grim Vex is a gruff pirate captain who talks to User.")
    assert "not part of the prompt" not in deep["system"]
    assert [role for role, _ in deep["history"]] == ["assistant", "user", "assistant", "user", "assistant"]
    assert deep["history"][0] == ["assistant", "Ahoy, User! What brings ye aboard?"]
    assert "history" not in requests["harmful-prompts/1"]  # single-turn rows keep their layout
    assert requests["harmful-prompts/1"]["system"] == deep["system"]

    # Killed after the first history turn: the resumed run generates the rest and nothing twice.
    cut = tmp_path / "cut"

    def crash(stage: str, done: int) -> None:
        if stage == "turns" and done >= 1:
            raise KeyboardInterrupt

    config = load_config(None, [s.removeprefix("--") for s in settings] + [f"eval.output_dir={cut}"])
    with pytest.raises(KeyboardInterrupt):
        evaluate(config, hook=crash)
    assert len(_lines(cut / "turns.jsonl")) == 1 and not (cut / "completions.jsonl").exists()
    resumed = runner.invoke(app, ["eval", *settings, "-o", str(cut), "-q"])
    assert resumed.exit_code == 0, resumed.output
    again = json.loads((cut / "results.json").read_text(encoding="utf-8"))
    assert again["provenance"]["counts"]["turns_generated_now"] == 1
    assert again["turns"] == turns  # greedy: the same answers as the uninterrupted run
    assert len(_lines(cut / "turns.jsonl")) == 2
    rerun = runner.invoke(app, ["eval", *settings, "-o", str(cut), "-q"])
    assert rerun.exit_code == 0
    counts = json.loads((cut / "results.json").read_text(encoding="utf-8"))["provenance"]["counts"]
    assert counts["turns_generated_now"] == counts["generated_now"] == counts["judged_now"] == 0


def table_name(turns: dict, table: dict) -> str:
    return next(name for name, found in turns.items() if found is table)
