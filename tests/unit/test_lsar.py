"""LSAR's decomposition (methods/lsar.py) on hand-computed and synthetic means, and its refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from safetune.methods.lsar import LsarDecomposition, lsar, project_common, project_specific

F64 = torch.float64


def _synthetic_means(
    num_languages: int, dim: int, seed: int, offset: float = 3.0, spread: float = 1.0
) -> torch.Tensor:
    """Means that share a large component (as hidden states do) plus a language-specific part."""
    gen = torch.Generator().manual_seed(seed)
    shared = torch.randn(dim, generator=gen, dtype=F64)
    shared = offset * shared / shared.norm()
    return shared + spread * torch.randn(num_languages, dim, generator=gen, dtype=F64)


def _reference_common_and_projector(means: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An independent route to the same geometry (full rank): c is the point of the means' affine hull
    nearest the origin, and M_s spans the differences mu_i - mu_0."""
    m = means.to(F64)
    diffs = (m[1:] - m[0]).T  # d x (D-1)
    projector = diffs @ torch.linalg.solve(diffs.T @ diffs, diffs.T)
    common = m[0] - projector @ m[0]
    return common, projector


def _check_properties(decomp: LsarDecomposition, means: torch.Tensor, tol: float) -> None:
    m = means.to(F64)
    num, _ = m.shape
    basis, c = decomp.specific_basis, decomp.common
    scale = float(m.norm(dim=1).max())
    # The basis is orthonormal, of rank D - 1, and orthogonal to c.
    assert basis.shape == (m.shape[1], num - 1)
    assert torch.allclose(basis.T @ basis, torch.eye(num - 1, dtype=F64), atol=tol)
    assert int(torch.linalg.matrix_rank(basis)) == num - 1
    assert float((basis.T @ decomp.common_unit).abs().max()) < tol
    # Every mean has the same projection on c: mu_i . c = |c|^2.
    assert torch.allclose(m @ c, (c @ c).expand(num), atol=tol * scale**2, rtol=tol)
    # mu_i - c lies in M_s, and the dominant language's shift is exactly zero.
    residual = (m - c) - (m - c) @ basis @ basis.T
    assert float(residual.abs().max()) < tol * scale
    assert torch.equal(decomp.shifts[decomp.dominant], torch.zeros_like(decomp.shifts[decomp.dominant]))
    expected_shifts = (m - m[decomp.dominant]) @ basis @ basis.T
    assert torch.allclose(decomp.shifts, expected_shifts, atol=tol * scale)


