"""Property test of the conversation and card loaders: whatever a file holds, they return conversations
(or a card) or raise DataError, never another exception (a traceback in the CLI)."""

from __future__ import annotations

import json
import struct
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from safetune.data.cards import Card, load_card
from safetune.data.conversations import FIELDS as CONVERSATION_FIELDS
from safetune.data.conversations import load_conversations
from safetune.errors import DataError

# The keys the fuzzer writes: the mappable fields of the messages / ShareGPT formats, then PIPPA's,
# SillyTavern's and the cards'.
FIELDS = [
    *CONVERSATION_FIELDS,
    "bot_name",
    "bot_greeting",
    "bot_definitions",
    "categories",
    "conversation",
    "message",
    "is_human",
    "user_name",
    "character_name",
    "mes",
    "is_user",
    "is_system",
    "extra",
    "type",
    "spec",
    "data",
    "description",
    "tags",
    "character_book",
]
WORDS = st.sampled_from(["user", "assistant", "system", "human", "gpt", "narrator", "chara_card_v2", ""])
scalars = st.none() | st.booleans() | st.integers(-1, 2) | st.floats() | st.text(max_size=6) | WORDS
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(FIELDS), inner, max_size=4),
    max_leaves=14,
)
records = st.lists(st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=5), max_size=4)


def _jsonl(rows: list[Any]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(body: bytes, kind: bytes) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + _chunk(kind, body) + _chunk(b"IEND", b"")


documents = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    records.map(lambda rows: json.dumps(rows).encode()),
    records.map(_jsonl),
    st.tuples(records.map(_jsonl), st.integers(0, 200)).map(lambda t: t[0][: t[1]]),
    st.integers(0, 5000).map(lambda n: b"[" * n + b"]" * n),
)
pngs = st.one_of(
    st.tuples(st.binary(max_size=80), st.sampled_from([b"tEXt", b"iTXt", b"zTXt"])).map(lambda t: _png(*t)),
    st.tuples(json_values, st.sampled_from([b"chara\0", b"ccv3\0"])).map(
        lambda t: _png(t[1] + __import__("base64").b64encode(json.dumps(t[0]).encode()), b"tEXt")
    ),
    st.binary(max_size=60).map(lambda b: b"\x89PNG\r\n\x1a\n" + b),
)

Loader = Callable[[Path], Any]
LOADERS: dict[str, tuple[str, Loader]] = {
    "auto jsonl": ("c.jsonl", lambda p: load_conversations(p, invalid="skip")),
    "auto json": ("c.json", lambda p: load_conversations(p)),
    "messages": ("c.jsonl", lambda p: load_conversations(p, "messages", invalid="skip")),
    "sharegpt": ("c.json", lambda p: load_conversations(p, "sharegpt", invalid="skip")),
    "pippa": ("c.jsonl", lambda p: load_conversations(p, "pippa", invalid="skip")),
    "sillytavern": ("c.jsonl", lambda p: load_conversations(p, "sillytavern")),
    "card json": ("card.json", load_card),
}


def _check(name: str, load: Loader, content: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(content)
        try:
            result = load(path)
        except DataError as err:
            assert "\n" not in str(err)
            return
        assert isinstance(result, list | Card)


@pytest.mark.parametrize("kind", sorted(LOADERS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=documents)
def test_conversation_loaders_return_records_or_raise_data_error(kind: str, content: bytes) -> None:
    _check(*LOADERS[kind], content)


@settings(max_examples=80, deadline=None)
@given(content=pngs)
def test_png_cards_load_or_raise_data_error(content: bytes) -> None:
    _check("card.png", load_card, content)
