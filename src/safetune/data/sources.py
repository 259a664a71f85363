"""Loaders that turn role-play data files into `RoleExample` lists, with strict validation.

Every problem becomes one `DataError` naming the file, the 1-based line where the bad record starts
and the field, so a user can jump straight to it. Formats: the RoleBench release (JSONL, several
generated answers per question), the SaRFT authors' per-role folders, generic tables (JSON list,
JSONL, CSV) with a column mapping, and Hugging Face datasets.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import unicodedata
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from safetune.data.records import RoleExample, RoleProfile
from safetune.errors import ConfigError, DataError

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
T = TypeVar("T")

FORMATS: tuple[str, ...] = ("auto", "rolebench", "role-folder", "json", "jsonl", "csv", "hf")
ANSWERS: tuple[str, ...] = ("all", "first")
FIELDS: tuple[str, ...] = ("role", "input", "output", "id", "is_harmful")
INVALID_MODES: tuple[str, ...] = ("error", "skip")
DEFAULT_COLUMNS: dict[str, str] = {f: f for f in FIELDS}

_TABLE_SUFFIXES = {".json": "json", ".jsonl": "jsonl", ".csv": "csv"}
_HF_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
_HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")  # what save_to_disk writes
_FLAGS = {"0": 0, "1": 1, "false": 0, "true": 1}
_WS = re.compile(r"[ \t\n\r]*")
_JSON_TYPES = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}


def role_key(name: str) -> str:
    """The one normalisation of role names, used wherever two names are matched (data, `--role`,
    profiles, role folders, eval roles): Unicode NFKC, case-folded, and every run of characters that
    are not letters, digits or combining marks (spaces, `_`, `'`, `.`, `-`, ...) read as one space.

    So "D'Artagnan", "D_Artagnan" and "d artagnan" are the same role, and so are "Dr. Hannibal
    Lecter" and "Dr_Hannibal_Lecter"; letters of any script are kept ("孙悟空" stays itself).
    """
    text = unicodedata.normalize("NFKC", name).casefold()
    kept = "".join(ch if unicodedata.category(ch)[0] in "LNM" else " " for ch in text)
    return " ".join(kept.split())


def _id_prefix(name: str) -> str:
    """The role part of RoleBench example ids, `<Role_Name>` as documented: the name's own case, spaces
    as `_` ("Freddy Krueger" -> "Freddy_Krueger"; earlier versions lower-cased it)."""
    return "_".join(name.replace("_", " ").split())


class InvalidRecords:
    """What happens to a record that fails validation (`data.invalid`).

    "error" (default): the loader stops with that record's `DataError`, whose message names the
    option. "skip": the record is left out, and its `path:line: problem` is logged (WARNING) and kept
    in `skipped`, for the run's report (`report()` goes into run.json). Errors that are not about one
    record (a missing file, a missing CSV column, a JSON list that does not parse) always stop.
    """

    def __init__(self, mode: str = "error"):
        if mode not in INVALID_MODES:
            raise ConfigError(f"data.invalid must be one of {list(INVALID_MODES)}, got {mode!r}")
        self.mode = mode
        self.skipped: list[DataError] = []

    @classmethod
    def of(cls, invalid: InvalidRecords | str) -> InvalidRecords:
        return invalid if isinstance(invalid, InvalidRecords) else cls(invalid)

    def guard(self, parse: Callable[[], T]) -> T | None:
        """`parse()`, or None when it raised a record's DataError and bad records are skipped."""
        try:
            return parse()
        except DataError as err:
            if err.line is None:
                raise
            if self.mode == "error":
                hint = f"{err.message} (or skip bad records with data.invalid=skip)"
                raise DataError(err.path, err.line, err.field, hint) from None
            self.skipped.append(err)
            log.warning("skipped invalid record %s (data.invalid=skip)", err)
            return None

    def report(self) -> dict[str, Any]:
        """{"mode", "skipped": count, "records": ["path:line: problem", ...]} for run.json."""
        return {"mode": self.mode, "skipped": len(self.skipped), "records": [str(e) for e in self.skipped]}

    def log_summary(self, what: str = "records") -> None:
        if self.skipped:
            log.warning(
                "data.invalid=skip: skipped %d invalid %s: %s",
                len(self.skipped),
                what,
                ", ".join(f"{e.path}:{e.line}" for e in self.skipped),
            )