def test_two_languages_by_hand() -> None:
    # mu_1 = e1, mu_2 = e2: the affine hull is the line x + y = 1, nearest the origin at (1/2, 1/2).
    decomp = lsar(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert decomp.rank == 1 and decomp.num_languages == 2 and decomp.dim == 2
    assert torch.allclose(decomp.common, torch.tensor([0.5, 0.5], dtype=F64), atol=1e-12)
    # The specific direction is (1, -1)/sqrt(2), its sign fixed by its first (largest, tied) entry.
    root = 1 / math.sqrt(2)
    assert torch.allclose(decomp.specific_basis[:, 0], torch.tensor([root, -root], dtype=F64), atol=1e-12)
    assert torch.allclose(decomp.coordinates[:, 0], torch.tensor([root, -root], dtype=F64), atol=1e-12)
    # delta_2 = P_s(mu_2) - P_s(mu_1) = mu_2 - mu_1 (the difference lies in M_s).
    assert torch.allclose(decomp.shifts[1], torch.tensor([-1.0, 1.0], dtype=F64), atol=1e-12)
    assert torch.allclose(decomp.shift_norms(), torch.tensor([0.0, math.sqrt(2)], dtype=F64), atol=1e-12)
    # The centred means are (+-1/2, -+1/2): one singular value, |(1/2, -1/2)| * sqrt(2) = 1.
    assert torch.allclose(decomp.singular_values, torch.tensor([1.0], dtype=F64), atol=1e-12)


def test_common_direction_by_hand_with_an_offset() -> None:
    # mu_i = e_i + 2 e4 (i = 1..3): the hull is {x1 + x2 + x3 = 1, x4 = 2}, nearest point (1/3, 1/3, 1/3, 2).
    means = torch.eye(3, 4) + torch.tensor([0.0, 0.0, 0.0, 2.0])
    decomp = lsar(means, dominant=2)
    third = 1 / 3
    assert torch.allclose(decomp.common, torch.tensor([third, third, third, 2.0], dtype=F64), atol=1e-12)
    assert torch.allclose(means.to(F64) @ decomp.common, torch.full((3,), 13 / 3, dtype=F64), atol=1e-12)
    # The specific subspace is the plane x1 + x2 + x3 = 0, x4 = 0.
    projector = decomp.specific_basis @ decomp.specific_basis.T
    expected = torch.zeros(4, 4, dtype=F64)
    expected[:3, :3] = torch.eye(3, dtype=F64) - third
    assert torch.allclose(projector, expected, atol=1e-12)
    _check_properties(decomp, means, 1e-10)


@pytest.mark.parametrize("num_languages", [2, 3, 5, 8])
@pytest.mark.parametrize("dominant", [0, -1])
def test_properties_on_synthetic_means(num_languages: int, dominant: int) -> None:
    means = _synthetic_means(num_languages, 32, seed=num_languages).to(torch.float32)
    index = dominant % num_languages
    decomp = lsar(means, dominant=index)
    assert decomp.common.dtype == F64 and decomp.dominant == index
    _check_properties(decomp, means, 1e-9)
    common, projector = _reference_common_and_projector(means)
    assert torch.allclose(decomp.common, common, atol=1e-9)
    assert torch.allclose(decomp.specific_basis @ decomp.specific_basis.T, projector, atol=1e-9)


def test_order_of_languages_does_not_change_the_geometry() -> None:
    means = _synthetic_means(4, 16, seed=7)
    a = lsar(means, dominant=0)
    b = lsar(means[[2, 0, 3, 1]], dominant=1)
    assert torch.allclose(a.common, b.common, atol=1e-12)
    pa = a.specific_basis @ a.specific_basis.T
    pb = b.specific_basis @ b.specific_basis.T
    assert torch.allclose(pa, pb, atol=1e-12)
    assert torch.allclose(a.shifts[[2, 0, 3, 1]], b.shifts, atol=1e-12)


def test_lower_rank_fits_the_means_first() -> None:
    # Three languages on a line (off the origin): rank 1 fits them exactly, so the properties hold for
    # the means themselves; rank 2 (the default) sees only one direction and is refused.
    base = torch.tensor([1.0, 2.0, 0.5, -1.0], dtype=F64)
    step = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=F64)
    means = torch.stack([base, base + step, base + 3 * step])
    decomp = lsar(means, rank=1)
    assert decomp.specific_basis.shape == (4, 1)
    assert float((decomp.specific_basis[:, 0] @ decomp.common).abs()) < 1e-12
    assert torch.allclose(means @ decomp.common, (decomp.common @ decomp.common).expand(3), atol=1e-10)
    with pytest.raises(ValueError, match="fewer than rank 2"):
        lsar(means)
    # On generic means a lower rank still gives an orthonormal basis orthogonal to c.
    generic = lsar(_synthetic_means(5, 12, seed=3), rank=2)
    basis = generic.specific_basis
    assert torch.allclose(basis.T @ basis, torch.eye(2, dtype=F64), atol=1e-12)
    assert float((basis.T @ generic.common_unit).abs().max()) < 1e-10


def test_basis_signs_are_fixed() -> None:
    decomp = lsar(_synthetic_means(4, 10, seed=11))
    rows = decomp.specific_basis.abs().argmax(dim=0)
    assert bool((decomp.specific_basis[rows, torch.arange(3)] > 0).all())
    flipped = lsar(_synthetic_means(4, 10, seed=11) * 1.0)
    assert torch.equal(decomp.specific_basis, flipped.specific_basis)


def test_projections() -> None:
    decomp = lsar(_synthetic_means(3, 8, seed=5))
    states = torch.randn(6, 8, generator=torch.Generator().manual_seed(0), dtype=F64)
    specific = decomp.project_specific(states)
    common = decomp.project_common(states)
    assert specific.shape == common.shape == (6, 8) and specific.dtype == F64
    # Both are orthogonal projectors: idempotent, and onto mutually orthogonal spaces.
    assert torch.allclose(decomp.project_specific(specific), specific, atol=1e-12)
    assert torch.allclose(decomp.project_common(common), common, atol=1e-12)
    assert float((specific * common).sum(dim=-1).abs().max()) < 1e-10
    # P_c(c) = c; P_s removes c; a single state [d] works as a batch of one.
    assert torch.allclose(decomp.project_common(decomp.common), decomp.common, atol=1e-12)
    assert float(decomp.project_specific(decomp.common).abs().max()) < 1e-12
    assert torch.allclose(project_specific(states[0], decomp.specific_basis), specific[0], atol=1e-12)
    # The official code scales its shared direction freely: only the direction matters.
    assert torch.allclose(project_common(states, 5.0 * decomp.common), common, atol=1e-12)
    # The shift of a language is the difference of the projected means.
    means = _synthetic_means(3, 8, seed=5)
    assert torch.allclose(
        decomp.shifts[2], decomp.project_specific(means[2]) - decomp.project_specific(means[0]), atol=1e-12
    )


def test_projections_of_half_precision_states_compute_in_float32_with_gradients() -> None:
    decomp = lsar(_synthetic_means(3, 8, seed=5))
    states = torch.randn(2, 8, dtype=torch.bfloat16, requires_grad=True)
    out = decomp.project_specific(states) + decomp.project_common(states)
    assert out.dtype == torch.float32
    out.sum().backward()
    assert states.grad is not None and bool(torch.isfinite(states.grad.float()).all())
    with pytest.raises(ValueError, match="zero or not finite"):
        project_common(states, torch.zeros(8))


