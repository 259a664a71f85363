"""The demo over several seeds and a beta sweep: the numbers behind docs/demo.md.

For each seed: builds (or reuses) that seed's base organism and runs the whole demo at the default beta,
then re-runs only the villain's SaRFT and random-selection variants at every other beta (base and SFT do
not depend on beta). Prints one Markdown table per seed and the sweep.

Run as: .venv/bin/python bench/demo_sweep.py --seeds 0,1,2 --betas 0.5,1,2,4,8 --out runs/demo-sweep
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path

import torch

from safetune.demo import DemoPlan, checks, run_demo, run_persona, write_world_files
from safetune.organism.base import OrganismConfig, cached_organism
from safetune.organism.world import PERSONAS, World


def _sweep_rows(plan: DemoPlan, out: Path, cache: Path, betas: list[float]) -> list[dict]:
    organism = cached_organism(plan.organism, cache)
    files = write_world_files(World(plan.seed), plan, out / "data")
    villain = next(p for p in PERSONAS if p.villain)
    rows = []
    for beta in betas:
        swept = replace(plan, beta=beta)
        for row in run_persona(
            swept, organism, files, villain, out / f"beta-{beta:g}", cache, ("sarft", "random")
        ):
            rows.append({**row, "beta": beta})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--betas", default="0.5,1,2,4,8")
    parser.add_argument("--out", type=Path, default=Path("runs/demo-sweep"))
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="sweep the --quick demo instead")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    seeds = [int(s) for s in args.seeds.split(",")]
    betas = [float(b) for b in args.betas.split(",")]
    cache = args.cache_dir or Path.home() / ".cache" / "safetune"
    everything = {}
    for seed in seeds:
        out = args.out / f"seed-{seed}"
        print(run_demo(out, quick=args.quick, seed=seed, cache_dir=cache))
        plan = DemoPlan.quick(seed) if args.quick else DemoPlan(seed=seed, organism=OrganismConfig(seed=seed))
        others = [b for b in betas if b != plan.beta]
        sweep = _sweep_rows(plan, out / "sweep", cache, others)
        summary = json.loads((out / "summary.json").read_text())
        villain = [r for r in summary["rows"] if r["villain"] and r["variant"] in ("sarft", "random")]
        sweep += [{**r, "beta": plan.beta} for r in villain]
        everything[seed] = {"rows": summary["rows"], "checks": summary["checks"], "sweep": sweep}
        print("| beta | variant | RoleBench avg | refusal % |\n|---|---|---:|---:|")
        for r in sorted(sweep, key=lambda r: (r["beta"], r["variant"])):
            print(f"| {r['beta']:g} | {r['variant']} | {r['rolebench_avg']:.1f} | {r['refusal']:.1f} |")
    (args.out / "sweep.json").write_text(json.dumps(everything, indent=1))
    held = {seed: sum(c[2] for c in v["checks"]) for seed, v in everything.items()}
    print("checks holding per seed:", held, "of", len(checks(everything[seeds[0]]["rows"])))


if __name__ == "__main__":
    main()
