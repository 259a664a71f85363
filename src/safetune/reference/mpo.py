"""The reward-gap MPO reference pass and its cache, and the reward-gap diagnostic's pass.

The frozen reference enters the MPO loss only through the dominant language (RG_d and the pooled hidden
states hbar_d(ref)), so one batched no-grad pass computes them for the whole data set before training
and stores them on disk (safetensors, under a content hash: cache.py). Training then holds no reference
model at all. The same pass with the target side gives RG_t, the per-language reward gap of the
diagnostic (`safetune reward-gap`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor, nn

from safetune import console
from safetune.config import MethodConfig, RunConfig
from safetune.data.chat import ChatRenderer
from safetune.data.records import ParallelPreferencePair
from safetune.methods.losses import sequence_logps
from safetune.methods.reward_gap import PoolMode, pool_hidden
from safetune.models.loading import decoder_of, lm_head_fn
from safetune.reference.cache import CacheEntry, cache_key
from safetune.reference.pairs import MpoCollator, encode_pairs, pair_renderer
from safetune.storage import atomic_open, hash_json

log = logging.getLogger(__name__)

# Bump when the cached values or the key change: it is part of the cache key.
# 2: mean_all pools over each pair's multiple-of-8 padding with the tokenizer's pad id
# 3: the key comes from the shared recipe (reference/cache.py)
# 4: summed log-probs (`mpo_logps`) and caches without pooled states (repr_weight 0) in the key
CACHE_VERSION = "4"


@dataclass
class ReferenceCache:
    """Per pair, from the frozen reference: RG_d ([N]; length-normalised, or summed for `mpo_logps="sum"`),
    the pooled dominant hidden states ([N, 2, H]: chosen, rejected; None where the loss has no retain term,
    repr_weight 0) and, only where asked for (the `normalise_target_gap` ablation, the reward-gap
    diagnostic), RG_t(ref) ([N])."""

    gaps: Tensor
    pooled: Tensor | None
    target_gaps: Tensor | None = None

    def lookup(self, index: Tensor, device: torch.device) -> tuple[Tensor, Tensor | None, Tensor | None]:
        pooled_rows = None
        if self.pooled is not None:
            pooled = self.pooled[index].to(device)
            pooled_rows = torch.cat([pooled[:, 0], pooled[:, 1]])  # [2B, H], chosen rows first
        target = self.target_gaps[index].to(device) if self.target_gaps is not None else None
        return self.gaps[index].to(device), pooled_rows, target

    def write(self, handle: IO[bytes], metadata: dict[str, str]) -> None:
        from safetensors.torch import save

        tensors = {"gaps": self.gaps, "pooled": self.pooled, "target_gaps": self.target_gaps}
        handle.write(save({k: v.contiguous() for k, v in tensors.items() if v is not None}, metadata))

    def save(self, path: Path, metadata: dict[str, str]) -> None:
        """Written to a temp file and renamed: a killed run never leaves a truncated cache behind."""
        with atomic_open(path, "wb") as handle:
            self.write(handle, metadata)

    @classmethod
    def load(cls, path: Path) -> ReferenceCache:
        from safetensors.torch import load_file

        tensors = load_file(str(path))
        return cls(tensors["gaps"], tensors.get("pooled"), tensors.get("target_gaps"))


@torch.no_grad()
def dominant_reference(
    model: nn.Module,
    batch: dict[str, Any],
    pooling: PoolMode | None,
    chunk_elements: int,
    average: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """(RG_d [B], pooled hidden states [2B, H]) from a collated batch's dominant rows, no gradient.
    `pooling` None: no pooled states (None); `average` False: summed log-probs."""
    mask = batch["dominant_mask"]
    hidden = decoder_of(model)(
        input_ids=batch["dominant_ids"], attention_mask=mask, use_cache=False
    ).last_hidden_state
    logps = sequence_logps(
        lm_head_fn(model)(hidden), batch["dominant_labels"], average=average, chunk_elements=chunk_elements
    )
    half = logps.shape[0] // 2
    pooled = None if pooling is None else pool_hidden(hidden, mask, pooling, batch["dominant_widths"])
    return logps[:half] - logps[half:], pooled


@torch.no_grad()
def target_reference_gap(
    model: nn.Module, ids: Tensor, mask: Tensor, labels: Tensor, chunk_elements: int, average: bool = True
) -> Tensor:
    """RG_t(ref) [B] from the target rows [chosen; rejected], no gradient; `average` False: summed."""
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    logps = sequence_logps(logits, labels, average=average, chunk_elements=chunk_elements)
    half = logps.shape[0] // 2
    return logps[:half] - logps[half:]


def compute_reference(
    model: nn.Module,
    rows: Sequence[dict[str, Any]],
    method: MethodConfig,
    batch_size: int,
    with_target: bool | None = None,
    pad_id: int | None = None,
    with_pooled: bool | None = None,
) -> ReferenceCache:
    """One batched no-grad pass of the reference over every pair: the dominant side always, the target
    side only when `with_target` (default: when the loss uses RG_t(ref), `method.normalise_target_gap`),
    the pooled dominant hidden states only when `with_pooled` (default: when the loss has the retain term,
    `method.repr_weight != 0`). Log-probs are averaged or summed as `method.mpo_logps` says.

    Batches are collated exactly as training collates them (`MpoCollator`). `mean_all` pools over padding,
    so it needs the tokenizer's `pad_id` (the id the training collator pads with, as the authors' did) and
    each pair's own padded width (`dominant_widths`): the cached value is then what the policy's pass
    computes for the same pair in any training batch, and the authors' batch-1 value. It is computed one
    pair at a time, so that at the authors' batch size 1 policy == reference gives a representation term
    of exactly 0 (not just to rounding). The other poolings mask the padding: any pad id does."""
    if with_target is None:
        with_target = method.normalise_target_gap
    if with_pooled is None:
        with_pooled = method.repr_weight != 0
    pooling: PoolMode | None = method.pooling if with_pooled else None
    if pooling == "mean_all" and pad_id is None:
        raise ValueError("pooling='mean_all' averages over padding: pass the tokenizer's pad_id")
    average = method.mpo_logps == "mean"
    device = next(model.parameters()).device
    size = 1 if pooling == "mean_all" else batch_size
    collate = MpoCollator(pad_id if pad_id is not None else 0)
    gaps, pooled, target_gaps = [], [], []
    model.eval()
    for start in console.progress(range(0, len(rows), size), desc="reference pass (cached)", unit="batch"):
        batch = {
            k: v.to(device) if isinstance(v, Tensor) else v
            for k, v in collate(list(rows[start : start + size])).items()
        }
        gap, hidden = dominant_reference(model, batch, pooling, method.chunk_elements, average)
        half = gap.shape[0]
        gaps.append(gap.float().cpu())
        if hidden is not None:
            pooled.append(torch.stack([hidden[:half], hidden[half:]], dim=1).float().cpu())
        if not with_target:
            continue
        target_gaps.append(
            target_reference_gap(
                model,
                batch["target_ids"],
                batch["target_mask"],
                batch["target_labels"],
                method.chunk_elements,
                average,
            )
            .float()
            .cpu()
        )
    return ReferenceCache(
        torch.cat(gaps),
        torch.cat(pooled) if with_pooled else None,
        torch.cat(target_gaps) if with_target else None,
    )


def reference_key(
    model_fingerprint: str,
    renderer: ChatRenderer,
    rows: Sequence[dict[str, Any]],
    pooling: str | None,
    with_target: bool = False,
    pad_id: int | None = None,
    batch_size: int = 1,
    logps: str = "mean",
) -> str:
    """Everything the cached values depend on: the target side's ids only when RG_t(ref) is stored, the
    pooling (None: no pooled states stored), mean or summed log-probs (`mpo_logps`: a mean gap is never
    reused for sum), and the scoring batch size (padding to a batch's longest row moves the values in the
    last float digits)."""
    sides = ("d", "t") if with_target else ("d",)
    sequences = [
        [
            r[f"{side}_{k}"]
            for side in sides
            for k in ("chosen_ids", "chosen_labels", "rejected_ids", "rejected_labels")
        ]
        for r in rows
    ]
    settings = {
        "template": renderer.fingerprint(),
        "pooling": pooling,
        "pad_id": pad_id,
        "with_target": with_target,
        "batch_size": batch_size,
        "logps": logps,
    }
    return cache_key("mpo", CACHE_VERSION, model_fingerprint, settings, hash_json(sequences))


def cached_reference(
    load_model: Callable[[], nn.Module],
    renderer: ChatRenderer,
    rows: Sequence[dict[str, Any]],
    method: MethodConfig,
    model_fingerprint: str,
    root: Path,
    batch_size: int,
) -> tuple[ReferenceCache, Path]:
    """The reference cache for these rows: read from the cache under `root`, or computed with
    `load_model()` and stored; and the entry's path."""
    pad_id = renderer.tokenizer.pad_token_id  # what the training collator pads with
    # Without the retain term (repr_weight 0) no pooled states are computed or stored, so the pooling
    # does not enter the key and mean_all does not force one pair at a time.
    pooling = method.pooling if method.repr_weight != 0 else None
    # mean_all is computed one pair at a time whatever the batch size (compute_reference)
    size = 1 if pooling == "mean_all" else batch_size
    key = reference_key(
        model_fingerprint,
        renderer,
        rows,
        pooling,
        method.normalise_target_gap,
        pad_id,
        size,
        logps=method.mpo_logps,
    )
    entry = CacheEntry(root, "mpo", key, ".safetensors")
    metadata = {
        "model": model_fingerprint,
        "pooling": str(pooling),
        "logps": method.mpo_logps,
        "count": str(len(rows)),
    }
    computed = False

    def compute() -> ReferenceCache:
        nonlocal computed
        computed = True
        return compute_reference(load_model(), rows, method, batch_size, pad_id=pad_id)

    cache = entry.read_or_compute(
        _read_reference, compute, lambda handle, cache: cache.write(handle, metadata)
    )
    if computed:
        log.info("reward-gap MPO reference cached in %s", entry.path)
    return cache, entry.path


