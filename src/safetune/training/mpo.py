"""Reward-gap MPO training: the reference cache, the collator and the Trainer subclass.

The frozen reference enters the loss only through the dominant language (RG_d and the pooled hidden
states hbar_d(ref)), so one batched no-grad pass computes them for the whole data set before training
and stores them on disk (safetensors, keyed by a content hash). Training then holds no reference model
at all, and the policy's dominant-language pass stops at the decoder's hidden states (no LM head).
`MpoTrainer` can also run a live reference model instead of the cache (the authors' way): the benchmark
and an equivalence test use that.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import Trainer

from safetune import console
from safetune.config import MethodConfig, RunConfig
from safetune.data.batching import pad_batch
from safetune.data.chat import ChatRenderer
from safetune.data.records import ParallelPreferencePair
from safetune.methods.losses import IGNORE_INDEX, sequence_logps
from safetune.methods.reward_gap import PoolMode, mean_token_logps, pool_hidden, reward_gap_mpo_loss
from safetune.models.loading import decoder_of, lm_head_fn
from safetune.storage import cache_lock, hash_json
from safetune.training.common import add_callbacks

log = logging.getLogger(__name__)

CACHE_VERSION = "2"  # 2: mean_all pools over each pair's multiple-of-8 padding with the tokenizer's pad id
SIDES = ("t_chosen", "t_rejected", "d_chosen", "d_rejected")
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


# ---- the reference side ----


@dataclass
class ReferenceCache:
    """Per pair, from the frozen reference: RG_d (length-normalised, [N]), the pooled dominant hidden
    states ([N, 2, H]: chosen, rejected) and, only where asked for (the `normalise_target_gap` variant,
    the reward-gap diagnostic), RG_t(ref) ([N])."""

    gaps: Tensor
    pooled: Tensor
    target_gaps: Tensor | None = None

    def lookup(self, index: Tensor, device: torch.device) -> tuple[Tensor, Tensor, Tensor | None]:
        pooled = self.pooled[index].to(device)
        pooled_rows = torch.cat([pooled[:, 0], pooled[:, 1]])  # [2B, H], chosen rows first
        target = self.target_gaps[index].to(device) if self.target_gaps is not None else None
        return self.gaps[index].to(device), pooled_rows, target

    def save(self, path: Path, metadata: dict[str, str]) -> None:
        """Written to a temp file and renamed: a killed run never leaves a truncated cache behind."""
        from safetensors.torch import save

        from safetune.storage import atomic_open

        tensors = {"gaps": self.gaps, "pooled": self.pooled, "target_gaps": self.target_gaps}
        blob = save({k: v.contiguous() for k, v in tensors.items() if v is not None}, metadata)
        with atomic_open(path, "wb") as handle:
            handle.write(blob)

    @classmethod
    def load(cls, path: Path) -> ReferenceCache:
        from safetensors.torch import load_file

        tensors = load_file(str(path))
        return cls(tensors["gaps"], tensors["pooled"], tensors.get("target_gaps"))


@torch.no_grad()
def dominant_reference(
    model: nn.Module, batch: dict[str, Any], pooling: PoolMode, chunk_elements: int
) -> tuple[Tensor, Tensor]:
    """(RG_d [B], pooled hidden states [2B, H]) from a collated batch's dominant rows, no gradient."""
    mask = batch["dominant_mask"]
    hidden = decoder_of(model)(
        input_ids=batch["dominant_ids"], attention_mask=mask, use_cache=False
    ).last_hidden_state
    logps = sequence_logps(
        lm_head_fn(model)(hidden), batch["dominant_labels"], average=True, chunk_elements=chunk_elements
    )
    half = logps.shape[0] // 2
    return logps[:half] - logps[half:], pool_hidden(hidden, mask, pooling, batch["dominant_widths"])


@torch.no_grad()
def target_reference_gap(
    model: nn.Module, ids: Tensor, mask: Tensor, labels: Tensor, chunk_elements: int
) -> Tensor:
    """RG_t(ref) [B] from the target rows [chosen; rejected], no gradient."""
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    logps = sequence_logps(logits, labels, average=True, chunk_elements=chunk_elements)
    half = logps.shape[0] // 2
    return logps[:half] - logps[half:]


