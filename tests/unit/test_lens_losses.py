"""The LENS manipulation terms (methods/losses.py) against hand-computed values and naive formulas."""

from __future__ import annotations

import pytest
import torch

from safetune.methods.losses import (
    lens_align_loss,
    lens_loss,
    lens_retain_loss,
    lens_separate_loss,
)
from safetune.methods.lsar import lsar


def test_retain_by_hand():
    a = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    b = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    # (0 + 4 + 9 + 0) / 4
    assert lens_retain_loss(a, b).item() == pytest.approx(13 / 4)
    assert lens_retain_loss(a, a.clone()).item() == 0


def test_separate_by_hand():
    """d = 2, M_s = e2, delta = (0, 2), alpha 0.5: h - h_ref = (1, 2) projects to (0, 2); target (0, 1)."""
    basis = torch.tensor([[0.0], [1.0]])
    shifts = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    h, ref = torch.tensor([[1.0, 3.0]]), torch.tensor([[0.0, 1.0]])
    value = lens_separate_loss(h, ref, torch.tensor([1]), shifts, basis, alpha=0.5)
    assert value.item() == pytest.approx(0.5)  # (0^2 + 1^2) / 2


def test_align_by_hand():
    """c along e1: P_c(h_dom) - P_c(h_t) = (2, 0), MSE over d = 2 features: 4 / 2."""
    value = lens_align_loss(
        torch.tensor([[3.0, 5.0]]), torch.tensor([[1.0, 7.0]]), torch.tensor([1]), torch.tensor([5.0, 0.0])
    )
    assert value.item() == pytest.approx(2.0)


def _setup(seed=0, d=6, languages=3, batch=5):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(languages, d, generator=g, dtype=torch.float64) + 3
    decomposition = lsar(means, 0)
    index = torch.tensor([1, 2, 1, 1, 2][:batch])
    h = torch.randn(batch, d, generator=g, dtype=torch.float64)
    ref = torch.randn(batch, d, generator=g, dtype=torch.float64)
    dom = torch.randn(batch, d, generator=g, dtype=torch.float64)
    return decomposition, index, h, ref, dom


def test_separate_and_align_match_the_naive_formulas_summed_per_language():
    dec, index, h, ref, dom = _setup()
    m, c = dec.specific_basis, dec.common / dec.common.norm()
    alpha = 1.7
    expected_sep = expected_align = 0.0
    for t in (1, 2):
        rows = index == t
        ps_h, ps_ref = h[rows] @ m @ m.T, ref[rows] @ m @ m.T  # P_s of each, then the difference
        expected_sep += ((ps_h - ps_ref - alpha * dec.shifts[t]) ** 2).mean().item()
        pc_dom = (dom[rows] @ c)[:, None] * c
        pc_t = (h[rows] @ c)[:, None] * c
        expected_align += ((pc_dom - pc_t) ** 2).mean().item()
    sep = lens_separate_loss(h, ref, index, dec.shifts, m, alpha)
    align = lens_align_loss(dom, h, index, dec.common)
    assert sep.item() == pytest.approx(expected_sep, rel=1e-10)
    assert align.item() == pytest.approx(expected_align, rel=1e-10)


def test_step_zero_values():
    """At step 0 the policy is the frozen model: retain = 0 and separate = |alpha delta|^2 / d for one
    target language (the sum over languages for several)."""
    dec, index, h, _, dom = _setup()
    alpha, d = 0.8, h.shape[1]
    out = lens_loss(
        retain_weight=1,
        separate_weight=1,
        align_weight=0,
        pooled=dom,
        ref_pooled=dom.clone(),
        target_last=h,
        ref_target_last=h.clone(),
        languages=index,
        shifts=dec.shifts,
        basis=dec.specific_basis,
        alpha=alpha,
    )
    assert out.retain.item() == 0
    expected = sum((alpha * dec.shifts[t]).pow(2).sum().item() / d for t in (1, 2))
    assert out.separate.item() == pytest.approx(expected, rel=1e-10)
    one = lens_separate_loss(h[:1], h[:1], index[:1], dec.shifts, dec.specific_basis, alpha)
    assert one.item() == pytest.approx((alpha * dec.shifts[1]).norm().item() ** 2 / d, rel=1e-10)
    assert out.loss.item() == pytest.approx(expected, rel=1e-10)


def test_weights_scale_each_term_and_zero_weight_skips_it():
    dec, index, h, ref, dom = _setup()
    full = dict(
        pooled=dom,
        ref_pooled=ref,
        target_last=h,
        ref_target_last=ref,
        dominant_last=dom,
        languages=index,
        shifts=dec.shifts,
        basis=dec.specific_basis,
        common=dec.common,
    )
    out = lens_loss(retain_weight=2, separate_weight=3, align_weight=0.5, **full)
    expected = 2 * out.retain + 3 * out.separate + 0.5 * out.align
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-12)
    # weight 0: the term's inputs may be missing (not computed), and it reports 0
    only_align = lens_loss(
        retain_weight=0,
        separate_weight=0,
        align_weight=1,
        target_last=h,
        dominant_last=dom,
        languages=index,
        common=dec.common,
    )
    assert only_align.retain.item() == only_align.separate.item() == 0
    assert only_align.loss.item() == pytest.approx(out.align.item())
    only_retain = lens_loss(retain_weight=1, separate_weight=0, align_weight=0, pooled=dom, ref_pooled=ref)
    assert only_retain.loss.item() == pytest.approx(out.retain.item())
    with pytest.raises(ValueError, match="ref_target_last"):
        lens_loss(retain_weight=0, separate_weight=1, align_weight=0, target_last=h)
    with pytest.raises(ValueError, match="every weight is 0"):
        lens_loss(retain_weight=0, separate_weight=0, align_weight=0)


def test_gradients_reach_the_policy_states_only():
    dec, index, h, ref, dom = _setup()
    h = h.float().requires_grad_(True)
    dom = dom.float().requires_grad_(True)
    ref = ref.float()
    out = lens_loss(
        retain_weight=1,
        separate_weight=1,
        align_weight=1,
        pooled=dom,
        ref_pooled=ref,
        target_last=h,
        ref_target_last=ref,
        dominant_last=dom,
        languages=index,
        shifts=dec.shifts,
        basis=dec.specific_basis,
        common=dec.common,
    )
    out.loss.backward()
    assert h.grad is not None and dom.grad is not None
    assert torch.isfinite(h.grad).all() and h.grad.abs().sum() > 0
    assert out.loss.dtype == torch.float32


def test_bf16_states_are_differenced_in_fp32():
    """Two bf16 states that differ by less than bf16's spacing at their size: the difference is taken after
    the cast to fp32, so it is exactly the bf16 values' difference, not zero."""
    basis = torch.eye(2)[:, :1].double()
    shifts = torch.zeros(2, 2, dtype=torch.float64)
    h = torch.tensor([[256.0, 0.0]], dtype=torch.bfloat16)
    ref = torch.tensor([[258.0, 0.0]], dtype=torch.bfloat16)
    value = lens_separate_loss(h, ref, torch.tensor([1]), shifts, basis, alpha=1.0)
    assert value.item() == pytest.approx(4.0 / 2)
