"""Benchmark loaders: local files and folders (or Hugging Face datasets) -> `Prompt` lists.

Every loader has the signature `(source, LoadOptions) -> list[Prompt]` and validates every record:
a problem is one `DataError` naming the file, the line where the record starts and the field (the
record number stands in for the line in Hugging Face datasets). Ids are the record's own `id` when
it has one, else its 1-based record number, with a file or role prefix where a folder holds several
files; the same file always gives the same ids.
"""

from __future__ import annotations

import importlib.resources
import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from safetune.data.readers import (
    HF_BUILDERS,
    HF_MARKERS,
    TABLE_SUFFIXES,
    PathLike,
    check_flag,
    check_object,
    check_text,
    json_type,
    open_hf_dataset,
    read_csv_cells,
    read_jsonl,
    read_records,
    text_field,
)
from safetune.data.records import Message, Prompt
from safetune.data.sources import role_key, rolebench_answers, rolebench_id_prefix
from safetune.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# Columns that name a language in MultiJail-style tables: ISO 639-1 codes, MultiJail's ten first.
# Not "id" (Indonesian): that is the id column.
LANGUAGE_CODES: tuple[str, ...] = (
    *("en", "zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv"),
    *("de", "fr", "es", "pt", "ru", "ja", "hi", "tr", "nl", "pl", "uk", "fa", "he", "ur", "ms"),
)
# Where a generic prompt file keeps its prompt: the first of these present.
PROMPT_FIELDS: tuple[str, ...] = ("prompt", "goal", "instruction", "question", "text", "input")
JAILBREAK_FIELDS: tuple[str, ...] = ("input", "prompt", "goal", "instruction", "question", "text")
# Where a reference-answer (qa) file keeps its gold answer(s): the first of these present; each holds a
# string or a non-empty list of strings.
REFERENCE_FIELDS: tuple[str, ...] = ("reference", "references", "answer", "output")
BUILTIN_OVERREFUSAL = "builtin:overrefusal"
MERGES_SHOWN = 10  # merged RoleBench rows named in the log line (all are counted)
_HEADER_WORDS = {"prompt", "prompts", "instruction", "goal", "text", "question"}


# Our field names of a benchmark record, which `eval.columns` maps to a file's columns.
BENCHMARK_FIELDS: tuple[str, ...] = ("prompt", "id", "category", "language", "reference")
HEADERS: tuple[str, ...] = ("first_row", "none")


@dataclass(frozen=True)
class TableOptions:
    """How a prompt file's table is read (`eval.columns`, `eval.header`, `eval.language`).

    columns: our field (BENCHMARK_FIELDS) -> the file's column, like `data.columns` for training data;
        with header "none" a column is its 1-based number ("1" is the first), and the prompt defaults
        to column 1. A mapped prompt column is the prompt (the loader's usual field names are not tried).
    header: "first_row" (CSV files start with a header row) or "none" (every row is data: XSafety).
    language: the language of every prompt that has none of its own (per-language results for files
        without a language column); a record whose own language differs is an error.
    """

    columns: tuple[tuple[str, str], ...] = ()
    header: str = "first_row"
    language: str | None = None

    @classmethod
    def of(
        cls, columns: Mapping[str, str] | None, header: str = "first_row", language: str | None = None
    ) -> TableOptions:
        unknown = sorted(set(columns or {}) - set(BENCHMARK_FIELDS))
        if unknown:
            raise ConfigError(
                f"eval.columns: unknown field(s) {unknown}; expected some of {list(BENCHMARK_FIELDS)}"
            )
        if header not in HEADERS:
            raise ConfigError(f"eval.header must be one of {list(HEADERS)}, got {header!r}")
        mapped = dict(columns or {})
        if header == "none":
            mapped.setdefault("prompt", "1")
            bad = sorted(c for c in mapped.values() if not (c.isdigit() and int(c) >= 1))
            if bad:
                raise ConfigError(
                    f"eval.columns: with eval.header=none columns are numbers from 1, got {bad}"
                )
        return cls(tuple(mapped.items()), header, language.strip() if language and language.strip() else None)

    @property
    def default(self) -> bool:
        return self == TableOptions()

    def fields(self, fields: tuple[str, ...]) -> tuple[str, ...]:
        """Where the prompt is looked for: `fields`, or only "prompt" once a prompt column is mapped."""
        return ("prompt",) if any(field == "prompt" for field, _ in self.columns) else fields


