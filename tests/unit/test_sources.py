"""Role-play data loaders: every format, auto-detection, and errors that name path:line and field."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from data_errors import assert_data_error, raised

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before datasets is imported anywhere: never the network

import datasets
import pytest

from safetune.data import sources
from safetune.data.readers import InvalidRecords
from safetune.data.records import RoleExample
from safetune.data.sources import (
    FORMATS,
    load_hf,
    load_profiles,
    load_role_examples,
    load_role_folder,
    load_rolebench_release,
    load_table,
    role_key,
)
from safetune.errors import ConfigError


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _jsonl(path: Path, rows: list[Any]) -> Path:
    return _write(path, "".join(json.dumps(row) + "\n" for row in rows))


ROLEBENCH_ROWS = [
    {
        "role": "Freddy_Krueger",
        "question": "Who are you?",
        "generated": ["Your nightmare.", "Freddy."],
        "x": 1,
    },
    {"role": "Sheldon Cooper", "question": "Hi?", "generated": ["Bazinga."]},
]


def _role_root(tmp_path: Path) -> Path:
    root = tmp_path / "roles"
    _write(
        root / "Freddy_Krueger" / "train.json",
        json.dumps(
            [{"input": "q1", "output": "a1", "is_harmful": 1}, {"input": "q2", "output": "a2"}], indent=2
        ),
    )
    _write(
        root / "Freddy_Krueger" / "test.json", json.dumps([{"input": "t", "output": "u", "is_harmful": 0}])
    )
    _write(root / "Sheldon_Cooper" / "train.json", json.dumps([{"input": "q", "output": "a"}]))
    (root / "not_a_role").mkdir()
    return root


# ---- role names and profiles ----


@pytest.mark.parametrize(
    "name", ["Freddy_Krueger", "freddy krueger", "  FREDDY   Krueger ", "freddy__krueger"]
)
def test_role_key_normalises_case_underscores_and_spaces(name: str) -> None:
    assert role_key(name) == "freddy krueger"


def test_load_profiles_keys_by_role_key_and_keeps_the_display_name(tmp_path: Path) -> None:
    path = _write(tmp_path / "desc.json", json.dumps({"Freddy_Krueger": "A dream demon.", "Yoda": "A Jedi."}))
    profiles = load_profiles(path)
    assert set(profiles) == {"freddy krueger", "yoda"}
    assert profiles["freddy krueger"].name == "Freddy Krueger"
    assert profiles["freddy krueger"].description == "A dream demon."


def test_load_profiles_errors_name_the_line_of_the_role(tmp_path: Path) -> None:
    path = _write(tmp_path / "desc.json", '{\n  "Yoda": "A Jedi.",\n  "Freddy_Krueger": 3\n}\n')
    assert_data_error(raised(load_profiles, path), path, 3, "Freddy_Krueger")
    path = _write(tmp_path / "dup.json", '{\n  "Yoda": "a",\n  "yoda": "b"\n}')
    err = raised(load_profiles, path)
    assert_data_error(err, path, 3, "yoda")
    assert "duplicate" in str(err)
    path = _write(tmp_path / "list.json", '["Yoda"]')
    assert_data_error(raised(load_profiles, path), path, 1, None)


# ---- RoleBench release ----


def test_rolebench_all_answers_makes_one_example_per_answer(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "rb.jsonl", ROLEBENCH_ROWS)
    examples = load_rolebench_release(path)
    assert [ex.output for ex in examples] == ["Your nightmare.", "Freddy.", "Bazinga."]
    assert examples[0] == RoleExample(
        "Freddy_Krueger", "Who are you?", "Your nightmare.", "Freddy_Krueger-1-0"
    )
    assert [ex.id for ex in examples[1:]] == ["Freddy_Krueger-1-1", "Sheldon_Cooper-2-0"]


def test_rolebench_first_answer_and_role_filter(tmp_path: Path) -> None:
    path = _write(tmp_path / "rb.jsonl", "\n" + "".join(json.dumps(r) + "\n\n" for r in ROLEBENCH_ROWS))
    examples = load_rolebench_release(path, role="freddy krueger", answers="first")
    assert [(ex.output, ex.id) for ex in examples] == [("Your nightmare.", "Freddy_Krueger-2-0")]


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"role": "A", "question": "q", "generated": []}, "generated"),
        ({"role": "A", "question": "q", "generated": ["ok", "  "]}, "generated[1]"),
        ({"role": "A", "question": "q", "generated": ["ok", 7]}, "generated[1]"),
        ({"role": "A", "question": "q", "generated": "just one"}, "generated"),
        ({"role": "A", "question": "q"}, "generated"),
        ({"role": "A", "generated": ["a"]}, "question"),
        ({"role": "A", "question": " \t", "generated": ["a"]}, "question"),
        ({"question": "q", "generated": ["a"]}, "role"),
    ],
)
def test_rolebench_bad_rows_name_line_and_field(tmp_path: Path, row: dict[str, Any], field: str) -> None:
    path = _jsonl(tmp_path / "rb.jsonl", [ROLEBENCH_ROWS[0], row])
    assert_data_error(raised(load_rolebench_release, path), path, 2, field)


def test_rolebench_wrong_type_message_says_expected_and_got(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "rb.jsonl", [{"role": "A", "question": 5, "generated": ["a"]}])
    assert "expected a string, got number" in str(raised(load_rolebench_release, path))


def test_jsonl_invalid_json_utf8_and_non_objects_name_their_line(tmp_path: Path) -> None:
    good = json.dumps(ROLEBENCH_ROWS[0]) + "\n"
    path = _write(tmp_path / "bad.jsonl", good + "\n" + '{"role": "A",\n')
    err = raised(load_rolebench_release, path)
    assert_data_error(err, path, 3, None)
    assert "invalid JSON" in str(err)
    path = _write(tmp_path / "bytes.jsonl", good.encode() + b'{"role": "\xff"}\n')
    err = raised(load_rolebench_release, path)
    assert str(err) == f"{path}:2: not valid UTF-8"
    path = _write(tmp_path / "list.jsonl", good + "[1, 2]\n")
    assert_data_error(raised(load_rolebench_release, path), path, 2, None)


def test_rolebench_filter_leaving_nothing_and_missing_file(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "rb.jsonl", ROLEBENCH_ROWS)
    assert str(raised(load_rolebench_release, path, role="Yoda")) == f"{path}: no examples (role=Yoda)"
    missing = tmp_path / "missing.jsonl"
    assert str(raised(load_rolebench_release, missing)) == f"{missing}: no such file or directory"
    with pytest.raises(ConfigError):
        load_rolebench_release(path, answers="best")


# ---- the SaRFT authors' per-role folders ----


def test_role_folder_root_loads_every_role_or_the_selected_one(tmp_path: Path) -> None:
    root = _role_root(tmp_path)
    examples = load_role_folder(root)
    assert [(ex.role, ex.id, ex.is_harmful) for ex in examples] == [
        ("Freddy Krueger", "Freddy_Krueger-0", 1),
        ("Freddy Krueger", "Freddy_Krueger-1", None),
        ("Sheldon Cooper", "Sheldon_Cooper-0", None),
    ]
    assert [ex.id for ex in load_role_folder(root, role="sheldon cooper")] == ["Sheldon_Cooper-0"]
    test = load_role_folder(root, split="test")
    assert [(ex.input, ex.output, ex.is_harmful) for ex in test] == [("t", "u", 0)]


def test_role_folder_single_folder(tmp_path: Path) -> None:
    folder = _role_root(tmp_path) / "Freddy_Krueger"
    assert [ex.input for ex in load_role_folder(folder)] == ["q1", "q2"]
    assert [ex.input for ex in load_role_folder(folder, role="Freddy_Krueger")] == ["q1", "q2"]
    assert "no examples (role=Yoda)" in str(raised(load_role_folder, folder, role="Yoda"))


@pytest.mark.parametrize(
    ("element", "field"),
    [
        ('{"input": "q"}', "output"),
        ('{"input": "q",\n   "output": 42}', "output"),
        ('{"input": "q", "output": ["a"]}', "output"),
        ('{"input": "", "output": "a"}', "input"),
        ('{"input": "q", "output": "a", "is_harmful": 2}', "is_harmful"),
        ('{"input": "q", "output": "a", "is_harmful": "maybe"}', "is_harmful"),
        ('"just a string"', None),
    ],
)
def test_role_folder_errors_name_the_line_where_the_object_starts(
    tmp_path: Path, element: str, field: str | None
) -> None:
    text = '[\n  {"input": "q0",\n   "output": "a0"},\n\n  ' + element + "\n]\n"
    path = _write(tmp_path / "Yoda" / "train.json", text)
    assert_data_error(raised(load_role_folder, path.parent), path, 5, field)


def test_role_folder_type_message_and_json_level_errors(tmp_path: Path) -> None:
    path = _write(tmp_path / "Yoda" / "train.json", '[{"input": "q", "output": 42}]')
    assert "expected a string, got number" in str(raised(load_role_folder, path.parent))
    _write(path, '{"input": "q", "output": "a"}')
    err = raised(load_role_folder, path.parent)
    assert_data_error(err, path, 1, None)
    assert "expected a JSON list, got object" in str(err)
    _write(path, '[\n{"input": "q", "output": "a"}\n{"input": "q", "output": "a"}\n]')
    assert_data_error(raised(load_role_folder, path.parent), path, 3, None)  # missing comma
    _write(path, '[{"input": "q", "output": "a"}]\n]')
    assert_data_error(raised(load_role_folder, path.parent), path, 2, None)  # extra data
    _write(path, '[\n{"input": "q", "output": "a"},\n{"input": "\xe9\n'.encode("latin-1"))
    assert str(raised(load_role_folder, path.parent)) == f"{path}:3: not valid UTF-8"


def test_role_folder_missing_split_and_paths(tmp_path: Path) -> None:
    root = _role_root(tmp_path)
    assert "no dev.json" in str(raised(load_role_folder, root, split="dev"))
    assert "no examples (role=Yoda)" in str(raised(load_role_folder, root, role="Yoda"))
    assert str(raised(load_role_folder, tmp_path / "nope")).endswith("no such file or directory")


# ---- generic tables ----


def test_json_table_with_defaults_generated_ids_and_role_fallback(tmp_path: Path) -> None:
    rows = [{"input": "q", "output": "a", "id": "x1"}, {"input": "q2", "output": "a2", "role": "Yoda"}]
    path = _write(tmp_path / "data.json", json.dumps(rows, indent=2))
    examples = load_table(path, role="Yoda")
    assert examples == [RoleExample("Yoda", "q", "a", "x1"), RoleExample("Yoda", "q2", "a2", "data-7")]


def test_jsonl_table_column_mapping_and_role_filter(tmp_path: Path) -> None:
    rows = [
        {"character": "Yoda", "prompt": "q", "response": "a", "uid": 7, "unsafe": True},
        {"character": "Freddy", "prompt": "q2", "response": "a2", "uid": 8, "unsafe": 0},
    ]
    path = _jsonl(tmp_path / "data.jsonl", rows)
    columns = {
        "role": "character",
        "input": "prompt",
        "output": "response",
        "id": "uid",
        "is_harmful": "unsafe",
    }
    assert load_table(path, columns=columns) == [
        RoleExample("Yoda", "q", "a", "7", 1),
        RoleExample("Freddy", "q2", "a2", "8", 0),
    ]
    assert [ex.id for ex in load_table(path, columns=columns, role="freddy")] == ["8"]


def test_csv_table_line_numbers_follow_physical_lines(tmp_path: Path) -> None:
    text = 'input,output,is_harmful\n"multi\nline",a,true\n\nq2,a2,\nq3,a3,0\n'
    path = _write(tmp_path / "data.csv", text)
    examples = load_table(path, role="Yoda")
    assert [(ex.input, ex.id, ex.is_harmful) for ex in examples] == [
        ("multi\nline", "data-2", 1),
        ("q2", "data-5", None),
        ("q3", "data-6", 0),
    ]
    _write(path, text + "q4,   ,1\n")
    assert_data_error(raised(load_table, path, role="Yoda"), path, 7, "output")


def test_csv_errors(tmp_path: Path) -> None:
    path = _write(tmp_path / "data.csv", "input,answer\nq,a\n")
    err = raised(load_table, path, role="Yoda")
    assert_data_error(err, path, 1, "output")
    assert raised(load_table, path, columns={"output": "answer"}).field == "role"  # no role column, no role
    _write(path, "input,output\nq,a\nq,a,extra\n")
    assert_data_error(raised(load_table, path, role="Yoda"), path, 3, None)
    _write(path, b"input,output\nq,a\nq,\xff\n")
    assert str(raised(load_table, path, role="Yoda")) == f"{path}:3: not valid UTF-8"
    _write(path, "input,output,is_harmful\nq,a,maybe\n")
    assert_data_error(raised(load_table, path, role="Yoda"), path, 2, "is_harmful")
    _write(path, "")
    assert_data_error(raised(load_table, path, role="Yoda"), path, 1, None)


def test_table_row_errors(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path / "data.jsonl", [{"input": "q", "output": "a", "role": "A"}, {"input": "q", "output": "a"}]
    )
    assert_data_error(raised(load_table, path), path, 2, "role")
    _jsonl(path, [{"input": "q", "output": "a", "role": 3}])
    assert_data_error(raised(load_table, path), path, 1, "role")
    _jsonl(path, [{"input": "q", "output": "a", "role": "A", "id": [1]}])
    assert_data_error(raised(load_table, path), path, 1, "id")
    _jsonl(path, [{"prompt": "q", "output": "a", "role": "A"}])
    assert_data_error(
        raised(load_table, path, columns={"input": "prompt", "output": "answer"}), path, 1, "answer"
    )
    _write(tmp_path / "x.csv", "input,output,role\nq,a,A\n")
    json_path = _write(tmp_path / "data.json", '[\n  {"input": "q", "output": "a", "role": "A"},\n  [1]\n]')
    assert_data_error(raised(load_table, json_path), json_path, 3, None)
    assert "no examples (role=B)" in str(raised(load_table, json_path.with_name("x.csv"), role="B"))


def test_table_bad_suffix_columns_and_empty_result(tmp_path: Path) -> None:
    path = _write(tmp_path / "data.txt", "x")
    assert "unknown table suffix" in str(raised(load_table, path))
    good = _jsonl(tmp_path / "data.jsonl", [{"input": "q", "output": "a", "role": "A"}])
    with pytest.raises(ConfigError):
        load_table(good, columns={"prompt": "input"})
    assert str(raised(load_table, good, role="B")) == f"{good}: no examples (role=B)"


# ---- Hugging Face datasets ----


def _save(path: Path, rows: list[dict[str, Any]]) -> Path:
    datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


def test_hf_save_to_disk_with_mapping_and_role_filter(tmp_path: Path) -> None:
    rows = [{"q": "hi", "a": "yo", "role": "A", "id": "r1"}, {"q": "q2", "a": "a2", "role": "B", "id": "r2"}]
    path = _save(tmp_path / "ds", rows)
    examples = load_hf(str(path), columns={"input": "q", "output": "a"})
    assert examples == [RoleExample("A", "hi", "yo", "r1"), RoleExample("B", "q2", "a2", "r2")]
    assert [ex.id for ex in load_hf(str(path), columns={"input": "q", "output": "a"}, role="b")] == ["r2"]


def test_hf_dataset_dict_split_and_errors(tmp_path: Path) -> None:
    split = datasets.Dataset.from_list([{"input": "x", "output": "y"}, {"input": "x", "output": None}])
    path = tmp_path / "dd"
    datasets.DatasetDict({"train": split}).save_to_disk(str(path))
    # record number = row index + 1
    assert_data_error(raised(load_hf, str(path), role="A"), path, 2, "output")
    assert "no split 'test'" in str(raised(load_hf, str(path), split="test", role="A"))
    assert_data_error(raised(load_hf, str(path)), path, None, "role")  # no role column and no role given


def test_hf_local_jsonl_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    path = _jsonl(tmp_path / "data.jsonl", [{"input": "q", "output": "a"}])
    assert load_hf(str(path), role="Yoda") == [RoleExample("Yoda", "q", "a", "data-1")]


# ---- one entry point and auto-detection ----


def test_auto_detects_every_local_format(tmp_path: Path) -> None:
    rb = _jsonl(tmp_path / "rb.jsonl", ROLEBENCH_ROWS)
    assert len(load_role_examples(rb)) == 3
    assert len(load_role_examples(rb, answers="first")) == 2
    table = _write(tmp_path / "t.jsonl", "not json\n" + json.dumps({"input": "q", "output": "a"}) + "\n")
    assert "invalid JSON" in str(raised(load_role_examples, table, role="A"))  # detected as jsonl
    _write(table, json.dumps({"input": "q", "output": "a"}) + "\n")
    assert load_role_examples(table, role="A") == [RoleExample("A", "q", "a", "t-1")]
    as_json = _write(tmp_path / "t.json", json.dumps([{"input": "q", "output": "a"}]))
    assert load_role_examples(as_json, role="A")[0].id == "t-1"
    as_csv = _write(tmp_path / "t.csv", "input,output\nq,a\n")
    assert load_role_examples(as_csv, role="A")[0].id == "t-2"
    root = _role_root(tmp_path)
    assert len(load_role_examples(root)) == 3
    assert len(load_role_examples(root / "Sheldon_Cooper")) == 1
    ds = _save(tmp_path / "ds", [{"input": "q", "output": "a", "role": "A"}])
    assert load_role_examples(ds) == [RoleExample("A", "q", "a", "ds-1")]


def test_auto_sends_hub_ids_to_hf_and_rejects_missing_local_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[Any, ...]] = []

    def fake_load_hf(*args: Any) -> list[RoleExample]:
        calls.append(args)
        return []

    monkeypatch.setattr(sources, "load_hf", fake_load_hf)
    load_role_examples("owner/role-data", role="A", split="test")
    assert [call[:4] for call in calls] == [("owner/role-data", None, "test", "A")]
    missing = tmp_path / "missing.jsonl"
    assert str(raised(load_role_examples, missing)) == f"{missing}: no such file or directory"
    assert str(raised(load_role_examples, "./missing.csv")) == "missing.csv: no such file or directory"


def test_explicit_formats_and_bad_arguments(tmp_path: Path) -> None:
    assert FORMATS == ("auto", "rolebench", "role-folder", "json", "jsonl", "csv", "hf")
    rb = _jsonl(tmp_path / "rb.jsonl", ROLEBENCH_ROWS)
    assert len(load_role_examples(rb, format="rolebench", role="Sheldon_Cooper")) == 1
    assert len(load_role_examples(rb, format="jsonl", columns={"input": "question", "output": "role"})) == 2
    data = _write(tmp_path / "rows.txt", "input,output\nq,a\n")
    assert load_role_examples(data, format="csv", role="A")[0].id == "rows-2"
    with pytest.raises(ConfigError):
        load_role_examples(rb, format="parquet")
    with pytest.raises(ConfigError):
        load_role_examples(rb, columns={"input": "question"})
    assert "no such file" in str(raised(load_role_examples, tmp_path / "nope.json", format="json"))


# ---- one role-name rule everywhere ----


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("D'Artagnan", "D_Artagnan"),
        ("D’Artagnan", "d artagnan"),
        ("Dr. Hannibal Lecter", "Dr_Hannibal_Lecter"),
        ("Jean-Luc  Picard", "jean_luc_picard"),
        ("Ｇｒｉｍ Vex", "grim vex"),
    ],
)
def test_role_key_ignores_punctuation_case_and_width(a: str, b: str) -> None:
    assert role_key(a) == role_key(b)


def test_role_key_keeps_every_script() -> None:
    assert role_key("孙悟空") == "孙悟空"
    assert role_key("孙悟空") != role_key("猪八戒")
    assert role_key("किरदार") == "किरदार"  # marks kept


def test_apostrophe_role_matches_its_folder_and_profile(tmp_path: Path) -> None:
    folder = tmp_path / "roles" / "D_Artagnan"
    folder.mkdir(parents=True)
    (folder / "train.json").write_text(json.dumps([{"input": "q", "output": "a"}]))
    assert len(load_role_examples(tmp_path / "roles", role="D'Artagnan")) == 1
    profiles_file = tmp_path / "profiles.json"
    profiles_file.write_text(json.dumps({"D_Artagnan": "A musketeer."}))
    assert role_key("D'Artagnan") in load_profiles(profiles_file)
    data = tmp_path / "rb.jsonl"
    data.write_text(json.dumps({"role": "D'Artagnan", "question": "q", "generated": ["a"]}) + "\n")
    assert len(load_role_examples(data, role="D_Artagnan")) == 1


# ---- the SaRFT authors' prompt_v2.json as --profiles ----


def test_profiles_accept_role_and_safe_prompt_objects(tmp_path: Path) -> None:
    path = tmp_path / "prompt_v2.json"
    path.write_text(
        json.dumps(
            {"Doctor_Who": {"role": "Your name is Doctor Who. R.", "safe": "Your name is Doctor Who. S."}}
        )
    )
    profile = load_profiles(path)["doctor who"]
    assert (profile.name, profile.role_prompt, profile.unsafe_prompt) == (
        "Doctor Who",
        "Your name is Doctor Who. R.",
        "Your name is Doctor Who. S.",
    )
    for value, field in [
        ({"role": "r"}, "X.safe"),
        ({"role": "r", "safe": 3}, "X.safe"),
        ({"role": "r", "safe": "s", "x": "y"}, "X"),
    ]:
        path.write_text(json.dumps({"X": value}))
        assert_data_error(raised(load_profiles, path), path, 1, field)


# ---- data.invalid ----


def test_invalid_records_error_names_the_option_and_skip_reports_them(tmp_path: Path) -> None:
    data = tmp_path / "rb.jsonl"
    rows = [
        {"role": "A", "question": "q1", "generated": ["a"]},
        {"role": "A", "question": "", "generated": ["a"]},
        {"role": "A", "question": "q3", "generated": []},
        {"role": "A", "question": "q4", "generated": ["a"]},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    err = raised(load_role_examples, data)
    assert_data_error(err, data, 2, "question")
    assert "data.invalid=skip" in str(err)
    policy = InvalidRecords("skip")
    assert [ex.input for ex in load_role_examples(data, invalid=policy)] == ["q1", "q4"]
    assert policy.report() == {
        "mode": "skip",
        "skipped": 2,
        "records": [f"{data}:2: field 'question': empty", f"{data}:3: field 'generated': empty list"],
    }


def test_invalid_skip_in_role_folders_and_tables(tmp_path: Path) -> None:
    folder = tmp_path / "Grim_Vex"
    folder.mkdir()
    (folder / "train.json").write_text(
        json.dumps(
            [{"input": "q", "output": "a"}, {"input": "q", "output": 5}, {"input": "q2", "output": "b"}],
            indent=2,
        )
    )
    policy = InvalidRecords("skip")
    assert [ex.id for ex in load_role_examples(folder, invalid=policy)] == ["Grim_Vex-0", "Grim_Vex-2"]
    assert [(e.line, e.field) for e in policy.skipped] == [(6, "output")]
    table = tmp_path / "t.csv"
    table.write_text("role,input,output\nA,q,a\nA,,b\n")
    assert "data.invalid=skip" in str(raised(load_role_examples, table))
    assert len(load_role_examples(table, invalid="skip")) == 1
    assert "no examples" in str(raised(load_role_examples, table, role="B", invalid="skip"))


# ---- duplicates, nesting, messages (issue 12) ----


def test_table_refuses_a_duplicate_id_naming_both_lines(tmp_path: Path) -> None:
    rows = [{"input": "q", "output": "a", "id": "x"}, {"input": "q2", "output": "a2", "id": "y"}]
    rows.append({"input": "q3", "output": "a3", "id": "x"})
    path = _jsonl(tmp_path / "dup.jsonl", rows)
    err = raised(load_table, path, role="Yoda")
    assert_data_error(err, path, 3, "id")
    assert "duplicate id 'x' (first at line 1)" in str(err)
    # skip mode: the second row is a bad record, the first keeps its id
    examples = load_table(path, role="Yoda", invalid="skip")
    assert [ex.id for ex in examples] == ["x", "y"]
    # an integer id and the same id as text are one id (ids are strings everywhere downstream)
    path = _write(tmp_path / "dup.csv", "input,output,id\nq,a,7\nq2,a2,7\n")
    assert_data_error(raised(load_table, path, role="Yoda"), path, 3, "id")


def test_json_records_refuse_duplicate_keys(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "dup.jsonl", '{"role": "A", "question": "q", "question": "r", "generated": ["x"]}\n'
    )
    err = raised(load_rolebench_release, path)
    assert_data_error(err, path, 1, "question")
    assert "duplicate key" in str(err)
    path = _write(
        tmp_path / "data.json", '[\n  {"input": "q", "output": "a"},\n  {"input": "q", "input": "r"}\n]'
    )
    assert_data_error(raised(load_table, path, role="Yoda"), path, 3, "input")
    nested = _write(tmp_path / "nested.json", '[{"input": "q", "output": "a", "meta": {"k": 1, "k": 2}}]')
    assert_data_error(raised(load_table, nested, role="Yoda"), nested, 1, "k")
    profiles = _write(tmp_path / "profiles.json", '{\n"A": "one",\n"B": "two",\n"A": "three"\n}')
    err = raised(load_profiles, profiles)
    assert err.line == 4 and "A" in str(err)


def test_json_nested_too_deeply_is_a_data_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "deep.jsonl", json.dumps(ROLEBENCH_ROWS[0]) + "\n" + "[" * 200_000 + "\n")
    err = raised(load_rolebench_release, path)
    assert str(err) == f"{path}:2: invalid JSON (nested too deeply)"
    path = _write(tmp_path / "deep.json", "[\n" + "[" * 200_000 + "]" * 200_000 + "\n]")
    assert str(raised(load_table, path, role="Yoda")) == f"{path}:2: invalid JSON (nested too deeply)"


def test_json_message_says_at_column_once(tmp_path: Path) -> None:
    path = _write(tmp_path / "open.jsonl", '{"role": "A", "question": "unterminated\n')
    err = raised(load_rolebench_release, path)
    assert str(err) == f"{path}:1: invalid JSON (Unterminated string starting at column 27)"


def test_auto_detection_survives_a_line_nested_too_deeply(tmp_path: Path) -> None:
    path = _write(tmp_path / "deep.jsonl", "[" * 200_000 + "\n")
    assert str(raised(load_role_examples, path, role="A")) == f"{path}:1: invalid JSON (nested too deeply)"
