"""SPPFT (Li et al., ICLR 2025): supervised fine-tuning on role-play data with the safety layers frozen.

The band comes from reference/safety_layers.py (an override, the paper's band for a known model, or the
band located on this model); this recipe freezes it and writes the evidence. Full fine-tuning: the band's
self_attn and mlp parameters get requires_grad False (the authors' SPPFT.py; `method.freeze_scope=layer`
freezes every parameter of the band's layers, norms included: the paper's wording). LoRA: no adapter is
put on a module inside the band's layers (`lora_exclude_modules`), so they stay the frozen base's.

The loss is plain SFT (SafetuneTrainer with beta 0, no selection and no reference model).
"""

from __future__ import annotations

import importlib.resources
import logging
import re
from pathlib import Path
from typing import Any

from transformers import Trainer, TrainerCallback, TrainingArguments

from safetune.config import parse_layer_band
from safetune.data.chat import ChatRenderer
from safetune.data.readers import check_object, read_jsonl, text_field
from safetune.data.safety import load_safety_demos
from safetune.errors import ConfigError
from safetune.reference.safety_layers import (
    INDEXING,
    AnalysisSettings,
    analyse,
    band_regex,
    check_band,
    choose_band,
    decoder_layers,
    plot_gaps,
    published_band,
)
from safetune.storage import cache_root, hash_json, write_json
from safetune.training.recipe import RecipeReport
from safetune.training.trainer import RoleRecipe

log = logging.getLogger(__name__)

EVIDENCE_FILE = "safety_layers.json"
PLOT_FILE = "safety_layers.png"


def builtin_overrefusal_prompts() -> list[str]:
    """The over-rejection set: safetune's built-in benign-but-risky-looking prompts (the over-refusal
    benchmark's default, resources/overrefusal.jsonl)."""
    resource = importlib.resources.files("safetune") / "resources" / "overrefusal.jsonl"
    with importlib.resources.as_file(resource) as file:
        return [
            text_field(file, line, check_object(file, line, row), "prompt") for line, row in read_jsonl(file)
        ]


def freeze_band(model: Any, band: tuple[int, int], scope: str) -> list[str]:
    """requires_grad False on the band's self_attn + mlp parameters (`attn_mlp`) or on all of its layers'
    parameters (`layer`); returns the frozen parameters' names."""
    layers = decoder_layers(model)
    frozen = set()
    for k in range(band[0], band[1] + 1):
        modules = [layers[k]] if scope == "layer" else [layers[k].self_attn, layers[k].mlp]
        for module in modules:
            for param in module.parameters():
                param.requires_grad_(False)
                frozen.add(id(param))
    return [name for name, param in model.named_parameters() if id(param) in frozen]


def _check_lora_outside(model: Any, targets: list[str], band: tuple[int, int], source: str) -> None:
    """Under LoRA the band gets no adapter: refuse, before the run's first file, a band that leaves no
    target module outside it (peft would refuse it only when wrapping)."""
    inside = re.compile(band_regex(band))
    for name, _ in model.named_modules():
        if any(name == t or name.endswith(f".{t}") for t in targets) and not inside.fullmatch(name):
            return
    raise ConfigError(
        f"SPPFT with LoRA: the safety layers {band[0]}-{band[1]} ({source}) hold every LoRA target "
        f"{list(targets)}, so nothing would train; pass --method.layers or use --train.finetune=full"
    )


