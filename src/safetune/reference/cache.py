"""The on-disk cache of frozen-reference passes: one key recipe and one way to fill an entry.

A frozen model's values on fixed data depend only on what goes into the key, so a pass runs once and
every later run (and every process of a multi-process run) reads its entry. An entry is the file
`<root>/<kind>/<key><suffix>`; the root is `storage.cache_root` of the run config's top-level `cache_dir`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

from safetune.storage import atomic_open, cache_lock, hash_json

T = TypeVar("T")


def cache_key(kind: str, version: str, model: str, settings: Mapping[str, Any], data: str) -> str:
    """The key of one entry: everything its values depend on.

    `version` is the kind's code version (bumped when the computation or this recipe changes, so that an
    old entry is never read as a new one), `model` the model fingerprint (models/loading.py), `settings`
    whatever else moves the values (template, prompts, pooling, batch size: padding to a batch's longest
    row moves them in the last float digits) and `data` a content hash of the rows.
    """
    return hash_json(
        {"kind": kind, "version": version, "model": model, "settings": dict(settings), "data": data}
    )


@dataclass(frozen=True)
class CacheEntry:
    """One cached result: where it lives, and the lock that makes one process compute it."""

    root: Path
    kind: str  # the entry's folder under the root: "rds", "mpo"
    key: str
    suffix: str  # ".jsonl", ".safetensors"

    @property
    def path(self) -> Path:
        return self.root / self.kind / f"{self.key}{self.suffix}"

    @property
    def partial(self) -> Path:
        """Where a computation that can resume keeps its finished rows until the entry is complete."""
        return self.root / self.kind / f"{self.key}.partial{self.suffix}"

    def read_or_compute(
        self,
        read: Callable[[Path], T | None],
        compute: Callable[[], T],
        write: Callable[[IO[bytes], T], None],
    ) -> T:
        """`read(path)` of the entry, or, when it gives None (missing or incomplete), `compute()` written
        with `write`.

        One process computes an entry; another that wants the same one waits on the entry's lock, then
        reads what the first wrote. The entry is written beside its path and renamed, so a killed run
        never leaves a truncated entry behind; the partial file goes once the entry is complete.
        """
        found = read(self.path)
        if found is not None:
            return found
        with cache_lock(self.root, f"{self.kind}-{self.key}"):
            found = read(self.path)
            if found is not None:
                return found
            self.path.parent.mkdir(parents=True, exist_ok=True)
            value = compute()
            with atomic_open(self.path, "wb") as handle:
                write(handle, value)
            self.partial.unlink(missing_ok=True)
        return value
