"""Multi-turn conversations as token ids with a table of assistant-turn spans (issue 23, item 2).

A conversation is rendered once, whole, with the model's own chat template; each assistant turn's span
is found by rendering its prefix: for assistant message k, `prefix = template(messages[:k])` with the
generation header, `target` = the turn as the template writes it after that header, through its
end-of-turn token. The span is trusted only if the whole conversation's token ids start with
`ids(prefix) + ids(target)`: the history the model sees in training is then exactly the prompt it sees
when it generates that turn. A template that breaks this prefix property (Qwen3 drops the `<think>`
block of earlier assistant turns; some templates write a date or a turn count that changes as the
conversation grows) cannot give one sequence for all turns: such a conversation is split into one
sequence per assistant turn, each with its own history as context and only that turn in the labels
(`mode="split"`), and the split is logged once per template with its count.

Greeting-first conversations (the character speaks first) stay as the data layer gives them; templates
that refuse an assistant-first conversation (Gemma, Mistral: they raise), and a greeting with nothing
before it (its prompt would be an empty conversation, which transformers refuses), get a minimal user
turn, `OPENING_TURN`, before the greeting. It is masked out of the labels like every user turn. Without a
native system role (`system_mode=prepend`) the system prompt rides in that opening turn, as it rides in
the first user turn of any other conversation.

Truncation (`max_tokens`) cuts whole turns from the start of the history, at a user message that
follows an assistant message, and re-renders, so an assistant span is never cut in part and the system
prompt always stays; user messages after the last assistant turn are not rendered (nothing there is
trained or scored). A conversation whose last assistant turn does not fit even with only the user
message(s) just before it is dropped and counted (`ConversationSkipped("too_long")`), never cut inside.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from safetune.data.batching import IGNORE_INDEX
from safetune.data.chat import ChatError, ChatRenderer
from safetune.data.records import Conversation, Message
from safetune.storage import hash_json

log = logging.getLogger(__name__)

TRAIN_TURNS = ("all", "last")
# SillyTavern's default "new chat" prompt, the text its chat-completion presets put before a greeting.
OPENING_TURN = "[Start a new Chat]"
# Bumped when the rendering rules change, so cached per-turn figures keyed on `turns_fingerprint` expire.
_RULES_VERSION = 1

Mode = Literal["whole", "split"]


class ConversationSkipped(ValueError):
    """A conversation left out of rendering, counted by reason: "too_long" (its last assistant turn does
    not fit `max_tokens` even with the least history) or "no_assistant" (nothing to train or score)."""

    def __init__(self, conversation_id: str, reason: str, detail: str):
        self.conversation_id, self.reason = conversation_id, reason
        super().__init__(f"conversation {conversation_id!r}: {detail}")


@dataclass(frozen=True)
class TurnSpan:
    """One assistant turn inside a token sequence: ids[start:end] are the turn's text and its end-of-turn
    token. `turn` counts the conversation's assistant messages from 0, `message` indexes
    `Conversation.messages` (both refer to the conversation as given, before any truncation)."""

    turn: int
    message: int
    start: int
    end: int
    trainable: bool


@dataclass(frozen=True)
class TurnSequence:
    """Token ids with labels: IGNORE_INDEX everywhere except the trainable assistant spans."""

    input_ids: list[int]
    labels: list[int]
    spans: tuple[TurnSpan, ...]


@dataclass(frozen=True)
class RenderedConversation:
    """A conversation as token sequences. `mode`: "whole" (one sequence holding every kept assistant
    turn) or "split" (one sequence per assistant turn, each holding only that turn's span; the template
    breaks the prefix property for the reason in `split_reason`: "prefix", "history" or "tokens").
    `dropped_turns`: assistant turns left out by truncation. `opening_turn`: OPENING_TURN was inserted
    before a greeting."""

    id: str
    mode: Mode
    sequences: tuple[TurnSequence, ...]
    split_reason: str | None = None
    dropped_turns: int = 0
    opening_turn: bool = False

    @property
    def spans(self) -> tuple[TurnSpan, ...]:
        return tuple(span for seq in self.sequences for span in seq.spans)

    @property
    def trainable(self) -> bool:
        return any(span.trainable for span in self.spans)


@dataclass
class RenderedConversations:
    """A batch rendered by `render_conversations`, with the counts a run's report keeps."""

    conversations: list[RenderedConversation]
    split: int = 0
    opening_turns: int = 0
    dropped_turns: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    skipped_ids: list[str] = field(default_factory=list)

    def report(self) -> dict[str, Any]:
        """Counts for run.json."""
        return {
            "conversations": len(self.conversations),
            "split": self.split,
            "opening_turns": self.opening_turns,
            "dropped_turns": self.dropped_turns,
            "skipped": dict(self.skipped),
        }