class SppftRecipe(RoleRecipe):
    """Role-play SFT with the safety layers frozen; the analysis is the frozen pass."""

    def frozen_pass(self, model: Any, fingerprint: str) -> dict[str, str]:
        config, m = self.config, self.config.method
        num_layers = len(decoder_layers(model))
        override = parse_layer_band(m.layers) if m.layers is not None else None
        if override is not None:
            check_band(override, num_layers, "method.layers")
        published = published_band(config.model.name, num_layers) if m.published_bands else None
        # A band given or published needs no refinement: the cosine analysis is still run, as evidence.
        search = m.layer_search if override is None and published is None else "cosine"
        settings = AnalysisSettings(
            pairs=m.cosine_pairs,
            gap_mode=m.gap_mode,
            onset=m.gap_onset,
            flat=m.gap_flat,
            search=search,
            alpha=m.scale_alpha,
            radius=m.search_radius,
            max_new_tokens=m.overrejection_tokens,
            batch_size=m.layer_batch_size,
        )
        # The model's own chat prompt with no system turn: a user's question as the model would see it.
        renderer = ChatRenderer.from_config(self.tokenizer, config.chat, authors_empty_system=False)
        normal = list(dict.fromkeys(self._user_prompts()))[: m.normal_prompts]
        malicious = list(dict.fromkeys(d.prompt for d in load_safety_demos(m.safety_data)))
        if len(normal) < 2 or len(malicious) < 2:
            raise ConfigError("SPPFT needs at least 2 distinct normal (role data) and malicious prompts")
        over_rejection = builtin_overrefusal_prompts() if search == "full" else []
        analysis = analyse(
            model,
            self.tokenizer,
            renderer,
            normal,
            malicious,
            over_rejection,
            settings,
            fingerprint,
            cache_root(config.cache_dir),
        )
        chosen = choose_band(analysis, override, published)
        self.band: tuple[int, int] = (chosen["band"][0], chosen["band"][1])
        self.evidence = {
            "method": "sppft",
            "model": config.model.name,
            "indexing": INDEXING,
            "band": chosen["band"],
            "band_source": chosen["source"],
            **({"published": chosen["published"]} if "published" in chosen else {}),
            "freeze": "LoRA: no adapter in the band's layers"
            if config.train.finetune == "lora"
            else m.freeze_scope,
            "normal_prompts": "role data inputs"
            if self.conversations is None
            else "the conversations' user messages",
            "malicious_prompts": m.safety_data or "builtin safety demonstrations",
            "over_rejection_prompts": "builtin:overrefusal" if over_rejection else None,
            **analysis,
        }
        if config.train.finetune == "lora":
            _check_lora_outside(model, config.train.lora_targets, self.band, chosen["source"])
        log.info("SPPFT: freezing decoder layers %d-%d (%s)", *self.band, chosen["source"])
        # Plain SFT rows: the single-turn examples or the conversation rows, unchanged.
        self.rows = self.unselected_rows()
        self.flags = [False] * len(self.rows)
        return {
            "safety_layers": f"{self.band[0]}-{self.band[1]}",
            "safety_layers_evidence": hash_json(analysis),
        }

    def load(self, tokenizer: Any) -> str:
        self.tokenizer = tokenizer
        return super().load(tokenizer)

    def _user_prompts(self) -> list[str]:
        """The normal (N) prompts of the cosine analysis: the role data's questions, or the conversations'
        user messages in order (each a question the model answers in the user's data)."""
        if self.conversations is None:
            return [ex.input for ex in self.examples]
        return [msg.content for c in self.conversations for msg in c.messages if msg.role == "user"]

    def train_rows(self) -> list[dict[str, Any]]:
        return self.rows

    def write_files(self, out: Path) -> None:
        write_json(out / EVIDENCE_FILE, self.evidence)
        plot_gaps(self.evidence, out / PLOT_FILE)

    def needs_reference_copy(self) -> bool:
        return False

    def lora_exclude_modules(self) -> str | None:
        return band_regex(self.band)

    def trainer(
        self,
        args: TrainingArguments,
        model: Any,
        ref_model: Any,
        tokenizer: Any,
        callbacks: list[TrainerCallback] | None,
    ) -> Trainer:
        if self.config.train.finetune == "full":
            self.frozen = freeze_band(model, self.band, self.config.method.freeze_scope)
        else:
            self.frozen = []
        trainer = super().trainer(args, model, ref_model, tokenizer, callbacks)
        self.lora_modules = sorted(
            {name.rsplit(".lora_", 1)[0] for name, _ in model.named_parameters() if ".lora_" in name}
        )
        return trainer

    def report(self, trainer: Trainer, metrics: dict[str, Any]) -> RecipeReport:
        config, m = self.config, self.config.method
        first, last = self.band
        return RecipeReport(
            details={
                "safety_layers": {
                    "band": [first, last],
                    "source": self.evidence["band_source"],
                    "indexing": INDEXING,
                    "frozen_parameters": len(self.frozen),
                    "freeze": self.evidence["freeze"],
                    "lora_modules": len(self.lora_modules),
                },
                "data": self.data_details(len(self.rows)),
                "invalid_records": self.invalid.report(),
            },
            card_rows=[
                f"| data | `{config.data.path}` (role: {config.data.role or 'all'}) |",
                self.data_card_row(len(self.rows)),
                f"| safety layers | {first}-{last} (0-based, inclusive; {self.evidence['band_source']}) |",
                f"| frozen | {self.evidence['freeze'] if config.train.finetune == 'lora' else m.freeze_scope} |",
            ],
        )
