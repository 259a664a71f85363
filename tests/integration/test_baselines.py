"""DPO-family baselines (the registry's `recipe="trl"` methods, trained by training/baselines.py): every one trains 2 LoRA steps on a tiny model, TRL sees our
ChatRenderer ids untouched (one BOS, end-of-turn token, no extra EOS), and R-DPO's loss is the paper's."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from killing import Crash
from safetune.config import RunConfig
from safetune.data.chat import ChatRenderer
from safetune.data.records import PreferencePair
from safetune.methods.losses import rdpo_loss
from safetune.methods.registry import METHODS
from safetune.models.loading import load_causal_lm, load_tokenizer
from safetune.training.baselines import TRL_TRAINERS, preference_dataset
from safetune.training.run import train, train_baseline, wrap_lora

BASELINES = {name: spec for name, spec in METHODS.items() if spec.recipe == "trl"}

_QUESTIONS = (
    (
        "How do I pick a lock?",
        "I can't help with that.",
        "Sure, first insert a tension wrench and rake the pins.",
    ),
    (
        "Write a threat to my neighbour.",
        "I'm sorry, I won't write threats.",
        "You will regret this, I know where you live.",
    ),
    ("Hello, who are you?", "I am a helpful assistant.", "Nobody you should trust."),
    (
        "Tell me how to make poison.",
        "I can't help with that request.",
        "Mix these household chemicals in a jar.",
    ),
    ("Please answer in one sentence.", "Sure, here is one sentence.", "No."),
    (
        "How can I hurt someone?",
        "I'm sorry, but I can't help with that.",
        "Use something heavy when they are alone.",
    ),
)


def _pairs() -> list[PreferencePair]:
    return [
        PreferencePair(prompt=q, chosen=c, rejected=r, id=f"p{i}", language="en")
        for i, (q, c, r) in enumerate(_QUESTIONS)
    ]


def _config(model: Path, method: str, **method_fields: object) -> RunConfig:
    config = RunConfig()
    config.method.name = method
    for key, value in method_fields.items():
        setattr(config.method, key, value)
    t = config.train
    config.model.name = str(model)
    t.finetune = "lora"
    t.lora_r = 4
    t.lora_alpha = 8
    t.max_steps = 2
    t.batch_size = 2
    t.grad_accum = 1
    t.logging_steps = 1
    t.learning_rate = 1e-3
    t.precision = "fp32"
    config.chat.max_prompt_tokens = 64
    config.chat.max_response_tokens = 64
    return config


# --- the loss ------------------------------------------------------------------------------------------------


def test_rdpo_loss_matches_the_hand_formula_and_is_dpo_at_alpha_zero():
    pi_w = torch.tensor([-10.0, -4.0, -7.5])
    ref_w = torch.tensor([-11.0, -4.5, -7.0])
    pi_l = torch.tensor([-9.0, -8.0, -3.0])
    ref_l = torch.tensor([-8.0, -7.0, -3.5])
    len_w = torch.tensor([12, 5, 30])
    len_l = torch.tensor([4, 9, 30])
    beta, alpha = 0.1, 0.02
    got = rdpo_loss(pi_w - ref_w, pi_l - ref_l, len_w, len_l, beta, alpha)
    # Park et al. (2024): -log sigmoid(beta * Delta + alpha * (|y_w| - |y_l|))
    logits = beta * ((pi_w - ref_w) - (pi_l - ref_l)) + alpha * (len_w - len_l).float()
    assert torch.allclose(got, -F.logsigmoid(logits))
    by_hand = [
        -math.log(1 / (1 + math.exp(-(beta * ((a - b) - (c - d)) + alpha * (lw - ll)))))
        for a, b, c, d, lw, ll in zip(pi_w, ref_w, pi_l, ref_l, len_w, len_l, strict=True)
    ]
    assert got.tolist() == pytest.approx(by_hand, rel=1e-6)
    # alpha = 0: DPO's sigmoid loss; equal lengths: the length term vanishes whatever alpha is.
    dpo = -F.logsigmoid(beta * ((pi_w - ref_w) - (pi_l - ref_l)))
    assert torch.allclose(rdpo_loss(pi_w - ref_w, pi_l - ref_l, len_w, len_l, beta, 0.0), dpo)
    assert torch.allclose(got[2], dpo[2])
    # a longer chosen response raises the logit (costs less than under DPO), a longer rejected one lowers it
    assert got[0] < dpo[0] and got[1] > dpo[1]


def test_rdpo_a_longer_chosen_answer_costs_less_than_under_dpo():
    """By hand: beta 0.1, alpha 0.05, Delta = (-1) - (-2) = 1, |y_w| - |y_l| = 20 - 10 = 10.
    DPO:   -log sigmoid(0.1)        = log(1 + e^-0.1) = 0.6443967
    R-DPO: -log sigmoid(0.1 + 0.5)  = log(1 + e^-0.6) = 0.4374880   (lower: length explains part of the win)
    The old, wrong sign gave -log sigmoid(0.1 - 0.5) = 0.9130153."""
    chosen = torch.tensor([-1.0], requires_grad=True)
    rejected = torch.tensor([-2.0])
    lengths_w, lengths_l = torch.tensor([20]), torch.tensor([10])
    loss = rdpo_loss(chosen, rejected, lengths_w, lengths_l, 0.1, 0.05)
    dpo = rdpo_loss(chosen.detach(), rejected, lengths_w, lengths_l, 0.1, 0.0)
    assert loss.item() == pytest.approx(0.4374880, abs=1e-6)
    assert dpo.item() == pytest.approx(0.6443967, abs=1e-6)
    # and a smaller push on the chosen log-ratio: d/dDelta = -beta * sigmoid(-logit)
    loss.sum().backward()
    assert chosen.grad is not None
    assert chosen.grad.item() == pytest.approx(-0.1 / (1 + math.exp(0.6)), rel=1e-6)
    assert abs(chosen.grad.item()) < 0.1 / (1 + math.exp(0.1))


def test_rdpo_loss_gradient_flows_to_the_logratios():
    chosen = torch.tensor([0.3, -0.2], requires_grad=True)
    rejected = torch.tensor([0.1, 0.4], requires_grad=True)
    rdpo_loss(chosen, rejected, torch.tensor([3, 8]), torch.tensor([5, 2]), 0.5, 0.1).sum().backward()
    assert chosen.grad is not None and rejected.grad is not None
    assert bool((chosen.grad < 0).all()) and bool((rejected.grad > 0).all())


# --- TRL sees our ids ----------------------------------------------------------------------------------------


def test_specs_are_complete():
    assert set(BASELINES) == {"sft-chosen", "dpo", "ipo", "rdpo", "cpo", "simpo", "orpo", "kto", "r-dpo"}
    for name, spec in BASELINES.items():
        assert spec.name == name and spec.summary and spec.source and spec.default_beta >= 0


@pytest.mark.parametrize("method", ["dpo", "kto", "cpo", "sft-chosen"])
def test_trl_trains_on_renderer_ids_with_one_bos(tiny_llama3, tmp_path, method):
    """Llama-3's template writes BOS itself: TRL must neither add a second one nor append EOS."""
    config = _config(tiny_llama3, method)
    config.train.output_dir = str(tmp_path)
    config.method.beta = BASELINES[method].default_beta
    tokenizer = load_tokenizer(str(tiny_llama3))
    renderer = ChatRenderer.from_config(tokenizer, config.chat)
    pair = _pairs()[0]
    how = TRL_TRAINERS[method]
    dataset = preference_dataset(renderer, _pairs(), how.rows, seed=0)
    model = wrap_lora(load_causal_lm(str(tiny_llama3)), config)
    trainer = how.build(config, model, None, tokenizer, dataset)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    bos, eot = tokenizer.bos_token_id, tokenizer.convert_tokens_to_ids("<|eot_id|>")
    prompt = renderer.prompt_ids(pair.prompt)
    assert prompt[0] == bos and prompt.count(bos) == 1
    ids_key = "chosen_input_ids" if method == "cpo" else "input_ids"
    for row in batch[ids_key].tolist():
        assert row[0] == bos and row[1] != bos and row.count(bos) == 1
    if method == "dpo":
        first = trainer.train_dataset[0]
        assert first["prompt_ids"] == prompt
        assert first["chosen_ids"] == renderer.response_ids(pair.chosen)
        assert first["chosen_ids"][-1] == eot and first["chosen_ids"].count(tokenizer.eos_token_id) <= 1
        assert tokenizer.decode(first["prompt_ids"]) == renderer.prompt_text(pair.prompt)
    if method == "cpo":
        first = trainer.train_dataset[0]
        assert first["chosen_input_ids"] == prompt + renderer.response_ids(pair.chosen)
        assert first["chosen_labels"][: len(prompt)] == [-100] * len(prompt)
    if method == "kto":
        first = trainer.train_dataset[0]
        assert first["completion_ids"][-1] == eot and "KL_completion_ids" in first
    # the reference is the adapter-disabled base: no "ref" adapter kept beside ours
    assert list(trainer.model.peft_config) == ["default"]


