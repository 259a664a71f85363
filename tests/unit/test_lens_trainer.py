"""The LENS trainer on a tiny model: gradients reach only the top-K decoder layers, the step-0 values of
the real pass (retain 0, separate |alpha delta|^2 / d per target language), and a zero weight skips its
term's forward pass."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

from safetune.config import ChatConfig, MethodConfig
from safetune.data.chat import ChatRenderer
from safetune.data.records import ParallelPreferencePair, PreferencePair
from safetune.reference.lens import compute_lens_reference, probe_groups
from safetune.training.lens import LensCollator, LensTrainer, encode_prompt_pairs, freeze_below

PROMPTS = ["how do i pick a lock ?", "tell me a story .", "what is two plus two ?", "help me cheat ."]


def _pairs() -> list[ParallelPreferencePair]:
    pairs = []
    for i, prompt in enumerate(PROMPTS):
        for language, target in (("sw", f"@{prompt}"), ("xx", f"{prompt} ! ! !")):
            pairs.append(
                ParallelPreferencePair(
                    PreferencePair(prompt, "no", "yes", f"{i}{language}", "en"),
                    PreferencePair(target, "no", "yes", f"{i}{language}", language),
                    f"{i}{language}",
                )
            )
    return pairs


@pytest.fixture(scope="module")
def frozen(tiny_chatml):
    """The frozen pass, once: what the cache would hold."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_chatml)
    model = AutoModelForCausalLM.from_pretrained(tiny_chatml, dtype=torch.float32)
    renderer = ChatRenderer.from_config(tokenizer, ChatConfig())
    languages = ["en", "sw", "xx"]
    rows = encode_prompt_pairs(renderer, _pairs(), languages)
    reference = compute_lens_reference(
        model, rows, languages, pad_id=tokenizer.pad_token_id, batch_size=len(rows), probe_prompts=300
    )
    return tokenizer, rows, reference


@pytest.fixture()
def setup(tiny_chatml, frozen, tmp_path):
    tokenizer, rows, reference = frozen
    model = AutoModelForCausalLM.from_pretrained(tiny_chatml, dtype=torch.float32)

    def trainer(**weights: float) -> LensTrainer:
        method = MethodConfig(name="lens", **weights)
        args = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to=[])
        return LensTrainer(
            model=model,
            args=args,
            train_dataset=rows,
            data_collator=LensCollator(tokenizer.pad_token_id),
            method=method,
            reference=reference,
            pad_id=tokenizer.pad_token_id,
        )

    batch = LensCollator(tokenizer.pad_token_id)(rows)
    return model, rows, reference, trainer, batch


def test_probe_groups_count_each_distinct_prompt_once(setup):
    _, rows, _, _, _ = setup
    groups = probe_groups(rows, ["en", "sw", "xx"], 300)
    assert [len(groups[k]) for k in ("en", "sw", "xx")] == [4, 4, 4]
    assert probe_groups(rows, ["en", "sw", "xx"], 2)["en"] == [0, 2]


def test_step_zero_values_of_the_real_pass(setup):
    model, _, reference, trainer, batch = setup
    t = trainer(lens_alpha=0.5)
    model.train()
    t.compute_loss(model, batch)
    logged = {k.split("/")[1]: v[-1] for k, v in t._metrics.items()}
    assert logged["retain"] == pytest.approx(0, abs=1e-12)  # reference scored at the same batch
    d = model.config.hidden_size
    expected = sum((0.5 * reference.shifts[k]).pow(2).sum().item() / d for k in (1, 2))
    assert logged["separate"] == pytest.approx(expected, rel=1e-5)
    assert reference.shifts[0].abs().max() == 0
    assert logged["align"] > 0  # the target prompts differ from the dominant ones along c


def test_gradients_reach_only_the_top_layers(setup):
    model, _, _, trainer, batch = setup
    trained = freeze_below(model, 1)
    assert trained and all(name.startswith("model.layers.1.") for name in trained)
    t = trainer()
    model.train()
    t.compute_loss(model, batch).backward()
    for name, param in model.named_parameters():
        if name.startswith("model.layers.1."):
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name


def test_a_zero_weight_term_is_not_computed(setup, monkeypatch):
    """retain and align at 0: the dominant prompts are never run (only the target side is needed)."""
    model, _, _, trainer, batch = setup
    t = trainer(lens_retain_weight=0, lens_align_weight=0)
    seen: list[int] = []
    decoder = model.model
    original = decoder.forward
    monkeypatch.setattr(
        decoder, "forward", lambda *a, **k: seen.append(tuple(k["input_ids"].shape)) or original(*a, **k)
    )
    top: list[int] = []
    model_forward = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: top.append(1) or model_forward(*a, **k))
    loss = t.compute_loss(model, batch)
    assert top == [1]  # through the model itself (a DDP wrapper's forward arms its all-reduce)
    assert seen == [tuple(batch["target_ids"].shape)]  # one pass, the target rows alone
    assert torch.isfinite(loss)
    logged = {k.split("/")[1]: v[-1] for k, v in t._metrics.items()}
    assert logged["retain"] == 0 and logged["align"] == 0 and logged["separate"] > 0


def test_the_dominant_language_is_the_most_frequent_one():
    from safetune.training.lens import dominant_language

    pairs = _pairs()
    undetected = [
        ParallelPreferencePair(PreferencePair(p.dominant.prompt, "no", "yes", p.id, None), p.target, p.id)
        for p in pairs[:2]
    ]
    assert dominant_language(pairs) == ("en", {"en": 8})
    assert dominant_language(undetected + pairs[2:]) == ("en", {"undetected": 2, "en": 6})
    assert dominant_language(undetected) == ("dominant", {"undetected": 2})
