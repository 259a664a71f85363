"""A study's unit of work and what runs units: the records every executor shares (assess/executors.py
holds the registry; assess/ray_executor.py the Ray executor, which imports these and nothing above)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from safetune.errors import SafetuneError


@dataclass(frozen=True)
class Unit:
    """One cell of a study: `study` is the study folder (absolute path, as text)."""

    study: str
    role: str
    method: str

    @property
    def id(self) -> str:
        return f"{self.role}/{self.method}"


Work = Callable[[Unit], None]  # runs one unit to its finished result file; raises on failure


class UnitFailed(SafetuneError):
    """A unit that failed where it ran (another process or machine): its id and the remote error, one
    line. The sequential executor raises the work's own exception instead (it ran here, with its
    traceback)."""


class Executor(Protocol):
    name: str

    def run(self, units: Sequence[Unit], work: Work) -> Iterator[Unit]:
        """Run `work` on every unit, yielding each unit as it finishes (any order). A failing unit
        raises once the units already running have finished (their results are kept)."""
        ...


class SequentialExecutor:
    """One unit after another, in this process."""

    name = "sequential"

    def run(self, units: Sequence[Unit], work: Work) -> Iterator[Unit]:
        for unit in units:
            work(unit)
            yield unit
