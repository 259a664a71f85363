"""`safetune train` for every method: the prelude once, a recipe per trainer kind, the epilogue once.

    prelude   checks (config, run folder, model files, trainer arguments), beta from the method
              registry, seed, tokenizer, data (recipe), the run identity (refusing another run's
              checkpoints before any scoring or reference work), the model, the recipe's frozen pass
    start     the run folder (--overwrite clears it only here), identity.json, the recipe's files,
              config.yaml, LoRA or a frozen reference copy, the recipe's Trainer
    epilogue  train (resumed from the last checkpoint with --resume), `final/`, the recipe's work on it,
              run.json, README.md

Under a multi-process launch (torchrun, accelerate launch; docs/scaling.md) every rank runs this
skeleton: the frozen pass on the main process first (the others read its cache), the Trainer
data-parallel, and every file of the run folder written by the main process alone, between barriers.

The recipes (training/recipe.py) hold only what differs: RoleRecipe (SaRFT/SFT, training/trainer.py),
MpoRecipe (training/mpo.py), TrlRecipe (the DPO family through TRL, training/baselines.py),
SafeLoraRecipe (SFT, then SafeLoRA's projection of the adapter, training/safelora.py), the role-data
baselines TokenwiseRecipe (training/tokenwise.py), SafeInstrRecipe (training/safeinstr.py) and
SppftRecipe (training/sppft.py), LisaRecipe (training/lisa.py), VaccineRecipe (training/vaccine.py)
SealRecipe (SEAL's ranker, then SFT on the rows it keeps, training/seal.py), SdrrlRecipe (SDRRL's
transfer set from parallel pairs, then SFT on it, training/sdrrl.py) and LensRecipe (LENS's manipulation
of the top layers on parallel prompts, training/lens.py).

Run folder layout (`train.output_dir`):
    config.yaml            the resolved configuration
    identity.json          what --resume must find unchanged
    selection.jsonl        the per-example flags used, plus RDS scores when computed (SaRFT/SFT)
    selection_stats.json
    checkpoints/           Trainer checkpoints every `train.save_steps` (resume with --resume)
    final/                 LoRA adapter or full model (safetensors) + tokenizer
    trained/, safelora.json   SafeLoRA only: the adapter before its projection, the per-module report
    merged/                vaccine under LoRA: the base with the adapter merged in (the next stage's model)
    transfer.jsonl         sdrrl: the transfer set trained on (each example with its copies)
    run.json               provenance and final metrics
    README.md              a short model card

Run as: safetune train --config configs/sarft_lora.yaml -m path/or/hub-id
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, set_seed
from transformers.trainer_utils import TrainOutput

from safetune import __version__
from safetune.config import RunConfig, dump_config
from safetune.data.records import PreferencePair
from safetune.errors import ConfigError
from safetune.launch import (
    barrier,
    init_process_group,
    is_main_process,
    main_process_first,
    main_process_lock,
)
from safetune.methods.registry import MethodSpec, RecipeName, get_method
from safetune.models.loading import (
    check_model_folder,
    load_causal_lm,
    load_tokenizer,
    model_fingerprint,
    resolve_dtype,
)
from safetune.provenance import git_commit
from safetune.storage import atomic_open, cache_root, hash_json, write_json
from safetune.training.baselines import TrlRecipe
from safetune.training.common import (
    LossTotal,
    check_identity,
    check_lora_targets,
    check_output,
    last_checkpoint,
    run_identity,
    save_final,
    start_or_resume,
    start_output,
    training_arguments,
    wrap_lora,
)
from safetune.training.lens import LensRecipe
from safetune.training.lisa import LisaRecipe
from safetune.training.mpo import MpoRecipe
from safetune.training.recipe import Recipe, RecipeReport
from safetune.training.safeinstr import SafeInstrRecipe
from safetune.training.safelora import SafeLoraRecipe
from safetune.training.sdrrl import SdrrlRecipe
from safetune.training.seal import SealRecipe
from safetune.training.sppft import SppftRecipe
from safetune.training.tokenwise import TokenwiseRecipe
from safetune.training.trainer import RoleRecipe
from safetune.training.vaccine import VaccineRecipe

log = logging.getLogger(__name__)

# The recipe each registry entry names (MethodSpec.recipe).
RECIPES: dict[RecipeName, type[Recipe]] = {"role": RoleRecipe, "mpo": MpoRecipe, "trl": TrlRecipe}
# SafeLoRA: role-data SFT, then the projection of the trained adapter (training/safelora.py)
RECIPES["safelora"] = SafeLoraRecipe
# Role-data baselines without RDS (issue 13, part 2).
RECIPES.update({"tokenwise": TokenwiseRecipe, "safeinstr": SafeInstrRecipe, "sppft": SppftRecipe})
# Lisa and Vaccine (training/lisa.py, training/vaccine.py).
RECIPES.update({"lisa": LisaRecipe, "vaccine": VaccineRecipe})
RECIPES["seal"] = SealRecipe  # SEAL: the bilevel data ranker, then SFT on the kept rows
RECIPES["sdrrl"] = SdrrlRecipe  # SDRRL: the transfer set from parallel pairs, then SFT on it
RECIPES["lens"] = LensRecipe  # LENS: top-K layers on parallel prompts, the frozen side cached


def train(
    config: RunConfig,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: list[TrainerCallback] | None = None,
) -> Path:
    """Train `config.method.name` from a config; returns the run folder. `config.method.beta` is resolved
    in place (the method's default when unset, 0 for a method without beta).

    Holds the run folder's lock throughout (a second process training into it stops: busy). --resume
    continues the last checkpoint only when the run's identity (identity.json: training config minus
    the keys a resumed run may change, model fingerprint, data hash, selection) is unchanged.

    Everything is checked before the run's first file (config, data, selection flags, trainer
    arguments, model files, LoRA targets): bad input leaves the folder as it was (output_lock removes
    a folder it created), and --overwrite clears the previous run only when the work starts.
    """
    spec = get_method(config.method.name)
    recipe = RECIPES[spec.recipe](config, spec)
    with main_process_lock(Path(config.train.output_dir)):
        _run(config, spec, recipe, resume, overwrite, callbacks)
    return Path(config.train.output_dir)


def train_baseline(
    config: RunConfig,
    pairs: list[PreferencePair],
    out: Path,
    *,
    overwrite: bool = False,
    callbacks: list[TrainerCallback] | None = None,
) -> dict[str, Any]:
    """Train the TRL-trained method `config.method.name` on `pairs` (instead of `data.path`) into the run
    folder `out`, as `train` would; returns run.json's metrics. The caller's config is left as it is."""
    config = copy.deepcopy(config)
    config.train.output_dir = str(out)
    spec = get_method(config.method.name)
    recipe = TrlRecipe(config, spec, pairs=pairs)
    with main_process_lock(Path(out)):
        return _run(config, spec, recipe, False, overwrite, callbacks)


def resolve_beta(config: RunConfig, spec: MethodSpec) -> None:
    """`method.beta` from the registry, once: the method's default when unset; 0 for a method without
    beta (SFT, ORPO: whose weight is `method.orpo_lambda`), with a warning when one was given."""
    m = config.method
    if not spec.uses_beta:
        if m.beta not in (None, 0.0):
            log.warning("%s has no beta; method.beta = %s is ignored", spec.name, m.beta)
        m.beta = 0.0
    elif m.beta is None:
        m.beta = spec.default_beta


def _run(
    config: RunConfig,
    spec: MethodSpec,
    recipe: Recipe,
    resume: bool,
    overwrite: bool,
    callbacks: list[TrainerCallback] | None,
) -> dict[str, Any]:
    t, m = config.train, config.model
    if not m.name:
        raise ConfigError("model.name is required (-m / --model: hub id or local folder)")
    resolve_beta(config, spec)
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    init_process_group()  # a multi-process launch: its barriers come before the Trainer's
    # Seed before anything random is created (LoRA's A matrices), so a run is a function of its config.
    set_seed(t.seed)
    out = Path(t.output_dir)
    check_output(out, resume, overwrite)
    check_model_folder(m.name)
    args = training_arguments(config, out)
    tokenizer = load_tokenizer(m.name, m.revision, m.trust_remote_code)
    data_hash = recipe.load(tokenizer)
    checkpoint = last_checkpoint(out / "checkpoints") if resume else None
    fingerprint = None
    if checkpoint is not None:  # refuse before any scoring or reference work
        fingerprint = model_fingerprint(m.name, m.revision, cache_root(config.cache_dir))
        check_identity(out, run_identity(config, model=fingerprint, data=data_hash))

    # LoRA keeps the frozen base in the compute dtype (bf16 on a GPU); full fine-tuning keeps fp32 master
    # weights and lets the Trainer run bf16 autocast.
    weights_dtype = resolve_dtype(t.precision) if t.finetune == "lora" else torch.float32
    model = load_causal_lm(m.name, m.revision, weights_dtype, m.trust_remote_code)
    check_lora_targets(model, config)  # before the frozen pass; the wrapping comes after it
    # The fingerprint remembers each weight file's digest in the cache: only once the model is known good.
    fingerprint = fingerprint or model_fingerprint(m.name, m.revision, cache_root(config.cache_dir))
    identity = run_identity(config, model=fingerprint, data=data_hash)
    model.eval()
    # Under a multi-process launch the main process scores (and caches); the others then read the cache.
    with main_process_first():
        identity.update(recipe.frozen_pass(model, fingerprint))
    model.train()

    # Everything is checked: the work (and the run's files) starts here, written by the main process.
    if is_main_process():
        start_output(out, resume, overwrite)
        start_or_resume(out, identity, checkpoint)
        recipe.write_files(out)
        with atomic_open(out / "config.yaml") as handle:
            handle.write(dump_config(config))
    elif checkpoint is not None:
        check_identity(out, identity)  # the main process's check, so that every rank stops alike
    barrier()  # the run folder is ready (--overwrite has cleared it) before any rank trains into it
    ref_model = None
    if t.finetune == "lora":
        model = wrap_lora(
            model, config, recipe.lora_exclude_modules()
        )  # the reference is the adapter-disabled base
    elif spec.needs_reference and recipe.needs_reference_copy():
        ref_model = copy.deepcopy(model)
    trainer = recipe.trainer(args, model, ref_model, tokenizer, callbacks)
    if resume and checkpoint is None:
        log.warning("--resume: no checkpoint in %s, starting from scratch", out / "checkpoints")
    result = _train_whole_run(trainer, checkpoint)
    save_final(trainer, tokenizer, out)

    metrics = {**result.metrics, "global_step": result.global_step}
    if is_main_process():
        recipe.after_training(trainer, out)
        report = recipe.report(trainer, metrics)
        metrics.update(report.metrics)
        write_run_json(config, spec, out, report.details, metrics)
        with atomic_open(out / "README.md") as handle:
            handle.write(model_card(config, report, metrics))
    barrier()  # every rank returns once the run folder is complete
    return metrics


def _train_whole_run(trainer: Trainer, checkpoint: str | None) -> TrainOutput:
    """trainer.train(), resumed from `checkpoint` when given, with `train_loss` over the whole run: the
    Trainer's own figure covers only the steps this process ran."""
    totals = LossTotal(checkpoint)
    trainer.add_callback(totals)
    totals.trainer = trainer
    result = trainer.train(resume_from_checkpoint=checkpoint)
    loss = totals.whole_run_loss(result.training_loss, result.global_step)
    return TrainOutput(result.global_step, loss, {**result.metrics, "train_loss": loss})