@dataclass(frozen=True)
class LoadOptions:
    """What a loader needs besides the source: the benchmark name, the roles to keep (RoleBench), and
    how prompt files' tables are read (`TableOptions`; only loaders of prompt files take them)."""

    benchmark: str
    roles: tuple[str, ...] | None = None
    table: TableOptions = TableOptions()


Loader = Callable[[str, LoadOptions], list[Prompt]]


class _Collector:
    """Builds the prompt list and rejects a duplicate id where it occurs."""

    def __init__(self, benchmark: str) -> None:
        self.benchmark = benchmark
        self.prompts: list[Prompt] = []
        self.seen: dict[str, tuple[str, int]] = {}

    def add(self, where: PathLike, line: int, ident: str, text: str, **fields: Any) -> None:
        if ident in self.seen:
            path, first = self.seen[ident]
            at = f"line {first}" if path == str(where) else f"{path}:{first}"
            raise DataError(where, line, "id", f"duplicate id {ident!r} (same as {at})")
        self.seen[ident] = (str(where), line)
        self.prompts.append(Prompt(ident, text, self.benchmark, **fields))


# ---- record helpers ----


def _records(
    source: str, split: str, within: str | None = None
) -> tuple[str | Path, Iterator[tuple[int, Any]]]:
    """(what errors name, (line, record) pairs) for a local table file or a Hugging Face dataset."""
    here = Path(source)
    if here.is_file() and here.suffix.lower() in TABLE_SUFFIXES:
        return here, read_records(here, within=within)
    # Hub ids ("owner/name") never look like file paths; a missing local file should say so.
    if not here.exists() and (here.suffix.lower() in HF_BUILDERS or here.is_absolute() or source[:1] == "."):
        raise DataError(here, None, None, "no such file or directory")
    return source, enumerate(open_hf_dataset(source, split), 1)


