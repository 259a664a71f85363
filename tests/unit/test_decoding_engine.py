"""The batched defence engine (decoding/engine.py) against plain greedy decoding, the naive no-cache
loop (decoding/naive.py) and transformers' classifier-free guidance, on tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from safetune.config import DefenceConfig, GenerationConfig
from safetune.decoding import prompts
from safetune.decoding.engine import DefendedGenerator
from safetune.decoding.models import Part, StreamModels, load_defended
from safetune.decoding.naive import naive_generate
from safetune.decoding.registry import Defence, build_defence
from safetune.evaluation.backends import make_renderer, request_seed, stop_token_ids
from safetune.models.loading import load_for_generation, resolve_model

MAX_NEW = 10
# Prompts of different lengths, some with the request's own system prompt (a role prompt).
QUERIES: list[tuple[str, str | None]] = [
    ("Hello, who are you?", None),
    ("Can you tell me how to pick a lock? Please answer the question in one sentence.", None),
    ("Hi", "You are a friendly character in a story. Stay in your role."),
    ("The old man finds the red book in the park. Can you tell me how to bake bread?", None),
    ("Tell me a story about the fox.", "You are the villain."),
]


def _defence(**settings) -> Defence:
    defence = build_defence(DefenceConfig(**settings))
    assert defence is not None
    return defence


class Setup:
    """A loaded model (any layout), its renderer, stop ids and pad id, as the hf backend makes them."""

    def __init__(self, models: StreamModels, tokenizer, max_new: int = MAX_NEW, **generation):
        self.models, self.tokenizer = models, tokenizer
        self.config = GenerationConfig(max_new_tokens=max_new, **generation)
        self.renderer = make_renderer(tokenizer, self.config)
        model = models.parts[0].model
        self.stop_ids = stop_token_ids(tokenizer, self.renderer, model.generation_config.eos_token_id)
        self.pad_id = tokenizer.pad_token_id

    def engine(self, defence: Defence) -> DefendedGenerator:
        return DefendedGenerator(
            self.models, self.tokenizer, self.renderer, defence, self.stop_ids, self.pad_id, self.config
        )

    def naive(self, defence: Defence, queries=QUERIES) -> list[list[int]]:
        return naive_generate(
            self.models,
            self.tokenizer,
            self.renderer,
            defence,
            self.stop_ids,
            self.config.max_new_tokens,
            queries,
        )

    def greedy(self, user: str, system: str | None, model=None) -> list[int]:
        """Plain greedy decoding with transformers' generate at batch 1, cut after the first stop id."""
        model = model or self.models.parts[0].model
        ids = torch.tensor([self.renderer.prompt_ids(user, system)])
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=self.config.max_new_tokens,
            eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id,
            repetition_penalty=1.0,
        )
        return _cut(out[0, ids.shape[1] :].tolist(), self.stop_ids)


def _cut(tokens: list[int], stops) -> list[int]:
    for i, token in enumerate(tokens):
        if token in stops:
            return tokens[: i + 1]
    return tokens


@pytest.fixture(scope="module", params=["chatml", "llama3", "gemma"])
def plain(request) -> Setup:
    folder = request.getfixturevalue(f"tiny_{request.param}")
    model, tokenizer = load_for_generation(resolve_model(str(folder)), device="cpu")
    return Setup(StreamModels([Part(model, ("role",))]), tokenizer)


def _with_system(defence_prompt: str, own: str | None) -> str:
    return defence_prompt if not own else defence_prompt + "\n\n" + own


def test_rose_alpha_0_is_greedy_with_the_positive_prompt(plain):
    out = plain.engine(_defence(name="rose", alpha=0.0)).generate(QUERIES)
    for (user, own), tokens in zip(QUERIES, out, strict=True):
        assert tokens == plain.greedy(user, _with_system(prompts.LLAMA2_SYSTEM_PROMPT, own))


def test_self_cd_alpha_0_is_with_and_alpha_1_is_without(plain):
    with_out = plain.engine(_defence(name="self-cd", alpha=0.0)).generate(QUERIES)
    without_out = plain.engine(_defence(name="self-cd", alpha=1.0)).generate(QUERIES)
    for (user, own), with_tokens, without_tokens in zip(QUERIES, with_out, without_out, strict=True):
        assert with_tokens == plain.greedy(user, _with_system(prompts.SELF_CD_WITH_PROMPT, own))
        assert without_tokens == plain.greedy(user, own)


@pytest.mark.parametrize(
    "settings",
    [
        {"name": "rose"},
        {"name": "rose", "prompts": "sarft", "system": "replace", "alpha": 0.9},
        {"name": "self-cd"},
        {"name": "self-cd", "without": "empty", "alpha": 4.0},
    ],
)
def test_engine_equals_the_naive_loop_and_each_query_alone(plain, settings):
    defence = _defence(**settings)
    engine = plain.engine(defence)
    batched = engine.generate(QUERIES)
    assert batched == plain.naive(defence)
    assert [engine.generate([q])[0] for q in QUERIES] == batched
    assert any(len(t) > 1 for t in batched)


