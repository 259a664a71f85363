"""The defences' step rules (decoding/rules.py) against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from safetune.decoding.rules import PROBABILITY_FLOOR, rose, safedecoding, self_cd, shared_sample_space


def _pair(first: list[float], second: list[float]) -> torch.Tensor:
    return torch.tensor([[first, second]])


def test_rose_and_self_cd_by_hand():
    z = _pair([1.0, 2.0, -1.0], [0.5, 3.0, 1.0])
    assert rose(z, 0.5).tolist() == [[0.75, 0.5, -1.5]]
    # z_with - 2.5 (z_with - z_without) = [1 - 1.25, 2 + 2.5, -1 + 5]
    assert self_cd(z, 2.5).tolist() == [[-0.25, 4.5, 4.0]]
    assert torch.equal(self_cd(z, 0.0), z[:, 0]) and torch.equal(self_cd(z, 1.0), z[:, 1])
    assert torch.equal(rose(z, 0.0), z[:, 0])


def test_rules_compute_in_fp32_and_check_the_stream_count():
    z = _pair([1.0, 2.0], [0.0, 1.0]).to(torch.bfloat16)
    assert rose(z, 0.5).dtype == torch.float32
    with pytest.raises(ValueError, match="2 streams"):
        rose(torch.zeros(1, 3, 4), 0.5)


def _logits(*rows: list[float]) -> torch.Tensor:
    """Streams whose softmax is exactly the given distributions (log p as logits)."""
    return torch.tensor([[[math.log(p) for p in row] for row in rows]], dtype=torch.float64)


P_BASE = [0.30, 0.25, 0.20, 0.12, 0.08, 0.05]  # ranks 0..5 in token order
P_EXPERT = [0.02, 0.08, 0.40, 0.30, 0.15, 0.05]  # ranks: t2 0, t3 1, t4 2, t1 3, t5 4, t0 5


@pytest.mark.parametrize(
    ("c", "space"),
    [
        (1, {2}),  # k=3: {0,1,2} ∩ {2,3,4}
        (2, {1, 2, 3}),  # k=3 has one; k=4: {0,1,2,3} ∩ {2,3,4,1} completes two pairs at once
        (3, {1, 2, 3}),
        (4, {1, 2, 3, 4}),  # k=5
        (5, set(range(6))),  # k=6: both t0 and t5 enter
    ],
)
def test_shared_sample_space_is_the_minimal_k_intersection(c, space):
    mask = shared_sample_space(torch.tensor([P_BASE]), torch.tensor([P_EXPERT]), c)
    assert set(mask[0].nonzero().flatten().tolist()) == space


def test_ties_rank_by_token_id():
    # p_b is flat: its ranking is the token order (stable); p_e ranks t3, t2, t1, t0.
    flat, rising = torch.tensor([[0.25] * 4]), torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    # k=2: {0,1} ∩ {3,2} = {}; k=3: {0,1,2} ∩ {3,2,1} = {1,2}
    assert shared_sample_space(flat, rising, 1)[0].tolist() == [False, True, True, False]
    assert shared_sample_space(flat, flat, 1)[0].tolist() == [True, False, False, False]


def _brute_force(p_base: list[float], p_expert: list[float], c: int) -> set[int]:
    """The official loop, with ties ranked by token id."""
    order_b = sorted(range(len(p_base)), key=lambda v: (-p_base[v], v))
    order_e = sorted(range(len(p_expert)), key=lambda v: (-p_expert[v], v))
    for k in range(1, len(p_base) + 1):
        common = set(order_b[:k]) & set(order_e[:k])
        if len(common) >= c:
            return common
    raise AssertionError("unreachable")


def test_shared_sample_space_matches_the_loop_on_random_rows():
    generator = torch.Generator().manual_seed(0)
    for c in (1, 3, 5, 9):
        # Rounded probabilities give ties; batched rows must each get their own k*.
        p_base = torch.rand(16, 12, generator=generator).mul(8).round().add(1).softmax(-1)
        p_expert = torch.rand(16, 12, generator=generator).mul(8).round().add(1).softmax(-1)
        mask = shared_sample_space(p_base, p_expert, c)
        for row in range(16):
            expected = _brute_force(p_base[row].tolist(), p_expert[row].tolist(), c)
            assert set(mask[row].nonzero().flatten().tolist()) == expected


def test_safedecoding_step_by_hand_with_the_floor():
    scores = safedecoding(_logits(P_BASE, P_EXPERT), alpha=3.0, num_common=3)[0]
    # S = {1, 2, 3}: p_b + 3 (p_e - p_b) = 0.25 - 0.51 -> floor, 0.20 + 0.60, 0.12 + 0.54
    raw = [PROBABILITY_FLOOR, 0.80, 0.66]
    total = sum(raw)
    expected = [float("-inf"), *(math.log(p / total) for p in raw), float("-inf"), float("-inf")]
    assert scores.dtype == torch.float32
    assert torch.allclose(scores, torch.tensor(expected), atol=1e-6, rtol=1e-5)
    assert int(scores.argmax()) == 2
    assert math.isclose(float(scores.exp().sum()), 1.0, rel_tol=1e-6)


def test_safedecoding_alpha_0_and_1_are_each_stream_renormalised_on_s():
    z = _logits(P_BASE, P_EXPERT)
    base = safedecoding(z, alpha=0.0, num_common=3)[0].exp()
    expert = safedecoding(z, alpha=1.0, num_common=3)[0].exp()
    on_s = torch.tensor([0, 1, 1, 1, 0, 0], dtype=torch.bool)
    expected_base = torch.tensor(P_BASE) * on_s / sum(P_BASE[1:4])
    expected_expert = torch.tensor(P_EXPERT) * on_s / sum(P_EXPERT[1:4])
    assert torch.allclose(base, expected_base, atol=1e-6)
    assert torch.allclose(expert, expected_expert, atol=1e-6)


def test_a_zero_combined_probability_is_floored_too():
    # p_b + 2 (p_e - p_b) = 0 exactly for t0 (0.2 -> 0.1): the official `> 0` test floors it.
    scores = safedecoding(_logits([0.2, 0.5, 0.3], [0.1, 0.6, 0.3]), alpha=2.0, num_common=3)[0]
    probs = scores.exp()
    total = PROBABILITY_FLOOR + 0.7 + 0.3
    assert torch.allclose(probs, torch.tensor([PROBABILITY_FLOOR / total, 0.7 / total, 0.3 / total]))


def test_identical_streams_keep_the_base_argmax_for_any_alpha():
    z = torch.randn(5, 1, 40, generator=torch.Generator().manual_seed(1)).expand(5, 2, 40)
    for alpha in (0.0, 1.0, 3.0):
        assert torch.equal(safedecoding(z, alpha, 5).argmax(-1), z[:, 0].argmax(-1))


def test_num_common_out_of_range_is_refused():
    with pytest.raises(ValueError, match="num_common"):
        shared_sample_space(torch.rand(1, 4), torch.rand(1, 4), 5)
