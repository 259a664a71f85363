"""Safety demonstrations: harmful requests paired with the refusal a safe model gives.

The alignment data of the safety-preserving fine-tuning baselines: SafeInstr mixes them into the user's
data (Bianchi et al. 2024), Lisa alternates with them (Huang et al. 2024), Vaccine aligns on them before
the user's fine-tune, SEAL's selector ranks the user's data against them. One loader for all of them:

- `path=None`: safetune's own small set (resources/safety_demos.jsonl, 32 generic requests with refusals
  written for this project), enough to run every method; real runs should pass their own file.
- a .json / .jsonl / .csv file (a .json may be a list or the SaRFT authors' `{"Instances": [...]}`)
  whose records name the request in one of PROMPT_FIELDS and the answer in one of RESPONSE_FIELDS
  (first present wins), or in the columns the user maps with `columns={"prompt": ..., "response": ...}`.
  Alpaca-style records (the Safety-Tuned LLaMAs release: instruction, input, output) get
  `instruction + "\\n\\n" + input` when the input is not empty, as Alpaca's own prompt does.
- records with an `is_safe` field (BeaverTails: prompt, response, is_safe) keep only the safe answers:
  the unsafe rows are counted and logged, never trained on as demonstrations.

Every record must have a non-empty prompt and response; a bad one is a located DataError, or a counted
skip with `invalid="skip"`. Ids are the record's `id` when it has one, else `safety-<line>`.
"""

from __future__ import annotations

import functools
import importlib.resources
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetune.data.readers import InvalidRecords, PathLike, check_flag, check_object, read_records, text_field
from safetune.errors import DataError

log = logging.getLogger(__name__)

PROMPT_FIELDS = ("prompt", "instruction", "question", "goal", "input")
RESPONSE_FIELDS = ("response", "output", "answer", "refusal", "chosen")
BUILTIN = "builtin"


@dataclass(frozen=True)
class SafetyDemo:
    """A harmful request and a safe (refusing) answer to it."""

    id: str
    prompt: str
    response: str


def builtin_path() -> Path:
    return Path(str(importlib.resources.files("safetune") / "resources" / "safety_demos.jsonl"))


def _field(row: Mapping[str, Any], mapped: str | None, candidates: tuple[str, ...]) -> str | None:
    if mapped is not None:
        return mapped
    return next((name for name in candidates if name in row), None)


def _demo(
    file: Path, line: int, value: object, columns: Mapping[str, str], counts: dict[str, int]
) -> SafetyDemo | None:
    row = check_object(file, line, value)
    prompt_key = _field(row, columns.get("prompt"), PROMPT_FIELDS)
    response_key = _field(row, columns.get("response"), RESPONSE_FIELDS)
    if prompt_key is None:
        raise DataError(file, line, "prompt", f"no request field (expected one of {list(PROMPT_FIELDS)})")
    if response_key is None:
        raise DataError(file, line, "response", f"no answer field (expected one of {list(RESPONSE_FIELDS)})")
    if "is_safe" in row and check_flag(file, line, "is_safe", row["is_safe"]) == 0:
        counts["unsafe"] += 1
        return None
    prompt = text_field(file, line, row, prompt_key)
    if prompt_key == "instruction" and str(row.get("input") or "").strip():
        prompt = f"{prompt}\n\n{text_field(file, line, row, 'input')}"
    response = text_field(file, line, row, response_key)
    record_id = row.get("id")
    return SafetyDemo(str(record_id) if record_id not in (None, "") else f"safety-{line}", prompt, response)


def load_safety_demos(
    path: PathLike | None = None,
    *,
    columns: Mapping[str, str] | None = None,
    invalid: InvalidRecords | str = "error",
) -> list[SafetyDemo]:
    """The safety demonstrations in `path` (None or "builtin": safetune's own set); see the module doc."""
    file = builtin_path() if path in (None, BUILTIN) else Path(str(path))
    policy = InvalidRecords.of(invalid)
    unknown = set(columns or {}) - {"prompt", "response"}
    if unknown:
        raise DataError(file, None, "columns", f"unknown column roles {sorted(unknown)} (prompt, response)")
    counts = {"unsafe": 0}
    demos: list[SafetyDemo] = []
    seen: dict[str, int] = {}
    for line, value in read_records(file, within="Instances"):
        demo = policy.guard(functools.partial(_demo, file, line, value, columns or {}, counts))
        if demo is None:
            continue
        if demo.id in seen:
            raise DataError(file, line, "id", f"duplicate id {demo.id!r} (first at line {seen[demo.id]})")
        seen[demo.id] = line
        demos.append(demo)
    if counts["unsafe"]:
        log.info("%s: left out %d rows marked is_safe=false (not demonstrations)", file, counts["unsafe"])
    policy.log_summary("safety demonstrations")
    if not demos:
        raise DataError(
            file, None, None, "no safety demonstrations (every record was empty, unsafe or skipped)"
        )
    return demos