# ---- reading: bytes -> (line, value); every failure is pinned to a line ----


def _file(path: PathLike, folder: bool = False) -> Path:
    """`path` if it exists and is a file (or a folder, with `folder=True`)."""
    found = Path(path)
    if not found.exists():
        raise DataError(found, None, None, "no such file or directory")
    if found.is_dir() != folder:
        raise DataError(found, None, None, "expected a folder" if folder else "expected a file, got a folder")
    return found


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Numbered text lines, decoded one by one so an undecodable byte names its own line."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(path, number, None, "not valid UTF-8") from None
            yield number, text.removeprefix("\ufeff") if number == 1 else text


def read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as err:
        raise DataError(path, data.count(b"\n", 0, err.start) + 1, None, "not valid UTF-8") from None


def _invalid_json(path: Path, err: json.JSONDecodeError, line: int | None = None) -> DataError:
    # Some of json's messages end in "at" ("Unterminated string starting at"): no second "at".
    at = " " if err.msg.endswith(" at") else " at "
    return DataError(path, line or err.lineno, None, f"invalid JSON ({err.msg}{at}column {err.colno})")


class DuplicateKey(ValueError):
    """A JSON object names one key twice (json keeps the last value silently)."""

    def __init__(self, key: str):
        super().__init__(f"duplicate key {key!r}")
        self.key = key


def unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`object_pairs_hook` for json: a dict, or DuplicateKey when a key repeats."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise DuplicateKey(key)
        result[key] = value
    return result


def decode_json(path: Path, text: str, pos: int, base: int, record: int) -> tuple[Any, int]:
    """(value, end) of the JSON value at `pos` of `text`, whose first line is line `base` of the file.
    Bad syntax names its own line; a duplicate key, or nesting too deep for Python's recursive decoder,
    names the line of the record that holds it (`record`)."""
    try:
        return _DECODER.raw_decode(text, pos)
    except json.JSONDecodeError as err:
        raise _invalid_json(path, err, base + err.lineno - 1) from None
    except DuplicateKey as err:
        raise DataError(path, record, err.key, "duplicate key in one object") from None
    except RecursionError:
        raise DataError(path, record, None, "invalid JSON (nested too deeply)") from None


_DECODER = json.JSONDecoder(object_pairs_hook=unique_pairs)


