"""Per-turn RDS scores of multi-turn conversations (issue 23, item 3; docs/methods/sarft.md).

Each assistant turn k of a conversation is scored like a single-turn response, with the conversation so
far as its context:
    l_role(k)   = mean_t log p_ref(y_k,t | p_role,   x_1, y_1, ..., x_k, y_k,<t)
    l_unsafe(k) = mean_t log p_ref(y_k,t | p_unsafe, x_1, y_1, ..., x_k, y_k,<t)
    flag(k)     = l_unsafe(k) > l_role(k)
(the mean over the turn's tokens, its end-of-turn token included, as the single-turn score). A causal
model's log-probs at every position of one forward pass over the whole conversation are exactly these
conditionals, so two passes per conversation (role prompt, unsafe prompt as its system prompt) give every
turn at once. The turns' token spans come from data/turns.py and are matched across the two renderings by
turn index (truncation to `max_tokens` can keep fewer turns under the longer unsafe prompt: a turn is
scored only when both renderings hold it). Templates that break the prefix property are rendered as one
sequence per turn ("split"), and then cost one pass per turn and prompt. `per_turn=True` forces one pass
per turn for every conversation: the reference the shared pass is checked against (tests, the bench).

Scores are cached like single-turn ones (reference/cache.py, one JSONL line per conversation, resumable
after a kill); the key holds the rendering fingerprint (`turns_fingerprint`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

import torch

from safetune import console
from safetune.data.batching import IGNORE_INDEX, length_sorted_batches, pad_batch
from safetune.data.chat import ChatRenderer
from safetune.data.records import Conversation
from safetune.data.turns import ConversationSkipped, render_turns, turns_fingerprint
from safetune.methods.losses import shift_targets, target_logps
from safetune.reference.cache import CacheEntry, cache_key
from safetune.reference.rds import is_flagged
from safetune.storage import append_jsonl, hash_json, repair_jsonl_tail

log = logging.getLogger(__name__)

# Part of the cache key: bump when the scoring semantics change.
TURN_SCORING_VERSION = "rds-turns-v1"
KINDS = ("role", "unsafe")


@dataclass(frozen=True)
class TurnScore:
    """Reference log-likelihood of one assistant turn under the two prompts. `turn` counts the
    conversation's assistant messages from 0 (data/turns.py's `TurnSpan.turn`)."""

    turn: int
    l_role: float
    l_unsafe: float

    @property
    def margin(self) -> float:
        return self.l_unsafe - self.l_role

    @property
    def rds_flag(self) -> bool:
        return is_flagged(self.l_role, self.l_unsafe)  # the single-turn rule


@dataclass(frozen=True)
class ConversationScores:
    """The scored turns of one conversation (empty when rendering left it out: `skipped` says why)."""

    id: str
    role: str
    turns: tuple[TurnScore, ...]
    skipped: str | None = None


@dataclass(frozen=True)
class _Sequence:
    conversation: int
    kind: str
    ids: list[int]
    spans: tuple[tuple[int, int, int], ...]  # (turn, start, end)


def scoring_sequences(
    renderer: ChatRenderer,
    conversation: Conversation,
    system: str,
    max_tokens: int | None,
    per_turn: bool = False,
) -> list[tuple[list[int], tuple[tuple[int, int, int], ...]]]:
    """The token sequences scored for `conversation` under `system`, each with its (turn, start, end)
    spans: one sequence for the whole conversation (or one per turn where the template needs the
    split); with `per_turn`, one sequence per assistant turn, each the conversation through that turn.
    Raises ConversationSkipped when nothing fits."""
    conv = replace(conversation, system=system)
    if not per_turn:
        rendered = render_turns(renderer, conv, max_tokens=max_tokens)
        return [
            (list(seq.input_ids), tuple((s.turn, s.start, s.end) for s in seq.spans))
            for seq in rendered.sequences
        ]
    out: list[tuple[list[int], tuple[tuple[int, int, int], ...]]] = []
    assistant = [i for i, m in enumerate(conv.messages) if m.role == "assistant"]
    for index in assistant:
        try:
            rendered = render_turns(
                renderer, replace(conv, messages=conv.messages[: index + 1]), max_tokens=max_tokens
            )
        except ConversationSkipped:
            continue
        for seq in rendered.sequences:
            span = next((s for s in seq.spans if s.message == index), None)
            if span is not None:
                # The turn's own span only; the conversation ends with it, so nothing later is paid for.
                out.append((list(seq.input_ids[: span.end]), ((span.turn, span.start, span.end),)))
    if not out:
        raise ConversationSkipped(conv.id, "too_long", f"no assistant turn fits max_tokens={max_tokens}")
    return out


@torch.no_grad()
def span_means(
    model: Any, pad_id: int, sequences: Sequence[tuple[list[int], Sequence[tuple[int, int, int]]]]
) -> list[dict[int, float]]:
    """One forward pass over a batch of sequences; for each, {turn: mean log-prob of its span's tokens}.
    Position p's logits predict token p + 1, so a span [start, end) is read at positions start-1..end-2."""
    labels = []
    for ids, spans in sequences:
        row = [IGNORE_INDEX] * len(ids)
        for _, start, end in spans:
            row[start:end] = ids[start:end]
        labels.append(row)
    batch = pad_batch([ids for ids, _ in sequences], labels, pad_id)
    device = next(model.parameters()).device
    logits = model(
        input_ids=batch["input_ids"].to(device),
        attention_mask=batch["attention_mask"].to(device),
        use_cache=False,
    ).logits
    token = target_logps(logits, shift_targets(batch["labels"].to(device))).cpu()
    means: list[dict[int, float]] = []
    for index, (_, spans) in enumerate(sequences):
        means.append(
            {
                turn: token[index, start - 1 : end - 1].sum().item() / (end - start)
                for turn, start, end in spans
            }
        )
    return means


def score_conversations(
    model: Any,
    renderer: ChatRenderer,
    conversations: Sequence[Conversation],
    prompts: dict[str, tuple[str, str]],
    batch_size: int,
    max_tokens: int | None,
    partial_path: Path | None = None,
    per_turn: bool = False,
) -> list[ConversationScores]:
    """Every assistant turn's scores, in length-sorted batches of `batch_size` sequences; each finished
    conversation is appended to `partial_path` (when given), and those already there are not redone."""
    done = _read_scores(partial_path) if partial_path is not None else {}
    items: list[_Sequence] = []
    skipped: dict[str, str] = {}
    for number, conv in enumerate(conversations):
        if conv.id in done:
            continue
        for kind, system in zip(KINDS, prompts[conv.id], strict=True):
            try:
                sequences = scoring_sequences(renderer, conv, system, max_tokens, per_turn)
            except ConversationSkipped as skip:
                skipped[conv.id] = skip.reason
                continue
            items.extend(_Sequence(number, kind, ids, spans) for ids, spans in sequences)
    pending: dict[int, int] = {}
    for item in items:
        pending[item.conversation] = pending.get(item.conversation, 0) + 1
    values: dict[int, dict[str, dict[int, float]]] = {}
    finished: list[ConversationScores] = []
    for number, conv in enumerate(conversations):
        if conv.id not in done and number not in pending:
            finished.append(
                ConversationScores(conv.id, conv.role or "", (), skipped.get(conv.id, "too_long"))
            )
    _record(done, finished, partial_path)
    pad_id = renderer.tokenizer.pad_token_id
    with console.progress(total=len(pending), desc="RDS scoring (turns)", unit="conv") as bar:
        for batch_idx in length_sorted_batches([len(item.ids) for item in items], batch_size):
            batch = [items[i] for i in batch_idx]
            results = span_means(model, pad_id, [(item.ids, item.spans) for item in batch])
            finished = []
            for item, result in zip(batch, results, strict=True):
                values.setdefault(item.conversation, {}).setdefault(item.kind, {}).update(result)
                pending[item.conversation] -= 1
                if pending[item.conversation] == 0:
                    finished.append(
                        _finish(conversations[item.conversation], values.pop(item.conversation), skipped)
                    )
            # Whole lines per finished conversation: a kill loses at most the conversations in flight.
            _record(done, finished, partial_path)
            bar.update(len(finished))
    return [done[conv.id] for conv in conversations]


def _finish(
    conv: Conversation, values: dict[str, dict[int, float]], skipped: dict[str, str]
) -> ConversationScores:
    role, unsafe = values.get("role", {}), values.get("unsafe", {})
    turns = tuple(TurnScore(t, role[t], unsafe[t]) for t in sorted(set(role) & set(unsafe)))
    reason = None if turns else skipped.get(conv.id, "too_long")
    return ConversationScores(conv.id, conv.role or "", turns, reason)


def _record(
    done: dict[str, ConversationScores], finished: list[ConversationScores], path: Path | None
) -> None:
    if path is not None and finished:
        append_jsonl(path, [_row(s) for s in finished])
    done.update((s.id, s) for s in finished)


def _row(scores: ConversationScores) -> dict[str, Any]:
    return {
        "id": scores.id,
        "role": scores.role,
        "turns": [[t.turn, t.l_role, t.l_unsafe] for t in scores.turns],
        "skipped": scores.skipped,
    }


def _read_scores(path: Path) -> dict[str, ConversationScores]:
    """Rows of a (possibly partial) score file; a torn last line from a kill is ignored."""
    scores: dict[str, ConversationScores] = {}
    if not path.exists():
        return scores
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                row = json.loads(line)
                turns = tuple(TurnScore(int(t), float(a), float(b)) for t, a, b in row["turns"])
                scores[row["id"]] = ConversationScores(row["id"], row["role"], turns, row["skipped"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
    return scores


def _write_scores(handle: IO[bytes], scores: list[ConversationScores]) -> None:
    for item in scores:
        handle.write((json.dumps(_row(item), ensure_ascii=False) + "\n").encode("utf-8"))


def turn_scores_key(
    model_fingerprint: str,
    renderer: ChatRenderer,
    conversations: Sequence[Conversation],
    prompts: dict[str, tuple[str, str]],
    batch_size: int,
    max_tokens: int | None,
) -> str:
    """Everything the scores depend on: model, conversations, both prompts of each, the rendering
    (template, system mode, truncation: `turns_fingerprint`) and the batch size (padding moves the
    last float digits, as for single-turn scores)."""
    data = hash_json([conv.to_dict() for conv in conversations])
    settings = {
        "prompts": hash_json(sorted((conv.id, *prompts[conv.id]) for conv in conversations)),
        "turns": turns_fingerprint(renderer, "all", max_tokens),
        "batch_size": batch_size,
    }
    return cache_key("rds-turns", TURN_SCORING_VERSION, model_fingerprint, settings, data)


def cached_turn_scores(
    model_loader: Callable[[], Any],
    renderer: ChatRenderer,
    conversations: Sequence[Conversation],
    prompts: dict[str, tuple[str, str]],
    batch_size: int,
    max_tokens: int | None,
    model_fingerprint: str,
    root: Path,
) -> tuple[list[ConversationScores], str]:
    """Scores from the cache under `root`, or computed (the model loaded by `model_loader()` only then);
    and the entry's key."""
    key = turn_scores_key(model_fingerprint, renderer, conversations, prompts, batch_size, max_tokens)
    entry = CacheEntry(root, "rds", key, ".jsonl")

    def compute() -> list[ConversationScores]:
        repair_jsonl_tail(entry.partial)
        return score_conversations(
            model_loader(), renderer, conversations, prompts, batch_size, max_tokens, entry.partial
        )

    def complete(final: Path) -> list[ConversationScores] | None:
        if not final.exists():
            return None
        scores = _read_scores(final)
        if not all(conv.id in scores for conv in conversations):
            return None
        log.info("per-turn RDS scores from cache %s (no model work)", final)
        return [scores[conv.id] for conv in conversations]

    scores = entry.read_or_compute(complete, compute, _write_scores)
    return scores, key
