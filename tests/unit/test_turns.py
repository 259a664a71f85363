"""Multi-turn rendering with per-assistant-turn spans (data/turns.py) on the shipped templates and on the
real Qwen2.5-Instruct, Llama-3.1-Instruct, Gemma-2-it and Qwen3 chat templates (tests/data/templates)."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from safetune.data import turns
from safetune.data.batching import IGNORE_INDEX
from safetune.data.chat import ChatError, ChatRenderer
from safetune.data.records import Conversation, Message
from safetune.data.turns import (
    OPENING_TURN,
    ConversationSkipped,
    RenderedConversation,
    render_conversations,
    render_prompt,
    render_turns,
    turns_fingerprint,
)
from safetune.models.tiny import TEMPLATES, default_corpus, train_tokenizer

TEMPLATE_DIR = Path(__file__).parents[1] / "data" / "templates"
END = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>", "gemma": "<end_of_turn>"}
# (family of the tiny tokenizer, real template file or None for the shipped one)
CASES = [
    ("chatml", None),
    ("llama3", None),
    ("gemma", None),
    ("chatml", "qwen2_5_instruct"),
    ("llama3", "llama3_1_instruct"),
    ("gemma", "gemma2_it"),
]
# Llama-3 and Gemma trim message contents; ChatML keeps them as they are.
TRIMS = {"chatml": False, "llama3": True, "gemma": True}


@pytest.fixture(scope="module")
def base_tokenizers() -> dict[str, PreTrainedTokenizerFast]:
    corpus = default_corpus(300) + ["user: hello there", "assistant: I am here to help.", "model: sure"] * 20
    return {family: train_tokenizer(corpus, template=family, vocab_size=400) for family in TEMPLATES}


def _tokenizer(
    base: dict[str, PreTrainedTokenizerFast], family: str, template: str | None = None
) -> PreTrainedTokenizerFast:
    tok = copy.deepcopy(base[family])
    if template is not None:
        tok.chat_template = (TEMPLATE_DIR / f"{template}.jinja").read_text(encoding="utf-8")
    return tok


def _conv(
    *turns_: tuple[str, str], system: str | None = "You are Bob, a baker.", cid: str = "c1"
) -> Conversation:
    return Conversation(id=cid, system=system, messages=tuple(Message(role, text) for role, text in turns_))  # type: ignore[arg-type]


CHAT = _conv(
    ("user", "Hello, who are you?"),
    ("assistant", "I am Bob. I bake bread every morning."),
    ("user", "What do you bake today?"),
    ("assistant", "  A red cake for the king.  "),
    ("user", "Tell me more."),
    ("assistant", "It has apples in it."),
)
GREETING = _conv(
    ("assistant", "Welcome to my bakery!"),
    ("user", "Hello, who are you?"),
    ("assistant", "I am Bob."),
)


def _template_messages(renderer: ChatRenderer, conv: Conversation) -> list[dict[str, str]]:
    """What the test expects the template to get (written out here, independently of turns.py)."""
    msgs = [{"role": m.role, "content": m.content} for m in conv.messages]
    if renderer.system_mode == "native":
        return [{"role": "system", "content": conv.system or ""}, *msgs] if conv.system else msgs
    if msgs[0]["role"] == "assistant":
        msgs.insert(0, {"role": "user", "content": OPENING_TURN})
    if conv.system:
        msgs[0] = {"role": "user", "content": conv.system + " " + msgs[0]["content"]}
    return msgs


def _ids(tok: PreTrainedTokenizerBase, messages: list[dict[str, str]], gen: bool) -> list[int]:
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
    return list(tok.encode(text, add_special_tokens=False))


@pytest.mark.parametrize(("family", "template"), CASES)
def test_spans_match_prefix_renderings(base_tokenizers, family: str, template: str | None) -> None:
    _check_spans(_tokenizer(base_tokenizers, family, template), family)


@pytest.mark.parametrize("family", sorted(TEMPLATES))
def test_spans_on_the_tiny_model_folders(request: pytest.FixtureRequest, family: str) -> None:
    # The tokenizer as a model folder gives it (AutoTokenizer): the path a real model takes.
    _check_spans(AutoTokenizer.from_pretrained(request.getfixturevalue(f"tiny_{family}")), family)


def _check_spans(tok: PreTrainedTokenizerBase, family: str) -> None:
    renderer = ChatRenderer(tok)
    out = render_turns(renderer, CHAT)
    assert out.mode == "whole" and out.split_reason is None and len(out.sequences) == 1
    seq = out.sequences[0]
    assert seq.input_ids == _ids(tok, _template_messages(renderer, CHAT), gen=False)
    msgs = _template_messages(renderer, CHAT)
    positions = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
    assert [(s.turn, s.message) for s in seq.spans] == [(0, 1), (1, 3), (2, 5)]
    for span, position in zip(seq.spans, positions, strict=True):
        prefix = _ids(tok, msgs[:position], gen=True)
        assert seq.input_ids[: span.start] == prefix  # the history is exactly the generation prompt
        content = CHAT.messages[span.message].content
        expected = (content.strip() if TRIMS[family] else content) + END[family]
        assert tok.decode(seq.input_ids[span.start : span.end]) == expected
        assert seq.input_ids[span.end - 1] == tok.convert_tokens_to_ids(END[family])
    # Assistant-only labels: the spans' ids, IGNORE_INDEX everywhere else.
    inside = {i for s in seq.spans for i in range(s.start, s.end)}
    assert all(
        (label == seq.input_ids[i]) if i in inside else (label == IGNORE_INDEX)
        for i, label in enumerate(seq.labels)
    )
    if tok.bos_token_id is not None:
        assert seq.input_ids[0] == tok.bos_token_id and seq.input_ids.count(tok.bos_token_id) == 1


def test_chatml_span_positions_by_hand(base_tokenizers) -> None:
    tok = _tokenizer(base_tokenizers, "chatml")
    conv = _conv(("user", "U1"), ("assistant", "A1"), ("user", "U2"), ("assistant", "A2"), system="S")
    out = render_turns(ChatRenderer(tok), conv)

    def n(text: str) -> int:
        return len(tok.encode(text, add_special_tokens=False))

    head1 = "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU1<|im_end|>\n<|im_start|>assistant\n"
    head2 = head1 + "A1<|im_end|>\n<|im_start|>user\nU2<|im_end|>\n<|im_start|>assistant\n"
    spans = out.sequences[0].spans
    assert [(s.start, s.end) for s in spans] == [
        (n(head1), n(head1 + "A1<|im_end|>")),
        (n(head2), n(head2 + "A2<|im_end|>")),
    ]
    assert len(out.sequences[0].input_ids) == n(head2 + "A2<|im_end|>\n")


@pytest.mark.parametrize(("family", "template"), CASES)
def test_greeting_first(base_tokenizers, family: str, template: str | None) -> None:
    tok = _tokenizer(base_tokenizers, family, template)
    renderer = ChatRenderer(tok)
    out = render_turns(renderer, GREETING)
    seq = out.sequences[0]
    text = tok.decode(seq.input_ids)
    # Gemma raises on an assistant-first conversation (and has no system role to carry the card): the
    # opening turn goes first; ChatML and Llama-3 take the greeting as it is.
    assert out.opening_turn is (family == "gemma")
    assert (OPENING_TURN in text) is (family == "gemma")
    assert out.mode == "whole"
    assert [(s.turn, s.message, s.trainable) for s in seq.spans] == [(0, 0, True), (1, 2, True)]
    assert (
        tok.decode(seq.input_ids[seq.spans[0].start : seq.spans[0].end])
        == "Welcome to my bakery!" + END[family]
    )
    # The opening turn and the system text are masked.
    learned = tok.decode([i for i in seq.labels if i != IGNORE_INDEX])
    assert OPENING_TURN not in learned and "Bob, a baker" not in learned
    if family == "gemma":
        assert "You are Bob, a baker. " + OPENING_TURN in text


def test_greeting_first_without_system_on_gemma(base_tokenizers) -> None:
    tok = _tokenizer(base_tokenizers, "gemma", "gemma2_it")
    out = render_turns(
        ChatRenderer(tok), _conv(*((m.role, m.content) for m in GREETING.messages), system=None)
    )
    text = tok.decode(out.sequences[0].input_ids)
    assert out.opening_turn and text.startswith(
        "<bos><start_of_turn>user\n" + OPENING_TURN + "<end_of_turn>\n"
    )


def test_train_turns_and_message_flags(base_tokenizers) -> None:
    renderer = ChatRenderer(_tokenizer(base_tokenizers, "llama3", "llama3_1_instruct"))
    last = render_turns(renderer, CHAT, train_turns="last")
    assert [s.trainable for s in last.spans] == [False, False, True]
    seq = last.sequences[0]
    assert sum(label != IGNORE_INDEX for label in seq.labels) == seq.spans[2].end - seq.spans[2].start
    flagged = Conversation(
        id="f",
        system=None,
        messages=(
            Message("user", "a"),
            Message("assistant", "b", train=True),
            Message("user", "c"),
            Message("assistant", "d", train=False),
        ),
    )
    assert [s.trainable for s in render_turns(renderer, flagged, train_turns="last").spans] == [True, False]
    assert [s.trainable for s in render_turns(renderer, flagged).spans] == [True, False]


def test_qwen3_breaks_the_prefix_property_and_is_split(base_tokenizers, caplog) -> None:
    tok = _tokenizer(base_tokenizers, "chatml", "qwen3")
    renderer = ChatRenderer(tok)
    conv = _conv(
        ("user", "Hi"),
        ("assistant", "<think>\nGreet back.\n</think>\n\nHello!"),
        ("user", "Bake?"),
        ("assistant", "Yes."),
    )
    turns._SPLIT_LOGGED.clear()
    with caplog.at_level(logging.WARNING, logger="safetune.data.turns"):
        batch = render_conversations(renderer, [conv, CHAT])
    assert batch.split == 2
    assert [r.message for r in caplog.records if "prefix property" in r.message] == [
        caplog.records[0].message
    ]
    assert "2 of 2 conversations" in caplog.records[0].message
    out = batch.conversations[0]
    assert out.mode == "split" and out.split_reason == "history" and len(out.sequences) == 2
    msgs = _template_messages(renderer, conv)
    for seq, position in zip(out.sequences, (2, 4), strict=True):
        (span,) = seq.spans
        assert seq.input_ids[: span.start] == _ids(tok, msgs[:position], gen=True)
        assert span.end == len(seq.input_ids)
        assert seq.labels[: span.start] == [IGNORE_INDEX] * span.start
    first, second = out.sequences
    # Turn 0 keeps its reasoning when it is the turn being trained; the history of turn 1 drops it.
    assert (
        tok.decode(first.input_ids[first.spans[0].start :])
        == "<think>\nGreet back.\n</think>\n\nHello!<|im_end|>"
    )
    assert "Greet back" not in tok.decode(second.input_ids)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="safetune.data.turns"):
        render_conversations(renderer, [conv])
    assert not [r for r in caplog.records if "prefix property" in r.message]  # once per template


def test_turn_count_header_breaks_the_prefix(base_tokenizers) -> None:
    # A header that changes with the conversation's length (like a date or a turn counter).
    tok = _tokenizer(base_tokenizers, "chatml")
    tok.chat_template = (
        "{{ 'Turns: ' + (messages | length | string) + '\\n' }}" + TEMPLATES["chatml"].chat_template
    )
    out = render_turns(ChatRenderer(tok), CHAT)
    assert out.mode == "split" and out.split_reason == "prefix" and len(out.sequences) == 3
    assert all(tok.decode(s.input_ids).startswith("Turns: ") for s in out.sequences)


def test_tokens_merging_across_the_header_split(base_tokenizers) -> None:
    # A generation header ending in a space: " hello" is one pre-token in the whole text, two when the
    # prompt and the turn are tokenized apart.
    tok = _tokenizer(base_tokenizers, "chatml")
    tok.chat_template = (
        "{%- for m in messages -%}{{ '<|im_start|>' + m['role'] + ' ' + m['content'] + '<|im_end|>\\n' }}{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant ' }}{%- endif -%}"
    )
    out = render_turns(ChatRenderer(tok), _conv(("user", "hi"), ("assistant", "hello there")))
    assert out.mode == "split" and out.split_reason == "tokens"
    (seq,) = out.sequences
    assert tok.decode(seq.input_ids[seq.spans[0].start :]) == "hello there<|im_end|>"


@pytest.mark.parametrize(("family", "template"), CASES)
def test_truncation_cuts_whole_turns_from_the_start(
    base_tokenizers, family: str, template: str | None
) -> None:
    tok = _tokenizer(base_tokenizers, family, template)
    renderer = ChatRenderer(tok)
    full = render_turns(renderer, CHAT).sequences[0]
    sizes = set()
    for limit in range(len(full.input_ids) + 1, 0, -3):
        try:
            out = render_turns(renderer, CHAT, max_tokens=limit)
        except ConversationSkipped as skip:
            assert skip.reason == "too_long"
            continue
        (seq,) = out.sequences
        assert len(seq.input_ids) <= limit
        kept = [s.message for s in seq.spans]
        assert kept == [1, 3, 5][3 - len(kept) :] and out.dropped_turns == 3 - len(kept)
        for span in seq.spans:  # every kept span whole
            content = CHAT.messages[span.message].content
            assert (
                tok.decode(seq.input_ids[span.start : span.end])
                == (content.strip() if TRIMS[family] else content) + END[family]
            )
        assert "Bob, a baker" in tok.decode(seq.input_ids)  # the system prompt stays
        sizes.add(len(kept))
    assert sizes == {1, 2, 3}
    with pytest.raises(ConversationSkipped, match="does not fit max_tokens=5"):
        render_turns(renderer, CHAT, max_tokens=5)


def test_split_mode_truncates_each_turn(base_tokenizers) -> None:
    tok = _tokenizer(base_tokenizers, "chatml", "qwen3")
    renderer = ChatRenderer(tok)
    split = render_turns(renderer, CHAT)
    longest = max(len(s.input_ids) for s in split.sequences)
    out = render_turns(renderer, CHAT, max_tokens=longest - 1)
    assert out.mode == "split" and len(out.sequences) == 3
    assert all(len(s.input_ids) <= longest - 1 for s in out.sequences)
    assert "Hello, who are you?" not in tok.decode(out.sequences[2].input_ids)  # history cut, turn whole
    shortest_turn = min(len(s.input_ids) for s in split.sequences[:1])
    assert render_turns(renderer, CHAT, max_tokens=shortest_turn).dropped_turns >= 1


def test_render_conversations_counts(base_tokenizers) -> None:
    renderer = ChatRenderer(_tokenizer(base_tokenizers, "gemma", "gemma2_it"))
    no_assistant = _conv(("user", "anyone?"), cid="empty")
    limit = len(render_turns(renderer, GREETING).sequences[0].input_ids)  # the greeting fits, CHAT is cut
    assert len(render_turns(renderer, CHAT).sequences[0].input_ids) > limit
    batch = render_conversations(renderer, [CHAT, GREETING, no_assistant], max_tokens=limit)
    assert batch.report() == {
        "conversations": len(batch.conversations),
        "split": 0,
        "opening_turns": 1,
        "dropped_turns": batch.dropped_turns,
        "skipped": {"no_assistant": 1},
    }
    assert batch.dropped_turns >= 1 and batch.skipped_ids == ["empty"]
    tiny = render_conversations(renderer, [CHAT], max_tokens=5)
    assert tiny.conversations == [] and tiny.skipped == {"too_long": 1}


# --- cross-check against transformers' assistant masks ({% generation %} markers) ------------------------

# The shipped ChatML layout with markers around exactly content + end token.
_CHATML_GENERATION = (
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'assistant' -%}{{ '<|im_start|>assistant\\n' }}"
    "{%- generation -%}{{ m['content'] + '<|im_end|>' }}{%- endgeneration -%}{{ '\\n' }}"
    "{%- else -%}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def _mask_runs(mask: list[int]) -> list[tuple[int, int]]:
    runs, start = [], None
    for i, bit in enumerate([*mask, 0]):
        if bit and start is None:
            start = i
        elif not bit and start is not None:
            runs.append((start, i))
            start = None
    return runs


@pytest.mark.parametrize(
    ("family", "template", "before", "after"),
    [
        ("chatml", None, 0, 0),
        ("llama3", "llama3_generation", 0, 0),
        ("gemma", "gemma_generation", 0, 1),  # TRL's markers also cover the newline after <end_of_turn>
        ("chatml", "qwen2_5_generation", 1, 1),  # ... and the newline before the content
    ],
)
def test_spans_agree_with_assistant_masks(base_tokenizers, family, template, before, after) -> None:
    tok = _tokenizer(base_tokenizers, family, template)
    if template is None:
        tok.chat_template = _CHATML_GENERATION
    renderer = ChatRenderer(tok)
    conv = GREETING if family == "gemma" else CHAT
    out = render_turns(renderer, _conv(*((m.role, m.content) for m in conv.messages), system=None))
    (seq,) = out.sequences
    encoded = tok.apply_chat_template(
        _template_messages(renderer, _conv(*((m.role, m.content) for m in conv.messages), system=None)),
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    assert list(encoded["input_ids"]) == seq.input_ids
    expected = [(s.start - before, s.end + after) for s in seq.spans]
    assert _mask_runs(list(encoded["assistant_masks"])) == expected
    newline = tok.encode("\n", add_special_tokens=False)
    for s in seq.spans:
        assert seq.input_ids[s.start - before : s.start] == newline * before
        assert seq.input_ids[s.end : s.end + after] == newline * after


# --- errors and settings -----------------------------------------------------------------------------------


def test_template_refusal_names_the_conversation(base_tokenizers) -> None:
    renderer = ChatRenderer(_tokenizer(base_tokenizers, "gemma", "gemma2_it"))
    conv = _conv(("user", "a"), ("user", "b"), ("assistant", "c"), cid="pippa-7")
    with pytest.raises(
        ChatError, match=r"conversation 'pippa-7': the chat template .* refused it: .*alternate"
    ):
        render_turns(renderer, conv)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"train_turns": "first"}, "train_turns must be one of"),
        ({"max_tokens": 0}, "max_tokens must be a positive integer"),
        ({"max_tokens": True}, "max_tokens must be a positive integer"),
        ({"max_tokens": 2.5}, "max_tokens must be a positive integer"),
    ],
)
def test_settings_are_checked(base_tokenizers, kwargs, message) -> None:
    renderer = ChatRenderer(_tokenizer(base_tokenizers, "chatml"))
    with pytest.raises(ChatError, match=message):
        render_turns(renderer, CHAT, **kwargs)
    with pytest.raises(ChatError, match=message):
        render_conversations(renderer, [], **kwargs)


def test_no_assistant_is_skipped(base_tokenizers) -> None:
    renderer = ChatRenderer(_tokenizer(base_tokenizers, "chatml"))
    with pytest.raises(ConversationSkipped) as info:
        render_turns(renderer, _conv(("user", "hello?")))
    assert info.value.reason == "no_assistant"


def test_fingerprint_follows_the_settings(base_tokenizers) -> None:
    renderer = ChatRenderer(_tokenizer(base_tokenizers, "chatml"))
    prints = {
        turns_fingerprint(renderer),
        turns_fingerprint(renderer, "last"),
        turns_fingerprint(renderer, max_tokens=64),
        turns_fingerprint(ChatRenderer(_tokenizer(base_tokenizers, "chatml", "qwen2_5_instruct"))),
    }
    assert len(prints) == 4 and turns_fingerprint(renderer) == turns_fingerprint(renderer, "all", None)


def test_empty_system_turn_applies(base_tokenizers) -> None:
    # Qwen2.5 writes its default system prompt when there is none; the authors' empty system turn stops it.
    tok = _tokenizer(base_tokenizers, "chatml", "qwen2_5_instruct")
    plain = render_turns(ChatRenderer(tok), _conv(("user", "a"), ("assistant", "b"), system=None))
    empty = render_turns(
        ChatRenderer(tok, empty_system=True), _conv(("user", "a"), ("assistant", "b"), system=None)
    )
    assert "You are Qwen" in tok.decode(plain.sequences[0].input_ids)
    assert tok.decode(empty.sequences[0].input_ids).startswith("<|im_start|>system\n<|im_end|>\n")
    assert isinstance(empty, RenderedConversation)


def test_bos_added_once_when_the_template_omits_it(base_tokenizers) -> None:
    tok = _tokenizer(base_tokenizers, "llama3")
    tok.chat_template = TEMPLATES["llama3"].chat_template.replace("{{- bos_token -}}", "")
    (seq,) = render_turns(ChatRenderer(tok), CHAT).sequences
    assert seq.input_ids[0] == tok.bos_token_id and seq.input_ids.count(tok.bos_token_id) == 1
    assert (
        tok.decode(seq.input_ids[seq.spans[0].start : seq.spans[0].end])
        == CHAT.messages[1].content + "<|eot_id|>"
    )


def test_messages_after_the_last_assistant_turn_are_left_out(base_tokenizers) -> None:
    tok = _tokenizer(base_tokenizers, "chatml")
    trailing = Conversation(
        id="t", system=CHAT.system, messages=(*CHAT.messages, Message("user", "XQZ trailing"))
    )
    (seq,) = render_turns(ChatRenderer(tok), trailing).sequences
    assert seq.input_ids == render_turns(ChatRenderer(tok), CHAT).sequences[0].input_ids


@pytest.mark.parametrize(("family", "template"), CASES)
def test_prompt_at_turn_k(base_tokenizers, family: str, template: str | None) -> None:
    tok = _tokenizer(base_tokenizers, family, template)
    renderer = ChatRenderer(tok)
    asking = Conversation(
        id="k", system=GREETING.system, messages=(*GREETING.messages, Message("user", "How?"))
    )
    ids = render_prompt(renderer, asking)
    assert ids == _ids(tok, _template_messages(renderer, asking), gen=True)
    # The prompt is the history of the next turn exactly as render_turns sees it.
    answered = Conversation(
        id="k", system=asking.system, messages=(*asking.messages, Message("assistant", "So."))
    )
    last = render_turns(renderer, answered).spans[-1]
    assert render_turns(renderer, answered).sequences[0].input_ids[: last.start] == ids
    # One token short: the history restarts at the first user message after the greeting.
    cut = Conversation(id="k", system=asking.system, messages=asking.messages[1:])
    assert render_prompt(renderer, asking, max_tokens=len(ids) - 1) == _ids(
        tok, _template_messages(renderer, cut), gen=True
    )
    with pytest.raises(ConversationSkipped, match="does not fit max_tokens=3"):
        render_prompt(renderer, asking, max_tokens=3)
    with pytest.raises(ChatError, match="must end with a user message"):
        render_prompt(renderer, GREETING)


def test_greeting_with_nothing_before_it_gets_the_opening_turn(base_tokenizers) -> None:
    # Its prompt would be an empty conversation, which transformers refuses to render.
    tok = _tokenizer(base_tokenizers, "chatml")
    out = render_turns(
        ChatRenderer(tok), _conv(("assistant", "Hi!"), ("user", "a"), ("assistant", "b"), system=None)
    )
    assert out.opening_turn and tok.decode(out.sequences[0].input_ids).startswith(
        "<|im_start|>user\n" + OPENING_TURN + "<|im_end|>\n<|im_start|>assistant\nHi!<|im_end|>"
    )
