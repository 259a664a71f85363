"""Reward-gap MPO: hand-computed values, the chunked log-prob against a naive formula, gradient signs, pooling."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from safetune.data.batching import IGNORE_INDEX
from safetune.methods.losses import sequence_logps
from safetune.methods.reward_gap import mean_token_logps, pool_hidden, reward_gap_mpo_loss


def grad(tensor: torch.Tensor) -> torch.Tensor:
    assert tensor.grad is not None
    return tensor.grad


def naive_mean_logps(logits, labels):
    """Unchunked: log_softmax + gather over shifted labels, mean over labelled tokens (0 for none)."""
    logp = F.log_softmax(logits[:, :-1], dim=-1)
    tgt = labels[:, 1:]
    keep = tgt != IGNORE_INDEX
    picked = logp.gather(2, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1) * keep
    return picked.sum(1) / keep.sum(1).clamp(min=1)


def random_batch(seed=0, batch=5, length=7, vocab=11, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, length, vocab, generator=gen, dtype=dtype) * 2
    labels = torch.randint(0, vocab, (batch, length), generator=gen)
    for row in range(batch):  # varying prompt length and right padding
        prompt, pad = 1 + row % 3, row % 2
        labels[row, :prompt] = IGNORE_INDEX
        if pad:
            labels[row, -pad:] = IGNORE_INDEX
    labels[-1] = IGNORE_INDEX  # a row with no labelled token
    return logits, labels


# ---------------------------------------------------------------- reward_gap_mpo_loss, by hand


def test_hand_computed_loss():
    chosen = torch.tensor([-1.0, -2.0], requires_grad=True)
    rejected = torch.tensor([-1.5, -1.0])
    ref_gap = torch.tensor([1.0, 0.5])
    policy = torch.tensor([[1.0, 2.0], [0.0, 0.0], [3.0, 1.0], [2.0, 2.0]], requires_grad=True)
    ref = torch.tensor([[1.0, 1.0], [0.0, 2.0], [3.0, 1.0], [1.0, 2.0]])
    out = reward_gap_mpo_loss(
        chosen, rejected, ref_gap, policy, ref, beta=2.0, gap_weight=0.5, repr_weight=3.0
    )
    # RG_t = (0.5, -1.0); beta * RG_t - RG_d = (1 - 1, -2 - 0.5) = (0, -2.5); mean of squares = 3.125
    # repr: squared diffs 0,1,0,4,0,0,1,0 over 8 elements = 0.75
    assert out.target_gap.tolist() == pytest.approx([0.5, -1.0], abs=1e-6)
    assert out.gap_error.tolist() == pytest.approx([0.0, -2.5], abs=1e-6)
    assert out.gap_term.item() == pytest.approx(3.125, abs=1e-6)
    assert out.repr_term.item() == pytest.approx(0.75, abs=1e-6)
    assert out.loss.item() == pytest.approx(0.5 * 3.125 + 3.0 * 0.75, abs=1e-6)
    out.loss.backward()
    # dL/dchosen_i = gap_weight * 2 * beta * e_i / B = 0.5 * 2 * 2 * (0, -2.5) / 2
    assert grad(chosen).tolist() == pytest.approx([0.0, -2.5], abs=1e-6)
    # dL/dpolicy = repr_weight * 2 * (policy - ref) / 8
    assert torch.allclose(grad(policy), 3.0 * 2 * (policy - ref).detach() / 8, atol=1e-6)


def test_defaults_and_optimum_at_target_over_beta():
    ref_gap = torch.tensor([0.6, -0.2])
    beta = 3.0
    chosen = ref_gap / beta
    out = reward_gap_mpo_loss(chosen, torch.zeros(2), ref_gap, None, None, beta=beta, repr_weight=0.0)
    assert out.loss.item() == pytest.approx(0.0, abs=1e-7)
    # defaults beta = gap_weight = repr_weight = 1; zero repr term when policy == ref
    pooled = torch.randn(4, 3)
    out = reward_gap_mpo_loss(torch.tensor([0.0, 1.0]), torch.zeros(2), ref_gap, pooled, pooled.clone())
    assert out.repr_term.item() == 0.0
    assert out.loss.item() == pytest.approx(((0.0 - 0.6) ** 2 + (1.0 + 0.2) ** 2) / 2, abs=1e-6)


def test_repr_weight_zero_without_hidden_states():
    chosen = torch.tensor([-1.0, -2.0, -0.5], requires_grad=True)
    out = reward_gap_mpo_loss(chosen, torch.zeros(3), torch.zeros(3), None, None, repr_weight=0.0)
    out.loss.backward()
    assert out.repr_term.item() == 0.0
    assert out.loss.item() == pytest.approx((1 + 4 + 0.25) / 3, abs=1e-6)
    with pytest.raises(ValueError, match="repr_weight"):
        reward_gap_mpo_loss(chosen, torch.zeros(3), torch.zeros(3), None, None)


def test_repr_weight_zero_logs_but_does_not_train_repr():
    policy = torch.randn(4, 3, requires_grad=True)
    out = reward_gap_mpo_loss(
        torch.zeros(2), torch.zeros(2), torch.ones(2), policy, torch.zeros(4, 3), repr_weight=0
    )
    assert out.repr_term.item() == pytest.approx((policy.detach() ** 2).mean().item(), abs=1e-6)
    assert out.loss.item() == pytest.approx(1.0, abs=1e-6)
    assert not out.loss.requires_grad


def test_reference_side_is_constant():
    ref_gap = torch.tensor([0.5, 1.0], requires_grad=True)
    ref_pooled = torch.randn(4, 2, requires_grad=True)
    chosen = torch.zeros(2, requires_grad=True)
    out = reward_gap_mpo_loss(chosen, torch.zeros(2), ref_gap, torch.zeros(4, 2), ref_pooled)
    out.loss.backward()
    assert ref_gap.grad is None and ref_pooled.grad is None
    assert chosen.grad is not None


def test_normalised_target_gap_variant():
    chosen = torch.tensor([-1.0, -2.0])
    rejected = torch.tensor([-1.5, -1.0])
    ref_target_gap = torch.tensor([0.25, -0.5])
    out = reward_gap_mpo_loss(
        chosen, rejected, torch.zeros(2), None, None, repr_weight=0, ref_target_gap=ref_target_gap
    )
    assert out.target_gap.tolist() == pytest.approx([0.25, -0.5], abs=1e-6)
    assert out.gap_term.item() == pytest.approx((0.0625 + 0.25) / 2, abs=1e-6)


def test_reference_relative_target_gap_is_the_dpo_margin_by_hand():
    """The `normalise_target_gap` ablation with summed log-probs: beta * (RG_t(theta) - RG_t(ref)) is DPO's
    reward margin beta * [log pi/pi_ref (y_w) - log pi/pi_ref (y_l)], regressed on RG_d(ref)."""
    policy_w = torch.tensor([-10.0, -4.0], requires_grad=True)  # summed log-probs
    policy_l = torch.tensor([-12.0, -3.0])
    ref_w, ref_l = torch.tensor([-11.0, -5.0]), torch.tensor([-11.0, -2.0])
    ref_gap_d = torch.tensor([3.0, 1.0])
    out = reward_gap_mpo_loss(
        policy_w, policy_l, ref_gap_d, None, None, beta=0.5, repr_weight=0, ref_target_gap=ref_w - ref_l
    )
    # log-ratios: chosen (1, 1), rejected (-1, -1): margins (2, 2); beta * margin - RG_d = (1 - 3, 1 - 1)
    assert out.target_gap.tolist() == pytest.approx([2.0, 2.0], abs=1e-6)
    assert out.gap_error.tolist() == pytest.approx([-2.0, 0.0], abs=1e-6)
    assert out.loss.item() == pytest.approx((4.0 + 0.0) / 2, abs=1e-6)
    out.loss.backward()
    # dL/dpolicy_w = 2 * beta * e / B = (-1, 0): descent raises the first margin, leaves the second
    assert grad(policy_w).tolist() == pytest.approx([-1.0, 0.0], abs=1e-6)


def test_shape_errors():
    with pytest.raises(ValueError, match="2B"):
        reward_gap_mpo_loss(
            torch.zeros(2), torch.zeros(2), torch.zeros(2), torch.zeros(2, 3), torch.zeros(2, 3)
        )
    with pytest.raises(ValueError, match="ref_gap_d"):
        reward_gap_mpo_loss(torch.zeros(2), torch.zeros(2), torch.zeros(3), None, None, repr_weight=0)


# ---------------------------------------------------------------- gradient sign: MPO flips, DPO does not


@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0])
def test_gradient_sign_flips_at_the_target(beta):
    ref_gap = torch.tensor([0.8])
    target = ref_gap.item() / beta
    signs = []
    for rg_t in (target - 0.3, target + 0.3):
        chosen = torch.tensor([rg_t], requires_grad=True)
        reward_gap_mpo_loss(
            chosen, torch.zeros(1), ref_gap, None, None, beta=beta, repr_weight=0
        ).loss.backward()
        signs.append(grad(chosen).item())
        # the gradient w.r.t. rejected is the opposite
        rejected = torch.zeros(1, requires_grad=True)
        reward_gap_mpo_loss(
            torch.tensor([rg_t]), rejected, ref_gap, None, None, beta=beta, repr_weight=0
        ).loss.backward()
        assert grad(rejected).item() == pytest.approx(-signs[-1], abs=1e-6)
    below, above = signs
    assert below < 0  # descent raises the target gap while beta * RG_t < RG_d
    assert above > 0  # overshoot: descent lowers it again
    # DPO: -logsigmoid(beta * margin) has a negative derivative in the margin everywhere
    for margin in (target - 0.3, target + 0.3, 50.0):
        chosen = torch.tensor(margin, requires_grad=True)
        (-F.logsigmoid(beta * (chosen - 0.0))).backward()
        assert grad(chosen).item() < 0 or grad(chosen).item() == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------- mean_token_logps


@pytest.mark.parametrize("chunk_elements", [1, 11, 23, 50, 1 << 20])
def test_mean_token_logps_matches_naive_values_and_gradients(chunk_elements):
    logits, labels = random_batch()
    weights = torch.randn(logits.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    naive_in = logits.clone().requires_grad_(True)
    expected = naive_mean_logps(naive_in, labels)
    (expected * weights).sum().backward()
    ours_in = logits.clone().requires_grad_(True)
    ours = mean_token_logps(ours_in, labels, chunk_elements=chunk_elements)
    (ours * weights).sum().backward()
    assert ours.dtype == torch.float64
    assert torch.allclose(ours, expected, atol=1e-10)
    assert torch.allclose(grad(ours_in), grad(naive_in), atol=1e-10)
    assert ours[-1].item() == 0.0
    assert torch.count_nonzero(grad(ours_in)[-1]) == 0  # no labelled token: no value, no gradient
    assert torch.count_nonzero(grad(ours_in)[:, -1]) == 0  # the last position predicts nothing


def test_mean_token_logps_hand_value():
    # uniform logits over V = 4: every labelled token has log-prob -log 4
    logits = torch.zeros(2, 3, 4, requires_grad=True)
    labels = torch.tensor([[IGNORE_INDEX, 1, 2], [IGNORE_INDEX, IGNORE_INDEX, 3]])
    out = mean_token_logps(logits, labels)
    assert out.tolist() == pytest.approx([-math.log(4), -math.log(4)], abs=1e-6)
    out.sum().backward()
    # row 0: positions 0, 1 predict tokens 1, 2, each with weight 1/2: (onehot - 1/4) / 2
    assert grad(logits)[0, 0].tolist() == pytest.approx([-0.125, 0.375, -0.125, -0.125], abs=1e-6)
    assert grad(logits)[1, 1].tolist() == pytest.approx([-0.25, -0.25, -0.25, 0.75], abs=1e-6)
    assert grad(logits)[1, 0].abs().sum().item() == 0.0


def naive_sum_logps(logits, labels):
    """Unchunked summed log-prob of the labelled tokens (the `mpo_logps="sum"` ablation)."""
    keep = (labels[:, 1:] != IGNORE_INDEX).sum(1).clamp(min=1)
    return naive_mean_logps(logits, labels) * keep


def test_summed_token_logps_hand_value():
    # uniform logits over V = 4: row 0 has 2 labelled tokens (sum -2 log 4), row 1 one (-log 4)
    logits = torch.zeros(2, 3, 4, requires_grad=True)
    labels = torch.tensor([[IGNORE_INDEX, 1, 2], [IGNORE_INDEX, IGNORE_INDEX, 3]])
    out = mean_token_logps(logits, labels, average=False)
    assert out.tolist() == pytest.approx([-2 * math.log(4), -math.log(4)], abs=1e-6)
    out.sum().backward()
    # no division by the length: onehot - 1/4 at every labelled position
    assert grad(logits)[0, 0].tolist() == pytest.approx([-0.25, 0.75, -0.25, -0.25], abs=1e-6)
    assert grad(logits)[0, 1].tolist() == pytest.approx([-0.25, -0.25, 0.75, -0.25], abs=1e-6)
    assert grad(logits)[1, 1].tolist() == pytest.approx([-0.25, -0.25, -0.25, 0.75], abs=1e-6)


@pytest.mark.parametrize("chunk_elements", [1, 23, 1 << 20])
def test_summed_token_logps_match_naive_values_and_gradients(chunk_elements):
    logits, labels = random_batch(seed=7)
    weights = torch.randn(logits.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    naive_in = logits.clone().requires_grad_(True)
    expected = naive_sum_logps(naive_in, labels)
    (expected * weights).sum().backward()
    ours_in = logits.clone().requires_grad_(True)
    ours = mean_token_logps(ours_in, labels, chunk_elements=chunk_elements, average=False)
    (ours * weights).sum().backward()
    assert torch.allclose(ours, expected, atol=1e-10)
    assert torch.allclose(grad(ours_in), grad(naive_in), atol=1e-10)
    assert ours[-1].item() == 0.0  # no labelled token
    assert torch.allclose(ours.float(), sequence_logps(logits.float(), labels, average=False), atol=1e-5)
    # and it is not the mean: rows with more than one labelled token differ
    assert not torch.allclose(ours, mean_token_logps(logits, labels, chunk_elements=chunk_elements))


def test_mean_token_logps_fp32_and_bf16():
    logits, labels = random_batch(seed=2)
    reference = naive_mean_logps(logits, labels)
    fp32 = mean_token_logps(logits.float(), labels, chunk_elements=13)
    assert fp32.dtype == torch.float32
    assert torch.allclose(fp32.double(), reference, atol=1e-5)
    assert torch.allclose(fp32, sequence_logps(logits.float(), labels), atol=1e-6)
    bf16_in = logits.bfloat16().requires_grad_(True)
    bf16 = mean_token_logps(bf16_in, labels, chunk_elements=13)
    assert bf16.dtype == torch.float32
    assert torch.allclose(bf16.double(), naive_mean_logps(logits.bfloat16().double(), labels), atol=1e-5)
    bf16.sum().backward()
    assert grad(bf16_in).dtype == torch.bfloat16


def test_mean_token_logps_through_a_head():
    """Gradients flow through a non-leaf (the LM head) exactly as with the naive formula."""
    logits, labels = random_batch(seed=4, vocab=6)
    gen = torch.Generator().manual_seed(3)
    hidden = torch.randn(*logits.shape[:2], 5, generator=gen, dtype=torch.float64)
    grads = []
    for fn in (naive_mean_logps, lambda z, y: mean_token_logps(z, y, chunk_elements=7)):
        weight = torch.randn(6, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        weight.requires_grad_(True)
        fn(hidden @ weight.T, labels).sum().backward()
        grads.append(grad(weight))
    assert torch.allclose(grads[0], grads[1], atol=1e-10)


def test_mean_token_logps_end_to_end_mpo_gradient():
    """The full gap term through mean_token_logps against the naive formula."""
    chosen_logits, chosen_labels = random_batch(seed=5, batch=3)
    rejected_logits, rejected_labels = random_batch(seed=6, batch=3)
    chosen_labels[-1, 3:] = 1  # give every row labels
    rejected_labels[-1, 2:] = 0
    ref_gap = torch.tensor([0.3, -0.1, 0.7], dtype=torch.float64)
    grads = []
    for fn in (naive_mean_logps, lambda z, y: mean_token_logps(z, y, chunk_elements=5)):
        c = chosen_logits.clone().requires_grad_(True)
        r = rejected_logits.clone().requires_grad_(True)
        out = reward_gap_mpo_loss(
            fn(c, chosen_labels), fn(r, rejected_labels), ref_gap, None, None, 0.5, 1, 0
        )
        out.loss.backward()
        grads.append((out.loss.item(), grad(c), grad(r)))
    assert grads[0][0] == pytest.approx(grads[1][0], abs=1e-12)
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-10)
    assert torch.allclose(grads[0][2], grads[1][2], atol=1e-10)


# ---------------------------------------------------------------- pool_hidden


def test_pool_hidden_hand_values_right_and_left_padding():
    # right padding: row 0 has 2 real tokens, row 1 has 3
    hidden = torch.tensor(
        [
            [[1.0, 2.0], [3.0, 4.0], [9.0, 9.0]],
            [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]],
        ]
    )
    right = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert pool_hidden(hidden, right, "mean").tolist() == [[2.0, 3.0], [2.0, 3.0]]
    assert pool_hidden(hidden, right, "last").tolist() == [[3.0, 4.0], [4.0, 5.0]]
    assert torch.allclose(pool_hidden(hidden, right, "mean_all"), torch.tensor([[13 / 3, 5.0], [2.0, 3.0]]))
    # left padding: row 0's pad is in front
    left_hidden = torch.tensor(
        [
            [[9.0, 9.0], [1.0, 2.0], [3.0, 4.0]],
            [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]],
        ]
    )
    left = torch.tensor([[0, 1, 1], [1, 1, 1]])
    assert pool_hidden(left_hidden, left, "mean").tolist() == [[2.0, 3.0], [2.0, 3.0]]
    assert pool_hidden(left_hidden, left, "last").tolist() == [[3.0, 4.0], [4.0, 5.0]]
    assert torch.allclose(
        pool_hidden(left_hidden, left, "mean_all"), torch.tensor([[13 / 3, 5.0], [2.0, 3.0]])
    )


def test_pool_hidden_mean_all_over_each_rows_own_width():
    """mean_all with widths: the unmasked mean over positions 0..width-1 (a pair's own padded width), so a
    wider batch's extra positions do not count; widths = T is the plain unmasked mean."""
    hidden = torch.tensor(
        [
            [[1.0, 2.0], [3.0, 4.0], [5.0, 0.0], [100.0, 100.0]],
            [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [6.0, 7.0]],
        ]
    )
    got = pool_hidden(hidden, None, "mean_all", torch.tensor([3, 4]))
    assert torch.allclose(got, torch.tensor([[3.0, 2.0], [3.0, 4.0]]))
    assert torch.equal(pool_hidden(hidden, None, "mean_all", torch.tensor([4, 4])), hidden.mean(1))
    for bad in (torch.tensor([0, 4]), torch.tensor([5, 4]), torch.tensor([4])):
        with pytest.raises(ValueError, match="widths"):
            pool_hidden(hidden, None, "mean_all", bad)


def test_pool_hidden_dtype_empty_rows_and_errors():
    hidden = torch.ones(2, 3, 4, dtype=torch.bfloat16)
    mask = torch.tensor([[1, 1, 1], [0, 0, 0]])
    for mode in ("mean", "last"):
        out = pool_hidden(hidden, mask, mode)
        assert out.dtype == torch.float32
        assert out[1].abs().sum().item() == 0.0
        assert out[0].tolist() == [1.0] * 4
    assert pool_hidden(hidden, None, "mean").tolist() == [[1.0] * 4] * 2
    with pytest.raises(ValueError, match="pooling mode"):
        pool_hidden(hidden, mask, "max")  # type: ignore[arg-type]


@pytest.mark.parametrize("side", ["right", "left"])
def test_pooling_independent_of_padding_except_mean_all(side):
    gen = torch.Generator().manual_seed(0)
    seq = torch.randn(1, 4, 3, generator=gen)
    other = torch.randn(1, 7, 3, generator=gen)
    pad = torch.randn(1, 3, 3, generator=gen) * 100  # garbage at pad positions
    padded = torch.cat([seq, pad], 1) if side == "right" else torch.cat([pad, seq], 1)
    seq_mask = (
        torch.tensor([[1, 1, 1, 1, 0, 0, 0]]) if side == "right" else torch.tensor([[0, 0, 0, 1, 1, 1, 1]])
    )
    batch = torch.cat([padded, other], 0)
    batch_mask = torch.cat([seq_mask, torch.ones(1, 7, dtype=torch.long)], 0)
    alone_mask = torch.ones(1, 4, dtype=torch.long)
    for mode in ("mean", "last"):
        alone = pool_hidden(seq, alone_mask, mode)
        in_batch = pool_hidden(batch, batch_mask, mode)[:1]
        assert torch.allclose(alone, in_batch, atol=1e-6), mode
    alone = pool_hidden(seq, alone_mask, "mean_all")
    in_batch = pool_hidden(batch, batch_mask, "mean_all")[:1]
    assert not torch.allclose(alone, in_batch, atol=1e-3)
    assert torch.allclose(in_batch, padded.mean(1), atol=1e-5)  # the authors' hidden_states[-1].mean(dim=1)


def test_pool_hidden_gradient_only_reaches_real_positions():
    hidden = torch.randn(2, 4, 3, requires_grad=True)
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1]])
    for mode in ("mean", "last"):
        hidden.grad = None
        pool_hidden(hidden, mask, mode).sum().backward()
        assert grad(hidden)[~mask.bool()].abs().sum().item() == 0.0, mode


def test_mean_token_logps_saves_only_the_logits_and_per_token_values():
    """Autograd keeps the logits themselves (no copy, no fp32 [B, T, V]) plus O(labelled tokens) values."""
    logits, labels = random_batch(seed=8, batch=3, length=9, vocab=50, dtype=torch.float32)
    leaf = logits.bfloat16().requires_grad_(True)
    saved: list[torch.Tensor] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        mean_token_logps(leaf, labels, chunk_elements=100)
    big = [t for t in saved if t.numel() > labels.numel()]
    assert len(big) == 1
    assert big[0].data_ptr() == leaf.data_ptr() and big[0].dtype == torch.bfloat16
