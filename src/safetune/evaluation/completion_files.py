"""Completions made anywhere, for `safetune judge`: JSONL / JSON / CSV files of prompt, response and,
optionally, id, language, category and a human label.

Fields (ours -> where a file keeps them; `columns` maps any of them to another column, as `eval.columns`
does for benchmark files): prompt (COMPLETION_FIELDS["prompt"]: the first present of prompt, question,
instruction, goal, input), response (response, completion, output, answer, generated), id (else the
record number), language (the prompt's language tag), category (a group to report apart, e.g. XSTest's
`type`), label (the human label, read only when `labels` names its column). Bad input is one DataError
naming the file, the line where the record starts and the field: a missing or empty prompt, a response
that is not a string, a missing label or one the label map does not know, a duplicate id.

Human labels are mapped onto the judge classes (HUMAN_CLASSES: compliance, refusal, partial): our own
names are always understood; `label_map` adds a file's own names ("1_full_compliance=compliance").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetune.data.readers import (
    TABLE_SUFFIXES,
    check_object,
    check_text,
    existing_file,
    json_type,
    read_records,
)
from safetune.errors import ConfigError, DataError

COMPLIANCE, REFUSAL, PARTIAL = "compliance", "refusal", "partial"
HUMAN_CLASSES: tuple[str, ...] = (COMPLIANCE, REFUSAL, PARTIAL)
COMPLETION_FIELDS: dict[str, tuple[str, ...]] = {
    "prompt": ("prompt", "question", "instruction", "goal", "input"),
    "response": ("response", "completion", "output", "answer", "generated"),
    "id": ("id",),
    "language": ("language",),
    "category": ("category",),
}


@dataclass(frozen=True)
class Completion:
    """One judged record. `id` is "<file stem>/<record id>" (unique across the files of one run)."""

    id: str
    file: str
    line: int
    prompt: str
    response: str
    language: str | None = None
    category: str | None = None
    label: str | None = None  # the human label as a HUMAN_CLASSES name, when `labels` was given


@dataclass(frozen=True)
class CompletionTable:
    """How completion files are read: `columns` (our field -> the file's column), the human label's
    column (`labels`, None for none) and the file's label names -> HUMAN_CLASSES (`label_map`)."""

    columns: tuple[tuple[str, str], ...] = ()
    labels: str | None = None
    label_map: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(
        cls, columns: Mapping[str, str] | None, labels: str | None, label_map: Mapping[str, str] | None
    ) -> CompletionTable:
        unknown = sorted(set(columns or {}) - set(COMPLETION_FIELDS))
        if unknown:
            raise ConfigError(
                f"--columns: unknown field(s) {unknown}; expected some of {list(COMPLETION_FIELDS)}"
            )
        bad = sorted(v for v in (label_map or {}).values() if v not in HUMAN_CLASSES)
        if bad:
            raise ConfigError(f"--label-map: {bad} are not judge classes ({', '.join(HUMAN_CLASSES)})")
        if label_map and not labels:
            raise ConfigError("--label-map needs --labels (the column that holds the human labels)")
        return cls(tuple((columns or {}).items()), labels or None, tuple((label_map or {}).items()))

    def names(self) -> dict[str, str]:
        """Every label name the files may use -> its class."""
        return {**{name: name for name in HUMAN_CLASSES}, **dict(self.label_map)}


def parse_pairs(text: str | None, option: str) -> dict[str, str]:
    """ "a=b,c=d" (an option's value) -> {"a": "b", "c": "d"}; ConfigError naming `option` otherwise."""
    pairs: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ConfigError(f"{option}: expected key=value pairs separated by commas, got {part.strip()!r}")
        if key.strip() in pairs:
            raise ConfigError(f"{option}: {key.strip()!r} is given twice")
        pairs[key.strip()] = value.strip()
    return pairs


def _field(where: Path, line: int, row: Mapping[str, Any], field: str, table: CompletionTable) -> Any:
    """The value of our `field` (None when the record has none): the mapped column, else the first of
    its usual names present."""
    mapped = dict(table.columns).get(field)
    if mapped is not None:
        if mapped not in row:
            have = ", ".join(map(str, row)) or "none"
            raise DataError(
                where, line, mapped, f"no such column (columns: {have}; --columns {field}={mapped})"
            )
        return row[mapped]
    return next((row[name] for name in COMPLETION_FIELDS[field] if name in row), None)


def _optional(where: Path, line: int, field: str, value: Any) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise DataError(where, line, field, f"expected a string, got {json_type(value)}")
    return str(value).strip()


def _label(where: Path, line: int, row: Mapping[str, Any], table: CompletionTable) -> str | None:
    if table.labels is None:
        return None
    if table.labels not in row:
        raise DataError(where, line, table.labels, "missing (the --labels column)")
    value = check_text(where, line, table.labels, row[table.labels]).strip()
    names = table.names()
    if value not in names:
        known = ", ".join(sorted(names))
        raise DataError(
            where, line, table.labels, f"unknown label {value!r} (known: {known}; map it with --label-map)"
        )
    return names[value]


def load_completions(path: str | Path, table: CompletionTable = CompletionTable()) -> list[Completion]:
    """Every record of one completion file (module doc); DataError on the first bad one."""
    where = existing_file(path)
    if where.suffix.lower() not in TABLE_SUFFIXES:
        raise DataError(where, None, None, f"expected a {', '.join(sorted(TABLE_SUFFIXES))} file")
    out: list[Completion] = []
    seen: dict[str, int] = {}
    for number, (line, value) in enumerate(read_records(where), 1):
        row = check_object(where, line, value)
        prompt = _field(where, line, row, "prompt", table)
        if prompt is None:
            raise DataError(
                where, line, "prompt", f"missing (expected one of: {', '.join(COMPLETION_FIELDS['prompt'])})"
            )
        response = _field(where, line, row, "response", table)
        if response is None:
            names = ", ".join(COMPLETION_FIELDS["response"])
            raise DataError(
                where, line, "response", f"missing (expected one of: {names}; or --columns response=...)"
            )
        if not isinstance(response, str):  # an empty response is judged ("invalid"), not refused here
            raise DataError(where, line, "response", f"expected a string, got {json_type(response)}")
        ident = _optional(where, line, "id", _field(where, line, row, "id", table)) or str(number)
        if ident in seen:
            raise DataError(where, line, "id", f"duplicate id {ident!r} (same as line {seen[ident]})")
        seen[ident] = line
        out.append(
            Completion(
                id=f"{where.stem}/{ident}",
                file=str(where),
                line=line,
                prompt=check_text(where, line, "prompt", prompt),
                response=response,
                language=_optional(where, line, "language", _field(where, line, row, "language", table)),
                category=_optional(where, line, "category", _field(where, line, row, "category", table)),
                label=_label(where, line, row, table),
            )
        )
    if not out:
        raise DataError(where, None, None, "no records")
    return out


def load_all(paths: Sequence[str | Path], table: CompletionTable) -> list[Completion]:
    """The records of every file, in order; two files of one name (the id prefix) are refused."""
    stems: dict[str, str] = {}
    records: list[Completion] = []
    for path in paths:
        stem = Path(path).stem
        if stem in stems:
            raise ConfigError(f"{path} and {stems[stem]} share the name {stem!r}, which prefixes their ids")
        stems[stem] = str(path)
        records += load_completions(path, table)
    return records
