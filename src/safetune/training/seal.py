"""SEAL (`--method seal`): the bilevel data ranker on the freshly loaded model, then plain SFT on the
top `method.seal_keep` of the user's rows (docs/methods/seal.md).

The ranker stage (`rank`) trains, for `method.seal_epochs` passes over the user's rows, the model (a
LoRA adapter, or under full fine-tuning a copy of the weights) and one selector logit per row with
methods/seal.py's Algorithm-2 updates against the safe set (`method.safety_data`). The model the
fine-tune starts from is never changed by it: the adapter is removed again (`unload`), the copy
dropped, and the random state restored, so a run is the same whether the ranking came from the cache or
was computed. The ranking is cached (`<cache>/seal/<key>.jsonl`, keyed by model fingerprint, the
encoded rows of both data sets and every setting that moves it), so a re-run or a `--resume` reuses it.
The ranker checkpoints itself (training/seal_checkpoint.py: at every epoch end and every
`train.save_steps` steps), so a killed ranker resumes where it stopped; `--resume` refuses a run whose
kept rows differ from the ones its checkpoints trained on (the identity's `selection`), so two rankings
never mix in one run.

Run folder files: `seal_scores.jsonl` (id, role, score = selector logit, weight, rank, kept) and
`seal_selection.jsonl` ({id, flag}: 1 = ranked below the kept fraction, the rows SEAL drops), which
`safetune train --selection-file` reads as SaRFT's `external` flags.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor
from transformers import Trainer

from safetune import console
from safetune.config import RunConfig
from safetune.data.batching import IGNORE_INDEX, pad_batch
from safetune.data.chat import EncodedExample
from safetune.data.safety import load_safety_demos
from safetune.errors import ConfigError
from safetune.methods.seal import (
    example_losses,
    gamma_at,
    keep_count,
    model_loss,
    selector_init,
    selector_loss,
    selector_weights,
    top_fraction,
)
from safetune.models.loading import default_device, resolve_dtype
from safetune.reference.cache import CacheEntry, cache_key
from safetune.storage import cache_root, hash_json, write_json, write_jsonl
from safetune.training.common import wrap_lora
from safetune.training.recipe import RecipeReport
from safetune.training.seal_checkpoint import RankerCheckpoint, RankerPosition, RankerState, SafeCycle
from safetune.training.trainer import RoleRecipe

log = logging.getLogger(__name__)

# Part of the cache key: bump when the ranker's computation changes.
RANKER_VERSION = "seal-ranker-v1"
# The authors' gradient clipping (OpenRLHF's DeepSpeed config: gradient_clipping = --max_norm 1.0), which
# DeepSpeed applies to the selector's engine as well as the model's.
MAX_GRAD_NORM = 1.0
# AdamW's betas in the authors' strategy.create_optimizer, for the model and the selector alike.
ADAM_BETAS = (0.9, 0.95)


def check_seal_settings(config: RunConfig) -> None:
    """What the ranges of the single keys cannot say: gamma must stay a weight in every epoch."""
    m = config.method
    last = gamma_at(m.seal_epochs - 1, m.seal_gamma, m.seal_gamma_step)
    if last > 1 + 1e-12:
        raise ConfigError(
            f"method.seal_gamma + (method.seal_epochs - 1) * method.seal_gamma_step = {last:g} > 1: the "
            "penalty weight gamma of the last ranker epoch must be at most 1"
        )


def _batch(rows: Sequence[EncodedExample], pad_id: int, device: torch.device) -> dict[str, Tensor]:
    batch = pad_batch([r.input_ids for r in rows], [r.labels for r in rows], pad_id)
    return {key: value.to(device) for key, value in batch.items()}


def _losses(model: Any, batch: dict[str, Tensor]) -> Tensor:
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    ).logits
    return example_losses(logits, batch["labels"])


def train_ranker(
    model: Any,
    user: Sequence[EncodedExample],
    safe: Sequence[EncodedExample],
    config: RunConfig,
    pad_id: int,
    checkpoint: RankerCheckpoint | None = None,
) -> list[float]:
    """The selector's final logits, one per `user` row, from SEAL's Algorithm 2 (methods/seal.py). Trains
    `model`'s trainable parameters in place (the caller passes an adapter-wrapped model or a copy).

    With a `checkpoint`, the ranker starts from it when one is there and saves its state at the end of
    every epoch and every `train.save_steps` optimizer steps (when that is above 0)."""
    m, t = config.method, config.train
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(t.seed)
    logits = torch.nn.Parameter(selector_init(len(user), m.seal_activation).to(device))
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    model_opt = torch.optim.AdamW(params, lr=m.seal_model_lr, betas=ADAM_BETAS, weight_decay=0.0)
    selector_opt = torch.optim.Adam([logits], lr=m.seal_selector_lr, betas=ADAM_BETAS, weight_decay=0.0)
    dtype = resolve_dtype(t.precision)
    autocast = (
        torch.autocast(device.type, dtype=dtype)
        if device.type == "cuda" and dtype != torch.float32
        else contextlib.nullcontext()
    )
    safe_order = SafeCycle(len(safe), generator)
    state = RankerState(safe_order, generator, logits, named, model_opt, selector_opt)
    steps_per_epoch = -(-len(user) // (t.batch_size * t.grad_accum))
    position = checkpoint.restore(state) if checkpoint is not None else None
    first_epoch = position.epoch if position is not None else 0
    done = first_epoch * steps_per_epoch + (position.step if position is not None else 0)
    bar = console.progress(
        total=m.seal_epochs * steps_per_epoch, desc="SEAL ranker", unit="step", initial=done
    )
    model.train()
    for epoch in range(first_epoch, m.seal_epochs):
        gamma = gamma_at(epoch, m.seal_gamma, m.seal_gamma_step)
        if position is not None and epoch == position.epoch:
            order, first_step = position.order, position.step  # the epoch the checkpoint stopped in
        else:
            order, first_step = torch.randperm(len(user), generator=generator).tolist(), 0
        micro = [order[i : i + t.batch_size] for i in range(0, len(order), t.batch_size)]
        starts = range(0, len(micro), t.grad_accum)
        for step, start in enumerate(starts):
            if step < first_step:
                continue
            group = micro[start : start + t.grad_accum]
            for rows in group:
                safe_rows = [safe[next(safe_order)] for _ in rows]
                with autocast:
                    safe_losses = _losses(model, _batch(safe_rows, pad_id, device))
                    # With gamma 0 the user rows only feed the selector: no graph through the model.
                    with torch.set_grad_enabled(gamma > 0):
                        user_losses = _losses(model, _batch([user[i] for i in rows], pad_id, device))
                index = torch.tensor(rows, device=device)
                weights = selector_weights(logits, m.seal_activation)[index]
                (model_loss(safe_losses, user_losses, weights, gamma) / len(group)).backward()
                (selector_loss(logits, index, user_losses, m.seal_activation) / len(group)).backward()
            # Both updates use the losses at the model's weights before this step (Algorithm 2).
            torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
            model_opt.step()
            model_opt.zero_grad(set_to_none=True)
            torch.nn.utils.clip_grad_norm_([logits], MAX_GRAD_NORM)
            selector_opt.step()
            selector_opt.zero_grad(set_to_none=True)
            bar.update(1)
            done += 1
            end_of_epoch = step + 1 == len(starts)
            if checkpoint is not None and (end_of_epoch or (t.save_steps and done % t.save_steps == 0)):
                checkpoint.save(RankerPosition(epoch, step + 1, order), state)
        log.info("SEAL ranker epoch %d/%d done (gamma %.3g)", epoch + 1, m.seal_epochs, gamma)
    bar.close()
    return [float(v) for v in logits.detach().float().cpu()]


def rank(
    model: Any,
    user: Sequence[EncodedExample],
    safe: Sequence[EncodedExample],
    config: RunConfig,
    pad_id: int,
    checkpoint: RankerCheckpoint | None = None,
) -> list[float]:
    """Run the ranker on a trainable view of `model` and leave `model` as it was: its weights (LoRA: an
    adapter added and removed again; full: a copy), its device and mode, and the random state."""
    device = default_device()
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(config.train.seed)
        random.seed(config.train.seed)
        if config.train.finetune == "lora":
            wrapped = wrap_lora(model.to(device), config)
            try:
                return train_ranker(wrapped, user, safe, config, pad_id, checkpoint)
            finally:
                wrapped.unload()  # the base model without the adapter, as it was loaded
                model.eval()
        trained = copy.deepcopy(model).to(device)
        trained.requires_grad_(True)
        try:
            return train_ranker(trained, user, safe, config, pad_id, checkpoint)
        finally:
            del trained


def ranker_key(
    config: RunConfig,
    fingerprint: str,
    user: Sequence[EncodedExample],
    ids: Sequence[str],
    safe: Sequence[EncodedExample],
) -> str:
    m, t = config.method, config.train
    settings = {
        "seal": {f.name: getattr(m, f.name) for f in dataclasses.fields(m) if f.name.startswith("seal_")},
        "finetune": t.finetune,
        "lora": [t.lora_r, t.lora_alpha, t.lora_dropout, list(t.lora_targets)]
        if t.finetune == "lora"
        else None,
        "batch": [t.batch_size, t.grad_accum],
        "seed": t.seed,
        "dtype": str(resolve_dtype(t.precision)),
    }
    data = hash_json(
        {
            "user": [[i, r.input_ids, r.labels] for i, r in zip(ids, user, strict=True)],
            "safe": [[r.input_ids, r.labels] for r in safe],
        }
    )
    return cache_key("seal", RANKER_VERSION, fingerprint, settings, data)


def _read_ranking(path: Path, ids: Sequence[str]) -> list[float] | None:
    if not path.exists():
        return None
    scores = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        scores[row["id"]] = float(row["score"])
    if not all(i in scores for i in ids):
        return None
    log.info("SEAL ranking from cache %s (no ranker training)", path)
    return [scores[i] for i in ids]


def _encoded(row: dict[str, Any]) -> EncodedExample:
    """A training row as the ranker's EncodedExample (prompt_len: the first trained position)."""
    labels = row["labels"]
    first = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))
    return EncodedExample(input_ids=row["input_ids"], labels=labels, prompt_len=first)


