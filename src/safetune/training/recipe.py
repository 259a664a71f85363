"""What a trainer kind adds to the run that `training/run.py` sets up and finishes for every method.

`train` does the prelude once (checks, beta, seed, run folder, tokenizer, model, identity, LoRA or a
reference copy, config.yaml) and the epilogue once (train with --resume, save `final/`, run.json, the
model card). A `Recipe` holds only what differs between trainer kinds: which records it loads and how it
encodes them, the frozen pass over them before the work starts (RDS scoring, the MPO reference cache),
which Trainer it builds, any work on the saved weights (SafeLoRA's projection) and what it adds to
run.json and the card. One recipe object serves one run, so
what `load` read stays on it for the later steps.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import Trainer, TrainerCallback, TrainingArguments

from safetune.config import RunConfig
from safetune.methods.registry import MethodSpec


@dataclass
class RecipeReport:
    """What a recipe adds to run.json (`details`: top-level keys; `metrics`: beside the Trainer's) and to
    the model card's settings table (`card_rows`: "| setting | value |" lines)."""

    details: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    card_rows: list[str] = field(default_factory=list)


class Recipe(ABC):
    """One trainer kind's part of a run, called by `training/run.py` in this order: `load`, `frozen_pass`
    (model loaded, nothing written yet), `write_files` (the run folder is started), `trainer`,
    `after_training` (`final/` is saved), `report`.

    Under a multi-process launch every rank calls `load`, `frozen_pass` (the main process first; the
    others after it, reading what it cached) and `trainer`; only the main process calls `write_files`,
    `after_training` and `report`, so a recipe writes no file anywhere else."""

    def __init__(self, config: RunConfig, spec: MethodSpec):
        self.config = config
        self.spec = spec

    @abstractmethod
    def load(self, tokenizer: Any) -> str:
        """Read and encode the training records; returns their content hash (the run identity's `data`)."""

    def frozen_pass(self, model: Any, fingerprint: str) -> dict[str, str]:
        """Work on the freshly loaded model (in eval mode, under `main_process_first`; `fingerprint` is
        its models/loading.py fingerprint) before the run's first file; returns identity parts that come
        from it (e.g. the selection). Work that is costly goes through a cache (reference/), so the other
        ranks of a launch read the main process's result instead of computing it again. Default: none."""
        return {}

    def write_files(self, out: Path) -> None:
        """The recipe's own files in the run folder, once the work has started. Default: none."""
        return None

    def needs_reference_copy(self) -> bool:
        """Whether full fine-tuning needs a frozen copy of the model (LoRA uses the adapter-disabled
        base instead); only asked for methods whose spec needs a reference."""
        return True

    def lora_exclude_modules(self) -> str | None:
        """Modules (a regex of full module names, peft's exclude_modules) that get no LoRA adapter; asked
        after `frozen_pass`. Default: none (SPPFT: its frozen safety layers)."""
        return None

    @abstractmethod
    def trainer(
        self,
        args: TrainingArguments,
        model: Any,
        ref_model: Any,
        tokenizer: Any,
        callbacks: list[TrainerCallback] | None,
    ) -> Trainer:
        """The Trainer for this run, with `callbacks` and StopOnNonFinite (training/common.py)."""

    def after_training(self, trainer: Trainer, out: Path) -> None:
        """Work on the saved run once `final/` is written and before run.json (SafeLoRA's projection of
        the trained adapter, Vaccine's merged model for the next stage). Default: none."""
        return None

    @abstractmethod
    def report(self, trainer: Trainer, metrics: dict[str, Any]) -> RecipeReport:
        """run.json's and the model card's recipe-specific parts, after training."""