def compute_reference(
    model: nn.Module,
    rows: Sequence[dict[str, Any]],
    method: MethodConfig,
    batch_size: int,
    with_target: bool | None = None,
    pad_id: int | None = None,
) -> ReferenceCache:
    """One batched no-grad pass of the reference over every pair: the dominant side always, the target
    side only when `with_target` (default: when the loss uses RG_t(ref), `method.normalise_target_gap`).

    Batches are collated exactly as training collates them (`MpoCollator`). `mean_all` pools over padding,
    so it needs the tokenizer's `pad_id` (the id the training collator pads with, as the authors' did) and
    each pair's own padded width (`dominant_widths`): the cached value is then what the policy's pass
    computes for the same pair in any training batch, and the authors' batch-1 value. It is computed one
    pair at a time, so that at the authors' batch size 1 policy == reference gives a representation term
    of exactly 0 (not just to rounding). The other poolings mask the padding: any pad id does."""
    if method.pooling == "mean_all" and pad_id is None:
        raise ValueError("pooling='mean_all' averages over padding: pass the tokenizer's pad_id")
    device = next(model.parameters()).device
    size = 1 if method.pooling == "mean_all" else batch_size
    collate = MpoCollator(pad_id if pad_id is not None else 0)
    if with_target is None:
        with_target = method.normalise_target_gap
    gaps, pooled, target_gaps = [], [], []
    model.eval()
    for start in console.progress(range(0, len(rows), size), desc="reference pass (cached)", unit="batch"):
        batch = {
            k: v.to(device) if isinstance(v, Tensor) else v
            for k, v in collate(list(rows[start : start + size])).items()
        }
        gap, hidden = dominant_reference(model, batch, method.pooling, method.chunk_elements)
        half = gap.shape[0]
        gaps.append(gap.float().cpu())
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
            )
            .float()
            .cpu()
        )
    return ReferenceCache(torch.cat(gaps), torch.cat(pooled), torch.cat(target_gaps) if with_target else None)


def cache_key(
    model_fingerprint: str,
    renderer: ChatRenderer,
    rows: Sequence[dict[str, Any]],
    pooling: str,
    with_target: bool = False,
    pad_id: int | None = None,
    batch_size: int = 1,
) -> str:
    """Everything the cached values depend on: the target side's ids only when RG_t(ref) is stored, and
    the scoring batch size (padding to a batch's longest row moves the values in the last float digits)."""
    sides = ("d", "t") if with_target else ("d",)
    sequences = [
        [
            r[f"{side}_{k}"]
            for side in sides
            for k in ("chosen_ids", "chosen_labels", "rejected_ids", "rejected_labels")
        ]
        for r in rows
    ]
    return hash_json(
        {
            "version": CACHE_VERSION,
            "model": model_fingerprint,
            "template": renderer.fingerprint(),
            "pooling": pooling,
            "pad_id": pad_id,
            "with_target": with_target,
            "batch_size": batch_size,
            "sequences": hash_json(sequences),
        }
    )[:32]


def cached_reference(
    load_model: Callable[[], nn.Module],
    renderer: ChatRenderer,
    rows: Sequence[dict[str, Any]],
    method: MethodConfig,
    model_fingerprint: str,
    cache_dir: Path,
    batch_size: int,
) -> tuple[ReferenceCache, Path]:
    """The reference cache for these rows: read from disk, or computed with `load_model()` and stored."""
    pad_id = renderer.tokenizer.pad_token_id  # what the training collator pads with
    # mean_all is computed one pair at a time whatever the batch size (compute_reference)
    size = 1 if method.pooling == "mean_all" else batch_size
    key = cache_key(
        model_fingerprint, renderer, rows, method.pooling, method.normalise_target_gap, pad_id, size
    )
    path = cache_dir / "mpo" / f"{key}.safetensors"
    if path.exists():
        log.info("reward-gap MPO reference from cache %s (no reference model)", path)
        return ReferenceCache.load(path), path
    # One process computes an entry; another that wants the same one waits, then reads it.
    with cache_lock(cache_dir, f"mpo-{key}"):
        if path.exists():
            log.info("reward-gap MPO reference from cache %s (no reference model)", path)
            return ReferenceCache.load(path), path
        cache = compute_reference(load_model(), rows, method, batch_size, pad_id=pad_id)
        cache.save(path, {"model": model_fingerprint, "pooling": method.pooling, "count": str(len(rows))})
    log.info("reward-gap MPO reference cached in %s", path)
    return cache, path


# ---- the Trainer ----