def check_train_turns(value: object) -> str:
    if value not in TRAIN_TURNS:
        raise ChatError(f"train_turns must be one of {list(TRAIN_TURNS)}, got {value!r}")
    return str(value)


def check_max_tokens(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ChatError(f"max_tokens must be a positive integer (or unset), got {value!r}")
    return value


def trainable_flags(conversation: Conversation, train_turns: str = "all") -> dict[int, bool]:
    """message index -> trainable, for every assistant message. A message's own `train` flag wins;
    otherwise "all" trains every assistant turn and "last" only the conversation's final one."""
    check_train_turns(train_turns)
    assistant = [i for i, m in enumerate(conversation.messages) if m.role == "assistant"]
    last = assistant[-1] if assistant else -1
    flags: dict[int, bool] = {}
    for i in assistant:
        own = conversation.messages[i].train
        flags[i] = own if own is not None else (train_turns == "all" or i == last)
    return flags


def turns_fingerprint(renderer: ChatRenderer, train_turns: str = "all", max_tokens: int | None = None) -> str:
    """sha256 of everything that changes `render_turns`' output, for cache keys."""
    return hash_json(
        {
            "renderer": renderer.fingerprint(),
            "train_turns": check_train_turns(train_turns),
            "max_tokens": check_max_tokens(max_tokens),
            "opening_turn": OPENING_TURN,
            "rules": _RULES_VERSION,
        }
    )


# --- building the message list -------------------------------------------------------------------------


def _render(renderer: ChatRenderer, conv_id: str, messages: list[dict[str, str]], gen: bool) -> str:
    try:
        return renderer.chat_text(messages, add_generation_prompt=gen)
    except Exception as err:  # jinja's TemplateError from raise_exception, or anything a template throws
        raise ChatError(
            f"conversation {conv_id!r}: the chat template of {renderer.tokenizer.name_or_path or 'the tokenizer'!r} "
            f"refused it: {err}"
        ) from err


def _refuses(renderer: ChatRenderer, messages: list[dict[str, str]], gen: bool) -> bool:
    try:
        renderer.chat_text(messages, add_generation_prompt=gen)
    except Exception:
        return True
    return False


def _system_text(renderer: ChatRenderer, conversation: Conversation) -> str | None:
    """The system prompt, or "" for an empty system turn (`empty_system`), or None for none at all,
    by ChatRenderer's single-turn rule."""
    if conversation.system:
        return conversation.system
    return "" if renderer.empty_system else None


def _chat_messages(
    renderer: ChatRenderer, conversation: Conversation, start: int, stop: int
) -> tuple[list[dict[str, str]], list[int | None], bool]:
    """The template's message list for `conversation.messages[start:stop]`: system turn (or prepended
    system text), the opening turn where needed. Returns the list, the conversation index of each entry
    (None for system and opening turns) and whether the opening turn was inserted."""
    kept = conversation.messages[start:stop]
    body = [{"role": m.role, "content": m.content} for m in kept]
    origin: list[int | None] = list(range(start, stop))
    system = _system_text(renderer, conversation)
    native = renderer.system_mode == "native"
    head = [{"role": "system", "content": system}] if native and system is not None else []
    opening = False
    if body and body[0]["role"] == "assistant":
        if not native and system is not None:
            opening = True  # the system text needs a user turn to ride in
        else:
            # The template's own refusal decides: Gemma and Mistral raise on an assistant-first list (or on
            # the empty history its generation prompt would be rendered from).
            opening = _refuses(renderer, head + body[:1], gen=False) or _refuses(renderer, head, gen=True)
    if opening:
        body.insert(0, {"role": "user", "content": OPENING_TURN})
        origin.insert(0, None)
    if system is not None:
        if native:
            body.insert(0, {"role": "system", "content": system})
            origin.insert(0, None)
        elif body and body[0]["role"] == "user":
            # ChatRenderer's "prepend" rule: the authors join with a single space.
            body[0] = {"role": "user", "content": system + " " + body[0]["content"]}
    return body, origin, opening


def _cut_points(messages: tuple[Message, ...]) -> list[int]:
    """Where history may start after truncation: a user message that follows an assistant message."""
    return [
        i
        for i in range(1, len(messages))
        if messages[i].role == "user" and messages[i - 1].role == "assistant"
    ]


# --- rendering -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Turn:
    prefix_ids: list[int]
    target_ids: list[int]
    text: str  # prefix + target as text
    rendered_alone: bool  # the rendering through this turn starts with the prefix, and closes the turn


def _plain_ids(renderer: ChatRenderer, text: str) -> list[int]:
    return list(renderer.tokenizer.encode(text, add_special_tokens=False))


def _turn(renderer: ChatRenderer, conv_id: str, messages: list[dict[str, str]], position: int) -> _Turn:
    """Prefix (history + generation header) and target (the turn through its end-of-turn token) of the
    assistant message at `position` of the template's list."""
    end_token = renderer.template_end_token
    prefix = _render(renderer, conv_id, messages[:position], gen=True)
    through = _render(renderer, conv_id, messages[: position + 1], gen=False)
    rest = through[len(prefix) :] if through.startswith(prefix) else ""
    if end_token and end_token in rest:
        # The template's own writing of the turn (trimmed by Llama-3 and Gemma, re-formatted reasoning by
        # Qwen3), up to the turn's last end token: what follows it (a newline) belongs to the next turn.
        target, alone = rest[: rest.rindex(end_token) + len(end_token)], True
    else:
        # No usable rendering of the turn after its prefix: the single-turn rule (text + end token).
        target, alone = messages[position]["content"] + end_token, False
    return _Turn(renderer.text_ids(prefix), _plain_ids(renderer, target), prefix + target, alone)


def _assistant_positions(origin: list[int | None], conversation: Conversation) -> list[tuple[int, int]]:
    return [
        (pos, index)
        for pos, index in enumerate(origin)
        if index is not None and conversation.messages[index].role == "assistant"
    ]


def _labels(ids: list[int], spans: Iterable[TurnSpan]) -> list[int]:
    labels = [IGNORE_INDEX] * len(ids)
    for span in spans:
        if span.trainable:
            labels[span.start : span.end] = ids[span.start : span.end]
    return labels


def _turn_numbers(conversation: Conversation) -> dict[int, int]:
    assistant = [i for i, m in enumerate(conversation.messages) if m.role == "assistant"]
    return {index: turn for turn, index in enumerate(assistant)}


def _whole(
    renderer: ChatRenderer,
    conversation: Conversation,
    flags: dict[int, bool],
    max_tokens: int | None,
) -> RenderedConversation | str:
    """One sequence for the whole conversation, or the reason the prefix property fails."""
    messages = conversation.messages
    last = max(flags)
    starts = [0, *[c for c in _cut_points(messages) if c < last]]
    for start in starts:
        # Messages after the last assistant turn are neither trained nor scored: not rendered.
        chat, origin, opening = _chat_messages(renderer, conversation, start, last + 1)
        whole_text = _render(renderer, conversation.id, chat, gen=False)
        ids = renderer.text_ids(whole_text)
        if max_tokens is None or len(ids) <= max_tokens:
            break
    else:
        return "too_long"
    numbers = _turn_numbers(conversation)
    spans: list[TurnSpan] = []
    for position, index in _assistant_positions(origin, conversation):
        turn = _turn(renderer, conversation.id, chat, position)
        if not turn.rendered_alone:
            return "prefix"
        if not whole_text.startswith(turn.text):
            return "history"
        start, end = len(turn.prefix_ids), len(turn.prefix_ids) + len(turn.target_ids)
        if ids[:end] != turn.prefix_ids + turn.target_ids:
            return "tokens"
        spans.append(TurnSpan(numbers[index], index, start, end, flags[index]))
    kept = {span.message for span in spans}
    return RenderedConversation(
        id=conversation.id,
        mode="whole",
        sequences=(TurnSequence(ids, _labels(ids, spans), tuple(spans)),),
        dropped_turns=sum(1 for i in flags if i not in kept),
        opening_turn=opening,
    )


def _split(
    renderer: ChatRenderer,
    conversation: Conversation,
    flags: dict[int, bool],
    max_tokens: int | None,
    reason: str,
) -> RenderedConversation:
    """One sequence per assistant turn: its history (cut from the start to fit) + the turn."""
    messages = conversation.messages
    numbers = _turn_numbers(conversation)
    cuts = _cut_points(messages)
    sequences: list[TurnSequence] = []
    opened = False
    for index in sorted(flags):
        for start in [0, *[c for c in cuts if c < index]]:
            chat, _, opening = _chat_messages(renderer, conversation, start, index + 1)
            turn = _turn(renderer, conversation.id, chat, len(chat) - 1)
            ids = turn.prefix_ids + turn.target_ids
            if max_tokens is None or len(ids) <= max_tokens:
                break
        else:
            continue  # this turn does not fit even with the least history: left out, counted below
        opened = opened or opening
        span = TurnSpan(numbers[index], index, len(turn.prefix_ids), len(ids), flags[index])
        sequences.append(TurnSequence(ids, _labels(ids, [span]), (span,)))
    if not sequences:
        raise ConversationSkipped(
            conversation.id, "too_long", f"no assistant turn fits max_tokens={max_tokens}"
        )
    return RenderedConversation(
        id=conversation.id,
        mode="split",
        sequences=tuple(sequences),
        split_reason=reason,
        dropped_turns=len(flags) - len(sequences),
        opening_turn=opened,
    )


def render_turns(
    renderer: ChatRenderer,
    conversation: Conversation,
    *,
    train_turns: str = "all",
    max_tokens: int | None = None,
) -> RenderedConversation:
    """Token ids and assistant-turn spans of one conversation (module docstring for the rules).

    Args:
        renderer: the run's ChatRenderer (template, system mode, empty system turn, BOS rule).
        train_turns: "all" assistant turns are trainable, or only the "last"; a message's own
            `train` flag overrides either.
        max_tokens: the longest sequence kept; history is cut by whole turns from the start.

    Raises:
        ConversationSkipped: nothing to render ("no_assistant") or nothing fits ("too_long").
        ChatError: the template refuses the conversation even with the opening turn (e.g. two user
            messages in a row on Gemma): names the conversation and the template's message.
    """
    check_train_turns(train_turns)
    check_max_tokens(max_tokens)
    flags = trainable_flags(conversation, train_turns)
    if not flags:
        raise ConversationSkipped(conversation.id, "no_assistant", "no assistant message")
    whole = _whole(renderer, conversation, flags, max_tokens)
    if isinstance(whole, RenderedConversation):
        return whole
    if whole == "too_long":
        raise ConversationSkipped(
            conversation.id, "too_long", f"its last assistant turn does not fit max_tokens={max_tokens}"
        )
    return _split(renderer, conversation, flags, max_tokens, whole)


def render_prompt(
    renderer: ChatRenderer, conversation: Conversation, *, max_tokens: int | None = None
) -> list[int]:
    """Token ids of a conversation that ends with a user message, plus the generation header: the prompt
    from which the model writes its next turn (safety at turn k). Same system, opening-turn and BOS rules
    as `render_turns`; `max_tokens` cuts whole turns from the start of the history, and a prompt whose
    last user turn alone does not fit raises ConversationSkipped("too_long")."""
    check_max_tokens(max_tokens)
    messages = conversation.messages
    if not messages or messages[-1].role != "user":
        raise ChatError(f"conversation {conversation.id!r}: a prompt must end with a user message")
    for start in [0, *_cut_points(messages)]:
        chat, _, _ = _chat_messages(renderer, conversation, start, len(messages))
        ids = renderer.text_ids(_render(renderer, conversation.id, chat, gen=True))
        if max_tokens is None or len(ids) <= max_tokens:
            return ids
    raise ConversationSkipped(
        conversation.id, "too_long", f"its last user turn does not fit max_tokens={max_tokens}"
    )


# Templates (by hash) whose split has been logged in this process: the log says it once per template.
_SPLIT_LOGGED: set[str] = set()

_SPLIT_REASONS = {
    "prefix": "rendering a conversation through an assistant turn does not start with that turn's prompt",
    "history": "earlier assistant turns are written differently once later turns follow (e.g. dropped reasoning)",
    "tokens": "a turn's tokens merge across the prompt boundary",
}


def render_conversations(
    renderer: ChatRenderer,
    conversations: Iterable[Conversation],
    *,
    train_turns: str = "all",
    max_tokens: int | None = None,
) -> RenderedConversations:
    """`render_turns` over a data set: skipped conversations are counted (and logged with their ids),
    a template that needs the split is logged once with the count of split conversations."""
    check_train_turns(train_turns)
    check_max_tokens(max_tokens)
    batch = RenderedConversations(conversations=[])
    reasons: Counter[str] = Counter()
    for conversation in conversations:
        try:
            rendered = render_turns(renderer, conversation, train_turns=train_turns, max_tokens=max_tokens)
        except ConversationSkipped as skip:
            batch.skipped[skip.reason] += 1
            batch.skipped_ids.append(skip.conversation_id)
            continue
        batch.conversations.append(rendered)
        batch.opening_turns += rendered.opening_turn
        batch.dropped_turns += rendered.dropped_turns
        if rendered.mode == "split":
            batch.split += 1
            reasons[rendered.split_reason or ""] += 1
    total = len(batch.conversations)
    key = hash_json({"chat_template": renderer.tokenizer.chat_template})
    if batch.split and key not in _SPLIT_LOGGED:
        _SPLIT_LOGGED.add(key)
        reason = reasons.most_common(1)[0][0]
        log.warning(
            "the chat template of %s breaks the prefix property (%s): %d of %d conversations are trained "
            "as one example per assistant turn",
            renderer.tokenizer.name_or_path or "the tokenizer",
            _SPLIT_REASONS.get(reason, reason),
            batch.split,
            total,
        )
    if batch.skipped:
        log.warning(
            "left out %d conversations (%s): %s",
            sum(batch.skipped.values()),
            ", ".join(f"{n} {reason}" for reason, n in sorted(batch.skipped.items())),
            ", ".join(batch.skipped_ids[:10]) + (" ..." if len(batch.skipped_ids) > 10 else ""),
        )
    return batch