def read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(line, value) for each non-blank line of a JSONL file."""
    for number, text in _lines(path):
        if not text.strip():
            continue
        text = text.rstrip("\r\n")  # an error at the line's end is on this line, not the next
        value, end = decode_json(path, text, _skip_ws(text, 0), number, number)
        if _skip_ws(text, end) < len(text):
            raise _invalid_json(path, json.JSONDecodeError("Extra data", text, _skip_ws(text, end)), number)
        yield number, value


def _skip_ws(text: str, pos: int) -> int:
    return match.end() if (match := _WS.match(text, pos)) else pos


def json_members(path: Path, container: type) -> Iterator[tuple[int, str | None, Any]]:
    """(line, key, value) for each member of a top-level JSON list (key None) or object.

    Decoding member by member, instead of json.load, is what lets an error name the record's line.
    """
    yield from _json_document(path, read_text(path), container, None)


def _json_document(
    path: Path, text: str, container: type, expand: str | None
) -> Iterator[tuple[int, str | None, Any]]:
    """`_json_scan` over a whole document, which must end after the list or object."""
    end = yield from _json_scan(path, text, 0, container, 1, expand)
    if _skip_ws(text, end) < len(text):
        raise _invalid_json(path, json.JSONDecodeError("Extra data", text, _skip_ws(text, end)))


def _json_scan(
    path: Path, text: str, pos: int, container: type, line: int, expand: str | None
) -> Generator[tuple[int, str | None, Any], None, int]:
    """Members of the list or object that starts at `pos` (on `line`); returns the position after it.

    With `expand`, the object member of that name must be a list and its items are yielded one by
    one, each as (its own line, `expand`, item); its absence is an error.
    """
    opener, closer = ("{", "}") if container is dict else ("[", "]")
    keys: dict[str, int] = {}

    def decode(pos: int) -> tuple[Any, int]:
        return decode_json(path, text, pos, 1, line)

    def syntax(pos: int, message: str) -> DataError:
        return _invalid_json(path, json.JSONDecodeError(message, text, pos))

    first, counted, expanded = line, pos, False
    pos = _skip_ws(text, pos)
    if not text.startswith(opener, pos):
        value, _ = decode(pos)  # decoded only to name what was found instead
        raise DataError(path, line, None, f"expected a JSON {_JSON_TYPES[container]}, got {_type(value)}")
    pos = _skip_ws(text, pos + 1)
    done = text.startswith(closer, pos)
    while not done:
        line, counted = line + text.count("\n", counted, pos), pos
        key = None
        if container is dict:
            key, pos = decode(pos)
            if not isinstance(key, str):
                raise syntax(counted, "Expecting property name enclosed in double quotes")
            if key in keys:
                raise DataError(path, line, key, f"duplicate key (first at line {keys[key]})")
            keys[key] = line
            pos = _skip_ws(text, pos)
            if not text.startswith(":", pos):
                raise syntax(pos, "Expecting ':' delimiter")
            pos = _skip_ws(text, pos + 1)
        if expand is not None and key == expand:
            expanded = True
            if not text.startswith("[", pos):
                value, _ = decode(pos)
                raise DataError(path, line, key, f"expected a list, got {_type(value)}")
            here = line + text.count("\n", counted, pos)
            items = _json_scan(path, text, pos, list, here, None)
            while True:
                try:
                    item_line, _, item = next(items)
                except StopIteration as stop:
                    pos = stop.value
                    break
                yield item_line, key, item
        else:
            value, pos = decode(pos)
            yield line, key, value
        pos = _skip_ws(text, pos)
        if text.startswith(",", pos):
            pos = _skip_ws(text, pos + 1)
        elif text.startswith(closer, pos):
            done = True
        else:
            raise syntax(pos, f"Expecting ',' or '{closer}' delimiter")
    if expand is not None and not expanded:
        raise DataError(path, first, expand, "missing")
    return pos + 1


def _csv_next(path: Path, reader: Any) -> tuple[int, list[str] | None]:
    start = reader.line_num + 1  # line_num counts physical lines, so multi-line cells stay right
    try:
        return start, next(reader, None)
    except csv.Error as err:
        raise DataError(path, start, None, f"invalid CSV ({err})") from None


def _csv_rows(path: Path, required: Iterable[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line where the row starts, row) for each CSV data row; the header must hold `required`."""
    reader = csv.reader(text for _, text in _lines(path))
    _, header = _csv_next(path, reader)
    if header is None:
        raise DataError(path, 1, None, "empty CSV file (expected a header row)")
    _check_columns(path, 1, header, required)
    while True:
        start, record = _csv_next(path, reader)
        if record is None:
            return
        if not record:  # csv.reader gives [] for a blank line
            continue
        if len(record) != len(header):
            raise DataError(path, start, None, f"expected {len(header)} fields, got {len(record)}")
        yield start, dict(zip(header, record, strict=True))