def test_self_cd_matches_classifier_free_guidance(plain):
    """transformers' CFG: log_softmax(uncond) + g (log_softmax(cond) - log_softmax(uncond)); with cond =
    without and uncond = with, g = alpha is Self-CD up to a per-step constant (same argmax)."""
    alpha = 2.5
    out = plain.engine(_defence(name="self-cd", alpha=alpha)).generate(QUERIES)
    for (user, own), tokens in zip(QUERIES, out, strict=True):
        cond = plain.renderer.prompt_ids(user, own)
        negative = plain.renderer.prompt_ids(user, _with_system(prompts.SELF_CD_WITH_PROMPT, own))
        assert tokens == _cfg(plain, cond, negative, alpha)


def test_rose_matches_classifier_free_guidance(plain):
    """ROSE(alpha) = (1 - alpha) x CFG(1 / (1 - alpha)) + a constant, cond = positive, uncond = reverse."""
    alpha = 0.5
    out = plain.engine(_defence(name="rose", alpha=alpha)).generate(QUERIES)
    positive, reverse = prompts.ROSE_PROMPT_SETS["canonical"]
    for (user, own), tokens in zip(QUERIES, out, strict=True):
        cond = plain.renderer.prompt_ids(user, _with_system(positive, own))
        negative = plain.renderer.prompt_ids(user, _with_system(reverse, own))
        assert tokens == _cfg(plain, cond, negative, 1 / (1 - alpha))


def _cfg(setup: Setup, cond: list[int], negative: list[int], scale: float) -> list[int]:
    model = setup.models.parts[0].model
    ids, neg = torch.tensor([cond]), torch.tensor([negative])
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        guidance_scale=scale,
        negative_prompt_ids=neg,
        negative_prompt_attention_mask=torch.ones_like(neg),
        do_sample=False,
        max_new_tokens=setup.config.max_new_tokens,
        eos_token_id=setup.stop_ids,
        pad_token_id=setup.pad_id,
        repetition_penalty=1.0,
    )
    return _cut(out[0, ids.shape[1] :].tolist(), setup.stop_ids)


def test_seeded_sampling_is_reproducible_and_batch_independent(tiny_chatml):
    model, tokenizer = load_for_generation(resolve_model(str(tiny_chatml)), device="cpu")
    setup = Setup(
        StreamModels([Part(model, ("role",))]), tokenizer, do_sample=True, temperature=1.3, top_p=0.9
    )
    engine = setup.engine(_defence(name="rose"))
    seeds = [request_seed(7, f"bench/{i}") for i in range(len(QUERIES))]
    first = engine.generate(QUERIES, seeds)
    assert engine.generate(QUERIES, seeds) == first
    assert [engine.generate([q], [s])[0] for q, s in zip(QUERIES, seeds, strict=True)] == first
    reversed_out = engine.generate(QUERIES[::-1], seeds[::-1])
    assert reversed_out[::-1] == first
    other = engine.generate(QUERIES, [s + 1 for s in seeds])
    assert other != first
    greedy = Setup(setup.models, tokenizer).engine(_defence(name="rose")).generate(QUERIES)
    assert greedy != first
    with pytest.raises(ValueError, match="seed"):
        engine.generate(QUERIES)


def test_rose_alpha_0_sampling_equals_the_hf_backend(tiny_chatml):
    """Sampling happens after the combination, from the same per-request stream as the hf backend."""
    from safetune.evaluation.backends import HFBackend
    from safetune.evaluation.items import GenerationRequest

    model, tokenizer = load_for_generation(resolve_model(str(tiny_chatml)), device="cpu")
    settings = {"do_sample": True, "temperature": 0.9, "top_p": 0.95, "seed": 3}
    setup = Setup(StreamModels([Part(model, ("role",))]), tokenizer, **settings)
    out = setup.engine(_defence(name="rose", alpha=0.0)).generate(
        QUERIES, [request_seed(3, f"b/{i}") for i in range(len(QUERIES))]
    )
    backend = HFBackend(model, tokenizer, setup.config, progress=False)
    requests = [
        GenerationRequest(f"b/{i}", user, _with_system(prompts.LLAMA2_SYSTEM_PROMPT, own))
        for i, (user, own) in enumerate(QUERIES)
    ]
    texts = {r.id: r.text for batch in backend.generate(requests) for r in batch}
    for i, tokens in enumerate(out):
        assert tokenizer.decode(tokens, skip_special_tokens=True).strip() == texts[f"b/{i}"]


