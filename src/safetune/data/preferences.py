"""Preference-data loaders: parallel pairs for reward-gap MPO, plain pairs for DPO-family baselines.

`load_parallel_pairs(path, fmt)` reads two formats (PARALLEL_FORMATS):

* "mpo-release": the MPO authors' release (circle-hit/MPO, data/*_mpo_data.json; LLaMA-Factory's
  ranking format), a JSON list (a JSONL file is read too) of records with `source_conversations`,
  `source_chosen`, `source_rejected` (dominant language) and `target_conversations`, `target_chosen`,
  `target_rejected`. Conversations are ShareGPT turns {"from": "system"|"human"|"user"|"gpt"|
  "assistant", "value": text} ({"role", "content"} turns are read too): an optional system turn, then
  exactly one human/user turn, the prompt. Multi-turn conversations are rejected. Chosen/rejected
  are a {"from": "gpt", "value": text} turn or a plain string. Optional keys: `id`, the target
  language `language` / `target_language` / `lang`, the dominant language `source_language` /
  `dominant_language`.
* "jsonl": our plain format, one object per line (a .json list of such objects, or a .csv with the
  flat columns, reads the same way). Nested: {"id"?, "system"?, "language"?, "dominant_language"?,
  "dominant": {"prompt", "chosen", "rejected", "language"?}, "target": {the same}}. Flat: {"id"?,
  "system"?, "language"?, "dominant_language"?, "prompt_d", "chosen_d", "rejected_d", "prompt_t",
  "chosen_t", "rejected_t"}. Language aliases are the same as above.
* "auto" reads the first record: `source_conversations` -> "mpo-release"; `dominant`, `target` or a
  flat column -> "jsonl"; otherwise .jsonl files are "jsonl" and anything else is an error.

Rules shared by both: the id is the record's `id` (string or integer) or else its 1-based record
index; duplicate ids are errors. The system prompt is the dominant side's system turn; when only the
target side has one it is used, and when both differ the dominant one wins (the MPO release repeats
one English prompt across target languages, so the dominant side is the reference). Languages: the
`language` argument overrides every target language; otherwise the record's key, otherwise the
language the side's prompt, chosen and rejected texts are detected in (`LanguageCheck`): None
("unknown") rather than a guess, and a side whose texts are detected in different languages (an
English prompt left untranslated with translated answers) is None too, logged and reported in
run.json. Both sides' inner
`PreferencePair`s carry the record's id.

`load_preference_pairs(path, fmt)` (PAIR_FORMATS) reads "table" files: JSON list, JSONL or CSV rows
with `prompt`, `chosen`, `rejected` and optional `id`, `language` (alias `lang`) and `system`
(validated, then dropped: `PreferencePair` has no system field, and folding it into the prompt would
change what a chat template renders). JSON rows may instead hold LLaMA-Factory's ShareGPT ranking
form, `conversations` + chosen/rejected turns. It also reads "mpo-release" and "parallel" (the
"jsonl" format above) files, keeping their target side by default (what the paper's DPO baselines
train on); see `parallel_to_pairs`.

Every bad record raises one `DataError` naming the file, the line where the record starts and the
field (e.g. `target_chosen`, `target_conversations[1].value`, `dominant.prompt`); nothing partial
is returned. Strings that are empty or only whitespace are errors. With `invalid="skip"` (the
`data.invalid` option; or an `InvalidRecords` that collects them) bad records are left out instead,
each logged with its path:line, and a duplicate id skips the later record.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from safetune.data.languages import LanguageCheck
from safetune.data.readers import (
    InvalidRecords,
    PathLike,
    check_object,
    check_text,
    existing_file,
    json_type,
    read_records,
    text_field,
)
from safetune.data.records import ParallelPreferencePair, PreferencePair
from safetune.errors import ConfigError, DataError

T = TypeVar("T")

PARALLEL_FORMATS: tuple[str, ...] = ("auto", "mpo-release", "jsonl")
PAIR_FORMATS: tuple[str, ...] = ("auto", "table", "mpo-release", "parallel")
SIDES: tuple[str, ...] = ("target", "dominant", "both")

MPO_FIELDS: tuple[str, ...] = (
    "source_conversations",
    "source_chosen",
    "source_rejected",
    "target_conversations",
    "target_chosen",
    "target_rejected",
)
TRIPLE: tuple[str, ...] = ("prompt", "chosen", "rejected")
FLAT_FIELDS: dict[str, tuple[str, ...]] = {
    "dominant": ("prompt_d", "chosen_d", "rejected_d"),
    "target": ("prompt_t", "chosen_t", "rejected_t"),
}
TARGET_LANGUAGE_KEYS: tuple[str, ...] = ("language", "target_language", "lang")
DOMINANT_LANGUAGE_KEYS: tuple[str, ...] = ("dominant_language", "source_language")
PAIR_LANGUAGE_KEYS: tuple[str, ...] = ("language", "lang")

_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
_TAGS = (("from", "value"), ("role", "content"))  # ShareGPT, then OpenAI-style turns
_PLAIN_KEYS = frozenset({"dominant", "target", *FLAT_FIELDS["dominant"], *FLAT_FIELDS["target"]})

Rows = list[tuple[int, Any]]
Triple = tuple[str, str, str]


# ---- single fields ----


def _absent(value: object) -> bool:
    """Optional values left out: null, or an empty string (what an empty CSV cell reads as)."""
    return value is None or value == ""


def _optional_text(path: Path, line: int, field: str, value: object) -> str | None:
    return None if _absent(value) else check_text(path, line, field, value)


def _ident(path: Path, line: int, row: Mapping[str, Any], index: int) -> str:
    value = row.get("id")
    if _absent(value):
        return str(index)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise DataError(path, line, "id", f"expected a string or integer, got {json_type(value)}")
    return check_text(path, line, "id", value) if isinstance(value, str) else str(value)


def _language(path: Path, line: int, candidates: Iterable[tuple[str, object]]) -> str | None:
    """The first language given among (field, value) candidates; disagreeing ones are an error."""
    found: list[tuple[str, str]] = []
    for field, value in candidates:
        if _absent(value):
            continue
        found.append((field, check_text(path, line, field, value).strip()))
    for field, value in found[1:]:
        if value != found[0][1]:
            raise DataError(path, line, field, f"{value!r} disagrees with {found[0][0]} {found[0][1]!r}")
    return found[0][1] if found else None


def _turn(path: Path, line: int, field: str, turn: object) -> tuple[str, str]:
    """(role: system/user/assistant, text) of one ShareGPT or OpenAI-style turn."""
    if not isinstance(turn, dict):
        raise DataError(path, line, field, f"expected a {{from, value}} object, got {json_type(turn)}")
    for role_key, text_key in _TAGS:
        if role_key in turn:
            role = turn[role_key]
            if not isinstance(role, str) or role not in _ROLES:
                raise DataError(
                    path,
                    line,
                    f"{field}.{role_key}",
                    f"unknown role {role!r} (expected one of {', '.join(_ROLES)})",
                )
            if text_key not in turn:
                raise DataError(path, line, f"{field}.{text_key}", "missing")
            return _ROLES[role], check_text(path, line, f"{field}.{text_key}", turn[text_key])
    raise DataError(path, line, f"{field}.from", "missing")


def _conversation(path: Path, line: int, row: Mapping[str, Any], key: str) -> tuple[str | None, str]:
    """(system or None, prompt) of a conversation: an optional system turn, then one human turn."""
    if key not in row:
        raise DataError(path, line, key, "missing")
    turns = row[key]
    if not isinstance(turns, list) or not turns:
        got = "an empty list" if turns == [] else json_type(turns)
        raise DataError(path, line, key, f"expected a list of turns, got {got}")
    parsed = [_turn(path, line, f"{key}[{k}]", turn) for k, turn in enumerate(turns)]
    system = parsed[0][1] if parsed[0][0] == "system" else None
    rest = parsed[1:] if system is not None else parsed
    if [role for role, _ in rest] != ["user"]:
        roles = ", ".join(role for role, _ in parsed)
        raise DataError(
            path,
            line,
            key,
            f"expected an optional system turn and then exactly one human turn, got turns: {roles} "
            "(multi-turn conversations are not supported)",
        )
    return system, rest[0][1]


def _reply(path: Path, line: int, row: Mapping[str, Any], key: str) -> str:
    """A chosen/rejected answer: a plain string or one assistant turn."""
    if key not in row:
        raise DataError(path, line, key, "missing")
    value = row[key]
    if isinstance(value, str):
        return check_text(path, line, key, value)
    if isinstance(value, dict):
        role, text = _turn(path, line, key, value)
        if role != "assistant":
            raise DataError(path, line, key, f"expected an assistant (gpt) turn, got a {role} turn")
        return text
    raise DataError(path, line, key, f"expected a string or a {{from, value}} object, got {json_type(value)}")


def _field(path: Path, line: int, obj: Mapping[str, Any], key: str, name: str) -> str:
    if key not in obj:
        raise DataError(path, line, name, "missing")
    return check_text(path, line, name, obj[key])


# ---- records ----


def _rows(path: Path) -> Rows:
    rows = list(read_records(path))
    if not rows:
        raise DataError(path, None, None, "no records")
    return rows


def _first_keys(rows: Rows) -> set[str]:
    first = rows[0][1]
    return set(first) if isinstance(first, dict) else set()


def _pick_system(dominant: str | None, target: str | None) -> str | None:
    return dominant if dominant is not None else target


def _mpo_record(
    path: Path, line: int, row: Mapping[str, Any]
) -> tuple[str | None, Triple, Triple, list[tuple[str, object]], list[tuple[str, object]]]:
    sides: dict[str, Triple] = {}
    systems: dict[str, str | None] = {}
    for side in ("source", "target"):
        systems[side], prompt = _conversation(path, line, row, f"{side}_conversations")
        chosen = _reply(path, line, row, f"{side}_chosen")
        sides[side] = (prompt, chosen, _reply(path, line, row, f"{side}_rejected"))
    target_keys = [(k, row.get(k)) for k in TARGET_LANGUAGE_KEYS]
    dominant_keys = [(k, row.get(k)) for k in DOMINANT_LANGUAGE_KEYS]
    system = _pick_system(systems["source"], systems["target"])
    return system, sides["source"], sides["target"], dominant_keys, target_keys


def _plain_record(
    path: Path, line: int, row: Mapping[str, Any]
) -> tuple[str | None, Triple, Triple, list[tuple[str, object]], list[tuple[str, object]]]:
    target_keys: list[tuple[str, object]] = [(k, row.get(k)) for k in TARGET_LANGUAGE_KEYS]
    dominant_keys: list[tuple[str, object]] = [(k, row.get(k)) for k in DOMINANT_LANGUAGE_KEYS]
    sides: dict[str, Triple] = {}
    if "dominant" in row or "target" in row:
        for side, keys in (("dominant", dominant_keys), ("target", target_keys)):
            if side not in row:
                raise DataError(path, line, side, "missing")
            obj = row[side]
            if not isinstance(obj, dict):
                raise DataError(
                    path, line, side, f"expected an object with {', '.join(TRIPLE)}, got {json_type(obj)}"
                )
            prompt, chosen, rejected = (_field(path, line, obj, k, f"{side}.{k}") for k in TRIPLE)
            sides[side] = (prompt, chosen, rejected)
            keys.append((f"{side}.language", obj.get("language")))
    else:
        for side, names in FLAT_FIELDS.items():
            prompt, chosen, rejected = (_field(path, line, row, k, k) for k in names)
            sides[side] = (prompt, chosen, rejected)
    system = _optional_text(path, line, "system", row.get("system"))
    return system, sides["dominant"], sides["target"], dominant_keys, target_keys


def _parallel_pair(
    path: Path,
    line: int,
    value: Any,
    index: int,
    kind: str,
    language: str | None,
    seen: dict[str, int],
    check: LanguageCheck,
) -> ParallelPreferencePair:
    parse = _mpo_record if kind == "mpo-release" else _plain_record
    row = check_object(path, line, value)
    system, dominant, target, dominant_keys, target_keys = parse(path, line, row)
    ident = _ident(path, line, row, index)
    if ident in seen:
        raise DataError(path, line, "id", f"duplicate id {ident!r} (same as line {seen[ident]})")
    target_language = _language(path, line, target_keys)
    dominant_language = _language(path, line, dominant_keys)
    where = f"{path}:{line}"
    if language is not None:
        target_language = language
    elif target_language is None:
        target_language = check.detect(where, ident, "target", *target)
    if dominant_language is None:
        dominant_language = check.detect(where, ident, "dominant", *dominant)
    seen[ident] = line
    return ParallelPreferencePair(
        dominant=PreferencePair(*dominant, id=ident, language=dominant_language),
        target=PreferencePair(*target, id=ident, language=target_language),
        id=ident,
        system=system,
    )


def _collect(
    path: Path,
    rows: Rows,
    parse: Callable[[int, Any, int, dict[str, int]], T],
    policy: InvalidRecords,
    check: LanguageCheck,
) -> list[T]:
    """`parse(line, value, index, seen)` over every record: bad ones stop or are skipped (`policy`);
    language disagreements and skips are logged once at the end."""
    records: list[T] = []
    seen: dict[str, int] = {}
    for index, (line, value) in enumerate(rows, 1):
        record = policy.guard(partial(parse, line, value, index, seen))
        if record is not None:
            records.append(record)
    policy.log_summary("pairs")
    check.log_summary()
    if not records:
        raise DataError(path, None, None, "no valid records")
    return records


def _parallel(
    path: Path, rows: Rows, kind: str, language: str | None, policy: InvalidRecords, check: LanguageCheck
) -> list[ParallelPreferencePair]:
    def parse(line: int, value: Any, index: int, seen: dict[str, int]) -> ParallelPreferencePair:
        return _parallel_pair(path, line, value, index, kind, language, seen, check)

    return _collect(path, rows, parse, policy, check)


def _parallel_kind(path: Path, rows: Rows) -> str:
    keys = _first_keys(rows)
    if "source_conversations" in keys or "target_conversations" in keys:
        return "mpo-release"
    if keys & _PLAIN_KEYS or path.suffix.lower() == ".jsonl":
        return "jsonl"
    raise DataError(
        path,
        rows[0][0],
        None,
        "cannot tell the parallel format: expected mpo-release records (source_conversations, "
        "source_chosen, ..., target_rejected) or jsonl records (dominant/target objects or "
        "prompt_d, ..., rejected_t); pass fmt='mpo-release' or fmt='jsonl'",
    )


def _check_language(language: str | None) -> None:
    if language is not None and (not isinstance(language, str) or not language.strip()):
        raise ConfigError(f"language must be a non-empty string or None, got {language!r}")


def load_parallel_pairs(
    path: PathLike,
    fmt: str = "auto",
    language: str | None = None,
    *,
    invalid: InvalidRecords | str = "error",
    languages: LanguageCheck | None = None,
) -> list[ParallelPreferencePair]:
    """Parallel preference pairs (dominant + target language) for reward-gap MPO; see the module
    docstring for the formats. `language` overrides the target language of every record; `invalid`
    says what a bad record does ("error" | "skip", see `InvalidRecords`); `languages` collects the
    pairs whose detected languages disagree (see `LanguageCheck`)."""
    if fmt not in PARALLEL_FORMATS:
        raise ConfigError(f"format must be one of {list(PARALLEL_FORMATS)}, got {fmt!r}")
    _check_language(language)
    policy = InvalidRecords.of(invalid)
    file = existing_file(path)
    rows = _rows(file)
    kind = _parallel_kind(file, rows) if fmt == "auto" else fmt
    return _parallel(file, rows, kind, language, policy, languages or LanguageCheck())


# ---- plain pairs for DPO-family baselines ----


def parallel_to_pairs(pairs: Iterable[ParallelPreferencePair], side: str = "target") -> list[PreferencePair]:
    """One side of each parallel pair, or with side="both" the dominant then the target pair of each,
    with ids suffixed "-dominant" / "-target" so they stay unique. The system prompt is dropped.

    Note that "dominant" and "both" keep every repeat: the MPO release repeats each English pair once
    per target language.
    """
    if side not in SIDES:
        raise ConfigError(f"side must be one of {list(SIDES)}, got {side!r}")
    if side == "target":
        return [p.target for p in pairs]
    if side == "dominant":
        return [p.dominant for p in pairs]
    return [
        replace(half, id=f"{p.id}-{name}")
        for p in pairs
        for name, half in (("dominant", p.dominant), ("target", p.target))
    ]


def _table_pair(
    path: Path,
    line: int,
    value: Any,
    index: int,
    language: str | None,
    seen: dict[str, int],
    check: LanguageCheck,
) -> PreferencePair:
    row = check_object(path, line, value)
    if "prompt" not in row and "conversations" in row:
        _, prompt = _conversation(path, line, row, "conversations")  # its system turn is dropped
    else:
        prompt = text_field(path, line, row, "prompt")
    chosen, rejected = _reply(path, line, row, "chosen"), _reply(path, line, row, "rejected")
    _optional_text(path, line, "system", row.get("system"))  # validated, then dropped
    ident = _ident(path, line, row, index)
    if ident in seen:
        raise DataError(path, line, "id", f"duplicate id {ident!r} (same as line {seen[ident]})")
    found = _language(path, line, [(k, row.get(k)) for k in PAIR_LANGUAGE_KEYS])
    if language is not None:
        found = language
    elif found is None:
        found = check.detect(f"{path}:{line}", ident, "pair", prompt, chosen, rejected)
    seen[ident] = line
    return PreferencePair(prompt, chosen, rejected, ident, found)


def _table_pairs(
    path: Path, rows: Rows, language: str | None, policy: InvalidRecords, check: LanguageCheck
) -> list[PreferencePair]:
    def parse(line: int, value: Any, index: int, seen: dict[str, int]) -> PreferencePair:
        return _table_pair(path, line, value, index, language, seen, check)

    return _collect(path, rows, parse, policy, check)


def _pair_kind(rows: Rows) -> str:
    keys = _first_keys(rows)
    if "source_conversations" in keys or "target_conversations" in keys:
        return "mpo-release"
    if {"chosen", "rejected"} <= keys:
        return "table"
    return "parallel" if keys & _PLAIN_KEYS else "table"


def load_preference_pairs(
    path: PathLike,
    fmt: str = "auto",
    language: str | None = None,
    *,
    side: str = "target",
    invalid: InvalidRecords | str = "error",
    languages: LanguageCheck | None = None,
) -> list[PreferencePair]:
    """Plain preference pairs for DPO-family baselines: a prompt/chosen/rejected table ("table": JSON
    list, JSONL or CSV), or one `side` of a parallel file ("mpo-release", "parallel"). "auto" decides
    by the first record. `language` overrides every table row's language, and for parallel files the
    target language only (as in `load_parallel_pairs`)."""
    if fmt not in PAIR_FORMATS:
        raise ConfigError(f"format must be one of {list(PAIR_FORMATS)}, got {fmt!r}")
    if side not in SIDES:
        raise ConfigError(f"side must be one of {list(SIDES)}, got {side!r}")
    _check_language(language)
    policy = InvalidRecords.of(invalid)
    file = existing_file(path)
    rows = _rows(file)
    kind = _pair_kind(rows) if fmt == "auto" else fmt
    check = languages or LanguageCheck()
    if kind == "table":
        return _table_pairs(file, rows, language, policy, check)
    fmt = "mpo-release" if kind == "mpo-release" else "jsonl"
    parallel = _parallel(file, rows, fmt, language, policy, check)
    return parallel_to_pairs(parallel, side)
