"""Distributions over many demo runs (seeds x thread counts): bench/demo_sweep.py, bench/demo_mpo_sweep.py."""

from __future__ import annotations

from typing import Any


def spread(values: list[float], digits: int = 1) -> str:
    """median [min–max] of `values`."""
    ordered = sorted(values)
    mid = len(ordered) // 2
    median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    return f"{median:.{digits}f} [{ordered[0]:.{digits}f}–{ordered[-1]:.{digits}f}]"


def distribution_markdown(
    summaries: dict[int, list[dict[str, Any]]],
    row_key: Any,
    fields: dict[str, tuple[str, int]],
    effects: dict[str, Any] | None = None,
) -> list[str]:
    """Markdown tables over many demo runs, one column per thread count: how often each check held
    (k/n) and median [min–max] of every figure. `summaries` maps a thread count to that count's
    summary.json contents (one per seed); `row_key(row)` names a row (e.g. "Grim Vex SaRFT"); `fields`
    maps a row field to (column title, decimals); `effects` maps a headline effect's title to a function
    of one summary's rows (e.g. base minus SaRFT refusal), tabulated the same way."""
    threads = sorted(summaries)
    head = "| " + " | ".join(f"{t} thread{'s' if t > 1 else ''}" for t in threads) + " |"
    lines = ["| check | " + head[2:], "|---|" + "---:|" * len(threads)]
    claims = [c[0] for c in next(iter(summaries.values()))[0]["checks"]]
    for i, claim in enumerate(claims):
        cells = []
        for t in threads:
            outcomes = [s["checks"][i][2] for s in summaries[t]]
            held = sum(bool(ok) for ok in outcomes)
            cells.append("reported" if all(ok is None for ok in outcomes) else f"{held}/{len(outcomes)}")
        lines.append(f"| {claim} | " + " | ".join(cells) + " |")
    if effects:
        lines += ["", "| headline effect | " + head[2:], "|---|" + "---:|" * len(threads)]
        for title, effect in effects.items():
            cells = [spread([float(effect(s["rows"])) for s in summaries[t]]) for t in threads]
            lines.append(f"| {title} | " + " | ".join(cells) + " |")
    lines += ["", "| model | figure | " + head[2:], "|---|---|" + "---:|" * len(threads)]
    names = list(dict.fromkeys(row_key(r) for r in next(iter(summaries.values()))[0]["rows"]))
    for name in names:
        for field_name, (title, digits) in fields.items():
            cells = []
            for t in threads:
                values = [
                    r[field_name]
                    for s in summaries[t]
                    for r in s["rows"]
                    if row_key(r) == name and r.get(field_name) is not None
                ]
                cells.append(spread(values, digits) if values else "–")
            if any(c != "–" for c in cells):
                lines.append(f"| {name} | {title} | " + " | ".join(cells) + " |")
    return lines
