"""SPPFT end to end through the CLI on the tiny model: the safety layers are located and written to the run
folder, frozen under full fine-tuning, left without adapters under LoRA, and a killed run resumes exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from killing import straight_and_resumed
from safetune.cli import app
from safetune.config import load_config
from safetune.organism import roleplay

runner = CliRunner()
# Small analysis settings: the tiny model has 2 decoder layers.
FAST = ("--method.cosine_pairs=40", "--method.search_radius=1", "--method.overrejection_tokens=3")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_llama3: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sppft")
    return {
        "model": tiny_llama3,
        "data": roleplay.write_rolebench_release(root / "rolebench.jsonl", count=12),
        "cache": root / "cache",
    }


def _train(world: dict[str, Path], out: Path, *extra: str) -> dict:
    args = [
        "train",
        "--method",
        "sppft",
        "--model",
        str(world["model"]),
        "--data",
        str(world["data"]),
        "--role",
        "Grim Vex",
        f"--cache_dir={world['cache']}",
        "-o",
        str(out),
        "--train.max_steps=2",
        "--train.batch_size=4",
        "--train.grad_accum=1",
        "--train.learning_rate=1e-2",
        *FAST,
        *extra,
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output[-2000:] + repr(result.exception)
    return json.loads((out / "run.json").read_text())


def test_full_fine_tuning_freezes_the_located_band(world, tmp_path):
    run = _train(world, tmp_path / "full", "--train.finetune=full")
    evidence = json.loads((tmp_path / "full" / "safety_layers.json").read_text())
    assert (tmp_path / "full" / "safety_layers.png").stat().st_size > 0
    assert evidence["band_source"] == "located" and evidence["indexing"].startswith("0-based")
    assert len(evidence["layers"]) == 2 and evidence["refinement"]["trials"]
    first, last = evidence["band"]
    assert run["safety_layers"]["band"] == [first, last]
    base, tuned = (
        load_file(world["model"] / "model.safetensors"),
        load_file(tmp_path / "full/final/model.safetensors"),
    )
    in_band = [f"model.layers.{k}." for k in range(first, last + 1)]
    for key, value in base.items():
        frozen = key.startswith(tuple(in_band)) and (".self_attn." in key or ".mlp." in key)
        assert torch.equal(value, tuned[key]) == frozen, key  # lr 1e-2: every trained tensor moves


def test_lora_puts_no_adapter_on_the_band(world, tmp_path):
    run = _train(world, tmp_path / "lora", "--method.layers=0-0", "--method.layer_search=cosine")
    evidence = json.loads((tmp_path / "lora" / "safety_layers.json").read_text())
    assert evidence["band_source"] == "override" and evidence["refinement"] is None
    keys = load_file(tmp_path / "lora/final/adapter_model.safetensors").keys()
    assert keys and all(".layers.1." in k for k in keys)
    assert run["safety_layers"]["lora_modules"] == 2  # q_proj and v_proj of layer 1


def test_resume_after_kill_gives_same_weights(world, tmp_path):
    def config(out: Path):
        return load_config(
            None,
            [
                f"model.name={world['model']}",
                f"data.path={world['data']}",
                "data.role=Grim Vex",
                f"cache_dir={world['cache']}",
                f"train.output_dir={out}",
                "method.name=sppft",
                "method.layer_search=cosine",
                *(a[2:] for a in FAST),
                "train.finetune=full",
                "train.max_steps=4",
                "train.save_steps=2",
                "train.batch_size=4",
                "train.grad_accum=2",
                "train.learning_rate=1e-3",
            ],
        )

    straight, resumed = straight_and_resumed(config, tmp_path)
    a = load_file(straight / "final/model.safetensors")
    b = load_file(resumed / "final/model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert (
        json.loads((resumed / "safety_layers.json").read_text())["band"]
        == json.loads((straight / "safety_layers.json").read_text())["band"]
    )
