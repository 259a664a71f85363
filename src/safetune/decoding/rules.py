"""The defences' step rules as pure tensor functions: raw logits of several streams -> one score row.

Every rule takes the raw (unprocessed) logits of one step, `logits[q, s, v]` for query q, stream s and
token v, computes in fp32, and returns scores [Q, V] that greedy argmax or a sampling warper (temperature,
top-p) reads as logits. No repetition penalty or other processor runs before the combination: the
released ROSE / Self-CD code contrasted `generate`'s processed scores, which mixes a model-specific
penalty into the contrast (docs/methods/decoding.md).
"""

from __future__ import annotations

import torch
from torch import Tensor

# SafeDecoding's floor for a token whose combined probability is not positive (the official code's 1e-8).
PROBABILITY_FLOOR = 1e-8


def _streams(logits: Tensor, count: int) -> Tensor:
    if logits.dim() != 3 or logits.shape[1] != count:
        raise ValueError(f"expected logits [queries, {count} streams, vocab], got {list(logits.shape)}")
    return logits.float()


def rose(logits: Tensor, alpha: float) -> Tensor:
    """ROSE (Zhong et al. 2024): z(positive prompt) - alpha * z(reverse prompt); streams (positive, reverse)."""
    z = _streams(logits, 2)
    return z[:, 0] - alpha * z[:, 1]


def self_cd(logits: Tensor, alpha: float) -> Tensor:
    """Self-CD (Shi et al. 2024): z_with - alpha * (z_with - z_without); streams (with, without).

    alpha 0 is the safety-prompted stream alone, alpha 1 the plain one, alpha > 1 moves past the plain
    stream away from the safety prompt (fewer refusals: an over-refusal mitigation)."""
    z = _streams(logits, 2)
    return z[:, 0] - alpha * (z[:, 0] - z[:, 1])


def _ranks(probs: Tensor) -> Tensor:
    """Each token's 0-based rank in descending probability; equal probabilities rank by token id, lower
    first (a stable sort), so the rule is deterministic where torch.topk's order among ties is not."""
    order = torch.sort(probs, dim=-1, descending=True, stable=True).indices
    positions = torch.arange(probs.shape[-1], device=probs.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, positions)


def shared_sample_space(p_base: Tensor, p_expert: Tensor, num_common: int) -> Tensor:
    """SafeDecoding's sample space as a mask [Q, V]: S = topk(p_b) ∩ topk(p_e) for the smallest k with
    |S| >= num_common.

    Token v is in both top-k lists once k > max(rank_b(v), rank_e(v)), so "enters at k = max rank + 1";
    the intersection at k holds exactly the tokens that entered by k, and the smallest k with at least c
    of them is the c-th smallest entry point. S can hold more than c tokens: when k grows by one, each
    list gains a token, and both may complete a pair at once (S then has c + 1 tokens), as in the
    official loop, which stops at the first k whose intersection reaches c.
    """
    if p_base.shape != p_expert.shape or p_base.dim() != 2:
        raise ValueError(f"expected two [queries, vocab] tensors, got {p_base.shape} and {p_expert.shape}")
    vocab = p_base.shape[-1]
    if not 1 <= num_common <= vocab:
        raise ValueError(f"num_common must be in [1, {vocab}], got {num_common}")
    enters = torch.maximum(_ranks(p_base), _ranks(p_expert)) + 1
    k_star = enters.kthvalue(num_common, dim=-1, keepdim=True).values
    return enters <= k_star


def safedecoding(logits: Tensor, alpha: float, num_common: int) -> Tensor:
    """SafeDecoding's step (Xu et al. 2024); streams (original model, safety expert).

    p_b, p_e = softmax of each stream; on the shared sample space S (`shared_sample_space`)
    p_new = p_b + alpha * (p_e - p_b), a non-positive value replaced by 1e-8 (the official code's
    `updated_prob if updated_prob > 0 else 1e-8`), renormalised over S. Returns log p_new on S and -inf
    elsewhere, so argmax is the official greedy choice and a sampling warper samples within S.
    """
    z = _streams(logits, 2)
    p_base, p_expert = z[:, 0].softmax(-1), z[:, 1].softmax(-1)
    inside = shared_sample_space(p_base, p_expert, num_common)
    mixed = p_base + alpha * (p_expert - p_base)
    mixed = torch.where(mixed > 0, mixed, torch.full_like(mixed, PROBABILITY_FLOOR))
    mixed = torch.where(inside, mixed, torch.zeros_like(mixed))
    mixed = mixed / mixed.sum(-1, keepdim=True)
    return torch.where(inside, mixed.log(), torch.full_like(mixed, float("-inf")))
