"""Token-wise constrained SFT (methods/losses.py: tokenwise_betas, tokenwise_loss) against hand-computed
values, a naive per-token loop and the authors' surrogate (their soft_sft_loss, written out here)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from safetune.data.batching import IGNORE_INDEX
from safetune.methods.losses import shift_targets, target_logps, tokenwise_betas, tokenwise_loss

X = IGNORE_INDEX


def _batch(seed: int = 0, vocab: int = 11):
    """Two rows with different prompt lengths (3 and 1 prompt tokens), 7 and 3 response tokens, padding."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor(
        [
            [X, X, X, 4, 5, 6, 7, 8, 9, 1],
            [X, 2, 3, 4, X, X, X, X, X, X],
        ]
    )
    logits = torch.randn(2, 10, vocab, generator=g, dtype=torch.float64)
    targets = shift_targets(labels)
    # The aligned model: near the policy, with a few large gaps on both sides (the clamp must bite).
    ref = target_logps(logits, targets) + torch.randn(2, 10, generator=g, dtype=torch.float64) * 3
    ref = torch.where(targets != X, ref, torch.zeros_like(ref))
    return logits, labels, ref.float()


def test_beta_schedule_counts_supervised_tokens_per_row():
    _, labels, _ = _batch()
    betas = tokenwise_betas(shift_targets(labels), beta=0.1)
    row0 = betas[0][shift_targets(labels)[0] != X].tolist()
    row1 = betas[1][shift_targets(labels)[1] != X].tolist()
    assert row0 == pytest.approx([0.5, 2.0, 2.0, 2.0, 2.0, 0.1, 0.1])
    assert row1 == pytest.approx([0.5, 2.0, 2.0])
    assert (betas[shift_targets(labels) == X] == 0).all()
    flat = tokenwise_betas(shift_targets(labels), beta=0.3, bias_length=0)
    assert flat[shift_targets(labels) != X].tolist() == pytest.approx([0.3] * 10)


def _authors_beta_list(length: int, beta=0.1, bias_factor=20.0, bias_length=5, first=5.0) -> list[float]:
    prefix = [beta * bias_factor] * bias_length
    if bias_length:
        prefix[0] = beta * first
    return prefix[:length] if length <= bias_length else prefix + [beta] * (length - bias_length)


def _authors_surrogate(logits, labels, ref, min_weight=1e-3, **schedule):
    """The authors' soft_sft_loss + losses.mean(): per row, the supervised tokens in order, a detached
    weight 2 (1 - sigmoid(beta (pol - ref))) clamped at 1e-3, times -log pi; mean over the batch's tokens."""
    logp = torch.log_softmax(logits, -1)
    targets = shift_targets(labels)
    losses = []
    for b in range(labels.shape[0]):
        pol = [logp[b, t, targets[b, t]] for t in range(labels.shape[1]) if targets[b, t] != X]
        rf = [ref[b, t] for t in range(labels.shape[1]) if targets[b, t] != X]
        betas = _authors_beta_list(len(pol), **schedule)
        for p, r, be in zip(pol, rf, betas, strict=True):
            w = (2 * (1 - torch.sigmoid(be * (p - r)))).detach().clamp(min=min_weight)
            losses.append(-(w * p))
    return torch.stack(losses).mean()


def _naive_objective(logits, labels, ref, **schedule) -> float:
    logp = torch.log_softmax(logits.double(), -1)
    targets = shift_targets(labels)
    total, count = 0.0, 0
    for b in range(labels.shape[0]):
        k = 0
        for t in range(labels.shape[1]):
            if targets[b, t] == X:
                continue
            beta = _authors_beta_list(k + 1, **schedule)[k]
            delta = float(ref[b, t]) - float(logp[b, t, targets[b, t]])
            total += 2 / beta * math.log1p(math.exp(beta * delta))
            count, k = count + 1, k + 1
    return total / count


@pytest.mark.parametrize("min_weight", [1e-3, 0.0])
def test_gradient_is_the_authors_surrogate_and_value_the_objective(min_weight):
    logits, labels, ref = _batch()
    ours_in = logits.clone().float().requires_grad_(True)
    out = tokenwise_loss(ours_in, labels, ref, beta=0.1, min_weight=min_weight, chunk_elements=7)
    out.loss.backward()
    theirs_in = logits.clone().float().requires_grad_(True)
    surrogate = _authors_surrogate(theirs_in, labels, ref, min_weight=min_weight)
    surrogate.backward()
    assert torch.allclose(ours_in.grad, theirs_in.grad, atol=1e-6)
    assert out.surrogate.item() == pytest.approx(surrogate.item(), rel=1e-5)
    assert out.loss.item() == pytest.approx(_naive_objective(logits, labels, ref), rel=1e-5)
    assert out.objective.item() == pytest.approx(out.loss.item())


def test_clamp_matters_where_the_policy_far_exceeds_the_aligned_model():
    logits, labels, ref = _batch()
    ref = ref - 20 * (shift_targets(labels) != X)  # Delta << 0 everywhere: weights below 1e-3 at beta 2
    grads = []
    for min_weight in (1e-3, 0.0):
        x = logits.clone().float().requires_grad_(True)
        tokenwise_loss(x, labels, ref, min_weight=min_weight).loss.backward()
        grads.append(x.grad)
    assert not torch.allclose(grads[0], grads[1])


def test_hand_computed_single_token():
    # Two-token vocabulary, uniform policy: log pi(y) = -log 2; the aligned model is 1 nat likelier.
    labels = torch.tensor([[X, 0]])
    logits = torch.zeros(1, 2, 2, requires_grad=True)
    ref = torch.tensor([[-math.log(2) + 1.0, 0.0]])
    out = tokenwise_loss(logits, labels, ref, beta=0.1)  # first response token: beta_t = 0.5
    assert out.loss.item() == pytest.approx(4 * math.log1p(math.exp(0.5)), rel=1e-6)
    out.loss.backward()
    w = 2 / (1 + math.exp(-0.5))
    assert logits.grad[0, 0].tolist() == pytest.approx([-0.5 * w, 0.5 * w], rel=1e-6)
    assert logits.grad[0, 1].tolist() == [0.0, 0.0]


def test_small_beta_gradient_is_token_mean_sft():
    logits, labels, ref = _batch()
    x = logits.clone().float().requires_grad_(True)
    tokenwise_loss(x, labels, ref, beta=1e-7, bias_factor=1, first_token_factor=1).loss.backward()
    y = logits.clone().float().requires_grad_(True)
    targets = shift_targets(labels)
    F.cross_entropy(y.view(-1, y.shape[-1]), targets.view(-1), ignore_index=X).backward()
    assert torch.allclose(x.grad, y.grad, atol=1e-6)


def test_chunking_and_inplace_do_not_change_the_result():
    logits, labels, ref = _batch(seed=3)
    results = []
    for chunk, inplace in ((1 << 21, False), (5, False), (5, True)):
        x = logits.clone().float().requires_grad_(True)
        y = x * 1.0  # a non-leaf the loss may overwrite
        out = tokenwise_loss(y, labels, ref, chunk_elements=chunk, inplace=inplace)
        out.loss.backward()
        results.append((out.loss.item(), x.grad))
    for value, grad in results[1:]:
        assert value == pytest.approx(results[0][0], rel=1e-6)
        assert torch.allclose(grad, results[0][1], atol=1e-7)


def test_beta_must_be_positive():
    logits, labels, ref = _batch()
    with pytest.raises(ValueError, match="beta > 0"):
        tokenwise_loss(logits.float(), labels, ref, beta=0.0)
