"""The one Trainer subclass: compute_loss = policy logits + the registered loss. No copied training loop."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch import Tensor, nn
from transformers import Trainer

from safetune.config import MethodConfig
from safetune.data.batching import pad_batch
from safetune.methods.losses import ReferenceOutputs, sarft_loss
from safetune.models.loading import decoder_of, lm_head_fn
from safetune.training.common import add_callbacks


class RoleCollator:
    """Right-pads encoded rows and carries each row's selection flag."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Tensor]:
        batch = pad_batch([r["input_ids"] for r in rows], [r["labels"] for r in rows], self.pad_id)
        batch["flags"] = torch.tensor([bool(r["flag"]) for r in rows], dtype=torch.bool)
        return batch


class SafetuneTrainer(Trainer):
    """transformers.Trainer with the SaRFT/SFT loss.

    Reference model: with LoRA (`ref_model=None`) the policy with its adapter disabled (no second copy);
    with full fine-tuning a frozen copy. It runs only on flagged rows, never when a micro-batch has none or
    beta is 0, and returns hidden states only: the loss applies the LM head one vocabulary chunk at a time.
    """

    def __init__(self, *args: Any, method: MethodConfig, ref_model: nn.Module | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.method = method
        # Our loss is a per-micro-batch mean (as in the authors' code): let the Trainer divide it by the
        # accumulation steps instead of expecting a num_items_in_batch-normalised loss.
        self.model_accepts_loss_kwargs = False
        self.loss_is_scaled_for_ga = False
        self.ref_model = None
        if ref_model is not None:
            ref_model.eval().requires_grad_(False)
            if self.is_deepspeed_enabled:
                from trl.models.utils import prepare_deepspeed

                self.ref_model = prepare_deepspeed(ref_model, self.accelerator)
            else:
                self.ref_model = self.accelerator.prepare_model(ref_model, evaluation_mode=True)
        self._metrics: dict[str, list[float]] = defaultdict(list)
        self.reference_rows = 0  # rows the reference model has run on (tests and logs)
        add_callbacks(self)

    def _reference(self, model: nn.Module, inputs: dict[str, Tensor], flags: Tensor) -> ReferenceOutputs:
        rows = flags.nonzero().squeeze(1)
        ids, mask = inputs["input_ids"][rows], inputs["attention_mask"][rows]
        row_index = torch.full_like(flags, -1, dtype=torch.long)
        row_index[rows] = torch.arange(rows.numel(), device=rows.device)
        self.reference_rows += rows.numel()
        if self.ref_model is not None:
            ref = self.accelerator.unwrap_model(self.ref_model)
            with torch.no_grad():
                hidden = decoder_of(ref)(
                    input_ids=ids, attention_mask=mask, use_cache=False
                ).last_hidden_state
            return ReferenceOutputs(hidden, row_index, lm_head_fn(ref))
        policy = self.accelerator.unwrap_model(model)
        with torch.no_grad(), policy.disable_adapter():
            hidden = decoder_of(policy)(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        head = lm_head_fn(policy)

        def ref_head(h: Tensor) -> Tensor:
            # An adapter on the LM head (if the user targets it) must be off for reference logits too.
            with policy.disable_adapter():
                return head(h)

        return ReferenceOutputs(hidden, row_index, ref_head)

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Tensor],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        flags = inputs["flags"]
        beta = self.method.resolved_beta()
        use_reference = beta != 0 and bool(flags.any())
        # Reference first: its activations are freed before the policy's build up.
        reference = self._reference(model, inputs, flags) if use_reference else None
        outputs = model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False
        )
        out = sarft_loss(
            outputs.logits,
            inputs["labels"],
            inputs["attention_mask"],
            flags,
            reference,
            beta=beta,
            kl_direction=self.method.kl_direction,
            kl_positions=self.method.kl_positions,
            ce_normalisation=self.method.ce_normalisation,
            chunk_elements=self.method.chunk_elements,
            # Nothing reads the logits after the loss during training: reuse them as the gradient buffer.
            inplace=model.training and not return_outputs,
        )
        mode = "train" if model.training else "eval"
        self._metrics[f"{mode}/role_loss"].append(out.role.item())
        self._metrics[f"{mode}/safe_kl"].append(out.safe.item())
        self._metrics[f"{mode}/flagged_fraction"].append(flags.float().mean().item())
        return (out.loss, outputs) if return_outputs else out.loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if "loss" in logs else "eval"
        for key, values in self._metrics.items():
            if key.startswith(mode) and values:
                logs[key.split("/", 1)[1] if mode == "train" else key.replace("/", "_")] = sum(values) / len(
                    values
                )
        self._metrics = defaultdict(list, {k: v for k, v in self._metrics.items() if not k.startswith(mode)})
        super().log(logs, start_time)
