"""SafeLoRA's projection (Hsu et al., NeurIPS 2024, arXiv 2405.16833; code IBM/SafeLoRA model.py) as pure
functions of tensors: no files, no models. `training/safelora.py` reads the weights and writes the adapter.

Per LoRA module (one linear layer, e.g. `model.layers.3.self_attn.q_proj`), with W_aligned the chat model's
weight and W_unaligned the pretrained model's it was aligned from:

    V   = W_aligned - W_unaligned                              the alignment matrix (d_out x d_in)
    C   = V V^T / ||V||_F           projector="official"       (the paper's and code's approximation)
    C   = V (V^T V)^+ V^T           projector="exact"          (the orthogonal projector onto V's columns)
    cos = cosine(vec(C B A), vec(B A))                         rounded to 5 decimals, as the code does
    B'  = C B, A unchanged                                     for the modules selected

The official form divides by the Frobenius norm itself, not its square, so it is not idempotent: it
rescales as well as projects. It is the default because it is what the authors ran. Selection (both modes
of the code): `threshold` projects every module with cos <= tau; `number` takes the k-th smallest cosine as
tau, so ties project more than k modules. Every cosine is computed from the adapter as trained; nothing
here changes its input (the authors' PEFT port projects in place on its first call and then selects again
from the projected weights).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from safetune.errors import ConfigError

SelectMode = Literal["number", "threshold"]
ProjectorForm = Literal["official", "exact"]
# The official code rounds each cosine to 5 decimals (numpy.round(..., 5)) before selecting.
COSINE_DECIMALS = 5

# The prefix PEFT gives a causal LM's modules in a saved adapter, and the tensor names of a LoRA pair.
_PEFT_PREFIX = "base_model.model."
_LORA_A, _LORA_B = ".lora_A.weight", ".lora_B.weight"


def alignment_projector(
    aligned: Tensor, unaligned: Tensor, form: ProjectorForm = "official", dtype: torch.dtype = torch.float32
) -> Tensor:
    """C (d_out x d_out) from one module's aligned and unaligned weights, computed in `dtype` (float32 or
    wider). Identical weights (V = 0) are refused: the official form would divide 0 by 0."""
    if aligned.shape != unaligned.shape or aligned.dim() != 2:
        raise ValueError(
            f"weights of shapes {tuple(aligned.shape)} and {tuple(unaligned.shape)}: need equal 2-D"
        )
    v = aligned.to(dtype) - unaligned.to(dtype)
    norm = torch.linalg.matrix_norm(v)  # Frobenius
    if norm == 0:
        raise ValueError("the aligned and unaligned weights are identical (no alignment direction)")
    if form == "official":
        return (v @ v.T) / norm
    # V V^+ = V (V^T V)^+ V^T, through the SVD rather than the worse-conditioned V^T V.
    return v @ torch.linalg.pinv(v)


def lora_cosine(
    projector: Tensor, lora_b: Tensor, lora_a: Tensor, decimals: int | None = COSINE_DECIMALS
) -> float:
    """cosine(vec(C B A), vec(B A)), in the projector's dtype, rounded to `decimals` (None: not rounded).

    Through Gram matrices (<CBA, BA> = tr((CB)^T B (A A^T))) so that no d_out x d_in product is formed."""
    b = lora_b.to(device=projector.device, dtype=projector.dtype)
    a = lora_a.to(device=projector.device, dtype=projector.dtype)
    cb = projector @ b
    gram_a = a @ a.T  # r x r
    inner = torch.trace(cb.T @ b @ gram_a)
    norm_projected = torch.trace(cb.T @ cb @ gram_a).clamp_min(0).sqrt()
    norm_update = torch.trace(b.T @ b @ gram_a).clamp_min(0).sqrt()
    # torch.nn.functional.cosine_similarity's guard: a zero update has cosine 0 (and is projected first).
    cosine = float(inner / (norm_projected * norm_update).clamp_min(1e-8))
    return cosine if decimals is None else round(cosine, decimals)


def select_modules(
    cosines: Sequence[float], mode: SelectMode = "number", k: int = 10, threshold: float = 0.5
) -> tuple[float, list[bool]]:
    """(the threshold used, which modules to project): cos <= threshold, where `number` mode's threshold is
    the k-th smallest cosine (the largest when there are fewer than k), so ties project more than k."""
    if not cosines:
        return threshold, []
    if mode == "number":
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        threshold = sorted(cosines)[:k][-1]
    return threshold, [c <= threshold for c in cosines]


def lora_modules(keys: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Module name (as in the model's own state dict) -> (lora_A key, lora_B key) of a saved PEFT adapter.

    Only plain LoRA pairs are taken: a bias, a DoRA magnitude, an embedding adapter or a fully trained
    module (modules_to_save) is an update SafeLoRA does not define, and is refused rather than left
    unprojected."""
    pairs: dict[str, dict[str, str]] = {}
    for key in keys:
        for suffix, side in ((_LORA_A, "A"), (_LORA_B, "B")):
            if key.endswith(suffix):
                module = key[: -len(suffix)]
                module = module[len(_PEFT_PREFIX) :] if module.startswith(_PEFT_PREFIX) else module
                pairs.setdefault(module, {})[side] = key
                break
        else:
            raise ConfigError(
                f"adapter tensor {key!r} is not a LoRA A/B weight; SafeLoRA projects plain LoRA updates only "
                "(no bias, DoRA, embedding adapters or modules_to_save)"
            )
    incomplete = sorted(name for name, sides in pairs.items() if len(sides) != 2)
    if incomplete:
        raise ConfigError(f"adapter module {incomplete[0]!r} lacks its lora_A or lora_B weight")
    return {name: (sides["A"], sides["B"]) for name, sides in sorted(pairs.items())}


