"""Multi-turn conversation loaders (data/conversations.py) on faithful copies of each real format:
OpenAI/TRL messages with weights, ShareGPT with a system turn and axolotl train flags, PIPPA rows,
SillyTavern chat files with their header line; the output contract (merging, folding, greetings)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from data_errors import assert_data_error, raised
from safetune.data.cards import Card
from safetune.data.conversations import (
    detect_format,
    load_conversations,
    opens_with_greeting,
)
from safetune.data.readers import InvalidRecords
from safetune.data.records import Conversation, Message
from safetune.errors import ConfigError


def _jsonl(path: Path, rows: list[Any], bom: bool = False) -> Path:
    text = "".join(json.dumps(row) + "\n" for row in rows)
    path.write_text(("\ufeff" if bom else "") + text, encoding="utf-8")
    return path


# OpenAI's fine-tuning guide example: the first assistant answer has weight 0 (not trained).
OPENAI_ROW = {
    "messages": [
        {"role": "system", "content": "Marv is a factual chatbot that is also sarcastic."},
        {"role": "user", "content": "What's the capital of France?"},
        {"role": "assistant", "content": "Paris", "weight": 0},
        {"role": "user", "content": "Can you be more sarcastic?"},
        {"role": "assistant", "content": "Paris, as if everyone doesn't know that already.", "weight": 1},
    ]
}

SHAREGPT_ROW = {
    "id": "aria-1",
    "conversations": [
        {"from": "system", "value": "You are Aria, a rogue."},
        {"from": "human", "value": "Hi there."},
        {"from": "gpt", "value": "*grins* Hello, stranger.", "train": False},
        {"from": "human", "value": "Teach me to pick locks."},
        {"from": "gpt", "value": "Only if you buy the next round.", "train": True},
    ],
}

PIPPA_ROW = {
    "submission_timestamp": 1674795100921,
    "categories": ["Anime", "Books"],
    "bot_id": "Z_eqBXqaixUoyHc5uMs0Kj",
    "bot_name": "Kyouka",
    "bot_greeting": "*Kyouka looks up from her book.* Oh, it's you, {{user}}.",
    "bot_definitions": (
        "{{char}}: I am Kyouka.\n{{random_user_1}}: Hi!\n{{char}}: Hello.\nEND_OF_DIALOG\n"
        "{{random_user_1}}: What are you reading?\n{{char}}: Poems."
    ),
    "bot_description": "A quiet librarian who loves poetry.",
    "conversation": [
        {"message": "*Kyouka looks up from her book.* Oh, it's you, {{user}}.", "is_human": False},
        {"message": "Hi Kyouka! What's new?", "is_human": True},
        {"message": "*She closes the book.* A new poet, {{user}}.", "is_human": False},
    ],
}
PIPPA_SYSTEM = (
    "A quiet librarian who loves poetry.\n"
    "***\nKyouka: I am Kyouka.\nUser: Hi!\nKyouka: Hello.\n"
    "***\nUser: What are you reading?\nKyouka: Poems."
)

SILLYTAVERN = [
    {
        "user_name": "Alex",
        "character_name": "Seraphina",
        "create_date": "2024-3-14@21h05m12s",
        "chat_metadata": {"note_prompt": "", "note_interval": 1, "note_position": 1, "note_depth": 4},
    },
    {
        "name": "Seraphina",
        "is_user": False,
        "is_system": False,
        "send_date": "March 14, 2024 9:05pm",
        "mes": "*You wake in a glade.* Easy there, {{user}}. You're safe now.",
        "extra": {},
        "swipe_id": 0,
        "swipes": ["*You wake in a glade.* Easy there, {{user}}. You're safe now."],
        "swipe_info": [],
    },
    {
        "name": "Alex",
        "is_user": True,
        "send_date": "March 14, 2024 9:06pm",
        "mes": "Where am I?",
        "extra": {},
    },
    {"name": "Seraphina", "is_user": False, "is_system": True, "mes": "[hidden note]", "extra": {}},
    {
        "name": "Seraphina",
        "is_user": False,
        "send_date": "March 14, 2024 9:06pm",
        "mes": "In my forest.",
        "extra": {"api": "openai", "model": "gpt-4"},
        "swipe_id": 1,
        "swipes": ["A glade.", "In my forest."],
    },
    {"name": "System", "is_user": False, "mes": "A storm rolls in.", "extra": {"type": "narrator"}},
    {"name": "Alex", "is_user": True, "mes": "We should find shelter.", "extra": {}},
    {"name": "Seraphina", "is_user": False, "mes": "Follow me.", "extra": {}},
]


def test_openai_messages_keep_weights_and_system(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "chats.jsonl", [OPENAI_ROW])
    assert detect_format(path) == "messages"
    (conv,) = load_conversations(path)
    assert conv.id == "chats-1"
    assert conv.system == "Marv is a factual chatbot that is also sarcastic."
    assert [(m.role, m.train) for m in conv.messages] == [
        ("user", None),
        ("assistant", False),
        ("user", None),
        ("assistant", True),
    ]
    assert conv.messages[3].content == "Paris, as if everyone doesn't know that already."


def test_messages_content_as_a_list_of_text_parts(tmp_path: Path) -> None:
    parts = [{"type": "text", "text": "Look at this."}, {"type": "text", "text": "What is it?"}]
    row = {"messages": [{"role": "user", "content": parts}, {"role": "assistant", "content": "A cat."}]}
    (conv,) = load_conversations(_jsonl(tmp_path / "c.jsonl", [row]))
    assert conv.messages[0].content == "Look at this.\nWhat is it?"
    image = {"messages": [{"role": "user", "content": [{"type": "image", "url": "x"}]}]}
    path = _jsonl(tmp_path / "i.jsonl", [image])
    err = raised(load_conversations, path)
    assert_data_error(err, path, 1, "messages[0].content[0]")
    assert "expected a text part, got 'image'" in str(err)


def test_sharegpt_maps_speakers_and_axolotl_train_flags(tmp_path: Path) -> None:
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps([SHAREGPT_ROW], indent=2), encoding="utf-8")
    assert detect_format(path) == "sharegpt"
    (conv,) = load_conversations(path)
    assert conv == Conversation(
        "aria-1",
        (
            Message("user", "Hi there."),
            Message("assistant", "*grins* Hello, stranger.", train=False),
            Message("user", "Teach me to pick locks."),
            Message("assistant", "Only if you buy the next round.", train=True),
        ),
        system="You are Aria, a rogue.",
    )


def test_mid_conversation_system_is_folded_into_the_user_side_and_same_roles_merge(tmp_path: Path) -> None:
    row = {
        "conversations": [
            {"from": "human", "value": "Open the door."},
            {"from": "system", "value": "(The door is locked.)"},
            {"from": "human", "value": "Try the key."},
            {"from": "gpt", "value": "It turns.", "train": True},
            {"from": "gpt", "value": "The door creaks open.", "train": False},
            {"from": "human", "value": "Go in."},
            {"from": "model", "value": "Dark inside."},
            {"from": "bot", "value": "Something moves."},
        ]
    }
    (conv,) = load_conversations(_jsonl(tmp_path / "c.jsonl", [row]))
    assert conv.system is None
    assert conv.messages == (
        Message("user", "Open the door.\n(The door is locked.)\nTry the key."),
        Message("assistant", "It turns.\nThe door creaks open.", train=False),  # False wins
        Message("user", "Go in."),
        Message("assistant", "Dark inside.\nSomething moves.", train=None),
    )


def test_pippa_persona_becomes_the_system_prompt_and_the_greeting_is_not_trained(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "pippa.jsonl", [PIPPA_ROW])
    assert detect_format(path) == "pippa"
    (conv,) = load_conversations(path)
    assert conv.role == "Kyouka"
    assert conv.system == PIPPA_SYSTEM
    assert conv.messages == (
        Message(
            "assistant", "*Kyouka looks up from her book.* Oh, it's you, User.", train=False, name="Kyouka"
        ),
        Message("user", "Hi Kyouka! What's new?"),
        Message("assistant", "*She closes the book.* A new poet, User.", name="Kyouka"),
    )
    assert opens_with_greeting(conv)


def test_pippa_greeting_is_inserted_when_the_log_starts_with_the_user(tmp_path: Path) -> None:
    row = {**PIPPA_ROW, "conversation": PIPPA_ROW["conversation"][1:]}
    (conv,) = load_conversations(_jsonl(tmp_path / "pippa.jsonl", [row]), user_name="Mei")
    assert [(m.role, m.content, m.train) for m in conv.messages] == [
        ("assistant", "*Kyouka looks up from her book.* Oh, it's you, Mei.", False),
        ("user", "Hi Kyouka! What's new?", None),
        ("assistant", "*She closes the book.* A new poet, Mei.", None),
    ]
    assert "Mei: Hi!" in (conv.system or "")


def test_sillytavern_chat_with_header(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "Seraphina - 2024-3-14@21h05m12s.jsonl", SILLYTAVERN)
    assert detect_format(path) == "sillytavern"
    (conv,) = load_conversations(path)
    assert conv.id == "Seraphina - 2024-3-14@21h05m12s"
    assert conv.role == "Seraphina"
    assert conv.system is None
    assert [(m.role, m.content) for m in conv.messages] == [
        ("assistant", "*You wake in a glade.* Easy there, Alex. You're safe now."),  # the header's user name
        ("user", "Where am I?"),  # the hidden (is_system) message is gone
        ("assistant", "In my forest."),  # mes is the chosen swipe
        ("user", "A storm rolls in.\nWe should find shelter."),  # the narrator line, user side
        ("assistant", "Follow me."),
    ]
    assert conv.messages[0].name == "Seraphina"
    assert [m.train for m in conv.messages] == [False, None, None, None, None]  # the greeting: not trained


def test_sillytavern_folder_is_one_conversation_per_chat_file(tmp_path: Path) -> None:
    folder = tmp_path / "chats"
    folder.mkdir()
    _jsonl(folder / "a.jsonl", SILLYTAVERN)
    _jsonl(folder / "b.jsonl", [SILLYTAVERN[0], *SILLYTAVERN[2:3], *SILLYTAVERN[4:5]])
    _jsonl(folder / "c.jsonl", [SILLYTAVERN[0], SILLYTAVERN[2]])  # no reply: skipped
    policy = InvalidRecords("skip")
    convs = load_conversations(folder, invalid=policy)
    assert [c.id for c in convs] == ["a", "b"]
    assert [m.role for m in convs[1].messages] == ["user", "assistant"]
    assert policy.report()["skipped"] == 1
    assert str(policy.skipped[0]) == f"{folder / 'c.jsonl'}:2: field 'messages': no assistant message"


def test_sillytavern_header_is_required(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "chat.jsonl", SILLYTAVERN[1:])
    err = raised(load_conversations, path, "sillytavern")
    assert_data_error(err, path, 1, "user_name")


def test_bom_and_blank_lines_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "chats.jsonl"
    path.write_text(
        "\ufeff" + json.dumps(OPENAI_ROW) + "\n\n" + json.dumps(SHAREGPT_ROW) + "\n", encoding="utf-8"
    )
    convs = load_conversations(path, "messages", invalid="skip")
    assert [c.id for c in convs] == ["chats-1"]  # the ShareGPT row has no `messages`: skipped


@pytest.mark.parametrize(
    ("row", "line_field", "message"),
    [
        ({"messages": []}, "messages", "empty conversation"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "messages", "no assistant message"),
        (
            {"messages": [{"role": "user", "content": "hi"}, {"role": "narrator", "content": "x"}]},
            "messages[1].role",
            "unknown role 'narrator'",
        ),
        (
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]},
            "messages[1].content",
            "empty message",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "a", "weight": 0.5},
                ]
            },
            "messages[1].weight",
            "expected 0/1 or true/false",
        ),
        ({"messages": [{"role": "user"}]}, "messages[0].content", "missing"),
        ({"messages": [{"role": ["user"], "content": "hi"}]}, "messages[0].role", "unknown role ['user']"),
        ({"messages": "hi"}, "messages", "expected a list of messages, got string"),
        (
            {"messages": [{"role": "user", "content": 3}]},
            "messages[0].content",
            "expected a string, got number",
        ),
    ],
)
def test_bad_messages_are_located(tmp_path: Path, row: dict[str, Any], line_field: str, message: str) -> None:
    path = _jsonl(tmp_path / "c.jsonl", [OPENAI_ROW, row])
    err = raised(load_conversations, path, "messages")
    assert_data_error(err, path, 2, line_field)
    assert message in str(err) and "data.invalid=skip" in str(err)


def test_unknown_sharegpt_speaker_is_located(tmp_path: Path) -> None:
    row = {"conversations": [{"from": "human", "value": "hi"}, {"from": "narrator", "value": "x"}]}
    path = _jsonl(tmp_path / "c.jsonl", [row])
    err = raised(load_conversations, path, "sharegpt")
    assert_data_error(err, path, 1, "conversations[1].from")
    assert "unknown speaker 'narrator'" in str(err)


def test_skip_counts_bad_conversations_and_ids_must_be_unique(tmp_path: Path) -> None:
    empty = {"id": "e", "conversations": []}
    path = _jsonl(tmp_path / "c.jsonl", [SHAREGPT_ROW, empty, SHAREGPT_ROW])
    policy = InvalidRecords("skip")
    convs = load_conversations(path, invalid=policy)
    assert [c.id for c in convs] == ["aria-1"]
    assert [str(e) for e in policy.skipped] == [
        f"{path}:2: field 'conversations': empty conversation",
        f"{path}:3: field 'id': duplicate id 'aria-1' (first at line 1)",
    ]
    only_bad = _jsonl(tmp_path / "bad.jsonl", [empty])
    assert_data_error(raised(load_conversations, only_bad, invalid="skip"), only_bad, None, None)


def test_column_mapping(tmp_path: Path) -> None:
    row = {
        "chat": [{"speaker": "user", "text": "hi"}, {"speaker": "assistant", "text": "hello", "w": 0}],
        "key": 7,
    }
    columns = {"messages": "chat", "role": "speaker", "content": "text", "weight": "w", "id": "key"}
    (conv,) = load_conversations(_jsonl(tmp_path / "c.jsonl", [row]), columns=columns)
    assert conv.id == "7"
    assert conv.messages == (Message("user", "hi"), Message("assistant", "hello", train=False))
    with pytest.raises(ConfigError, match="unknown field"):
        load_conversations(tmp_path / "c.jsonl", columns={"speaker": "x"})
    pippa = _jsonl(tmp_path / "p.jsonl", [PIPPA_ROW])
    with pytest.raises(ConfigError, match="not to pippa"):
        load_conversations(pippa, columns={"id": "bot_id"})


def test_undetectable_format_and_bad_suffix(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "c.jsonl", [{"question": "hi"}])
    err = raised(load_conversations, path)
    assert_data_error(err, path, 1, None)
    assert "cannot tell the conversation format" in str(err)
    csv = tmp_path / "c.csv"
    csv.write_text("a,b\n1,2\n")
    assert "expected .json or .jsonl" in str(raised(load_conversations, csv, "messages"))
    with pytest.raises(ConfigError, match="must be one of"):
        load_conversations(path, "chatml")


def test_card_gives_system_role_and_macros(tmp_path: Path) -> None:
    row = {
        "conversations": [
            {"from": "gpt", "value": "Welcome, {{user}}. I am {{char}}."},
            {"from": "human", "value": "Hi <BOT>!"},
            {"from": "gpt", "value": "Sit down."},
        ]
    }
    path = _jsonl(tmp_path / "c.jsonl", [row, SHAREGPT_ROW])
    card = Card("v2", "Aria", description="{{char}} is a rogue.", personality="sly")
    first, second = load_conversations(path, card=card, user_name="Mei")
    assert first.system == "Aria is a rogue.\nAria's personality: sly"
    assert first.role == second.role == "Aria"
    assert [m.content for m in first.messages] == ["Welcome, Mei. I am Aria.", "Hi Aria!", "Sit down."]
    assert second.system == "You are Aria, a rogue."  # its own system prompt stays
    with pytest.raises(ConfigError, match="PIPPA"):
        load_conversations(_jsonl(tmp_path / "p.jsonl", [PIPPA_ROW]), card=card)


def test_card_greeting_copied_into_a_chat_is_not_trained(tmp_path: Path) -> None:
    """A first message that is the card's `first_mes` (after macros) is the card's text, not a reply:
    train=False; another first message, or one with its own flag, keeps what it had."""
    card = Card("v2", "Aria", first_mes="Welcome, {{user}}. I am {{char}}.")
    rows = [
        {"messages": [{"role": "assistant", "content": "Welcome, User. I am Aria."}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "Sit."}]},
        {"messages": [{"role": "assistant", "content": "Welcome, {{user}}. I am {{char}}.", "weight": 1}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "Sit."}]},
        {"messages": [{"role": "assistant", "content": "Hello there."}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "Sit."}]},
    ]  # fmt: skip
    copied, flagged, other = load_conversations(_jsonl(tmp_path / "c.jsonl", rows), card=card)
    assert copied.messages[0].train is False and copied.messages[2].train is None
    assert flagged.messages[0].train is True  # the file's own flag wins
    assert other.messages[0].train is None
    plain = load_conversations(_jsonl(tmp_path / "d.jsonl", rows[:1]))[0]
    assert plain.messages[0].train is None  # without the card nothing says it is the greeting
