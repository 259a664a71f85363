"""RDS scores: the frozen reference's log-likelihood of each role-play response under two prompts.

For each training example (x, y) the frozen reference model scores the response under the role's own
system prompt and under an unsafe variant of it (same profile, reverse-safety closing instruction):
    l_role   = mean_t log p_ref(y_t | p_role(R), x, y_<t)
    l_unsafe = mean_t log p_ref(y_t | p_unsafe(R), x, y_<t)
    flag     = l_unsafe > l_role
Scores depend only on (model, data, prompts, template, batch size), so they are cached on disk under a
content hash (cache.py) and a killed scoring run resumes from the rows already written. Which rows the
flags then select are selection.py's; the prompts themselves data/role_prompts.py's.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch

from safetune import console
from safetune.data.batching import length_sorted_batches, pad_batch
from safetune.data.chat import ChatRenderer, EncodedExample
from safetune.data.records import RoleExample
from safetune.methods.losses import sequence_logps
from safetune.reference.cache import CacheEntry, cache_key
from safetune.storage import append_jsonl, hash_json, repair_jsonl_tail

log = logging.getLogger(__name__)

# Bump when the scoring semantics or the key change: it is part of the cache key.
# v2: the key comes from the shared recipe (reference/cache.py).
SCORING_VERSION = "rds-scores-v2"


def is_flagged(l_role: float, l_unsafe: float) -> bool:
    """RDS's rule, for a single-turn example and for a conversation's turn alike: risky when the unsafe
    prompt makes the response likelier than the role prompt does. Strict, no threshold (the paper)."""
    return l_unsafe > l_role


@dataclass(frozen=True)
class Score:
    """Reference log-likelihood of one example's response under the two prompts."""

    id: str
    role: str
    l_role: float
    l_unsafe: float

    @property
    def margin(self) -> float:
        return self.l_unsafe - self.l_role

    @property
    def rds_flag(self) -> bool:
        return is_flagged(self.l_role, self.l_unsafe)


def scores_key(
    model_fingerprint: str,
    examples: Sequence[RoleExample],
    prompts: dict[str, tuple[str, str]],
    renderer: ChatRenderer,
    batch_size: int,
) -> str:
    """Everything the scores depend on. The batch size is part of it: padding to a batch's longest row
    changes the kernels' summation order, so scores move in the last float digits (about 1e-6) with it,
    and a flag with a margin that small could flip (docs/methods/sarft.md)."""
    data = [(ex.id, ex.role, ex.input, ex.output) for ex in examples]
    settings = {"prompts": prompts, "template": renderer.fingerprint(), "batch_size": batch_size}
    return cache_key("rds", SCORING_VERSION, model_fingerprint, settings, hash_json(data))


def _read_scores(path: Path) -> dict[str, Score]:
    """Rows of a (possibly partial) score file; a torn last line from a kill is ignored."""
    scores: dict[str, Score] = {}
    if not path.exists():
        return scores
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                row = json.loads(line)
                scores[row["id"]] = Score(
                    row["id"], row["role"], float(row["l_role"]), float(row["l_unsafe"])
                )
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
    return scores


@torch.no_grad()
def _score_batch(model: Any, pad_id: int, encoded: list[EncodedExample]) -> list[float]:
    batch = pad_batch([e.input_ids for e in encoded], [e.labels for e in encoded], pad_id)
    device = next(model.parameters()).device
    logits = model(
        input_ids=batch["input_ids"].to(device),
        attention_mask=batch["attention_mask"].to(device),
        use_cache=False,
    ).logits
    return sequence_logps(logits, batch["labels"].to(device)).tolist()


def score_examples(
    model: Any,
    renderer: ChatRenderer,
    examples: Sequence[RoleExample],
    prompts: dict[str, tuple[str, str]],
    batch_size: int,
    partial_path: Path,
) -> list[Score]:
    """Score every example under both prompts, in length-sorted batches, appending to `partial_path`."""
    done = _read_scores(partial_path)
    todo = [ex for ex in examples if ex.id not in done]
    items: list[tuple[RoleExample, str]] = []
    encoded: list[EncodedExample] = []
    for ex in todo:
        for kind, prompt in zip(("role", "unsafe"), prompts[ex.role], strict=True):
            items.append((ex, kind))
            encoded.append(renderer.encode(ex.input, ex.output, system=prompt))
    pad_id = renderer.tokenizer.pad_token_id
    results: dict[str, dict[str, float]] = {}
    with console.progress(total=len(todo), desc="RDS scoring", unit="ex") as bar:
        for batch_idx in length_sorted_batches([len(e.input_ids) for e in encoded], batch_size):
            values = _score_batch(model, pad_id, [encoded[i] for i in batch_idx])
            finished = []
            for i, value in zip(batch_idx, values, strict=True):
                ex, kind = items[i]
                results.setdefault(ex.id, {})[kind] = value
                if len(results[ex.id]) == 2:
                    finished.append(Score(ex.id, ex.role, results[ex.id]["role"], results[ex.id]["unsafe"]))
            # Whole lines per finished example: a kill loses at most the batch in flight.
            append_jsonl(partial_path, [_score_row(s) for s in finished])
            done.update((s.id, s) for s in finished)
            bar.update(len(finished))
    return [done[ex.id] for ex in examples]


def _score_row(score: Score) -> dict[str, Any]:
    return {"id": score.id, "role": score.role, "l_role": score.l_role, "l_unsafe": score.l_unsafe}


def _write_scores(handle: IO[bytes], scores: list[Score]) -> None:
    for score in scores:
        handle.write((json.dumps(_score_row(score), ensure_ascii=False) + "\n").encode("utf-8"))


def cached_scores(
    model_loader: Callable[[], Any],
    renderer: ChatRenderer,
    examples: Sequence[RoleExample],
    prompts: dict[str, tuple[str, str]],
    batch_size: int,
    model_fingerprint: str,
    root: Path,
) -> tuple[list[Score], str]:
    """Scores from the cache under `root`, or computed (loading the model through `model_loader()` only
    then); and the entry's key."""
    key = scores_key(model_fingerprint, examples, prompts, renderer, batch_size)
    entry = CacheEntry(root, "rds", key, ".jsonl")

    def compute() -> list[Score]:
        repair_jsonl_tail(entry.partial)
        return score_examples(model_loader(), renderer, examples, prompts, batch_size, entry.partial)

    scores = entry.read_or_compute(lambda path: _complete_cache(path, examples), compute, _write_scores)
    return scores, key


def _complete_cache(final: Path, examples: Sequence[RoleExample]) -> list[Score] | None:
    """The cached scores of every example, or None when the cache lacks any."""
    if not final.exists():
        return None
    scores = _read_scores(final)
    if not all(ex.id in scores for ex in examples):
        return None
    log.info("RDS scores from cache %s (no model work)", final)
    return [scores[ex.id] for ex in examples]