@dataclass(frozen=True)
class ModuleReport:
    """One module's line of safelora.json."""

    module: str
    cosine: float
    projected: bool
    norm_b_before: float
    norm_b_after: float


@dataclass(frozen=True)
class Projection:
    """The projected adapter (`weights`: every tensor of the input, the selected lora_B replaced, in their
    own dtypes) and what was done."""

    weights: dict[str, Tensor]
    modules: list[ModuleReport]
    threshold: float


def project_adapter(
    adapter: Mapping[str, Tensor],
    projector_of: Callable[[str], Tensor],
    *,
    mode: SelectMode = "number",
    k: int = 10,
    threshold: float = 0.5,
    decimals: int | None = COSINE_DECIMALS,
) -> Projection:
    """SafeLoRA on a saved adapter's tensors. `projector_of(module)` returns that module's C (the caller
    decides the form, dtype and device, and may read weights lazily: it is called once per module, in name
    order).

    Every cosine comes from `adapter` as given, and `adapter` is left unchanged: two calls give the same
    result. C B is kept for every module (d_out x r, small) so that each C is built only once."""
    modules = lora_modules(list(adapter))
    cosines: list[float] = []
    candidates: dict[str, Tensor] = {}
    for name, (key_a, key_b) in modules.items():
        c = projector_of(name)
        b, a = adapter[key_b], adapter[key_a]
        if c.shape[0] != b.shape[0]:
            raise ConfigError(
                f"{name}: the alignment matrix is {c.shape[0]} x {c.shape[0]} but lora_B has {b.shape[0]} rows"
            )
        cosines.append(lora_cosine(c, b, a, decimals))
        candidates[name] = (c @ b.to(device=c.device, dtype=c.dtype)).cpu()
        del c
    used, chosen = select_modules(cosines, mode, k, threshold)
    weights = {key: tensor.clone() for key, tensor in adapter.items()}
    reports = []
    for (name, (_, key_b)), cosine, project in zip(modules.items(), cosines, chosen, strict=True):
        before = adapter[key_b]
        if project:
            weights[key_b] = candidates[name].to(before.dtype).contiguous()
        reports.append(
            ModuleReport(
                module=name,
                cosine=cosine,
                projected=project,
                norm_b_before=float(before.double().norm()),
                norm_b_after=float(weights[key_b].double().norm()),
            )
        )
    return Projection(weights=weights, modules=reports, threshold=float(used))
