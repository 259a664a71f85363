"""Loaders that turn role-play data files into `RoleExample` lists, with strict validation.

Every problem becomes one `DataError` naming the file, the 1-based line where the bad record starts
and the field, so a user can jump straight to it. Formats: the RoleBench release (JSONL, several
generated answers per question), the SaRFT authors' per-role folders, generic tables (JSON list,
JSONL, CSV) with a column mapping, and Hugging Face datasets. The file formats themselves are read by
data/readers.py; this module maps their records onto role examples and profiles.
"""

from __future__ import annotations

import json
import logging
import unicodedata
from collections.abc import Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

from safetune.config import RunConfig
from safetune.data.readers import (
    HF_MARKERS,
    TABLE_SUFFIXES,
    InvalidRecords,
    PathLike,
    check_columns,
    check_flag,
    check_object,
    check_text,
    existing_file,
    json_members,
    json_type,
    open_hf_dataset,
    read_csv_rows,
    read_jsonl,
    text_field,
)
from safetune.data.records import RoleExample, RoleProfile
from safetune.errors import ConfigError, DataError

log = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("auto", "rolebench", "role-folder", "json", "jsonl", "csv", "hf")
ANSWERS: tuple[str, ...] = ("all", "first")
FIELDS: tuple[str, ...] = ("role", "input", "output", "id", "is_harmful")
DEFAULT_COLUMNS: dict[str, str] = {f: f for f in FIELDS}


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


def rolebench_id_prefix(name: str) -> str:
    """The role part of RoleBench example ids, `<Role_Name>` as documented: the name's own case, spaces
    as `_` ("Freddy Krueger" -> "Freddy_Krueger"; earlier versions lower-cased it)."""
    return "_".join(name.replace("_", " ").split())


def _nonempty(path: PathLike, examples: list[RoleExample], role: str | None) -> list[RoleExample]:
    if not examples:
        raise DataError(path, None, None, f"no examples (role={role})")
    return examples


# ---- RoleBench release and the SaRFT authors' per-role folders ----


PROMPT_KEYS: tuple[str, ...] = ("role", "safe")  # the SaRFT authors' prompt_v2.json: role / unsafe prompt


def _profile(file: Path, line: int, name: str, value: object) -> RoleProfile:
    display = name.replace("_", " ")
    if not isinstance(value, dict):
        return RoleProfile(display, check_text(file, line, name, value))
    unknown = sorted(set(value) - set(PROMPT_KEYS))
    if unknown:
        raise DataError(file, line, name, f"unknown key {unknown[0]!r} (expected {', '.join(PROMPT_KEYS)})")
    for key in PROMPT_KEYS:
        if key not in value:
            raise DataError(file, line, f"{name}.{key}", "missing")
    role, safe = (check_text(file, line, f"{name}.{key}", value[key]) for key in PROMPT_KEYS)
    return RoleProfile(display, role, role_prompt=role, unsafe_prompt=safe)


def load_profiles(path: PathLike) -> dict[str, RoleProfile]:
    """Role profiles, keyed by `role_key`: a JSON object of role name -> either a description
    (RoleBench's profile file) or {"role": role prompt, "safe": unsafe prompt} (the SaRFT authors'
    `prompt_v2.json`: both system prompts, used verbatim by RDS). Both kinds may be mixed."""
    file = existing_file(path)
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


def rolebench_answers(path: Path, line: int, row: Mapping[str, Any]) -> list[str]:
    """RoleBench's `generated`: a non-empty list of non-blank answers."""
    if "generated" not in row:
        raise DataError(path, line, "generated", "missing")
    answers = row["generated"]
    if not isinstance(answers, list) or not answers:
        what = "empty list" if answers == [] else f"expected a list of strings, got {json_type(answers)}"
        raise DataError(path, line, "generated", what)
    return [check_text(path, line, f"generated[{k}]", answer) for k, answer in enumerate(answers)]


