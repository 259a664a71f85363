"""Property test of the loaders (issue 12): whatever bytes or JSON a file holds, a loader returns records
or raises DataError, never another exception (a traceback in the CLI)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from safetune.config import load_config
from safetune.data.preferences import load_parallel_pairs, load_preference_pairs
from safetune.data.sources import load_profiles, load_role_examples
from safetune.errors import ConfigError, DataError
from safetune.evaluation.benchmark_files import LoadOptions, load_harmful_prompts, load_overrefusal
from safetune.selection import read_external_flags

FIELDS = [
    "role",
    "input",
    "output",
    "question",
    "generated",
    "id",
    "is_harmful",
    "prompt",
    "chosen",
    "rejected",
    "flag",
    "language",
    "description",
]
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=12,
)
records = st.lists(st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6), max_size=4)


def _jsonl(rows: list[Any]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


# Each document kind as a file's bytes: raw bytes, JSON (valid or cut short), record-like rows, CSV.
documents = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    records.map(lambda rows: json.dumps(rows).encode()),
    records.map(_jsonl),
    st.tuples(records.map(_jsonl), st.integers(0, 200)).map(lambda t: t[0][: t[1]]),
    st.lists(st.lists(st.text(max_size=6), max_size=4), max_size=4).map(
        lambda rows: "\n".join(",".join(row) for row in rows).encode()
    ),
    st.text(max_size=200).map(lambda text: text.encode("utf-8", "surrogatepass")),
    # nesting deeper than Python's recursion limit, as a whole file and as one JSONL line
    st.integers(0, 5000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(0, 5000).map(lambda n: b'{"input": ' * n + b"1" + b"}" * n + b"\n"),
    # the same key twice in one record
    st.sampled_from(FIELDS).map(lambda key: f'[{{"{key}": "a", "{key}": "b"}}]'.encode()),
)

Loader = Callable[[Path], Any]
LOADERS: dict[str, tuple[str, Loader]] = {
    "rolebench": ("data.jsonl", lambda p: load_role_examples(p, format="rolebench")),
    "jsonl table": ("data.jsonl", lambda p: load_role_examples(p, format="jsonl", role="R")),
    "json table": ("data.json", lambda p: load_role_examples(p, format="json", role="R")),
    "csv table": ("data.csv", lambda p: load_role_examples(p, format="csv", role="R")),
    "auto": ("data.jsonl", lambda p: load_role_examples(p, role="R", invalid="skip")),
    "role folder": ("R/train.json", lambda p: load_role_examples(p.parent, format="role-folder")),
    "profiles": ("profiles.json", load_profiles),
    "flags jsonl": ("flags.jsonl", lambda p: read_external_flags(str(p), [])),
    "flags json": ("flags.json", lambda p: read_external_flags(str(p), [])),
    "parallel pairs": ("pairs.json", load_parallel_pairs),
    "preference pairs": ("pairs.jsonl", load_preference_pairs),
    "harmful prompts": (
        "prompts.csv",
        lambda p: load_harmful_prompts(str(p), LoadOptions("harmful-prompts")),
    ),
    "overrefusal": ("prompts.jsonl", lambda p: load_overrefusal(str(p), LoadOptions("overrefusal"))),
}


@pytest.mark.parametrize("kind", sorted(LOADERS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=documents)
def test_loaders_return_records_or_raise_data_error(kind: str, content: bytes) -> None:
    name, load = LOADERS[kind]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        try:
            result = load(path)
        except DataError as err:
            assert "\n" not in str(err)
            return
        assert isinstance(result, list | dict)


@settings(max_examples=150, deadline=None)
@given(
    key=st.sampled_from(
        ["train.learning_rate", "train.seed", "method.beta", "eval.bootstrap", "generation.top_p"]
    ),
    raw=st.text(max_size=20),
)
def test_overrides_build_a_config_or_raise_config_error(key: str, raw: str) -> None:
    try:
        config = load_config(overrides=[f"--{key}={raw}"])
    except ConfigError as err:
        assert "\n" not in str(err)
        return
    section, field = key.split(".")
    value = getattr(getattr(config, section), field)
    assert value is None or value == value  # not NaN
