"""What the evaluation's stages share, below the runner (evaluation/runner.py) and the stages that live in
their own modules (translate-then-judge, `safetune judge`): the task record, the progress hook, content
hashes, and the judge stage that reads and appends verdicts (judgements.jsonl)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetune.data.records import Prompt
from safetune.errors import ConfigError
from safetune.evaluation.benchmarks import BenchmarkSpec
from safetune.evaluation.items import GenerationRequest, Judge, JudgeItem
from safetune.storage import append_jsonl, hash_json, read_keyed_jsonl

log = logging.getLogger("safetune.evaluation.runner")  # one logger name for every stage of an eval

JUDGED_KINDS = ("harmful", "overrefusal")

BatchHook = Callable[[str, int], None]  # (stage, rows done so far in this run)


@dataclass(frozen=True)
class Task:
    """One prompt of one benchmark, and the request that answers it."""

    spec: BenchmarkSpec
    prompt: Prompt
    request: GenerationRequest

    @property
    def judged(self) -> bool:
        return self.spec.kind in JUDGED_KINDS


def short_hash(*parts: object) -> str:
    return hash_json(list(parts))[:16]


def read_rows(path: Path, keep: Callable[[dict[str, Any]], bool]) -> dict[str, dict[str, Any]]:
    """Rows of an append-only stage file by id (the last valid row wins); a torn last line is cut."""
    return read_keyed_jsonl(path, "id", keep)


def response_hash(text: str, language: str | None) -> str:
    """What a verdict depends on besides the judge: the response, and the prompt's language when it has
    one (a judge may not cover it; untagged prompts keep the hash of the text alone)."""
    return short_hash(text) if language is None else short_hash(text, language)


def judge_pending(
    items: Sequence[JudgeItem],
    hashes: Mapping[str, str],
    path: Path,
    judge: Judge,
    hook: BatchHook | None = None,
) -> tuple[dict[str, dict[str, Any]], int]:
    """Verdicts of `judge` for every item (`hashes`: item id -> response_hash), appended to the stage
    file `path` batch by batch; those of the same judge key and response already in it are reused.
    Shared by `safetune eval` and `safetune judge` (evaluation/judging.py)."""
    key = judge.key()
    done = read_rows(
        path, lambda row: row.get("judge") == key and hashes.get(row["id"]) == row.get("response_hash")
    )
    pending = [item for item in items if item.id not in done]
    log.info("judgements (%s): %d on disk, %d to judge", key, len(done), len(pending))
    count = 0
    for batch in judge.judge(pending) if pending else ():
        rows = [{**v.to_dict(), "judge": key, "response_hash": hashes[v.id]} for v in batch]
        append_jsonl(path, rows)
        done.update((row["id"], row) for row in rows)
        count += len(rows)
        if hook:
            hook("judge", count)
    missing = [item.id for item in items if item.id not in done]
    if missing:
        raise ConfigError(f"judge {key} returned no verdict for {len(missing)} responses (e.g. {missing[0]})")
    return done, count
