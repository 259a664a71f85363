"""What every trainer shares (SFT/SaRFT, MPO, the preference baselines): TrainingArguments from a
RunConfig, the callbacks every Trainer gets (divergence stop, console), LoRA wrapping, the run folder
(prepare, find the last checkpoint, save `final/` atomically), the run identity --resume checks, the
whole run's loss, the per-step metrics our own Trainers log (AveragedMetrics) and the pair counts
run.json records."""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import (
    PrinterCallback,
    ProgressCallback,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from safetune import console
from safetune.config import RunConfig
from safetune.data.languages import language_counts
from safetune.data.records import ParallelPreferencePair, PreferencePair
from safetune.errors import ConfigError, TrainingDiverged
from safetune.launch import uses_cpu_processes
from safetune.storage import LOCK_NAME, follow_umask, write_json

log = logging.getLogger(__name__)


def pair_counts(pairs: Sequence[ParallelPreferencePair | PreferencePair]) -> dict[str, Any]:
    """The `data` entry of run.json for pair data (MPO and the DPO-family baselines): how many pairs, and
    how many per (target) language."""
    return {"count": len(pairs), "languages": language_counts(pairs)}


def _precision_flags(precision: str) -> dict[str, bool]:
    """bf16/fp16 mixed precision flags for TrainingArguments (auto: bf16 where the GPU supports it)."""
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


def training_arguments(config: RunConfig, out: Path) -> TrainingArguments:
    """The Trainer's arguments from `config`, checked as the Trainer would check them (settings this
    machine cannot run, e.g. bf16 on a CPU; an unknown or missing report_to integration): a ConfigError
    before any work or output rather than a traceback once training starts. Writes nothing."""
    try:
        args = _training_arguments(config, out)
    except ValueError as err:
        # Most of what TrainingArguments refuses that our config allows is a precision this machine lacks.
        hint = f" (train.precision={config.train.precision}; auto picks what this machine supports)"
        explicit = config.train.precision in ("bf16", "fp16")
        raise ConfigError(
            f"train: transformers refuses these settings: {err}{hint if explicit else ''}"
        ) from None
    _check_report_to(args)
    return args


def _check_report_to(args: TrainingArguments) -> None:
    from transformers.integrations import get_reporting_integration_callbacks

    try:
        # The Trainer builds these callbacks at its start; each one checks that its library is there.
        for callback in get_reporting_integration_callbacks(args.report_to):
            callback()
    except (ValueError, RuntimeError, ImportError) as err:
        raise ConfigError(f"train.report_to: {err}") from None


def _training_arguments(config: RunConfig, out: Path) -> TrainingArguments:
    t = config.train
    precision = _precision_flags(t.precision)
    return TrainingArguments(
        # Several processes without CUDA: data-parallel on the CPU over gloo (launch.uses_cpu_processes).
        use_cpu=uses_cpu_processes(),
        output_dir=str(out / "checkpoints"),
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.resolved_learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the total steps
        num_train_epochs=t.num_epochs,
        max_steps=t.max_steps,
        seed=t.seed,
        data_seed=t.seed,
        save_strategy="steps" if t.save_steps > 0 else "no",
        save_steps=max(t.save_steps, 1),
        save_total_limit=t.save_total_limit,
        save_only_model=False,
        logging_steps=t.logging_steps,
        # The Trainer's default replaces a NaN/inf step loss by the running mean, which hides a
        # divergence from the logs (and from StopOnNonFinite) while the weights turn NaN.
        logging_nan_inf_filter=False,
        report_to=t.report_to,
        remove_unused_columns=False,
        activation_checkpointing=t.gradient_checkpointing,
        dataloader_num_workers=0,
        # Every trained weight takes part in every step's loss: DDP need not search the graph for unused ones.
        ddp_find_unused_parameters=False,
        dataloader_pin_memory=torch.cuda.is_available(),
        # The Trainer's bar prints every log dict under it (and PrinterCallback, its replacement, prints
        # them bare): TrainingConsole shows the bar and one metrics line instead (add_callbacks).
        disable_tqdm=True,
        bf16=precision["bf16"],
        fp16=precision["fp16"],
    )


def add_callbacks(trainer: Trainer) -> None:
    """What every safetune Trainer runs with: StopOnNonFinite, and TrainingConsole in place of the
    Trainer's printed log dicts."""
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(StopOnNonFinite())
    trainer.add_callback(TrainingConsole())


def metrics_line(step: int, max_steps: int, logs: dict[str, Any], elapsed_s: float) -> str:
    """`step 20/60  loss 1.234  lr 9.1e-05  grad_norm 0.87  (12.3 s)`, from a Trainer log; the keys a log
    lacks are left out."""
    parts = [f"step {step}/{max_steps}"]
    for key, shown, spec in (
        ("loss", "loss", ".4g"),
        ("learning_rate", "lr", ".2g"),
        ("grad_norm", "grad_norm", ".3g"),
    ):
        value = logs.get(key)
        if isinstance(value, int | float):
            parts.append(f"{shown} {value:{spec}}")
    return "  ".join(parts) + f"  ({elapsed_s:.1f} s)"


class TrainingConsole(TrainerCallback):
    """One progress bar over the optimiser steps and, every `train.logging_steps`, one metrics line (the
    whole log dict, method metrics included, at debug level: `-v`). The logs themselves still reach
    trainer_state.json and `train.report_to`."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.start = time.perf_counter()

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.start = time.perf_counter()
        if state.is_world_process_zero:
            self.bar = console.progress(total=state.max_steps, desc="training", unit="step")

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.bar is not None:  # a resumed run jumps to its checkpoint's step at the first update
            self.bar.update(state.global_step - self.bar.n)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not state.is_world_process_zero or not logs:
            return
        shown = {k: v for k, v in logs.items() if k != "total_flos"}
        log.debug("step %d: %s", state.global_step, shown)
        elapsed = time.perf_counter() - self.start
        if "loss" in logs:
            log.info("%s", metrics_line(state.global_step, state.max_steps, logs, elapsed))
        elif "train_runtime" in logs:  # the end-of-training summary
            log.info("trained to step %d/%d in %.1f s", state.global_step, state.max_steps, elapsed)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class StopOnNonFinite(TrainerCallback):
    """Stops training with TrainingDiverged when a logged loss is NaN or infinite, or when the weights
    about to be saved (a checkpoint, or `final/` at the end) are: a run that diverged keeps its last good
    checkpoint and never writes NaN weights or a model card with a meaningless loss."""

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        for key in ("loss", "train_loss"):
            value = (logs or {}).get(key)
            if isinstance(value, int | float) and not math.isfinite(value):
                raise TrainingDiverged(_diverged(args, state, f"the training loss is {value}"))

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # Runs after the Trainer decided to save at this step, before it saves.
        if control.should_save:
            _check_weights(args, state, kwargs.get("model"))

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        _check_weights(args, state, kwargs.get("model"))


def _check_weights(args: TrainingArguments, state: TrainerState, model: Any) -> None:
    if model is None:
        return
    for name, param in model.named_parameters():
        # Only trained weights can have changed; a frozen base was finite when it was loaded.
        if param.requires_grad and not bool(torch.isfinite(param).all()):
            raise TrainingDiverged(_diverged(args, state, f"weight {name} is not finite"))


def _diverged(args: TrainingArguments, state: TrainerState, what: str) -> str:
    last = last_checkpoint(Path(args.output_dir or "."))
    kept = f"the last good checkpoint is {last}" if last else "no checkpoint was saved"
    return (
        f"training diverged at step {state.global_step}: {what}; nothing saved after it, {kept} "
        "(lower train.learning_rate or method.beta)"
    )


def wrap_lora(model: Any, config: RunConfig, exclude_modules: str | None = None) -> Any:
    from peft import LoraConfig, get_peft_model

    t = config.train
    check_lora_targets(model, config)
    lora = LoraConfig(
        r=t.lora_r,
        lora_alpha=t.lora_alpha,
        lora_dropout=t.lora_dropout,
        target_modules=list(t.lora_targets),
        exclude_modules=exclude_modules,
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as err:  # anything else peft refuses about these targets
        raise ConfigError(f"train.lora_targets {list(t.lora_targets)}: {err}") from None


def check_lora_targets(model: Any, config: RunConfig) -> None:
    """Refuse LoRA targets that name no module of `model` (peft's rule for a list of names: a module
    whose name is a target or ends with "." + a target) as soon as the model is loaded: peft would
    refuse them only when wrapping, after the selection or reference work and the run's first files."""
    t = config.train
    if t.finetune != "lora":
        return
    targets = list(t.lora_targets)
    names = [name for name, _ in model.named_modules() if name]
    if any(name in targets or any(name.endswith(f".{target}") for target in targets) for name in names):
        return
    kinds = sorted({name.rsplit(".", 1)[-1] for name in names if not name[-1].isdigit()})
    shown = ", ".join(kinds[:20]) + (", ..." if len(kinds) > 20 else "")
    raise ConfigError(
        f"train.lora_targets {targets}: no module of the model has one of these names (module names: {shown})"
    )


def adapted_modules(model: Any, config: RunConfig) -> list[tuple[str, Any]]:
    """(name, module) of every module LoRA adapts under `train.lora_targets`, by peft's rule for a list of
    names (see check_lora_targets), for the linear layers among them (SafeLoRA reads their weights)."""
    targets = list(config.train.lora_targets)
    return [
        (name, module)
        for name, module in model.named_modules()
        if name
        and (name in targets or any(name.endswith(f".{target}") for target in targets))
        and isinstance(getattr(module, "weight", None), torch.Tensor)
        and module.weight.dim() == 2
    ]


def last_checkpoint(folder: Path) -> str | None:
    if not folder.is_dir():
        return None
    steps = [
        (int(p.name.split("-")[-1]), p)
        for p in folder.glob("checkpoint-*")
        if p.name.split("-")[-1].isdigit()
    ]
    return str(max(steps)[1]) if steps else None


def check_output(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse a run folder that holds another run, before any work; writes nothing."""
    if (out / "final").exists() and not resume and not overwrite:
        raise ConfigError(f"{out} already holds a finished run; pass --overwrite to replace it")
    if not resume and not overwrite and last_checkpoint(out / "checkpoints") is not None:
        # A fresh start beside another run's checkpoints would leave them for a later --resume to pick
        # up under this run's identity.
        raise ConfigError(
            f"{out} holds checkpoints of an unfinished run; pass --resume to continue it or --overwrite "
            "to start again"
        )


def start_output(out: Path, resume: bool, overwrite: bool) -> None:
    """The run folder, ready for this run's first file: called once everything is checked and the
    work starts, so that bad input never costs the previous run that --overwrite replaces."""
    check_output(out, resume, overwrite)
    if overwrite and out.exists() and not resume:
        # Everything but the lock file this process holds (output_lock): removing it would let a second
        # process lock a fresh one and work in the same folder.
        for child in out.iterdir():
            if child.name == LOCK_NAME:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    out.mkdir(parents=True, exist_ok=True)


def save_final(trainer: Trainer, tokenizer: Any, out: Path) -> None:
    """Save into a temp folder and rename, so `final/` is either complete or absent. Every rank of a
    multi-process launch takes part (FSDP and ZeRO-3 gather the weights from all of them); the main
    process alone clears, writes and renames the folder, between barriers."""
    final, tmp = out / "final", out / "final.tmp"
    main = trainer.accelerator.is_main_process
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))
    trainer.accelerator.wait_for_everyone()
    if main:
        tokenizer.save_pretrained(str(tmp))
        # The Trainer pickles its arguments beside the weights; the run folder has config.yaml instead.
        (tmp / "training_args.bin").unlink(missing_ok=True)
        # safetensors writes 0600 files; the weights follow the umask like every other output.
        follow_umask(tmp)
        if (out / "checkpoints").is_dir():
            follow_umask(out / "checkpoints")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    trainer.accelerator.wait_for_everyone()


# --- the run's identity: what --resume must find unchanged --------------------------------------------------

IDENTITY_FILE = "identity.json"
# Config keys a resumed run may change: where things are written, how often it logs and saves, threads
# and memory savers (same arithmetic), and paths whose content is compared on its own (data: the content
# hash; model: the fingerprint). The run length (max_steps, num_epochs) may change to extend or shorten
# a run; the learning-rate schedule then follows the new length from the checkpoint on (README: The run folder).
RESUMABLE_KEYS = frozenset(
    {
        "data.path",
        "data.profiles",
        "model.name",
        "train.output_dir",
        "train.save_steps",
        "train.save_total_limit",
        "train.logging_steps",
        "train.report_to",
        "train.num_threads",
        "train.gradient_checkpointing",
        "train.max_steps",
        "train.num_epochs",
    }
)
# The sections that shape training; generation, judge and eval do not.
_TRAINING_SECTIONS = ("model", "data", "chat", "selection", "method", "train")


def run_identity(config: RunConfig, **parts: str) -> dict[str, Any]:
    """The run's identity: its training config minus RESUMABLE_KEYS (as flat `section.key` values),
    plus content digests given as `parts` (model fingerprint, data hash, selection hash, ...)."""
    sections = config.to_dict()
    flat = {
        f"{section}.{key}": value
        for section in _TRAINING_SECTIONS
        for key, value in sections[section].items()
        if f"{section}.{key}" not in RESUMABLE_KEYS
    }
    return {"config": flat, **parts}


def check_identity(out: Path, identity: dict[str, Any]) -> None:
    """Refuse to --resume a run folder whose checkpoints another run wrote: compare `identity` (the
    parts it holds) with the one the first start stored; a ConfigError names what differs."""
    path = out / IDENTITY_FILE
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{out} has checkpoints but no {IDENTITY_FILE} (written by an older safetune or another "
            "tool), so --resume cannot tell whether they belong to this run; pass --overwrite to start again"
        ) from None
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read {path}: {err}") from None
    differs = []
    for part, value in identity.items():
        if part != "config":
            if stored.get(part) != value:
                differs.append(f"{part} (another {'model' if part == 'model' else 'content'})")
            continue
        old = stored.get("config") or {}
        for key in sorted(set(value) | set(old)):
            if key in RESUMABLE_KEYS or old.get(key) == value.get(key):
                continue
            differs.append(f"{key} ({_short(old.get(key))} -> {_short(value.get(key))})")
    if differs:
        shown = ", ".join(differs[:4]) + (f" and {len(differs) - 4} more" if len(differs) > 4 else "")
        raise ConfigError(
            f"{out}: --resume would continue another run's checkpoints: {shown} differ; "
            "use another --out, or --overwrite to start again"
        )


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def write_identity(out: Path, identity: dict[str, Any]) -> None:
    write_json(out / IDENTITY_FILE, identity)


def start_or_resume(out: Path, identity: dict[str, Any], checkpoint: str | None) -> None:
    """Resuming from `checkpoint`: the stored identity must match. A first start stores it, before any
    checkpoint exists, so every checkpoint has the identity of the run that wrote it beside it."""
    if checkpoint is not None:
        check_identity(out, identity)
    else:
        write_identity(out, identity)


# --- the whole run's train loss across --resume --------------------------------------------------------------

LOSS_FILE = "safetune_loss.json"


class LossTotal(TrainerCallback):
    """Stores, in each checkpoint, the sum of the per-step training losses up to it, so that a resumed
    run can report the whole run's mean loss (the Trainer's `train_loss` covers only its own steps)."""

    def __init__(self, checkpoint: str | None = None):
        self.trainer: Trainer | None = None
        self.offset, self.offset_steps = 0.0, 0
        if checkpoint is not None:
            try:
                saved = json.loads((Path(checkpoint) / LOSS_FILE).read_text(encoding="utf-8"))
                self.offset, self.offset_steps = float(saved["loss_sum"]), int(saved["global_step"])
            except (OSError, ValueError, KeyError, TypeError):
                log.warning("%s has no %s: train_loss covers only the resumed steps", checkpoint, LOSS_FILE)
                self.offset_steps = -1

    def _session_sum(self) -> float | None:
        # The Trainer keeps the logged part of its loss sum and the part since the last log apart.
        logged = getattr(self.trainer, "_total_loss_scalar", None)
        pending = getattr(self.trainer, "_tr_loss", None)
        if logged is None or pending is None:
            return None
        return float(logged) + float(pending.item() if hasattr(pending, "item") else pending)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        session = self._session_sum()
        if session is None or self.offset_steps < 0 or not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            write_json(
                folder / LOSS_FILE, {"global_step": state.global_step, "loss_sum": self.offset + session}
            )

    def whole_run_loss(self, session_loss: float, global_step: int) -> float:
        """The mean loss over every step of the run from the resumed run's own mean `session_loss`."""
        if self.offset_steps <= 0 or global_step <= 0:
            return session_loss
        session_steps = global_step - self.offset_steps
        return (self.offset + session_loss * session_steps) / global_step


# --- per-step metrics of our own Trainers, averaged into each log ---------------------------------------------


class AveragedMetrics(Trainer):
    """A Trainer whose compute_loss records method metrics per micro-batch (`record`); each log gets their
    mean since the previous log: under their plain name in a training log ("loss" in it), as
    `eval_<name>` in an evaluation log. SafetuneTrainer and MpoTrainer share it."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._metrics: dict[str, list[float]] = defaultdict(list)

    def record(self, training: bool, name: str, value: float) -> None:
        self._metrics[f"{'train' if training else 'eval'}/{name}"].append(value)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if "loss" in logs else "eval"
        for key, values in self._metrics.items():
            if key.startswith(mode) and values:
                name = key.split("/", 1)[1] if mode == "train" else key.replace("/", "_")
                logs[name] = sum(values) / len(values)
        self._metrics = defaultdict(list, {k: v for k, v in self._metrics.items() if not k.startswith(mode)})
        super().log(logs, start_time)
