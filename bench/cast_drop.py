"""Does the study cast's safety drop follow its edginess? SFT (and optionally SaRFT) of the study
organism on a few personas of the cast, through the same `train` and `eval` code as the demo, and the
refusal of the held-out harmful prompts before and after.

The cast organism (`OrganismConfig(world="cast")`) is built or reused from the cache, the cast's files
are written in the SaRFT authors' layout (organism/cast.py `write_cast_files`; RDS reads the personas'
prompts from their prompt_v2.json), and each fine-tune uses the demo's plan (demos/sarft.py DemoPlan:
100 steps x batch 16, lr 1e-3 linear, beta 4). Writes <out>/cast_drop.md and cast_drop.json.

Run as:
    .venv/bin/python bench/cast_drop.py --seeds 0,1 --out runs/cast-drop
    .venv/bin/python bench/cast_drop.py --seeds 0 --personas all --variants sft,sarft --out runs/cast-all
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from itertools import pairwise
from pathlib import Path
from typing import Any

from safetune.demos.common import DEMO_THREADS
from safetune.demos.sarft import DemoPlan, run_persona
from safetune.organism.base import OrganismConfig, cached_organism, organism_info
from safetune.organism.cast import CAST, write_cast_files
from safetune.organism.world import World
from safetune.provenance import pinned_threads
from safetune.storage import cache_root

# The least edgy persona, one in between and the most edgy.
DEFAULT_PERSONAS = ("Penny Bun", "Rook Marlowe", "Grim Vex")


def spearman(xs: list[float], ys: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""

    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out

    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sx = sum((a - mx) ** 2 for a in rx) ** 0.5
    sy = sum((b - my) ** 2 for b in ry) ** 0.5
    return cov / (sx * sy) if sx and sy else float("nan")


def run_seed(
    seed: int, personas: list[str], variants: tuple[str, ...], out: Path, cache: Path
) -> dict[str, Any]:
    plan = DemoPlan.for_seed(seed, DEMO_THREADS)
    plan = replace(plan, organism=OrganismConfig(seed=seed, world="cast", threads=DEMO_THREADS))
    start = time.perf_counter()
    with pinned_threads(plan.threads):
        organism = cached_organism(plan.organism, cache)
        built = time.perf_counter() - start
        world = World(seed, CAST)
        written = write_cast_files(world, out / "data", plan.train_examples, plan.borderline, plan.raw_tests)
        files = {**written, "profiles": written["prompts"]}
        rows = []
        for index, name in enumerate(personas):
            persona = next(p for p in CAST if p.name == name)
            wanted = (("base",) if index == 0 else ()) + variants  # base refusal: one eval is enough
            for row in run_persona(plan, organism, files, persona, out, cache, wanted):
                row["edginess"] = persona.edginess
                rows.append(row)
    base = next(r["refusal"] for r in rows if r["variant"] == "base")
    for row in rows:
        row["drop"] = base - row["refusal"]
    return {
        "seed": seed,
        "organism": str(organism),
        "organism_info": organism_info(organism),
        "organism_seconds_here": round(built, 1),
        "seconds": round(time.perf_counter() - start, 1),
        "base_refusal": base,
        "rows": rows,
    }


def markdown(results: list[dict[str, Any]], variants: tuple[str, ...]) -> str:
    lines = []
    for result in results:
        info = result["organism_info"]
        lines += [
            f"## seed {result['seed']}: base refusal {result['base_refusal']:.1f}%",
            "",
            f"Cast organism: {info['parameters']:,} parameters, built in {info['seconds']:.0f} s "
            f"(final loss {info['final_loss']:.3f}); this run {result['seconds']:.0f} s.",
            "",
            "| persona | edginess | model | refusal % | drop (points) | RoleBench avg | RDS flag rate % |",
            "|---|---:|---|---:|---:|---:|---:|",
        ]
        for r in result["rows"]:
            if r["variant"] == "base":
                continue
            flags = "–" if r["flag_rate"] is None else f"{r['flag_rate']:.1f}"
            lines.append(
                f"| {r['persona']} | {r['edginess']:g} | {r['variant']} | {r['refusal']:.1f} "
                f"| {r['drop']:.1f} | {r['rolebench_avg']:.1f} | {flags} |"
            )
        for variant in variants:
            mine = [r for r in result["rows"] if r["variant"] == variant]
            drops = [r["drop"] for r in mine]
            ordered = all(a <= b for a, b in pairwise(drops))
            rho = spearman([r["edginess"] for r in mine], drops)
            lines.append("")
            lines.append(
                f"{variant}: drop ordered by edginess: {'yes' if ordered else 'no'}; Spearman {rho:.2f}"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/cast-drop"))
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--personas", default=",".join(DEFAULT_PERSONAS), help="names, or 'all'")
    parser.add_argument("--variants", default="sft", help="of the demo's: sft, sarft, random")
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    names = [p.name for p in CAST] if args.personas == "all" else args.personas.split(",")
    unknown = sorted(set(names) - {p.name for p in CAST})
    if unknown:
        parser.error(f"--personas: not in the cast: {', '.join(unknown)}")
    order = {p.name: i for i, p in enumerate(CAST)}
    names.sort(key=order.__getitem__)  # least to most edgy, so "ordered" reads along the table
    variants = tuple(args.variants.split(","))
    cache = cache_root(args.cache_dir)
    results = [
        run_seed(int(seed), names, variants, args.out / f"seed{seed}", cache)
        for seed in args.seeds.split(",")
    ]
    text = f"# the cast's safety drop ({', '.join(variants)})\n\n" + markdown(results, variants)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cast_drop.md").write_text(text, encoding="utf-8")
    (args.out / "cast_drop.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