def write_run_json(
    config: RunConfig, spec: MethodSpec, out: Path, details: dict[str, Any], metrics: dict[str, Any]
) -> None:
    """run.json, the one writer for every method: provenance, the recipe's `details`, the metrics."""
    run = {
        "safetune_version": __version__,
        "git_commit": git_commit(),
        "method": spec.name,
        "source": spec.source,
        "beta": config.method.beta,
        "base_model": config.model.name,
        "finetune": config.train.finetune,
        "config_hash": hash_json(config.to_dict()),
        **details,
        "metrics": metrics,
    }
    write_json(out / "run.json", run)


def model_card(config: RunConfig, report: RecipeReport, metrics: dict[str, Any]) -> str:
    t = config.train
    lines = [
        f"# {Path(t.output_dir).name}",
        "",
        f"Fine-tuned from `{config.model.name}` with safetune {__version__}, method `{config.method.name}` "
        f"({'LoRA' if t.finetune == 'lora' else 'full fine-tuning'}).",
        "",
        "| setting | value |",
        "|---|---|",
        *report.card_rows,
        f"| learning rate | {t.resolved_learning_rate} ({t.lr_scheduler}) |",
        f"| batch | {t.batch_size} x {t.grad_accum} accumulation |",
        f"| steps | {metrics.get('global_step')} |",
        f"| final train loss | {metrics.get('train_loss', float('nan')):.4f} |",
        "",
        "Weights are in `final/` (safetensors). The resolved configuration is in `config.yaml`.",
        "Measure what the fine-tune cost in safety with `safetune eval`.",
        "",
    ]
    return "\n".join(lines)
