"""Character cards (V1, V2 `chara_card_v2`, V3 `chara_card_v3`) as role profiles (issue 23).

A card is read from a JSON file or from a PNG's text chunks (tEXt, iTXt or zTXt; keyword `ccv3` first,
then `chara`; the value is base64 of UTF-8 JSON), parsed here with struct and zlib. `card_prompt`
assembles the character's system prompt the way SillyTavern's default story string does, and
`card_profile` turns a card into the `RoleProfile` RDS scores under: its role prompt, and its unsafe
prompt by the single-turn rule (the closing instruction replaced by `selection.unsafe_instruction`).

Assembly order (one system prompt; parts that are empty are left out, parts joined by a line break):

1. the card's `system_prompt` when it has one (it replaces the front-end's default, `default_system`;
   a `{{original}}` inside it stands for that default), else `default_system` (empty by default);
2. `description`;
3. `{{char}}'s personality: <personality>`;
4. `Scenario: <scenario>`;
5. the example dialogues of `mes_example`, each block (a `<START>` marker opens one) preceded by a
   `***` line, as SillyTavern's default example separator;
6. `post_history_instructions`: a front-end sends them after the chat history; a conversation has one
   system prompt, so they close it instead. They are the card's closing instruction, so the unsafe
   prompt replaces them (a card without them gets the unsafe instruction appended).

Left out: `creator_notes` (meant for the human reading the card, never sent to the model),
`character_book` (lorebook entries are inserted by keyword matches on the live chat, which a training
set does not replay), `alternate_greetings` and `group_only_greetings` (other openings; `first_mes` is
the greeting), `tags`, `creator`, `character_version`, `extensions` and V3 `assets` (metadata). They
are kept on the `Card` for callers that want them.

Macros: `{{char}}` / `<BOT>` / `<char>` (the V3 `nickname` when set, else the name) and `{{user}}` / `<USER>`
(the user's name, "User" by default), case-insensitively, in every text; PIPPA's `{{random_user_N}}`
stands for the user too. Other front-end macros (`{{time}}`, `{{random:...}}`) stay as they are.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from safetune.config import SelectionConfig
from safetune.data.readers import (
    DuplicateKey,
    PathLike,
    existing_file,
    json_members,
    json_type,
    read_text,
    unique_pairs,
)
from safetune.data.records import RoleProfile
from safetune.errors import DataError

Spec = Literal["v1", "v2", "v3"]
SPECS: dict[str, Spec] = {"chara_card_v2": "v2", "chara_card_v3": "v3"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_KEYWORDS = ("ccv3", "chara")  # in order of preference (the V3 spec: ccv3 wins over chara)
TEXT_CHUNKS = (b"tEXt", b"iTXt", b"zTXt")
DEFAULT_USER = "User"
EXAMPLE_SEPARATOR = "***"
TEXT_FIELDS = (
    "name",
    "description",
    "personality",
    "scenario",
    "first_mes",
    "mes_example",
    "creator_notes",
    "system_prompt",
    "post_history_instructions",
    "creator",
    "character_version",
    "nickname",
)
LIST_FIELDS = ("alternate_greetings", "group_only_greetings", "tags")

_CHAR = re.compile(r"\{\{char\}\}|<BOT>|<CHAR>", re.IGNORECASE)
_USER = re.compile(r"\{\{user\}\}|<USER>|\{\{random_user_\d+\}\}", re.IGNORECASE)
_ORIGINAL = re.compile(r"\{\{original\}\}", re.IGNORECASE)
_START = re.compile(r"<START>", re.IGNORECASE)


@dataclass(frozen=True)
class Card:
    """A character card, whatever its version, with every text field present ("" when the card has
    none). `character_book` and `extensions` are the card's own JSON, kept for callers, not used here."""

    spec: Spec
    name: str
    description: str = ""
    personality: str = ""
    scenario: str = ""
    first_mes: str = ""
    mes_example: str = ""
    creator_notes: str = ""
    system_prompt: str = ""
    post_history_instructions: str = ""
    creator: str = ""
    character_version: str = ""
    nickname: str = ""
    alternate_greetings: tuple[str, ...] = ()
    group_only_greetings: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    character_book: Mapping[str, Any] | None = None
    extensions: Mapping[str, Any] = field(default_factory=dict)

    @property
    def char(self) -> str:
        """What `{{char}}` stands for: the V3 nickname when the card has one, else the name."""
        return self.nickname or self.name


# ---- reading ----


def load_card(path: PathLike) -> Card:
    """A character card from a .json file or a .png with the card in a text chunk."""
    file = existing_file(path)
    if file.read_bytes()[:8] == PNG_SIGNATURE:
        keyword, text = png_card_text(file)
        try:
            value = json.loads(text, object_pairs_hook=unique_pairs)
        except json.JSONDecodeError as err:
            raise DataError(file, None, f"{keyword} chunk", f"invalid JSON ({err.msg})") from None
        except DuplicateKey as err:
            raise DataError(file, None, f"{keyword} chunk", f"duplicate key {err.key!r}") from None
        if not isinstance(value, dict):
            raise DataError(file, None, f"{keyword} chunk", f"expected an object, got {json_type(value)}")
        return card_from_json(file, value, {})
    if file.suffix.lower() == ".png":
        raise DataError(file, None, None, "not a PNG file (no PNG signature)")
    lines = {key: line for line, key, _ in json_members(file, dict) if key is not None}
    value = json.loads(read_text(file))  # json_members has checked it: valid, no duplicate keys
    return card_from_json(file, value, lines)


