"""The pair builder's inputs: harmful prompts, each with an unsafe answer (the pair's rejected side) and,
optionally, a given safe answer.

Formats (`pairs.format`):

* "pku": PKU-SafeRLHF records (PKU-Alignment/PKU-SafeRLHF, data/*/train.jsonl): `prompt`, `response_0`,
  `response_1`, `is_response_0_safe`, `is_response_1_safe`, `safer_response_id`. The rejected answer is
  the unsafe response; when both are unsafe, the less safe one (the one `safer_response_id` does not
  name). A record whose two responses are both safe has no unsafe answer: it is skipped and counted
  (`no_unsafe_response`), not an error.
* "advbench": AdvBench's harmful_behaviors.csv: `goal` (the prompt) and `target` (the rejected answer, an
  affirmative opening such as "Sure, here is ...").
* "table": any JSON list / JSONL / CSV with the columns `prompt` and `rejected` (optional `id`, `chosen`),
  or others mapped by `pairs.columns` (our field -> the file's column; with `pairs.header=none` a CSV
  without a header row, its columns numbered from 1).
* "auto" decides by the first record: `response_0` -> pku, `goal` -> advbench, else table.

A record's id is its `id` (string or integer), else its 1-based record number; a duplicate id is an
error. Every bad record is one `DataError` naming the file, line and field; with `data.invalid=skip` it
is skipped, logged and counted. Blank lines and blank CSV rows are not records; a BOM is dropped.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from safetune.data.readers import (
    InvalidRecords,
    check_flag,
    check_object,
    check_text,
    existing_file,
    json_type,
    read_csv_cells,
    read_records,
)
from safetune.errors import ConfigError, DataError
from safetune.storage import hash_json

FORMATS: tuple[str, ...] = ("auto", "pku", "advbench", "table")
FIELDS: tuple[str, ...] = ("prompt", "rejected", "chosen", "id")  # what pairs.columns maps


@dataclass(frozen=True)
class HarmfulInput:
    """One harmful prompt, its unsafe answer, and a given safe answer (None: the model writes it)."""

    id: str
    prompt: str
    rejected: str
    chosen: str | None = None
    line: int = 0  # where the record starts in the file (errors, rejected.jsonl)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Loaded:
    """The inputs, what was skipped and why: bad records (`invalid`) and PKU records without an unsafe
    response (`no_unsafe`, by line)."""

    inputs: list[HarmfulInput]
    invalid: InvalidRecords
    no_unsafe: list[int]
    format: str

    def counts(self) -> dict[str, int]:
        return {
            "records": len(self.inputs),
            "skipped_invalid": len(self.invalid.skipped),
            "skipped_no_unsafe_response": len(self.no_unsafe),
        }


def inputs_hash(inputs: list[HarmfulInput]) -> str:
    """What the pairs depend on in the input file: each record's id and texts, in order."""
    return hash_json([[i.id, i.prompt, i.rejected, i.chosen] for i in inputs])


def _records(path: Path, header: str) -> Iterator[tuple[int, Any]]:
    if header == "none":
        if path.suffix.lower() != ".csv":
            raise ConfigError(f"pairs.header=none applies to .csv files, not to {path}")
        width = None
        for line, cells in read_csv_cells(path):
            width = len(cells) if width is None else width
            if len(cells) != width:
                raise DataError(
                    path, line, None, f"expected {width} fields (as the first row), got {len(cells)}"
                )
            yield line, {str(k): cell for k, cell in enumerate(cells, 1)}
        return
    yield from read_records(path)


def _mapped(path: Path, line: int, row: Mapping[str, Any], columns: Mapping[str, str]) -> dict[str, Any]:
    out = dict(row)
    for ours, column in columns.items():
        if column not in row:
            have = ", ".join(map(str, row)) or "none"
            raise DataError(path, line, column, f"no such column (columns: {have}; pairs.columns.{ours})")
        out[ours] = row[column]
    return out


def _ident(path: Path, line: int, row: Mapping[str, Any], number: int) -> str:
    value = row.get("id")
    if value is None or (isinstance(value, str) and not value.strip()):
        return str(number)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise DataError(path, line, "id", f"expected a string or integer, got {json_type(value)}")
    return str(value).strip()


def _text(path: Path, line: int, row: Mapping[str, Any], key: str) -> str:
    if key not in row:
        raise DataError(path, line, key, "missing")
    return check_text(path, line, key, row[key]).strip()


