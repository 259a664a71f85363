"""Padding and length-sorted batching shared by scoring, training and generation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

# The label of a position that is not trained on (prompt, padding): Hugging Face's and torch's
# cross-entropy ignore_index. Batching writes it; the losses in methods/ skip it.
IGNORE_INDEX = -100


def pad_batch(
    input_ids: Sequence[Sequence[int]],
    labels: Sequence[Sequence[int]] | None,
    pad_id: int,
    side: str = "right",
) -> dict[str, Tensor]:
    """Pad to the longest row. Right padding for training/scoring (positions stay 0..n-1 without
    position ids); left padding for batched generation."""
    width = max(len(row) for row in input_ids)
    ids, masks, labs = [], [], []
    for i, row in enumerate(input_ids):
        pad = width - len(row)
        fill = [pad_id] * pad
        ids.append(list(row) + fill if side == "right" else fill + list(row))
        ones, zeros = [1] * len(row), [0] * pad
        masks.append(ones + zeros if side == "right" else zeros + ones)
        if labels is not None:
            ignore = [IGNORE_INDEX] * pad
            labs.append(list(labels[i]) + ignore if side == "right" else ignore + list(labels[i]))
    batch = {"input_ids": torch.tensor(ids, dtype=torch.long), "attention_mask": torch.tensor(masks)}
    if labels is not None:
        batch["labels"] = torch.tensor(labs, dtype=torch.long)
    return batch


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first, so an OOM shows up at once)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
