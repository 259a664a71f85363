"""Reward-gap MPO: the Trainer (the loss of methods/reward_gap.py on collated parallel pairs) and the
recipe that feeds it (parallel pairs, the reference cache filled once from the freshly loaded model).

The reference side comes from the cache of one frozen-reference pass (reference/mpo.py), so training
holds no reference model at all, and the policy's dominant-language pass stops at the decoder's hidden
states (no LM head). `MpoTrainer` can also run a live reference model instead of the cache (the authors'
way): the benchmark and an equivalence test use that.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
from torch import Tensor, nn
from transformers import Trainer, TrainerCallback, TrainingArguments

from safetune.config import MethodConfig
from safetune.data.languages import LanguageCheck, language_counts
from safetune.data.preferences import load_parallel_pairs
from safetune.data.readers import InvalidRecords
from safetune.methods.reward_gap import mean_token_logps, pool_hidden, reward_gap_mpo_loss
from safetune.models.loading import decoder_of, default_device
from safetune.reference.mpo import (
    ReferenceCache,
    cached_reference,
    dominant_reference,
    target_reference_gap,
)
from safetune.reference.pairs import MpoCollator, encode_pairs, pair_renderer
from safetune.storage import cache_root, hash_json
from safetune.training.common import AveragedMetrics, add_callbacks, pair_counts
from safetune.training.recipe import Recipe, RecipeReport

log = logging.getLogger(__name__)


class MpoTrainer(AveragedMetrics):
    """transformers.Trainer with the reward-gap MPO loss (methods/reward_gap.py).

    Reference: the cache (default: no reference model in memory) or a live frozen model (`ref_model`,
    the authors' way; for benchmarks and tests). The policy runs twice per step: on the target rows with
    the LM head (log-probs with gradient) and on the dominant rows up to the hidden states only.
    """

    def __init__(
        self,
        *args: Any,
        method: MethodConfig,
        reference: ReferenceCache | None = None,
        ref_model: nn.Module | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        if (reference is None) == (ref_model is None):
            raise ValueError("MpoTrainer needs exactly one of a reference cache and a reference model")
        self.method = method
        self.reference = reference
        self.ref_model = ref_model.eval().requires_grad_(False) if ref_model is not None else None
        self.model_accepts_loss_kwargs = False
        self.loss_is_scaled_for_ga = False
        add_callbacks(self)

    def _reference_side(
        self, inputs: dict[str, Any], device: torch.device
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """(RG_d, pooled reference hidden states or None, RG_t(ref) or None) for this batch. Without the
        retain term (repr_weight 0) the reference's hidden states are not pooled (the live reference still
        runs its decoder on the dominant rows: RG_d needs it)."""
        m = self.method
        average = m.mpo_logps == "mean"
        if self.reference is not None:
            gaps, pooled, cached_target = self.reference.lookup(inputs["index"], device)
            if m.normalise_target_gap and cached_target is None:
                raise ValueError("normalise_target_gap needs a reference cache computed with_target=True")
            if m.repr_weight != 0 and pooled is None:
                raise ValueError("repr_weight != 0 needs a reference cache with pooled hidden states")
            return gaps, pooled, cached_target if m.normalise_target_gap else None
        assert self.ref_model is not None
        pooling = m.pooling if m.repr_weight != 0 else None
        gaps, pooled = dominant_reference(self.ref_model, inputs, pooling, m.chunk_elements, average)
        target_gaps: Tensor | None = None
        if m.normalise_target_gap:
            target_gaps = target_reference_gap(
                self.ref_model,
                inputs["target_ids"],
                inputs["target_mask"],
                inputs["target_labels"],
                m.chunk_elements,
                average,
            )
        return gaps, pooled, target_gaps

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        m = self.method
        device = inputs["target_ids"].device
        ref_gap_d, ref_pooled, ref_target_gap = self._reference_side(inputs, device)
        logits = model(
            input_ids=inputs["target_ids"], attention_mask=inputs["target_mask"], use_cache=False
        ).logits
        logps = mean_token_logps(
            logits, inputs["target_labels"], chunk_elements=m.chunk_elements, average=m.mpo_logps == "mean"
        )
        half = logps.shape[0] // 2
        policy_pooled = None
        if m.repr_weight != 0:
            # The decoder stack of the model inside a DDP/FSDP wrapper: its gradients still reach the
            # wrapper's hooks, which sum them with the logits' before the one all-reduce of this step.
            hidden = decoder_of(self.accelerator.unwrap_model(model))(
                input_ids=inputs["dominant_ids"], attention_mask=inputs["dominant_mask"], use_cache=False
            ).last_hidden_state
            policy_pooled = pool_hidden(hidden, inputs["dominant_mask"], m.pooling, inputs["dominant_widths"])
        out = reward_gap_mpo_loss(
            logps[:half],
            logps[half:],
            ref_gap_d,
            policy_pooled,
            ref_pooled if m.repr_weight != 0 else None,
            beta=m.resolved_beta(),
            gap_weight=m.gap_weight,
            repr_weight=m.repr_weight,
            ref_target_gap=ref_target_gap,
        )
        self._log_step(model.training, out, ref_gap_d, inputs["languages"])
        return (out.loss, {"logits": logits}) if return_outputs else out.loss

    def _log_step(self, training: bool, out: Any, ref_gap_d: Tensor, languages: list[str]) -> None:
        target_gap = out.target_gap.detach().float()
        self.record(training, "target_gap", target_gap.mean().item())
        self.record(training, "dominant_gap", ref_gap_d.float().mean().item())
        self.record(training, "gap_difference", (ref_gap_d.float() - target_gap).mean().item())
        self.record(training, "repr_loss", float(out.repr_term))
        for language, gap in zip(languages, target_gap.tolist(), strict=True):
            self.record(training, f"target_gap_{language}", gap)


class MpoRecipe(Recipe):
    """Reward-gap MPO: parallel pairs, and their reference side from the cache (computed once with the
    freshly loaded model), so training holds no reference model."""

    def load(self, tokenizer: Any) -> str:
        config = self.config
        self.renderer = pair_renderer(tokenizer, config)
        self.invalid, self.languages = InvalidRecords(config.data.invalid), LanguageCheck()
        pairs = load_parallel_pairs(
            config.data.path, config.data.format, invalid=self.invalid, languages=self.languages
        )
        self.pairs = pairs[: config.data.max_examples] if config.data.max_examples else pairs
        log.info(
            "loaded %d parallel pairs from %s (target languages: %s)",
            len(self.pairs),
            config.data.path,
            language_counts(self.pairs),
        )
        self.rows = encode_pairs(self.renderer, self.pairs, config.method)
        return hash_json([dataclasses.asdict(p) for p in self.pairs])

    def frozen_pass(self, model: Any, fingerprint: str) -> dict[str, str]:
        config = self.config
        self.reference, self.cache_path = cached_reference(
            lambda: model.to(default_device()),
            self.renderer,
            self.rows,
            config.method,
            fingerprint,
            cache_root(config.cache_dir),
            config.selection.batch_size,
        )
        return {}

    def needs_reference_copy(self) -> bool:
        return False  # the cache holds the reference side

    def trainer(
        self,
        args: TrainingArguments,
        model: Any,
        ref_model: Any,
        tokenizer: Any,
        callbacks: list[TrainerCallback] | None,
    ) -> Trainer:
        return MpoTrainer(
            model=model,
            args=args,
            train_dataset=self.rows,
            data_collator=MpoCollator(tokenizer.pad_token_id),
            processing_class=tokenizer,
            method=self.config.method,
            reference=self.reference,
            callbacks=callbacks,
        )

    def report(self, trainer: Trainer, metrics: dict[str, Any]) -> RecipeReport:
        config, m = self.config, self.config.method
        data = {**pair_counts(self.pairs), "reference_cache": str(self.cache_path)}
        return RecipeReport(
            details={
                "data": data,
                "invalid_records": self.invalid.report(),
                "language_disagreements": self.languages.report(),
            },
            card_rows=[
                f"| data | `{config.data.path}`: {data['count']} parallel pairs, target languages "
                f"{data['languages']} |",
                f"| beta / gap weight / repr weight | {m.beta} / {m.gap_weight} / {m.repr_weight} |",
                f"| pooling | {m.pooling} |",
                f"| log-probs / reference-relative target gap | {m.mpo_logps} / {m.normalise_target_gap} |",
            ],
        )
