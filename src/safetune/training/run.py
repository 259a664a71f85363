"""Build model, tokenizer, reference and dataset from a RunConfig; train; save; write the model card.

Run folder layout (`train.output_dir`):
    config.yaml            the resolved configuration
    selection.jsonl        the per-example flags used (plus RDS scores when computed)
    selection_stats.json
    checkpoints/           Trainer checkpoints every `train.save_steps` (resume with --resume)
    final/                 LoRA adapter or full model (safetensors) + tokenizer
    run.json               provenance and final metrics
    README.md              a short model card

Run as: safetune train --config configs/sarft_lora.yaml --train.model path/or/hub-id
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from transformers import Trainer, TrainerCallback, set_seed
from transformers.trainer_utils import TrainOutput

from safetune import __version__
from safetune.config import RunConfig, dump_config
from safetune.data.chat import ChatRenderer
from safetune.data.languages import LanguageCheck, language_counts
from safetune.data.readers import InvalidRecords
from safetune.data.records import RoleExample
from safetune.data.sources import load_data
from safetune.errors import ConfigError
from safetune.methods.registry import get_method
from safetune.models.loading import (
    check_model_folder,
    default_device,
    load_causal_lm,
    load_tokenizer,
    model_fingerprint,
    resolve_dtype,
)
from safetune.provenance import git_commit
from safetune.selection import select, write_selection
from safetune.storage import atomic_open, cache_root, hash_json, output_lock, write_json
from safetune.training.common import (
    LossTotal,
    check_identity,
    check_lora_targets,
    check_output,
    last_checkpoint,
    pair_counts,
    run_identity,
    save_final,
    start_or_resume,
    start_output,
    training_arguments,
    wrap_lora,
)
from safetune.training.trainer import RoleCollator, SafetuneTrainer

log = logging.getLogger(__name__)


def _encode(
    renderer: ChatRenderer, examples: Sequence[RoleExample], flags: Sequence[bool]
) -> list[dict[str, Any]]:
    """Training rows: the plain chat with no system prompt (the role goes into the weights)."""
    rows = []
    for ex, flag in zip(examples, flags, strict=True):
        enc = renderer.encode(ex.input, ex.output)
        rows.append({"input_ids": enc.input_ids, "labels": enc.labels, "flag": bool(flag)})
    return rows


def _model_card(config: RunConfig, stats: dict[str, Any], metrics: dict[str, Any]) -> str:
    t, m = config.train, config.method
    lines = [
        f"# {Path(t.output_dir).name}",
        "",
        f"Fine-tuned from `{t.model}` with safetune {__version__}, method `{m.name}` "
        f"({'LoRA' if t.finetune == 'lora' else 'full fine-tuning'}).",
        "",
        "| setting | value |",
        "|---|---|",
        f"| data | `{config.data.path}` (role: {config.data.role or 'all'}) |",
        f"| examples | {stats['count']} |",
        f"| selection | {config.selection.variant}: {stats['flagged']} flagged ({100 * stats['flag_rate']:.1f}%) |",
        f"| beta | {m.beta if m.name != 'sft' else 0} |",
        f"| KL | {m.kl_direction}, positions {m.kl_positions}; CE normalisation {m.ce_normalisation} |",
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


def train(
    config: RunConfig,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: list[TrainerCallback] | None = None,
) -> Path:
    """Run a SaRFT or SFT fine-tune from a config; returns the run folder.

    Holds the run folder's lock throughout (a second process training into it stops: busy). --resume
    continues the last checkpoint only when the run's identity (identity.json: training config minus
    the keys a resumed run may change, model fingerprint, data hash, selection) is unchanged.

    Everything is checked before the run's first file (config, data, selection flags, trainer
    arguments, model files, LoRA targets): bad input leaves the folder as it was (output_lock removes
    a folder it created), and --overwrite clears the previous run only when the work starts.
    """
    with output_lock(Path(config.train.output_dir)):
        return _train(config, resume, overwrite, callbacks)


def _train(config: RunConfig, resume: bool, overwrite: bool, callbacks: list[TrainerCallback] | None) -> Path:
    t = config.train
    if not t.model:
        raise ConfigError("train.model is required (hub id or local folder)")
    spec = get_method(config.method.name)
    if spec.force_beta_zero:
        config.method.beta = 0.0
    elif config.method.beta is None:
        config.method.beta = spec.default_beta
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    # Seed before anything random is created (LoRA's A matrices), so a run is a function of its config.
    set_seed(t.seed)
    out = Path(t.output_dir)
    check_output(out, resume, overwrite)
    check_model_folder(t.model)
    if spec.data_kind == "parallel":
        return _train_parallel(config, out, resume, overwrite, callbacks)
    if spec.data_kind == "preference":
        if resume:
            log.warning("--resume: the DPO-family baselines do not resume; %s starts from step 0", spec.name)
        return _train_preference(config, out, overwrite, callbacks)
    if spec.data_kind != "role":
        raise ConfigError(f"method {spec.name!r} trains on {spec.data_kind} data: not supported yet")

    args = training_arguments(config, out)
    tokenizer = load_tokenizer(t.model, t.revision, t.trust_remote_code)
    renderer = ChatRenderer.from_config(tokenizer, config.chat, authors_empty_system=True)
    invalid = InvalidRecords(config.data.invalid)
    examples, profiles = load_data(config, invalid)
    log.info("loaded %d examples from %s", len(examples), config.data.path)
    checkpoint = last_checkpoint(out / "checkpoints") if resume else None
    identity = run_identity(
        config,
        model=model_fingerprint(t.model, t.revision, cache_root(config.cache_dir)),
        data=hash_json([dataclasses.asdict(ex) for ex in examples]),
    )
    if checkpoint is not None:  # refuse before any scoring work
        check_identity(out, identity)

    # LoRA keeps the frozen base in the compute dtype (bf16 on a GPU); full fine-tuning keeps fp32 master
    # weights and lets the Trainer run bf16 autocast.
    weights_dtype = resolve_dtype(t.precision) if t.finetune == "lora" else torch.float32
    model = load_causal_lm(t.model, t.revision, weights_dtype, t.trust_remote_code)
    check_lora_targets(model, config)  # before the scoring work; the wrapping comes after it

    def scoring_model() -> Any:
        # RDS scores come from the model before fine-tuning: the freshly loaded weights.
        return model.to(default_device())

    model.eval()
    # Under `accelerate launch` the main process scores (and caches); the others then read the cache.
    with PartialState().main_process_first():
        flags, scores, stats = select(config, renderer, examples, profiles, scoring_model)
    model.train()
    # Everything is checked: the work (and the run's files) starts here.
    start_output(out, resume, overwrite)
    start_or_resume(out, {**identity, "selection": hash_json([bool(f) for f in flags])}, checkpoint)
    write_selection(out, examples, flags, scores, stats)
    with atomic_open(out / "config.yaml") as handle:
        handle.write(dump_config(config))
    log.info("selection %s: %d of %d rows flagged", config.selection.variant, sum(flags), len(flags))

    ref_model = None
    if t.finetune == "lora":
        model = wrap_lora(model, config)
    elif spec.needs_reference and config.method.beta != 0 and any(flags):
        ref_model = copy.deepcopy(model)
    trainer = SafetuneTrainer(
        model=model,
        args=args,
        train_dataset=_encode(renderer, examples, flags),
        data_collator=RoleCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        method=config.method,
        ref_model=ref_model,
        callbacks=callbacks,
    )
    if resume and checkpoint is None:
        log.warning("--resume: no checkpoint in %s, starting from scratch", out / "checkpoints")
    result = _train_whole_run(trainer, checkpoint)
    save_final(trainer, tokenizer, out)
    metrics = {**result.metrics, "global_step": result.global_step, "reference_rows": trainer.reference_rows}
    selection = {k: stats[k] for k in ("variant", "count", "flagged", "flag_rate")}
    details = {"selection": selection, "invalid_records": invalid.report()}
    _write_provenance(config, out, details, metrics, _model_card(config, stats, metrics))
    return out


def _train_preference(
    config: RunConfig, out: Path, overwrite: bool, callbacks: list[TrainerCallback] | None
) -> Path:
    """A DPO-family baseline (training/baselines.py) on plain preference pairs (or a parallel file's
    target side)."""
    from safetune.data.preferences import load_preference_pairs
    from safetune.training.baselines import train_baseline

    invalid, languages = InvalidRecords(config.data.invalid), LanguageCheck()
    pairs = load_preference_pairs(config.data.path, config.data.format, invalid=invalid, languages=languages)
    if config.data.max_examples:
        pairs = pairs[: config.data.max_examples]
    log.info("loaded %d preference pairs from %s", len(pairs), config.data.path)
    train_baseline(config, pairs, out, overwrite=overwrite, callbacks=callbacks)
    _add_to_run_json(out, {"invalid_records": invalid.report(), "language_disagreements": languages.report()})
    return out


def _train_parallel(
    config: RunConfig, out: Path, resume: bool, overwrite: bool, callbacks: list[TrainerCallback] | None
) -> Path:
    """Reward-gap MPO: the reference side comes from the cache (computed once with the freshly loaded
    model), so training holds no reference model."""
    from safetune.data.preferences import load_parallel_pairs
    from safetune.reference.mpo import cached_reference
    from safetune.reference.pairs import MpoCollator, encode_pairs, pair_renderer
    from safetune.training.mpo import MpoTrainer

    t = config.train
    args = training_arguments(config, out)
    tokenizer = load_tokenizer(t.model, t.revision, t.trust_remote_code)
    renderer = pair_renderer(tokenizer, config)
    invalid, languages = InvalidRecords(config.data.invalid), LanguageCheck()
    pairs = load_parallel_pairs(config.data.path, config.data.format, invalid=invalid, languages=languages)
    if config.data.max_examples:
        pairs = pairs[: config.data.max_examples]
    log.info(
        "loaded %d parallel pairs from %s (target languages: %s)",
        len(pairs),
        config.data.path,
        language_counts(pairs),
    )
    rows = encode_pairs(renderer, pairs, config.method)
    weights_dtype = resolve_dtype(t.precision) if t.finetune == "lora" else torch.float32
    checkpoint = last_checkpoint(out / "checkpoints") if resume else None
    fingerprint = model_fingerprint(t.model, t.revision, cache_root(config.cache_dir))
    identity = run_identity(config, model=fingerprint, data=hash_json([dataclasses.asdict(p) for p in pairs]))
    if checkpoint is not None:  # refuse before any reference work
        check_identity(out, identity)
    model = load_causal_lm(t.model, t.revision, weights_dtype, t.trust_remote_code)
    check_lora_targets(model, config)  # before the reference pass; the wrapping comes after it
    with PartialState().main_process_first():
        reference, cache_path = cached_reference(
            lambda: model.to(default_device()),
            renderer,
            rows,
            config.method,
            fingerprint,
            cache_root(config.cache_dir),
            config.selection.batch_size,
        )
    model.train()
    # Everything is checked: the work (and the run's files) starts here.
    start_output(out, resume, overwrite)
    start_or_resume(out, identity, checkpoint)
    with atomic_open(out / "config.yaml") as handle:
        handle.write(dump_config(config))
    if t.finetune == "lora":
        model = wrap_lora(model, config)
    trainer = MpoTrainer(
        model=model,
        args=args,
        train_dataset=rows,
        data_collator=MpoCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        method=config.method,
        reference=reference,
        callbacks=callbacks,
    )
    result = _train_whole_run(trainer, checkpoint)
    save_final(trainer, tokenizer, out)
    metrics = {**result.metrics, "global_step": result.global_step}
    data = {**pair_counts(pairs), "reference_cache": str(cache_path)}
    _write_provenance(
        config,
        out,
        {"data": data, "invalid_records": invalid.report(), "language_disagreements": languages.report()},
        metrics,
        _parallel_card(config, data, metrics),
    )
    return out


def _train_whole_run(trainer: Trainer, checkpoint: str | None) -> TrainOutput:
    """trainer.train(), resumed from `checkpoint` when given, with `train_loss` over the whole run: the
    Trainer's own figure covers only the steps this process ran."""
    totals = LossTotal(checkpoint)
    trainer.add_callback(totals)
    totals.trainer = trainer
    result = trainer.train(resume_from_checkpoint=checkpoint)
    loss = totals.whole_run_loss(result.training_loss, result.global_step)
    return TrainOutput(result.global_step, loss, {**result.metrics, "train_loss": loss})