class SealRecipe(RoleRecipe):
    """SEAL: role-play rows as for SFT; the frozen pass trains the ranker (cached) and keeps the top
    `method.seal_keep` of the rows; SafetuneTrainer with beta 0 (plain SFT) trains on those."""

    def load(self, tokenizer: Any) -> str:
        check_seal_settings(self.config)
        data_hash = super().load(tokenizer)
        self.demos = load_safety_demos(self.config.method.safety_data, invalid=self.config.data.invalid)
        # The ranker's unit is a training row: a single-turn example, or a conversation row (one rendered
        # sequence, all its trained assistant turns kept or dropped together).
        self.rows = self.unselected_rows()
        if self.conversations is not None:
            roles = {c.id: c.role or "" for c in self.conversations}
            self.row_ids = [row["id"] for row in self.rows]
            self.row_roles = [roles[row["conversation"]] for row in self.rows]
        else:
            self.row_ids = [ex.id for ex in self.examples]
            self.row_roles = [ex.role for ex in self.examples]
        kept = keep_count(len(self.rows), self.config.method.seal_keep)
        if kept == 0:
            raise ConfigError(
                f"method.seal_keep={self.config.method.seal_keep} keeps no row of {len(self.rows)} "
                "(floor(keep * count) must be at least 1)"
            )
        self.pad_id = tokenizer.pad_token_id
        return data_hash

    def frozen_pass(self, model: Any, fingerprint: str) -> dict[str, str]:
        user = [_encoded(row) for row in self.rows]
        safe = [self.renderer.encode(d.prompt, d.response) for d in self.demos]
        ids = self.row_ids
        self.key = ranker_key(self.config, fingerprint, user, ids, safe)
        entry = CacheEntry(cache_root(self.config.cache_dir), "seal", self.key, ".jsonl")

        def write(handle: IO[bytes], scores: list[float]) -> None:
            for ident, score in zip(ids, scores, strict=True):
                handle.write((json.dumps({"id": ident, "score": score}) + "\n").encode("utf-8"))

        checkpoint = RankerCheckpoint(entry.path.with_name(f"{self.key}.ranker"), self.key)
        self.ranking = entry.read_or_compute(
            lambda path: _read_ranking(path, ids),
            lambda: rank(model, user, safe, self.config, self.pad_id, checkpoint),
            write,
        )
        checkpoint.remove()  # the ranking is in the cache: its checkpoint has done its work
        self.kept = top_fraction(self.ranking, self.config.method.seal_keep)
        # The fine-tune's rows carry no KL flag (beta 0); `flags` is what SaRFT's external variant reads.
        self.flags = [False] * len(self.rows)
        return {"selection": hash_json(self.kept)}

    def write_files(self, out: Path) -> None:
        weights = selector_weights(torch.tensor(self.ranking), self.config.method.seal_activation).tolist()
        order = sorted(range(len(self.ranking)), key=lambda i: (-self.ranking[i], i))
        ranks = {row: place + 1 for place, row in enumerate(order)}
        write_jsonl(
            out / "seal_scores.jsonl",
            (
                {
                    "id": ident,
                    "role": role,
                    "score": self.ranking[i],
                    "weight": weights[i],
                    "rank": ranks[i],
                    "kept": self.kept[i],
                }
                for i, (ident, role) in enumerate(zip(self.row_ids, self.row_roles, strict=True))
            ),
        )
        write_jsonl(
            out / "seal_selection.jsonl",
            (
                {"id": ident, "flag": int(not keep)}
                for ident, keep in zip(self.row_ids, self.kept, strict=True)
            ),
        )
        write_json(out / "seal_stats.json", self._stats())
        log.info(
            "SEAL keeps %d of %d rows (method.seal_keep %s)",
            sum(self.kept),
            len(self.kept),
            self.config.method.seal_keep,
        )

    def _stats(self) -> dict[str, Any]:
        m = self.config.method
        return {
            "count": len(self.kept),
            "kept": sum(self.kept),
            "keep": m.seal_keep,
            "safety_data": m.safety_data or "builtin",
            "safety_demos": len(self.demos),
            "cache_key": self.key,
        }

    def needs_reference_copy(self) -> bool:
        return False

    def train_rows(self) -> list[dict[str, Any]]:
        return [row for row, keep in zip(self.rows, self.kept, strict=True) if keep]

    def report(self, trainer: Trainer, metrics: dict[str, Any]) -> RecipeReport:
        config, m = self.config, self.config.method
        stats = self._stats()
        return RecipeReport(
            details={
                "seal": stats,
                "data": self.data_details(len(self.rows)),
                "invalid_records": self.invalid.report(),
            },
            card_rows=[
                f"| data | `{config.data.path}` (role: {config.data.role or 'all'}) |",
                f"{self.data_card_row(stats['count'])[:-2]}; SEAL keeps {stats['kept']} "
                f"({100 * m.seal_keep:g}%) |",
                f"| safe set | {stats['safety_data']} ({stats['safety_demos']} demonstrations) |",
                f"| ranker | {m.seal_epochs} epochs, model lr {m.seal_model_lr}, selector lr "
                f"{m.seal_selector_lr} ({m.seal_activation}), gamma {m.seal_gamma} + {m.seal_gamma_step}/epoch |",
            ],
        )
