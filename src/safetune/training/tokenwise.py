"""Token-wise constrained SFT on role-play data (Qi et al., ICLR 2025; docs/methods/tokenwise.md): the
recipe (every role row, no RDS; the aligned model's token log-probs computed once on the freshly loaded
model) and its Trainer (compute_loss = policy logits + methods/losses.py's tokenwise_loss)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import Trainer, TrainerCallback, TrainingArguments

from safetune.config import MethodConfig
from safetune.errors import ConfigError
from safetune.methods.losses import tokenwise_betas
from safetune.methods.losses import tokenwise_loss as tokenwise_objective
from safetune.models.loading import default_device
from safetune.reference.tokenwise import cached_reference_token_logps
from safetune.storage import cache_root
from safetune.training.common import AveragedMetrics, add_callbacks
from safetune.training.recipe import RecipeReport
from safetune.training.trainer import RoleCollator, RoleRecipe

log = logging.getLogger(__name__)


class TokenwiseCollator(RoleCollator):
    """RoleCollator plus each row's aligned-model log-probs, padded with 0 like the labels' -100."""

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Tensor]:
        batch = super().__call__(rows)
        width = batch["input_ids"].shape[1]
        batch["ref_logps"] = torch.tensor(
            [list(r["ref_logps"]) + [0.0] * (width - len(r["ref_logps"])) for r in rows], dtype=torch.float32
        )
        return batch


def disable_dropout(model: nn.Module) -> int:
    """p = 0 in every dropout module (the authors' finetune.py does so before training); returns how many."""
    modules = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    for module in modules:
        module.p = 0.0
    return len(modules)


class TokenwiseTrainer(AveragedMetrics):
    """transformers.Trainer with the token-wise constrained loss against precomputed aligned log-probs
    (the batch's `ref_logps`): no reference model runs while training."""

    def __init__(self, *args: Any, method: MethodConfig, per_turn: bool = False, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.method = method
        # Conversation rows: beta_t's schedule restarts at each trained assistant turn (its own response).
        self.per_turn = per_turn
        # A token mean per micro-batch (the authors' losses.mean()); the Trainer divides by accumulation.
        self.model_accepts_loss_kwargs = False
        self.loss_is_scaled_for_ga = False
        add_callbacks(self)

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Tensor],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        m = self.method
        outputs = model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False
        )
        out = tokenwise_objective(
            outputs.logits,
            inputs["labels"],
            inputs["ref_logps"],
            beta=m.resolved_beta(),
            bias_factor=m.bias_factor,
            bias_length=m.bias_length,
            first_token_factor=m.first_token_factor,
            min_weight=m.tokenwise_min_weight,
            chunk_elements=m.chunk_elements,
            inplace=model.training and not return_outputs,
            per_turn=self.per_turn,
        )
        self.record(model.training, "surrogate_loss", out.surrogate.item())
        self.record(model.training, "delta", out.delta.item())
        return (out.loss, outputs) if return_outputs else out.loss


class TokenwiseRecipe(RoleRecipe):
    """Every role row (no selection), the aligned log-probs from the freshly loaded model (cached under the
    cache root), TokenwiseTrainer with the authors' AdamW beta1 and warm-up."""

    def load(self, tokenizer: Any) -> str:
        if self.config.method.resolved_beta() <= 0:
            raise ConfigError("method.beta must be > 0 for tokenwise-sft (beta -> 0 is SFT: --method sft)")
        data_hash = super().load(tokenizer)
        self.rows = self.unselected_rows()
        self.flags = [False] * len(self.rows)
        return data_hash

    def frozen_pass(self, model: Any, fingerprint: str) -> dict[str, str]:
        t = self.config.train
        values, key = cached_reference_token_logps(
            model.to(default_device()),
            self.rows,
            self.renderer.tokenizer.pad_token_id,
            t.batch_size,
            fingerprint,
            cache_root(self.config.cache_dir),
            self.config.method.chunk_elements,
        )
        for row, value in zip(self.rows, values, strict=True):
            row["ref_logps"] = value
        self.cache_key = key
        return {"aligned_logps": key}

    def write_files(self, out: Path) -> None:
        return None  # no selection: every row is trained on alike

    def needs_reference_copy(self) -> bool:
        return False  # the aligned log-probs are precomputed

    def trainer(
        self,
        args: TrainingArguments,
        model: Any,
        ref_model: Any,
        tokenizer: Any,
        callbacks: list[TrainerCallback] | None,
    ) -> Trainer:
        m, t = self.config.method, self.config.train
        # The authors' optimiser: AdamW with beta1 0.5 and 10 warm-up steps (finetune.py); an explicit
        # train.warmup_ratio wins over the method's warm-up.
        changes: dict[str, Any] = {"adam_beta1": m.tokenwise_adam_beta1}
        if t.warmup_ratio == 0:
            changes["warmup_steps"] = m.tokenwise_warmup_steps
        args = dataclasses.replace(args, **changes)
        dropped = disable_dropout(model)
        log.info("tokenwise-sft: dropout off in %d modules (as the authors' finetune.py)", dropped)
        return TokenwiseTrainer(
            model=model,
            args=args,
            train_dataset=self.rows,
            data_collator=TokenwiseCollator(tokenizer.pad_token_id),
            processing_class=tokenizer,
            method=m,
            callbacks=callbacks,
            per_turn=self.conversations is not None,
        )

    def report(self, trainer: Trainer, metrics: dict[str, Any]) -> RecipeReport:
        config, m = self.config, self.config.method
        schedule = tokenwise_betas(
            torch.zeros(1, m.bias_length + 2, dtype=torch.long),
            m.resolved_beta(),
            m.bias_factor,
            m.bias_length,
            m.first_token_factor,
        )[0].tolist()
        return RecipeReport(
            details={
                "data": self.data_details(len(self.rows)),
                "invalid_records": self.invalid.report(),
                "tokenwise": {
                    "beta": m.beta,
                    "bias_factor": m.bias_factor,
                    "first_token_factor": m.first_token_factor,
                    "bias_length": m.bias_length,
                    "min_weight": m.tokenwise_min_weight,
                    "adam_beta1": m.tokenwise_adam_beta1,
                    "warmup_steps": m.tokenwise_warmup_steps if config.train.warmup_ratio == 0 else None,
                    "aligned_logps_cache": self.cache_key,
                },
            },
            card_rows=[
                f"| data | `{config.data.path}` (role: {config.data.role or 'all'}) |",
                self.data_card_row(len(self.rows)),
                f"| beta_t | {', '.join(f'{b:g}' for b in schedule)}, ... |",
                f"| AdamW beta1 | {m.tokenwise_adam_beta1} |",
            ],
        )
