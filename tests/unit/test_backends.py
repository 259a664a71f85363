"""Generation backends: hf batching/padding correctness, stop tokens, seeding; mock; the registry."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

from safetune.config import GenerationConfig
from safetune.errors import ConfigError
from safetune.evaluation.backends import (
    BACKENDS,
    MOCK_COMPLIANCE,
    MOCK_REFUSAL,
    HFBackend,
    MockBackend,
    build_backend,
    generation_result,
    make_renderer,
)
from safetune.evaluation.items import GenerationRequest
from safetune.models.loading import load_for_generation, load_tokenizer, resolve_model
from safetune.models.source import ModelSource

# Prompts of clearly different lengths, so a batch needs real left padding.
USERS = (
    "Hi",
    "Can you tell me how to bake bread?",
    "The cat sees the red book in the park. Can you tell me how to fix a bike, step by step, today?",
    "Hello, who are you?",
    "Please answer the question in one sentence: what does the farmer buy at the market every morning?",
    "Tell me a story.",
)


def _requests(system: str | None = None) -> list[GenerationRequest]:
    return [GenerationRequest(f"b/{i}", user, system) for i, user in enumerate(USERS)]


@pytest.fixture(scope="module")
def loaded(tiny_chatml: Path, tiny_llama3: Path) -> dict[str, tuple[object, object]]:
    return {
        name: load_for_generation(resolve_model(str(path)), device="cpu")
        for name, path in (("chatml", tiny_chatml), ("llama3", tiny_llama3))
    }


def _backend(loaded, name: str, **options) -> HFBackend:
    model, tokenizer = loaded[name]
    return HFBackend(model, tokenizer, GenerationConfig(**{"max_new_tokens": 10, **options}))


def _run(backend, requests) -> dict[str, tuple[str, int, str]]:
    out: dict[str, tuple[str, int, str]] = {}
    for batch in backend.generate(requests):
        for r in batch:
            assert r.id not in out, f"{r.id} answered twice"
            out[r.id] = (r.text, r.num_tokens, r.finish_reason)
    return out


@pytest.mark.parametrize("name", ["chatml", "llama3"])
def test_greedy_batched_equals_one_at_a_time(loaded, name):
    requests = _requests()
    alone = _run(_backend(loaded, name, batch_size=1), requests)
    batched = _run(_backend(loaded, name, batch_size=4), requests)
    assert set(alone) == set(batched) == {r.id for r in requests}
    assert batched == alone
    assert any(text for text, _, _ in alone.values())  # the comparison is not vacuous


@pytest.mark.parametrize("name", ["chatml", "llama3"])
def test_batched_generation_token_ids_match(loaded, name, monkeypatch):
    """The same new token ids in one left-padded batch as alone (not just the same decoded text)."""
    backend = _backend(loaded, name, batch_size=len(USERS))
    calls: list[dict] = []
    original = backend.model.generate

    def spy(**kwargs):
        kwargs["output"] = original(**kwargs)
        calls.append(kwargs)
        return kwargs["output"]

    monkeypatch.setattr(backend.model, "generate", spy)
    _run(backend, _requests())
    ((call),) = calls
    mask, width = call["attention_mask"], call["input_ids"].shape[1]
    assert len(set(mask.sum(1).tolist())) > 2 and not mask.all()  # real left padding happened
    for row in range(mask.shape[0]):
        assert mask[row].tolist() == sorted(mask[row].tolist())  # pads on the left
        prompt = call["input_ids"][row][mask[row].bool()].unsqueeze(0)
        single = original(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            generation_config=backend.generation_config,
        )[0, prompt.shape[1] :].tolist()
        batched = call["output"][row, width:].tolist()
        assert batched[: len(single)] == single
        assert all(t == backend.pad_id for t in batched[len(single) :])


def test_llama3_prompt_has_exactly_one_bos(loaded, monkeypatch):
    backend = _backend(loaded, "llama3", batch_size=3)
    bos = backend.tokenizer.bos_token_id
    seen: list[dict] = []
    original = backend.model.generate

    def spy(**kwargs):
        seen.append(kwargs)
        return original(**kwargs)

    monkeypatch.setattr(backend.model, "generate", spy)
    _run(backend, _requests(system="You are a helpful assistant."))
    prompts = [
        ids[mask.bool()].tolist()
        for call in seen
        for ids, mask in zip(call["input_ids"], call["attention_mask"], strict=True)
    ]
    assert len(prompts) == len(USERS)
    for prompt in prompts:
        assert prompt[0] == bos and prompt.count(bos) == 1


def test_system_prompt_changes_prompt_and_gemma_prepends(loaded, tiny_gemma):
    backend = _backend(loaded, "llama3")
    plain = backend.prompt_ids(GenerationRequest("a", "Hello"))
    with_system = backend.prompt_ids(GenerationRequest("a", "Hello", "You are a pirate."))
    assert plain != with_system and len(with_system) > len(plain)
    renderer = make_renderer(load_tokenizer(str(tiny_gemma)), GenerationConfig())  # no system role
    assert renderer.system_mode == "prepend"
    assert "You are a pirate. Hello" in renderer.prompt_text("Hello", "You are a pirate.")


def test_long_prompts_keep_their_tail(loaded):
    backend = _backend(loaded, "llama3", max_prompt_tokens=16)
    ids = backend.prompt_ids(GenerationRequest("a", "word " * 200))
    full = backend.renderer.tokenizer.encode(
        backend.renderer.prompt_text("word " * 200), add_special_tokens=False
    )
    assert len(ids) == 16 and ids[0] == backend.tokenizer.bos_token_id and ids[1:] == full[-15:]


@pytest.mark.parametrize("name", ["chatml", "llama3"])
def test_sampling_is_seeded_per_request(loaded, name):
    requests = _requests()
    options = {"do_sample": True, "temperature": 1.0, "top_p": 0.95, "max_new_tokens": 8}
    first = _run(_backend(loaded, name, batch_size=3, seed=7, **options), requests)
    again = _run(_backend(loaded, name, batch_size=3, seed=7, **options), requests)
    other_batching = _run(_backend(loaded, name, batch_size=1, seed=7, **options), list(reversed(requests)))
    other_seed = _run(_backend(loaded, name, batch_size=3, seed=8, **options), requests)
    greedy = _run(_backend(loaded, name, batch_size=3, max_new_tokens=8), requests)
    assert first == again == other_batching
    assert first != other_seed and first != greedy


def test_max_new_tokens_and_length_finish(loaded):
    results = _run(_backend(loaded, "chatml", batch_size=6, max_new_tokens=5), _requests())
    for _text, num_tokens, finish in results.values():
        assert num_tokens <= 5
        if finish == "length":
            assert num_tokens == 5
    assert "length" in {f for _, _, f in results.values()}


def test_end_of_turn_token_stops_generation(tiny_llama3):
    model, tokenizer = load_for_generation(resolve_model(str(tiny_llama3)), device="cpu")
    backend = HFBackend(model, tokenizer, GenerationConfig(max_new_tokens=6, batch_size=4))
    end_id = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert end_id in backend.stop_ids and tokenizer.eos_token_id in backend.stop_ids
    head = model.lm_head
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        biased.weight.copy_(head.weight)
        biased.bias.zero_()
        biased.bias[end_id] = 1e4  # the model now ends its turn at once
    model.lm_head = biased
    results = _run(backend, _requests())
    assert set(results.values()) == {("", 1, "stop")}


def test_result_cuts_at_first_end_token(tiny_llama3):
    tokenizer = load_tokenizer(str(tiny_llama3))
    end = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    words = tokenizer.encode(" Sure, the cat", add_special_tokens=False)
    result = generation_result("x", [*words, end, 7, 8], {end}, tokenizer)
    assert (result.text, result.num_tokens, result.finish_reason) == ("Sure, the cat", len(words) + 1, "stop")
    result = generation_result("x", words, {end}, tokenizer)
    assert (result.num_tokens, result.finish_reason) == (len(words), "length")


# --- mock and registry -----------------------------------------------------------------------------------


def test_mock_is_deterministic_and_obeys_markers():
    config = GenerationConfig(backend="mock", batch_size=7)
    requests = [GenerationRequest(f"b/{i}", f"question {i}") for i in range(100)]
    backend = build_backend(ModelSource(label="none", base="none"), config)
    assert isinstance(backend, MockBackend) and backend.name == "mock"
    batches = list(backend.generate(requests))
    assert [len(b) for b in batches] == [7] * 14 + [2]
    texts = {r.id: r.text for b in batches for r in b}
    again = {
        r.id: r.text
        for b in MockBackend(dataclasses.replace(config, batch_size=1)).generate(requests)
        for r in b
    }
    assert texts == again
    refusals = sum(t == MOCK_REFUSAL for t in texts.values())
    assert 30 <= refusals <= 70 and set(texts.values()) == {MOCK_REFUSAL, MOCK_COMPLIANCE}
    other_seed = {r.id: r.text for b in MockBackend(GenerationConfig(seed=1)).generate(requests) for r in b}
    assert other_seed != texts
    forced = [GenerationRequest(f"f/{i}", f"[[refuse]] q{i}") for i in range(5)]
    forced += [GenerationRequest(f"g/{i}", f"please [[comply]] {i}") for i in range(5)]
    out = [r for b in backend.generate(forced) for r in b]
    assert [r.text for r in out] == [MOCK_REFUSAL] * 5 + [MOCK_COMPLIANCE] * 5
    assert all(r.finish_reason == "stop" and r.num_tokens > 0 for r in out)


def test_unknown_backend_lists_known_ones():
    with pytest.raises(ConfigError, match=r"unknown backend 'nope'.*hf.*vllm.*mock"):
        build_backend(ModelSource(label="m", base="m"), GenerationConfig(backend="nope"))
    assert set(BACKENDS) == {"hf", "vllm", "mock"}
    assert all(spec.description for spec in BACKENDS.values())


def test_vllm_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(ConfigError, match="pip install vllm"):
        build_backend(ModelSource(label="m", base="m"), GenerationConfig(backend="vllm"))


def test_bad_sampling_options():
    with pytest.raises(ConfigError, match="top_p"):
        build_backend(ModelSource(label="m", base="m"), GenerationConfig(backend="hf", top_p=0.0))


# --- resolve_model without training -------------------------------------------------------------------


def test_resolve_hub_id_folder_and_missing(tiny_chatml, tmp_path):
    hub = resolve_model("org/some-model", revision="abc")
    assert (hub.base, hub.tokenizer, hub.adapter, hub.revision) == ("org/some-model",) * 2 + (None, "abc")
    assert hub.fingerprint == "hub:org/some-model@abc"
    local = resolve_model(str(tiny_chatml))
    assert local.base == str(tiny_chatml.resolve()) and local.adapter is None
    assert local.fingerprint.startswith("dir:") and local.label == str(tiny_chatml)
    for missing in (str(tmp_path / "nope"), "./nope", "a/b/c"):
        with pytest.raises(ConfigError, match="not found"):
            resolve_model(missing)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        resolve_model(str(tmp_path / "file.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="neither a model"):
        resolve_model(str(tmp_path / "empty"))


@pytest.mark.parametrize(
    "config_yaml",
    [
        "model:\n  name: org/base\n  revision: r1\n",
        "train:\n  model: org/base\n  revision: r1\n",  # a run folder written before the model section
    ],
)
def test_lora_run_folder_finds_its_base_and_revision_in_config_yaml(tmp_path, config_yaml):
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "final" / "adapter_config.json").write_text('{"base_model_name_or_path": ""}', encoding="utf-8")
    (run / "config.yaml").write_text(config_yaml, encoding="utf-8")
    source = resolve_model(str(run / "final"))
    assert (source.base, source.revision) == ("org/base", "r1")
