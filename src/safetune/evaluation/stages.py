"""What the evaluation's stages share, below the runner (evaluation/runner.py) and the stages that live in
their own modules (translate-then-judge, `safetune judge`) and the other staged builders (`safetune pairs`,
`safetune safety-expert`): the task record, the progress hook, content hashes, the generation stage's
append loop (completions.jsonl) and the judge stage that reads and appends verdicts (judgements.jsonl)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

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


def response_hash(text: str, language: str | None, history: Sequence[Sequence[str]] = ()) -> str:
    """What a verdict depends on besides the judge: the response, the prompt's language when it has one
    (a judge may not cover it; untagged prompts keep the hash of the text alone) and, for a turn-k item,
    the conversation before it (a judge that reads it may decide otherwise under another history). A
    single-turn item's hash is the one it always had, so verdicts on disk stay valid."""
    if history:
        return short_hash(text, language, [list(pair) for pair in history])
    return short_hash(text) if language is None else short_hash(text, language)


def item_hash(item: JudgeItem) -> str:
    """The verdict cache's hash of a judge item (`response_hash` of its response, language, history)."""
    return response_hash(item.response, item.language, item.history)


def request_hash(request: GenerationRequest) -> str:
    """What a completion on disk answers: the request's user text, system prompt and, for a multi-turn
    request, its history. A completion whose hash differs answers another request under the same id and
    is generated again. A single-turn request's hash is the one it always had (its completions stay
    valid)."""
    if not request.history:
        return short_hash(request.user, request.system)
    return short_hash(request.user, request.system, [list(pair) for pair in request.history])


def unanswered(
    requests: Sequence[GenerationRequest], done: Mapping[str, Mapping[str, Any]]
) -> list[GenerationRequest]:
    """The requests without a completion on disk to the very same request."""
    return [r for r in requests if done.get(r.id, {}).get("request_hash") != request_hash(r)]


class Generator(Protocol):
    def generate(self, requests: Sequence[GenerationRequest]) -> Iterable[Sequence[Any]]: ...


def append_completions(
    missing: Sequence[GenerationRequest],
    backend: Generator,
    path: Path,
    done: dict[str, dict[str, Any]],
    hook: BatchHook | None = None,
) -> int:
    """Generate `missing` batch by batch, append each batch to `path` (a kill loses at most the batch in
    flight) with its request hash, and add the rows to `done`; returns how many were generated."""
    hashes = {r.id: request_hash(r) for r in missing}
    count = 0
    for batch in backend.generate(missing):
        rows = [{**r.to_dict(), "request_hash": hashes[r.id]} for r in batch]
        append_jsonl(path, rows)
        done.update((row["id"], row) for row in rows)
        count += len(rows)
        if hook:
            hook("generate", count)
    return count


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
    return keyed_stage(
        path,
        items,
        hashes,
        key,
        "response_hash",
        judge.judge,
        hook=lambda count: hook("judge", count) if hook else None,
        what=f"judgements ({key}): %d on disk, %d to judge",
        missing=f"judge {key} returned no verdict for {{n}} responses (e.g. {{first}})",
    )


def keyed_stage(
    path: Path,
    items: Sequence[Any],
    hashes: Mapping[str, str],
    key: str,
    hash_field: str,
    produce: Callable[[list[Any]], Iterable[Sequence[Any]]],
    hook: Callable[[int], None],
    what: str,
    missing: str,
) -> tuple[dict[str, dict[str, Any]], int]:
    """The loop of an append-only stage keyed by (id, producer key, content hash): rows of `path` with
    this `key` and the item's hash in `hash_field` are reused; the other `items` (each with an `id`) go
    to `produce` and its batches (each result with `id` and `to_dict()`) are appended batch by batch, so
    a killed run keeps every finished batch. `what` is the log line (on disk, pending); `missing` the
    error (with {n} and {first}) when `produce` leaves an item without a row. Returns (rows by id,
    rows produced now)."""
    done = read_rows(
        path, lambda row: row.get("judge") == key and hashes.get(row["id"]) == row.get(hash_field)
    )
    pending = [item for item in items if item.id not in done]
    log.info(what, len(done), len(pending))
    count = 0
    for batch in produce(pending) if pending else ():
        rows = [{**r.to_dict(), "judge": key, hash_field: hashes[r.id]} for r in batch]
        append_jsonl(path, rows)
        done.update((row["id"], row) for row in rows)
        count += len(rows)
        hook(count)
    absent = [item.id for item in items if item.id not in done]
    if absent:
        raise ConfigError(missing.format(n=len(absent), first=absent[0]))
    return done, count
