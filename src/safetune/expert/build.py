"""`safetune safety-expert`: SafeDecoding's safety expert, built end to end (docs/methods/safety-expert.md).

    seeds      the harmful seed prompts (expert/seeds.py)
    sample     the model's own answers, `expert.samples` sought per prompt, each drawn up to
               `expert.attempts` times (round n draws attempt n of every slot still open), with the
               project's generation backend (hf by default: the model's chat template, per-request seeds)
    judge      the judge (`judge.name`, keyword by default) labels every answer; the refusals are kept
               (expert/refusals.py), the rest counted per reason
    train      the LoRA expert with the project's trainer (training/run.py, method sft, no RDS) on the
               kept pairs, at the authors' settings (EXPERT_DEFAULTS; every one overridable)

Staged and resumable like `safetune eval`: answers and verdicts are appended batch by batch, a re-run
reuses them (a kill loses at most one batch, nothing is sampled twice) and resumes training from its last
checkpoint. The folder belongs to one model, seed set and sampling settings (expert.json): another one
is refused in one line before anything is written (--overwrite starts again). Everything is checked
before the folder's first file: the config, the seeds, the judge, the trainer's arguments, the model.

Folder layout (`expert.output_dir`, --out):
    expert.json         what the answers depend on: the model, the seed set, the sampling settings
    seeds.jsonl         the seed prompts used
    completions.jsonl   every sampled answer (id "<prompt id>/s<k>/a<n>"), appended batch by batch
    judgements.jsonl    the judge's verdicts on them, appended batch by batch
    refusals.jsonl      the kept pairs (id, role, input, output, ...): the training file, which
                        `safetune train --data DIR/refusals.jsonl --method sft` reads as it is
    manifest.json       the counts (kept, dropped per reason, per category and attempt), the judge,
                        the settings, the training's key and status
    run/                the `safetune train` run folder: final/ holds the LoRA expert (give DIR/run to
                        `--defence.expert` or to `safetune eval --model`)
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import json
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetune.config import ExpertConfig, GenerationConfig, JudgeConfig, RunConfig, load_config
from safetune.data.records import Prompt
from safetune.errors import ConfigError, SafetuneError
from safetune.evaluation.backends import backend_spec
from safetune.evaluation.items import Backend, GenerationRequest, Judge, JudgeItem
from safetune.evaluation.stages import (
    append_completions,
    judge_pending,
    read_rows,
    response_hash,
    unanswered,
)
from safetune.expert.refusals import Tally, drop_reason, request_id, slot_id
from safetune.expert.seeds import load_seeds, seeds_hash, seeds_label
from safetune.launch import main_process_lock
from safetune.models.loading import check_model_folder, resolve_model
from safetune.models.source import ModelSource
from safetune.provenance import base_provenance
from safetune.storage import hash_json, write_json, write_jsonl
from safetune.training.common import last_checkpoint, run_identity, training_arguments
from safetune.training.run import train

log = logging.getLogger(__name__)

IDENTITY_FILE = "expert.json"
SEEDS_FILE = "seeds.jsonl"
COMPLETIONS_FILE = "completions.jsonl"
JUDGEMENTS_FILE = "judgements.jsonl"
TRAINING_FILE = "refusals.jsonl"
MANIFEST_FILE = "manifest.json"
RUN_FOLDER = "run"
STAGE_FILES = (IDENTITY_FILE, SEEDS_FILE, COMPLETIONS_FILE, JUDGEMENTS_FILE, TRAINING_FILE, MANIFEST_FILE)
EXPERT_ROLE = "safety expert"  # the role column of the training rows (sft renders no system prompt)

# The authors' training settings (uw-nsl/SafeDecoding exp/finetune.py: LoraConfig r 16, alpha 64, dropout
# 0.1 on peft's default Llama targets q_proj/v_proj; TrainingArguments: 2 epochs, lr 2e-3, batch 1 without
# accumulation, linear schedule after 3% warmup), under a YAML file and every override. Ours besides:
# no system prompt in the rows (theirs cut it from the saved text), refusals up to the sampling length,
# checkpoints every 50 steps so that a killed run resumes.
EXPERT_DEFAULTS: dict[str, Any] = {
    "method.name": "sft",
    "selection.variant": "none",
    "train.finetune": "lora",
    "train.lora_r": 16,
    "train.lora_alpha": 64,
    "train.lora_dropout": 0.1,
    "train.lora_targets": ["q_proj", "v_proj"],
    "train.num_epochs": 2,
    "train.learning_rate": 2e-3,
    "train.batch_size": 1,
    "train.grad_accum": 1,
    "train.lr_scheduler": "linear",
    "train.warmup_ratio": 0.03,
    "train.save_steps": 50,
    "chat.empty_system": False,
    "chat.max_response_tokens": 256,
}
# Generation settings a resumed run may change: they do not change what is sampled.
_NOT_IN_SAMPLING_KEY = ("batch_size", "gpu_memory_utilization")


class TooFewRefusals(SafetuneError):
    """The judge kept fewer refusals than `expert.min_refusals`: nothing is trained."""


def expert_defaults() -> list[str]:
    return [f"--{key}={json.dumps(value)}" for key, value in EXPERT_DEFAULTS.items()]


def load_expert_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """The run config of `safetune safety-expert`: EXPERT_DEFAULTS, then the YAML file, then overrides."""
    return load_config(path, overrides, defaults=expert_defaults())


@dataclass(frozen=True)
class ExpertReport:
    """What a build did: the folder, the run folder holding the expert, and the counts."""

    out: Path
    run: Path
    prompts: int
    slots: int
    tally: Tally
    generated_now: int
    judged_now: int
    trained_now: bool


def sampling_config(config: RunConfig) -> GenerationConfig:
    """`generation` (backend, seed, batch size, precision, prompt length) with the expert's sampling."""
    e = config.expert
    return dataclasses.replace(
        config.generation,
        do_sample=True,
        temperature=e.temperature,
        top_p=e.top_p,
        max_new_tokens=e.max_new_tokens,
        system=e.system,
    )


