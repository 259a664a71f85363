"""Loaders of multi-turn role-play conversations (issue 23): OpenAI/TRL `messages`, ShareGPT
`conversations`, PIPPA rows (JSON / JSONL files or Hugging Face datasets) and SillyTavern chat files
(a file or a folder of them), one registry (`FORMATS`) with `auto` detection from the first record.
Records are read by data/readers.py, so every problem is one located `DataError` (`file:line: field`)
and `data.invalid=skip` skips whole conversations, counted. docs/data.md documents every format.

Output contract (what every loader returns, and what the renderer can rely on):

- `Conversation.system`: the file's own system prompt (a record-level `system` field, then the
  system messages that open the conversation, joined by a blank line), else the persona prompt the
  format carries (PIPPA), else the card's prompt when a card is given (`apply_card`), else None.
- `Conversation.messages`: user and assistant messages that alternate strictly. Consecutive messages
  of one role are merged into one, joined by a line break (as front-ends send them to strict
  templates); the merged message is trained unless one of its parts says not to (`train=False` wins,
  since a turn cannot be half trained). A system message after the first user or assistant message
  (a narrator line, an out-of-character note) belongs to the user's side of the conversation: it
  becomes a user message at its place, merged with its neighbours by the rule above, because most chat
  templates accept no system message mid-conversation.
- There is at least one assistant message. The conversation may end with a user message (kept: it
  is context for nothing in training, but a prefix for evaluation).
- The first message may be the character's greeting (an assistant message). It stays there as an
  assistant message: it is context for every later turn, exactly as the user saw it. A greeting copied
  from the character's definition (PIPPA's `bot_greeting`, the first message of a SillyTavern chat,
  which is the card's `first_mes`) is not the model's reply to anything, so it has `train=False`. Templates that reject an assistant-first conversation (Gemma, Mistral) need a
  user turn before it: the renderer (data/turns.py) inserts its `OPENING_TURN` (SillyTavern's default
  new-chat marker) for those templates only, alike in every prefix, and never trains it. The data layer
  does not insert it, because templates that accept an assistant-first conversation (Llama 3, Qwen 2.5,
  ChatML) should see the conversation as it was.
- An empty message, an empty conversation and a conversation without an assistant message are located
  errors (skipped, counted, with `data.invalid=skip`).
- `Message.train`: the file's per-message flag (OpenAI `weight` 0/1, axolotl `train`), else None. Flags
  on user messages are accepted and ignored (only assistant messages are trained).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from safetune.config import SelectionConfig
from safetune.data.cards import DEFAULT_USER, Card, card_profile, substitute_macros
from safetune.data.readers import (
    HF_MARKERS,
    InvalidRecords,
    PathLike,
    check_object,
    existing_file,
    json_type,
    open_hf_dataset,
    read_jsonl,
    read_records,
)
from safetune.data.records import Conversation, Message
from safetune.errors import ConfigError, DataError

log = logging.getLogger(__name__)

Role = Literal["system", "user", "assistant"]

# The column mapping: our name -> the file's key (messages and sharegpt formats).
FIELDS: tuple[str, ...] = (
    "messages",
    "role",
    "content",
    "weight",
    "conversations",
    "from",
    "value",
    "train",
    "name",
    "id",
    "system",
)
DEFAULT_COLUMNS: dict[str, str] = {f: f for f in FIELDS}
MESSAGE_ROLES: dict[str, Role] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
}
SHAREGPT_ROLES: dict[str, Role] = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "bot": "assistant",
}
# Character.AI's separator between example dialogues in PIPPA's bot_definitions.
PIPPA_DIALOG_END = "END_OF_DIALOG"
SUFFIXES = (".json", ".jsonl")


@dataclass(frozen=True)
class RawMessage:
    """One message as a file gives it, before the contract's rules (merging, folding) apply. `field`
    names it in errors (`messages[3]`)."""

    role: Role
    content: object
    field: str
    train: bool | None = None
    name: str | None = None


@dataclass(frozen=True)
class LoadOptions:
    """What a format's loader needs besides the path: the column mapping, the bad-record policy, the
    user's name for `{{user}}` and the split of a Hugging Face dataset."""

    columns: Mapping[str, str]
    policy: InvalidRecords
    user: str = DEFAULT_USER
    split: str = "train"


