"""`safetune demo mpo` over several seeds, label-noise levels and betas: the numbers behind docs/demo.md.

For each seed: runs the whole demo at its defaults (base, SFT, DPO, MPO on 25% noisy pairs), then, for
every noise level in --noise, re-runs DPO at every --dpo-betas value and MPO at every --mpo-betas value on
pairs with that noise (base does not depend on either). Prints one Markdown table per seed and writes
everything to <out>/sweep.json.

Run as: .venv/bin/python bench/demo_mpo_sweep.py --seeds 0,1,2 --noise 0.25,0 --out runs/demo-mpo-sweep
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path

import torch

from safetune.demo_mpo import MpoDemoPlan, checks, run_mpo_demo, run_variant, write_world_files
from safetune.organism.base import OrganismConfig, cached_organism
from safetune.organism.multilingual import MultilingualWorld


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _sweep(
    plan: MpoDemoPlan, out: Path, cache: Path, noises: list[float], dpo: list[float], mpo: list[float]
):
    organism = cached_organism(plan.organism, cache)
    world = MultilingualWorld(plan.seed)
    rows = []
    for noise in noises:
        noisy = replace(plan, noise=noise)
        files = write_world_files(world, noisy, out / f"noise-{noise:g}" / "data")
        runs = [("dpo", replace(noisy, dpo_beta=b), b) for b in dpo]
        runs += [("mpo", replace(noisy, mpo_beta=b), b) for b in mpo]
        for variant, swept, beta in runs:
            if noise == plan.noise and beta == plan.beta(variant):
                continue  # already in the demo's own table
            folder = out / f"noise-{noise:g}" / f"{variant}-beta-{beta:g}"
            row = run_variant(swept, organism, files, variant, folder, cache)
            rows.append({**row, "noise": noise, "beta": beta})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--noise", default="0.25,0", help="label-noise levels of the sweep")
    parser.add_argument("--dpo-betas", default="0.1,0.5")
    parser.add_argument("--mpo-betas", default="8,16,32,64")
    parser.add_argument("--out", type=Path, default=Path("runs/demo-mpo-sweep"))
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    cache = args.cache_dir or Path.home() / ".cache" / "safetune"
    everything = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        out = args.out / f"seed-{seed}"
        print(run_mpo_demo(out, seed=seed, cache_dir=cache))
        plan = MpoDemoPlan(seed=seed, organism=OrganismConfig(seed=seed, world="multilingual"))
        summary = json.loads((out / "summary.json").read_text())
        own = [
            {**r, "noise": plan.noise, "beta": plan.beta(r["variant"])}
            for r in summary["rows"]
            if r["variant"] in ("dpo", "mpo")
        ]
        sweep = own + _sweep(
            plan, out / "sweep", cache, _floats(args.noise), _floats(args.dpo_betas), _floats(args.mpo_betas)
        )
        everything[seed] = {"rows": summary["rows"], "checks": summary["checks"], "sweep": sweep}
        print("| noise | method | beta | refusal L1 | refusal L2 | utility L1 | utility L2 | gap L2 |")
        print("|---:|---|---:|---:|---:|---:|---:|---:|")
        for r in sorted(sweep, key=lambda r: (-r["noise"], r["variant"], r["beta"])):
            print(
                f"| {r['noise']:g} | {r['variant']} | {r['beta']:g} | {r['refusal_l1']:.1f} | {r['refusal_l2']:.1f} "
                f"| {r['utility_l1']:.1f} | {r['utility_l2']:.1f} | {r['gap_l2']:.2f} |"
            )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep.json").write_text(json.dumps(everything, indent=1))
    held = {seed: sum(c[2] for c in v["checks"]) for seed, v in everything.items()}
    first = next(iter(everything.values()))
    print("checks holding per seed:", held, "of", len(checks(first["rows"])))


if __name__ == "__main__":
    main()
