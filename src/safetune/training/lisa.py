"""Lisa (lazy safety alignment): the user's role-play fine-tune, alternating with alignment steps on safety
demonstrations, each state pulled towards the weights it started from (methods/lisa.py holds the schedule
and the proximal term; docs/methods/lisa.md the choices).

LisaTrainer is SafetuneTrainer with beta 0 (the plain SFT loss) plus, per micro-batch: the state from the
schedule, an alignment batch in place of the user batch in the alignment state (the user batch is dropped,
as in the official ADMMTrainer), and the proximal term once the warm-up is over. Its state (micro-steps
done, the current state, alignment batches drawn, the anchor) goes into every checkpoint, so that
--resume continues exactly where the run stopped.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import Trainer

from safetune.data.safety import SafetyDemo, load_safety_demos
from safetune.errors import ConfigError
from safetune.methods.lisa import Phase, lisa_phase, proximal_active, proximal_term, snapshot
from safetune.storage import hash_json, write_json
from safetune.training.recipe import RecipeReport
from safetune.training.trainer import RoleRecipe, SafetuneTrainer

log = logging.getLogger(__name__)

STATE_FILE = "lisa_state.json"
ANCHOR_FILE = "lisa_anchor.safetensors"


def encode_demos(renderer: Any, demos: list[SafetyDemo]) -> list[dict[str, Any]]:
    """Safety demonstrations as training rows: the plain chat, loss on the answer (as the user's rows)."""
    rows = []
    for demo in demos:
        enc = renderer.encode(demo.prompt, demo.response)
        rows.append({"input_ids": enc.input_ids, "labels": enc.labels, "flag": False})
    return rows


class LisaTrainer(SafetuneTrainer):
    """SafetuneTrainer (beta 0) with Lisa's bi-state schedule and proximal term; see the module doc."""

    def __init__(self, *args: Any, alignment_rows: list[dict[str, Any]], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.alignment_rows = alignment_rows
        self.micro_steps = 0  # micro-batches trained (the official `self.steps`)
        self.phase: Phase | None = None
        self.alignment_drawn = 0  # alignment batches drawn so far: the next one follows from it
        self.anchor: dict[str, Tensor] = {}
        self.proximal_on = False
        self.alignment_micro_steps = 0

    # --- the schedule ---------------------------------------------------------------------------------

    def _trainable(self, model: nn.Module) -> list[tuple[str, Tensor]]:
        return [(n, p) for n, p in self.accelerator.unwrap_model(model).named_parameters() if p.requires_grad]

    def _schedule_step(self) -> tuple[int, int]:
        """(0-based step, total steps) in `method.lisa_step_unit`."""
        if self.method.lisa_step_unit == "optimizer":
            return self.state.global_step, self.state.max_steps
        return self.micro_steps, self.state.max_steps * self.args.gradient_accumulation_steps

    def alignment_batch(self, index: int) -> dict[str, Tensor]:
        """The `index`-th alignment micro-batch: a seeded shuffle of the demonstrations per pass over them
        (the official RandomSampler, last partial batch kept), a function of (seed, index) alone so that a
        resumed run draws the same batches."""
        size, n = self.args.per_device_train_batch_size, len(self.alignment_rows)
        per_pass = -(-n // size)
        epoch, position = divmod(index, per_pass)
        generator = torch.Generator().manual_seed(self.args.seed + epoch)
        order = torch.randperm(n, generator=generator).tolist()
        rows = [self.alignment_rows[i] for i in order[position * size : (position + 1) * size]]
        assert self.data_collator is not None
        return self.data_collator(rows)

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None
    ) -> Tensor:
        m = self.method
        step, total = self._schedule_step()
        phase = lisa_phase(step, m.lisa_align_steps, m.lisa_user_steps)
        if phase != self.phase:
            # A switch (or the start): the new state's anchor is the weights it starts from.
            self.anchor = snapshot(self._trainable(model))
            if self.phase is not None:
                log.debug("lisa: %s -> %s at %s step %d", self.phase, phase, m.lisa_step_unit, step)
            self.phase = phase
        if phase == "alignment":
            inputs = self.alignment_batch(self.alignment_drawn)  # the user batch is dropped (official)
            self.alignment_drawn += 1
            self.alignment_micro_steps += 1
        self.proximal_on = m.lisa_rho > 0 and proximal_active(step, total, m.lisa_warmup_fraction)
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.micro_steps += 1
        self.record(True, "alignment_fraction", float(phase == "alignment"))
        return loss

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Tensor],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if not (model.training and self.proximal_on):
            return result
        loss, outputs = result if return_outputs else (result, None)
        prox = proximal_term(self._trainable(model), self.anchor, self.method.lisa_rho)
        if prox is not None:
            self.record(True, "proximal", prox.item())
            loss = loss + prox
        return (loss, outputs) if return_outputs else loss

    # --- checkpoints ----------------------------------------------------------------------------------

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        if not self.args.should_save:
            return
        folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in self.anchor.items()}, str(folder / ANCHOR_FILE)
        )
        state = {
            "micro_steps": self.micro_steps,
            "phase": self.phase,
            "alignment_drawn": self.alignment_drawn,
            "alignment_micro_steps": self.alignment_micro_steps,
        }
        write_json(folder / STATE_FILE, state)

    def restore(self, checkpoint: str) -> None:
        """The schedule's state and anchor as the checkpoint saved them."""
        folder = Path(checkpoint)
        try:
            state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
            anchor = load_file(str(folder / ANCHOR_FILE))
        except (OSError, ValueError) as err:
            raise ConfigError(
                f"{folder} lacks Lisa's state ({err}); pass --overwrite to start again"
            ) from None
        self.micro_steps = int(state["micro_steps"])
        self.phase = state["phase"]
        self.alignment_drawn = int(state["alignment_drawn"])
        self.alignment_micro_steps = int(state.get("alignment_micro_steps", 0))
        self.anchor = anchor

    def train(self, resume_from_checkpoint: Any = None, *args: Any, **kwargs: Any) -> Any:
        if isinstance(resume_from_checkpoint, str):
            self.restore(resume_from_checkpoint)
        return super().train(resume_from_checkpoint, *args, **kwargs)