def read_csv_cells(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line where the row starts, cells) for each non-blank row of a CSV file without a header row."""
    reader = csv.reader(text for _, text in _lines(path))
    while True:
        start, record = _csv_next(path, reader)
        if record is None:
            return
        if record:  # csv.reader gives [] for a blank line
            yield start, record


def read_records(
    path: PathLike, required: Iterable[str] = (), *, within: str | None = None
) -> Iterator[tuple[int, Any]]:
    """(line where it starts, record) for each record of a table file, by suffix.

    .json: a list (each member a record); with `within`, also an object whose member `within` holds
    that list (e.g. the SaRFT authors' `{"Instances": [...]}`). .jsonl: one record per non-blank line.
    .csv: a header row, which must hold the `required` columns, then one dict per row. JSON records
    may be any value: check them with an object check before use.
    """
    file = _file(path)
    kind = _TABLE_SUFFIXES.get(file.suffix.lower())
    if kind is None:
        raise DataError(
            file, None, None, f"unknown table suffix {file.suffix!r} (expected .json, .jsonl or .csv)"
        )
    if kind == "csv":
        yield from _csv_rows(file, required)
    elif kind == "jsonl":
        yield from read_jsonl(file)
    else:
        text = read_text(file)
        if within is not None and text.lstrip(" \t\n\r").startswith("{"):
            members = _json_document(file, text, dict, within)
            yield from ((line, value) for line, key, value in members if key == within)
        else:
            yield from ((line, value) for line, _, value in _json_document(file, text, list, None))


# ---- validation of single values ----


def _type(value: object) -> str:
    return "null" if value is None else _JSON_TYPES.get(type(value), type(value).__name__)


def _object(path: PathLike, line: int, value: object) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise DataError(path, line, None, f"expected an object, got {_type(value)}")
    return value


def _check_text(path: PathLike, line: int | None, field: str, value: object) -> str:
    if not isinstance(value, str):
        raise DataError(path, line, field, f"expected a string, got {_type(value)}")
    if not value.strip():
        raise DataError(path, line, field, "empty")
    return value


def _text(path: PathLike, line: int, row: Mapping[str, Any], key: str) -> str:
    """A required, non-blank string field of a record."""
    if key not in row:
        raise DataError(path, line, key, "missing")
    return _check_text(path, line, key, row[key])


def _flag(path: PathLike, line: int, field: str, value: object) -> int | None:
    """An optional 0/1 label; tables spell it 0/1/true/false, and an empty cell means unknown."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.strip().lower() in _FLAGS:
        return _FLAGS[value.strip().lower()]
    if isinstance(value, int | float) and value in (0, 1):
        return int(value)
    raise DataError(path, line, field, f"expected 0/1/true/false, got {_type(value)} {value!r}")


def _nonempty(path: PathLike, examples: list[RoleExample], role: str | None) -> list[RoleExample]:
    if not examples:
        raise DataError(path, None, None, f"no examples (role={role})")
    return examples


# ---- RoleBench release and the SaRFT authors' per-role folders ----


PROMPT_KEYS: tuple[str, ...] = ("role", "safe")  # the SaRFT authors' prompt_v2.json: role / unsafe prompt


def _profile(file: Path, line: int, name: str, value: object) -> RoleProfile:
    display = name.replace("_", " ")
    if not isinstance(value, dict):
        return RoleProfile(display, _check_text(file, line, name, value))
    unknown = sorted(set(value) - set(PROMPT_KEYS))
    if unknown:
        raise DataError(file, line, name, f"unknown key {unknown[0]!r} (expected {', '.join(PROMPT_KEYS)})")
    for key in PROMPT_KEYS:
        if key not in value:
            raise DataError(file, line, f"{name}.{key}", "missing")
    role, safe = (_check_text(file, line, f"{name}.{key}", value[key]) for key in PROMPT_KEYS)
    return RoleProfile(display, role, role_prompt=role, unsafe_prompt=safe)


def load_profiles(path: PathLike) -> dict[str, RoleProfile]:
    """Role profiles, keyed by `role_key`: a JSON object of role name -> either a description
    (RoleBench's profile file) or {"role": role prompt, "safe": unsafe prompt} (the SaRFT authors'
    `prompt_v2.json`: both system prompts, used verbatim by RDS). Both kinds may be mixed."""
    file = _file(path)
    profiles: dict[str, RoleProfile] = {}
    lines: dict[str, int] = {}
    for line, name, value in json_members(file, dict):
        assert name is not None  # objects always have keys
        key = role_key(name)
        if not key:
            raise DataError(file, line, None, "empty role name")
        if key in profiles:
            raise DataError(file, line, name, f"duplicate role (same as line {lines[key]})")
        profiles[key] = _profile(file, line, name, value)
        lines[key] = line
    if not profiles:
        raise DataError(file, None, None, "no profiles")
    return profiles


def _answers(path: Path, line: int, row: Mapping[str, Any]) -> list[str]:
    """RoleBench's `generated`: a non-empty list of non-blank answers."""
    if "generated" not in row:
        raise DataError(path, line, "generated", "missing")
    answers = row["generated"]
    if not isinstance(answers, list) or not answers:
        what = "empty list" if answers == [] else f"expected a list of strings, got {_type(answers)}"
        raise DataError(path, line, "generated", what)
    return [_check_text(path, line, f"generated[{k}]", answer) for k, answer in enumerate(answers)]


def load_rolebench_release(
    path: PathLike, role: str | None = None, answers: str = "all", invalid: InvalidRecords | str = "error"
) -> list[RoleExample]:
    """RoleBench's released JSONL: one question per line with several `generated` answers.

    `answers="all"` makes one example per answer, `"first"` keeps only the first. Every row is
    validated, also rows that `role` filters out: a broken file should fail the same way every time.
    """
    if answers not in ANSWERS:
        raise ConfigError(f"answers must be one of {list(ANSWERS)}, got {answers!r}")
    file = _file(path)
    policy = InvalidRecords.of(invalid)
    examples: list[RoleExample] = []
    for line, value in read_jsonl(file):

        def parse(line: int = line, value: Any = value) -> tuple[str, str, list[str]]:
            row = _object(file, line, value)
            name, question = _text(file, line, row, "role"), _text(file, line, row, "question")
            return name, question, _answers(file, line, row)

        parsed = policy.guard(parse)
        if parsed is None:
            continue
        name, question, replies = parsed
        if role is not None and role_key(name) != role_key(role):
            continue
        prefix = _id_prefix(name)
        for k, reply in enumerate(replies if answers == "all" else replies[:1]):
            examples.append(RoleExample(name, question, reply, f"{prefix}-{line}-{k}"))
    policy.log_summary()
    return _nonempty(file, examples, role)


def _role_folders(root: Path, split: str) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / f"{split}.json").is_file())


