"""What both demos share: the pinned thread count, config overrides, step timing, the checks table and
the summary files (summary.json, summary.md)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from safetune.storage import atomic_open, write_json

log = logging.getLogger(__name__)

# The demos pin torch's CPU thread count: float reductions, and so every number of a run, depend on it.
DEMO_THREADS = 2


def json_override(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value)}"


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
