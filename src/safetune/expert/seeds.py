"""The harmful seed prompts the safety expert is built from: safetune's own set, or a user's prompt file.

The built-in set (resources/safety_expert_seeds.jsonl) is our own wording: 36 plainly worded harmful
requests, 2 in each of 18 categories in the spirit of SafeDecoding's seed set (uw-nsl/SafeDecoding,
datasets/seed_reject.json: 72 prompts over 18 categories). A user's file is read by the harmful-prompt
loader `safetune eval` uses (evaluation/benchmark_files.py): JSON list, JSONL or CSV, the prompt in the
first of PROMPT_FIELDS present (or the column `expert.columns` maps), an optional id and category; a bad
record stops with one line naming the file, line and field.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from safetune.config import ExpertConfig
from safetune.data.records import Prompt
from safetune.errors import DataError
from safetune.evaluation.benchmark_files import LoadOptions, TableOptions, load_harmful_prompts
from safetune.storage import hash_json

BENCHMARK = "safety-expert"  # the prompts' benchmark tag (nothing is evaluated under it)
BUILTIN_LABEL = "builtin"


def builtin_path() -> Path:
    return Path(str(importlib.resources.files("safetune") / "resources" / "safety_expert_seeds.jsonl"))


def load_seeds(config: ExpertConfig) -> list[Prompt]:
    """The seed prompts of `config.seeds` (None or "builtin": the built-in set); at least one, ids unique
    (the loader refuses a duplicate)."""
    builtin = config.seeds in (None, BUILTIN_LABEL)
    source = str(builtin_path()) if builtin else str(config.seeds)
    table = TableOptions.of(None if builtin else config.columns)
    prompts = load_harmful_prompts(source, LoadOptions(BENCHMARK, table=table))
    if not prompts:
        raise DataError(source, None, None, "no seed prompts in the file")
    return prompts


def seeds_label(config: ExpertConfig) -> str:
    return BUILTIN_LABEL if config.seeds in (None, BUILTIN_LABEL) else str(config.seeds)


def seeds_hash(prompts: list[Prompt]) -> str:
    """What the expert's samples depend on in the seed set: each prompt's id and text, in order."""
    return hash_json([[p.id, p.text] for p in prompts])
