"""Sampling from scores with one random stream per row: the one home of the rule the `hf` backend and the
defence engine share, so a defended sample and a plain sample of the same seed are drawn the same way.

Gumbel-max: argmax(scores / T + Gumbel noise) is a sample from softmax(scores / T); each row's noise comes
from its own generator (seeded per request), one draw of the vocabulary size per step, so a row's sample
depends on its seed alone, not on the batch it shares.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def top_p_filter(scores: Tensor, top_p: float) -> Tensor:
    """-inf outside the smallest set of tokens whose probability mass reaches top_p (nucleus)."""
    sorted_scores, order = torch.sort(scores, dim=-1, descending=True)
    probs = sorted_scores.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # mass of the strictly more likely tokens
    remove_sorted = before >= top_p
    remove_sorted[..., 0] = False  # always keep the most likely token
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return scores.masked_fill(remove, float("-inf"))


def gumbel_scores(
    scores: Tensor, generators: Sequence[torch.Generator], temperature: float, top_p: float
) -> Tensor:
    """scores / T, nucleus-filtered, plus each row's Gumbel noise: their argmax is the row's sample."""
    scores = scores.float() / temperature
    if top_p < 1:
        scores = top_p_filter(scores, top_p)
    vocab = scores.shape[-1]
    uniform = torch.stack([torch.rand(vocab, generator=g, device=scores.device) for g in generators])
    uniform = uniform.clamp_(min=torch.finfo(torch.float32).tiny)
    return scores - torch.log(-torch.log(uniform))