def training_config(config: RunConfig, out: Path, base: str) -> RunConfig:
    """The `safetune train` config of the expert: `config` trained on DIR/refusals.jsonl into DIR/run."""
    if config.data.path:
        raise ConfigError(
            f"data.path is not taken: safety-expert trains on its own {TRAINING_FILE} (seed prompts: --seeds)"
        )
    if config.method.name != "sft":
        raise ConfigError(f"safety-expert trains with method sft, not {config.method.name!r}")
    if config.train.finetune != "lora":
        raise ConfigError(
            "the safety expert is a LoRA adapter (train.finetune=lora): SafeDecoding runs it beside the "
            "model it was trained on"
        )
    cfg = copy.deepcopy(config)
    cfg.model.name = base
    cfg.data.path, cfg.data.format = str(out / TRAINING_FILE), "jsonl"
    cfg.data.role = cfg.data.profiles = cfg.data.columns = None
    cfg.train.output_dir = str(out / RUN_FOLDER)
    return cfg


def _one_judge(config: JudgeConfig) -> Judge:
    from safetune.evaluation.judges.registry import build_judge

    if len(config.names) != 1:
        raise ConfigError(f"safety-expert keeps refusals by one judge, got judge.name={config.name}")
    return build_judge(config.for_judge(config.names[0]))


def build_expert(
    config: RunConfig,
    overwrite: bool = False,
    make_backend: Callable[[ModelSource, GenerationConfig], Backend] | None = None,
    make_judge: Callable[[JudgeConfig], Judge] | None = None,
) -> ExpertReport:
    """Build (or resume) the safety expert into `config.expert.output_dir`. Holds the folder's lock
    throughout. `make_backend` / `make_judge` replace the registries' (tests)."""
    out = Path(config.expert.output_dir)
    with main_process_lock(out):
        return _build(config, out, overwrite, make_backend, make_judge)


