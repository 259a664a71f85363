"""Single named weights of a model (hub id or folder) read straight from its safetensors files, one tensor
at a time and without building the model: SafeLoRA needs two models' weights of a few modules, and two 8B
models loaded whole would cost twice their size in memory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import Tensor

from safetune.errors import ConfigError
from safetune.models.loading import check_model_folder

_INDEX = "model.safetensors.index.json"
_SINGLE = "model.safetensors"


class WeightFiles:
    """name -> tensor of a model's safetensors checkpoint (one file, or shards with their index)."""

    def __init__(self, model_id: str, revision: str | None = None, what: str = "model"):
        self.model_id, self.what = model_id, what
        check_model_folder(model_id, what)
        folder = Path(model_id).expanduser()
        self.folder = folder if folder.is_dir() else _hub_snapshot(model_id, revision, what)
        self.file_of = self._weight_map()
        self._open: dict[str, Any] = {}

    def _weight_map(self) -> dict[str, Path]:
        index = self.folder / _INDEX
        if index.is_file():
            try:
                mapping = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as err:
                raise ConfigError(f"{index}: not a safetensors index ({err})") from None
            return {str(name): self.folder / str(file) for name, file in mapping.items()}
        single = self.folder / _SINGLE
        if not single.is_file():
            raise ConfigError(f"{self.what} {self.model_id!r}: no {_SINGLE} or {_INDEX} in {self.folder}")
        names: list[str] = self._handle(single).keys()
        return dict.fromkeys(names, single)

    def _handle(self, file: Path) -> Any:
        from safetensors import safe_open

        return safe_open(str(file), framework="pt")  # a lazy reader: tensors are read when asked for

    def _file(self, name: str) -> Any:
        if name not in self.file_of:
            raise ConfigError(f"{self.what} {self.model_id!r} has no weight {name!r}")
        file = self.file_of[name]
        if str(file) not in self._open:
            self._open[str(file)] = self._handle(file)
        return self._open[str(file)]

    def shape(self, name: str) -> tuple[int, ...]:
        """The weight's shape from the file's header (reads no tensor data)."""
        return tuple(self._file(name).get_slice(name).get_shape())

    def tensor(self, name: str) -> Tensor:
        return self._file(name).get_tensor(name)  # type: ignore[no-any-return]


def _hub_snapshot(model_id: str, revision: str | None, what: str) -> Path:
    """The local snapshot of a hub model's safetensors files (downloaded once, then from the HF cache)."""
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(
            model_id, revision=revision, allow_patterns=["*.safetensors", _INDEX, "config.json"]
        )
    except Exception as err:  # hub errors come in many classes; each is one line for the user
        raise ConfigError(f"cannot fetch the weights of {what} {model_id!r}: {err}") from None
    return Path(path)
