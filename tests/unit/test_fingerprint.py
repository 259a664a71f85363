"""model_fingerprint: every byte of the weights counts, and each file is hashed once (issue 12, item 2)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from safetune.models import loading
from safetune.models.loading import model_fingerprint


def _model(folder: Path, weights: bytes) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(weights)
    return folder


@pytest.fixture
def spy(monkeypatch):
    calls: list[Path] = []
    real = loading._sha256_file

    def counting(path: Path) -> str:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(loading, "_sha256_file", counting)
    return calls


def test_equal_size_weights_differing_in_the_middle_get_different_fingerprints(tmp_path, spy):
    size = 3 << 20  # beyond the first and last MiB the old fingerprint read
    a = bytearray(size)
    b = bytearray(size)
    b[size // 2] = 1
    cache = tmp_path / "cache"
    fa = model_fingerprint(str(_model(tmp_path / "a", bytes(a))), cache_dir=cache)
    fb = model_fingerprint(str(_model(tmp_path / "b", bytes(b))), cache_dir=cache)
    assert fa != fb


def test_second_fingerprint_reads_no_weights_and_a_changed_file_is_hashed_again(tmp_path, spy):
    folder = _model(tmp_path / "m", os.urandom(1 << 16))
    cache = tmp_path / "cache"
    first = model_fingerprint(str(folder), cache_dir=cache)
    assert len(spy) == 1 and (cache / loading.DIGEST_CACHE).is_file()
    assert model_fingerprint(str(folder), cache_dir=cache) == first
    assert len(spy) == 1  # remembered by path + size + mtime: not read again
    weights = folder / "model.safetensors"
    weights.write_bytes(os.urandom(1 << 16))
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert model_fingerprint(str(folder), cache_dir=cache) != first
    assert len(spy) == 2


def test_hub_snapshot_uses_the_blob_digest(tmp_path, spy):
    content = b"weights" * 100
    digest = hashlib.sha256(content).hexdigest()
    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshots" / "abc"
    blobs.mkdir()
    snapshot.mkdir(parents=True)
    (blobs / digest).write_bytes(content)
    (snapshot / "config.json").write_text("{}")
    (snapshot / "model.safetensors").symlink_to(Path("../..") / "blobs" / digest)
    model_fingerprint(str(snapshot), cache_dir=tmp_path / "cache")
    assert spy == []
    assert loading.weights_sha256(snapshot / "model.safetensors") == digest