def load_rolebench_release(
    path: PathLike, role: str | None = None, answers: str = "all", invalid: InvalidRecords | str = "error"
) -> list[RoleExample]:
    """RoleBench's released JSONL: one question per line with several `generated` answers.

    `answers="all"` makes one example per answer, `"first"` keeps only the first. Every row is
    validated, also rows that `role` filters out: a broken file should fail the same way every time.
    """
    if answers not in ANSWERS:
        raise ConfigError(f"answers must be one of {list(ANSWERS)}, got {answers!r}")
    file = existing_file(path)
    policy = InvalidRecords.of(invalid)
    examples: list[RoleExample] = []
    for line, value in read_jsonl(file):

        def parse(line: int = line, value: Any = value) -> tuple[str, str, list[str]]:
            row = check_object(file, line, value)
            name, question = text_field(file, line, row, "role"), text_field(file, line, row, "question")
            return name, question, rolebench_answers(file, line, row)

        parsed = policy.guard(parse)
        if parsed is None:
            continue
        name, question, replies = parsed
        if role is not None and role_key(name) != role_key(role):
            continue
        prefix = rolebench_id_prefix(name)
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
            row = check_object(file, line, value)
            text, reply = text_field(file, line, row, "input"), text_field(file, line, row, "output")
            harmful = check_flag(file, line, "is_harmful", row.get("is_harmful"))
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
    root = existing_file(path, folder=True)
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


def _table_example(
    path: PathLike, line: int, row: Mapping[str, Any], cols: Mapping[str, str], role: str | None
) -> RoleExample | None:
    """One table row as an example, or None when `role` filters it out."""
    text, reply = text_field(path, line, row, cols["input"]), text_field(path, line, row, cols["output"])
    harmful = check_flag(path, line, cols["is_harmful"], row.get(cols["is_harmful"]))
    ident = row.get(cols["id"])
    if ident is None or ident == "":
        ident = f"{Path(str(path)).stem}-{line}"
    elif isinstance(ident, bool) or not isinstance(ident, str | int):
        raise DataError(path, line, cols["id"], f"expected a string or integer, got {json_type(ident)}")
    name = row.get(cols["role"])
    if name is None or (isinstance(name, str) and not name.strip()):
        if role is None:
            raise DataError(path, line, cols["role"], "missing, and no role was given to fall back on")
        name = role
    elif not isinstance(name, str):
        raise DataError(path, line, cols["role"], f"expected a string, got {json_type(name)}")
    elif role is not None and role_key(name) != role_key(role):
        return None
    return RoleExample(name, text, reply, str(ident), harmful)


def _table_row(
    path: PathLike, line: int, value: Any, cols: Mapping[str, str], role: str | None
) -> RoleExample | None:
    return _table_example(path, line, check_object(path, line, value), cols, role)


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
        rows = read_csv_rows(file, _required(cols, columns, role))
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
    file = existing_file(path)
    if file.suffix.lower() not in TABLE_SUFFIXES:
        raise DataError(
            file, None, None, f"unknown table suffix {file.suffix!r} (expected .json, .jsonl or .csv)"
        )
    return _load_table(file, TABLE_SUFFIXES[file.suffix.lower()], columns, role, invalid)


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
    dataset = open_hf_dataset(name_or_path, split)
    cols = _columns(columns)
    check_columns(name_or_path, None, dataset.column_names, _required(cols, columns, role))
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
        if any((here / m).is_file() for m in HF_MARKERS):
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
    if suffix in TABLE_SUFFIXES or here.is_absolute() or str(path).startswith("."):
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
    return _load_table(existing_file(path), kind, columns, role, policy)


def load_data(
    config: RunConfig, invalid: InvalidRecords | None = None
) -> tuple[list[RoleExample], dict[str, RoleProfile]]:
    """The training examples and role profiles named by a run config. Bad records follow
    `data.invalid`; pass an `InvalidRecords` to get the skipped ones back (for run.json)."""
    data = config.data
    if not data.path:
        raise ConfigError("data.path is required (a file, folder or HF dataset id)")
    examples = load_role_examples(
        data.path,
        format=data.format,
        role=data.role,
        columns=data.columns,
        split=data.split,
        answers=data.answers,
        invalid=invalid if invalid is not None else InvalidRecords(data.invalid),
    )
    if data.max_examples is not None:
        examples = examples[: data.max_examples]
    profiles = load_profiles(data.profiles) if data.profiles else {}
    return examples, profiles
