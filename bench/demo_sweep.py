"""`safetune demo` (or `safetune demo mpo`) over many seeds and thread counts: how often each check holds.

Each (thread count, seed) is one real `safetune demo --seed S --threads T` run in its own process (the
organism is built once per seed and thread count and cached). A run whose summary.json already exists
with the same plan is reused, so a killed sweep resumes. Prints, per thread count, each check's hold rate
(k/n) and median [min–max] of every figure, and writes them to <out>/distribution.md.

Run as:
    .venv/bin/python bench/demo_sweep.py --seeds 0-9 --threads 1,2 --jobs 2 --out runs/demo-sweep
    .venv/bin/python bench/demo_sweep.py --demo mpo --seeds 0-9 --threads 1,2 --jobs 2 --out runs/demo-mpo-sweep
    .venv/bin/python bench/demo_sweep.py --methods all --seeds 0-2 --threads 2 --jobs 2 --out runs/demo-methods \
        --docs docs/demo.md
    .venv/bin/python bench/demo_sweep.py --methods rose,self-cd,safedecoding --seeds 0-2 --threads 2 --jobs 2 \
        --out runs/demo-defences --docs docs/demo.md
(`--methods` also writes <out>/methods.md, the per-method table, and with `--docs` puts it between the
file's `<!-- METHODS -->` and `<!-- END METHODS -->` markers; with a decoding defence among the methods,
the defences' table, mean [min–max] over seeds with the over-refusal columns, goes to <out>/defences.md
and between `<!-- DEFENCES -->` and `<!-- END DEFENCES -->` instead.)
(`--jobs 2` runs two 1-thread demos side by side on a 2-core machine; runs with more threads run alone.)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from safetune.demos.distribution import distribution_markdown, spread
from safetune.demos.mpo import LABELS as MPO_LABELS
from safetune.demos.mpo import MpoDemoPlan
from safetune.demos.sarft import DemoPlan
from safetune.demos.variants import DEFAULT_VARIANTS, DEFENCE_NAMES, VARIANTS, parse_methods
from safetune.organism.base import OrganismConfig

FIELDS = {
    "sarft": {
        "refusal": ("refusal %", 1),
        "rolebench_avg": ("RoleBench avg", 1),
        "flag_rate": ("RDS flags %", 1),
    },
    "mpo": {
        "refusal_l1": ("refusal L1 %", 1),
        "refusal_l2": ("refusal L2 %", 1),
        "utility_l1": ("utility L1", 1),
        "utility_l2": ("utility L2", 1),
        "gap_l1": ("reward gap L1", 2),
        "gap_l2": ("reward gap L2", 2),
    },
}


def _value(rows: list[dict[str, Any]], field: str, variant: str, villain: bool | None = None) -> float:
    return next(
        float(r[field]) for r in rows if r["variant"] == variant and villain in (None, r.get("villain"))
    )


# The headline effects each demo claims, as numbers (the checks' thresholds in brackets).
EFFECTS: dict[str, dict[str, Any]] = {
    "sarft": {
        "villain: base minus SaRFT refusal, points (check: <= 10)": lambda rows: (
            _value(rows, "refusal", "base", True) - _value(rows, "refusal", "sarft", True)
        ),
        "villain: SFT minus SaRFT RoleBench avg, points (check: <= 3)": lambda rows: (
            _value(rows, "rolebench_avg", "sft", True) - _value(rows, "rolebench_avg", "sarft", True)
        ),
        "baker: base minus SFT refusal, points (check: <= 10)": lambda rows: (
            _value(rows, "refusal", "base", False) - _value(rows, "refusal", "sft", False)
        ),
        "villain: base minus SFT refusal, points (check: >= 50)": lambda rows: (
            _value(rows, "refusal", "base", True) - _value(rows, "refusal", "sft", True)
        ),
    },
    "mpo": {
        "MPO minus DPO L2 refusal, points (reported)": lambda rows: (
            _value(rows, "refusal_l2", "mpo") - _value(rows, "refusal_l2", "dpo")
        ),
        "MPO minus base L2 refusal, points (check: >= 50)": lambda rows: (
            _value(rows, "refusal_l2", "mpo") - _value(rows, "refusal_l2", "base")
        ),
        "MPO minus base L2 utility, points (check: within 3)": lambda rows: (
            _value(rows, "utility_l2", "mpo") - _value(rows, "utility_l2", "base")
        ),
        "MPO minus base L1 utility, points (check: within 3)": lambda rows: (
            _value(rows, "utility_l1", "mpo") - _value(rows, "utility_l1", "base")
        ),
        "DPO minus base L2 utility, points": lambda rows: (
            _value(rows, "utility_l2", "dpo") - _value(rows, "utility_l2", "base")
        ),
        "MPO minus DPO L2 utility, points (reported)": lambda rows: (
            _value(rows, "utility_l2", "mpo") - _value(rows, "utility_l2", "dpo")
        ),
    },
}


def _row_key(demo: str) -> Any:
    if demo == "mpo":
        return lambda r: MPO_LABELS[r["variant"]]
    return lambda r: f"{r['persona']} {VARIANTS[r['variant']].label}"


def _seeds(text: str) -> list[int]:
    if "-" in text:
        first, last = text.split("-")
        return list(range(int(first), int(last) + 1))
    return [int(s) for s in text.split(",")]


def _expected_plan(
    demo: str, seed: int, threads: int, beta: float | None, methods: str | None = None
) -> dict[str, Any]:
    """The plan `safetune demo DEMO --seed --threads [--beta] [--methods]` runs with today's code."""
    plan = (MpoDemoPlan if demo == "mpo" else DemoPlan).for_seed(seed, threads)
    if beta is not None:
        plan = replace(plan, **{"mpo_beta" if demo == "mpo" else "beta": beta})
    recorded = asdict(plan)
    if parse_methods(methods):
        recorded["methods"] = list(parse_methods(methods))
    return json.loads(json.dumps(recorded))


