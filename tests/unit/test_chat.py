"""ChatRenderer: the SaRFT authors' prompt/response rendering on three template families."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from safetune.data.batching import IGNORE_INDEX
from safetune.data.chat import ChatRenderer
from safetune.models.tiny import TEMPLATES

FIXTURES = {"chatml": "tiny_chatml", "llama3": "tiny_llama3", "gemma": "tiny_gemma"}
END_TOKENS = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>", "gemma": "<end_of_turn>"}
LONG = "the cat sees the red book in the park " * 20


def _load(request: pytest.FixtureRequest, template: str) -> PreTrainedTokenizerBase:
    # A fresh tokenizer per test, so tests that edit it cannot leak into others.
    path: Path = request.getfixturevalue(FIXTURES[template])
    return AutoTokenizer.from_pretrained(path)


@pytest.fixture(params=sorted(FIXTURES))
def case(request: pytest.FixtureRequest) -> tuple[str, PreTrainedTokenizerBase]:
    return request.param, _load(request, request.param)


@pytest.fixture
def llama3_tok(request: pytest.FixtureRequest) -> PreTrainedTokenizerBase:
    return _load(request, "llama3")


def _header_ids(tok: PreTrainedTokenizerBase, template: str) -> list[int]:
    return list(tok.encode(TEMPLATES[template].generation_header, add_special_tokens=False))


def test_prompt_ends_with_generation_header(case: tuple[str, PreTrainedTokenizerBase]) -> None:
    template, tok = case
    renderer = ChatRenderer(tok)
    header = _header_ids(tok, template)
    assert renderer.prompt_text("hello").endswith(TEMPLATES[template].generation_header)
    assert renderer.prompt_ids("hello", "be kind")[-len(header) :] == header


def test_exactly_one_bos(case: tuple[str, PreTrainedTokenizerBase]) -> None:
    template, tok = case
    ids = ChatRenderer(tok).prompt_ids("hello", "be kind")
    if template == "chatml":
        assert tok.bos_token_id is None
        assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
    else:
        assert ids[0] == tok.bos_token_id
        assert ids.count(tok.bos_token_id) == 1


def test_bos_prepended_when_template_omits_it(llama3_tok: PreTrainedTokenizerBase) -> None:
    llama3_tok.chat_template = TEMPLATES["llama3"].chat_template.replace("{{- bos_token -}}", "")
    ids = ChatRenderer(llama3_tok).prompt_ids("hello")
    assert ids[0] == llama3_tok.bos_token_id
    assert ids.count(llama3_tok.bos_token_id) == 1


def test_duplicate_bos_dropped(llama3_tok: PreTrainedTokenizerBase) -> None:
    llama3_tok.chat_template = "{{ bos_token }}" + TEMPLATES["llama3"].chat_template
    ids = ChatRenderer(llama3_tok).prompt_ids("hello")
    assert ids[0] == llama3_tok.bos_token_id
    assert ids.count(llama3_tok.bos_token_id) == 1


def test_labels_mask_exactly_the_prompt(case: tuple[str, PreTrainedTokenizerBase]) -> None:
    _, tok = case
    renderer = ChatRenderer(tok)
    example = renderer.encode("hello", "Sure, here it is.", system="be kind")
    prompt = renderer.prompt_ids("hello", "be kind")
    assert example.prompt_len == len(prompt)
    assert example.input_ids == prompt + renderer.response_ids("Sure, here it is.")
    assert example.labels[: example.prompt_len] == [IGNORE_INDEX] * len(prompt)
    assert example.labels[example.prompt_len :] == example.input_ids[example.prompt_len :]
    assert IGNORE_INDEX not in example.labels[example.prompt_len :]


def test_end_token_per_template(case: tuple[str, PreTrainedTokenizerBase]) -> None:
    template, tok = case
    renderer = ChatRenderer(tok)
    assert renderer.end_token == END_TOKENS[template]
    ids = renderer.response_ids("Sure.")
    assert ids[-1] == tok.convert_tokens_to_ids(END_TOKENS[template])
    assert tok.decode(ids) == "Sure." + END_TOKENS[template]


def test_end_token_falls_back_to_eos(llama3_tok: PreTrainedTokenizerBase) -> None:
    llama3_tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert ChatRenderer(llama3_tok, system_mode="prepend").end_token == llama3_tok.eos_token


@pytest.mark.parametrize("template", ["chatml", "llama3"])
def test_system_native(request: pytest.FixtureRequest, template: str) -> None:
    tok = _load(request, template)
    renderer = ChatRenderer(tok)
    assert renderer.supports_system and renderer.system_mode == "native"
    messages = [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hello"}]
    expected = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert renderer.prompt_text("hello", "be kind") == expected


def test_system_prepended_for_gemma(request: pytest.FixtureRequest) -> None:
    tok = _load(request, "gemma")
    renderer = ChatRenderer(tok)
    assert not renderer.supports_system and renderer.system_mode == "prepend"
    messages = [{"role": "user", "content": "be kind hello"}]
    expected = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert renderer.prompt_text("hello", "be kind") == expected
    with pytest.raises(ValueError, match="native"):
        ChatRenderer(tok, system_mode="native")


def test_forced_prepend_and_no_system(request: pytest.FixtureRequest) -> None:
    tok = _load(request, "chatml")
    renderer = ChatRenderer(tok, system_mode="prepend")
    assert renderer.prompt_text("hello", "be kind") == ChatRenderer(tok).prompt_text("be kind hello")
    assert "system" not in renderer.prompt_text("hello")


def test_head_truncation(case: tuple[str, PreTrainedTokenizerBase]) -> None:
    template, tok = case
    full = ChatRenderer(tok)
    short = ChatRenderer(tok, max_prompt_tokens=6, max_response_tokens=3)
    assert short.prompt_ids(LONG) == full.prompt_ids(LONG)[:6]
    cut = short.response_ids(LONG)
    assert cut == full.response_ids(LONG)[:3]
    assert tok.convert_tokens_to_ids(END_TOKENS[template]) not in cut
    example = short.encode(LONG, LONG)
    assert len(example.input_ids) == 9 and example.prompt_len == 6


def test_tail_truncation_keeps_bos_and_header(case: tuple[str, PreTrainedTokenizerBase]) -> None:
    template, tok = case
    full = ChatRenderer(tok).prompt_ids(LONG)
    ids = ChatRenderer(tok, max_prompt_tokens=12, prompt_truncation="tail").prompt_ids(LONG)
    assert len(ids) == 12
    header = _header_ids(tok, template)
    assert ids[-len(header) :] == header
    if tok.bos_token_id is None:
        assert ids == full[-12:]
    else:
        assert ids == [tok.bos_token_id, *full[-11:]]


def test_fingerprint(request: pytest.FixtureRequest) -> None:
    chatml, llama3 = _load(request, "chatml"), _load(request, "llama3")
    base = ChatRenderer(chatml).fingerprint()
    assert base == ChatRenderer(_load(request, "chatml")).fingerprint()
    variants = [
        ChatRenderer(llama3),
        ChatRenderer(chatml, max_prompt_tokens=100),
        ChatRenderer(chatml, max_response_tokens=100),
        ChatRenderer(chatml, prompt_truncation="tail"),
        ChatRenderer(chatml, system_mode="prepend"),
    ]
    prints = {renderer.fingerprint() for renderer in variants}
    assert base not in prints and len(prints) == len(variants)
    chatml.chat_template = chatml.chat_template.replace("\\n", " ")
    assert ChatRenderer(chatml).fingerprint() != base


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"system_mode": "always"}, "system_mode"),
        ({"prompt_truncation": "middle"}, "prompt_truncation"),
        ({"max_prompt_tokens": 0}, "max_prompt_tokens"),
        ({"max_response_tokens": -3}, "max_response_tokens"),
        ({"max_prompt_tokens": True}, "max_prompt_tokens"),
        ({"max_response_tokens": 2.5}, "max_response_tokens"),
    ],
)
def test_bad_arguments(llama3_tok: PreTrainedTokenizerBase, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ChatRenderer(llama3_tok, **kwargs)  # type: ignore[arg-type]


def test_tokenizer_without_template(llama3_tok: PreTrainedTokenizerBase) -> None:
    llama3_tok.chat_template = None
    with pytest.raises(ValueError, match="chat_template"):
        ChatRenderer(llama3_tok)


# ---- the authors' rendering as defaults (chat section), the plain one as an option ----

# A Qwen2.5-like template: inserts a default system prompt when the chat has none.
_QWEN_LIKE = (
    "{%- if messages[0]['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\nYou are Qwen, a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- for turn in messages -%}"
    "{{ '<|im_start|>' + turn['role'] + '\\n' + turn['content'] + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def test_empty_system_turn_suppresses_a_default_system_prompt(request: pytest.FixtureRequest) -> None:
    from safetune.config import ChatConfig

    tok = _load(request, "chatml")
    tok.chat_template = _QWEN_LIKE
    authors = ChatRenderer.from_config(tok, ChatConfig(), authors_empty_system=True)
    assert (
        authors.prompt_text("hi")
        == "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    plain = ChatRenderer.from_config(tok, ChatConfig(empty_system=False), authors_empty_system=True)
    assert "You are Qwen" in plain.prompt_text("hi")
    assert "You are Qwen" in ChatRenderer.from_config(tok, ChatConfig()).prompt_text("hi")  # MPO paths
    assert authors.fingerprint() != plain.fingerprint()
    # A real system prompt is rendered the same either way.
    assert authors.prompt_text("hi", "Be R.") == plain.prompt_text("hi", "Be R.")


def test_empty_system_per_template(request: pytest.FixtureRequest) -> None:
    llama = ChatRenderer(_load(request, "llama3"), empty_system=True)
    assert "<|start_header_id|>system<|end_header_id|>\n\n<|eot_id|>" in llama.prompt_text("hi")
    gemma_tok = _load(request, "gemma")
    gemma = ChatRenderer(gemma_tok, empty_system=True)
    # The authors prepend sys_prompt + " " for templates without a system role.
    expected = gemma_tok.apply_chat_template(
        [{"role": "user", "content": " hi"}], tokenize=False, add_generation_prompt=True
    )
    assert gemma.prompt_text("hi") == expected


def test_end_token_is_eos_by_default_in_the_chat_section(request: pytest.FixtureRequest) -> None:
    from safetune.config import ChatConfig

    tok = _load(request, "gemma")
    eos = ChatRenderer.from_config(tok, ChatConfig())
    assert eos.end_token == "<eos>"
    assert eos.response_ids("ok")[-1] == tok.convert_tokens_to_ids("<eos>")
    turn = ChatRenderer.from_config(tok, ChatConfig(end_token="template"))
    assert turn.end_token == "<end_of_turn>"
    assert eos.fingerprint() != turn.fingerprint()


# ---- real-tokenizer failures are one-line errors (exit 2), not tracebacks ----


def test_native_system_on_gemma_is_a_config_error(request: pytest.FixtureRequest) -> None:
    from safetune.errors import ConfigError

    with pytest.raises(ConfigError, match=r"chat\.system_mode=native") as info:
        ChatRenderer(_load(request, "gemma"), system_mode="native")
    assert "\n" not in str(info.value)


def test_missing_template_is_a_config_error(llama3_tok: PreTrainedTokenizerBase) -> None:
    from safetune.errors import ConfigError

    llama3_tok.chat_template = None
    with pytest.raises(ConfigError, match="no chat template"):
        ChatRenderer(llama3_tok)


def _unk_tokenizer(known: list[str]) -> PreTrainedTokenizerBase:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<eos>": 1, **{w: i + 2 for i, w in enumerate(known)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>")
    tok.chat_template = TEMPLATES["chatml"].chat_template
    return tok


def test_tokenizer_that_maps_text_to_unk_is_refused() -> None:
    from safetune.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown token"):
        ChatRenderer(_unk_tokenizer(["<|im_start|>", "<|im_end|>"]))
    words = [
        "Hello",
        "!",
        "How",
        "are",
        "you",
        "today",
        "?",
        "The",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "the",
        "lazy",
        "dog",
        ",",
        "42",
        "times",
        ".",
    ]
    ChatRenderer(_unk_tokenizer(words))  # a vocabulary that knows the text is fine


def test_cli_select_exits_2_with_one_line(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from safetune.cli import app

    model = request.getfixturevalue("tiny_gemma")
    args = [
        "select",
        "-m",
        str(model),
        "--data",
        str(tmp_path),
        "-o",
        str(tmp_path / "o"),
        "--chat.system_mode=native",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "chat.system_mode=native" in result.output
    assert "Traceback" not in result.output
