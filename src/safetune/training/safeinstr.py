"""SafeInstr on role-play data (Bianchi et al., ICLR 2024; docs/methods/safeinstr.md): N safety
demonstrations (harmful request -> refusal, data/safety.py) drawn with the run's seed and mixed into the
role rows, then plain SFT (SafetuneTrainer with beta 0: the `sft` method's loss) on the mixture."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import Trainer

from safetune.config import MethodConfig
from safetune.data.chat import ChatRenderer
from safetune.data.records import RoleExample
from safetune.data.role_prompts import prompts_by_role
from safetune.data.safety import BUILTIN, SafetyDemo, builtin_path, load_safety_demos
from safetune.errors import ConfigError
from safetune.storage import hash_json
from safetune.training.recipe import RecipeReport
from safetune.training.trainer import RoleRecipe

# The id prefix of a mixed-in safety row: its ids never collide with a role row's (checked).
SAFETY_ID_PREFIX = "safety:"


def safety_row_count(method: MethodConfig, role_rows: int) -> int:
    """N: `method.safety_count` when set, else `safety_fraction` of the role rows, rounded half up (the
    paper adds 100 ... 2000 demonstrations to 20k instructions: "3% safety examples")."""
    if method.safety_count is not None:
        return method.safety_count
    return math.floor(method.safety_fraction * role_rows + 0.5)


def mix_safety(
    examples: Sequence[RoleExample],
    demos: Sequence[SafetyDemo],
    count: int,
    seed: int,
    system: str = "none",
) -> list[RoleExample]:
    """`count` demonstrations drawn without replacement with `seed` (kept in file order), as role rows
    with ids `safety:<demo id>`. `system="role"` gives each one a role drawn (with the same seed) from the
    role rows, whose role prompt it is rendered with; "none" leaves the role empty (no system prompt)."""
    if count > len(demos):
        raise ConfigError(
            f"method.safety_count/safety_fraction asks for {count} safety rows but the safety data has "
            f"{len(demos)}: pass a larger method.safety_data or a smaller count"
        )
    rng = random.Random(seed)
    chosen = sorted(rng.sample(range(len(demos)), count))
    roles = [ex.role for ex in examples]
    taken = {ex.id for ex in examples}
    rows = []
    for i in chosen:
        demo = demos[i]
        row_id = f"{SAFETY_ID_PREFIX}{demo.id}"
        if row_id in taken:
            raise ConfigError(f"safety row id {row_id!r} is also a role row's id: rename one of them")
        role = rng.choice(roles) if system == "role" and roles else ""
        rows.append(RoleExample(role=role, input=demo.prompt, output=demo.response, id=row_id))
    return rows


def encode_safety(
    renderer: ChatRenderer, rows: Sequence[RoleExample], role_prompts: dict[str, tuple[str, str]]
) -> list[dict[str, Any]]:
    """Training rows for the safety demonstrations: no system prompt (as the role rows), or the role's
    prompt when the row carries a role (`safety_system: role`)."""
    out = []
    for row in rows:
        # A conversation without a system prompt of its own lends none (its rows render without one too).
        system = (role_prompts[row.role][0] or None) if row.role else None
        enc = renderer.encode(row.input, row.output, system=system)
        out.append({"input_ids": enc.input_ids, "labels": enc.labels, "flag": False})
    return out


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class SafeInstrRecipe(RoleRecipe):
    """Every role row plus N safety rows, no selection and no reference: SafetuneTrainer with beta 0."""

    def load(self, tokenizer: Any) -> str:
        data_hash = super().load(tokenizer)
        m = self.config.method
        file = builtin_path() if m.safety_data in (None, BUILTIN) else Path(m.safety_data)
        demos = load_safety_demos(file, invalid=self.invalid)
        self.safety_file = {
            "path": m.safety_data or BUILTIN,
            "sha256": _file_sha256(file),
            "count": len(demos),
        }
        if self.conversations is not None:
            return self._load_conversation_mix(demos, data_hash)
        count = safety_row_count(m, len(self.examples))
        self.safety = mix_safety(self.examples, demos, count, self.config.train.seed, m.safety_system)
        self.role_prompts = (
            prompts_by_role(self.examples, self.profiles, self.config.selection)
            if m.safety_system == "role"
            else {}
        )
        self.flags = [False] * len(self.examples)
        rows = [dataclasses.asdict(ex) for ex in [*self.examples, *self.safety]]
        return hash_json({"rows": rows, "system": self.role_prompts})

    def _load_conversation_mix(self, demos: Sequence[SafetyDemo], data_hash: str) -> str:
        """Conversations: the user side is every conversation row (all assistant turns trained, or the last
        with `data.train_turns=last`); N counts those rows (`safety_fraction` of the training rows, as for
        single-turn data) and each demonstration is a one-turn row beside them. `safety_system: role`
        renders a demonstration with the system prompt of a conversation drawn with the seed."""
        m = self.config.method
        self.user_rows = self.unselected_rows()
        count = safety_row_count(m, len(self.user_rows))
        # mix_safety draws a "role" per demonstration: here a conversation, by its id.
        owners = [RoleExample(role=c.id, input="", output="", id=c.id) for c in self.conversations or []]
        self.safety = mix_safety(owners, demos, count, self.config.train.seed, m.safety_system)
        self.role_prompts = (
            {c.id: (c.system or "", "") for c in self.conversations or []}
            if m.safety_system == "role"
            else {}
        )
        self.flags = [False] * len(self.user_rows)
        return hash_json(
            {
                "conversations": data_hash,
                "safety": [dataclasses.asdict(ex) for ex in self.safety],
                "system": self.role_prompts,
            }
        )

    def frozen_pass(self, model: Any, fingerprint: str) -> dict[str, str]:
        return {}  # no selection, no reference

    def write_files(self, out: Path) -> None:
        return None

    def needs_reference_copy(self) -> bool:
        return False

    def train_rows(self) -> list[dict[str, Any]]:
        user = self.user_rows if self.conversations is not None else super().train_rows()
        return user + encode_safety(self.renderer, self.safety, self.role_prompts)

    def report(self, trainer: Trainer, metrics: dict[str, Any]) -> RecipeReport:
        config, m = self.config, self.config.method
        conversations = self.conversations is not None
        n_role = len(self.user_rows) if conversations else len(self.examples)
        n_safe = len(self.safety)
        data: dict[str, Any] = {"role_rows": n_role, "safety_rows": n_safe, "count": n_role + n_safe}
        if conversations:
            data["conversations"] = self.data_details(n_role)
        user = (
            f"{n_role} conversation rows ({config.data.train_turns} turns)"
            if conversations
            else f"{n_role} role"
        )
        return RecipeReport(
            details={
                "data": data,
                "safeinstr": {
                    "safety_data": self.safety_file,
                    "safety_rows": n_safe,
                    "safety_count": m.safety_count,
                    "safety_fraction": m.safety_fraction if m.safety_count is None else None,
                    "safety_system": m.safety_system,
                    "seed": config.train.seed,
                    "ids": [row.id for row in self.safety],
                },
                "invalid_records": self.invalid.report(),
            },
            card_rows=[
                f"| data | `{config.data.path}` (role: {config.data.role or 'all'}) |",
                f"| examples | {user} + {n_safe} safety ({self.safety_file['path']}) |",
            ],
        )
