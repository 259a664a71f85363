"""The frozen-reference cache: one key recipe for every kind, and an entry computed once."""

from __future__ import annotations

import pytest

from safetune.reference.cache import CacheEntry, cache_key

BASE = {"kind": "rds", "version": "v1", "model": "dir:abc", "settings": {"batch_size": 8}, "data": "d0"}


def _key(**changes: object) -> str:
    parts = {**BASE, **changes}
    return cache_key(parts["kind"], parts["version"], parts["model"], parts["settings"], parts["data"])  # type: ignore[arg-type]


def test_same_inputs_give_the_same_key():
    assert _key() == _key()
    assert _key(settings={"batch_size": 8}) == _key()  # a fresh but equal mapping


@pytest.mark.parametrize(
    "change",
    [
        {"kind": "mpo"},
        {"version": "v2"},
        {"model": "dir:abd"},
        {"settings": {"batch_size": 16}},
        {"settings": {"batch_size": 8, "pooling": "mean"}},
        {"data": "d1"},
    ],
    ids=lambda c: next(iter(c)),
)
def test_every_input_moves_the_key(change):
    assert _key(**change) != _key()


def test_an_entry_is_computed_once_then_read(tmp_path):
    entry = CacheEntry(tmp_path, "rds", "k", ".txt")
    calls: list[int] = []

    def read(path):
        return path.read_text() if path.exists() else None

    def compute():
        calls.append(1)
        entry.partial.write_text("rows so far")
        return "value"

    def write(handle, value):
        handle.write(value.encode())

    assert entry.read_or_compute(read, compute, write) == "value"
    assert entry.read_or_compute(read, compute, write) == "value"
    assert calls == [1]
    assert entry.path == tmp_path / "rds" / "k.txt" and not entry.partial.exists()


def test_a_failed_computation_leaves_no_entry(tmp_path):
    entry = CacheEntry(tmp_path, "mpo", "k", ".bin")

    def write(handle, value):
        handle.write(b"half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        entry.read_or_compute(lambda path: None, lambda: "value", write)
    assert list((tmp_path / "mpo").iterdir()) == []
