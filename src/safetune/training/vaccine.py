"""Vaccine: an alignment stage on safety demonstrations that trains the model to keep its loss low under
a worst-case perturbation of every decoder layer's self-attention output (methods/vaccine.py holds the
perturbation; docs/methods/vaccine.md the choices). Its `final/` (or, under LoRA, `merged/`) is the model
the user's fine-tune starts from.

VaccineTrainer is SafetuneTrainer with beta 0 (the plain SFT loss on the demonstrations) and two passes
per micro-batch: a clean forward whose loss is differentiated with respect to the attention outputs only
(`torch.autograd.grad`: no parameter gradient is touched, so gradient accumulation adds up correctly,
where the official `model.zero_grad()` between the passes wipes earlier micro-batches), then the
Trainer's usual forward/backward with the perturbation added to each attention output as a constant.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import Trainer, TrainerCallback, TrainingArguments

from safetune.data.chat import ChatRenderer
from safetune.data.conversation_data import is_conversation_data
from safetune.data.readers import InvalidRecords
from safetune.data.safety import BUILTIN, load_safety_demos
from safetune.errors import ConfigError
from safetune.methods.vaccine import adversarial_perturbation, global_norm, random_perturbation
from safetune.storage import follow_umask, hash_json
from safetune.training.lisa import encode_demos
from safetune.training.recipe import Recipe, RecipeReport
from safetune.training.trainer import RoleCollator, SafetuneTrainer

log = logging.getLogger(__name__)

# A decoder layer's self-attention child: named for attention (self_attn: Llama, Qwen, Mistral, Gemma,
# OPT, Phi; attn: GPT-2, GPT-J; self_attention: Falcon, Bloom), not a norm around it
# (post_attention_layernorm) and not cross-attention.
_ATTENTION = re.compile(r"attn|attention", re.IGNORECASE)
_NOT_ATTENTION = re.compile(r"norm|ln|cross", re.IGNORECASE)


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """Each decoder layer's self-attention module, found by structure rather than by class (the official
    code knows only LlamaAttention, OPTAttention and MistralAttention): the longest nn.ModuleList whose
    every entry has exactly one child named for attention. ConfigError when no such list exists."""
    best: list[nn.Module] = []
    for module in model.modules():
        if not isinstance(module, nn.ModuleList) or len(module) <= len(best):
            continue
        found = []
        for layer in module:
            children = [
                child
                for name, child in layer.named_children()
                if _ATTENTION.search(name) and not _NOT_ATTENTION.search(name)
            ]
            if len(children) != 1:
                break
            found.append(children[0])
        else:
            best = found
    if not best:
        raise ConfigError(
            "vaccine: found no decoder layers with a self-attention module (a ModuleList of layers, each "
            "with one child named like self_attn / attn / self_attention)"
        )
    return best


def _first(output: Any) -> Tensor:
    return output[0] if isinstance(output, tuple | list) else output


def _replace_first(output: Any, value: Tensor) -> Any:
    if isinstance(output, tuple):
        return (value, *output[1:])
    if isinstance(output, list):
        return [value, *output[1:]]
    return value


class VaccineTrainer(SafetuneTrainer):
    """SafetuneTrainer (beta 0) with Vaccine's perturbed second pass; see the module doc."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        assert self.model is not None
        self.attention = attention_modules(self.model)
        self._clean_pass = False
        self.last_perturbation_norm: float | None = None  # run.json: the norm the last step trained under

    def record(self, training: bool, name: str, value: float) -> None:
        if not self._clean_pass:  # the logged loss is the perturbed pass's, the one trained on
            super().record(training, name, value)

    def attention_gradients(self, model: nn.Module, inputs: dict[str, Any]) -> list[Tensor]:
        """g_l = dLoss/d(attention output l) on a clean forward, parameter gradients untouched."""
        outputs: list[Tensor] = []

        def capture(module: nn.Module, args: Any, output: Any) -> Any:
            first = _first(output)
            if not first.requires_grad:  # nothing trainable below this layer: make it a leaf to differentiate
                first = first.detach().requires_grad_(True)
                output = _replace_first(output, first)
            outputs.append(first)
            return output

        hooks = [m.register_forward_hook(capture) for m in self.attention]
        self._clean_pass = True
        try:
            with self.compute_loss_context_manager():
                loss = self.compute_loss(model, self._prepare_inputs(inputs))
        finally:
            self._clean_pass = False
            for hook in hooks:
                hook.remove()
        if len(outputs) != len(self.attention):
            raise ConfigError(f"vaccine: {len(outputs)} attention outputs for {len(self.attention)} layers")
        grads = torch.autograd.grad(loss, outputs, allow_unused=True)
        return [torch.zeros_like(o) if g is None else g for o, g in zip(outputs, grads, strict=True)]

    def _perturb(self, perturbation: list[Tensor] | None) -> Callable[[nn.Module, Any, Any], Any]:
        order = {id(m): i for i, m in enumerate(self.attention)}
        rho = self.method.vaccine_rho

        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            first = _first(output)
            eps = random_perturbation(first, rho) if perturbation is None else perturbation[order[id(module)]]
            return _replace_first(output, first + eps.detach().to(first.dtype))

        return hook

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None
    ) -> Tensor:
        perturbation = None
        if self.method.vaccine_noise == "adversarial":
            model.train()
            perturbation = adversarial_perturbation(
                self.attention_gradients(model, inputs), self.method.vaccine_rho
            )
            if perturbation:
                self.last_perturbation_norm = global_norm(perturbation).item()
                self.record(True, "perturbation_norm", self.last_perturbation_norm)
        hook = self._perturb(perturbation)
        hooks = [m.register_forward_hook(hook) for m in self.attention]
        try:
            return super().training_step(model, inputs, num_items_in_batch)
        finally:
            for handle in hooks:
                handle.remove()


