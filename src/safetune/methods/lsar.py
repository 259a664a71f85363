"""LSAR (Xie, Zhao, Yu, Li, "Discovering Low-rank Subspaces for Language-agnostic Multilingual
Representations", EMNLP 2022, arXiv 2401.05792) as LENS uses it (Zhao et al., arXiv 2410.04407; code
circle-hit/Lens, `Probing/utils.py::build_aligner` and `Probing/probe.py`), as pure tensor functions: no
files, no models. The probe that collects the hidden states and the LENS losses live above this module.

Input: the per-language mean hidden states mu_1..mu_D (rows of a [D, d] tensor), one language named
dominant (LENS: English). With W = [mu_1 .. mu_D] (d x D) and r the rank (LENS: D - 1, the default):

    w_c   = W 1 / D                                         the plain mean of the means
    W - w_c 1^T = U S V^T                                   SVD of the centred means
    B     = w_c 1^T + U_r S_r V_r^T                         the rank-r fit of the means (B = W at r = D-1)
    c     = (B^+)^T 1 / |(B^+)^T 1|^2                       the common direction
    B - c 1^T = U' S' V'^T,  M_s = U'_r                     the language-specific subspace (d x r)

c is the point of the affine hull of the (fitted) means nearest the origin, so every mean has the same
projection on it, mu_i . c = |c|^2, and each mu_i - c lies in M_s, which is orthogonal to c. The paper
removes M_s from every embedding (h - M_s M_s^T h); LENS instead manipulates a language along M_s and c.

LENS's conventions kept here: rank D - 1; projections are linear, not affine (P_s(h) = M_s M_s^T h, c is not
subtracted first; since c is orthogonal to M_s this equals M_s M_s^T (h - c)); P_c(h) = (h . c^) c^ with c^
= c / |c|; the shift of language t is delta_t = P_s(mu_t) - P_s(mu_dom), a d-vector (the code takes the mean
of the projected states, the same thing by linearity), so delta_dom = 0.

Deviations, each for a stated reason:
- everything is computed in float64 (the code runs numpy on the model's half-precision states);
- degenerate inputs are refused rather than silently giving a meaningless subspace: fewer than two
  languages, fewer dimensions than languages, non-finite values, two languages with the same mean (the
  specific subspace would lose a dimension) and means whose affine hull passes through the origin (c = 0);
- each basis vector's sign is fixed (its largest-magnitude entry positive, the first of near-ties) so the same means give the same
  basis on any platform; every projection is sign-invariant, so nothing downstream changes;
- the projection helpers compute in at least float32, where the code works in the model's dtype (bf16), so
  that the difference of two projections of nearly equal states is not rounding noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

# Relative tolerance below which a singular value counts as zero. The means come from hundreds of
# hidden states each, so genuinely distinct languages sit many orders of magnitude above it; values at
# this level are duplicates up to rounding.
RANK_TOLERANCE = 1e-9


@dataclass(frozen=True)
class LsarDecomposition:
    """The LSAR geometry of D languages' mean states (all tensors float64, on the means' device).

    `common` is c ([d]); `specific_basis` is M_s ([d, r], orthonormal columns, orthogonal to c);
    `coordinates[i]` = M_s^T mu_i ([D, r]); `shifts[i]` = delta_i = P_s(mu_i) - P_s(mu_dominant) ([D, d]);
    `singular_values` are the r leading singular values of the centred means (how far apart the
    languages are along each specific direction, before the re-fit)."""

    dominant: int
    rank: int
    common: Tensor
    specific_basis: Tensor
    coordinates: Tensor
    shifts: Tensor
    singular_values: Tensor

    @property
    def num_languages(self) -> int:
        return int(self.coordinates.shape[0])

    @property
    def dim(self) -> int:
        return int(self.common.shape[0])

    @property
    def common_unit(self) -> Tensor:
        """c / |c|: the unit vector P_c projects onto."""
        return _unit(self.common)

    def shift_norms(self) -> Tensor:
        """|delta_i| per language ([D]): each language's distance from the dominant one inside M_s."""
        return torch.linalg.vector_norm(self.shifts, dim=-1)

    def project_specific(self, states: Tensor) -> Tensor:
        """P_s(h) = M_s M_s^T h for states [..., d]; see `project_specific`."""
        return project_specific(states, self.specific_basis)

    def project_common(self, states: Tensor) -> Tensor:
        """P_c(h) = (h . c^) c^ for states [..., d]; see `project_common`."""
        return project_common(states, self.common)


