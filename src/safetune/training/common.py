"""What every trainer shares (SFT/SaRFT, MPO, the preference baselines): TrainingArguments from a
RunConfig, LoRA wrapping, the run folder (prepare, find the last checkpoint, save `final/` atomically) and
the pair counts run.json records."""

from __future__ import annotations

import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from safetune.config import RunConfig
from safetune.data.languages import language_counts
from safetune.data.records import ParallelPreferencePair, PreferencePair
from safetune.errors import ConfigError, TrainingDiverged


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
    t = config.train
    precision = _precision_flags(t.precision)
    return TrainingArguments(
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
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=False,
        bf16=precision["bf16"],
        fp16=precision["fp16"],
    )


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


def wrap_lora(model: Any, config: RunConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    t = config.train
    lora = LoraConfig(
        r=t.lora_r,
        lora_alpha=t.lora_alpha,
        lora_dropout=t.lora_dropout,
        target_modules=list(t.lora_targets),
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as err:  # peft's NoMatchingPeftModuleError: no module has one of the target names
        names = sorted({n.rsplit(".", 1)[-1] for n, _ in model.named_modules() if n and not n[-1].isdigit()})
        shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
        raise ConfigError(
            f"train.lora_targets {list(t.lora_targets)}: {err} (module names: {shown})"
        ) from None


def last_checkpoint(folder: Path) -> str | None:
    if not folder.is_dir():
        return None
    steps = [
        (int(p.name.split("-")[-1]), p)
        for p in folder.glob("checkpoint-*")
        if p.name.split("-")[-1].isdigit()
    ]
    return str(max(steps)[1]) if steps else None


def prepare_output(out: Path, resume: bool, overwrite: bool) -> None:
    if (out / "final").exists() and not resume and not overwrite:
        raise ConfigError(f"{out} already holds a finished run; pass --overwrite to replace it")
    if overwrite and out.exists() and not resume:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def save_final(trainer: Trainer, tokenizer: Any, out: Path) -> None:
    """Save into a temp folder and rename, so `final/` is either complete or absent."""
    final, tmp = out / "final", out / "final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.save_model(str(tmp))
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(str(tmp))
        # The Trainer pickles its arguments beside the weights; the run folder has config.yaml instead.
        (tmp / "training_args.bin").unlink(missing_ok=True)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