class VaccineRecipe(Recipe):
    """The alignment stage: safety demonstrations from `data.path` (a file, or `builtin`), encoded as plain
    chats, VaccineTrainer; under LoRA with `method.vaccine_merge` also `merged/` (base + adapter)."""

    def load(self, tokenizer: Any) -> str:
        config = self.config
        if not config.data.path:
            raise ConfigError(
                f"vaccine trains on safety demonstrations: pass --data FILE or --data {BUILTIN}"
            )
        if is_conversation_data(config):
            raise ConfigError(
                "vaccine's alignment stage trains on single-turn safety demonstrations, not conversations: "
                "conversations go in its fine-tune stage (safetune train --method sft -m RUN/merged "
                "--data CHATS)"
            )
        self.renderer = ChatRenderer.from_config(tokenizer, config.chat, authors_empty_system=True)
        self.invalid = InvalidRecords(config.data.invalid)
        self.demos = load_safety_demos(config.data.path, columns=config.data.columns, invalid=self.invalid)
        log.info("vaccine: %d safety demonstrations from %s", len(self.demos), config.data.path)
        return hash_json([d.__dict__ for d in self.demos])

    def needs_reference_copy(self) -> bool:
        return False

    def trainer(
        self,
        args: TrainingArguments,
        model: Any,
        ref_model: Any,
        tokenizer: Any,
        callbacks: list[TrainerCallback] | None,
    ) -> Trainer:
        self.tokenizer = tokenizer
        return VaccineTrainer(
            model=model,
            args=args,
            train_dataset=encode_demos(self.renderer, self.demos),
            data_collator=RoleCollator(tokenizer.pad_token_id),
            processing_class=tokenizer,
            method=self.config.method,
            callbacks=callbacks,
        )

    def after_training(self, trainer: Trainer, out: Path) -> None:
        """Under LoRA, `merged/`: the base with the adapter merged in, a plain model folder the user's
        fine-tune can start from (`safetune train -m RUN/merged`), as the official fine-tuning stage
        merges the Vaccine adapter before adding its own."""
        if self.config.train.finetune != "lora" or not self.config.method.vaccine_merge:
            return
        merged, tmp = out / "merged", out / "merged.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
        model.save_pretrained(str(tmp))
        self.tokenizer.save_pretrained(str(tmp))
        follow_umask(tmp)
        shutil.rmtree(merged, ignore_errors=True)
        tmp.rename(merged)

    def report(self, trainer: Trainer, metrics: dict[str, Any]) -> RecipeReport:
        m, config = self.config.method, self.config
        merged = config.train.finetune == "lora" and m.vaccine_merge
        norm = getattr(trainer, "last_perturbation_norm", None)
        return RecipeReport(
            metrics={} if norm is None else {"perturbation_norm": norm},
            details={
                "data": {"count": len(self.demos), "path": config.data.path},
                "invalid_records": self.invalid.report(),
                "next_stage_model": "merged" if merged else "final",
            },
            card_rows=[
                f"| safety demonstrations | `{config.data.path}`, {len(self.demos)} |",
                f"| perturbation | {m.vaccine_noise}, rho {m.vaccine_rho} on {len(getattr(trainer, 'attention', []))} "
                "attention outputs |",
                f"| next stage | `safetune train -m {config.train.output_dir}/{'merged' if merged else 'final'}` |",
            ],
        )
