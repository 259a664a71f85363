"""Format-level readers of data files, shared by every loader (role data, preference pairs, benchmarks).

JSON (member by member), JSONL and CSV are read so that each value comes with the 1-based line where
it starts; every problem becomes one `DataError` naming the file, that line and the field. JSON objects
that name a key twice are refused (json would keep the last value silently). The field checkers at
the end validate single values of a record; `InvalidRecords` decides whether a bad record stops a load
or is skipped.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from safetune.errors import ConfigError, DataError

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
T = TypeVar("T")

INVALID_MODES: tuple[str, ...] = ("error", "skip")
TABLE_SUFFIXES = {".json": "json", ".jsonl": "jsonl", ".csv": "csv"}
HF_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")  # what save_to_disk writes
_FLAGS = {"0": 0, "1": 1, "false": 0, "true": 1}
_WS = re.compile(r"[ \t\n\r]*")
_JSON_TYPES = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}


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


def existing_file(path: PathLike, folder: bool = False) -> Path:
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
        raise DataError(path, line, None, f"expected a JSON {_JSON_TYPES[container]}, got {json_type(value)}")
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
                raise DataError(path, line, key, f"expected a list, got {json_type(value)}")
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


def read_csv_rows(path: Path, required: Iterable[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line where the row starts, row) for each CSV data row; the header must hold `required`."""
    reader = csv.reader(text for _, text in _lines(path))
    _, header = _csv_next(path, reader)
    if header is None:
        raise DataError(path, 1, None, "empty CSV file (expected a header row)")
    check_columns(path, 1, header, required)
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
    file = existing_file(path)
    kind = TABLE_SUFFIXES.get(file.suffix.lower())
    if kind is None:
        raise DataError(
            file, None, None, f"unknown table suffix {file.suffix!r} (expected .json, .jsonl or .csv)"
        )
    if kind == "csv":
        yield from read_csv_rows(file, required)
    elif kind == "jsonl":
        yield from read_jsonl(file)
    else:
        text = read_text(file)
        if within is not None and text.lstrip(" \t\n\r").startswith("{"):
            members = _json_document(file, text, dict, within)
            yield from ((line, value) for line, key, value in members if key == within)
        else:
            yield from ((line, value) for line, _, value in _json_document(file, text, list, None))


def check_columns(path: PathLike, line: int | None, have: Iterable[str], needed: Iterable[str]) -> None:
    have = list(have)
    for column in needed:
        if column not in have:
            raise DataError(path, line, column, f"no such column (columns: {', '.join(have)})")


# ---- validation of single values ----


def json_type(value: object) -> str:
    return "null" if value is None else _JSON_TYPES.get(type(value), type(value).__name__)


def check_object(path: PathLike, line: int, value: object) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise DataError(path, line, None, f"expected an object, got {json_type(value)}")
    return value


def check_text(path: PathLike, line: int | None, field: str, value: object) -> str:
    if not isinstance(value, str):
        raise DataError(path, line, field, f"expected a string, got {json_type(value)}")
    if not value.strip():
        raise DataError(path, line, field, "empty")
    return value


def text_field(path: PathLike, line: int, row: Mapping[str, Any], key: str) -> str:
    """A required, non-blank string field of a record."""
    if key not in row:
        raise DataError(path, line, key, "missing")
    return check_text(path, line, key, row[key])


def check_flag(path: PathLike, line: int, field: str, value: object) -> int | None:
    """An optional 0/1 label; tables spell it 0/1/true/false, and an empty cell means unknown."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.strip().lower() in _FLAGS:
        return _FLAGS[value.strip().lower()]
    if isinstance(value, int | float) and value in (0, 1):
        return int(value)
    raise DataError(path, line, field, f"expected 0/1/true/false, got {json_type(value)} {value!r}")


# ---- Hugging Face datasets ----


def open_hf_dataset(name_or_path: str, split: str) -> Any:
    """One split of a Hugging Face dataset: a save_to_disk folder, a local data file, or a hub id."""
    import datasets  # imported here: heavy, and only callers who load HF data should pay for it

    local = Path(name_or_path)
    try:
        if local.is_dir() and any((local / m).is_file() for m in HF_MARKERS):
            loaded = datasets.load_from_disk(str(local))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise DataError(
                        name_or_path, None, None, f"no split {split!r} (splits: {', '.join(loaded)})"
                    )
                loaded = loaded[split]
            return loaded
        if local.is_file() and local.suffix.lower() in HF_BUILDERS:
            builder = HF_BUILDERS[local.suffix.lower()]
            return datasets.load_dataset(builder, data_files={split: str(local)}, split=split)
        return datasets.load_dataset(name_or_path, split=split)
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as err:
        raise DataError(name_or_path, None, None, f"cannot load dataset ({err})") from err
