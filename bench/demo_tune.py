"""How each `safetune demo --methods` baseline's tuned setting was chosen: every candidate of
demos/variants.py TUNING_CANDIDATES (and the method's default) on the villain, seed 0, next to SFT.

The rule (docs/demo.md): the candidate with the best villain refusal among those whose villain RoleBench
avg is within 3 points of SFT's; ties go to the earlier candidate; when none is within 3 points, the one
with the best RoleBench avg. The choice is recorded by hand in variants.py CHOSEN; this script prints
the table and the index the rule picks, and writes them to <out>/tune.md.

Run as:
    .venv/bin/python bench/demo_tune.py --out runs/demo-tune [--methods safeinstr,lisa]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from safetune.demos.sarft import DemoPlan, prepare_variants, run_persona, write_world_files
from safetune.demos.variants import METHOD_NAMES, TUNING_CANDIDATES, VARIANTS, candidate
from safetune.organism.base import cached_organism
from safetune.organism.world import PERSONAS, World
from safetune.provenance import pinned_threads
from safetune.storage import cache_root

MARGIN = 3.0


def choose(sft_avg: float, candidates: list[dict[str, float]]) -> int:
    """The rule above: an index into `candidates` (rows with refusal and rolebench_avg)."""
    near = [i for i, r in enumerate(candidates) if r["rolebench_avg"] >= sft_avg - MARGIN]
    if not near:
        return max(range(len(candidates)), key=lambda i: (candidates[i]["rolebench_avg"], -i))
    return max(near, key=lambda i: (candidates[i]["refusal"], -i))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/demo-tune"))
    parser.add_argument("--methods", default=",".join(METHOD_NAMES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    plan, cache = DemoPlan.for_seed(args.seed), cache_root(args.cache_dir)
    villain = next(p for p in PERSONAS if p.villain)
    lines = [
        f"# tuning candidates, villain, seed {args.seed}",
        "",
        "| method | setting | RoleBench avg | refusal % | seconds | chosen |",
        "|---|---|---:|---:|---:|---|",
    ]
    with pinned_threads(plan.threads):
        organism = cached_organism(plan.organism, cache)
        world = World(args.seed)
        files = write_world_files(world, plan, args.out / "data")
        (sft,) = run_persona(plan, organism, files, villain, args.out, cache, ("sft",))
        lines.append(f"| SFT | – | {sft['rolebench_avg']:.1f} | {sft['refusal']:.1f} | – | |")
        for name in args.methods.split(","):
            out = args.out / name
            for index in range(len(TUNING_CANDIDATES[name]) + 1):
                start = time.perf_counter()
                variant = VARIANTS[name] if index == 0 else candidate(name, index - 1)
                ready = prepare_variants(plan, organism, world, files, (variant,), out / str(index), cache)
                (row,) = run_persona(plan, organism, ready, villain, out / str(index), cache, (variant,))
                row["seconds"] = time.perf_counter() - start
                row["label"] = variant.label
                if index == 0:
                    default, tried = row, []
                else:
                    tried.append(row)
            pick = choose(sft["rolebench_avg"], tried)
            for i, r in enumerate([default, *tried]):
                mark = "**yes**" if i - 1 == pick else ""
                lines.append(
                    f"| {name} | {r['label']} | {r['rolebench_avg']:.1f} | {r['refusal']:.1f} "
                    f"| {r['seconds']:.0f} | {mark} |"
                )
            print(f"{name}: the rule picks candidate {pick} ({TUNING_CANDIDATES[name][pick][0]})", flush=True)
    text = "\n".join(lines) + "\n"
    (args.out / "tune.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