class LisaRecipe(RoleRecipe):
    """The user's role-play data (RoleRecipe's loading, no selection: Lisa has no KL term) and the safety
    demonstrations of `method.safety_data` for the alignment state."""

    def load(self, tokenizer: Any) -> str:
        data_hash = super().load(tokenizer)
        m = self.config.method
        self.demos = load_safety_demos(m.safety_data, invalid=self.config.data.invalid)
        log.info(
            "lisa: %d safety demonstrations from %s", len(self.demos), m.safety_data or "the built-in set"
        )
        return hash_json({"data": data_hash, "safety": [d.__dict__ for d in self.demos]})

    def frozen_pass(self, model: Any, fingerprint: str) -> dict[str, str]:
        # The user side is plain SFT rows (single-turn examples or conversation rows, unchanged); the
        # alignment side stays the single-turn safety demonstrations.
        self.rows = self.unselected_rows()
        self.flags = [False] * len(self.rows)
        return {}

    def train_rows(self) -> list[dict[str, Any]]:
        return self.rows

    def write_files(self, out: Path) -> None:
        return None

    def needs_reference_copy(self) -> bool:
        return False

    trainer_class = LisaTrainer

    def trainer_options(self) -> dict[str, Any]:
        return {"alignment_rows": encode_demos(self.renderer, self.demos)}

    def report(self, trainer: Trainer, metrics: dict[str, Any]) -> RecipeReport:
        assert isinstance(trainer, LisaTrainer)
        m, config = self.config.method, self.config
        return RecipeReport(
            details={
                "data": {**self.data_details(len(self.rows)), "safety_demos": len(self.demos)},
                "invalid_records": self.invalid.report(),
            },
            metrics={"alignment_micro_steps": trainer.alignment_micro_steps},
            card_rows=[
                f"| data | `{config.data.path}` (role: {config.data.role or 'all'}) |",
                self.data_card_row(len(self.rows)),
                f"| safety demonstrations | `{m.safety_data or 'builtin'}`, {len(self.demos)} |",
                f"| schedule | {m.lisa_align_steps} alignment / {m.lisa_user_steps} user {m.lisa_step_unit} steps |",
                f"| proximal | rho {m.lisa_rho}, off for the first {m.lisa_warmup_fraction:g} of the run |",
            ],
        )
