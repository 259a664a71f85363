"""bench/gpu_suite.py: `--size tiny` runs on the CPU in seconds and writes every section; `--size 8b`
without a CUDA GPU stops with one `error:` line and exit status 2."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SUITE = ROOT / "bench" / "gpu_suite.py"


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": path}
    return subprocess.run(
        [sys.executable, str(SUITE), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.mark.slow  # the whole suite on the tiny model: ~25 s
def test_tiny_suite_writes_every_section(tmp_path: Path) -> None:
    out = tmp_path / "suite.json"
    proc = _run("--size", "tiny", "--threads", "1", "--out", str(out), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["size"] == "tiny"
    assert result["machine"]["threads"] == 1 and result["machine"]["versions"]["trl"]
    step = result["train_step"]
    assert step["same_batch"] is True
    for name in ("sft", "sarft"):
        assert len(step[name]["steps_s"]) == result["settings"]["steps"]
        assert all(_positive(s) for s in step[name]["steps_s"])
        assert _positive(step[name]["median_s"])
    assert step["sarft"]["reference_rows"] > 0  # the SaRFT step really ran the reference
    assert _positive(step["ratio_sarft_sft"])
    assert (
        result["settings"]["row_tokens"] == [result["settings"]["seq_len"]] * result["settings"]["batch_size"]
    )
    rds = result["rds"]
    assert rds["examples"] == 16 and _positive(rds["seconds"]) and _positive(rds["examples_per_min"])
    hf = result["generation"]["hf"]
    assert hf["prompts"] == 8 and all(_positive(hf[k]) for k in ("tokens", "seconds", "tokens_per_s"))
    if torch.cuda.is_available():
        assert _positive(result["memory"]["ratio_sarft_sft"])
    else:
        assert result["memory"]["skipped"].startswith("n/a on CPU")
        assert result["vllm"]["skipped"]  # never a made-up figure
        assert "skipped: " in proc.stdout and "n/a on CPU" in proc.stdout
        sharded = result["sharded_training"]
        assert set(sharded) == {"fsdp-full", "fsdp-lora", "zero2-full", "zero3-full"}
        assert all(run["skipped"].startswith("needs CUDA GPUs") for run in sharded.values())
    defences = result["decoding_defences"]
    assert defences["prompts"] == 8 and defences["naive_prompts"] == 2
    for name in ("rose", "self-cd", "safedecoding"):
        run = defences[name]
        assert run["engine"]["prompts"] == 8 and run["naive"]["prompts"] == 2
        assert run["engine"]["tokens"] > 0 and run["identical_ids"] == "2/2"  # fp32 on a CPU: exact
        for key in ("engine_over_naive_prompts_per_s", "defended_over_hf_same_prefill"):
            assert _positive(run[key]["min"]) and _positive(run[key]["median"])
        assert f"defence {name}" in proc.stdout
    assert "hf_defence_prompt" in defences["rose"] and "hf_defence_prompt" not in defences["safedecoding"]
    assert "SaRFT / SFT" in proc.stdout and f"wrote {out}" in proc.stdout
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically: no temp file left


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_8b_without_cuda_exits_2(tmp_path: Path) -> None:
    out = tmp_path / "suite.json"
    proc = _run("--size", "8b", "--out", str(out), timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len([line for line in lines if line.startswith("error:")]) == 1
    assert lines[-1].startswith("error:") and "CUDA" in lines[-1]
    assert not out.exists()
