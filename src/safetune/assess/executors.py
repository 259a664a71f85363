"""Where a study's units run: the one registry of executors.

A unit is one (role, method) cell of a study: select (shared, cached), fine-tune, evaluate. Its work is a
top-level function of a small frozen `Unit` (strings only), so that it can be shipped to another process
or machine as is, and it leaves everything it produces as files in the study folder (its result written
atomically last). An executor therefore returns nothing but which units finished: the study reads their
results from disk, whichever executor ran them, and a killed study resumes from what is on disk.

    sequential  one unit after another in this process (the default; nothing to install or start)
    ray         (safetune[ray]) each unit a Ray task on a local Ray or an existing cluster
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# The unit records live below the registry (the Ray executor imports them without importing this module).
from safetune.assess.units import Executor, SequentialExecutor, Unit, UnitFailed, Work
from safetune.errors import ConfigError

__all__ = ["EXECUTORS", "Executor", "SequentialExecutor", "Unit", "UnitFailed", "Work", "build_executor"]


@dataclass(frozen=True)
class ExecutorSpec:
    name: str
    description: str
    build: Callable[..., Executor]


EXECUTORS: dict[str, ExecutorSpec] = {
    spec.name: spec
    for spec in (
        ExecutorSpec(
            "sequential", "one unit after another in this process (default)", lambda **o: _sequential(**o)
        ),
        ExecutorSpec(
            "ray",
            "each unit a Ray task (one GPU each when the cluster has GPUs) on a local Ray or a cluster "
            "(safetune[ray])",
            lambda **options: _build_ray(**options),
        ),
    )
}


def _sequential(**options: object) -> Executor:
    if options:
        flag = "--ray-" + sorted(options)[0].replace("_", "-")
        raise ConfigError(
            f"{flag} applies to --executor ray only (this study runs with --executor sequential)"
        )
    return SequentialExecutor()


def _build_ray(**options: object) -> Executor:
    # Imported when asked for: the module imports Ray only inside its functions, but it needs no loading
    # at all for a sequential study.
    from safetune.assess import ray_executor

    return ray_executor.build(**options)


def build_executor(name: str, **options: object) -> Executor:
    """The executor named `name` with `options` (a command line passes every `--ray-*` flag, None or
    False where not given: those are left out, so the executor's defaults apply and a flag given to an
    executor it does not apply to is refused). ConfigError for an unknown executor or option."""
    if name not in EXECUTORS:
        raise ConfigError(f"unknown executor {name!r} (known: {', '.join(EXECUTORS)})")
    given = {key: value for key, value in options.items() if value is not None and value is not False}
    return EXECUTORS[name].build(**given)