def _read_reference(path: Path) -> ReferenceCache | None:
    if not path.exists():
        return None
    log.info("reward-gap MPO reference from cache %s (no reference model)", path)
    return ReferenceCache.load(path)


@dataclass(frozen=True)
class PairGaps:
    """A frozen model's length-normalised reward gap lp(chosen) - lp(rejected) on each parallel pair."""

    languages: list[str]  # each pair's target language
    target: list[float]
    dominant: list[float]

    def by_language(self) -> dict[str, list[float]]:
        """The target-side gaps grouped by target language (in the pairs' order)."""
        groups: dict[str, list[float]] = {}
        for language, gap in zip(self.languages, self.target, strict=True):
            groups.setdefault(language, []).append(gap)
        return groups


def pair_gaps(
    model: nn.Module, tokenizer: Any, pairs: Sequence[ParallelPreferencePair], config: RunConfig
) -> PairGaps:
    """The reward gaps of both sides of every pair, rendered and truncated as `train --method mpo` does,
    in batches of `selection.batch_size`. Always length-normalised (the paper's per-token gaps, whatever
    `method.mpo_logps` says); no pooled hidden states."""
    renderer = pair_renderer(tokenizer, config)
    rows = encode_pairs(renderer, pairs, config.method)
    with torch.no_grad():
        cache = compute_reference(
            model,
            rows,
            dataclasses.replace(config.method, mpo_logps="mean"),
            config.selection.batch_size,
            with_target=True,
            pad_id=tokenizer.pad_token_id,
            with_pooled=False,
        )
    assert cache.target_gaps is not None
    return PairGaps([row["language"] for row in rows], cache.target_gaps.tolist(), cache.gaps.tolist())
