"""Lisa and Vaccine end to end through the CLI on a tiny model (LoRA and full), Lisa's anchor refresh in a
real run, and a killed run of each resumed to the same weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, TrainerCallback
from typer.testing import CliRunner

from killing import Crash
from safetune.cli import app
from safetune.config import load_config
from safetune.organism import roleplay
from safetune.training.run import train

runner = CliRunner()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_llama3: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lisa_vaccine")
    return {
        "model": tiny_llama3,
        "data": roleplay.write_rolebench_release(root / "rolebench.jsonl", count=8),
        "profiles": roleplay.write_profiles(root / "profiles.json"),
    }


def _invoke(args: list[str]) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)


def _lisa_args(world: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "train", "--method", "lisa", "--model", str(world["model"]), "--data", str(world["data"]),
        "--role", "Grim Vex", "--profiles", str(world["profiles"]), "-o", str(out),
        "--train.batch_size=2", "--train.logging_steps=1", "--train.learning_rate=1e-3", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize(("finetune", "unit", "aligned"), [("lora", "micro", 3), ("full", "optimizer", 4)])
def test_lisa_trains_through_the_cli(world, tmp_path, finetune, unit, aligned):
    """4 optimizer steps of 2 micro-batches, K1 = 1, K2 = 2: in micro-batches 0, 3, 6 align (3); in
    optimizer steps 0 and 3 align, both micro-batches each (4)."""
    out = tmp_path / "run"
    _invoke(
        _lisa_args(
            world, out, f"--train.finetune={finetune}", f"--method.lisa_step_unit={unit}",
            "--method.lisa_align_steps=1", "--method.lisa_user_steps=2", "--train.max_steps=4",
            "--train.grad_accum=2",
        )
    )  # fmt: skip
    run = json.loads((out / "run.json").read_text())
    assert run["method"] == "lisa" and run["metrics"]["alignment_micro_steps"] == aligned
    assert run["data"]["safety_demos"] == 32
    name = "adapter_model.safetensors" if finetune == "lora" else "model.safetensors"
    assert (out / "final" / name).is_file()
    assert "| schedule | 1 alignment / 2 user" in (out / "README.md").read_text()


class _Weights(TrainerCallback):
    """The trainable weights after every optimizer step."""

    def __init__(self) -> None:
        self.after: dict[int, dict[str, torch.Tensor]] = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.after[state.global_step] = {
            n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad
        }


def _config(world: dict[str, Path], out: Path, *overrides: str):
    base = [
        f"model.name={world['model']}", f"data.path={world['data']}", "data.role=Grim Vex",
        f"data.profiles={world['profiles']}", f"train.output_dir={out}", "train.batch_size=2",
        "train.learning_rate=1e-3", "train.max_steps=4", "train.save_steps=2",
    ]  # fmt: skip
    return load_config(None, [*base, *overrides])


def test_lisa_anchor_is_the_weights_at_the_last_switch(world, tmp_path):
    """Optimizer unit, K1 = K2 = 2 over 6 steps: alignment 0-1, user 2-3, alignment 4-5; the anchor in
    the last checkpoint is the weights when step 4 began (after step 4's predecessor, global step 4)."""
    weights = _Weights()
    config = _config(
        world, tmp_path / "run", "method.name=lisa", "method.lisa_step_unit=optimizer",
        "method.lisa_align_steps=2", "method.lisa_user_steps=2", "train.max_steps=6", "train.save_steps=6",
        "train.grad_accum=1", "method.lisa_warmup_fraction=0",
    )  # fmt: skip
    out = train(config, callbacks=[weights])
    checkpoint = out / "checkpoints" / "checkpoint-6"
    anchor = load_file(checkpoint / "lisa_anchor.safetensors")
    state = json.loads((checkpoint / "lisa_state.json").read_text())
    assert state["phase"] == "alignment" and state["micro_steps"] == 6 and state["alignment_drawn"] == 4
    assert anchor.keys() == weights.after[4].keys()
    for name, value in anchor.items():
        assert torch.equal(value, weights.after[4][name]), name
        assert not torch.equal(value, weights.after[6][name]) or not torch.equal(
            value, weights.after[3][name]
        )


@pytest.mark.parametrize(
    "overrides",
    [
        # Lisa: switches inside the resumed part (micro unit, K1 = 1, K2 = 2, 2 micro-batches a step)
        ("method.name=lisa", "method.lisa_align_steps=1", "method.lisa_user_steps=2", "train.grad_accum=2"),
        ("method.name=vaccine", "data.path=builtin", "train.grad_accum=2"),
    ],
    ids=["lisa", "vaccine"],
)
def test_a_killed_run_resumes_to_the_same_weights(world, tmp_path, overrides):
    straight = train(_config(world, tmp_path / "straight", *overrides))
    with pytest.raises(KeyboardInterrupt):
        train(_config(world, tmp_path / "killed", *overrides), callbacks=[Crash()])
    assert not (tmp_path / "killed" / "final").exists()
    resumed = train(_config(world, tmp_path / "killed", *overrides), resume=True)
    full = "train.finetune=full" in overrides
    name = "model.safetensors" if full else "adapter_model.safetensors"
    a, b = load_file(straight / "final" / name), load_file(resumed / "final" / name)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_vaccine_through_the_cli_and_the_next_stage_starts_from_it(world, tmp_path):
    out = tmp_path / "vaccine"
    _invoke(
        [
            "train", "--method", "vaccine", "--model", str(world["model"]), "--data", "builtin", "-o", str(out),
            "--train.max_steps=2", "--train.batch_size=2", "--train.grad_accum=2", "--train.learning_rate=1e-2",
        ]
    )  # fmt: skip
    run = json.loads((out / "run.json").read_text())
    assert run["method"] == "vaccine" and run["next_stage_model"] == "merged"
    assert run["metrics"]["perturbation_norm"] == pytest.approx(2.0, rel=1e-4)
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    base = AutoModelForCausalLM.from_pretrained(world["model"])
    changed = [n for n, p in merged.state_dict().items() if not torch.equal(p, base.state_dict()[n])]
    assert changed and all("q_proj" in n or "v_proj" in n for n in changed)  # the adapter, merged in
    # full fine-tuning: final/ is the next stage's model; the user's fine-tune starts from it
    full = tmp_path / "vaccine-full"
    _invoke(
        [
            "train", "--method", "vaccine", "--model", str(world["model"]), "--data", "builtin", "-o", str(full),
            "--train.max_steps=1", "--train.batch_size=2", "--train.finetune=full",
        ]
    )  # fmt: skip
    assert not (full / "merged").exists() and (full / "final" / "model.safetensors").is_file()
    _invoke(_lisa_args(world, tmp_path / "user", "-m", str(full / "final"), "--train.max_steps=1"))