def _safe_flag(path: Path, line: int, row: Mapping[str, Any], k: int) -> int:
    key = f"is_response_{k}_safe"
    if key not in row:
        raise DataError(path, line, key, "missing")
    flag = check_flag(path, line, key, row[key])
    if flag is None:
        raise DataError(path, line, key, "empty (expected true or false)")
    return flag


def _pku_rejected(path: Path, line: int, row: Mapping[str, Any]) -> str | None:
    """The unsafe response of a PKU-SafeRLHF record; None when both are safe."""
    safe = [_safe_flag(path, line, row, k) for k in (0, 1)]
    if all(safe):
        return None
    if safe.count(0) == 2:  # both unsafe: the one the annotators did not call safer
        safer = row.get("safer_response_id")
        if isinstance(safer, bool) or safer not in (0, 1, "0", "1"):
            raise DataError(path, line, "safer_response_id", f"expected 0 or 1, got {safer!r}")
        pick = 1 - int(safer)
    else:
        pick = safe.index(0)
    return _text(path, line, row, f"response_{pick}")


def _parse(
    path: Path,
    line: int,
    value: Any,
    number: int,
    kind: str,
    mapped: Mapping[str, str],
    seen: dict[str, int],
    no_unsafe: list[int],
) -> HarmfulInput | None:
    """One record as a `HarmfulInput`; None for a PKU record without an unsafe response (its line is
    added to `no_unsafe`)."""
    row = _mapped(path, line, check_object(path, line, value), mapped)
    ident = _ident(path, line, row, number)
    if ident in seen:
        raise DataError(path, line, "id", f"duplicate id {ident!r} (same as line {seen[ident]})")
    chosen = None
    if kind == "pku":
        prompt, rejected = _text(path, line, row, "prompt"), _pku_rejected(path, line, row)
        if rejected is None:
            seen[ident] = line
            no_unsafe.append(line)
            return None
    elif kind == "advbench":
        prompt, rejected = _text(path, line, row, "goal"), _text(path, line, row, "target")
    else:
        prompt, rejected = _text(path, line, row, "prompt"), _text(path, line, row, "rejected")
        chosen = _text(path, line, row, "chosen") if "chosen" in row else None
    seen[ident] = line
    return HarmfulInput(ident, prompt, rejected, chosen, line)


def _kind(first: Mapping[str, Any] | None, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    if first is not None and "response_0" in first:
        return "pku"
    if first is not None and "goal" in first:
        return "advbench"
    return "table"


def load_inputs(
    source: str | Path,
    fmt: str = "auto",
    columns: Mapping[str, str] | None = None,
    header: str = "first_row",
    invalid: InvalidRecords | str = "error",
    limit: int | None = None,
) -> Loaded:
    """The harmful inputs of `source` (see the module docstring); at least one, ids unique."""
    if fmt not in FORMATS:
        raise ConfigError(f"pairs.format must be one of {list(FORMATS)}, got {fmt!r}")
    unknown = sorted(set(columns or {}) - set(FIELDS))
    if unknown:
        raise ConfigError(f"pairs.columns: unknown field(s) {unknown}; expected some of {list(FIELDS)}")
    mapped = dict(columns or {})
    if header == "none":
        bad = sorted(c for c in mapped.values() if not (c.isdigit() and int(c) >= 1))
        if bad:
            raise ConfigError(f"pairs.columns: with pairs.header=none columns are numbers from 1, got {bad}")
        if not {"prompt", "rejected"} <= set(mapped):
            raise ConfigError("pairs.header=none needs pairs.columns.prompt and pairs.columns.rejected")
    path = existing_file(source)
    policy = InvalidRecords.of(invalid)
    inputs: list[HarmfulInput] = []
    no_unsafe: list[int] = []
    seen: dict[str, int] = {}
    kind = fmt
    for number, (line, value) in enumerate(_records(path, header), 1):
        if limit is not None and number > limit:
            break
        if number == 1:
            kind = _kind(value if isinstance(value, dict) else None, fmt)

        found = policy.guard(partial(_parse, path, line, value, number, kind, mapped, seen, no_unsafe))
        if found is not None:
            inputs.append(found)
    if not inputs:
        raise DataError(path, None, None, "no usable records (harmful prompts with an unsafe answer)")
    policy.log_summary("input records")
    return Loaded(inputs, policy, no_unsafe, kind)
