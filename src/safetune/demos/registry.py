"""The one registry of demos: name -> DemoSpec. `safetune demo [NAME]` runs one through `run_demo`;
`safetune organism` builds a demo's base organism (and writes its world's files) through `demo_organism`.

This module imports nothing heavy, so that the command line can build its help text from it without
loading torch: a demo's module (which does) is imported when the demo runs. To add a demo: a module
here with `run(out, quick, seed, beta, cache_dir, threads) -> str` (the Markdown summary) and
`write_world(seed, root) -> files`, and one DemoSpec below.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast

from safetune.config import MethodConfig
from safetune.demos import mpo_variants, variants
from safetune.demos.common import DEMO_THREADS
from safetune.errors import ConfigError


class Demo(Protocol):
    """What a demo's module provides."""

    def run(
        self,
        out: Path,
        quick: bool = False,
        seed: int = 0,
        beta: float | None = None,
        cache_dir: Path | None = None,
        threads: int = DEMO_THREADS,
        methods: tuple[str, ...] = (),
    ) -> str: ...

    def write_world(self, seed: int, root: Path) -> dict[str, Path]: ...


@dataclass(frozen=True)
class DemoSpec:
    name: str
    summary: str  # a few words for the command's help
    world: str  # the organism's world (organism/base.py WORLD_KINDS); one demo per world
    default_out: Path
    module: str  # the demo's module, imported on first use
    # `--methods`: the demo's variant registry's parser (variants added to the default rows), or None
    parse_methods: Callable[[str | None], tuple[str, ...]] | None = None

    @property
    def takes_methods(self) -> bool:
        return self.parse_methods is not None

    def load(self) -> Demo:
        return cast(Demo, importlib.import_module(self.module))


if TYPE_CHECKING:  # mypy holds each demo's module to Demo; at run time a module loads when its demo runs
    from safetune.demos import assess, mpo, multiturn, sarft

    _MODULES: tuple[Demo, ...] = (sarft, mpo, assess, multiturn)

DEMOS: dict[str, DemoSpec] = {
    spec.name: spec
    for spec in (
        DemoSpec(
            "sarft",
            "role-play safety",
            "roleplay",
            Path("demo-out"),
            "safetune.demos.sarft",
            parse_methods=variants.parse_methods,
        ),
        DemoSpec(
            "mpo",
            "multilingual safety",
            "multilingual",
            Path("demo-mpo"),
            "safetune.demos.mpo",
            parse_methods=mpo_variants.parse_methods,
        ),
        DemoSpec("assess", "the per-role safety study", "cast", Path("demo-assess"), "safetune.demos.assess"),
        DemoSpec(
            "multiturn",
            "multi-turn role-play safety",
            "multiturn",
            Path("demo-multiturn"),
            "safetune.demos.multiturn",
        ),
    )
}
DEFAULT_DEMO = "sarft"


def demo_for_world(world: str) -> DemoSpec:
    found = [spec for spec in DEMOS.values() if spec.world == world]
    if not found:
        known = ", ".join(spec.world for spec in DEMOS.values())
        raise ConfigError(f"unknown world {world!r} (known: {known})")
    return found[0]


def run_demo(
    name: str,
    out: Path | None = None,
    quick: bool = False,
    seed: int = 0,
    beta: float | None = None,
    cache_dir: Path | None = None,
    threads: int = DEMO_THREADS,
    methods: str | None = None,
) -> str:
    """Run the demo `name` into `out` (default: the demo's own folder); returns its Markdown summary.
    `beta` replaces the demo's beta for its method (sarft: SaRFT's KL weight; mpo: MPO's beta);
    `methods` adds variants to the default rows (sarft: baselines and defences, demos/variants.py; mpo: the
    DPO family, the cross-lingual baselines and MPO's ablations, demos/mpo_variants.py): "all" or names."""
    if name not in DEMOS:
        raise ConfigError(f"unknown demo {name!r} (known: {', '.join(DEMOS)})")
    if beta is not None:
        MethodConfig(beta=beta)  # method.beta's range, checked before minutes of organism building
    spec = DEMOS[name]
    if methods is not None and spec.parse_methods is None:
        takers = ", ".join(s.name for s in DEMOS.values() if s.takes_methods)
        raise ConfigError(f"--methods: demo {name!r} has no method variants (only {takers})")
    added = spec.parse_methods(methods) if spec.parse_methods is not None else ()  # checked before any work
    return spec.load().run(
        out or spec.default_out,
        quick=quick,
        seed=seed,
        beta=beta,
        cache_dir=cache_dir,
        threads=threads,
        methods=added,
    )


def demo_organism(
    world: str,
    seed: int = 0,
    data: Path | None = None,
    cache_dir: Path | None = None,
    threads: int = DEMO_THREADS,
) -> tuple[Path, dict[str, Path]]:
    """Build (or reuse from the cache) the base organism of a demo's world; with `data`, also write the
    world's files there at the demo's plan. Returns the organism's folder and the files written."""
    from safetune.organism.base import OrganismConfig, cached_organism
    from safetune.storage import cache_root

    spec = demo_for_world(world)
    folder = cached_organism(OrganismConfig(seed=seed, world=world, threads=threads), cache_root(cache_dir))
    files = spec.load().write_world(seed, data) if data is not None else {}
    return folder, files