def _role_file(folder: Path, split: str, policy: InvalidRecords) -> list[RoleExample]:
    file = folder / f"{split}.json"
    name = folder.resolve().name  # resolve: a folder given as "." still has a name
    examples = []
    for index, (line, _, value) in enumerate(json_members(file, list)):

        def parse(line: int = line, value: Any = value, index: int = index) -> RoleExample:
            row = _object(file, line, value)
            text, reply = _text(file, line, row, "input"), _text(file, line, row, "output")
            harmful = _flag(file, line, "is_harmful", row.get("is_harmful"))
            return RoleExample(name.replace("_", " "), text, reply, f"{name}-{index}", harmful)

        example = policy.guard(parse)
        if example is not None:
            examples.append(example)
    return examples


def load_role_folder(
    path: PathLike, role: str | None = None, split: str = "train", invalid: InvalidRecords | str = "error"
) -> list[RoleExample]:
    """The SaRFT authors' layout: `<role>/{train,test}.json`, each a JSON list of input/output objects.

    `path` is one role folder (it holds `{split}.json`) or a root of role folders, which `role`
    selects from by `role_key` of the folder name (None loads them all).
    """
    root = _file(path, folder=True)
    folders = [root] if (root / f"{split}.json").is_file() else _role_folders(root, split)
    if not folders:
        raise DataError(root, None, None, f"no {split}.json here or in any sub-folder")
    if role is not None:
        folders = [f for f in folders if role_key(f.resolve().name) == role_key(role)]
    policy = InvalidRecords.of(invalid)
    examples = [ex for folder in folders for ex in _role_file(folder, split, policy)]
    policy.log_summary()
    return _nonempty(root, examples, role)


# ---- generic tables and Hugging Face datasets ----


def _columns(columns: Mapping[str, str] | None) -> dict[str, str]:
    unknown = sorted(set(columns or {}) - set(FIELDS))
    if unknown:
        raise ConfigError(f"columns: unknown field(s) {unknown}; expected some of {list(FIELDS)}")
    return {**DEFAULT_COLUMNS, **(columns or {})}


def _required(cols: Mapping[str, str], columns: Mapping[str, str] | None, role: str | None) -> list[str]:
    """Columns a table must have: input, output, role unless given, and whatever was mapped explicitly."""
    needed = [
        cols["input"],
        cols["output"],
        *([cols["role"]] if role is None else []),
        *(columns or {}).values(),
    ]
    return list(dict.fromkeys(needed))