@dataclass(frozen=True)
class ConversationFormat:
    """One entry of the registry. `detect(first record, columns)`: whether a source whose first record
    this is has this format. `load(path, options)`: its conversations."""

    name: str
    detect: Callable[[Mapping[str, Any], Mapping[str, str]], bool]
    load: Callable[[str, LoadOptions], list[Conversation]]
    columns: bool  # whether a column mapping applies


# ---- the contract: raw messages -> Conversation ----


def assemble(
    path: PathLike,
    line: int,
    ident: str,
    raw: Sequence[RawMessage],
    *,
    field: str,
    system: str | None = None,
    role: str | None = None,
) -> Conversation:
    """A `Conversation` from a file's messages by the rules of the module docstring. `field` names the
    message list in errors; `system` is a record-level system prompt, if any."""
    if not raw:
        raise DataError(path, line, field, "empty conversation")
    prompts = [system.strip()] if system and system.strip() else []
    messages: list[Message] = []
    for item in raw:
        if not isinstance(item.content, str):
            raise DataError(path, line, item.field, f"expected a string, got {json_type(item.content)}")
        if not item.content.strip():
            raise DataError(path, line, item.field, "empty message")
        if item.role == "system" and not messages:
            prompts.append(item.content.strip())
            continue
        speaker: Literal["user", "assistant"] = "assistant" if item.role == "assistant" else "user"
        if messages and messages[-1].role == speaker:
            last = messages[-1]
            messages[-1] = replace(last, content=f"{last.content}\n{item.content}", train=_merged(last, item))
        else:
            messages.append(Message(speaker, item.content, item.train, item.name))
    if not any(m.role == "assistant" for m in messages):
        raise DataError(path, line, field, "no assistant message")
    return Conversation(ident, tuple(messages), "\n\n".join(prompts) or None, role)


def _merged(last: Message, item: RawMessage) -> bool | None:
    flags = [flag for flag in (last.train, item.train) if flag is not None]
    return None if not flags else all(flags)


def opens_with_greeting(conversation: Conversation) -> bool:
    return bool(conversation.messages) and conversation.messages[0].role == "assistant"


def apply_card(
    conversations: Sequence[Conversation],
    card: Card,
    user_name: str = DEFAULT_USER,
    config: SelectionConfig | None = None,
) -> list[Conversation]:
    """The conversations of one character: its card's role prompt (`card_profile`'s, so training sees
    the very prompt RDS scores under) as the system prompt of those without one of their own (a file's
    own system prompt is what its conversation was held under, so it stays), the card's name as their
    role, and the card's macros replaced in every message. A first message that is the card's greeting
    (`first_mes`) and has no training flag of its own gets `train=False`, as in PIPPA and SillyTavern
    chats."""
    prompt = card_profile(card, user_name, config).role_prompt
    greeting = substitute_macros(card.first_mes, card.char, user_name).strip()
    out = []
    for conv in conversations:
        messages = tuple(
            replace(m, content=substitute_macros(m.content, card.char, user_name)) for m in conv.messages
        )
        first = messages[0] if messages else None
        if (
            greeting
            and first
            and first.role == "assistant"
            and first.train is None
            and first.content.strip() == greeting
        ):
            # the card's own greeting, copied into the chat as a front-end does: not a reply to anything
            messages = (replace(first, train=False), *messages[1:])
        system = conv.system if conv.system is not None else (prompt or None)
        out.append(replace(conv, messages=messages, system=system, role=card.name))
    return out


# ---- field checks ----


def _flag(path: PathLike, line: int, field: str, value: object) -> bool | None:
    """A per-message training flag: absent/null, a boolean, or the number 0 or 1."""
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    raise DataError(path, line, field, f"expected 0/1 or true/false, got {json_type(value)} {value!r}")