def lsar(means: Tensor, dominant: int = 0, rank: int | None = None) -> LsarDecomposition:
    """The LSAR decomposition of per-language means ([D, d], one row per language), the shifts taken
    relative to row `dominant`. `rank` defaults to D - 1 (LENS); LSAR's paper treats it as a
    hyper-parameter in 1..D-1. Raises ValueError on degenerate input (see the module docstring)."""
    if not isinstance(means, Tensor):
        raise ValueError(f"means must be a tensor, got {type(means).__name__}")
    if means.dim() != 2:
        raise ValueError(f"means must be [languages, dim], got shape {tuple(means.shape)}")
    if not (means.is_floating_point()):
        raise ValueError(f"means must be floating point, got {means.dtype}")
    num_languages, dim = (int(n) for n in means.shape)
    if num_languages < 2:
        raise ValueError(f"LSAR needs at least 2 languages, got {num_languages}")
    if dim < num_languages:
        # At the default rank c needs the D means linearly independent, impossible in fewer than D
        # dimensions (hidden sizes are in the thousands, so this only refuses malformed input).
        raise ValueError(
            f"LSAR needs the state dimension ({dim}) >= the number of languages ({num_languages})"
        )
    if not bool(torch.isfinite(means).all()):
        bad = sorted({int(i) for i in torch.nonzero(~torch.isfinite(means))[:, 0]})
        raise ValueError(f"means of language(s) at row {bad} are not finite")
    if isinstance(dominant, bool) or not isinstance(dominant, int) or not 0 <= dominant < num_languages:
        raise ValueError(f"dominant must be a row index in 0..{num_languages - 1}, got {dominant!r}")
    r = num_languages - 1 if rank is None else rank
    if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= num_languages - 1:
        raise ValueError(f"rank must be an integer in 1..{num_languages - 1}, got {rank!r}")

    mus = means.detach().to(torch.float64)
    # Work on the means divided by their largest entry: c scales with the means and M_s does not, and
    # unit-sized numbers keep |c0|^2 below overflow and above underflow for any finite input.
    scale = float(mus.abs().max())
    if scale == 0.0:
        raise ValueError("every language's mean is the zero vector")
    w = (mus / scale).T  # d x D, the layout of the papers
    ones = torch.ones(num_languages, dtype=torch.float64, device=w.device)
    centre = w.mean(dim=1)
    u, s, vh = torch.linalg.svd(w - centre[:, None], full_matrices=False)
    size = float(torch.linalg.vector_norm(w, dim=0).max())
    if float(s[r - 1]) <= RANK_TOLERANCE * size:
        _refuse_duplicates(w.T, size)
        raise ValueError(
            f"the means span only {int((s > RANK_TOLERANCE * size).sum())} language-specific "
            f"direction(s), fewer than rank {r}"
        )
    fitted = centre[:, None] * ones[None, :] + (u[:, :r] * s[:r]) @ vh[:r, :]

    # c0 with B^T c0 = 1 (least norm); it exists exactly when 1 is in B's row space, i.e. when the
    # affine hull of the fitted means misses the origin.
    c0 = torch.linalg.pinv(fitted).T @ ones
    residual = float(torch.linalg.vector_norm(fitted.T @ c0 - ones)) / num_languages**0.5
    c0_norm_sq = float(c0 @ c0)
    if not residual < 1e-6 or c0_norm_sq == 0.0:
        raise ValueError(
            "the means' affine hull passes through the origin: they have no common direction "
            "(LSAR needs the means on one hyperplane that misses the origin)"
        )
    common = c0 / c0_norm_sq
    scaled_common = common * scale

    u2, _, _ = torch.linalg.svd(fitted - common[:, None] * ones[None, :], full_matrices=False)
    basis = _fix_signs(u2[:, :r])
    coordinates = mus @ basis  # [D, r]
    # delta_i = M_s (coord_i - coord_dom): exactly zero for the dominant row.
    shifts = (coordinates - coordinates[dominant]) @ basis.T
    return LsarDecomposition(
        dominant=dominant,
        rank=r,
        common=scaled_common,
        specific_basis=basis,
        coordinates=coordinates,
        shifts=shifts,
        singular_values=s[:r] * scale,
    )


def project_specific(states: Tensor, basis: Tensor) -> Tensor:
    """P_s(h) = M_s M_s^T h for states [..., d] and an orthonormal basis [d, r], as a d-vector per state
    (LENS's convention; its code normalises each basis vector, a no-op for an orthonormal basis). Computed
    in at least float32 on the states' device; gradients flow through `states`."""
    dtype = _work_dtype(states)
    m = basis.to(device=states.device, dtype=dtype)
    return (states.to(dtype) @ m) @ m.T


def project_common(states: Tensor, common: Tensor) -> Tensor:
    """P_c(h) = (h . c^) c^ for states [..., d] and the common direction c [d] (any non-zero length),
    as LENS projects onto its shared direction. Computed in at least float32 on the states' device."""
    dtype = _work_dtype(states)
    unit = _unit(common.to(torch.float64)).to(device=states.device, dtype=dtype)
    return (states.to(dtype) @ unit)[..., None] * unit


def _unit(vector: Tensor) -> Tensor:
    """vector / |vector|, dividing by the largest entry first so that |vector|^2 cannot under- or
    overflow (the common direction scales with the means)."""
    largest = vector.abs().max()
    if not bool(torch.isfinite(largest)) or float(largest) == 0.0:
        raise ValueError("the common direction is zero or not finite")
    scaled = vector / largest
    return scaled / torch.linalg.vector_norm(scaled)


def _work_dtype(states: Tensor) -> torch.dtype:
    return torch.promote_types(states.dtype, torch.float32)


def _fix_signs(basis: Tensor) -> Tensor:
    """Flip each column so that its largest-magnitude entry is positive (the SVD's signs are arbitrary).
    Entries tied with the largest up to rounding count as tied, and the first of them decides, so that
    rounding differences between platforms cannot flip the sign."""
    magnitude = basis.abs()
    near_max = magnitude >= magnitude.max(dim=0).values * (1 - 1e-9)
    rows = near_max.to(torch.int8).argmax(dim=0)  # the first True in each column
    signs = torch.sign(basis[rows, torch.arange(basis.shape[1], device=basis.device)])
    signs[signs == 0] = 1.0
    return basis * signs


def _refuse_duplicates(mus: Tensor, scale: float) -> None:
    """Name the first pair of languages whose means coincide (up to rounding), if there is one."""
    distances = torch.cdist(mus, mus)
    num = mus.shape[0]
    for i in range(num):
        for j in range(i + 1, num):
            if float(distances[i, j]) <= RANK_TOLERANCE * scale:
                raise ValueError(
                    f"languages at rows {i} and {j} have the same mean: LSAR cannot separate them"
                )
