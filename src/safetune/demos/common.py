"""What both demos share: the pinned thread count, config overrides, step timing, the checks table and
the summary files (summary.json, summary.md)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Protocol

from safetune.storage import atomic_open, write_json

log = logging.getLogger(__name__)

# The demos pin torch's CPU thread count: float reductions, and so every number of a run, depend on it.
DEMO_THREADS = 2


def json_override(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value)}"


class Budget(Protocol):
    """A demo plan's fine-tuning budget: what every fine-tune of a demo shares."""

    # read-only (properties), so that the frozen plan dataclasses match
    @property
    def learning_rate(self) -> float: ...
    @property
    def lr_scheduler(self) -> str: ...
    @property
    def steps(self) -> int: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def seed(self) -> int: ...


def full_finetune_overrides(
    plan: Budget, model: Path, cache: Path, out: Path, logging_steps: int
) -> list[str]:
    """The `train` overrides of a demo fine-tune: full fine-tuning of `model` at the plan's budget and
    seed, fp32, no accumulation, into `out`, with the demo's cache."""
    return [
        json_override("model.name", str(model)),
        json_override("cache_dir", str(cache)),
        "train.finetune=full",
        f"train.learning_rate={plan.learning_rate}",
        f"train.lr_scheduler={plan.lr_scheduler}",
        f"train.max_steps={plan.steps}",
        f"train.batch_size={plan.batch_size}",
        "train.grad_accum=1",
        f"train.seed={plan.seed}",
        f"train.logging_steps={logging_steps}",
        "train.precision=fp32",
        json_override("train.output_dir", str(out)),
    ]


def timed(label: str, func: Any, *args: Any, **kwargs: Any) -> Any:
    start = time.perf_counter()
    result = func(*args, **kwargs)
    log.info("%s: %.1f s", label, time.perf_counter() - start)
    return result


# A check whose outcome is None is a direction the demo reports but cannot decide in miniature (the
# methods tie at the ceiling on this organism); docs/demo.md says why.
Check = tuple[str, str, bool | None]
NOT_DECIDABLE = "not decidable here (docs/demo.md)"


def checks_markdown(source: str, results: list[Check]) -> list[str]:
    """The "expected / measured / holds" table of a demo summary (preceded by a blank line)."""
    lines = ["", f"| expected ({source}) | measured | holds |", "|---|---|---|"]
    return lines + [
        f"| {claim} | {value} | {NOT_DECIDABLE if ok is None else 'yes' if ok else '**no**'} |"
        for claim, value, ok in results
    ]


def fmt(value: float | None, digits: int = 1) -> str:
    """A table cell: the value with `digits` decimals, or a dash when there is none."""
    return "–" if value is None else f"{value:.{digits}f}"


def machine_line(machine: dict[str, Any]) -> str:
    """One summary line: what a seed's numbers depend on besides the seed (docs/demo.md)."""
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v)
    return (
        f"Machine: {machine['threads']} torch thread(s), {machine['cpu']} "
        f"({machine['cpu_capability']}), Python {machine['python']}, {versions}. The same seed gives the "
        "same table on a machine with the same record; elsewhere float-level differences can move "
        "single prompts (the distribution over seeds is in docs/demo.md)."
    )


def write_summary(
    out: Path,
    markdown: str,
    plan: dict[str, Any],
    organism: Path,
    rows: list[dict[str, Any]],
    results: list[Check],
    start: float,
    machine: dict[str, Any],
) -> None:
    """out/summary.json (plan, organism, machine, rows, checks, seconds since `start`) and summary.md."""
    write_json(
        out / "summary.json",
        {
            "plan": plan,
            "organism": str(organism),
            "machine": machine,
            "rows": rows,
            "checks": [list(c) for c in results],
            "seconds": round(time.perf_counter() - start, 1),
        },
    )
    with atomic_open(out / "summary.md") as handle:
        handle.write(markdown)
