"""storage.read_keyed_jsonl: what every append-only stage file (completions, verdicts, incoherence,
translations, utility) is read back with."""

from __future__ import annotations

import json
from pathlib import Path

from safetune.storage import append_jsonl, read_keyed_jsonl


def test_last_valid_row_wins_bad_lines_are_passed_over_and_a_torn_tail_is_cut(tmp_path: Path) -> None:
    path = tmp_path / "stage.jsonl"
    lines = [
        json.dumps({"id": "a", "v": 1}),
        "not json",
        json.dumps(["a", "list"]),
        json.dumps({"v": 2}),  # no key
        json.dumps({"id": 3, "v": 3}),  # a key that is not a string
        json.dumps({"id": "b", "v": 4, "judge": "other"}),
        json.dumps({"id": "a", "v": 5}),
    ]
    path.write_text("\n".join(lines) + '\n{"id": "c", "v"', encoding="utf-8")  # killed mid-write
    rows = read_keyed_jsonl(path, "id", lambda row: row.get("judge") != "other")
    assert rows == {"a": {"id": "a", "v": 5}}
    assert path.read_text(encoding="utf-8").endswith(lines[-1] + "\n")  # the torn line is gone
    append_jsonl(path, [{"id": "c", "v": 6}])
    assert read_keyed_jsonl(path, "id", lambda row: True)["c"] == {"id": "c", "v": 6}


def test_a_missing_file_is_empty(tmp_path: Path) -> None:
    assert read_keyed_jsonl(tmp_path / "none.jsonl", "key", lambda row: True) == {}
    assert not (tmp_path / "none.jsonl").exists()
