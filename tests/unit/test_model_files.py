"""`check_model_folder`: the cheap checks of a model or adapter folder before any work (issue 12, item 6)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from safetune.errors import ConfigError
from safetune.models.loading import check_model_folder


def _weights(path: Path) -> Path:
    save_file({"w": torch.zeros(64, 64), "b": torch.ones(64)}, str(path))
    return path


def test_whole_safetensors_pass_and_a_hub_id_is_left_to_loading(tmp_path: Path) -> None:
    _weights(tmp_path / "model-00001-of-00002.safetensors")
    _weights(tmp_path / "model-00002-of-00002.safetensors")
    (tmp_path / "optimizer.pt").write_bytes(b"a checkpoint's optimizer state, never loaded as weights")
    check_model_folder(str(tmp_path))
    check_model_folder("org/model")  # no such folder: a hub id


def test_a_shard_cut_short_is_named(tmp_path: Path) -> None:
    _weights(tmp_path / "model-00001-of-00002.safetensors")
    shard = _weights(tmp_path / "model-00002-of-00002.safetensors")
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(ConfigError) as err:
        check_model_folder(str(tmp_path))
    assert str(err.value).startswith(f"{shard}: not a whole safetensors file")


@pytest.mark.parametrize("name", ["pytorch_model.bin", "adapter_model.bin", "pytorch_model.bin.index.json"])
def test_pickle_only_weights_are_refused(tmp_path: Path, name: str) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / name).write_bytes(b"never unpickled")
    with pytest.raises(ConfigError, match="safetensors only") as err:
        check_model_folder(str(tmp_path), "LoRA adapter")
    assert str(tmp_path / name) in str(err.value)


def test_a_missing_folder_and_a_file_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"judge\.model folder .* not found"):
        check_model_folder(str(tmp_path / "nope"), "judge.model")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        check_model_folder(str(tmp_path / "file"))
