"""The sharded-training section of bench/gpu_suite.py: `safetune train` (SaRFT, 4 steps, a tiny model)
under `accelerate launch` with each shipped sharding config, one process per CUDA GPU:

    fsdp-full    configs/accelerate/fsdp.yaml, full fine-tuning (frozen reference copy)
    fsdp-lora    configs/accelerate/fsdp.yaml, LoRA (the reference is the adapter-disabled policy)
    zero2-full   configs/accelerate/deepspeed_zero2.yaml (needs deepspeed)
    zero3-full   configs/accelerate/deepspeed_zero3.yaml (needs deepspeed)

Each records whether it exited 0 with `final/` written and the data-parallel step count, and its wall
time; a run that cannot start here says why (`{"skipped": reason}`), never a made-up figure. Without a
CUDA GPU every run is skipped: accelerate shards models only across GPUs, and safetune refuses FSDP and
DeepSpeed on CPU processes (docs/scaling.md).

Run on its own as: python bench/sharded_training.py   (prints the JSON record)
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RUNS = {
    "fsdp-full": ("fsdp.yaml", "full"),
    "fsdp-lora": ("fsdp.yaml", "lora"),
    "zero2-full": ("deepspeed_zero2.yaml", "full"),
    "zero3-full": ("deepspeed_zero3.yaml", "full"),
}
STEPS = 4
PER_DEVICE = 2


def sharded_training(timeout_s: float = 600) -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        reason = "needs CUDA GPUs: accelerate shards models (FSDP, DeepSpeed) only across GPUs"
        return {name: {"skipped": reason} for name in RUNS}
    gpus = torch.cuda.device_count()
    deepspeed = importlib.util.find_spec("deepspeed") is not None
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="sharded-") as tmp:
        world = _world(Path(tmp))
        for name, (accelerate_config, finetune) in RUNS.items():
            if accelerate_config.startswith("deepspeed") and not deepspeed:
                result[name] = {"skipped": "deepspeed is not installed"}
                continue
            result[name] = _launch(world, Path(tmp) / name, accelerate_config, finetune, gpus, timeout_s)
    return result


def _world(root: Path) -> dict[str, Path]:
    from safetune.models.tiny import build_tiny_model, default_corpus
    from safetune.organism import roleplay

    return {
        "model": build_tiny_model(root / "model", default_corpus(), template="llama3", vocab_size=512),
        "data": roleplay.write_rolebench_release(root / "roles.jsonl", count=32),
        "profiles": roleplay.write_profiles(root / "profiles.json"),
    }


def _launch(
    world: dict[str, Path], out: Path, accelerate_config: str, finetune: str, gpus: int, timeout_s: float
) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ROOT / "configs" / "accelerate" / accelerate_config),
        f"--num_processes={gpus}",
        "-m",
        "safetune.cli",
        "train",
        *("-m", str(world["model"]), "--data", str(world["data"]), "--role", "Grim Vex"),
        *("--profiles", str(world["profiles"]), "--method", "sarft", "--finetune", finetune, "-o", str(out)),
        f"--cache_dir={out.parent / 'cache'}",
        f"--train.batch_size={PER_DEVICE}",
        "--train.grad_accum=1",
        f"--train.max_steps={STEPS}",
        "--train.precision=bf16",
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
    }
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout_s:.0f} s", "processes": gpus}
    wall = time.perf_counter() - start
    record: dict[str, Any] = {"processes": gpus, "wall_s": wall, "returncode": proc.returncode}
    run_json = out / "run.json"
    if proc.returncode == 0 and run_json.is_file() and (out / "final").is_dir():
        record["global_step"] = json.loads(run_json.read_text(encoding="utf-8"))["metrics"]["global_step"]
        record["ok"] = record["global_step"] == STEPS
    else:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        record["ok"] = False
        record["error"] = " | ".join(lines[-3:])[-600:]
    return record


if __name__ == "__main__":
    print(json.dumps(sharded_training(), indent=2))
