"""Crash-safe file writes, content hashes (cache keys for stages), locks, and the cache folder."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from safetune.errors import BusyError, ConfigError

log = logging.getLogger(__name__)

# The lock file a command holds inside its output folder while it works there.
LOCK_NAME = ".safetune.lock"


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder: the top-level `cache_dir` of a run config when set, else $SAFETUNE_CACHE, else
    ~/.cache/safetune. Every cache lives under it (frozen-reference passes, weight digests, organisms);
    it is here, at the bottom of the imports, so that models/ and organism/ resolve the same root."""
    if cache_dir:
        return Path(cache_dir)
    return Path(os.environ.get("SAFETUNE_CACHE", Path.home() / ".cache" / "safetune"))


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Write to a temp file beside `path`, then rename: readers never see a partial file.

    On any exception the temp file is removed and `path` keeps its previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    # mkstemp creates 0600 files; outputs get the permissions an ordinary open() would give them.
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def follow_umask(root: str | os.PathLike[str]) -> None:
    """Give every file (0666) and folder (0777) under `root` the mode the umask allows: some writers
    (safetensors, mkstemp) create 0600 files, and a run folder's outputs should all look alike."""
    mask = _umask()
    root = Path(root)
    for path in [root, *root.rglob("*")] if root.is_dir() else [root]:
        if path.is_symlink():
            continue
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    with atomic_open(path) as handle:
        json.dump(obj, handle, indent=2, sort_keys=False, ensure_ascii=False)
        handle.write("\n")


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> None:
    with atomic_open(path) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def append_jsonl(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> None:
    """Append whole lines with one write each, so a kill never leaves half a record."""
    with open(path, "a", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            handle.flush()


def read_keyed_jsonl(
    path: str | os.PathLike[str], key: str, keep: Callable[[dict[str, Any]], bool]
) -> dict[str, dict[str, Any]]:
    """The rows of an append-only JSONL stage file by their `key` field (a string), the last valid row
    winning; rows that are not JSON objects, lack the key, or that `keep` refuses are passed over. A
    torn last line (a kill during a write) is cut first, so the next append starts a fresh line."""
    path = Path(path)
    repair_jsonl_tail(path)
    rows: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return rows
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and isinstance(row.get(key), str) and keep(row):
                rows[row[key]] = row
    return rows


def repair_jsonl_tail(path: str | os.PathLike[str]) -> None:
    """Cut a torn last line (a kill during a write) so that the next append starts a fresh line."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, "rb+") as handle:
        data = handle.read()
        if data and not data.endswith(b"\n"):
            handle.truncate(data.rfind(b"\n") + 1)


def hash_json(obj: Any) -> str:
    """A stable sha256 of a JSON-serialisable object."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


# Locks this process holds, by path: flock locks belong to an open file, so a second flock on the same
# file from this process (train -> train_baseline) would find it busy; nested holders share the first.
_HELD: dict[str, int] = {}


@contextmanager
def output_lock(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold an exclusive lock on an output folder (created if missing) while a command works in it.

    Non-blocking: when another process holds it, a BusyError (one line, exit 2) says so at once rather
    than both doing the same work. When the work fails, the lock file goes again if this call created
    it; in a folder that was new or empty, so do the empty folders left in it, and a folder this call
    created (with the parents it created) goes when nothing else was written: a failed first run
    leaves nothing behind. On success the lock file stays (removing it would race with a process that
    has it open).
    """
    folder = Path(folder)
    created = _new_folders(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"{folder} exists and is not a folder") from None
    except OSError as err:
        _remove_if_empty(created)
        raise ConfigError(f"cannot create output folder {folder}: {err.strerror}") from None
    was_empty = bool(created) or not any(folder.iterdir())
    lock = folder / LOCK_NAME
    key = str(lock.resolve())
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield lock
        finally:
            _HELD[key] -= 1
        return
    lock_existed = lock.exists()
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        _remove_if_empty(created)
        raise ConfigError(f"cannot write in output folder {folder}: {err.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise BusyError(f"{folder} is busy (another safetune process holds {lock})") from None
    _HELD[key] = 1
    try:
        yield lock
    except BaseException:
        # A run that fails leaves no lock file it brought, and no folder it created and left empty.
        if not lock_existed:
            lock.unlink(missing_ok=True)
        if was_empty:
            _remove_empty_subfolders(folder)
        _remove_if_empty(created)
        raise
    finally:
        del _HELD[key]
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _new_folders(folder: Path) -> list[Path]:
    """`folder` and those of its parents that do not exist yet, deepest first."""
    new = []
    for path in (folder, *folder.parents):
        if path.exists() or path.is_symlink():
            break
        new.append(path)
    return new


def _remove_empty_subfolders(folder: Path) -> None:
    """Remove the empty folders under `folder`, deepest first (a folder that only held empty ones
    goes too); files and whatever holds them stay."""
    for root, dirs, _files in os.walk(folder, topdown=False):
        for name in dirs:
            with contextlib.suppress(OSError):  # not empty, or a link
                (Path(root) / name).rmdir()


def _remove_if_empty(folders: list[Path]) -> None:
    """Remove `folders` (deepest first) while they are empty."""
    for path in folders:
        try:
            path.rmdir()
        except OSError:  # not empty (or already gone): it and its parents stay
            return


@contextmanager
def cache_lock(root: str | os.PathLike[str], name: str) -> Iterator[None]:
    """Hold an exclusive lock for computing the cache entry `name` under the cache folder `root`.

    Blocking: a second process that wants the same entry waits, then finds it computed (callers check
    the cache again after taking the lock) instead of computing it a second time. The lock files live
    in `root/locks/`, apart from the entries, so that a cache folder holds only its entries.
    """
    lock = Path(root) / "locks" / f"{name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another safetune process computing the cache entry %s", name)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