def _done(
    folder: Path, demo: str, seed: int, threads: int, beta: float | None, methods: str | None = None
) -> dict[str, Any] | None:
    """The finished run's summary, if it is the run today's code would make: the same plan and the same
    organism (its cache key hashes the world's text, so a changed world is a different run)."""
    path = folder / "summary.json"
    if not path.exists():
        return None
    summary = json.loads(path.read_text(encoding="utf-8"))
    plan = summary["plan"]
    if plan != _expected_plan(demo, seed, threads, beta, methods):
        return None
    if Path(summary["organism"]).name != OrganismConfig(**plan["organism"]).key():
        return None
    return summary


def _command(args: argparse.Namespace, seed: int, threads: int, folder: Path) -> list[str]:
    cmd = [sys.executable, "-m", "safetune.cli", "demo", args.demo, "--seed", str(seed)]
    cmd += ["--threads", str(threads), "--out", str(folder)]
    if args.cache_dir is not None:
        cmd += ["--cache-dir", str(args.cache_dir)]
    if args.beta is not None:
        cmd += ["--beta", str(args.beta)]
    if args.methods:
        cmd += ["--methods", args.methods]
    return cmd


def run_all(args: argparse.Namespace) -> dict[int, list[dict[str, Any]]]:
    """Every (threads, seed) demo, `--jobs` 1-thread runs at a time; returns the summaries."""
    todo = [(t, s) for t in args.threads for s in args.seeds]
    running: list[tuple[subprocess.Popen[bytes], int, int, Path]] = []
    results: dict[int, list[dict[str, Any]]] = {t: [] for t in args.threads}
    while todo or running:
        for proc, t, s, folder in list(running):
            if proc.poll() is None:
                continue
            running.remove((proc, t, s, folder))
            summary = _done(folder, args.demo, s, t, args.beta, args.methods)
            if proc.returncode != 0 or summary is None:
                sys.exit(f"demo seed {s} threads {t} failed (exit {proc.returncode}): see {folder}.log")
            results[t].append(summary)
            print(
                f"seed {s}, {t} thread(s): {sum(c[2] is True for c in summary['checks'])}/{sum(c[2] is not None for c in summary['checks'])} checks hold",
                flush=True,
            )
        busy = sum(t for _, t, _, _ in running)
        while todo and (not running or busy + todo[0][0] <= args.jobs):
            t, s = todo.pop(0)
            folder = args.out / f"threads-{t}" / f"seed-{s}"
            summary = _done(folder, args.demo, s, t, args.beta, args.methods)
            if summary is not None:
                results[t].append(summary)
                continue
            if args.no_run:
                continue
            folder.parent.mkdir(parents=True, exist_ok=True)
            # The child keeps its own copy of the descriptor; the parent's closes at once.
            with open(f"{folder}.log", "wb") as log:
                proc = subprocess.Popen(_command(args, s, t, folder), stdout=log, stderr=log)
            running.append((proc, t, s, folder))
            busy += t
        time.sleep(1)
    return results


