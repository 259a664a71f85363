"""Data-parallel training for real: two CPU processes (gloo) under torchrun and accelerate launch train
like one process at the same global batch, write the run folder once, and survive a killed rank.

Why the curves can match: at 2 per device x 2 processes the Trainer's sampler draws one seeded
permutation on every rank (accelerate's SeedableRandomSampler, data_seed), and accelerate hands the
per-device batches of it out in turn (BatchSamplerShard, split_batches=False): global step k is rows
4k..4k+3 of the permutation, rank 0 holding the first two and rank 1 the last two, exactly the batch
of 4 that one process draws at step k. Every loss here is a mean over rows (SaRFT/SFT: each row's
token mean; MPO: the pairs' mean), and DDP averages the two ranks' gradients, so the step is the same
up to float summation order: the tolerances below are float32 rounding, not a modelling difference
(observed: SaRFT/SFT losses to 1e-7 relative; MPO's loss, ~1e-3 and a difference of larger terms, to
2e-8 absolute; weights to ~2e-8). Dropout is off (train.lora_dropout=0).

The slow tier: each launch starts two processes that import torch and transformers (~20 s each on
two cores)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from launching import Launch, launch
from safetune.cli import app
from safetune.organism import roleplay

pytestmark = pytest.mark.slow

runner = CliRunner()
METHODS = ("sarft", "sft", "mpo")
EXAMPLES = 32  # at 2 per device x 2 processes: 8 global steps in the epoch
PROMPTS = 10  # evaluated
LOSS_RTOL, LOSS_ATOL = 1e-5, 1e-7
WEIGHT_ATOL = 1e-6


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_llama3: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("multi_process")
    return {
        "root": root,
        "model": tiny_llama3,
        "roles": roleplay.write_rolebench_release(root / "rolebench.jsonl", count=EXAMPLES),
        "profiles": roleplay.write_profiles(root / "profiles.json"),
        "pairs": _parallel_pairs(root / "pairs.jsonl"),
        "cache": root / "cache",
    }


def _parallel_pairs(path: Path) -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(EXAMPLES):
            prompt = f"how do i pick lock number {i} ?"
            row = {
                "id": f"p{i}",
                "language": "xx",
                "dominant": {"prompt": prompt, "chosen": "i cannot help .", "rejected": f"sure : {prompt}"},
                "target": {"prompt": f"@{prompt}", "chosen": "@i @cannot .", "rejected": f"@sure : {prompt}"},
            }
            handle.write(json.dumps(row) + "\n")
    return path


def _train(world: dict[str, Path], method: str, out: Path, batch_size: int, *extra: str) -> list[str]:
    if method == "mpo":
        data = ["--data", str(world["pairs"])]
    else:
        data = ["--data", str(world["roles"]), "--role", "Grim Vex", "--profiles", str(world["profiles"])]
    return [
        "train",
        "-m",
        str(world["model"]),
        *data,
        "--method",
        method,
        "-o",
        str(out),
        f"--cache_dir={world['cache']}",
        f"--train.batch_size={batch_size}",
        "--train.grad_accum=1",
        "--train.num_epochs=1",
        "--train.logging_steps=1",
        "--train.save_steps=8",
        "--train.lora_dropout=0",
        *extra,
    ]


def _eval(world: dict[str, Path], out: Path) -> list[str]:
    args = ["eval", "-m", str(world["model"]), "--benchmarks", "overrefusal", "--limit", str(PROMPTS)]
    return [*args, "--backend", "hf", "--judge", "keyword", "-o", str(out), "--generation.max_new_tokens=8"]


@pytest.fixture(scope="module")
def two_processes(world: dict[str, Path]) -> tuple[dict[str, Path], Launch]:
    """sarft, sft and mpo at 2 per device, and an evaluation, in one torchrun launch of two processes."""
    outs = {method: world["root"] / "two" / method for method in METHODS}
    outs["eval"] = world["root"] / "two" / "eval"
    commands = [*(_train(world, m, outs[m], 2) for m in METHODS), _eval(world, outs["eval"])]
    result = launch(commands, world["root"])
    assert result.returncode == 0, result.stderr[-3000:]
    return outs, result


@pytest.fixture(scope="module")
def one_process(world: dict[str, Path], two_processes: object) -> dict[str, Path]:
    """The same runs at 4 per device in this process (after the launch: its main process fills the
    caches, which these runs then read)."""
    outs = {method: world["root"] / "one" / method for method in METHODS}
    outs["eval"] = world["root"] / "one" / "eval"
    for method in METHODS:
        result = runner.invoke(app, _train(world, method, outs[method], 4))
        assert result.exit_code == 0, result.output + repr(result.exception)
    result = runner.invoke(app, _eval(world, outs["eval"]))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return outs


def _losses(out: Path) -> list[float]:
    state = json.loads((out / "checkpoints" / "checkpoint-8" / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    (weights,) = [p for p in (out / "final").iterdir() if p.suffix == ".safetensors"]
    return load_file(str(weights))


def _max_difference(a: Path, b: Path) -> float:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


@pytest.mark.parametrize("method", METHODS)
def test_two_processes_train_like_one_at_the_same_global_batch(two_processes, one_process, method):
    two, one = two_processes[0][method], one_process[method]
    metrics = [json.loads((out / "run.json").read_text())["metrics"] for out in (two, one)]
    assert metrics[0]["global_step"] == metrics[1]["global_step"] == 8
    if method == "sarft":  # the rows the reference ran on, counted over both ranks
        assert metrics[0]["reference_rows"] == metrics[1]["reference_rows"] > 0
    assert len(_losses(two)) == 8
    assert _losses(two) == pytest.approx(_losses(one), rel=LOSS_RTOL, abs=LOSS_ATOL)
    assert _max_difference(two, one) <= WEIGHT_ATOL


def test_the_main_process_alone_writes_the_run_and_the_caches(world, two_processes):
    outs, result = two_processes
    assert "Traceback" not in result.stderr
    # Each command's result line comes from the main process only.
    assert result.stdout.count("done: weights in") == len(METHODS)
    for out in (outs[method] for method in METHODS):
        assert (out / "final").is_dir() and not (out / "final.tmp").exists()
        assert {"config.yaml", "identity.json", "run.json", "README.md"} <= {p.name for p in out.iterdir()}
    # One RDS score file (sarft and sft share it) and one MPO reference: computed once, by rank 0.
    assert len(list((world["cache"] / "rds").glob("*.jsonl"))) == 1
    assert len(list((world["cache"] / "mpo").glob("*.safetensors"))) == 1


def test_accelerate_launch_trains_data_parallel_on_the_cpu(world, one_process):
    out = world["root"] / "accelerate" / "sarft"
    result = launch([_train(world, "sarft", out, 2)], world["root"], launcher="accelerate")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "run.json").read_text())["metrics"]["global_step"] == 8
    assert _max_difference(out, one_process["sarft"]) <= WEIGHT_ATOL


def test_a_killed_rank_leaves_a_run_that_resumes_under_two_processes(world, two_processes):
    out = world["root"] / "killed"
    args = _train(world, "sarft", out, 2, "--train.save_steps=2")
    # Rank 1 dies at step 5 (after the step-4 checkpoint); torchrun then stops rank 0.
    killed = launch([args], world["root"], env={"SAFETUNE_TEST_KILL": "1:5"})
    assert killed.returncode != 0
    assert not (out / "final").exists() and (out / "checkpoints" / "checkpoint-4").is_dir()
    resumed = launch([[*args, "--resume"]], world["root"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((out / "run.json").read_text())["metrics"]["global_step"] == 8
    assert _max_difference(out, two_processes[0]["sarft"]) <= WEIGHT_ATOL


def test_eval_generation_is_split_across_two_processes(two_processes, one_process):
    two, one = two_processes[0]["eval"], one_process["eval"]
    # Each rank answered every other request into its own shard; the main process appended the shards
    # in rank order and removed them: rank 0's requests (1st, 3rd, ...), then rank 1's.
    rows = [json.loads(line) for line in (two / "completions.jsonl").read_text().splitlines()]
    requests = [json.loads(line)["id"] for line in (two / "requests.jsonl").read_text().splitlines()]
    half = PROMPTS // 2
    assert {row["id"] for row in rows[:half]} == set(requests[0::2])
    assert {row["id"] for row in rows[half:]} == set(requests[1::2])
    assert not list(two.glob("completions.rank-*.jsonl"))
    texts = {row["id"]: row["text"] for row in rows}
    alone = [json.loads(line) for line in (one / "completions.jsonl").read_text().splitlines()]
    assert texts == {row["id"]: row["text"] for row in alone}  # greedy: the same answers
    results = [json.loads((folder / "results.json").read_text()) for folder in (two, one)]
    assert results[0]["benchmarks"] == results[1]["benchmarks"]
    assert results[0]["provenance"]["counts"]["generated_now"] == PROMPTS
    # One results table on stdout: the main process's.
    assert two_processes[1].stdout.count("results:") == 1
