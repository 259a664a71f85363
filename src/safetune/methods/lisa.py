"""Lisa's math (Huang et al., "Lazy Safety Alignment", NeurIPS 2024; code git-disl/Lisa trainer.py,
ADMMTrainer): the bi-state schedule and the proximal term. Pure functions of step counters and tensors;
the Trainer that applies them is training/lisa.py.

Schedule: steps alternate between K1 alignment steps (safety demonstrations) and K2 user steps, starting
with alignment. The official `check_mode` switches state when its per-state clock reaches K1 (K2), which
makes step s an alignment step iff s mod (K1 + K2) < K1.

Proximal term: rho/2 * sum over trainable tensors of ||w - anchor||^2, the anchor being the weights at
the start of the current state (the official `switch_model` stores them at every switch). The official
code adds it only once more than 10% of the run's micro-batches are done ("for GSM8K the proximal term
hurts convergence early"): `proximal_active`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

import torch
from torch import Tensor

Phase = Literal["alignment", "user"]


def lisa_phase(step: int, align_steps: int, user_steps: int) -> Phase:
    """The state of 0-based `step`: alignment iff step mod (K1 + K2) < K1. K2 = 0: always alignment;
    K1 = 0: always user (the official code never switches into a state of zero steps)."""
    if align_steps <= 0:
        return "user"
    if user_steps <= 0:
        return "alignment"
    return "alignment" if step % (align_steps + user_steps) < align_steps else "user"


def proximal_active(step: int, total_steps: int, warmup_fraction: float) -> bool:
    """Whether the proximal term applies at 0-based `step` of `total_steps`: strictly after the warm-up,
    as the official `self.steps > 0.1 * len(train_dataloader) * num_train_epochs` (0: from the start)."""
    return warmup_fraction <= 0 or step > warmup_fraction * total_steps


def proximal_term(
    params: Iterable[tuple[str, Tensor]], anchors: Mapping[str, Tensor], rho: float
) -> Tensor | None:
    """rho/2 * sum_name ||params[name] - anchors[name]||^2 over the named tensors (the trainable ones),
    differentiable in the params; None when there is no tensor. Each anchor is moved to its parameter's
    device and dtype (a restored anchor comes from a checkpoint on the CPU)."""
    total: Tensor | None = None
    for name, param in params:
        anchor = anchors[name].to(device=param.device, dtype=param.dtype)
        term = (param - anchor).pow(2).sum()
        total = term if total is None else total + term
    return None if total is None else total * (rho / 2)


def snapshot(params: Iterable[tuple[str, Tensor]]) -> dict[str, Tensor]:
    """Detached copies of the named tensors: the anchor at a switch of state."""
    with torch.no_grad():
        return {name: param.detach().clone() for name, param in params}