def _headerless(file: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows of a CSV file without a header row, keyed by 1-based column number ("1", "2", ...); every
    row must have as many cells as the first."""
    width = None
    for line, cells in read_csv_cells(file):
        width = len(cells) if width is None else width
        if len(cells) != width:
            raise DataError(file, line, None, f"expected {width} fields (as the first row), got {len(cells)}")
        yield line, {str(k): cell for k, cell in enumerate(cells, 1)}


def _mapped(where: PathLike, line: int, value: Any, columns: tuple[tuple[str, str], ...]) -> Any:
    """The record with our field names added from their mapped columns (records that are not objects
    are left for the loader's own check)."""
    if not columns or not isinstance(value, dict):
        return value
    row = dict(value)
    for field, column in columns:
        if column not in value:
            have = ", ".join(map(str, value)) or "none"
            raise DataError(where, line, column, f"no such column (columns: {have}; eval.columns.{field})")
        row[field] = value[column]
    return row


def _table_records(
    source: str, split: str, table: TableOptions, within: str | None = None
) -> tuple[str | Path, Iterator[tuple[int, Any]]]:
    """`_records` read as `table` says: headerless CSV, mapped columns."""
    if table.header == "none":
        here = Path(source)
        if not (here.is_file() and here.suffix.lower() == ".csv"):
            raise ConfigError(f"eval.header=none applies to local .csv files, not to {source}")
        where: str | Path = here
        records: Iterator[tuple[int, Any]] = _headerless(here)
    else:
        where, records = _records(source, split, within)
    return where, ((line, _mapped(where, line, value, table.columns)) for line, value in records)


def _language(where: PathLike, line: int, row: Mapping[str, Any], table: TableOptions) -> str | None:
    """The record's own `language`, else the file's (`eval.language`); the two must agree."""
    own = _optional(where, line, row, "language")
    if own is not None and table.language is not None and own != table.language:
        raise DataError(where, line, "language", f"{own!r} differs from eval.language {table.language!r}")
    return own or table.language


def _ident(where: PathLike, line: int, row: Mapping[str, Any], number: int) -> str:
    """The record's own `id` (string or integer), else its 1-based record number."""
    value = row.get("id")
    if value is None or (isinstance(value, str) and not value.strip()):
        return str(number)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise DataError(where, line, "id", f"expected a string or integer, got {json_type(value)}")
    return str(value).strip()


def _prompt_text(where: PathLike, line: int, row: Mapping[str, Any], fields: tuple[str, ...]) -> str:
    for field in fields:
        if field in row:
            return check_text(where, line, field, row[field])
    raise DataError(where, line, fields[0], f"missing (expected one of: {', '.join(fields)})")


def _optional(where: PathLike, line: int, row: Mapping[str, Any], field: str) -> str | None:
    value = row.get(field)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise DataError(where, line, field, f"expected a string, got {json_type(value)}")
    return value.strip()


def _prompt_file(
    source: str,
    options: LoadOptions,
    fields: tuple[str, ...],
    *,
    split: str = "train",
    within: str | None = None,
    keep: Callable[[PathLike, int, Mapping[str, Any]], bool] | None = None,
    category: tuple[str, ...] = ("category",),
) -> list[Prompt]:
    """One prompt per record: text from the first of `fields`, optional id, category and language
    (the table read as `options.table` says)."""
    where, records = _table_records(source, split, options.table, within)
    out = _Collector(options.benchmark)
    fields = options.table.fields(fields)
    for number, (line, value) in enumerate(records, 1):
        row = check_object(where, line, value)
        text = _prompt_text(where, line, row, fields)
        ident = _ident(where, line, row, number)
        language = _language(where, line, row, options.table)
        group = next((g for g in (_optional(where, line, row, c) for c in category) if g), None)
        if keep is None or keep(where, line, row):
            out.add(where, line, ident, text, language=language, category=group)
    return out.prompts


# ---- generic harmful prompts, AdvBench, jailbreak prompt files ----


def load_harmful_prompts(source: str, options: LoadOptions) -> list[Prompt]:
    """Any JSON list / JSONL / CSV (or HF dataset) of prompts; see PROMPT_FIELDS."""
    return _prompt_file(source, options, PROMPT_FIELDS)


def load_advbench(source: str, options: LoadOptions) -> list[Prompt]:
    """AdvBench's harmful_behaviors.csv (`goal`, `target`: the prompt is the goal), `prompt` rows, or
    harmful_strings.csv (one column, `target`: the prompt is the string)."""
    return _prompt_file(source, options, ("goal", "prompt", "target"))


def load_jailbreak(source: str, options: LoadOptions) -> list[Prompt]:
    """Jailbreak prompts: the SaRFT authors' `{"Instances": [{"input": ...}, ...]}`, or any prompt file."""
    return _prompt_file(source, options, JAILBREAK_FIELDS, within="Instances")


# ---- reference-answer QA ----


def _references(where: PathLike, line: int, row: Mapping[str, Any]) -> tuple[str, ...]:
    """The gold answers: the first of REFERENCE_FIELDS present, a string or a non-empty string list."""
    for field in REFERENCE_FIELDS:
        if field not in row:
            continue
        value = row[field]
        if isinstance(value, list):
            if not value:
                raise DataError(where, line, field, "empty list")
            return tuple(check_text(where, line, f"{field}[{k}]", v) for k, v in enumerate(value))
        if not isinstance(value, str):
            raise DataError(
                where, line, field, f"expected a string or a list of strings, got {json_type(value)}"
            )
        return (check_text(where, line, field, value),)
    expected = ", ".join(REFERENCE_FIELDS)
    raise DataError(where, line, REFERENCE_FIELDS[0], f"missing (expected one of: {expected})")


def load_qa(source: str, options: LoadOptions) -> list[Prompt]:
    """Benign questions with reference answers, scored by ROUGE-L: any JSON list / JSONL / CSV file,
    save_to_disk folder or HF dataset id (split "test").

    Prompt: the first of PROMPT_FIELDS present; references: the first of REFERENCE_FIELDS present (a
    string, or a list of strings in JSON; ROUGE-L takes the best match); optional `id`, `language` (the
    results are also reported per language) and `category`.
    """
    where, records = _table_records(source, "test", options.table)
    out = _Collector(options.benchmark)
    fields = options.table.fields(PROMPT_FIELDS)
    for number, (line, value) in enumerate(records, 1):
        row = check_object(where, line, value)
        text = _prompt_text(where, line, row, fields)
        references = _references(where, line, row)
        ident = _ident(where, line, row, number)
        language = _language(where, line, row, options.table)
        group = _optional(where, line, row, "category")
        out.add(where, line, ident, text, references=references, language=language, category=group)
    return out.prompts


# ---- BeaverTails ----


def _beavertails_category(where: PathLike, line: int, row: Mapping[str, Any]) -> str | None:
    value = row.get("category")
    if isinstance(value, dict):  # the HF release: harm category -> bool
        return ",".join(sorted(k for k, v in value.items() if v)) or None
    return _optional(where, line, row, "category")


def load_beavertails(source: str, options: LoadOptions) -> list[Prompt]:
    """BeaverTails QA pairs -> unique prompts in file order.

    Rows with an `is_safe` label keep only the unsafe ones (prompts that drew a harmful answer), as
    the fine-tuning safety papers do; the 1000-prompt subset they use is `--eval.limit 1000`.
    """
    where, records = _records(source, "30k_test")
    out = _Collector(options.benchmark)
    seen: set[str] = set()
    for number, (line, value) in enumerate(records, 1):
        row = check_object(where, line, value)
        text = text_field(where, line, row, "prompt")
        ident, group = _ident(where, line, row, number), _beavertails_category(where, line, row)
        if check_flag(where, line, "is_safe", row.get("is_safe")) == 1 or text.strip() in seen:
            continue
        seen.add(text.strip())
        out.add(where, line, ident, text, category=group)
    return out.prompts


# ---- HEx-PHI ----


def _natural(path: Path) -> tuple[Any, ...]:
    """Sort key so that category_2 comes before category_10."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", path.name.lower()))


def _hexphi_csv(file: Path, out: _Collector) -> None:
    """A headerless HEx-PHI category CSV: one prompt per row (a header-like first row is skipped)."""
    for number, (line, cells) in enumerate(read_csv_cells(file), 1):
        if any(cell.strip() for cell in cells[1:]):
            raise DataError(file, line, None, f"expected 1 field (one prompt per row), got {len(cells)}")
        if number == 1 and cells[0].strip().lower() in _HEADER_WORDS:
            continue
        text = check_text(file, line, "prompt", cells[0])
        out.add(file, line, f"{file.stem}:{number}", text, category=file.stem)


def load_hexphi(source: str, options: LoadOptions) -> list[Prompt]:
    """HEx-PHI: a folder of headerless `category_N.csv` files (category = file stem), one such CSV,
    or JSON/JSONL records with `prompt` (or `instruction`) and optional `category`."""
    here = Path(source)
    if here.is_dir() and not any((here / m).is_file() for m in HF_MARKERS):
        files = sorted((f for f in here.glob("*.csv") if f.is_file()), key=_natural)
        if not files:
            raise DataError(here, None, None, "no .csv files (expected HEx-PHI's category_N.csv)")
        out = _Collector(options.benchmark)
        for file in files:
            _hexphi_csv(file, out)
        return out.prompts
    if here.is_file() and here.suffix.lower() == ".csv":
        out = _Collector(options.benchmark)
        _hexphi_csv(here, out)
        return out.prompts
    return _prompt_file(source, options, ("prompt", "instruction"))


# ---- MultiJail ----


def load_multijail(source: str, options: LoadOptions) -> list[Prompt]:
    """MultiJail: one row per prompt with one column per language -> one prompt per (row, language).

    Language columns are those named by a code in LANGUAGE_CODES (others, such as `id`, `tags` or
    `source`, are metadata); ids are `<row id>:<language>`, the category is the row's `tags`.
    """
    where, records = _records(source, "train")
    out = _Collector(options.benchmark)
    for number, (line, value) in enumerate(records, 1):
        row = check_object(where, line, value)
        languages = [k for k in row if k in LANGUAGE_CODES]
        if not languages:
            codes = ", ".join(LANGUAGE_CODES[:10])
            raise DataError(where, line, None, f"no language columns (expected some of: {codes}, ...)")
        ident, tags = _ident(where, line, row, number), _optional(where, line, row, "tags")
        for language in languages:
            text = check_text(where, line, language, row[language])
            out.add(where, line, f"{ident}:{language}", text, language=language, category=tags)
    return out.prompts


# ---- over-refusal ----


def _safe_row(where: PathLike, line: int, row: Mapping[str, Any]) -> bool:
    """XSTest-style filtering: keep `label` == safe rows; without a label, drop `contrast_*` types."""
    if "label" in row:
        label = row["label"]
        if not isinstance(label, str) or label.strip().lower() not in ("safe", "unsafe"):
            raise DataError(where, line, "label", f"expected 'safe' or 'unsafe', got {label!r}")
        return label.strip().lower() == "safe"
    kind = row.get("type")
    return not (isinstance(kind, str) and kind.strip().lower().startswith("contrast_"))


def load_overrefusal(source: str, options: LoadOptions) -> list[Prompt]:
    """Benign prompts that look risky. BUILTIN_OVERREFUSAL is our own set (resources/overrefusal.jsonl);
    XSTest-style files (`prompt` plus `label` and/or `type`) keep their safe rows only."""
    if source in (BUILTIN_OVERREFUSAL, "builtin"):
        resource = importlib.resources.files("safetune") / "resources" / "overrefusal.jsonl"
        with importlib.resources.as_file(resource) as file:  # our own file: eval.columns etc. do not apply
            return _prompt_file(str(file), replace(options, table=TableOptions()), ("prompt",))
    return _prompt_file(
        source, options, ("prompt",), split="test", keep=_safe_row, category=("category", "type")
    )


# ---- RoleBench ----


class _RoleBench:
    """Collects RoleBench prompts: one per distinct (role, question), all gold answers as references.

    A repeated (role, question) row adds its answers to the first row's prompt (RoleBench SPE's test
    split has 573 rows for 561 questions); `done` logs how many rows were merged and where (WARNING).
    """

    def __init__(self, options: LoadOptions) -> None:
        self.wanted = {role_key(r) for r in options.roles} if options.roles else None
        self.out = _Collector(options.benchmark)
        self.index: dict[tuple[str, str], int] = {}
        self.found: set[str] = set()
        self.first: dict[tuple[str, str], tuple[str, int]] = {}  # where each prompt's first row is
        self.merged: list[str] = []  # "path:line (same as ...)" of each merged row

    def add(
        self, where: PathLike, line: int, ident: str, role: str | None, text: str, answers: list[str]
    ) -> None:
        key = role_key(role or "")
        self.found.add(key)
        if self.wanted is not None and key not in self.wanted:
            return
        if (key, text) in self.index:  # the same question again: more gold answers
            k = self.index[(key, text)]
            old = self.out.prompts[k]
            self.out.prompts[k] = replace(old, references=(*old.references, *answers))
            path, first = self.first[(key, text)]
            same = f"line {first}" if path == str(where) else f"{path}:{first}"
            self.merged.append(f"{where}:{line} (same as {same}, id {old.id})")
            return
        self.index[(key, text)] = len(self.out.prompts)
        self.first[(key, text)] = (str(where), line)
        self.out.add(where, line, ident, text, references=tuple(answers), role=role)

    def rows(
        self, where: PathLike, records: Iterable[tuple[int, Any]], role: str | None, prefix: str
    ) -> None:
        """Release rows (`role`, `question`, `generated`) or the authors' rows (`input`, `output`)."""
        for number, (line, value) in enumerate(records, 1):
            row = check_object(where, line, value)
            ident = _ident(where, line, row, number)
            if "generated" in row or "question" in row:
                name = text_field(where, line, row, "role").replace("_", " ")
                text, answers = (
                    text_field(where, line, row, "question"),
                    rolebench_answers(Path(str(where)), line, row),
                )
                self.add(where, line, f"{rolebench_id_prefix(name)}:{ident}", name, text, answers)
            else:
                text = text_field(where, line, row, "input")
                answers = _outputs(where, line, row)
                self.add(where, line, f"{prefix}{ident}", role, text, answers)

    def done(self, source: PathLike) -> list[Prompt]:
        missing = sorted(self.wanted - self.found) if self.wanted is not None else []
        if missing:
            here = ", ".join(sorted(r for r in self.found if r)) or "none"
            raise DataError(source, None, None, f"role(s) not found: {', '.join(missing)} (roles: {here})")
        if self.merged:
            shown = "; ".join(self.merged[:MERGES_SHOWN])
            more = f"; and {len(self.merged) - MERGES_SHOWN} more" if len(self.merged) > MERGES_SHOWN else ""
            log.warning(
                "%s: %d repeated (role, question) rows merged into earlier prompts (their answers added "
                "as references; %d prompts from %d rows): %s%s",
                self.out.benchmark,
                len(self.merged),
                len(self.out.prompts),
                len(self.out.prompts) + len(self.merged),
                shown,
                more,
            )
        return self.out.prompts


def _outputs(where: PathLike, line: int, row: Mapping[str, Any]) -> list[str]:
    """The authors' `output`: one answer, or a non-empty list of them."""
    if "output" not in row:
        raise DataError(where, line, "output", "missing")
    value = row["output"]
    if isinstance(value, list) and value:
        return [check_text(where, line, f"output[{k}]", v) for k, v in enumerate(value)]
    return [check_text(where, line, "output", value)]


def _role_of(file: Path) -> tuple[str | None, str]:
    """(role, id prefix) of `<Role_Name>/RoleBench_X/test.json`, from the folder names."""
    parent = file.resolve().parent
    if parent.name.lower().startswith("rolebench_") and parent.parent.name:
        return parent.parent.name.replace("_", " "), f"{parent.parent.name}:"
    return None, ""


def rolebench_loader(split: str) -> Loader:
    """A loader for the RoleBench `split` ("RAW" general instructions or "SPE" role-specific questions).

    Accepts a root of `<Role_Name>/RoleBench_<split>/test.json` folders (role = folder name, `_` as
    space), one role folder, one test.json (JSON list of `input`/`output`), the RoleBench release
    JSONL (`role`, `question`, `generated` answers), or an HF dataset with the release's columns.
    """
    sub = f"RoleBench_{split}"

    def load(source: str, options: LoadOptions) -> list[Prompt]:
        here = Path(source)
        bench = _RoleBench(options)
        if here.is_file():
            role, prefix = _role_of(here)
            bench.rows(here, read_records(here), role, prefix)
        elif here.is_dir() and not any((here / m).is_file() for m in HF_MARKERS):
            if (here / sub / "test.json").is_file():
                folders = [here]
            elif (here / "test.json").is_file():
                role, prefix = _role_of(here / "test.json")
                bench.rows(here / "test.json", read_records(here / "test.json"), role, prefix)
                return bench.done(here)
            else:
                folders = sorted(p for p in here.iterdir() if (p / sub / "test.json").is_file())
            if not folders:
                raise DataError(here, None, None, f"no <Role_Name>/{sub}/test.json here or in sub-folders")
            for folder in folders:
                name = folder.resolve().name
                if bench.wanted is None or role_key(name) in bench.wanted:
                    file = folder / sub / "test.json"
                    bench.rows(file, read_records(file), name.replace("_", " "), f"{name}:")
                else:
                    bench.found.add(role_key(name))
        else:
            where, records = _records(source, "test")
            bench.rows(where, records, None, "")
        return bench.done(here)

    return load


# ---- multi-turn safety sets (evaluation only): the history as given, the last user turn the request ----
#
# Each conversation becomes one prompt whose text is its last user message and whose `history` is what
# comes before (evaluation/turns.py reports them per user turn k). A conversation whose last message is
# not a user message has nothing to answer: it is skipped and counted (one log line per file), never
# silently; a malformed record is a DataError naming the file, line and field.


def _conversation_files(source: str, suffixes: tuple[str, ...]) -> list[Path]:
    """A file, or a folder's files with these suffixes (sorted by name)."""
    here = Path(source)
    if here.is_dir():
        files = sorted(p for p in here.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
        if not files:
            raise DataError(here, None, None, f"no {' / '.join(suffixes)} files in this folder")
        return files
    if not here.is_file():
        raise DataError(here, None, None, "no such file or directory")
    return [here]


def _message_text(where: PathLike, line: int, field: str, value: object) -> str:
    return check_text(where, line, field, value).strip()


def _log_skipped(where: PathLike, skipped: list[int], why: str) -> None:
    if skipped:
        shown = ", ".join(map(str, skipped[:MERGES_SHOWN]))
        log.warning("%s: skipped %d conversations %s (lines %s)", where, len(skipped), why, shown)


def _split_last(
    where: PathLike, line: int, messages: list[Message], skipped: list[int]
) -> tuple[tuple[Message, ...], str] | None:
    if not messages or messages[-1].role != "user":
        skipped.append(line)
        return None
    return tuple(messages[:-1]), messages[-1].content


def load_cosafe(source: str, options: LoadOptions) -> list[Prompt]:
    """CoSafe (Yu et al., EMNLP 2024): a file, or the release's folder of one file per category (the
    file name is the category). Each non-blank line is one dialogue, a JSON list of `{"role", "content"}`
    messages (the release's `.json` files hold one per line), or an object with that list in `messages`;
    the last user message is the coreference attack. Ids: the line number (`<file stem>:<line>` in a
    folder)."""
    files = _conversation_files(source, (".json", ".jsonl"))
    out = _Collector(options.benchmark)
    for file in files:
        skipped: list[int] = []
        for line, value in read_jsonl(file):
            raw = value.get("messages") if isinstance(value, dict) else value
            if not isinstance(raw, list):
                raise DataError(file, line, None, f"expected a list of messages, got {json_type(value)}")
            messages = []
            for i, item in enumerate(raw):
                entry = check_object(file, line, item)
                role = entry.get("role")
                if role == "system":  # the run's own system prompt (or the character's) is used
                    continue
                if role not in ("user", "assistant"):
                    raise DataError(
                        file, line, f"[{i}].role", f"expected user, assistant or system, got {role!r}"
                    )
                messages.append(
                    Message(role, _message_text(file, line, f"[{i}].content", entry.get("content")))
                )
            split = _split_last(file, line, messages, skipped)
            if split is not None:
                ident = f"{file.stem}:{line}" if len(files) > 1 else str(line)
                category = file.stem if len(files) > 1 else None
                out.add(file, line, ident, split[1], history=split[0], category=category)
        _log_skipped(file, skipped, "whose last message is not a user message")
    return out.prompts


def load_safedialbench(source: str, options: LoadOptions) -> list[Prompt]:
    """SafeDialBench (Cao et al., 2025): JSONL (or a JSON list) of dialogues `{"task", "method",
    "model_type", "scene", "id", "history": [{"user", "bot"}, ...]}`, a file or a folder of them. The
    last entry's `user` is the request (its `bot`, the reference model's answer, is left out); the
    entries before are the history as given. The category is `task/method` (e.g. Privacy/Fallacy
    Attack); ids the record's `id` (`<file stem>:<id>` in a folder)."""
    files = _conversation_files(source, (".json", ".jsonl"))
    out = _Collector(options.benchmark)
    for file in files:
        skipped: list[int] = []
        for number, (line, value) in enumerate(read_records(file), 1):
            row = check_object(file, line, value)
            history = row.get("history")
            if not isinstance(history, list):
                raise DataError(file, line, "history", f"expected a list of turns, got {json_type(history)}")
            if not history:
                skipped.append(line)
                continue
            messages: list[Message] = []
            for i, item in enumerate(history):
                turn = check_object(file, line, item)
                messages.append(
                    Message("user", _message_text(file, line, f"history[{i}].user", turn.get("user")))
                )
                if i + 1 < len(history):  # the last answer is the reference model's: not part of the request
                    bot = _message_text(file, line, f"history[{i}].bot", turn.get("bot"))
                    messages.append(Message("assistant", bot))
            split = _split_last(file, line, messages, skipped)
            assert split is not None  # the last message is always a user one here
            ident = _ident(file, line, row, number)
            task, method = (_optional(file, line, row, key) for key in ("task", "method"))
            category = "/".join(part for part in (task, method) if part) or None
            out.add(
                file,
                line,
                f"{file.stem}:{ident}" if len(files) > 1 else ident,
                split[1],
                history=split[0],
                category=category,
            )
        _log_skipped(file, skipped, "with an empty history")
    return out.prompts


_MHJ_MESSAGE = re.compile(r"^message_(\d+)$")


def load_mhj(source: str, options: LoadOptions) -> list[Prompt]:
    """MHJ, Multi-Turn Human Jailbreaks (Li et al., 2024; gated on Hugging Face, never shipped): the CSV
    (or JSON/JSONL) of `question_id`, `tactic`, ..., `message_0` ... `message_N`, each message cell a
    JSON object `{"body", "role"}` (role user, or system for the red teamer's system prompt), empty
    after the conversation's end. Only the red teamer's turns are given: the model under test answers
    each earlier turn itself (evaluation/turns.py), and the last user turn is the request. A system
    message is left out (the run's own system prompt, or the character's, applies). The category is
    the `tactic`; ids `<question_id>:<record number>` (a behaviour has several submissions)."""
    where, records = _records(source, "train")
    out = _Collector(options.benchmark)
    skipped: list[int] = []
    for number, (line, value) in enumerate(records, 1):
        row = check_object(where, line, value)
        columns = sorted(
            ((int(m.group(1)), key) for key in row if (m := _MHJ_MESSAGE.match(str(key)))), key=lambda c: c[0]
        )
        if not columns:
            raise DataError(where, line, "message_0", "missing (expected message_0, message_1, ... columns)")
        messages: list[Message] = []
        for _, key in columns:
            cell = row[key]
            if cell is None or (isinstance(cell, str) and not cell.strip()):
                continue
            if isinstance(cell, str):
                try:
                    cell = json.loads(cell)
                except json.JSONDecodeError as err:
                    raise DataError(
                        where, line, key, f"expected a JSON object {{body, role}} ({err.msg})"
                    ) from None
            entry = check_object(where, line, cell)
            role = entry.get("role")
            if role == "system":
                continue
            if role not in ("user", "assistant"):
                raise DataError(
                    where, line, f"{key}.role", f"expected user, assistant or system, got {role!r}"
                )
            messages.append(Message(role, _message_text(where, line, f"{key}.body", entry.get("body"))))
        split = _split_last(where, line, messages, skipped)
        if split is None:
            continue
        question = row.get("question_id")
        ident = f"{question}:{number}" if question not in (None, "") else str(number)
        out.add(
            where, line, ident, split[1], history=split[0], category=_optional(where, line, row, "tactic")
        )
    _log_skipped(where, skipped, "without a user turn to end on")
    return out.prompts