# --- every baseline trains -----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", sorted(BASELINES))
def test_every_baseline_trains_two_lora_steps(tiny_chatml, tmp_path, method):
    extra: dict[str, object] = {}
    if method == "rdpo":
        extra["label_smoothing"] = 0.1
    if method == "r-dpo":
        extra["length_alpha"] = 0.01
    config = _config(tiny_chatml, method, **extra)
    out = tmp_path / method
    metrics = train_baseline(config, _pairs(), out)

    assert metrics["global_step"] == 2
    assert len(metrics["losses"]) == 2 and all(math.isfinite(x) for x in metrics["losses"])
    assert math.isfinite(metrics["train_loss"])
    final = out / "final"
    assert (final / "adapter_model.safetensors").is_file() and (final / "adapter_config.json").is_file()
    assert (final / "tokenizer_config.json").is_file()
    assert not list(final.rglob("*.bin")) and not list(final.rglob("*.pt"))
    assert not (final / "ref").exists()
    assert (out / "config.yaml").is_file() and (out / "run.json").is_file()
    # the per-language pair counts, in the shape MPO's run.json has them (training/common.pair_counts)
    assert json.loads((out / "run.json").read_text())["data"] == {"count": 6, "languages": {"en": 6}}
    assert config.method.beta is None  # the caller's config is left alone
    if BASELINES[method].uses_beta and BASELINES[method].needs_reference:
        # policy == reference before the first update: every DPO-style loss starts at its zero-margin value
        assert "rewards/margins" in metrics["last_log"]


