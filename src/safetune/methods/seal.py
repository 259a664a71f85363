"""SEAL's data ranker as pure tensor functions (Shen et al., ICLR 2025, arXiv 2410.07471; hanshen95/SEAL).

SEAL learns one logit per fine-tuning example by the bilevel problem

    min_w  f(theta*(w))   s.t.  theta*(w) = argmin_theta  g(theta, w),
    f = mean loss on the safe set,   g = mean_j sigma_j(w) * l(theta; z_j)  over the user's data,

with l the length-normalised NLL of the response. The paper solves its penalty reformulation
(1 - gamma) f(theta) + gamma [g(theta, w) - min_theta' g(theta', w)] by first-order steps; its
memory-efficient Algorithm 2 (the one the paper's experiments and the authors' code run) drops the value
function min_theta' g, which leaves, per step on a safe batch and a user batch (both at theta_k):

    theta <- theta - lr     * grad_theta [(1 - gamma) mean f_i + gamma mean_j w_j l_j]     (w_j fixed)
    w     <- w     - lr_sel * grad_w     [mean_j w_j(w) l_j]                               (l_j fixed)

where w_j is the selector's weight of example j: N * softmax(w)_j (weights averaging 1), or
2 * sigmoid(w_j) (the authors' seal/models/actor.py TrainableTensorModule). A user example the
safety-trained model fits badly loses weight; the top fraction by logit is kept for the fine-tune.
The loop that applies these updates is training/seal.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from safetune.data.batching import IGNORE_INDEX
from safetune.methods.losses import shift_targets

Activation = Literal["softmax", "sigmoid"]
ACTIVATIONS: tuple[Activation, ...] = ("softmax", "sigmoid")


def selector_init(count: int, activation: Activation) -> Tensor:
    """The authors' starting logits: 0.1 everywhere under softmax (uniform weights), -1e-4 under sigmoid
    (weights 2 * sigmoid(-1e-4), just under 1)."""
    return torch.full((count,), 0.1 if activation == "softmax" else -1e-4, dtype=torch.float32)


def selector_weights(logits: Tensor, activation: Activation) -> Tensor:
    """Per-example weights from the selector's logits, scaled so that they start near 1: N * softmax, or
    2 * sigmoid (the authors' `norma`)."""
    if activation == "softmax":
        return logits.numel() * torch.softmax(logits, dim=0)
    return 2 * torch.sigmoid(logits)


def example_losses(logits: Tensor, labels: Tensor) -> Tensor:
    """l(theta; z) per row: the mean NLL over the row's labelled (response) tokens, in fp32, with gradient.
    A row without a labelled token gives 0."""
    targets = shift_targets(labels)
    token_nll = F.cross_entropy(
        logits.float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
    )
    counts = (targets != IGNORE_INDEX).sum(dim=1)
    return token_nll.sum(dim=1) / counts.clamp(min=1)


def model_loss(safe_losses: Tensor, user_losses: Tensor, weights: Tensor, gamma: float) -> Tensor:
    """The lower-variable (model) objective of one step: (1 - gamma) * mean safe loss + gamma * mean of
    the user losses weighted by the selector (the weights are constants here)."""
    return (1 - gamma) * safe_losses.mean() + gamma * (weights.detach() * user_losses).mean()


def selector_loss(logits: Tensor, rows: Tensor, user_losses: Tensor, activation: Activation) -> Tensor:
    """The selector's objective of one step: mean over the batch of w_j(logits) * l_j, the losses held
    fixed at the model's current weights. Its gradient in the logits is Algorithm 2's update direction."""
    weights = selector_weights(logits, activation)[rows]
    return (weights * user_losses.detach()).mean()


def gamma_at(epoch: int, start: float, step: float) -> float:
    """The penalty weight gamma of a 0-based ranker epoch: `start`, raised by `step` each epoch (the
    authors lower their upper-level weight 1 - gamma by `--upperlevel_weight_decay` per epoch)."""
    return start + epoch * step


def keep_count(count: int, keep: float) -> int:
    """How many of `count` rows the fine-tune keeps: floor(keep * count), as the authors' int(topp * N);
    the 1e-9 lets a product that floating point puts just under an integer (0.29 * 100) keep it."""
    return math.floor(keep * count + 1e-9)


def top_fraction(scores: Sequence[float], keep: float) -> list[bool]:
    """True for the `keep_count` highest-scored rows. Ties go to the earlier row, so the choice is a
    function of the scores and the data's order alone (the authors' torch.topk leaves ties unspecified)."""
    k = keep_count(len(scores), keep)
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    kept = set(order[:k])
    return [i in kept for i in range(len(scores))]
