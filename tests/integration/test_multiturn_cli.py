"""Multi-turn SaRFT through the CLI on a tiny model: a PIPPA file, and ShareGPT conversations held with a V2
card (JSON and PNG), per-turn flags in selection.jsonl, and a killed run that resumes."""

from __future__ import annotations

import base64
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from killing import straight_and_resumed
from safetune.cli import app
from safetune.config import load_config

runner = CliRunner()

CARD = {
    "spec": "chara_card_v2",
    "spec_version": "2.0",
    "data": {
        "name": "Vex",
        "description": "{{char}} is a merchant of dubious goods.",
        "personality": "sly",
        "scenario": "A night market.",
        "first_mes": "Welcome, {{user}}.",
        "mes_example": "",
        "post_history_instructions": "Stay in character.",
    },
}


def _pippa(path: Path) -> Path:
    rows = []
    for i in range(4):
        conv = [{"message": "Hello traveller.", "is_human": False}]
        for k in range(3):
            conv += [
                {"message": f"What do you sell today {i} {k}?", "is_human": True},
                {"message": f"Blades and poison, friend {k}.", "is_human": False},
            ]
        rows.append(
            {
                "bot_id": "b1",
                "bot_name": "Grim",
                "bot_greeting": "Hello traveller.",
                "bot_definitions": "{{char}}: I sell things.",
                "bot_description": "A shady merchant.",
                "categories": ["fantasy"],
                "conversation": conv,
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _sharegpt(path: Path) -> Path:
    rows = []
    for i in range(4):
        turns = []
        for k in range(2 + i % 2):
            turns += [
                {"from": "human", "value": f"Anything for {{{{char}}}} to sell {i} {k}?"},
                {"from": "gpt", "value": f"Only the finest blades {k}."},
            ]
        rows.append({"id": f"s{i}", "conversations": turns})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _png_card(path: Path, card: dict[str, Any]) -> Path:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
    image = chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
    text = chunk(b"tEXt", b"chara\0" + base64.b64encode(json.dumps(card).encode("utf-8")))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + header + image + text + chunk(b"IEND", b""))
    return path


def _invoke(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def _train(model: Path, data: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return [
        "train",
        "-m",
        str(model),
        "--data",
        str(data),
        "--method",
        "sarft",
        "-o",
        str(out),
        f"--cache_dir={cache}",
        "--train.max_steps=2",
        "--train.batch_size=2",
        "--train.grad_accum=1",
        "--selection.variant=all",  # the tiny model flags almost nothing: every turn, so the KL runs
        *extra,
    ]


def _rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "selection.jsonl").read_text().splitlines()]


def test_sarft_from_pippa_and_from_a_card_with_sharegpt(tiny_llama3: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    pippa = _pippa(tmp_path / "pippa.jsonl")
    printed = _invoke(
        [
            "select",
            "-m",
            str(tiny_llama3),
            "--data",
            str(pippa),
            "-o",
            str(tmp_path / "sel"),
            f"--cache_dir={cache}",
        ]
    )
    assert "of 16 assistant turns flagged" in printed and "turn 4:" in printed
    rows = _rows(tmp_path / "sel")
    assert [(r["id"], r["turn"]) for r in rows[:4]] == [("pippa-1", t) for t in range(4)]
    assert all(r["flag"] == int(r["l_unsafe"] > r["l_role"]) for r in rows)

    _invoke(_train(tiny_llama3, pippa, tmp_path / "pippa_run", cache))
    run = json.loads((tmp_path / "pippa_run" / "run.json").read_text())
    assert run["selection"]["unit"] == "turn" and run["selection"]["count"] == 16
    assert run["metrics"]["reference_rows"] > 0  # flagged conversations took the reference pass
    assert (tmp_path / "pippa_run" / "final").is_dir()
    card = (tmp_path / "pippa_run" / "README.md").read_text()
    assert "| flag rate by turn position | turn 1: 100% of 4, turn 2: 100% of 4," in card

    sharegpt = _sharegpt(tmp_path / "chats.jsonl")
    card_json = tmp_path / "vex.json"
    card_json.write_text(json.dumps(CARD))
    card_png = _png_card(tmp_path / "vex.png", CARD)
    scored = []
    for card, out in ((card_json, tmp_path / "json_run"), (card_png, tmp_path / "png_run")):
        _invoke(_train(tiny_llama3, sharegpt, out, cache, "--card", str(card), "--data.train_turns=last"))
        rows = _rows(out)
        assert {r["role"] for r in rows} == {"Vex"} and len(rows) == 2 + 3 + 2 + 3
        scored.append([(r["id"], r["turn"], r["l_role"], r["l_unsafe"]) for r in rows])
        run = json.loads((out / "run.json").read_text())
        assert run["conversations"]["rows"] == 4  # train_turns=last: one trained turn per conversation
    assert scored[0] == scored[1]  # one card, as JSON or PNG: the same prompts, the same cached scores


def test_multiturn_sarft_resumes_after_a_kill(tiny_llama3: Path, tmp_path: Path) -> None:
    data = _pippa(tmp_path / "pippa.jsonl")

    def config(out: Path) -> Any:
        settings = {
            "model.name": str(tiny_llama3),
            "data.path": str(data),
            "method.name": "sarft",
            "selection.variant": "all",
            "train.output_dir": str(out),
            "train.max_steps": 5,
            "train.save_steps": 2,
            "train.batch_size": 1,
            "train.grad_accum": 1,
            "train.seed": 3,
            "cache_dir": str(tmp_path / "cache"),
        }
        return load_config(None, [f"{key}={value}" for key, value in settings.items()])

    straight, resumed = straight_and_resumed(config, tmp_path)
    one = json.loads((straight / "run.json").read_text())["metrics"]
    two = json.loads((resumed / "run.json").read_text())["metrics"]
    assert two["global_step"] == one["global_step"] == 5
    assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-4)
    assert _rows(straight) == _rows(resumed)


def test_bad_conversation_input_is_one_line_and_writes_nothing(tiny_llama3: Path, tmp_path: Path) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"id": "x", "conversations": [{"from": "human", "value": ""}]}) + "\n")
    out = tmp_path / "run"
    result = runner.invoke(app, _train(tiny_llama3, data, out, tmp_path / "cache", "--data.format=sharegpt"))
    assert result.exit_code == 2 and "bad.jsonl:1" in result.output, result.output
    assert not out.exists()
    result = runner.invoke(
        app, _train(tiny_llama3, data, out, tmp_path / "cache", "--chat.max_conversation_tokens=2")
    )
    assert result.exit_code == 2 and "chat.max_conversation_tokens" in result.output
    assert not out.exists()
