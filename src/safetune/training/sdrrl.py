"""SDRRL (Zhang et al., ACL 2024; docs/methods/sdrrl.md): the transfer set built from parallel preference
pairs (methods/sdrrl.py), then plain SFT on it through the `sft` method's Trainer (SafetuneTrainer with
beta 0: response NLL, prompt masked). Rendering is the pair methods' ChatRenderer, each pair's system
prompt on every example built from it. The transfer set is written to the run folder (transfer.jsonl) and
its counts per component to run.json."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from transformers import Trainer

from safetune.data.chat import ChatRenderer
from safetune.data.languages import LanguageCheck, language_counts
from safetune.data.preferences import load_parallel_pairs
from safetune.data.readers import InvalidRecords
from safetune.methods.sdrrl import TransferExample, build_transfer_set
from safetune.storage import atomic_open, hash_json
from safetune.training.recipe import RecipeReport
from safetune.training.trainer import RoleRecipe

log = logging.getLogger(__name__)

TRANSFER_FILE = "transfer.jsonl"


def encode_transfer(renderer: ChatRenderer, rows: list[TransferExample]) -> list[dict[str, Any]]:
    """Training rows for SafetuneTrainer: prompt masked, and a completion example's given prefix too."""
    out = []
    for ex in rows:
        if ex.response_prefix:
            enc = renderer.encode_continuation(ex.prompt, ex.response_prefix, ex.response, ex.system)
        else:
            enc = renderer.encode(ex.prompt, ex.response, ex.system)
        out.append({"input_ids": enc.input_ids, "labels": enc.labels, "flag": False})
    return out


class SdrrlRecipe(RoleRecipe):
    """Parallel pairs -> SDRRL's transfer set -> SFT. No selection, no reference, no frozen pass."""

    def load(self, tokenizer: Any) -> str:
        config = self.config
        self.renderer = ChatRenderer.from_config(tokenizer, config.chat)
        self.invalid, self.languages = InvalidRecords(config.data.invalid), LanguageCheck()
        pairs = load_parallel_pairs(
            config.data.path, config.data.format, invalid=self.invalid, languages=self.languages
        )
        self.pairs = pairs[: config.data.max_examples] if config.data.max_examples else pairs
        self.transfer = build_transfer_set(self.pairs, config.sdrrl, config.train.seed)
        self.flags = []  # RoleRecipe's selection: none
        log.info(
            "sdrrl: %d parallel pairs from %s -> %d transfer examples (%d rows)",
            len(self.pairs),
            config.data.path,
            len(self.transfer.examples),
            len(self.transfer.rows()),
        )
        # The transfer set is a function of the pairs, the sdrrl settings and the seed: its hash is the
        # run identity's data, so --resume refuses a run whose transfer set would differ.
        return hash_json([ex.to_dict() for ex in self.transfer.examples])

    def frozen_pass(self, model: Any, fingerprint: str) -> dict[str, str]:
        return {}

    def write_files(self, out: Path) -> None:
        with atomic_open(out / TRANSFER_FILE) as handle:
            for ex in self.transfer.examples:
                handle.write(json.dumps(ex.to_dict(), ensure_ascii=False) + "\n")

    def needs_reference_copy(self) -> bool:
        return False

    def train_rows(self) -> list[dict[str, Any]]:
        return encode_transfer(self.renderer, self.transfer.rows())

    def report(self, trainer: Trainer, metrics: dict[str, Any]) -> RecipeReport:
        config, counts = self.config, self.transfer.counts
        rows = len(self.transfer.rows())
        return RecipeReport(
            details={
                "renderer": self.renderer.fingerprint(),
                "data": {"count": len(self.pairs), "languages": language_counts(self.pairs)},
                "sdrrl": {
                    "split_fraction": config.sdrrl.split_fraction,
                    "switch_rate": config.sdrrl.switch_rate,
                    "seed": config.train.seed,
                    "examples": len(self.transfer.examples),
                    "rows": rows,
                    "components": counts,
                    "file": TRANSFER_FILE,
                },
                "invalid_records": self.invalid.report(),
                "language_disagreements": self.languages.report(),
            },
            metrics={"transfer_rows": rows},
            card_rows=[
                f"| data | `{config.data.path}`: {len(self.pairs)} parallel pairs |",
                "| transfer set | "
                + ", ".join(f"{name} {entry['rows']}" for name, entry in counts.items())
                + f" rows ({TRANSFER_FILE}) |",
            ],
        )
