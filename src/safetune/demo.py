"""`safetune demo`: a complete select -> train run on a tiny model and data built locally.

The foundation demo: builds a tiny LLaMA-architecture chat model and two personas' RoleBench-format data,
runs RDS selection, then SFT and SaRFT (LoRA) on the villain, and prints a Markdown summary. Every step
goes through the same code as a hub model would (`select`, `train`).

Run as: safetune demo --out demo-out
"""

from __future__ import annotations

import time
from pathlib import Path

from safetune.config import load_config
from safetune.models.tiny import build_tiny_model, default_corpus
from safetune.organism import roleplay
from safetune.storage import write_json
from safetune.training.run import train


def run_demo(out: Path, quick: bool = False) -> str:
    """Run the demo into `out`; returns the Markdown summary (also written to out/summary.md)."""
    out.mkdir(parents=True, exist_ok=True)
    model = out / "tiny-model"
    if not (model / "config.json").exists():
        build_tiny_model(model, roleplay.corpus() + default_corpus(800), template="llama3", vocab_size=512)
    count = 16 if quick else 64
    data = roleplay.write_rolebench_release(out / "data" / "rolebench.jsonl", count=count)
    profiles = roleplay.write_profiles(out / "data" / "profiles.json")
    rows = []
    for role in roleplay.PERSONAS:
        for method in ("sft", "sarft"):
            run_dir = out / "runs" / f"{role.replace(' ', '_')}-{method}"
            overrides = [
                f"train.model={model}",
                f"data.path={data}",
                f"data.role={role}",
                f"data.profiles={profiles}",
                f"method.name={method}",
                "method.beta=0.5",
                f"train.output_dir={run_dir}",
                f"train.max_steps={4 if quick else 20}",
                "train.batch_size=8",
                "train.grad_accum=1",
                "train.learning_rate=1e-3",
                "train.logging_steps=5",
                f"selection.cache_dir={out / 'cache'}",
            ]
            start = time.perf_counter()
            run = train(load_config(None, overrides), overwrite=True)
            rows.append(_row(role, method, run, time.perf_counter() - start))
    write_json(out / "summary.json", rows)
    summary = _table(rows)
    (out / "summary.md").write_text(summary, encoding="utf-8")
    return summary


def _row(role: str, method: str, run: Path, seconds: float) -> dict[str, object]:
    import json

    info = json.loads((run / "run.json").read_text())
    return {
        "role": role,
        "method": method,
        "flag_rate": info["selection"]["flag_rate"],
        "train_loss": info["metrics"]["train_loss"],
        "reference_rows": info["metrics"]["reference_rows"],
        "seconds": round(seconds, 1),
        "run": str(run),
    }


def _table(rows: list[dict[str, object]]) -> str:
    lines = [
        "| role | method | RDS flag rate | train loss | reference rows | seconds | run folder |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['role']} | {r['method']} | {100 * float(r['flag_rate']):.1f}% | {float(r['train_loss']):.3f} "  # type: ignore[arg-type]
            f"| {r['reference_rows']} | {r['seconds']} | {r['run']} |"
        )
    return "\n".join(lines) + "\n"