def _build(
    config: RunConfig,
    out: Path,
    overwrite: bool,
    make_backend: Callable[[ModelSource, GenerationConfig], Backend] | None,
    make_judge: Callable[[JudgeConfig], Judge] | None,
) -> ExpertReport:
    e = config.expert
    if not config.model.name:
        raise ConfigError("--model (model.name) is required: the model the expert is trained on")
    # Everything is checked before the folder's first file.
    prompts = load_seeds(e)
    sampling = sampling_config(config)
    spec = backend_spec(sampling)
    judge = (make_judge or _one_judge)(config.judge)
    source = resolve_model(config.model.name, config.model.revision)
    if source.adapter:
        raise ConfigError(
            f"--model {source.label} is a LoRA adapter: the safety expert is trained on the original "
            f"model, pass its base ({source.base})"
        )
    train_config = training_config(config, out, source.base)
    training_arguments(train_config, out / RUN_FOLDER)  # the trainer's own refusals, now
    check_model_folder(source.base)
    identity = {
        "model": source.fingerprint,
        "seeds": seeds_hash(prompts),
        "sampling": {k: v for k, v in dataclasses.asdict(sampling).items() if k not in _NOT_IN_SAMPLING_KEY},
    }
    training_key = hash_json(
        {
            "train": run_identity(train_config),
            "judge": judge.key(),
            "keep": [e.samples, e.attempts, e.min_chars],
        }
    )
    if not overwrite:
        _check_identity(out, identity)
        _check_run(out, training_key)
    completions = {} if overwrite else read_rows(out / COMPLETIONS_FILE, lambda row: True)
    slots = [(p, k) for p in prompts for k in range(1, e.samples + 1)]
    first = _requests(slots, 1, e.system)
    build = make_backend or spec.build
    # The model is loaded (and so checked) before anything is written when a first-round answer is missing.
    backend = build(source, sampling) if unanswered(first, completions) else None

    if overwrite:
        _clear(out)
    write_json(
        out / IDENTITY_FILE, {**identity, "model_source": source.to_dict(), "seeds_source": seeds_label(e)}
    )
    write_jsonl(out / SEEDS_FILE, (p.to_dict() for p in prompts))
    sampler = Sampler(backend, lambda: build(source, sampling))
    kept, tally, generated, judged = sample_and_judge(e, out, slots, completions, sampler, judge)
    del backend, sampler
    gc.collect()  # the sampling model goes before the trainer loads its own copy

    rows = [
        {
            "id": slot_id(p.id, k),
            "role": EXPERT_ROLE,
            "input": p.text,
            "output": answer["text"],
            "category": p.category,
            "attempt": attempt,
            "finish_reason": answer["finish_reason"],
        }
        for (p, k), (attempt, answer) in kept.items()
    ]
    write_jsonl(out / TRAINING_FILE, rows)
    manifest = _manifest(config, source, prompts, slots, tally, judge, rows, training_key)
    manifest["counts"].update(generated_now=generated, judged_now=judged)
    run = out / RUN_FOLDER
    dropped = ", ".join(f"{reason} {n}" for reason, n in tally.dropped.most_common() if n) or "none"
    log.info(
        "kept %d refusals for %d slots (%d answers judged by %s; dropped: %s; %d slots unfilled)",
        tally.kept,
        len(slots),
        tally.answers,
        judge.name,
        dropped,
        tally.unfilled,
    )
    if tally.kept < e.min_refusals:
        manifest["training"]["status"] = "not started: too few refusals"
        write_json(out / MANIFEST_FILE, manifest)
        raise TooFewRefusals(
            f"{tally.kept} refusals kept for {len(slots)} slots ({tally.answers} answers judged by "
            f"{judge.name}; dropped: {dropped}), fewer than expert.min_refusals = {e.min_refusals}: "
            f"nothing trained (counts in {out / MANIFEST_FILE})"
        )
    trained_now = not _trained(out, training_key)
    manifest["training"]["status"] = "training"
    write_json(out / MANIFEST_FILE, manifest)
    if trained_now:
        checkpoint = last_checkpoint(run / "checkpoints")
        # Without a checkpoint a run folder left by a kill (same key: checked above) starts again.
        train(train_config, resume=checkpoint is not None, overwrite=checkpoint is None and run.exists())
    result = json.loads((run / "run.json").read_text(encoding="utf-8"))
    metrics = result.get("metrics", {})
    manifest["training"].update(
        status="done",
        global_step=metrics.get("global_step"),
        train_loss=metrics.get("train_loss"),
    )
    write_json(out / MANIFEST_FILE, manifest)
    return ExpertReport(out, run, len(prompts), len(slots), tally, generated, judged, trained_now)


def _requests(
    slots: Sequence[tuple[Prompt, int]], attempt: int, system: str | None
) -> list[GenerationRequest]:
    return [GenerationRequest(request_id(p.id, k, attempt), p.text, system) for p, k in slots]


class Sampler:
    """The generation backend, built on first use when the folder's first round was all on disk."""

    def __init__(self, backend: Backend | None, build: Callable[[], Backend]):
        self.backend, self.build = backend, build

    def generate(self, requests: Sequence[GenerationRequest]) -> Any:
        if self.backend is None:
            self.backend = self.build()
        return self.backend.generate(requests)


