"""Vaccine's perturbation (Huang et al., "Vaccine: Perturbation-aware Alignment", NeurIPS 2024; code
git-disl/Vaccine trainer.py, `after_first_step` and RandomVaccineTrainer). Pure tensor functions; the
Trainer that finds the attention outputs and runs the two passes is training/vaccine.py.

Adversarial (Vaccine): eps_l = rho * g_l / (||(g_1, ..., g_L)||_2 + 1e-7), g_l the gradient of the loss
with respect to the output of layer l's self-attention. The norm is global, over every layer and token of
the micro-batch, so the whole perturbation has norm rho (up to the 1e-7).
Random (the RandomVaccine ablation): Gaussian noise with variance rho, drawn anew at every forward.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

# The official `scale = rho / (grad_norm + 1e-7)`.
NORM_EPS = 1e-7


def global_norm(tensors: Sequence[Tensor]) -> Tensor:
    """||(t_1, ..., t_n)||_2: the 2-norm of the per-tensor 2-norms, in float32 or wider."""
    norms = [t.detach().float().norm(p=2) for t in tensors]
    return torch.stack([n.to(norms[0].device) for n in norms]).norm(p=2)


def adversarial_perturbation(grads: Sequence[Tensor], rho: float) -> list[Tensor]:
    """eps_l = rho * g_l / (||g||_2 + 1e-7) for each gradient g_l, in each gradient's dtype."""
    if not grads:
        return []
    scale = rho / (global_norm(grads) + NORM_EPS)
    return [(g.detach().float() * scale.to(g.device)).to(g.dtype) for g in grads]


def random_perturbation(like: Tensor, rho: float) -> Tensor:
    """Gaussian noise of variance rho (standard deviation sqrt(rho)) shaped like `like`, from torch's
    global generator (restored with a checkpoint's RNG state)."""
    return rho**0.5 * torch.randn_like(like)
