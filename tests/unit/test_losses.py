"""Losses against hand-computed values and against a naive, unchunked formula (the authors' style)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from safetune.methods.losses import (
    IGNORE_INDEX,
    ReferenceOutputs,
    sarft_loss,
    sequence_logps,
    sft_loss,
)


def naive_sarft(logits, labels, mask, flags, ref_logits, beta, direction, positions, normalisation):
    """Unchunked formula written the way the authors' trainer computes it (plus the options)."""
    batch, _, vocab = logits.shape
    lf = logits.float()
    shift_labels = labels[:, 1:]
    ce = F.cross_entropy(
        lf[:, :-1].reshape(-1, vocab), shift_labels.reshape(-1), reduction="none", ignore_index=IGNORE_INDEX
    ).view(batch, -1)
    resp = torch.zeros_like(labels, dtype=torch.bool)
    resp[:, :-1] = shift_labels != IGNORE_INDEX
    ce_den = mask.sum(1) if normalisation == "row_length" else resp.sum(1)
    role = (ce.sum(1) / ce_den).mean()
    log_q = F.log_softmax(lf, -1)
    log_r = F.log_softmax(ref_logits.float(), -1)
    if direction == "forward":
        kl = F.kl_div(log_q, log_r.exp(), reduction="none").sum(-1)
    else:
        kl = (log_q.exp() * (log_q - log_r)).sum(-1)
    kl_mask = mask.bool() if positions == "all" else resp
    safe = ((kl * kl_mask).sum(1) / kl_mask.sum(1) * flags.float()).mean()
    return role + beta * safe, role, safe


def random_batch(seed=0, batch=4, length=7, vocab=11):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, length, vocab, generator=gen, dtype=torch.float64)
    ref = torch.randn(batch, length, vocab, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, vocab, (batch, length), generator=gen)
    mask = torch.ones(batch, length, dtype=torch.long)
    for row in range(batch):  # varying prompt length and right padding per row
        prompt, pad = 1 + row % 3, row % 2
        labels[row, :prompt] = IGNORE_INDEX
        if pad:
            labels[row, -pad:] = IGNORE_INDEX
            mask[row, -pad:] = 0
    flags = torch.tensor([True, False, True, False])[:batch]
    return logits, ref, labels, mask, flags


def full_reference(ref, flags, head=None):
    rows = flags.nonzero().squeeze(1)
    index = torch.full((flags.shape[0],), -1, dtype=torch.long)
    index[rows] = torch.arange(rows.numel())
    return ReferenceOutputs(values=ref[rows], row_index=index, head=head)


def test_hand_computed_value():
    logits = torch.tensor([[[0.0, 0.0], [0.0, 0.0]]], requires_grad=True)
    ref = torch.tensor([[[math.log(3.0), 0.0], [0.0, 0.0]]])
    labels = torch.tensor([[IGNORE_INDEX, 1]])
    mask = torch.ones(1, 2, dtype=torch.long)
    flags = torch.tensor([True])
    out = sarft_loss(logits, labels, mask, flags, full_reference(ref, flags), beta=0.1)
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert out.role.item() == pytest.approx(math.log(2) / 2, abs=1e-6)
    assert out.safe.item() == pytest.approx(kl / 2, abs=1e-6)
    assert out.loss.item() == pytest.approx(math.log(2) / 2 + 0.1 * kl / 2, abs=1e-6)
    out.loss.backward()
    # dL/dz at t0 = (q - onehot(1)) / 2 + 0.1 * (q - r) / 2 with q = (.5, .5), r = (.75, .25)
    expected = torch.tensor([0.25 + 0.1 * (-0.25) / 2, -0.25 + 0.1 * 0.25 / 2])
    assert torch.allclose(logits.grad[0, 0], expected, atol=1e-6)
    assert torch.allclose(logits.grad[0, 1], torch.zeros(2), atol=1e-7)


def test_response_normalisation_hand_value():
    logits = torch.zeros(1, 3, 2, requires_grad=True)
    labels = torch.tensor([[IGNORE_INDEX, 1, 0]])
    mask = torch.ones(1, 3, dtype=torch.long)
    row = sft_loss(logits, labels, mask).loss.item()
    resp = sft_loss(logits, labels, mask, ce_normalisation="response_tokens").loss.item()
    assert row == pytest.approx(2 * math.log(2) / 3, abs=1e-6)
    assert resp == pytest.approx(math.log(2), abs=1e-6)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("positions", ["all", "response"])