def card_from_json(path: PathLike, value: Mapping[str, Any], lines: Mapping[str, int]) -> Card:
    """A card from its decoded JSON object: V2 / V3 by `spec` (fields under `data`), else V1 (flat).
    `lines`: the line of each top-level key, when the card came from a JSON file."""
    spec = value.get("spec")
    if spec is None:
        return _card(path, "v1", value, "", lines.get)
    if not isinstance(spec, str) or spec not in SPECS:
        known = ", ".join(SPECS)
        raise DataError(path, lines.get("spec"), "spec", f"unknown card spec {spec!r} (known: {known})")
    data = value.get("data")
    if not isinstance(data, dict):
        what = "missing" if data is None else f"expected an object, got {json_type(data)}"
        raise DataError(path, lines.get("data"), "data", what)
    line = lines.get("data")
    return _card(path, SPECS[spec], data, "data.", lambda _key: line)


def _card(path: PathLike, spec: Spec, data: Mapping[str, Any], prefix: str, line_of: Any) -> Card:
    texts: dict[str, str] = {}
    for key in TEXT_FIELDS:
        value = data.get(key)
        if value is None:
            texts[key] = ""
        elif not isinstance(value, str):
            raise DataError(path, line_of(key), prefix + key, f"expected a string, got {json_type(value)}")
        else:
            texts[key] = value
    if not texts["name"].strip():
        raise DataError(path, line_of("name"), prefix + "name", "missing" if "name" not in data else "empty")
    lists: dict[str, tuple[str, ...]] = {}
    for key in LIST_FIELDS:
        value = data.get(key)
        if value is None:
            value = []
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise DataError(path, line_of(key), prefix + key, "expected a list of strings")
        lists[key] = tuple(value)
    book, extensions = data.get("character_book"), data.get("extensions")
    if book is not None and not isinstance(book, dict):
        raise DataError(path, line_of("character_book"), prefix + "character_book", "expected an object")
    if extensions is not None and not isinstance(extensions, dict):
        raise DataError(path, line_of("extensions"), prefix + "extensions", "expected an object")
    return Card(
        spec,
        name=texts["name"].strip(),
        description=texts["description"],
        personality=texts["personality"],
        scenario=texts["scenario"],
        first_mes=texts["first_mes"],
        mes_example=texts["mes_example"],
        creator_notes=texts["creator_notes"],
        system_prompt=texts["system_prompt"],
        post_history_instructions=texts["post_history_instructions"],
        creator=texts["creator"],
        character_version=texts["character_version"],
        nickname=texts["nickname"].strip(),
        alternate_greetings=lists["alternate_greetings"],
        group_only_greetings=lists["group_only_greetings"],
        tags=lists["tags"],
        character_book=book,
        extensions=extensions or {},
    )


def png_text_chunks(path: PathLike) -> dict[str, tuple[str, str]]:
    """keyword -> (chunk type, text) of every tEXt / iTXt / zTXt chunk of a PNG (the first of each
    keyword). Chunk CRCs are checked: a damaged file says so instead of yielding a truncated card."""
    file = Path(path)
    data = file.read_bytes()
    if data[:8] != PNG_SIGNATURE:
        raise DataError(file, None, None, "not a PNG file (no PNG signature)")
    chunks: dict[str, tuple[str, str]] = {}
    pos = 8
    while pos < len(data):
        if pos + 8 > len(data):
            raise DataError(file, None, None, f"truncated PNG (chunk header at byte {pos})")
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 8 + length
        if end + 4 > len(data):
            raise DataError(file, None, None, f"truncated PNG ({kind!r} chunk at byte {pos})")
        body = data[pos + 8 : end]
        (crc,) = struct.unpack(">I", data[end : end + 4])
        if zlib.crc32(kind + body) != crc:
            raise DataError(file, None, None, f"corrupt PNG ({kind!r} chunk at byte {pos}: CRC mismatch)")
        if kind in TEXT_CHUNKS:
            keyword, text = _text_chunk(file, kind, body)
            chunks.setdefault(keyword, (kind.decode("ascii"), text))
        if kind == b"IEND":
            break
        pos = end + 4
    return chunks