def _optional_text(path: PathLike, line: int, field: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise DataError(path, line, field, f"expected a string, got {json_type(value)}")
    return value


def _message_list(path: PathLike, line: int, row: Mapping[str, Any], key: str) -> list[Any]:
    if key not in row:
        raise DataError(path, line, key, "missing")
    value = row[key]
    if not isinstance(value, list):
        raise DataError(path, line, key, f"expected a list of messages, got {json_type(value)}")
    return value


def _text_parts(path: PathLike, line: int, field: str, content: object) -> object:
    """OpenAI's and TRL's list-of-parts content (`[{"type": "text", "text": ...}]`) as one string, the
    parts joined by a line break; any other content is returned for `assemble` to check. Parts that are
    not text (images, audio) are an error: a text model cannot be trained on them."""
    if not isinstance(content, list):
        return content
    texts = []
    for k, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            kind = part.get("type") if isinstance(part, dict) else json_type(part)
            raise DataError(path, line, f"{field}[{k}]", f"expected a text part, got {kind!r}")
        texts.append(part["text"])
    return "\n".join(texts)


def _ident(path: Path, line: int, row: Mapping[str, Any], key: str) -> str:
    ident = row.get(key)
    if ident is None or ident == "":
        return f"{path.stem}-{line}"
    if isinstance(ident, bool) or not isinstance(ident, str | int):
        raise DataError(path, line, key, f"expected a string or integer, got {json_type(ident)}")
    return str(ident)


# ---- the formats ----


def _messages_record(
    path: Path, line: int, row: Mapping[str, Any], cols: Mapping[str, str], user: str
) -> Conversation:
    key = cols["messages"]
    raw = []
    for k, item in enumerate(_message_list(path, line, row, key)):
        where = f"{key}[{k}]"
        if not isinstance(item, dict):
            raise DataError(path, line, where, f"expected an object, got {json_type(item)}")
        message = item
        if cols["role"] not in message:
            raise DataError(path, line, f"{where}.{cols['role']}", "missing")
        role = message[cols["role"]]
        if not isinstance(role, str) or role not in MESSAGE_ROLES:
            known = ", ".join(MESSAGE_ROLES)
            raise DataError(path, line, f"{where}.{cols['role']}", f"unknown role {role!r} (known: {known})")
        if cols["content"] not in message:
            raise DataError(path, line, f"{where}.{cols['content']}", "missing")
        train = _flag(path, line, f"{where}.{cols['weight']}", message.get(cols["weight"]))
        if train is None:
            train = _flag(path, line, f"{where}.{cols['train']}", message.get(cols["train"]))
        name = _optional_text(path, line, f"{where}.{cols['name']}", message.get(cols["name"]))
        content_field = f"{where}.{cols['content']}"
        content = _text_parts(path, line, content_field, message[cols["content"]])
        raw.append(RawMessage(MESSAGE_ROLES[role], content, content_field, train, name))
    system = _optional_text(path, line, cols["system"], row.get(cols["system"]))
    return assemble(path, line, _ident(path, line, row, cols["id"]), raw, field=key, system=system)


def _sharegpt_record(
    path: Path, line: int, row: Mapping[str, Any], cols: Mapping[str, str], user: str
) -> Conversation:
    key = cols["conversations"]
    raw = []
    for k, item in enumerate(_message_list(path, line, row, key)):
        where = f"{key}[{k}]"
        if not isinstance(item, dict):
            raise DataError(path, line, where, f"expected an object, got {json_type(item)}")
        if cols["from"] not in item:
            raise DataError(path, line, f"{where}.{cols['from']}", "missing")
        speaker = item[cols["from"]]
        role = SHAREGPT_ROLES.get(speaker.strip().lower()) if isinstance(speaker, str) else None
        if role is None:
            known = ", ".join(SHAREGPT_ROLES)
            raise DataError(
                path, line, f"{where}.{cols['from']}", f"unknown speaker {speaker!r} (known: {known})"
            )
        if cols["value"] not in item:
            raise DataError(path, line, f"{where}.{cols['value']}", "missing")
        train = _flag(path, line, f"{where}.{cols['train']}", item.get(cols["train"]))
        if train is None:
            train = _flag(path, line, f"{where}.{cols['weight']}", item.get(cols["weight"]))
        name = _optional_text(path, line, f"{where}.{cols['name']}", item.get(cols["name"]))
        raw.append(RawMessage(role, item[cols["value"]], f"{where}.{cols['value']}", train, name))
    system = _optional_text(path, line, cols["system"], row.get(cols["system"]))
    return assemble(path, line, _ident(path, line, row, cols["id"]), raw, field=key, system=system)


def pippa_card(path: PathLike, line: int, row: Mapping[str, Any]) -> Card:
    """A PIPPA bot as a V1-style card: `bot_description` is its description, `bot_definitions` its
    example dialogues (Character.AI's END_OF_DIALOG separators read as `<START>` markers), and
    `bot_greeting` its first message. `categories` are tags."""
    if "bot_name" not in row:
        raise DataError(path, line, "bot_name", "missing")
    name = row["bot_name"]
    if not isinstance(name, str) or not name.strip():
        raise DataError(
            path,
            line,
            "bot_name",
            "empty" if isinstance(name, str) else f"expected a string, got {json_type(name)}",
        )
    texts = {
        key: _optional_text(path, line, key, row.get(key)) or ""
        for key in ("bot_description", "bot_definitions", "bot_greeting")
    }
    categories = row.get("categories") or []
    if not isinstance(categories, list) or not all(isinstance(c, str) for c in categories):
        raise DataError(path, line, "categories", "expected a list of strings")
    return Card(
        "v1",
        name.strip(),
        description=texts["bot_description"],
        mes_example=texts["bot_definitions"].replace(PIPPA_DIALOG_END, "<START>"),
        first_mes=texts["bot_greeting"],
        tags=tuple(categories),
    )


def _pippa_record(
    path: Path, line: int, row: Mapping[str, Any], cols: Mapping[str, str], user: str
) -> Conversation:
    card = pippa_card(path, line, row)
    raw = []
    for k, item in enumerate(_message_list(path, line, row, "conversation")):
        where = f"conversation[{k}]"
        if not isinstance(item, dict):
            raise DataError(path, line, where, f"expected an object, got {json_type(item)}")
        for key in ("message", "is_human"):
            if key not in item:
                raise DataError(path, line, f"{where}.{key}", "missing")
        if not isinstance(item["is_human"], bool):
            raise DataError(
                path, line, f"{where}.is_human", f"expected true/false, got {json_type(item['is_human'])}"
            )
        role: Role = "user" if item["is_human"] else "assistant"
        raw.append(
            RawMessage(
                role, item["message"], f"{where}.message", None, None if item["is_human"] else card.name
            )
        )
    greeting = card.first_mes.strip()
    if greeting:
        first = raw[0] if raw else None
        opens = (
            first is not None
            and first.role == "assistant"
            and isinstance(first.content, str)
            and first.content.strip() == greeting
        )
        if opens:
            raw[0] = replace(raw[0], train=False)
        else:
            raw.insert(0, RawMessage("assistant", card.first_mes, "bot_greeting", False, card.name))
    conv = assemble(path, line, _ident(path, line, row, "id"), raw, field="conversation", role=card.name)
    messages = tuple(replace(m, content=substitute_macros(m.content, card.char, user)) for m in conv.messages)
    return replace(conv, messages=messages, system=card_profile(card, user).role_prompt)


def _records(
    parse: Callable[[Path, int, Mapping[str, Any], Mapping[str, str], str], Conversation],
) -> Callable[[str, LoadOptions], list[Conversation]]:
    """A loader for a format with one conversation per record (JSON list, JSONL or a HF dataset)."""

    def load(path: str, options: LoadOptions) -> list[Conversation]:
        cols = options.columns
        name, rows = record_rows(path, options.split, cols)
        conversations: list[Conversation] = []
        first: dict[str, int] = {}
        for line, value in rows:

            def one(line: int = line, value: Any = value) -> Conversation:
                conv = parse(name, line, check_object(name, line, value), cols, options.user)
                if conv.id in first:
                    message = f"duplicate id {conv.id!r} (first at line {first[conv.id]})"
                    raise DataError(name, line, cols["id"], message)
                first[conv.id] = line
                return conv

            conv = options.policy.guard(one)
            if conv is not None:
                conversations.append(conv)
        return conversations

    return load


def is_hf_source(path: PathLike) -> bool:
    """Whether `path` names a Hugging Face dataset: a save_to_disk folder, a .parquet file, or a hub id
    (not a local path). A missing local file is not one: it should say so."""
    here = Path(path)
    if here.is_dir():
        return any((here / marker).is_file() for marker in HF_MARKERS)
    if here.is_file():
        return here.suffix.lower() == ".parquet"
    local = here.suffix.lower() in (*SUFFIXES, ".parquet") or here.is_absolute() or str(path).startswith(".")
    return not local


def record_rows(
    path: PathLike, split: str, cols: Mapping[str, str]
) -> tuple[Path, Iterator[tuple[int, Any]]]:
    """(name for errors, (line, record) pairs) of a JSON / JSONL file or a HF dataset, whose record
    number stands in for the line."""
    if not is_hf_source(path):
        file = _table_file(Path(path))
        return file, read_records(file)
    dataset = open_hf_dataset(str(path), split)
    lists = (cols["messages"], cols["conversations"], "conversation")
    return Path(str(path)), ((number, _unstacked(row, lists)) for number, row in enumerate(dataset, 1))


def _unstacked(row: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """`datasets` returns a `Sequence` of structs (as PIPPA's dataset card declares `conversation`) as
    one dict of equal-length lists: turned back into the list of messages it stands for."""
    for key in keys:
        value = row.get(key)
        if isinstance(value, dict) and value and all(isinstance(v, list) for v in value.values()):
            columns = list(value.values())
            if len({len(c) for c in columns}) == 1:
                row = {
                    **row,
                    key: [dict(zip(value, items, strict=True)) for items in zip(*columns, strict=True)],
                }
    return row


def _table_file(path: Path) -> Path:
    file = existing_file(path)
    if file.suffix.lower() not in SUFFIXES:
        raise DataError(
            file, None, None, f"unknown suffix {file.suffix!r} for conversations (expected .json or .jsonl)"
        )
    return file


# SillyTavern: a chat file is one conversation, a header line then one message per line.


def _sillytavern_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".jsonl")
        if not files:
            raise DataError(path, None, None, "no .jsonl chat files in this folder")
        return files
    return [existing_file(path)]


def _sillytavern_chat(file: Path, user: str) -> Conversation:
    lines = read_jsonl(file)
    first = next(lines, None)
    if first is None:
        raise DataError(file, 1, None, "empty chat file (expected a header line, then messages)")
    head_line, value = first
    header = check_object(file, head_line, value)
    for key in ("user_name", "character_name"):
        if key not in header:
            raise DataError(file, head_line, key, "missing (a SillyTavern chat starts with a header line)")
        if not isinstance(header[key], str):
            raise DataError(file, head_line, key, f"expected a string, got {json_type(header[key])}")
    user_name = header["user_name"].strip() or user
    character = header["character_name"].strip()
    raw: list[RawMessage] = []
    start = None
    for line, value in lines:
        start = start or line
        row = check_object(file, line, value)
        for key in ("mes", "is_user"):
            if key not in row:
                raise DataError(file, line, key, "missing")
        if not isinstance(row["is_user"], bool):
            raise DataError(file, line, "is_user", f"expected true/false, got {json_type(row['is_user'])}")
        hidden = row.get("is_system", False)
        if not isinstance(hidden, bool):
            raise DataError(file, line, "is_system", f"expected true/false, got {json_type(hidden)}")
        if hidden:
            continue  # a message hidden from the prompt (/hide, system notices): the model never saw it
        name = _optional_text(file, line, "name", row.get("name"))
        extra = row.get("extra")
        narrator = isinstance(extra, dict) and extra.get("type") == "narrator"
        role: Role = "system" if narrator else ("user" if row["is_user"] else "assistant")
        mes = row["mes"]
        if not isinstance(mes, str):
            raise DataError(file, line, "mes", f"expected a string, got {json_type(mes)}")
        if not mes.strip():
            raise DataError(file, line, "mes", "empty message")
        raw.append(RawMessage(role, mes, "mes", None, name))
    if raw and raw[0].role == "assistant":
        # SillyTavern opens every chat with the card's first_mes: the card's text, not a reply
        raw[0] = replace(raw[0], train=False)
    conv = assemble(file, start or head_line, file.stem, raw, field="messages", role=character or None)
    messages = tuple(
        replace(m, content=substitute_macros(m.content, character, user_name)) for m in conv.messages
    )
    return replace(conv, messages=messages)


def _load_sillytavern(path: str, options: LoadOptions) -> list[Conversation]:
    conversations = []
    for file in _sillytavern_files(Path(path)):
        conv = options.policy.guard(lambda file=file: _sillytavern_chat(file, options.user))  # type: ignore[misc]
        if conv is not None:
            conversations.append(conv)
    return conversations


def _is_sillytavern(first: Mapping[str, Any], cols: Mapping[str, str]) -> bool:
    return "user_name" in first and "character_name" in first


def _is_pippa(first: Mapping[str, Any], cols: Mapping[str, str]) -> bool:
    return "bot_name" in first and "conversation" in first


FORMATS: dict[str, ConversationFormat] = {
    f.name: f
    for f in (
        ConversationFormat("sillytavern", _is_sillytavern, _load_sillytavern, columns=False),
        ConversationFormat("pippa", _is_pippa, _records(_pippa_record), columns=False),
        ConversationFormat(
            "messages", lambda r, c: c["messages"] in r, _records(_messages_record), columns=True
        ),
        ConversationFormat(
            "sharegpt", lambda r, c: c["conversations"] in r, _records(_sharegpt_record), columns=True
        ),
    )
}


def _first_record(path: PathLike, split: str, cols: Mapping[str, str]) -> tuple[Path, int, Mapping[str, Any]]:
    if Path(path).is_dir() and not is_hf_source(path):
        file = _sillytavern_files(Path(path))[0]
        name, rows = file, read_records(file)
    else:
        name, rows = record_rows(path, split, cols)
    for line, value in rows:
        return name, line, check_object(name, line, value)
    raise DataError(name, None, None, "no records")


def detect_format(path: PathLike, columns: Mapping[str, str] | None = None, split: str = "train") -> str:
    """The conversation format of a file, a folder of SillyTavern chats or a HF dataset, from its
    first record."""
    cols = {**DEFAULT_COLUMNS, **(columns or {})}
    file, line, first = _first_record(path, split, cols)
    for fmt in FORMATS.values():
        if fmt.detect(first, cols):
            return fmt.name
    keys = ", ".join(list(first)[:8])
    raise DataError(
        file,
        line,
        None,
        f"cannot tell the conversation format from the first record (keys: {keys}); pass a format",
    )


def load_conversations(
    path: PathLike,
    fmt: str = "auto",
    *,
    columns: Mapping[str, str] | None = None,
    invalid: InvalidRecords | str = "error",
    card: Card | None = None,
    user_name: str = DEFAULT_USER,
    split: str = "train",
) -> list[Conversation]:
    """Conversations from a file in any format of `FORMATS` ("auto": from the first record).

    `path`: a .json / .jsonl file; for `sillytavern` also a folder of chat files; for the one-record-
    per-conversation formats also a Hugging Face dataset (save_to_disk folder, .parquet, hub id; `split`).

    `columns` maps our field names (`FIELDS`) to the file's keys (messages and sharegpt formats).
    `card`: the character these conversations are held with (see `apply_card`); PIPPA rows carry their
    own character, so a card does not apply to them. `user_name` stands for `{{user}}`."""
    if fmt != "auto" and fmt not in FORMATS:
        raise ConfigError(f"conversation format must be one of {['auto', *FORMATS]}, got {fmt!r}")
    unknown = sorted(set(columns or {}) - set(FIELDS))
    if unknown:
        raise ConfigError(f"columns: unknown field(s) {unknown}; expected some of {list(FIELDS)}")
    cols = {**DEFAULT_COLUMNS, **(columns or {})}
    kind = detect_format(path, columns, split) if fmt == "auto" else fmt
    entry = FORMATS[kind]
    if columns and not entry.columns:
        raise ConfigError(f"columns apply to messages and sharegpt conversations, not to {kind} ({path})")
    if card is not None and kind == "pippa":
        raise ConfigError(f"PIPPA rows carry their own character; a card does not apply to them ({path})")
    policy = InvalidRecords.of(invalid)
    conversations = entry.load(str(path), LoadOptions(cols, policy, user_name, split))
    policy.log_summary("conversations")
    if not conversations:
        raise DataError(path, None, None, "no conversations")
    if card is not None:
        conversations = apply_card(conversations, card, user_name)
    return conversations