@pytest.mark.parametrize("normalisation", ["row_length", "response_tokens"])
@pytest.mark.parametrize("chunk_elements", [11, 23, 1 << 20])
def test_matches_naive_formula(direction, positions, normalisation, chunk_elements):
    logits, ref, labels, mask, flags = random_batch()
    naive_in = logits.clone().requires_grad_(True)
    expected, exp_role, exp_safe = naive_sarft(
        naive_in, labels, mask, flags, ref, 0.7, direction, positions, normalisation
    )
    expected.backward()
    ours_in = logits.clone().requires_grad_(True)
    out = sarft_loss(
        ours_in,
        labels,
        mask,
        flags,
        full_reference(ref, flags),
        beta=0.7,
        kl_direction=direction,
        kl_positions=positions,
        ce_normalisation=normalisation,
        chunk_elements=chunk_elements,
    )
    out.loss.backward()
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-5)
    assert out.role.item() == pytest.approx(exp_role.item(), abs=1e-5)
    assert out.safe.item() == pytest.approx(exp_safe.item(), abs=1e-5)
    assert torch.allclose(ours_in.grad, naive_in.grad, atol=1e-5)


def test_inplace_gradient_equals_buffered():
    logits, ref, labels, mask, flags = random_batch(seed=3)
    grads = []
    for inplace in (False, True):
        leaf = logits.clone().requires_grad_(True)
        work = leaf * 1.0  # a non-leaf, like the LM head's output
        out = sarft_loss(work, labels, mask, flags, full_reference(ref, flags), beta=0.5, inplace=inplace)
        (out.loss * 0.25).backward()  # the Trainer scales by 1/accumulation
        grads.append(leaf.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_reference_head_is_applied_per_chunk():
    logits, _, labels, mask, flags = random_batch(seed=5)
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(4, 7, 5, generator=gen, dtype=torch.float64)
    weight = torch.randn(11, 5, generator=gen, dtype=torch.float64)
    ref_logits = hidden @ weight.T
    by_logits = sarft_loss(logits, labels, mask, flags, full_reference(ref_logits, flags), chunk_elements=22)
    by_head = sarft_loss(
        logits,
        labels,
        mask,
        flags,
        full_reference(hidden, flags, head=lambda h: h @ weight.T),
        chunk_elements=22,
    )
    assert by_head.loss.item() == pytest.approx(by_logits.loss.item(), abs=1e-9)


def test_sft_equals_beta_zero_and_never_touches_reference():
    logits, ref, labels, mask, flags = random_batch(seed=2)

    def exploding_head(_h):
        raise AssertionError("reference used")

    ref_out = full_reference(ref, flags, head=exploding_head)
    beta0 = sarft_loss(logits, labels, mask, flags, ref_out, beta=0.0)
    no_flags = sarft_loss(logits, labels, mask, torch.zeros_like(flags), None, beta=0.5)
    sft = sft_loss(logits, labels, mask)
    assert beta0.loss.item() == pytest.approx(sft.loss.item(), abs=1e-12)
    assert no_flags.loss.item() == pytest.approx(sft.loss.item(), abs=1e-12)
    assert sft.safe.item() == 0.0


def test_flagged_rows_without_reference_is_an_error():
    logits, _, labels, mask, flags = random_batch()
    with pytest.raises(ValueError, match="reference"):
        sarft_loss(logits, labels, mask, flags, None, beta=0.1)


def test_bf16_logits_close_to_fp32():
    logits, ref, labels, mask, flags = random_batch(seed=7)
    full = sarft_loss(logits.float(), labels, mask, flags, full_reference(ref.float(), flags), beta=0.3)
    half = sarft_loss(logits.bfloat16(), labels, mask, flags, full_reference(ref.bfloat16(), flags), beta=0.3)
    assert half.loss.item() == pytest.approx(full.loss.item(), rel=2e-2)


def test_sequence_logps_matches_naive():
    logits, _, labels, _, _ = random_batch(seed=4)
    logp = F.log_softmax(logits[:, :-1].float(), -1)
    tgt = labels[:, 1:]
    keep = tgt != IGNORE_INDEX
    picked = logp.gather(2, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1) * keep
    expected_mean = picked.sum(1) / keep.sum(1)
    assert torch.allclose(sequence_logps(logits, labels, chunk_elements=13), expected_mean.float(), atol=1e-5)
    assert torch.allclose(sequence_logps(logits, labels, average=False), picked.sum(1).float(), atol=1e-5)
