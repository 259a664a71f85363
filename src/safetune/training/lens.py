"""LENS (Zhao et al., arXiv 2410.04407; docs/methods/lens.md): the Trainer (the three manipulation terms of
methods/losses.py on the policy's final-layer states of parallel prompts) and the recipe that feeds it.

Training reads prompts only: the dominant and the target prompt of each parallel pair, rendered as the
chat template renders a prompt for generation. The frozen model's side (the retain and separate terms'
reference states) and the probe (LSAR of the per-language mean states) come from one cached pass
(reference/lens.py) on the freshly loaded model, so no reference model is held while training. Only the
last `method.lens_top_layers` decoder layers train: under full fine-tuning every other parameter is frozen
(embeddings, final norm and LM head included, as the official run.py does); under LoRA only those layers
get adapters.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import Trainer, TrainerCallback, TrainingArguments

from safetune.data.batching import pad_batch
from safetune.data.chat import ChatRenderer
from safetune.data.languages import LanguageCheck, language_counts
from safetune.data.preferences import load_parallel_pairs
from safetune.data.readers import InvalidRecords
from safetune.data.records import ParallelPreferencePair
from safetune.errors import ConfigError
from safetune.methods.losses import lens_loss
from safetune.methods.reward_gap import pool_hidden
from safetune.models.loading import decoder_of, default_device
from safetune.reference.lens import LensReference, cached_lens_reference
from safetune.reference.safety_layers import band_regex
from safetune.storage import cache_root, hash_json, write_json
from safetune.training.common import AveragedMetrics, add_callbacks, pair_counts
from safetune.training.recipe import Recipe, RecipeReport

log = logging.getLogger(__name__)

PROBE_FILE = "lens_probe.json"


def decoder_layer_list(model: nn.Module) -> Any:
    layers = getattr(decoder_of(model), "layers", None)
    if layers is None:
        raise ConfigError("LENS needs a decoder with a `layers` list (Llama, Qwen, Gemma, Mistral, Phi-3)")
    return layers


def check_top_layers(model: nn.Module, top: int) -> int:
    """The first trained layer's index; a ConfigError when the model has fewer than `top` layers."""
    count = len(decoder_layer_list(model))
    if top > count:
        raise ConfigError(f"method.lens_top_layers {top} exceeds the model's {count} decoder layers")
    return count - top


def freeze_below(model: nn.Module, first: int) -> list[str]:
    """requires_grad False on every parameter outside decoder layers first.. (embeddings, final norm and LM
    head too); returns the names of the parameters left trainable."""
    model.requires_grad_(False)
    for layer in list(decoder_layer_list(model))[first:]:
        layer.requires_grad_(True)
    return [name for name, p in model.named_parameters() if p.requires_grad]


def dominant_language(pairs: Sequence[ParallelPreferencePair]) -> tuple[str, dict[str, int]]:
    """The dominant language's name and how many pairs named or were detected as each language.

    A parallel pairs file has one dominant language by construction, but where the file names none it is
    detected per record, and a short prompt may be detected as another language or as none: every
    dominant prompt counts as the most frequent detected language ("dominant" when none is detected)."""
    counts = Counter(p.dominant.language or "undetected" for p in pairs)
    detected = [(n, name) for name, n in counts.most_common() if name != "undetected"]
    return (detected[0][1] if detected else "dominant"), dict(counts)


def encode_prompt_pairs(
    renderer: ChatRenderer, pairs: Sequence[ParallelPreferencePair], languages: Sequence[str]
) -> list[dict[str, Any]]:
    """One row per pair: both prompts' token ids (with the pair's system prompt), its target language
    (name and index into `languages`, the dominant language at 0) and its index."""
    position = {language: k for k, language in enumerate(languages)}
    return [
        {
            "index": i,
            "language": pair.target.language or "unknown",
            "language_index": position[pair.target.language or "unknown"],
            "d_ids": renderer.prompt_ids(pair.dominant.prompt, pair.system),
            "t_ids": renderer.prompt_ids(pair.target.prompt, pair.system),
        }
        for i, pair in enumerate(pairs)
    ]