def _text_chunk(file: Path, kind: bytes, body: bytes) -> tuple[str, str]:
    """(keyword, text) of one PNG text chunk (PNG spec 11.3.4): tEXt is Latin-1, zTXt Latin-1 deflated,
    iTXt UTF-8 with optional deflate."""
    where = f"{kind.decode('ascii')} chunk"
    keyword, sep, rest = body.partition(b"\0")
    if not sep:
        raise DataError(file, None, where, "no keyword separator")
    name = keyword.decode("latin-1")
    try:
        if kind == b"tEXt":
            return name, rest.decode("latin-1")
        if kind == b"zTXt":
            return name, zlib.decompress(rest[1:]).decode("latin-1")
        compressed, rest = rest[0], rest[2:]  # flag, method
        _language, _, rest = rest.partition(b"\0")
        _translated, _, text = rest.partition(b"\0")
        return name, (zlib.decompress(text) if compressed else text).decode("utf-8")
    except (zlib.error, UnicodeDecodeError, IndexError) as err:
        raise DataError(file, None, f"{name} {where}", f"cannot decode ({err})") from None


def png_card_text(path: PathLike) -> tuple[str, str]:
    """(keyword, JSON text) of the card in a PNG: the `ccv3` chunk when there is one, else `chara`.
    A chunk that does not decode is an error, never a silent fall-back to the other one."""
    file = Path(path)
    chunks = png_text_chunks(file)
    for keyword in PNG_KEYWORDS:
        if keyword in chunks:
            kind, text = chunks[keyword]
            try:
                decoded = base64.b64decode(text.strip(), validate=True).decode("utf-8")
            except (binascii.Error, ValueError) as err:
                raise DataError(file, None, f"{keyword} {kind} chunk", f"not base64 UTF-8 ({err})") from None
            return keyword, decoded.removeprefix("\ufeff")
    found = ", ".join(sorted(chunks)) or "none"
    raise DataError(
        file, None, None, f"no character card in this PNG (no ccv3 or chara text chunk; text chunks: {found})"
    )


# ---- assembling ----


def substitute_macros(text: str, char: str, user: str = DEFAULT_USER) -> str:
    """`text` with `{{char}}` / `<BOT>` / `<char>` -> `char` and `{{user}}` / `<USER>` / `{{random_user_N}}` ->
    `user`, case-insensitively. Replacements are literal (a name with a backslash stays as it is)."""
    return _USER.sub(lambda _: user, _CHAR.sub(lambda _: char, text))


def example_dialogues(mes_example: str) -> str:
    """`mes_example` as SillyTavern lays it out: each `<START>` block preceded by the example separator."""
    blocks = [block.strip() for block in _START.split(mes_example)]
    return "\n".join(f"{EXAMPLE_SEPARATOR}\n{block}" for block in blocks if block)


def card_prompt(
    card: Card, user_name: str = DEFAULT_USER, default_system: str = "", closing: str | None = None
) -> str:
    """The card's system prompt, in the order of the module docstring. `closing`, when given, takes the
    place of `post_history_instructions` (the unsafe prompt's instruction)."""
    system = (
        _ORIGINAL.sub(lambda _: default_system, card.system_prompt)
        if card.system_prompt.strip()
        else default_system
    )
    parts = [
        system,
        card.description,
        f"{{{{char}}}}'s personality: {card.personality.strip()}" if card.personality.strip() else "",
        f"Scenario: {card.scenario.strip()}" if card.scenario.strip() else "",
        example_dialogues(card.mes_example),
        card.post_history_instructions if closing is None else closing,
    ]
    text = "\n".join(part.strip() for part in parts if part.strip())
    return substitute_macros(text, card.char, user_name)


def card_profile(
    card: Card,
    user_name: str = DEFAULT_USER,
    config: SelectionConfig | None = None,
    default_system: str = "",
) -> RoleProfile:
    """The card as a role profile: `role_prompt` its assembled prompt and `unsafe_prompt` the same with
    its closing instruction (`post_history_instructions`, or nothing) replaced by
    `selection.unsafe_instruction`, so RDS (data/role_prompts.py) uses both verbatim.
    `selection.role_prompt` does not apply: a card's prompt is assembled as a front-end assembles it."""
    selection = config or SelectionConfig()
    role_prompt = card_prompt(card, user_name, default_system)
    unsafe_prompt = card_prompt(card, user_name, default_system, closing=selection.unsafe_instruction)
    if not role_prompt:
        # A card with nothing but a name: its prompt is what a profile-less role gets, the name.
        role_prompt = selection.role_prompt.format(name=card.char, description="").strip()
        unsafe_prompt = f"{role_prompt}\n{selection.unsafe_instruction}"
    return RoleProfile(
        name=card.name,
        description=substitute_macros(card.description.strip(), card.char, user_name),
        role_prompt=role_prompt,
        unsafe_prompt=unsafe_prompt,
    )


def prompt_profile(name: str, prompt: str, config: SelectionConfig | None = None) -> RoleProfile:
    """A role profile for a conversation whose system prompt is already assembled and has no separate
    closing instruction (a PIPPA persona, a file's own system message): the unsafe prompt is the prompt
    with `selection.unsafe_instruction` appended, as `card_profile` does for a card without
    `post_history_instructions` (for a PIPPA bot the two give the same prompts)."""
    selection = config or SelectionConfig()
    role_prompt = prompt.strip() or selection.role_prompt.format(name=name, description="").strip()
    return RoleProfile(
        name=name,
        description=prompt.strip(),
        role_prompt=role_prompt,
        unsafe_prompt=f"{role_prompt}\n{selection.unsafe_instruction}",
    )