def sample_and_judge(
    e: ExpertConfig,
    out: Path,
    slots: list[tuple[Prompt, int]],
    completions: dict[str, dict[str, Any]],
    sampler: Sampler,
    judge: Judge,
) -> tuple[dict[tuple[Prompt, int], tuple[int, dict[str, Any]]], Tally, int, int]:
    """Round n samples attempt n of every slot still open and judges it; a slot closes with the first
    answer kept. Returns the kept answer (and its attempt) per filled slot in seed order, the tally, and
    how many answers were sampled and judged now."""
    tally = Tally()
    kept: dict[tuple[Prompt, int], tuple[int, dict[str, Any]]] = {}
    generated = judged = 0
    open_slots = list(slots)
    for attempt in range(1, e.attempts + 1):
        if not open_slots:
            break
        requests = _requests(open_slots, attempt, e.system)
        missing = unanswered(requests, completions)
        log.info(
            "attempt %d: %d answers on disk, %d to sample",
            attempt,
            len(requests) - len(missing),
            len(missing),
        )
        if missing:
            generated += append_completions(missing, sampler, out / COMPLETIONS_FILE, completions)
        items = [JudgeItem(r.id, r.user, completions[r.id]["text"]) for r in requests]
        verdicts, count = judge_pending(
            items, {i.id: response_hash(i.response, None) for i in items}, out / JUDGEMENTS_FILE, judge
        )
        judged += count
        still_open = []
        for (prompt, sample), request in zip(open_slots, requests, strict=True):
            answer = completions[request.id]
            reason = drop_reason(answer["text"], verdicts[request.id], e.min_chars)
            tally.answer(reason)
            if reason is None:
                kept[(prompt, sample)] = (attempt, answer)
                tally.kept_by_attempt[attempt] += 1
                tally.kept_by_category[prompt.category or "none"] += 1
            else:
                still_open.append((prompt, sample))
        open_slots = still_open
    tally.unfilled = len(open_slots)
    order = {slot: i for i, slot in enumerate(slots)}
    return dict(sorted(kept.items(), key=lambda item: order[item[0]])), tally, generated, judged


def _check_identity(out: Path, identity: dict[str, Any]) -> None:
    """Refuse a folder that holds the expert of another model, seed set or sampling settings."""
    path = out / IDENTITY_FILE
    if not path.exists():
        if (out / COMPLETIONS_FILE).exists() or (out / RUN_FOLDER).exists():
            raise ConfigError(f"{out} holds files of another kind (no {IDENTITY_FILE}); use another --out")
        return
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read {path}: {err}") from None
    differs = [part for part in ("model", "seeds", "sampling") if stored.get(part) != identity[part]]
    if differs:
        what = {"model": "another model", "seeds": "another seed set", "sampling": "other sampling settings"}
        label = stored.get("model_source", {}).get("label")
        raise ConfigError(
            f"{out} holds the safety expert of {' and '.join(what[p] for p in differs)} (model {label!r}, "
            f"seeds {stored.get('seeds_source')!r}); use another --out or pass --overwrite"
        )


def _stored_training_key(out: Path) -> str | None:
    try:
        manifest = json.loads((out / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    key = manifest.get("training", {}).get("key") if isinstance(manifest, dict) else None
    return key if isinstance(key, str) else None


def _check_run(out: Path, key: str) -> None:
    """Refuse a run folder trained (or training) with other settings or another judge."""
    run = out / RUN_FOLDER
    started = (run / "final").exists() or last_checkpoint(run / "checkpoints") is not None
    if started and _stored_training_key(out) != key:
        raise ConfigError(
            f"{run} holds an expert trained with other training settings, judge or keep rules; "
            "use another --out or pass --overwrite"
        )


def _trained(out: Path, key: str) -> bool:
    run = out / RUN_FOLDER
    return _stored_training_key(out) == key and (run / "run.json").is_file() and (run / "final").is_dir()


def _clear(out: Path) -> None:
    """--overwrite: this command's own files and run folder, nothing else (the lock file stays)."""
    for name in STAGE_FILES:
        (out / name).unlink(missing_ok=True)
    if (out / RUN_FOLDER).exists():
        shutil.rmtree(out / RUN_FOLDER)


def _manifest(
    config: RunConfig,
    source: ModelSource,
    prompts: list[Prompt],
    slots: list[tuple[Prompt, int]],
    tally: Tally,
    judge: Judge,
    rows: list[dict[str, Any]],
    training_key: str,
) -> dict[str, Any]:
    e = config.expert
    categories: dict[str, int] = {}
    for prompt in prompts:
        categories[prompt.category or "none"] = categories.get(prompt.category or "none", 0) + 1
    return {
        **base_provenance(),
        "model": source.to_dict(),
        "seeds": {
            "source": seeds_label(e),
            "prompts": len(prompts),
            "hash": seeds_hash(prompts),
            "categories": categories,
        },
        "sampling": {
            "backend": config.generation.backend,
            "samples": e.samples,
            "attempts": e.attempts,
            "temperature": e.temperature,
            "top_p": e.top_p,
            "max_new_tokens": e.max_new_tokens,
            "system": e.system,
            "seed": config.generation.seed,
        },
        "judge": {"name": judge.name, "version": judge.version, "key": judge.key()},
        "keep": {"min_chars": e.min_chars, "min_refusals": e.min_refusals},
        "counts": {
            "prompts": len(prompts),
            "slots": len(slots),
            **tally.to_dict(),
            "kept_truncated": sum(1 for row in rows if row["finish_reason"] == "length"),
        },
        "training_file": TRAINING_FILE,
        "training_file_hash": hash_json(rows),
        "training": {"key": training_key, "run": RUN_FOLDER, "method": config.method.name},
    }