class MpoTrainer(Trainer):
    """transformers.Trainer with the reward-gap MPO loss (methods/reward_gap.py).

    Reference: the cache (default: no reference model in memory) or a live frozen model (`ref_model`,
    the authors' way; for benchmarks and tests). The policy runs twice per step: on the target rows with
    the LM head (log-probs with gradient) and on the dominant rows up to the hidden states only.
    """

    def __init__(
        self,
        *args: Any,
        method: MethodConfig,
        reference: ReferenceCache | None = None,
        ref_model: nn.Module | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        if (reference is None) == (ref_model is None):
            raise ValueError("MpoTrainer needs exactly one of a reference cache and a reference model")
        self.method = method
        self.reference = reference
        self.ref_model = ref_model.eval().requires_grad_(False) if ref_model is not None else None
        self.model_accepts_loss_kwargs = False
        self.loss_is_scaled_for_ga = False
        self._metrics: dict[str, list[float]] = defaultdict(list)
        add_callbacks(self)

    def _reference_side(
        self, inputs: dict[str, Any], device: torch.device
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """(RG_d, pooled reference hidden states, RG_t(ref) or None) for this batch."""
        m = self.method
        if self.reference is not None:
            gaps, pooled, cached_target = self.reference.lookup(inputs["index"], device)
            if m.normalise_target_gap and cached_target is None:
                raise ValueError("normalise_target_gap needs a reference cache computed with_target=True")
            return gaps, pooled, cached_target if m.normalise_target_gap else None
        assert self.ref_model is not None
        gaps, pooled = dominant_reference(self.ref_model, inputs, m.pooling, m.chunk_elements)
        target_gaps: Tensor | None = None
        if m.normalise_target_gap:
            target_gaps = target_reference_gap(
                self.ref_model,
                inputs["target_ids"],
                inputs["target_mask"],
                inputs["target_labels"],
                m.chunk_elements,
            )
        return gaps, pooled, target_gaps

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        m = self.method
        device = inputs["target_ids"].device
        ref_gap_d, ref_pooled, ref_target_gap = self._reference_side(inputs, device)
        logits = model(
            input_ids=inputs["target_ids"], attention_mask=inputs["target_mask"], use_cache=False
        ).logits
        logps = mean_token_logps(logits, inputs["target_labels"], chunk_elements=m.chunk_elements)
        half = logps.shape[0] // 2
        policy_pooled = None
        if m.repr_weight != 0:
            hidden = decoder_of(model)(
                input_ids=inputs["dominant_ids"], attention_mask=inputs["dominant_mask"], use_cache=False
            ).last_hidden_state
            policy_pooled = pool_hidden(hidden, inputs["dominant_mask"], m.pooling, inputs["dominant_widths"])
        out = reward_gap_mpo_loss(
            logps[:half],
            logps[half:],
            ref_gap_d,
            policy_pooled,
            ref_pooled if m.repr_weight != 0 else None,
            beta=m.resolved_beta(),
            gap_weight=m.gap_weight,
            repr_weight=m.repr_weight,
            ref_target_gap=ref_target_gap,
        )
        self._log_step(model.training, out, ref_gap_d, inputs["languages"])
        return (out.loss, {"logits": logits}) if return_outputs else out.loss

    def _log_step(self, training: bool, out: Any, ref_gap_d: Tensor, languages: list[str]) -> None:
        mode = "train" if training else "eval"
        target_gap = out.target_gap.detach().float()
        self._metrics[f"{mode}/target_gap"].append(target_gap.mean().item())
        self._metrics[f"{mode}/dominant_gap"].append(ref_gap_d.float().mean().item())
        self._metrics[f"{mode}/gap_difference"].append((ref_gap_d.float() - target_gap).mean().item())
        self._metrics[f"{mode}/repr_loss"].append(float(out.repr_term))
        for language, gap in zip(languages, target_gap.tolist(), strict=True):
            self._metrics[f"{mode}/target_gap_{language}"].append(gap)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if "loss" in logs else "eval"
        for key, values in self._metrics.items():
            if key.startswith(mode) and values:
                name = key.split("/", 1)[1] if mode == "train" else key.replace("/", "_")
                logs[name] = sum(values) / len(values)
        self._metrics = defaultdict(list, {k: v for k, v in self._metrics.items() if not k.startswith(mode)})
        super().log(logs, start_time)