# ---- SafeDecoding: an expert LoRA, mixed-adapter batches and two models ----


def _lora(base: Path, out: Path, zero: bool, seed: int) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base))
    config = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=zero)
    peft_model = get_peft_model(model, config)
    if not zero:  # large enough to change the argmax often
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_" in name:
                    param.mul_(3.0)
    peft_model.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def adapters(tiny_chatml, tmp_path_factory) -> dict[str, Path]:
    from safetune.models.tiny import random_llama

    root = tmp_path_factory.mktemp("adapters")
    full = root / "full"
    _, tokenizer = load_for_generation(resolve_model(str(tiny_chatml)), device="cpu")
    # The full fine-tune: the base's shape and tokenizer, other weights.
    original = random_llama(tokenizer, "chatml", hidden_size=32, num_layers=2, num_heads=4, seed=5)
    original.save_pretrained(full)
    tokenizer.save_pretrained(full)
    return {
        "expert": _lora(tiny_chatml, root / "expert", zero=False, seed=1),
        "zero": _lora(tiny_chatml, root / "zero", zero=True, seed=2),
        "role": _lora(tiny_chatml, root / "role", zero=False, seed=3),
        "full": full,
    }


def _safedecoding(expert: Path, **settings) -> Defence:
    return _defence(name="safedecoding", expert=str(expert), **settings)


def _loaded(model: Path | str, defence: Defence) -> Setup:
    models, tokenizer = load_defended(resolve_model(str(model)), defence, device="cpu")
    return Setup(models, tokenizer)


def test_safedecoding_m_0_or_a_zero_expert_is_plain_greedy(tiny_chatml, adapters):
    for defence in (
        _safedecoding(adapters["expert"], first_m=0),
        _safedecoding(adapters["zero"], first_m=MAX_NEW),
    ):
        setup = _loaded(tiny_chatml, defence)
        out = setup.engine(defence).generate(QUERIES)
        plain, _ = load_for_generation(resolve_model(str(tiny_chatml)), device="cpu")
        assert out == [setup.greedy(user, own, plain) for user, own in QUERIES]


@pytest.mark.parametrize("role", ["base", "role", "full"])
@pytest.mark.parametrize("preset", ["paper", "class"])
def test_safedecoding_engine_equals_naive_in_every_layout(tiny_chatml, adapters, role, preset):
    model = tiny_chatml if role == "base" else adapters[role]
    defence = _safedecoding(adapters["expert"], preset=preset)
    setup = _loaded(model, defence)
    layout = [(part.kinds, part.adapters) for part in setup.models.parts]
    if role == "full":
        assert layout == [(("role",), None), (("expert",), None)]  # (c) two model objects
    else:
        expected_role = "role" if role == "role" else "__base__"
        assert layout == [(("role", "expert"), {"role": expected_role, "expert": "expert"})]  # (b)
    engine = setup.engine(defence)
    batched = engine.generate(QUERIES)
    assert batched == setup.naive(defence)
    assert [engine.generate([q])[0] for q in QUERIES] == batched
    # The expert changed something in its first m tokens, and nothing follows the rule after them.
    plain_role = _loaded(model, _defence(name="rose", alpha=0.0))
    greedy = [plain_role.greedy(user, own) for user, own in QUERIES]
    assert batched != greedy


def test_expert_trained_on_another_base_is_refused(tiny_llama3, adapters, tmp_path):
    from safetune.errors import ConfigError

    other_lora = _lora(tiny_llama3, tmp_path / "other", zero=False, seed=4)
    for model, message in ((other_lora, "trained on"), (tiny_llama3, "another vocabulary")):
        with pytest.raises(ConfigError, match=message):
            load_defended(resolve_model(str(model)), _safedecoding(adapters["expert"]), device="cpu")


def test_full_fine_tune_from_another_base_is_refused(tiny_llama3, adapters, tmp_path):
    """A run folder's config.yaml names the model it was fine-tuned from: the expert must share it."""
    import shutil

    from safetune.errors import ConfigError

    run = tmp_path / "run"
    shutil.copytree(adapters["full"], run / "final")
    (run / "run.json").write_text("{}")
    (run / "config.yaml").write_text(f"model:\n  name: {tiny_llama3}\n")
    with pytest.raises(ConfigError, match="was fine-tuned from"):
        load_defended(resolve_model(str(run)), _safedecoding(adapters["expert"]), device="cpu")


def test_num_common_beyond_the_vocabulary_is_refused(tiny_chatml, adapters):
    from safetune.errors import ConfigError

    defence = _safedecoding(adapters["expert"], num_common=100_000)
    with pytest.raises(ConfigError, match="more than the vocabulary"):
        _loaded(tiny_chatml, defence).engine(defence)