@pytest.mark.parametrize(
    ("means", "kwargs", "message"),
    [
        (torch.ones(1, 4), {}, "at least 2 languages"),
        (torch.ones(4), {}, r"\[languages, dim\]"),
        (torch.eye(3, 2), {}, "state dimension"),
        (torch.eye(3, 4, dtype=torch.int64), {}, "floating point"),
        (torch.tensor([[1.0, 0.0, 0.0], [0.0, float("nan"), 1.0]]), {}, r"row \[1\] are not finite"),
        (torch.tensor([[float("inf"), 0.0, 0.0], [0.0, 1.0, 1.0]]), {}, r"row \[0\] are not finite"),
        (
            torch.tensor([[1.0, 2.0, 3.0], [0.0, 1.0, 0.0], [1.0, 2.0, 3.0]]),
            {},
            "rows 0 and 2 have the same mean",
        ),
        (torch.ones(3, 5), {}, "rows 0 and 1 have the same mean"),
        # Both means on the x-axis: their affine hull passes through the origin.
        (torch.tensor([[1.0, 0.0], [2.0, 0.0]]), {}, "passes through the origin"),
        (torch.eye(3, 4), {"dominant": 3}, "dominant must be a row index"),
        (torch.eye(3, 4), {"dominant": True}, "dominant must be a row index"),
        (torch.eye(3, 4), {"rank": 0}, "rank must be an integer in 1..2"),
        (torch.eye(3, 4), {"rank": 3}, "rank must be an integer in 1..2"),
    ],
)
def test_degenerate_input_is_refused(means: torch.Tensor, kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        lsar(means, **kwargs)


def test_not_a_tensor_is_refused() -> None:
    with pytest.raises(ValueError, match="must be a tensor"):
        lsar(np.eye(2))  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(
    num_languages=st.integers(2, 7),
    extra_dims=st.integers(0, 24),
    seed=st.integers(0, 2**31 - 1),
    offset=st.floats(0.5, 50.0),
    spread=st.floats(0.05, 5.0),
    dominant=st.integers(0, 6),
)
def test_properties_hold_for_random_means(
    num_languages: int, extra_dims: int, seed: int, offset: float, spread: float, dominant: int
) -> None:
    means = _synthetic_means(num_languages, num_languages + extra_dims, seed, offset=offset, spread=spread)
    decomp = lsar(means, dominant=dominant % num_languages)
    _check_properties(decomp, means, 1e-7)


# Shapes LSAR accepts (2 <= D <= d); the wrong shapes are the parametrised refusals above. Small integers
# make duplicate, collinear and through-the-origin languages likely; now and then one entry is made
# non-finite (as an element strategy it would poison nearly every array).
_ELEMENTS = st.one_of(st.floats(-1e3, 1e3), st.integers(-2, 2).map(float))
_SHAPES = st.integers(2, 5).flatmap(lambda n: st.tuples(st.just(n), st.integers(n, 8)))


@st.composite
def _means_arrays(draw: st.DrawFn) -> np.ndarray:
    array = draw(_SHAPES.flatmap(lambda shape: hnp.arrays(np.float64, shape, elements=_ELEMENTS)))
    if draw(st.integers(0, 4)) == 0:
        row = draw(st.integers(0, array.shape[0] - 1))
        col = draw(st.integers(0, array.shape[1] - 1))
        array[row, col] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    return array


@settings(max_examples=120, deadline=None)
@given(_means_arrays())
def test_any_input_is_refused_or_well_formed(array: np.ndarray) -> None:
    means = torch.from_numpy(array)
    try:
        decomp = lsar(means)
    except ValueError:
        return
    num, dim = array.shape
    assert decomp.specific_basis.shape == (dim, num - 1) and decomp.shifts.shape == (num, dim)
    for tensor in (decomp.common, decomp.specific_basis, decomp.coordinates, decomp.shifts):
        assert bool(torch.isfinite(tensor).all())
    basis = decomp.specific_basis
    assert torch.allclose(basis.T @ basis, torch.eye(num - 1, dtype=F64), atol=1e-8)
    # What acceptance promises: every mean at the same projection on c, to the checked tolerance (on
    # the means divided by their largest entry, where |c|^2 is representable).
    scale = float(means.abs().max())
    c = decomp.common / scale
    assert float(c.abs().max()) > 0
    assert torch.allclose((means / scale) @ c, (c @ c).expand(num), rtol=1e-5, atol=0)
    unit = decomp.common_unit
    assert bool(torch.isfinite(unit).all()) and abs(float(unit @ unit) - 1) < 1e-12
    assert float((basis.T @ unit).abs().max()) < 1e-8
    assert torch.equal(decomp.shifts[0], torch.zeros(dim, dtype=F64))