def row_cell(
    summaries: list[dict[str, Any]],
    variant: str,
    villain: bool | None,
    field: str,
    summarise: Callable[[list[float], int], str],
) -> str:
    """One cell over seeds: `field` of `variant`'s rows (the villain's, the baker's, or both when
    `villain` is None) summarised by `summarise` (seconds without decimals); "–" when no row has it."""
    values = [
        float(r[field])
        for s in summaries
        for r in s["rows"]
        if r["variant"] == variant and villain in (None, r["villain"]) and r.get(field) is not None
    ]
    return summarise(values, 0 if field == "seconds" else 1) if values else "–"


def methods_markdown(summaries: list[dict[str, Any]]) -> list[str]:
    """The per-method table over seeds (one thread count): median [min–max] of refusal and RoleBench avg
    per persona, the RDS flag rate where the variant has one, and seconds per run (train + eval)."""
    seeds = ", ".join(str(s["plan"]["seed"]) for s in summaries)
    lines = [
        f"Seeds {seeds}; median [min–max] over seeds. Villain = Grim Vex, baker = Penny Bun.",
        "",
        "| model | villain refusal % | villain RoleBench avg | baker refusal % | baker RoleBench avg "
        "| villain RDS flags % | s per run |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]

    def cell(variant: str, villain: bool | None, field: str) -> str:
        return row_cell(summaries, variant, villain, field, spread)

    variants = list(dict.fromkeys(r["variant"] for s in summaries for r in s["rows"]))
    for v in variants:
        lines.append(
            f"| {VARIANTS[v].label} | {cell(v, True, 'refusal')} | {cell(v, True, 'rolebench_avg')} "
            f"| {cell(v, False, 'refusal')} | {cell(v, False, 'rolebench_avg')} | {cell(v, True, 'flag_rate')} "
            f"| {cell(v, None, 'seconds') if v not in DEFAULT_VARIANTS else '–'} |"
        )
    return lines


def mean_spread(values: list[float], digits: int = 1) -> str:
    """mean [min–max] of `values`."""
    mean = sum(values) / len(values)
    return f"{mean:.{digits}f} [{min(values):.{digits}f}–{max(values):.{digits}f}]"


# The rows the defences are read against: the base, the fine-tune they decode (SFT) and SaRFT.
DEFENCE_CONTEXT = ("base", "sft", "sarft")


def defences_markdown(summaries: list[dict[str, Any]]) -> list[str]:
    """The decoding defences' table over seeds (one thread count): mean [min–max] of harmful-prompt
    refusal, over-refusal of benign requests and RoleBench avg per persona, beside base, SFT and SaRFT,
    and seconds per defended evaluation (both personas)."""
    seeds = ", ".join(str(s["plan"]["seed"]) for s in summaries)
    lines = [
        f"Seeds {seeds}; mean [min–max] over seeds. Villain = Grim Vex, baker = Penny Bun. Over-refusal: "
        "refusal % of the world's benign requests.",
        "",
        "| model | villain refusal % | villain over-refusal % | villain RoleBench avg "
        "| baker refusal % | baker over-refusal % | baker RoleBench avg | s per eval |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def cell(variant: str, villain: bool | None, field: str) -> str:
        return row_cell(summaries, variant, villain, field, mean_spread)

    present = {r["variant"] for s in summaries for r in s["rows"]}
    for v in [*DEFENCE_CONTEXT, *(d for d in DEFENCE_NAMES if d in present)]:
        figures = [
            cell(v, villain, f)
            for villain in (True, False)
            for f in ("refusal", "over_refusal", "rolebench_avg")
        ]
        seconds = cell(v, None, "seconds") if v in DEFENCE_NAMES else "–"
        lines.append(f"| {VARIANTS[v].label} | {' | '.join(figures)} | {seconds} |")
    return lines


def write_between_markers(path: Path, start: str, end: str, lines: list[str]) -> None:
    text = path.read_text(encoding="utf-8")
    if start not in text or end not in text:
        sys.exit(f"{path}: no {start} ... {end} markers")
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    path.write_text(head + start + "\n" + "\n".join(lines) + "\n" + end + tail, encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--demo", choices=("sarft", "mpo"), default="sarft")
    parser.add_argument("--seeds", type=_seeds, default=_seeds("0-9"), help="e.g. 0-9 or 0,1,2")
    parser.add_argument("--threads", type=lambda t: [int(v) for v in t.split(",")], default=[1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="CPU threads to fill with concurrent runs")
    parser.add_argument("--beta", type=float, default=None, help="passed to every run (default: the demo's)")
    parser.add_argument("--out", type=Path, default=Path("runs/demo-sweep"))
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--no-run", action="store_true", help="only tabulate the runs already finished")
    parser.add_argument(
        "--methods", default=None, help="sarft: passed to every run (safetune demo --methods)"
    )
    parser.add_argument(
        "--docs", type=Path, default=None, help="with --methods: write the table into this file"
    )
    args = parser.parse_args(argv)
    if args.jobs < 1 or min(args.threads) < 1:
        parser.error("--jobs and --threads must be >= 1")
    if args.methods and args.demo != "sarft":
        parser.error("--methods: only the sarft demo has method variants")
    parse_methods(args.methods)  # an unknown name before any run
    start = time.perf_counter()
    results = run_all(args)
    results = {t: sorted(runs, key=lambda s: s["plan"]["seed"]) for t, runs in results.items() if runs}
    if not results:
        sys.exit("no finished run to tabulate")
    lines = [
        f"# {args.demo} demo, seeds {', '.join(str(s['plan']['seed']) for s in next(iter(results.values())))} "
        f"({time.perf_counter() - start:.0f} s for the runs not reused)",
        "",
        *distribution_markdown(results, _row_key(args.demo), FIELDS[args.demo], EFFECTS[args.demo]),
    ]
    text = "\n".join(lines) + "\n"
    (args.out / "distribution.md").write_text(text, encoding="utf-8")
    print(text)
    if args.methods:
        summaries = results[max(results)]  # the largest thread count (2: the demo's)
        if set(parse_methods(args.methods)) & set(DEFENCE_NAMES):
            table, name, marker = defences_markdown(summaries), "defences.md", "DEFENCES"
        else:
            table, name, marker = methods_markdown(summaries), "methods.md", "METHODS"
        (args.out / name).write_text("\n".join(table) + "\n", encoding="utf-8")
        print("\n".join(table))
        if args.docs is not None:
            write_between_markers(args.docs, f"<!-- {marker} -->", f"<!-- END {marker} -->", table)


if __name__ == "__main__":
    main()
