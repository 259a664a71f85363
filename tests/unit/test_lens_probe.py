"""The LENS probe pass (reference/lens.py): the state at the last real prompt token, rendered as training
renders, independent of padding and batch size; per-language means into LSAR."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from safetune.config import ChatConfig
from safetune.data.chat import ChatRenderer
from safetune.data.records import Prompt
from safetune.methods.lsar import lsar
from safetune.reference.lens import (
    encode_prompts,
    language_means,
    last_prompt_states,
    probe,
    prompt_states,
)

PROMPTS = {
    "en": ["How do I bake bread?", "Tell me a long story about a small cat and a dog.", "Hi"],
    "fr": ["Comment faire du pain ?", "Raconte une histoire.", "Salut, comment vas-tu aujourd'hui ?"],
    "de": ["Wie backe ich Brot?", "Erzähl mir eine Geschichte.", "Hallo"],
}


@pytest.fixture(scope="module")
def setup(tiny_chatml):
    tokenizer = AutoTokenizer.from_pretrained(tiny_chatml)
    model = AutoModelForCausalLM.from_pretrained(tiny_chatml, dtype=torch.float32).eval()
    return model, ChatRenderer.from_config(tokenizer, ChatConfig())


def _one_by_one(model, row):
    """The naive value: the unpadded prompt alone, the final (post-norm) state at its last position."""
    ids = torch.tensor([row])
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    return out.hidden_states[-1][0, -1].float(), out.hidden_states[-1][0].float().mean(dim=0)


def test_last_prompt_state_is_the_last_real_token_whatever_the_batch(setup):
    model, renderer = setup
    states = last_prompt_states(model, renderer, PROMPTS, batch_size=3)
    assert list(states) == ["en", "fr", "de"]
    for language, texts in PROMPTS.items():
        rows = encode_prompts(renderer, texts)
        assert len({len(r) for r in rows}) > 1  # the batch really pads
        assert states[language].shape == (3, model.config.hidden_size)
        assert states[language].dtype == torch.float32
        for i, row in enumerate(rows):
            last, _ = _one_by_one(model, row)
            torch.testing.assert_close(states[language][i], last, rtol=1e-5, atol=1e-5)
    alone = last_prompt_states(model, renderer, PROMPTS, batch_size=1)
    for language in PROMPTS:
        torch.testing.assert_close(alone[language], states[language], rtol=1e-5, atol=1e-5)


def test_prompts_are_rendered_as_training_renders_them(setup):
    model, renderer = setup
    system = "You are a helpful assistant."
    rows = encode_prompts(renderer, [Prompt("p", "How do I bake bread?", "b")], system)
    assert rows == [renderer.prompt_ids("How do I bake bread?", system)]
    # the generation header is part of the prompt: its last token is the header's, not the user text's
    assert renderer.tokenizer.decode(rows[0]).rstrip().endswith("assistant")
    with_system = last_prompt_states(model, renderer, {"en": ["How do I bake bread?"]}, system=system)
    plain = last_prompt_states(model, renderer, {"en": ["How do I bake bread?"]})
    assert not torch.allclose(with_system["en"], plain["en"])


def test_mean_pool_is_over_real_tokens_only(setup):
    model, renderer = setup
    rows = encode_prompts(renderer, PROMPTS["en"])
    pooled = prompt_states(
        model, rows, pad_id=renderer.tokenizer.pad_token_id, batch_size=3, pools=("last", "mean")
    )
    for i, row in enumerate(rows):
        last, mean = _one_by_one(model, row)
        torch.testing.assert_close(pooled["last"][i], last, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(pooled["mean"][i], mean, rtol=1e-5, atol=1e-5)


def test_left_padded_batch_reads_the_same_last_token(setup):
    """pool_hidden reads the mask, so a left-padded batch (as LENS's collator pads) gives the same state."""
    from safetune.methods.reward_gap import pool_hidden

    model, renderer = setup
    rows = encode_prompts(renderer, PROMPTS["fr"])
    right = prompt_states(model, rows, pad_id=renderer.tokenizer.pad_token_id, batch_size=3)["last"]
    width = max(len(r) for r in rows)
    pad = renderer.tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        hidden = model.model(input_ids=ids, attention_mask=mask, position_ids=position_ids).last_hidden_state
    torch.testing.assert_close(pool_hidden(hidden, mask, "last"), right, rtol=1e-4, atol=1e-4)


def test_probe_means_feed_lsar(setup):
    model, renderer = setup
    states = last_prompt_states(model, renderer, PROMPTS)
    means = language_means(states)
    assert means.dtype == torch.float64 and means.shape == (3, model.config.hidden_size)
    torch.testing.assert_close(means[1], states["fr"].double().mean(dim=0))
    decomposition = probe(states, "en")
    expected = lsar(means, 0)
    torch.testing.assert_close(decomposition.specific_basis, expected.specific_basis)
    assert decomposition.shifts[0].abs().max() == 0
    with pytest.raises(ValueError, match="dominant language 'xx'"):
        probe(states, "xx")


def test_refusals(setup):
    model, renderer = setup
    with pytest.raises(ValueError, match="'fr' has no probe prompts"):
        last_prompt_states(model, renderer, {"en": ["Hi"], "fr": []})
    with pytest.raises(ValueError, match="batch_size"):
        prompt_states(model, [[1, 2]], pad_id=0, batch_size=0)
    with pytest.raises(ValueError, match="empty prompt"):
        prompt_states(model, [[]], pad_id=0)