def _check_columns(path: PathLike, line: int | None, have: Iterable[str], needed: Iterable[str]) -> None:
    have = list(have)
    for column in needed:
        if column not in have:
            raise DataError(path, line, column, f"no such column (columns: {', '.join(have)})")


def _table_example(
    path: PathLike, line: int, row: Mapping[str, Any], cols: Mapping[str, str], role: str | None
) -> RoleExample | None:
    """One table row as an example, or None when `role` filters it out."""
    text, reply = _text(path, line, row, cols["input"]), _text(path, line, row, cols["output"])
    harmful = _flag(path, line, cols["is_harmful"], row.get(cols["is_harmful"]))
    ident = row.get(cols["id"])
    if ident is None or ident == "":
        ident = f"{Path(str(path)).stem}-{line}"
    elif isinstance(ident, bool) or not isinstance(ident, str | int):
        raise DataError(path, line, cols["id"], f"expected a string or integer, got {_type(ident)}")
    name = row.get(cols["role"])
    if name is None or (isinstance(name, str) and not name.strip()):
        if role is None:
            raise DataError(path, line, cols["role"], "missing, and no role was given to fall back on")
        name = role
    elif not isinstance(name, str):
        raise DataError(path, line, cols["role"], f"expected a string, got {_type(name)}")
    elif role is not None and role_key(name) != role_key(role):
        return None
    return RoleExample(name, text, reply, str(ident), harmful)


def _table_row(
    path: PathLike, line: int, value: Any, cols: Mapping[str, str], role: str | None
) -> RoleExample | None:
    return _table_example(path, line, _object(path, line, value), cols, role)


def _unique_row(
    path: PathLike,
    line: int,
    value: Any,
    cols: Mapping[str, str],
    role: str | None,
    first: dict[str, int],
) -> RoleExample | None:
    """`_table_row`, refusing an id an earlier row has: selection flags and RDS scores are keyed by id,
    so two rows with one id would share one score."""
    example = _table_row(path, line, value, cols, role)
    if example is not None:
        if example.id in first:
            message = f"duplicate id {example.id!r} (first at line {first[example.id]})"
            raise DataError(path, line, cols["id"], message)
        first[example.id] = line
    return example


def _table_examples(
    path: PathLike,
    rows: Iterable[tuple[int, Any]],
    cols: Mapping[str, str],
    role: str | None,
    invalid: InvalidRecords | str = "error",
) -> list[RoleExample]:
    policy = InvalidRecords.of(invalid)
    examples = []
    first: dict[str, int] = {}  # id -> line of the example that has it
    for line, value in rows:
        example = policy.guard(partial(_unique_row, path, line, value, cols, role, first))
        if example is not None:
            examples.append(example)
    policy.log_summary()
    return _nonempty(path, examples, role)


def _load_table(
    file: Path,
    kind: str,
    columns: Mapping[str, str] | None,
    role: str | None,
    invalid: InvalidRecords | str = "error",
) -> list[RoleExample]:
    cols = _columns(columns)
    rows: Iterable[tuple[int, Any]]
    if kind == "csv":
        rows = _csv_rows(file, _required(cols, columns, role))
    elif kind == "jsonl":
        rows = read_jsonl(file)
    else:
        rows = ((line, value) for line, _, value in json_members(file, list))
    return _table_examples(file, rows, cols, role, invalid)


def load_table(
    path: PathLike,
    columns: dict[str, str] | None = None,
    role: str | None = None,
    invalid: InvalidRecords | str = "error",
) -> list[RoleExample]:
    """A JSON list, JSONL or CSV table (by suffix); `columns` maps our field names to the file's.

    Rows without a role take `role`; rows with one are kept only if it matches `role` (when given).
    """
    file = _file(path)
    if file.suffix.lower() not in _TABLE_SUFFIXES:
        raise DataError(
            file, None, None, f"unknown table suffix {file.suffix!r} (expected .json, .jsonl or .csv)"
        )
    return _load_table(file, _TABLE_SUFFIXES[file.suffix.lower()], columns, role, invalid)