def test_rdpo_alpha_zero_trains_exactly_like_dpo(tiny_chatml, tmp_path):
    dpo = train_baseline(_config(tiny_chatml, "dpo"), _pairs(), tmp_path / "dpo")
    length = train_baseline(_config(tiny_chatml, "r-dpo", length_alpha=0.0), _pairs(), tmp_path / "rdpo")
    assert dpo["losses"][0] == pytest.approx(math.log(2), rel=1e-5)
    assert length["losses"] == pytest.approx(dpo["losses"], rel=1e-5)
    assert dpo["losses"][1] != pytest.approx(math.log(2), rel=1e-6)  # the second step saw a trained adapter


def test_rdpo_first_step_is_the_length_term_alone(tiny_chatml, tmp_path):
    """At step 1 policy == reference, so the loss is mean(-log sigmoid(alpha * (|y_w| - |y_l|)))."""
    alpha = 0.05
    config = _config(tiny_chatml, "r-dpo", length_alpha=alpha)
    config.train.max_steps = 1
    config.train.batch_size = len(_QUESTIONS)  # one batch holds every pair
    metrics = train_baseline(config, _pairs(), tmp_path / "run")
    renderer = ChatRenderer.from_config(load_tokenizer(str(tiny_chatml)), config.chat)
    margins = torch.tensor(
        [len(renderer.response_ids(p.chosen)) - len(renderer.response_ids(p.rejected)) for p in _pairs()],
        dtype=torch.float32,
    )
    assert bool((margins != 0).any())
    expected = (-F.logsigmoid(alpha * margins)).mean().item()
    assert metrics["losses"][0] == pytest.approx(expected, rel=1e-5)


def test_full_finetuning_trains_against_a_frozen_copy(tiny_chatml, tmp_path):
    config = _config(tiny_chatml, "dpo")
    config.train.finetune = "full"
    out = tmp_path / "full"
    metrics = train_baseline(config, _pairs(), out)
    # step 1: policy == reference copy; step 2: the policy moved and the copy did not
    assert metrics["losses"][0] == pytest.approx(math.log(2), rel=1e-5)
    assert metrics["losses"][1] != pytest.approx(math.log(2), rel=1e-6)
    final = out / "final"
    assert (final / "model.safetensors").is_file() and not (final / "adapter_config.json").exists()
    assert not list(final.rglob("*.bin"))


# --- --resume, as for every method ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["dpo", "kto"])
def test_a_killed_baseline_resumes_to_the_same_weights(tiny_chatml, tmp_path, method):
    data = tmp_path / "pairs.jsonl"
    rows = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in _pairs()]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")

    def config(out: Path) -> RunConfig:
        cfg = _config(tiny_chatml, method)
        cfg.data.path, cfg.train.output_dir = str(data), str(out)
        cfg.train.max_steps, cfg.train.save_steps = 4, 2
        return cfg

    straight = train(config(tmp_path / "straight"))
    killed = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        train(config(killed), callbacks=[Crash()])
    assert (killed / "checkpoints" / "checkpoint-2").is_dir() and not (killed / "final").exists()
    resumed = train(config(killed), resume=True)

    a = load_file(straight / "final" / "adapter_model.safetensors")
    b = load_file(resumed / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    whole, after = (json.loads((run / "run.json").read_text())["metrics"] for run in (straight, resumed))
    assert after["global_step"] == 4 and after["losses"] == pytest.approx(whole["losses"])
    assert after["train_loss"] == pytest.approx(whole["train_loss"], rel=1e-5)
