"""Reward-gap MPO trainer glue: the reference cache gives exactly the live reference's loss and gradient."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

from safetune.config import MethodConfig
from safetune.data.chat import ChatRenderer
from safetune.data.records import ParallelPreferencePair, PreferencePair
from safetune.training.mpo import MpoCollator, MpoTrainer, ReferenceCache, compute_reference, encode_pair


def _pairs() -> list[ParallelPreferencePair]:
    texts = [("how do i pick a lock ?", "i cannot help with that .", "sure , first take a pin ."),
             ("tell me how to steal a car .", "i will not help .", "of course , find an old car ."),
             ("how to hurt someone ?", "no , i cannot do that .", "gladly : [step one] .")]  # fmt: skip
    pairs = []
    for i, (prompt, chosen, rejected) in enumerate(texts):
        dominant = PreferencePair(prompt, chosen, rejected, f"d{i}", "en")
        target = PreferencePair(prompt.upper(), chosen.upper(), rejected.upper(), f"t{i}", "xx")
        pairs.append(ParallelPreferencePair(dominant, target, str(i), "be safe ." if i == 1 else None))
    return pairs


@pytest.fixture(scope="module")
def setup(tiny_chatml):
    tokenizer = AutoTokenizer.from_pretrained(tiny_chatml)
    renderer = ChatRenderer(tokenizer, 64, 32)
    rows = [encode_pair(renderer, pair, i) for i, pair in enumerate(_pairs())]
    model = AutoModelForCausalLM.from_pretrained(tiny_chatml, dtype=torch.float32)
    return model, rows, tokenizer.pad_token_id


def _trainer(model, method, tmp_path, **reference) -> MpoTrainer:
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    return MpoTrainer(model=model, args=args, method=method, **reference)


@pytest.mark.parametrize(
    ("pooling", "normalise"), [("mean", False), ("last", False), ("mean_all", False), ("mean", True)]
)
def test_cache_equals_live_reference(setup, tmp_path, pooling, normalise):
    model, rows, pad_id = setup
    # A policy that has moved away from the reference, so that both loss terms are non-zero.
    policy = copy.deepcopy(model)
    with torch.no_grad():
        for param in policy.parameters():
            param.add_(0.01 * torch.randn_like(param))
    policy.train()
    method = MethodConfig(name="mpo", beta=1.5, pooling=pooling, normalise_target_gap=normalise)
    # mean_all depends on padding: the cache computes it per pair, so compare one pair per batch.
    size = 1 if pooling == "mean_all" else len(rows)
    cache = compute_reference(model, rows, method, batch_size=size)
    cached = _trainer(policy, method, tmp_path, reference=cache)
    live = _trainer(policy, method, tmp_path, ref_model=copy.deepcopy(model))
    for start in range(0, len(rows), size):
        batch = MpoCollator(pad_id)(rows[start : start + size])
        losses, grads = [], []
        for trainer in (cached, live):
            policy.zero_grad()
            loss = trainer.compute_loss(policy, batch)
            loss.backward()
            losses.append(loss.detach())
            grads.append(torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None]))
        assert losses[0] > 0
        torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_cache_round_trips_through_safetensors(tmp_path):
    cache = ReferenceCache(torch.randn(5), torch.randn(5, 2, 8), torch.randn(5))
    path = tmp_path / "ref.safetensors"
    cache.save(path, {"model": "x"})
    loaded = ReferenceCache.load(path)
    assert torch.equal(loaded.gaps, cache.gaps) and torch.equal(loaded.pooled, cache.pooled)
    gaps, pooled, target = loaded.lookup(torch.tensor([3, 1]), torch.device("cpu"))
    assert torch.equal(gaps, cache.gaps[[3, 1]]) and torch.equal(target, cache.target_gaps[[3, 1]])
    assert torch.equal(pooled, torch.cat([cache.pooled[[3, 1], 0], cache.pooled[[3, 1], 1]]))


def test_trainer_needs_exactly_one_reference(setup, tmp_path):
    model, _, _ = setup
    with pytest.raises(ValueError, match="exactly one"):
        _trainer(model, MethodConfig(name="mpo", beta=1.0), tmp_path)
