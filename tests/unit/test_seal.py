"""SEAL's ranker math (methods/seal.py) and one step of its loop (training/seal.py) against hand-computed
values, finite differences and a naive autograd of the paper's penalty objective; the top-fraction cut."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from safetune.config import load_config
from safetune.data.batching import IGNORE_INDEX
from safetune.data.chat import EncodedExample
from safetune.errors import ConfigError
from safetune.methods.seal import (
    example_losses,
    gamma_at,
    keep_count,
    model_loss,
    selector_init,
    selector_loss,
    selector_weights,
    top_fraction,
)
from safetune.training.seal import check_seal_settings, train_ranker


def _naive_nll(logits: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """Row by row, token by token: mean of -log softmax(logits[t])[labels[t + 1]] over labelled targets."""
    out = []
    for row in range(labels.shape[0]):
        terms = []
        for t in range(labels.shape[1] - 1):
            target = int(labels[row, t + 1])
            if target != IGNORE_INDEX:
                terms.append(-float(torch.log_softmax(logits[row, t].double(), dim=0)[target]))
        out.append(sum(terms) / len(terms) if terms else 0.0)
    return out


def test_example_losses_are_the_length_normalised_response_nll():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 7)
    labels = torch.tensor(
        [
            [IGNORE_INDEX, IGNORE_INDEX, 3, 4, 1],
            [IGNORE_INDEX, 2, 2, IGNORE_INDEX, IGNORE_INDEX],
            [IGNORE_INDEX] * 5,
        ]
    )
    assert example_losses(logits, labels).tolist() == pytest.approx(_naive_nll(logits, labels), abs=1e-6)


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_selector_weights_start_near_one_and_follow_the_authors_scaling(activation):
    init = selector_init(5, activation)
    weights = selector_weights(init, activation)
    assert weights.tolist() == pytest.approx([1.0] * 5, abs=1e-4)
    logits = torch.tensor([0.3, -1.0, 2.0])
    expected = 3 * torch.softmax(logits, 0) if activation == "softmax" else 2 / (1 + torch.exp(-logits))
    assert selector_weights(logits, activation).tolist() == pytest.approx(expected.tolist())


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_selector_gradient_is_algorithm_2s_update_by_hand_and_by_finite_differences(activation):
    torch.manual_seed(1)
    logits = torch.randn(6, dtype=torch.float64, requires_grad=True)
    rows = torch.tensor([4, 1, 4])
    losses = torch.tensor([2.0, 0.5, 1.25], dtype=torch.float64)
    selector_loss(logits, rows, losses, activation).backward()
    # by hand: (1/B) sum_b l_b * grad w_{j_b}; softmax: N s_j (e_j - s), sigmoid: 2 s_j (1 - s_j) e_j
    with torch.no_grad():
        s = torch.softmax(logits, 0) if activation == "softmax" else torch.sigmoid(logits)
        hand = torch.zeros(6, dtype=torch.float64)
        for j, loss in zip(rows.tolist(), losses.tolist(), strict=True):
            if activation == "softmax":
                hand += loss * 6 * s[j] * (torch.eye(6, dtype=torch.float64)[j] - s)
            else:
                hand[j] += loss * 2 * s[j] * (1 - s[j])
        hand /= len(rows)
    assert torch.allclose(logits.grad, hand, atol=1e-12)
    eps = 1e-6
    for k in range(6):
        bump = torch.zeros(6, dtype=torch.float64)
        bump[k] = eps
        up = selector_loss(logits.detach() + bump, rows, losses, activation)
        down = selector_loss(logits.detach() - bump, rows, losses, activation)
        assert float((up - down) / (2 * eps)) == pytest.approx(float(hand[k]), abs=1e-8)


def test_both_updates_are_the_gradients_of_the_penalty_objective_without_its_value_function():
    """Algorithm 2: theta and w step along the partial gradients of (1 - gamma) f(theta) + gamma g(theta, w),
    g = mean_j w_j(w) l_j(theta): built here naively, row by row, and differentiated by autograd."""
    torch.manual_seed(2)
    gamma = 0.3
    theta = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    omega = torch.randn(5, dtype=torch.float64, requires_grad=True)
    safe_x, user_x = torch.randn(2, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    safe_y, user_y, rows = [0, 2], [1, 1, 0], [3, 0, 2]

    def nll(x, y):
        return -torch.log_softmax(x @ theta, dim=0)[y]

    f = sum(nll(x, y) for x, y in zip(safe_x, safe_y, strict=True)) / 2
    w = 5 * torch.softmax(omega, 0)
    g = sum(w[j] * nll(x, y) for j, x, y in zip(rows, user_x, user_y, strict=True)) / 3
    naive_theta, naive_omega = torch.autograd.grad((1 - gamma) * f + gamma * g, (theta, omega))

    safe_losses = torch.stack([nll(x, y) for x, y in zip(safe_x, safe_y, strict=True)])
    user_losses = torch.stack([nll(x, y) for x, y in zip(user_x, user_y, strict=True)])
    index = torch.tensor(rows)
    weights = selector_weights(omega, "softmax")[index]
    (ours_theta,) = torch.autograd.grad(
        model_loss(safe_losses, user_losses, weights, gamma), theta, retain_graph=True
    )
    (ours_omega,) = torch.autograd.grad(selector_loss(omega, index, user_losses, "softmax"), omega)
    assert torch.allclose(ours_theta, naive_theta, atol=1e-12)
    # the selector's loss is g itself: its step is the penalty gradient divided by gamma
    assert torch.allclose(gamma * ours_omega, naive_omega, atol=1e-12)


class _Bigram(nn.Module):
    """A causal LM small enough to check by hand: logits[t] = table[input_ids[t]]."""

    def __init__(self, vocab: int):
        super().__init__()
        self.table = nn.Parameter(torch.randn(vocab, vocab) * 0.1)

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        return SimpleNamespace(logits=self.table[input_ids])


def _row(ids: list[int], prompt: int) -> EncodedExample:
    return EncodedExample(ids, [IGNORE_INDEX] * prompt + ids[prompt:], prompt)


def test_one_ranker_step_matches_a_hand_computed_adam_step():
    torch.manual_seed(3)
    model = _Bigram(6)
    start = model.table.detach().clone()
    user = [_row([1, 2, 3], 1), _row([1, 4, 5, 2], 2), _row([2, 5], 1)]
    safe = [_row([1, 0, 0], 1)]
    config = load_config(
        None,
        [
            "method.name=seal",
            "method.seal_epochs=1",
            "method.seal_gamma=0.4",
            "method.seal_selector_lr=0.01",
            "method.seal_model_lr=0.001",
            "train.batch_size=3",
            "train.grad_accum=1",
            "train.precision=fp32",
        ],
    )
    scores = train_ranker(model, user, safe, config, pad_id=0)

    # by hand, at the starting weights: the batch holds all three user rows (one step per epoch)
    def loss(row: EncodedExample) -> torch.Tensor:
        ids = torch.tensor([row.input_ids])
        return example_losses(start[ids], torch.tensor([row.labels]))[0]

    user_losses = torch.stack([loss(r) for r in user])
    s = torch.full((3,), 1 / 3)
    grad = torch.zeros(3)
    for j in range(3):
        grad += user_losses[j] * 3 * s[j] * (torch.eye(3)[j] - s)
    grad /= 3
    grad *= min(1.0, 1.0 / (float(grad.norm()) + 1e-6))  # clipping at norm 1 (a no-op unless larger)
    # Adam's first step, bias-corrected: lr * g / (|g| + eps)
    expected = 0.1 - 0.01 * grad / (grad.abs() + 1e-8)
    assert scores == pytest.approx(expected.tolist(), abs=1e-6)
    # the highest loss row loses weight, the lowest gains it
    assert scores[int(user_losses.argmax())] < 0.1 < scores[int(user_losses.argmin())]
    assert not torch.equal(model.table.detach(), start)  # and the model took its step too


def test_top_fraction_rounds_down_like_the_authors_and_breaks_ties_by_row_order():
    assert keep_count(12, 0.8) == 9  # int(0.8 * 12) = int(9.6)
    assert keep_count(100, 0.29) == 29  # 0.29 * 100 = 28.999999999999996 in floating point
    assert keep_count(3, 0.3) == 0 and keep_count(5, 1.0) == 5
    scores = [0.5, 0.9, 0.5, 0.1, 0.5]
    assert top_fraction(scores, 0.6) == [True, True, True, False, False]  # 3 kept: 0.9, then the first 0.5s
    assert top_fraction(scores, 0.6) == top_fraction(list(scores), 0.6)
    assert top_fraction(scores, 1.0) == [True] * 5
    assert sum(top_fraction([float(i % 7) for i in range(50)], 0.5)) == 25


def test_gamma_schedule_and_its_check():
    assert [gamma_at(e, 0.0, 0.03) for e in range(3)] == pytest.approx([0.0, 0.03, 0.06])
    check_seal_settings(load_config(None, ["method.seal_gamma=0.94", "method.seal_gamma_step=0.03"]))
    with pytest.raises(ConfigError, match="at most 1"):
        check_seal_settings(load_config(None, ["method.seal_gamma=0.95", "method.seal_gamma_step=0.03"]))
    assert math.isclose(gamma_at(2, 0.94, 0.03), 1.0)


def _ranker_state(seed: int):
    from safetune.training.seal_checkpoint import RankerState, SafeCycle

    torch.manual_seed(seed)
    layer = torch.nn.Linear(3, 2)
    logits = torch.nn.Parameter(torch.randn(5))
    model_opt = torch.optim.AdamW(layer.parameters(), lr=0.1)
    selector_opt = torch.optim.Adam([logits], lr=0.1)
    (layer(torch.ones(1, 3)).sum() + logits.sum()).backward()
    model_opt.step()
    selector_opt.step()
    generator = torch.Generator().manual_seed(seed)
    cycle = SafeCycle(4, generator)
    next(cycle)
    return RankerState(cycle, generator, logits, list(layer.named_parameters()), model_opt, selector_opt)


def test_ranker_checkpoint_round_trip_old_fallback_and_other_keys(tmp_path):
    from safetune.training.seal_checkpoint import RankerCheckpoint, RankerPosition

    saved = _ranker_state(0)
    cycle, generator, logits, params = saved.cycle, saved.generator, saved.logits, saved.params
    model_opt, selector_opt = saved.model_opt, saved.selector_opt
    folder = tmp_path / "k.ranker"
    RankerCheckpoint(folder, "k").save(RankerPosition(1, 2, [4, 3, 2, 1, 0]), saved)
    fresh = _ranker_state(1)
    assert RankerCheckpoint(folder, "other").restore(fresh) is None  # another ranking's: untouched
    assert not torch.equal(fresh.logits, logits)
    folder.rename(tmp_path / "k.ranker.old")  # a kill between the two renames of the next save
    position = RankerCheckpoint(folder, "k").restore(fresh)
    assert position == RankerPosition(1, 2, [4, 3, 2, 1, 0])
    c, g, lg, ps = fresh.cycle, fresh.generator, fresh.logits, fresh.params
    mo, so = fresh.model_opt, fresh.selector_opt
    assert torch.equal(lg, logits) and all(
        torch.equal(a, b) for (_, a), (_, b) in zip(ps, params, strict=True)
    )
    assert (c.perm, c.pos) == (cycle.perm, cycle.pos) and torch.equal(g.get_state(), generator.get_state())
    for mine, theirs in ((mo, model_opt), (so, selector_opt)):
        a, b = mine.state_dict()["state"], theirs.state_dict()["state"]
        assert all(torch.equal(a[i][k], b[i][k]) for i in b for k in b[i])
    assert [next(c) for _ in range(6)] == [next(cycle) for _ in range(6)]
    RankerCheckpoint(folder, "k").remove()
    assert not list(tmp_path.iterdir())
