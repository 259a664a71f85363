"""The role-data baselines through the CLI on ShareGPT conversations held with a V2 card: each trains 2
steps on the tiny model, on the conversation rows, without the per-turn RDS pass (no selection.jsonl)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.integration.test_multiturn_cli import CARD, _sharegpt
from transformers import AutoTokenizer
from typer.testing import CliRunner

from safetune.cli import app
from safetune.models.tiny import random_llama

runner = CliRunner()

# (method, extra options): each case trains 2 steps of the tiny model in about a second.
CASES = [
    ("safeinstr", ["--method.safety_count=2"]),
    ("tokenwise-sft", []),
    ("sppft", ["--method.layers=0-0"]),
    ("lisa", []),
    ("seal", ["--method.seal_epochs=1", "--method.seal_keep=0.5"]),
    ("safelora", []),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_llama3: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("baseline-conversations")
    card = root / "vex.json"
    card.write_text(json.dumps(CARD))
    return {"model": tiny_llama3, "data": _sharegpt(root / "chats.jsonl"), "card": card, "root": root}


def _unaligned(world: dict[str, Path]) -> Path:
    """SafeLoRA's unaligned model: the tiny model's shapes with other weights (another seed)."""
    folder = world["root"] / "unaligned"
    if not folder.is_dir():
        tokenizer = AutoTokenizer.from_pretrained(world["model"])
        model = random_llama(tokenizer, "llama3", hidden_size=32, num_layers=2, num_heads=4, seed=1)
        model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize(("method", "extra"), CASES, ids=[method for method, _ in CASES])
def test_baseline_trains_on_conversations(world, tmp_path, method, extra, monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError(f"{method} ran the per-turn RDS pass it never uses")

    monkeypatch.setattr("safetune.selection.cached_turn_scores", refuse)
    if method == "safelora":
        extra = [f"--method.unaligned_model={_unaligned(world)}"]
    out = tmp_path / method
    args = [
        "train",
        "-m",
        str(world["model"]),
        "--data",
        str(world["data"]),
        "--card",
        str(world["card"]),
        "--method",
        method,
        "-o",
        str(out),
        f"--cache_dir={tmp_path / 'cache'}",
        "--train.max_steps=2",
        "--train.batch_size=2",
        "--train.grad_accum=1",
        "--data.train_turns=last",
        *extra,
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    run = json.loads((out / "run.json").read_text())
    assert run["metrics"]["global_step"] == 2 and (out / "final").is_dir()
    assert not (out / "selection.jsonl").exists() and "selection" not in run
    # safeinstr's `data` holds the conversations' part beside its own counts
    data = run["data"]["conversations"] if method == "safeinstr" else run["data"]
    assert (data["unit"], data["train_turns"], data["conversations"]) == ("conversation row", "last", 4)
    assert data["count"] == 4  # _sharegpt: 4 conversations, each one whole row
    card = (out / "README.md").read_text()
    if method == "safeinstr":
        assert run["data"]["safety_rows"] == 2 and "| examples | 4 conversation rows (last turns) + 2" in card
    else:
        assert "| conversations | 4 (4 training rows, train turns: last)" in card
    if method == "seal":
        scores = [json.loads(line) for line in (out / "seal_scores.jsonl").read_text().splitlines()]
        assert [s["role"] for s in scores] == ["Vex"] * 4 and sum(s["kept"] for s in scores) == 2
