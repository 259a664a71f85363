"""Multi-turn training data named by a run config (issue 23, item 3): whether `data.path` holds
conversations rather than single-turn role data, the conversations themselves (data/conversations.py,
with `data.card` applied) and each conversation's two RDS prompts.

The prompts follow the single-turn rule (data/role_prompts.py, data/cards.py): a conversation held under
its card's role prompt takes the card's unsafe prompt (`card_profile`: the closing instruction replaced
by `selection.unsafe_instruction`); a conversation with a system prompt of its own (a PIPPA persona, a
file's system message) takes that prompt with the unsafe instruction appended (`prompt_profile`); one with
no system prompt at all is scored under the profile-less role prompt of its character's name.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from safetune.config import RunConfig
from safetune.data.cards import Card, card_profile, load_card, prompt_profile
from safetune.data.conversations import FORMATS, detect_format, load_conversations
from safetune.data.readers import InvalidRecords
from safetune.data.records import Conversation
from safetune.errors import ConfigError, DataError

# A conversation without a character name (a plain ShareGPT file without card): RDS's `{name}`.
UNNAMED_ROLE = "the character"


def is_conversation_data(config: RunConfig) -> bool:
    """Whether the run trains on conversations: a conversation `data.format`, a `data.card`, or
    `data.format=auto` with a .json/.jsonl file (or a folder of SillyTavern chats) whose first record is
    a conversation. RoleBench and the other single-turn formats never match the detection."""
    data = config.data
    if data.format in FORMATS or data.card:
        return True
    if data.format != "auto" or not data.path:
        return False
    path = Path(data.path)
    if not (path.is_file() and path.suffix.lower() in (".json", ".jsonl")):
        return False
    try:
        detect_format(path, data.columns, data.split)
    except (DataError, ConfigError):
        return False
    return True


def load_conversation_data(
    config: RunConfig, invalid: InvalidRecords | None = None
) -> tuple[list[Conversation], dict[str, tuple[str, str]]]:
    """The conversations of `data.path` (card applied) and {conversation id: (role prompt, unsafe
    prompt)}. `data.role` keeps one character's conversations; `data.max_examples` the first N."""
    data = config.data
    if not data.path:
        raise ConfigError("data.path is required (a conversation file, folder or HF dataset id)")
    if data.profiles:
        raise ConfigError(
            "data.profiles applies to single-turn role data; a conversation's character comes "
            "from its card (data.card) or its own system prompt"
        )
    card = load_card(data.card) if data.card else None
    fmt = data.format if data.format in FORMATS else "auto"
    conversations = load_conversations(
        data.path,
        fmt,
        columns=data.columns,
        invalid=invalid if invalid is not None else InvalidRecords(data.invalid),
        card=card,
        split=data.split,
    )
    if data.role is not None:
        conversations = [c for c in conversations if c.role == data.role]
        if not conversations:
            raise ConfigError(f"data.role {data.role!r}: no conversation of that character in {data.path}")
    if data.max_examples is not None:
        conversations = conversations[: data.max_examples]
    seen: set[str] = set()
    for conv in conversations:
        if conv.id in seen:
            # selection.jsonl and the score cache are keyed by conversation id
            raise DataError(data.path, None, "id", f"duplicate conversation id {conv.id!r}")
        seen.add(conv.id)
    return conversations, conversation_prompts(conversations, card, config)


def conversation_prompts(
    conversations: Sequence[Conversation], card: Card | None, config: RunConfig
) -> dict[str, tuple[str, str]]:
    """{conversation id: (role prompt, unsafe prompt)} by the rule in the module docstring."""
    selection = config.selection
    card_prompts = None
    if card is not None:
        profile = card_profile(card, config=selection)
        card_prompts = (profile.role_prompt or "", profile.unsafe_prompt or "")
    prompts: dict[str, tuple[str, str]] = {}
    for conv in conversations:
        if card_prompts is not None and conv.system == card_prompts[0]:
            prompts[conv.id] = card_prompts
            continue
        profile = prompt_profile(conv.role or UNNAMED_ROLE, conv.system or "", selection)
        prompts[conv.id] = (profile.role_prompt or "", profile.unsafe_prompt or "")
    return prompts
