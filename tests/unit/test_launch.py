"""What a multi-process launch changes, checked in one process by setting the launcher's environment
(WORLD_SIZE, RANK): shards, the commands that refuse it, FSDP/DeepSpeed without GPUs, and evaluation
shards left by a killed launch. The launches themselves: tests/integration/test_multi_process.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from safetune.cli import MULTI_PROCESS_COMMANDS, app
from safetune.config import load_config
from safetune.errors import ConfigError
from safetune.evaluation.runner import evaluate
from safetune.launch import is_main_process, shard, uses_cpu_processes

runner = CliRunner()


def test_shards_hold_each_item_once_in_a_stable_order(monkeypatch):
    items = list(range(7))
    monkeypatch.setenv("WORLD_SIZE", "3")
    parts = []
    for rank in range(3):
        monkeypatch.setenv("RANK", str(rank))
        parts.append(shard(items))
    assert parts == [[0, 3, 6], [1, 4], [2, 5]]
    assert not is_main_process()
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("RANK")
    assert shard(items) == items and is_main_process()


@pytest.mark.parametrize(
    "args",
    [
        ["select", "-m", "nowhere", "-o", "sel"],
        ["reward-gap", "--data", "x.json", "-o", "gap"],
        ["safelora", "run", "--unaligned", "u", "-o", "out"],
        ["demo", "--quick"],
        ["organism"],
        ["tiny-model", "tiny"],
    ],
    ids=lambda args: args[0],
)
def test_single_process_commands_refuse_a_multi_process_launch(tmp_path, args):
    result = runner.invoke(app, args, env={"WORLD_SIZE": "2", "RANK": "0"})
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"error: safetune {args[0]} runs in one process") and "WORLD_SIZE" in line
    assert not any(tmp_path.iterdir())
    assert {"train", "eval"} == MULTI_PROCESS_COMMANDS


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path")
@pytest.mark.parametrize("variable", ["ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"])
def test_fsdp_and_deepspeed_on_cpu_processes_stop_instead_of_training_plain_ddp(monkeypatch, variable):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert uses_cpu_processes()
    monkeypatch.setenv(variable, "true")
    with pytest.raises(ConfigError, match=r"CUDA GPUs.*cpu_2proc\.yaml"):
        uses_cpu_processes()


def test_eval_with_vllm_refuses_a_multi_process_launch(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    overrides = [f"eval.model={tmp_path}", "eval.benchmarks=[overrefusal]", f"eval.output_dir={tmp_path}/ev"]
    config = load_config(None, [*overrides, "generation.backend=vllm"])
    with pytest.raises(ConfigError, match="vllm runs in one process"):
        evaluate(config)


def test_completion_shards_a_killed_launch_left_are_kept_and_merged(tiny_chatml, tmp_path):
    def config(out: Path):
        overrides = [f"eval.model={tiny_chatml}", "eval.benchmarks=[overrefusal]", f"eval.output_dir={out}"]
        return load_config(None, [*overrides, "eval.limit=6", "generation.backend=mock", "eval.bootstrap=20"])

    whole = json.loads(evaluate(config(tmp_path / "whole")).read_text())
    # The folder as a killed two-process launch leaves it: each rank's answers in its shard, unmerged.
    out = tmp_path / "killed"
    evaluate(config(out))
    rows = (out / "completions.jsonl").read_text().splitlines()
    (out / "completions.jsonl").unlink()
    (out / "results.json").unlink()
    (out / "completions.rank-0.jsonl").write_text("".join(f"{row}\n" for row in rows[0::2]))
    (out / "completions.rank-1.jsonl").write_text("".join(f"{row}\n" for row in rows[1::2][:-1]))
    resumed = json.loads(evaluate(config(out)).read_text())
    assert resumed["provenance"]["counts"]["generated_now"] == 1  # only the one no shard held
    assert not list(out.glob("completions.rank-*.jsonl"))
    assert len((out / "completions.jsonl").read_text().splitlines()) == 6
    assert resumed["benchmarks"] == whole["benchmarks"]
