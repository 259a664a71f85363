"""Tiny local chat models: deterministic, loadable offline, with working chat templates."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from jinja2.exceptions import TemplateError
from transformers import AutoModelForCausalLM, AutoTokenizer

from safetune.models.tiny import TEMPLATES, build_tiny_model, default_corpus, train_tokenizer

FIXTURES = {"chatml": "tiny_chatml", "llama3": "tiny_llama3", "gemma": "tiny_gemma"}
SMALL = {"vocab_size": 320, "hidden_size": 16, "num_layers": 1, "num_heads": 2}

EXPECTED_CHAT = {
    "chatml": "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n",
    "llama3": (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nU<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
}


@pytest.fixture(params=sorted(FIXTURES))
def model_dir(request: pytest.FixtureRequest) -> tuple[str, Path]:
    return request.param, request.getfixturevalue(FIXTURES[request.param])


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_default_corpus_is_seeded() -> None:
    assert default_corpus(50, seed=1) == default_corpus(50, seed=1)
    assert default_corpus(50, seed=1) != default_corpus(50, seed=2)
    assert len(default_corpus(7)) == 7


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_build_is_deterministic(tmp_path: Path, template: str) -> None:
    first = build_tiny_model(tmp_path / "a", template=template, **SMALL)
    second = build_tiny_model(tmp_path / "b", template=template, **SMALL)
    assert "model.safetensors" in _files(first)
    assert _files(first) == _files(second)


def test_seed_changes_weights_not_tokenizer(tmp_path: Path) -> None:
    a = _files(build_tiny_model(tmp_path / "a", seed=0, **SMALL))
    b = _files(build_tiny_model(tmp_path / "b", seed=1, **SMALL))
    assert a["tokenizer.json"] == b["tokenizer.json"]
    assert a["model.safetensors"] != b["model.safetensors"]


def test_round_trip_offline(model_dir: tuple[str, Path]) -> None:
    template, path = model_dir
    style = TEMPLATES[template]
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.vocab_size == len(tok)
    end_id = tok.convert_tokens_to_ids(style.end_of_turn)
    assert model.config.eos_token_id == model.generation_config.eos_token_id == end_id
    assert model.config.pad_token_id == tok.pad_token_id == tok.convert_tokens_to_ids(style.pad_token)
    assert model.config.bos_token_id == tok.bos_token_id
    text = "Grüße, мир! 你好 🙂"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_bos_added_like_real_tokenizers(model_dir: tuple[str, Path]) -> None:
    template, path = model_dir
    tok = AutoTokenizer.from_pretrained(path)
    ids = tok("a")["input_ids"]
    if template == "chatml":
        assert tok.bos_token is None
        assert ids == tok("a", add_special_tokens=False)["input_ids"]
    else:
        assert ids[0] == tok.bos_token_id
        assert tok("a", add_special_tokens=False)["input_ids"][0] != tok.bos_token_id


@pytest.mark.parametrize("template", sorted(EXPECTED_CHAT))
def test_chat_template_renders_system(template: str, request: pytest.FixtureRequest) -> None:
    tok = AutoTokenizer.from_pretrained(request.getfixturevalue(FIXTURES[template]))
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == EXPECTED_CHAT[template]


def test_gemma_template(tiny_gemma: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_gemma)
    turns = [{"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]
    text = tok.apply_chat_template(turns, tokenize=False)
    assert text == "<bos><start_of_turn>user\nU<end_of_turn>\n<start_of_turn>model\nA<end_of_turn>\n"
    with pytest.raises(TemplateError):
        tok.apply_chat_template([{"role": "system", "content": "S"}, *turns], tokenize=False)


def test_generation_runs(model_dir: tuple[str, Path]) -> None:
    _, path = model_dir
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    inputs = tok(prompt, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 4


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown template"):
        train_tokenizer(["a b"], template="nope")
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["a b"], vocab_size=100)