class LensCollator:
    """Right-pads each side of a batch of rows; the pooling reads the attention mask, so the padding never
    enters a value."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        dominant = pad_batch([r["d_ids"] for r in rows], None, self.pad_id)
        target = pad_batch([r["t_ids"] for r in rows], None, self.pad_id)
        return {
            "dominant_ids": dominant["input_ids"],
            "dominant_mask": dominant["attention_mask"],
            "target_ids": target["input_ids"],
            "target_mask": target["attention_mask"],
            "index": torch.tensor([r["index"] for r in rows]),
            "language_index": torch.tensor([r["language_index"] for r in rows]),
            "languages": [r["language"] for r in rows],
        }


class LensTrainer(AveragedMetrics):
    """transformers.Trainer with the LENS loss. Per step one forward of the model runs the dominant prompts
    (retain, align) and the target prompts (separate, align) together, each side only when a term with a
    nonzero weight needs it; the frozen side comes from the cache."""

    def __init__(self, *args: Any, method: Any, reference: LensReference, pad_id: int, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.pad_id = pad_id
        self.method = method
        self.reference = reference
        self.model_accepts_loss_kwargs = False
        add_callbacks(self)

    def _final_states(self, model: nn.Module, sides: list[tuple[Tensor, Tensor]]) -> list[Tensor]:
        """The final, post-norm states of the given (ids, mask) sides, from ONE forward of `model` itself
        (not its bare decoder): under a DDP wrapper only a forward through the wrapper arms the gradient
        all-reduce of the step. The sides are right-padded to one width and stacked; `logits_to_keep=1`
        keeps the unused LM head to one position per row."""
        width = max(ids.shape[1] for ids, _ in sides)
        ids = torch.cat([F.pad(i, (0, width - i.shape[1]), value=self.pad_id) for i, _ in sides])
        mask = torch.cat([F.pad(m, (0, width - m.shape[1]), value=0) for _, m in sides])
        out = model(
            input_ids=ids, attention_mask=mask, use_cache=False, output_hidden_states=True, logits_to_keep=1
        )
        hidden = out.hidden_states[-1]  # after the final norm, as the LM head reads it
        return list(hidden.split([i.shape[0] for i, _ in sides]))

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        m = self.method
        device = inputs["target_ids"].device
        ref_pooled, ref_last = self.reference.lookup(inputs["index"].cpu(), device)
        with_dominant = m.lens_retain_weight != 0 or m.lens_align_weight != 0
        with_target = m.lens_separate_weight != 0 or m.lens_align_weight != 0
        sides = []  # a side a zero-weight term alone would need is not run
        if with_dominant:
            sides.append((inputs["dominant_ids"], inputs["dominant_mask"]))
        if with_target:
            sides.append((inputs["target_ids"], inputs["target_mask"]))
        states = self._final_states(model, sides)
        pooled = dominant_last = target_last = None
        if with_dominant:
            hidden, mask = states.pop(0), inputs["dominant_mask"]
            hidden = hidden[:, : mask.shape[1]]
            if m.lens_retain_weight != 0:
                pooled = pool_hidden(hidden, mask, "mean")
            if m.lens_align_weight != 0:
                dominant_last = pool_hidden(hidden, mask, "last")
        if with_target:
            hidden, mask = states.pop(0), inputs["target_mask"]
            target_last = pool_hidden(hidden[:, : mask.shape[1]], mask, "last")
        out = lens_loss(
            retain_weight=m.lens_retain_weight,
            separate_weight=m.lens_separate_weight,
            align_weight=m.lens_align_weight,
            pooled=pooled,
            ref_pooled=ref_pooled,
            target_last=target_last,
            ref_target_last=ref_last,
            dominant_last=dominant_last,
            languages=inputs["language_index"],
            shifts=self.reference.shifts,
            basis=self.reference.basis,
            common=self.reference.common,
            alpha=m.lens_alpha,
        )
        for name in ("retain", "separate", "align"):
            self.record(model.training, name, float(getattr(out, name)))
        return (out.loss, {}) if return_outputs else out.loss


class LensRecipe(Recipe):
    """LENS: parallel prompts, the frozen side and the probe from one cached pass, top-K layers trained."""

    def load(self, tokenizer: Any) -> str:
        config, m = self.config, self.config.method
        if m.lens_retain_weight == m.lens_separate_weight == m.lens_align_weight == 0:
            raise ConfigError("method.lens_*_weight: every LENS term has weight 0, nothing to train")
        self.renderer = ChatRenderer.from_config(tokenizer, config.chat)
        self.invalid, self.checks = InvalidRecords(config.data.invalid), LanguageCheck()
        pairs = load_parallel_pairs(
            config.data.path, config.data.format, invalid=self.invalid, languages=self.checks
        )
        self.pairs = pairs[: config.data.max_examples] if config.data.max_examples else pairs
        if not self.pairs:
            raise ConfigError(f"data.path {config.data.path}: no parallel pairs to train on")
        dominant, self.dominant_counts = dominant_language(self.pairs)
        if len(self.dominant_counts) > 1:
            log.warning(
                "LENS: the dominant prompts are named or detected as %s; all count as %r",
                self.dominant_counts,
                dominant,
            )
        targets = list(dict.fromkeys(p.target.language or "unknown" for p in self.pairs))
        if dominant in targets:
            raise ConfigError(f"LENS: target language {dominant!r} is also the dominant language")
        self.languages = [dominant, *targets]
        rank = m.lens_rank
        if rank is not None and rank > len(self.languages) - 1:
            raise ConfigError(
                f"method.lens_rank {rank} exceeds D - 1 = {len(self.languages) - 1} "
                f"(languages: {', '.join(self.languages)})"
            )
        log.info(
            "LENS: %d parallel prompt pairs from %s (dominant %s; targets %s)",
            len(self.pairs),
            config.data.path,
            dominant,
            language_counts(self.pairs),
        )
        self.rows = encode_prompt_pairs(self.renderer, self.pairs, self.languages)
        return hash_json([dataclasses.asdict(p) for p in self.pairs])

    def frozen_pass(self, model: Any, fingerprint: str) -> dict[str, str]:
        config, m = self.config, self.config.method
        self.first_layer = check_top_layers(model, m.lens_top_layers)
        self.layer_count = len(decoder_layer_list(model))
        hidden = int(model.config.hidden_size)
        if hidden < len(self.languages):
            raise ConfigError(
                f"LENS: {len(self.languages)} languages need a hidden size of at least that many (model: {hidden})"
            )
        try:
            self.reference, self.cache_path = cached_lens_reference(
                lambda: model.to(default_device()),
                self.renderer,
                self.rows,
                self.languages,
                model_fingerprint=fingerprint,
                root=cache_root(config.cache_dir),
                batch_size=config.selection.batch_size,
                probe_prompts=m.lens_probe_prompts,
                rank=m.lens_rank,
            )
        except ValueError as err:  # LSAR refuses degenerate means (methods/lsar.py)
            raise ConfigError(f"LENS probe on {config.data.path}: {err}") from None
        summary = self.reference.summary()
        log.info("LENS probe: |delta| per language %s", summary["shift_norms"])
        return {}

    def write_files(self, out: Path) -> None:
        write_json(out / PROBE_FILE, self.reference.summary())

    def needs_reference_copy(self) -> bool:
        return False  # the cache holds the frozen side

    def lora_exclude_modules(self) -> str | None:
        # no adapter below the trained layers
        return band_regex((0, self.first_layer - 1)) if self.first_layer > 0 else None

    def trainer(
        self,
        args: TrainingArguments,
        model: Any,
        ref_model: Any,
        tokenizer: Any,
        callbacks: list[TrainerCallback] | None,
    ) -> Trainer:
        if self.config.train.finetune == "full":
            self.trained = freeze_below(model, self.first_layer)
        else:
            self.trained = [name for name, p in model.named_parameters() if p.requires_grad]
        return LensTrainer(
            model=model,
            args=args,
            train_dataset=self.rows,
            data_collator=LensCollator(tokenizer.pad_token_id),
            processing_class=tokenizer,
            method=self.config.method,
            reference=self.reference,
            pad_id=tokenizer.pad_token_id,
            callbacks=callbacks,
        )

    def report(self, trainer: Trainer, metrics: dict[str, Any]) -> RecipeReport:
        config, m = self.config, self.config.method
        data = {**pair_counts(self.pairs), "reference_cache": str(self.cache_path)}
        count = self.layer_count
        return RecipeReport(
            details={
                "data": data,
                "lens": {
                    **self.reference.summary(),
                    "dominant_detected": self.dominant_counts,
                    "trained_layers": list(range(self.first_layer, count)),
                    "trainable_parameters": len(self.trained),
                },
                "invalid_records": self.invalid.report(),
                "language_disagreements": self.checks.report(),
            },
            card_rows=[
                f"| data | `{config.data.path}`: {data['count']} parallel prompt pairs, target languages "
                f"{data['languages']} |",
                f"| trained layers | {self.first_layer}-{count - 1} (top {m.lens_top_layers}) |",
                f"| retain / separate / align weights | {m.lens_retain_weight} / {m.lens_separate_weight} / "
                f"{m.lens_align_weight} |",
                f"| alpha / probe prompts per language | {m.lens_alpha} / {m.lens_probe_prompts} |",
            ],
        )
