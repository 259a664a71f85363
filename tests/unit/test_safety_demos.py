"""Safety demonstrations (data/safety.py): the built-in set and users' files in the formats they come in."""

from __future__ import annotations

import json
import logging

from data_errors import assert_data_error, raised
from safetune.data.safety import SafetyDemo, load_safety_demos


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_builtin_set_loads_with_unique_ids_and_refusals():
    demos = load_safety_demos()
    assert len(demos) == 32 and len({d.id for d in demos}) == 32
    assert all(d.prompt.strip() and d.response.strip() for d in demos)
    assert load_safety_demos("builtin") == demos


def test_prompt_response_jsonl_and_generated_ids(tmp_path):
    path = _jsonl(
        tmp_path / "s.jsonl", [{"prompt": "bad?", "response": "No."}, {"prompt": "worse?", "response": "No!"}]
    )
    assert load_safety_demos(path) == [
        SafetyDemo("safety-1", "bad?", "No."),
        SafetyDemo("safety-2", "worse?", "No!"),
    ]


def test_safety_tuned_llamas_alpaca_records_join_instruction_and_input(tmp_path):
    path = tmp_path / "safety_only_data_Instructions.json"
    rows = [
        {"instruction": "Write a threat.", "input": "", "output": "I can't."},
        {"instruction": "Summarise this plan.", "input": "Rob the bank.", "output": "I won't."},
    ]
    path.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    demos = load_safety_demos(path)
    assert [d.prompt for d in demos] == ["Write a threat.", "Summarise this plan.\n\nRob the bank."]
    assert [d.response for d in demos] == ["I can't.", "I won't."]


def test_beavertails_rows_keep_only_safe_answers_and_say_so(tmp_path, caplog):
    rows = [
        {"prompt": "p1", "response": "refusal", "is_safe": True},
        {"prompt": "p2", "response": "harmful answer", "is_safe": False},
        {"prompt": "p3", "response": "another refusal", "is_safe": True},
    ]
    with caplog.at_level(logging.INFO, logger="safetune.data.safety"):
        demos = load_safety_demos(_jsonl(tmp_path / "bt.jsonl", rows))
    assert [d.prompt for d in demos] == ["p1", "p3"]
    assert "left out 1 rows marked is_safe=false" in caplog.text


def test_csv_with_bom_and_mapped_columns(tmp_path):
    path = tmp_path / "s.csv"
    path.write_bytes("\ufeffid,ask,reply\nx1,How to hurt?,I can't help.\n".encode())
    assert load_safety_demos(path, columns={"prompt": "ask", "response": "reply"}) == [
        SafetyDemo("x1", "How to hurt?", "I can't help.")
    ]


def test_bad_records_are_located_errors_or_counted_skips(tmp_path):
    rows = [{"prompt": "ok", "response": "No."}, {"prompt": "no answer"}, {"prompt": " ", "response": "No."}]
    path = _jsonl(tmp_path / "s.jsonl", rows)
    assert_data_error(raised(load_safety_demos, path), path, 2, "response")
    assert [d.prompt for d in load_safety_demos(path, invalid="skip")] == ["ok"]


def test_duplicate_ids_empty_files_and_unknown_column_roles_are_refused(tmp_path):
    dup = _jsonl(tmp_path / "d.jsonl", [{"id": "a", "prompt": "p", "response": "r"}] * 2)
    assert_data_error(raised(load_safety_demos, dup), dup, 2, "id")
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n", encoding="utf-8")
    assert "no safety demonstrations" in str(raised(load_safety_demos, empty))
    assert_data_error(raised(load_safety_demos, dup, columns={"answer": "r"}), dup, None, "columns")
