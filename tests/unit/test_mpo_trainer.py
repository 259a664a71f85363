"""Reward-gap MPO trainer glue: the reference cache gives exactly the live reference's loss and gradient."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

from safetune.config import MethodConfig, RunConfig
from safetune.data.chat import ChatRenderer
from safetune.data.records import ParallelPreferencePair, PreferencePair
from safetune.reference.mpo import ReferenceCache, compute_reference
from safetune.reference.pairs import MpoCollator, encode_pair, encode_pairs, joint_lengths, pair_renderer
from safetune.training.mpo import MpoTrainer


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
    ("pooling", "normalise", "logps", "repr_weight"),
    [
        ("mean", False, "mean", 1.0),
        ("last", False, "mean", 1.0),
        ("mean_all", False, "mean", 1.0),
        ("mean", True, "mean", 1.0),
        ("mean", True, "sum", 1.0),
        ("mean_all", False, "sum", 0.0),
    ],
)
def test_cache_equals_live_reference(setup, tmp_path, pooling, normalise, logps, repr_weight):
    model, rows, pad_id = setup
    # A policy that has moved away from the reference, so that both loss terms are non-zero.
    policy = copy.deepcopy(model)
    with torch.no_grad():
        for param in policy.parameters():
            param.add_(0.01 * torch.randn_like(param))
    policy.train()
    method = MethodConfig(
        name="mpo",
        beta=1.5,
        pooling=pooling,
        normalise_target_gap=normalise,
        mpo_logps=logps,
        repr_weight=repr_weight,
    )
    # mean_all pools over each pair's own padding, so a batch of every pair matches the per-pair cache.
    size = len(rows)
    cache = compute_reference(model, rows, method, batch_size=size, pad_id=pad_id)
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


def test_cache_without_pooled_states_round_trips(tmp_path):
    cache = ReferenceCache(torch.randn(3), None)
    cache.save(tmp_path / "ref.safetensors", {"model": "x"})
    loaded = ReferenceCache.load(tmp_path / "ref.safetensors")
    assert torch.equal(loaded.gaps, cache.gaps) and loaded.pooled is None and loaded.target_gaps is None
    gaps, pooled, target = loaded.lookup(torch.tensor([2, 0]), torch.device("cpu"))
    assert torch.equal(gaps, cache.gaps[[2, 0]]) and pooled is None and target is None


# ---- the ablations (docs/methods/mpo.md "Ablations"), each against its formula from naive log-probs


def _naive_logps(model, ids, mask, labels, average: bool) -> torch.Tensor:
    """Unchunked log-softmax + gather: per-row summed or mean log-prob of the labelled tokens."""
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1].double(), -1)
    target = labels[:, 1:]
    keep = target != -100
    picked = (logp.gather(2, target.clamp(min=0).unsqueeze(-1)).squeeze(-1) * keep).sum(1)
    return picked / keep.sum(1) if average else picked


def _gap(model, batch, side: str, average: bool) -> torch.Tensor:
    logps = _naive_logps(model, batch[f"{side}_ids"], batch[f"{side}_mask"], batch[f"{side}_labels"], average)
    half = logps.shape[0] // 2
    return logps[:half] - logps[half:]


@pytest.mark.parametrize(
    ("logps", "normalise"), [("sum", False), ("sum", True), ("mean", True), ("mean", False)]
)
def test_ablation_losses_match_their_formulas(setup, tmp_path, logps, normalise):
    """repr_weight 0 (no retain term): L = mean_b (beta * G_t - RG_d(ref))^2 where G_t is RG_t(theta), or
    RG_t(theta) - RG_t(ref) (reference-relative), with mean or summed log-probs in every gap."""
    model, rows, pad_id = setup
    policy = copy.deepcopy(model)
    with torch.no_grad():
        for param in policy.parameters():
            param.add_(0.02 * torch.randn_like(param))
    policy.eval()  # no dropout: the naive pass must see the same function
    beta = 0.7
    method = MethodConfig(
        name="mpo", beta=beta, repr_weight=0.0, mpo_logps=logps, normalise_target_gap=normalise
    )
    cache = compute_reference(model, rows, method, batch_size=2, pad_id=pad_id)
    assert cache.pooled is None  # no retain term: no pooled reference states computed or stored
    assert (cache.target_gaps is not None) == normalise
    batch = MpoCollator(pad_id)(rows)
    average = logps == "mean"
    target_gap = _gap(policy, batch, "target", average)
    if normalise:
        target_gap = target_gap - _gap(model, batch, "target", average)
    expected = (beta * target_gap - _gap(model, batch, "dominant", average)).pow(2).mean()
    trainer = _trainer(policy, method, tmp_path, reference=cache)
    with torch.no_grad():
        loss = trainer.compute_loss(policy, batch)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
    # the summed gaps are not the mean ones (the responses have several tokens)
    other = _gap(model, batch, "dominant", not average)
    assert not torch.allclose(cache.gaps.double(), other.float().double(), atol=1e-3)


def test_no_retain_term_skips_the_policys_dominant_pass(setup, tmp_path):
    """repr_weight 0: the policy's decoder never sees the dominant rows, and mean_all needs no pad id
    (nothing is pooled)."""
    model, rows, pad_id = setup
    method = MethodConfig(name="mpo", beta=1.0, repr_weight=0.0, pooling="mean_all")
    cache = compute_reference(model, rows, method, batch_size=3)  # no pad_id: fine without pooling
    batch = MpoCollator(pad_id)(rows)
    seen: list[int] = []

    def count_rows(_module, _args, kwargs, _output):
        seen.append(kwargs["input_ids"].shape[0])

    hook = model.model.register_forward_hook(count_rows, with_kwargs=True)
    try:
        _trainer(model, method, tmp_path, reference=cache).compute_loss(model, batch)
    finally:
        hook.remove()
    assert seen == [2 * len(rows)]  # the target rows only (chosen and rejected), once


def test_reference_cache_key_changes_with_the_logps_and_the_retain_term(setup):
    from safetune.reference.mpo import reference_key

    _, rows, _ = setup

    class _Renderer:
        def fingerprint(self) -> str:
            return "t"

    key = lambda **kw: reference_key("m", _Renderer(), rows, **{"pooling": "mean", **kw})  # type: ignore[arg-type]  # noqa: E731
    keys = {key(), key(logps="sum"), key(pooling=None), key(pooling=None, logps="sum")}
    assert len(keys) == 4
    assert key() == key(logps="mean")


def test_mpo_logps_option_is_checked():
    from safetune.config import ConfigError, load_config

    assert MethodConfig().mpo_logps == "mean"  # the authors' length normalisation
    assert load_config(overrides=["method.mpo_logps=sum"]).method.mpo_logps == "sum"
    with pytest.raises(ConfigError, match=r"method\.mpo_logps"):
        load_config(overrides=["method.mpo_logps=total"])


def test_trainer_needs_exactly_one_reference(setup, tmp_path):
    model, _, _ = setup
    with pytest.raises(ValueError, match="exactly one"):
        _trainer(model, MethodConfig(name="mpo", beta=1.0), tmp_path)


# ---- mean_all: the authors' padding (multiple of 8, the tokenizer's pad id), cached exactly


def _repr_term(trainer: MpoTrainer, policy, batch) -> float:
    trainer._metrics.clear()
    trainer.compute_loss(policy, batch)
    return trainer._metrics["train/repr_loss"][-1]


@pytest.mark.parametrize("pooling", ["mean", "mean_all", "last"])
def test_policy_equal_to_reference_gives_zero_repr_term_with_the_cache(setup, tmp_path, pooling):
    """The authors' term is exactly 0 at policy == reference (same batch through both models). The cache must
    give that too: at their batch size 1 exactly, in mixed batches to rounding. The model's config has no pad
    id (as Llama-3.1's), so a cache that pads with `config.pad_token_id or 0` instead of the tokenizer's pad id
    (what training pads with) sees other pad tokens, and one padded per pair without rounding to 8, or to the
    batch's widest row, sees other padding."""
    model, rows, pad_id = setup
    policy = copy.deepcopy(model)
    policy.config.pad_token_id = None
    assert pad_id != 0
    method = MethodConfig(name="mpo", beta=1.0, pooling=pooling)
    trainer = _trainer(
        policy, method, tmp_path, reference=compute_reference(policy, rows, method, 1, pad_id=pad_id)
    )
    policy.train()  # as in training (the cache pass left it in eval mode)
    collate = MpoCollator(pad_id)
    with torch.no_grad():
        for row in rows:  # the authors' batch size 1: bit for bit
            assert _repr_term(trainer, policy, collate([row])) == 0.0
        # every pair in one batch (rows of very different lengths): other widths, same values to rounding
        assert _repr_term(trainer, policy, collate(rows)) < 1e-10


def test_cache_refuses_mean_all_without_the_tokenizers_pad_id(setup):
    model, rows, _ = setup
    with pytest.raises(ValueError, match="pad_id"):
        compute_reference(model, rows, MethodConfig(name="mpo", beta=1.0, pooling="mean_all"), 1)


def test_collator_pads_to_a_multiple_of_8_with_the_pad_id_and_gives_each_pairs_width(setup):
    _, rows, pad_id = setup
    batch = MpoCollator(pad_id)(rows)
    lengths = [len(r[f"d_{k}_ids"]) for k in ("chosen", "rejected") for r in rows]
    width = batch["dominant_ids"].shape[1]
    assert width % 8 == 0 and max(lengths) <= width < max(lengths) + 8
    assert batch["target_ids"].shape[1] % 8 == 0
    for i, length in enumerate(lengths):
        assert batch["dominant_ids"][i, length:].eq(pad_id).all()
        assert batch["dominant_mask"][i].sum() == length
        assert batch["dominant_labels"][i, length:].eq(-100).all()
    own = [-(-max(len(r["d_chosen_ids"]), len(r["d_rejected_ids"])) // 8) * 8 for r in rows]
    assert batch["dominant_widths"].tolist() == own + own
    # alone, a pair is padded to exactly its own width (the authors' batch 1)
    for row, w in zip(rows, own, strict=True):
        assert MpoCollator(pad_id)([row])["dominant_ids"].shape[1] == w


# ---- truncation: the authors' joint rule (LLaMA-Factory infer_seqlen, cutoff_len 1024)


def test_joint_lengths_hand_values():
    assert joint_lengths(100, 200, 1024) == (100, 200)  # fits: nothing cut
    assert joint_lengths(2000, 300, 1024) == (724, 300)  # short response kept whole, prompt gets the rest
    assert joint_lengths(300, 2000, 1024) == (300, 724)  # short prompt kept whole
    # both long: the response's share int(1024 * 600 / 3600) = 170, the prompt the remaining 854
    assert joint_lengths(3000, 600, 1024) == (854, 170)
    assert joint_lengths(600, 600, 1024) == (512, 512)


def test_mpo_default_is_the_joint_rule_and_per_side_stays_available(tiny_chatml):
    assert (MethodConfig().truncation, MethodConfig().max_length) == ("joint", 1024)
    tokenizer = AutoTokenizer.from_pretrained(tiny_chatml)
    long_prompt = " ".join(["word"] * 700)
    long_answer = " ".join(["yes"] * 300)
    dominant = PreferencePair(long_prompt, long_answer, "no .", "d", "en")
    pair = ParallelPreferencePair(dominant, PreferencePair("hi", "ok .", "no .", "t", "xx"), "0", None)
    config = RunConfig()
    config.method.name = "mpo"
    renderer = pair_renderer(tokenizer, config)
    full_prompt = renderer.prompt_ids(long_prompt)
    full_answer = renderer.response_ids(long_answer)
    assert len(full_prompt) > 512 and len(full_answer) > 128  # the old per-side limits would cut both
    keep_prompt, keep_answer = joint_lengths(len(full_prompt), len(full_answer), 1024)
    (row,) = encode_pairs(renderer, [pair], config.method)
    assert row["d_chosen_ids"] == full_prompt[:keep_prompt] + full_answer[:keep_answer]
    assert row["d_rejected_ids"][:keep_prompt] == full_prompt[:keep_prompt]  # one prompt length per language
    assert len(row["d_chosen_ids"]) <= 1024 and row["d_chosen_labels"][:keep_prompt] == [-100] * keep_prompt
    assert row["t_chosen_ids"] == renderer.encode("hi", "ok .").input_ids  # short: untouched
    config.method.truncation = "per_side"
    (old,) = encode_pairs(pair_renderer(tokenizer, config), [pair], config.method)
    assert len(old["d_chosen_ids"]) == config.chat.max_prompt_tokens + config.chat.max_response_tokens
