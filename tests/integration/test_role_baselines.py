"""tokenwise-sft and safeinstr end to end through the CLI on a tiny model and role-play data, and --resume."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from killing import straight_and_resumed
from safetune.cli import app
from safetune.config import load_config
from safetune.data.safety import builtin_path
from safetune.organism import roleplay

runner = CliRunner()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_llama3: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("world")
    return {
        "model": tiny_llama3,
        "data": roleplay.write_rolebench_release(root / "rolebench.jsonl", count=12),
        "profiles": roleplay.write_profiles(root / "profiles.json"),
        "cache": root / "cache",
    }


def _train(world: dict[str, Path], out: Path, *extra: str) -> dict:
    args = [
        "train",
        "--model",
        str(world["model"]),
        "--data",
        str(world["data"]),
        "--role",
        "Grim Vex",
        "--profiles",
        str(world["profiles"]),
        f"--cache_dir={world['cache']}",
        "-o",
        str(out),
        "--train.max_steps=2",
        "--train.batch_size=4",
        "--train.grad_accum=1",
        "--train.logging_steps=1",
        *extra,
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert (out / "final").is_dir() and (out / "README.md").exists()
    return json.loads((out / "run.json").read_text())


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_tokenwise_trains_and_reuses_the_aligned_logps(world, tmp_path, finetune, monkeypatch):
    run = _train(world, tmp_path / "a", "--method", "tokenwise-sft", "--finetune", finetune)
    assert run["method"] == "tokenwise-sft" and run["beta"] == 0.1
    tw = run["tokenwise"]
    assert (tw["bias_factor"], tw["first_token_factor"], tw["bias_length"]) == (20.0, 5.0, 5)
    assert (tw["adam_beta1"], tw["warmup_steps"], tw["min_weight"]) == (0.5, 10, 1e-3)
    assert run["data"]["count"] == 12 and "selection" not in run
    assert "beta_t | 0.5, 2, 2, 2, 2, 0.1" in (tmp_path / "a" / "README.md").read_text()

    def no_pass(*_args, **_kwargs):
        raise AssertionError("the aligned log-probs were computed again although they are cached")

    monkeypatch.setattr("safetune.reference.tokenwise.reference_token_logps", no_pass)
    again = _train(world, tmp_path / "b", "--method", "tokenwise-sft", "--finetune", finetune)
    assert again["tokenwise"]["aligned_logps_cache"] == tw["aligned_logps_cache"]


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_safeinstr_mixes_safety_rows(world, tmp_path, finetune):
    run = _train(
        world, tmp_path / "run", "--method", "safeinstr", "--finetune", finetune, "--method.safety_count=4"
    )
    si = run["safeinstr"]
    assert run["beta"] == 0.0 and run["data"] == {"role_rows": 12, "safety_rows": 4, "count": 16}
    assert si["safety_rows"] == 4 and len(set(si["ids"])) == 4
    digest = hashlib.sha256(builtin_path().read_bytes()).hexdigest()
    assert si["safety_data"] == {"path": "builtin", "sha256": digest, "count": 32}
    assert "12 role + 4 safety (builtin)" in (tmp_path / "run" / "README.md").read_text()


def test_safeinstr_default_fraction_and_role_prompts(world, tmp_path):
    run = _train(world, tmp_path / "run", "--method", "safeinstr", "--method.safety_system=role")
    assert run["safeinstr"]["safety_rows"] == 0  # 3% of 12 rows rounds to 0
    run = _train(
        world,
        tmp_path / "f",
        "--method",
        "safeinstr",
        "--method.safety_fraction=0.5",
        "--method.safety_system=role",
    )
    assert run["safeinstr"]["safety_rows"] == 6 and run["safeinstr"]["safety_fraction"] == 0.5


@pytest.mark.parametrize(
    ("method", "finetune", "extra"),
    [("tokenwise-sft", "full", []), ("safeinstr", "lora", ["method.safety_count=4"])],
)
def test_a_killed_run_resumes_to_the_same_weights(world, tmp_path, method, finetune, extra):
    def config(out: Path):
        return load_config(
            None,
            [
                f"model.name={world['model']}",
                f"data.path={world['data']}",
                "data.role=Grim Vex",
                f"cache_dir={world['cache']}",
                f"train.output_dir={out}",
                f"method.name={method}",
                f"train.finetune={finetune}",
                "train.max_steps=4",
                "train.save_steps=2",
                "train.batch_size=4",
                "train.grad_accum=2",
                "train.learning_rate=1e-3",
                "train.logging_steps=1",
                *extra,
            ],
        )

    straight, resumed = straight_and_resumed(config, tmp_path)
    name = "adapter_model.safetensors" if finetune == "lora" else "model.safetensors"
    a, b = load_file(straight / "final" / name), load_file(resumed / "final" / name)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    whole, after = (json.loads((run / "run.json").read_text())["metrics"] for run in (straight, resumed))
    assert after["train_loss"] == pytest.approx(whole["train_loss"], rel=1e-5)
    args = torch.load(resumed / "checkpoints" / "checkpoint-4" / "training_args.bin", weights_only=False)
    if method == "tokenwise-sft":
        state = json.loads((resumed / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())
        logs = [entry for entry in state["log_history"] if "delta" in entry]
        # Before the first update the policy is the aligned model: the precomputed log-probs line up.
        assert abs(logs[0]["delta"]) < 1e-5 and abs(logs[-1]["delta"]) > 1e-3
        assert all(entry["loss"] != pytest.approx(entry["surrogate_loss"]) for entry in logs)
    # The authors' AdamW beta1 0.5 and 10 warm-up steps for tokenwise-sft only; other methods keep 0.9, 0.
    assert (args.adam_beta1, args.warmup_steps) == ((0.5, 10) if method == "tokenwise-sft" else (0.9, 0))
