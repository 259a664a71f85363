"""The aligned model's token log-probabilities for token-wise constrained SFT (docs/methods/tokenwise.md).

pi_aligned is the model before fine-tuning. The authors pass the policy itself as the reference and compute
every row's token log-probs once, before the first optimiser step (their get_train_dataloader), then train
on the stored values. We do the same on the freshly loaded model, so no reference copy stays in memory and
no reference forward runs during training. The values depend only on the model, its dtype, the encoded rows
and the batching, so they are cached on disk (cache.py): a --resume, or the next run on the same data,
reads them instead of running the model again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import torch

from safetune import console
from safetune.data.batching import length_sorted_batches, pad_batch
from safetune.methods.losses import DEFAULT_CHUNK_ELEMENTS, shift_targets, target_logps
from safetune.models.loading import decoder_of, lm_head_fn
from safetune.reference.cache import CacheEntry, cache_key
from safetune.storage import hash_json

log = logging.getLogger(__name__)

# Bump when the computation or the key changes: it is part of the cache key.
TOKENWISE_VERSION = "1"


@torch.no_grad()
def _batch_logps(
    model: Any, rows: Sequence[dict[str, Any]], pad_id: int, chunk_elements: int
) -> list[list[float]]:
    batch = pad_batch([r["input_ids"] for r in rows], [r["labels"] for r in rows], pad_id)
    device = next(model.parameters()).device
    hidden = decoder_of(model)(
        input_ids=batch["input_ids"].to(device),
        attention_mask=batch["attention_mask"].to(device),
        use_cache=False,
    ).last_hidden_state
    targets = shift_targets(batch["labels"].to(device))
    # Only the supervised positions go through the LM head, one vocabulary-sized chunk at a time.
    where = (targets != -100).nonzero(as_tuple=True)
    picked = lm_head_fn(model)(hidden[where])
    values = target_logps(picked.unsqueeze(0), targets[where].unsqueeze(0), chunk_elements)[0]
    full = torch.zeros(targets.shape, dtype=torch.float32, device=device)
    full[where] = values
    return [full[i, : len(r["input_ids"])].tolist() for i, r in enumerate(rows)]


def reference_token_logps(
    model: Any,
    rows: Sequence[dict[str, Any]],
    pad_id: int,
    batch_size: int,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> list[list[float]]:
    """Per row, log pi(target) at each position of `shift_targets(labels)` (0 where there is none), under
    `model` in eval mode, in length-sorted batches of `batch_size`."""
    out: list[list[float]] = [[] for _ in rows]
    with console.progress(total=len(rows), desc="aligned log-probs", unit="ex") as bar:
        for batch in length_sorted_batches([len(r["input_ids"]) for r in rows], batch_size):
            values = _batch_logps(model, [rows[i] for i in batch], pad_id, chunk_elements)
            for i, value in zip(batch, values, strict=True):
                out[i] = value
            bar.update(len(batch))
    return out


def _read(path: Path, rows: Sequence[dict[str, Any]]) -> list[list[float]] | None:
    if not path.exists():
        return None
    values = json.loads(path.read_text(encoding="utf-8"))
    if len(values) != len(rows) or any(
        len(v) != len(r["input_ids"]) for v, r in zip(values, rows, strict=True)
    ):
        return None
    log.info("aligned-model token log-probs from cache %s (no model work)", path)
    return [[float(x) for x in v] for v in values]


def _write(handle: IO[bytes], values: list[list[float]]) -> None:
    handle.write(json.dumps(values).encode("utf-8"))


def cached_reference_token_logps(
    model: Any,
    rows: Sequence[dict[str, Any]],
    pad_id: int,
    batch_size: int,
    fingerprint: str,
    root: Path,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> tuple[list[list[float]], str]:
    """`reference_token_logps` from the cache under `root`, or computed; and the entry's key. The key holds
    the model fingerprint, the weights' dtype and device kind, the batch size (padding moves the last float
    digits) and the encoded rows themselves (so the chat template and truncation are in it)."""
    param = next(model.parameters())
    settings = {"dtype": str(param.dtype), "device": param.device.type, "batch_size": batch_size}
    data = hash_json([[r["input_ids"], r["labels"]] for r in rows])
    key = cache_key("tokenwise", TOKENWISE_VERSION, fingerprint, settings, data)
    entry = CacheEntry(root, "tokenwise", key, ".json")

    def compute() -> list[list[float]]:
        return reference_token_logps(model, rows, pad_id, batch_size, chunk_elements)

    return entry.read_or_compute(lambda path: _read(path, rows), compute, _write), key
