"""Checkpoints of SEAL's ranker stage, so that a killed ranker resumes where it stopped instead of starting
again (the stage takes hours at the paper's scale: Table 3, 14 h with a 2.8B ranker model).

A checkpoint is the folder `<cache>/seal/<key>.ranker/` beside the ranking's cache entry: the ranker's
position (epoch, next optimizer step, the epoch's row order, the safe set's cycle), the random states, and
every tensor it updates (the selector's logits, the model's trainable weights, both optimizers' state) in
one safetensors file; nothing is read back through pickle. The cache key covers the model, both data
sets and every setting that moves the ranking, so a checkpoint is never resumed into another ranking; the
state file repeats the key and the trainable parameters' names and shapes, and a mismatch starts afresh.
A new checkpoint is written beside the old one and swapped in by renames: a kill at any moment leaves a
whole checkpoint (or none) behind.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from safetune.storage import atomic_open

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
TENSORS_FILE = "tensors.safetensors"
FORMAT = 1


class SafeCycle:
    """Indices of the safe set, a fresh permutation of `generator` each pass (the authors pair the two
    data loaders with zip over sets of equal size; a safe set smaller than the user's data is cycled).
    Its position is part of a checkpoint: the permutation being used and how far into it."""

    def __init__(self, count: int, generator: torch.Generator):
        self.count, self.generator = count, generator
        self.perm: list[int] = []
        self.pos = 0

    def __iter__(self) -> Iterator[int]:
        return self

    def __next__(self) -> int:
        if self.pos >= len(self.perm):
            self.perm, self.pos = torch.randperm(self.count, generator=self.generator).tolist(), 0
        self.pos += 1
        return self.perm[self.pos - 1]


@dataclass
class RankerPosition:
    """Where the ranker is: the next optimizer step of `epoch` (0-based), over the rows in `order`."""

    epoch: int = 0
    step: int = 0
    order: list[int] = field(default_factory=list)


def _optimizer_tensors(prefix: str, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict]:
    """An optimizer's per-parameter state as named tensors, plus which names each parameter has."""
    tensors: dict[str, Tensor] = {}
    names: dict[str, list[str]] = {}
    for index, state in optimizer.state_dict()["state"].items():
        names[str(index)] = []
        for name, value in state.items():
            tensors[f"{prefix}.{index}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
            names[str(index)].append(name)
    return tensors, names


def _load_optimizer(
    optimizer: torch.optim.Optimizer, prefix: str, names: dict[str, list[str]], tensors: dict[str, Tensor]
) -> None:
    state = {
        int(index): {name: tensors[f"{prefix}.{index}.{name}"] for name in entries}
        for index, entries in names.items()
    }
    # The groups (lr, betas, ...) are this run's own: the cache key makes them the checkpoint's too.
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})


def _layout(params: Sequence[tuple[str, Tensor]]) -> list[list[Any]]:
    return [[name, list(p.shape)] for name, p in params]


@dataclass
class RankerState:
    """What the ranker updates as it goes: everything a checkpoint saves besides its position."""

    cycle: SafeCycle
    generator: torch.Generator
    logits: Tensor
    params: Sequence[tuple[str, Tensor]]  # the model's trainable parameters, by name
    model_opt: torch.optim.Optimizer
    selector_opt: torch.optim.Optimizer


@dataclass
class RankerCheckpoint:
    """The ranker's checkpoint folder for the cache entry `key` (see the module docstring)."""

    folder: Path
    key: str

    def save(self, position: RankerPosition, ranker: RankerState) -> None:
        cycle, generator, logits, params = ranker.cycle, ranker.generator, ranker.logits, ranker.params
        model_opt, selector_opt = ranker.model_opt, ranker.selector_opt
        tensors = {
            "logits": logits.detach().cpu().contiguous(),
            "generator": generator.get_state(),
            "torch_rng": torch.get_rng_state(),
        }
        tensors |= {f"param.{i}": p.detach().cpu().contiguous() for i, (_, p) in enumerate(params)}
        model_tensors, model_names = _optimizer_tensors("model_opt", model_opt)
        selector_tensors, selector_names = _optimizer_tensors("selector_opt", selector_opt)
        state = {
            "format": FORMAT,
            "key": self.key,
            "epoch": position.epoch,
            "step": position.step,
            "order": position.order,
            "cycle": {"perm": cycle.perm, "pos": cycle.pos},
            "params": _layout(params),
            "model_opt": model_names,
            "selector_opt": selector_names,
        }
        tmp = self.folder.with_name(self.folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(tensors | model_tensors | selector_tensors, str(tmp / TENSORS_FILE))
        with atomic_open(tmp / STATE_FILE) as handle:
            json.dump(state, handle)
        old = self.folder.with_name(self.folder.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if self.folder.exists():
            self.folder.rename(old)
        tmp.rename(self.folder)
        shutil.rmtree(old, ignore_errors=True)

    def _existing(self) -> Path | None:
        """The whole checkpoint: the folder, or the previous one when a kill fell between the renames."""
        for folder in (self.folder, self.folder.with_name(self.folder.name + ".old")):
            if (folder / STATE_FILE).is_file() and (folder / TENSORS_FILE).is_file():
                return folder
        return None

    def restore(self, ranker: RankerState) -> RankerPosition | None:
        """Load the checkpoint into `ranker` and return its position; None (nothing changed) when there
        is none or it belongs to another ranking."""
        logits, params = ranker.logits, ranker.params
        folder = self._existing()
        if folder is None:
            return None
        try:
            state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
            tensors = load_file(str(folder / TENSORS_FILE))
        except (OSError, ValueError) as err:
            log.warning("SEAL ranker checkpoint %s unreadable (%s): starting the ranker afresh", folder, err)
            return None
        if (
            state.get("format") != FORMAT
            or state.get("key") != self.key
            or state.get("params") != _layout(params)
            or tuple(tensors["logits"].shape) != tuple(logits.shape)
        ):
            log.warning("SEAL ranker checkpoint %s is another ranking's: starting afresh", folder)
            return None
        with torch.no_grad():
            logits.copy_(tensors["logits"])
            for i, (_, p) in enumerate(params):
                p.copy_(tensors[f"param.{i}"])
        _load_optimizer(ranker.model_opt, "model_opt", state["model_opt"], tensors)
        _load_optimizer(ranker.selector_opt, "selector_opt", state["selector_opt"], tensors)
        ranker.generator.set_state(tensors["generator"])
        torch.set_rng_state(tensors["torch_rng"])
        ranker.cycle.perm, ranker.cycle.pos = list(state["cycle"]["perm"]), int(state["cycle"]["pos"])
        position = RankerPosition(int(state["epoch"]), int(state["step"]), list(state["order"]))
        log.info("SEAL ranker resumes at epoch %d, step %d (%s)", position.epoch + 1, position.step, folder)
        return position

    def remove(self) -> None:
        for suffix in ("", ".tmp", ".old"):
            shutil.rmtree(self.folder.with_name(self.folder.name + suffix), ignore_errors=True)