def _open_hf(name_or_path: str, split: str) -> Any:
    import datasets  # imported here: heavy, and only callers who load HF data should pay for it

    local = Path(name_or_path)
    try:
        if local.is_dir() and any((local / m).is_file() for m in _HF_MARKERS):
            loaded = datasets.load_from_disk(str(local))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise DataError(
                        name_or_path, None, None, f"no split {split!r} (splits: {', '.join(loaded)})"
                    )
                loaded = loaded[split]
            return loaded
        if local.is_file() and local.suffix.lower() in _HF_BUILDERS:
            builder = _HF_BUILDERS[local.suffix.lower()]
            return datasets.load_dataset(builder, data_files={split: str(local)}, split=split)
        return datasets.load_dataset(name_or_path, split=split)
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as err:
        raise DataError(name_or_path, None, None, f"cannot load dataset ({err})") from err


def load_hf(
    name_or_path: str,
    columns: dict[str, str] | None = None,
    split: str = "train",
    role: str | None = None,
    invalid: InvalidRecords | str = "error",
) -> list[RoleExample]:
    """A Hugging Face dataset: a save_to_disk folder, a local data file or folder, or a hub id.

    Rows are validated like table rows; the record number (row index + 1) stands in for the line.
    """
    dataset = _open_hf(name_or_path, split)
    cols = _columns(columns)
    _check_columns(name_or_path, None, dataset.column_names, _required(cols, columns, role))
    return _table_examples(name_or_path, enumerate(dataset, 1), cols, role, invalid)


# ---- one entry point ----


def _starts_like_rolebench(file: Path) -> bool:
    """Whether the first row that parses as a JSON object has RoleBench's `generated` answers."""
    with open(file, "rb") as handle:
        for raw in handle:
            try:
                row = json.loads(raw)
            # also UnicodeDecodeError and absurd nesting: the real loader reports them with their line
            except (ValueError, RecursionError):
                continue
            if isinstance(row, dict):
                return "generated" in row
    return False


def _detect(path: PathLike, split: str) -> str:
    here = Path(path)
    if here.is_dir():
        if any((here / m).is_file() for m in _HF_MARKERS):
            return "hf"
        if (here / f"{split}.json").is_file() or _role_folders(here, split):
            return "role-folder"
        return "hf"  # a local data folder that datasets.load_dataset can read
    suffix = here.suffix.lower()
    if here.is_file():
        if suffix == ".jsonl":
            return "rolebench" if _starts_like_rolebench(here) else "jsonl"
        if suffix in (".json", ".csv"):
            return suffix[1:]
        raise DataError(here, None, None, f"cannot tell the format of {suffix!r} files; pass a format")
    # Hub ids ("owner/name") never look like file paths; a missing local file should say so.
    if suffix in _TABLE_SUFFIXES or here.is_absolute() or str(path).startswith("."):
        raise DataError(here, None, None, "no such file or directory")
    return "hf"


def load_role_examples(
    path: PathLike,
    *,
    format: str = "auto",
    role: str | None = None,
    columns: dict[str, str] | None = None,
    split: str = "train",
    answers: str = "all",
    invalid: InvalidRecords | str = "error",
) -> list[RoleExample]:
    """Load role-play examples in any supported `format` (see FORMATS); "auto" guesses it from the path.

    `invalid` ("error" | "skip", or an `InvalidRecords` that collects what was skipped): see
    `InvalidRecords`."""
    if format not in FORMATS:
        raise ConfigError(f"format must be one of {list(FORMATS)}, got {format!r}")
    kind = _detect(path, split) if format == "auto" else format
    if columns and kind in ("rolebench", "role-folder"):
        raise ConfigError(f"columns apply to json/jsonl/csv/hf data, not to {kind} ({path})")
    policy = InvalidRecords.of(invalid)
    if kind == "rolebench":
        return load_rolebench_release(path, role, answers, policy)
    if kind == "role-folder":
        return load_role_folder(path, role, split, policy)
    if kind == "hf":
        return load_hf(str(path), columns, split, role, policy)
    return _load_table(_file(path), kind, columns, role, policy)