def _parallel_card(config: RunConfig, data: dict[str, Any], metrics: dict[str, Any]) -> str:
    t, m = config.train, config.method
    return "\n".join(
        [
            f"# {Path(t.output_dir).name}",
            "",
            f"Fine-tuned from `{t.model}` with safetune {__version__}, reward-gap MPO "
            f"({'LoRA' if t.finetune == 'lora' else 'full fine-tuning'}).",
            "",
            "| setting | value |",
            "|---|---|",
            f"| data | `{config.data.path}`: {data['count']} parallel pairs, target languages {data['languages']} |",
            f"| beta / gap weight / repr weight | {m.beta} / {m.gap_weight} / {m.repr_weight} |",
            f"| pooling | {m.pooling} |",
            f"| learning rate | {t.resolved_learning_rate} ({t.lr_scheduler}) |",
            f"| steps | {metrics.get('global_step')} |",
            f"| final train loss | {metrics.get('train_loss', float('nan')):.4f} |",
            "",
            "Weights are in `final/` (safetensors); the resolved configuration in `config.yaml`.",
            "",
        ]
    )


def _add_to_run_json(out: Path, fields: dict[str, Any]) -> None:
    """Merge `fields` into a run.json written by another writer (the DPO-family baselines)."""
    import json

    path = out / "run.json"
    run = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    write_json(path, {**run, **fields})


def _write_provenance(
    config: RunConfig, out: Path, details: dict[str, Any], metrics: dict[str, Any], card: str
) -> None:
    run = {
        "safetune_version": __version__,
        "git_commit": git_commit(),
        "method": config.method.name,
        "base_model": config.train.model,
        "finetune": config.train.finetune,
        "config_hash": hash_json(config.to_dict()),
        **details,
        "metrics": metrics,
    }
    write_json(out / "run.json", run)
    with atomic_open(out / "README.md") as handle:
        handle.write(card)
