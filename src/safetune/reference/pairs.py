"""Parallel preference pairs as token rows and collated batches: what the reward-gap MPO trainer trains on
and the reference pass scores, so that both see exactly the same tokens and padding."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from safetune.config import MethodConfig, RunConfig
from safetune.data.batching import IGNORE_INDEX, pad_batch
from safetune.data.chat import ChatRenderer
from safetune.data.records import ParallelPreferencePair

# The authors' collator (LLaMA-Factory's DataCollatorForSeq2Seq, `pad_to_multiple_of=8` in their DPO
# workflow) rounds every batch's width up to a multiple of 8; `mean_all` pooling averages over that padding.
PAD_TO_MULTIPLE_OF = 8
# Per-side limit given to the renderer under the joint rule, where `encode_pair` truncates instead.
_NO_LIMIT = 1 << 30


def joint_lengths(prompt_len: int, response_len: int, max_length: int) -> tuple[int, int]:
    """(prompt, response) lengths kept so that prompt + response <= max_length, the response first.

    The authors' rule (LLaMA-Factory's `infer_seqlen`, called with cutoff_len 1024 in their MPO configs): a
    response shorter than half the limit is kept whole and the prompt gets the rest; else a prompt shorter
    than half is kept whole; else both shrink in proportion to their lengths (the response's share rounded
    down).
    """
    if response_len * 2 < max_length:
        response_limit = max_length
    elif prompt_len * 2 < max_length:
        response_limit = max_length - prompt_len
    else:
        response_limit = int(max_length * (response_len / (prompt_len + response_len)))
    response = min(response_limit, response_len)
    return min(max(max_length - response, 0), prompt_len), response


def pair_renderer(tokenizer: Any, config: RunConfig) -> ChatRenderer:
    """The renderer for parallel pairs. Under the joint rule (`method.truncation`, the default) it truncates
    nothing: `encode_pair` cuts prompt + response at `method.max_length` as the authors did. `per_side`
    keeps chat.max_prompt_tokens / chat.max_response_tokens (each side on its own, as in our SaRFT runs)."""
    chat = config.chat
    if config.method.truncation == "joint":
        chat = dataclasses.replace(chat, max_prompt_tokens=_NO_LIMIT, max_response_tokens=_NO_LIMIT)
    return ChatRenderer.from_config(tokenizer, chat)


def encode_pair(
    renderer: ChatRenderer, pair: ParallelPreferencePair, index: int, max_length: int | None = None
) -> dict[str, Any]:
    """Token ids of the four sequences of one parallel pair (the system turn, if any, on both sides).

    With `max_length` each language's (prompt, chosen, rejected) is cut by the authors' joint rule: one
    prompt length and one response length for both answers (`joint_lengths` of the prompt and the longer
    answer), keeping the first tokens of each, as their pairwise preprocessing does. Without it the
    renderer's per-side limits apply.
    """
    row: dict[str, Any] = {"index": index, "language": pair.target.language or "unknown"}
    for prefix, side in (("t", pair.target), ("d", pair.dominant)):
        prompt = renderer.prompt_ids(side.prompt, pair.system)
        answers = {
            "chosen": renderer.response_ids(side.chosen),
            "rejected": renderer.response_ids(side.rejected),
        }
        if max_length is not None:
            keep_prompt, keep_answer = joint_lengths(
                len(prompt), max(len(a) for a in answers.values()), max_length
            )
            prompt = prompt[:keep_prompt]
            answers = {k: a[:keep_answer] for k, a in answers.items()}
        for key, answer in answers.items():
            row[f"{prefix}_{key}_ids"] = prompt + answer
            row[f"{prefix}_{key}_labels"] = [IGNORE_INDEX] * len(prompt) + answer
    return row


def encode_pairs(
    renderer: ChatRenderer, pairs: Sequence[ParallelPreferencePair], method: MethodConfig
) -> list[dict[str, Any]]:
    """`encode_pair` for every pair with the truncation rule `method` asks for (`pair_renderer`)."""
    max_length = method.max_length if method.truncation == "joint" else None
    return [encode_pair(renderer, pair, i, max_length) for i, pair in enumerate(pairs)]


def _padded_width(length: int, multiple: int) -> int:
    return -(-length // multiple) * multiple


class MpoCollator:
    """Right-pads [target chosen; target rejected] and [dominant chosen; dominant rejected] as two batches
    of 2B rows (chosen rows first), with `pad_id` to a width rounded up to `pad_to_multiple_of` (the
    authors' collator), and carries each pair's index into the reference cache.

    `dominant_widths` [2B] is, for each dominant row, the width its pair alone would be padded to (the
    longer of its two rows, rounded up): the authors' batch-1 padding, which `mean_all` pooling averages
    over. It does not depend on which pairs share the batch, so the reference cache can store it.
    """

    def __init__(self, pad_id: int, pad_to_multiple_of: int = PAD_TO_MULTIPLE_OF):
        if pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be >= 1, got {pad_to_multiple_of}")
        self.pad_id = pad_id
        self.multiple = pad_to_multiple_of

    def _side(self, rows: list[dict[str, Any]], prefix: str) -> dict[str, Tensor]:
        ids = [r[f"{prefix}_chosen_ids"] for r in rows] + [r[f"{prefix}_rejected_ids"] for r in rows]
        labels = [r[f"{prefix}_chosen_labels"] for r in rows] + [r[f"{prefix}_rejected_labels"] for r in rows]
        batch = pad_batch(ids, labels, self.pad_id)
        extra = _padded_width(batch["input_ids"].shape[1], self.multiple) - batch["input_ids"].shape[1]
        if extra:
            batch["input_ids"] = F.pad(batch["input_ids"], (0, extra), value=self.pad_id)
            batch["attention_mask"] = F.pad(batch["attention_mask"], (0, extra), value=0)
            batch["labels"] = F.pad(batch["labels"], (0, extra), value=IGNORE_INDEX)
        return batch

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        target, dominant = self._side(rows, "t"), self._side(rows, "d")
        widths = [
            _padded_width(max(len(r["d_chosen_ids"]), len(r["d_rejected_ids"])), self.multiple) for r in rows
        ]
        return {
            "target_ids": target["input_ids"],
            "target_mask": target["attention_mask"],
            "target_labels": target["labels"],
            "dominant_ids": dominant["input_ids"],
            "dominant_mask": dominant["attention_mask"],
            "dominant_labels": dominant["labels"],
            "dominant_widths": torch.tensor(widths + widths, dtype=torch.long),
            "index": torch.tensor([r["index"] for r in rows], dtype=torch.long),
            "languages": [r["language"] for r in rows],
        }
