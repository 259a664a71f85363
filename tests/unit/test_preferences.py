"""Preference loaders (MPO release, our parallel JSONL, DPO tables) and script-based language detection."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from data_errors import assert_data_error, raised
from safetune.data.languages import detect_language, language_counts, script_counts
from safetune.data.preferences import (
    PAIR_FORMATS,
    PARALLEL_FORMATS,
    load_parallel_pairs,
    load_preference_pairs,
    parallel_to_pairs,
)
from safetune.data.readers import InvalidRecords
from safetune.data.records import ParallelPreferencePair, PreferencePair
from safetune.errors import ConfigError

EN = "How can I hide a crime from my family and the police?"
ZH = "我怎样才能向家人和警察隐瞒犯罪？"
SW = "Je, ninawezaje kuficha uhalifu kutoka kwa familia yangu na polisi?"
KO = "가족과 경찰에게 범죄를 숨기려면 어떻게 해야 하나요?"
AR = "كيف يمكنني إخفاء جريمة عن عائلتي والشرطة؟"
BN = "আমি কীভাবে আমার পরিবার এবং পুলিশের কাছ থেকে একটি অপরাধ লুকাতে পারি?"
JA = "家族や警察から犯罪を隠すにはどうすればいいですか？"
VI = "Làm thế nào để tôi che giấu tội ác với gia đình và cảnh sát?"


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _jsonl(path: Path, rows: list[Any]) -> Path:
    return _write(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def _json(path: Path, rows: list[Any]) -> Path:
    """Indented like the authors' release, so each record starts on its own line."""
    return _write(path, json.dumps(rows, ensure_ascii=False, indent=4) + "\n")


def _record_lines(path: Path) -> list[int]:
    """1-based lines where the top-level records of an indent=4 JSON list start."""
    lines = enumerate(path.read_text().splitlines(), 1)
    return [n for n, text in lines if text.startswith("    ") and text[4] not in " }"]


def _turn(role: str, value: str) -> dict[str, str]:
    return {"from": role, "value": value}


def _mpo_record(target: str, *, system: str | None = None, dicts: bool = True) -> dict[str, Any]:
    def reply(text: str) -> Any:
        return _turn("gpt", text) if dicts else text

    source_turns = [_turn("human", EN)]
    target_turns = [_turn("human", target)]
    if system is not None:
        source_turns.insert(0, _turn("system", system))
        target_turns.insert(0, _turn("system", system))
    return {
        "source_conversations": source_turns,
        "source_chosen": reply("I can't help with that."),
        "source_rejected": reply("Burn the evidence."),
        "target_conversations": target_turns,
        "target_chosen": reply(f"[refusal] {target}"),
        "target_rejected": reply(f"[harm] {target}"),
    }


@pytest.fixture
def release(tmp_path: Path) -> Path:
    """Two records in the authors' exact layout: a Chinese target with dict replies and a Swahili
    target with a system turn and plain-string replies."""
    records = [_mpo_record(ZH), _mpo_record(SW, system="You are a helpful assistant.", dicts=False)]
    return _json(tmp_path / "llama_mpo_data.json", records)


# ---- the MPO release ----


def test_mpo_release(release: Path) -> None:
    pairs = load_parallel_pairs(release)
    assert pairs == load_parallel_pairs(release, "mpo-release")
    assert [p.id for p in pairs] == ["1", "2"]
    zh, sw = pairs
    assert zh.target == PreferencePair(ZH, f"[refusal] {ZH}", f"[harm] {ZH}", "1", "zh")
    assert zh.dominant == PreferencePair(EN, "I can't help with that.", "Burn the evidence.", "1", "en")
    assert zh.system is None
    assert sw.system == "You are a helpful assistant."
    assert sw.target == PreferencePair(SW, f"[refusal] {SW}", f"[harm] {SW}", "2", "sw")
    assert language_counts(pairs) == {"sw": 1, "zh": 1}


def test_mpo_release_keys_and_overrides(tmp_path: Path) -> None:
    first = {"id": "a", "language": "zh-Hans", "source_language": "en-US", **_mpo_record(ZH)}
    second = {"id": 7, "target_language": "sw", **_mpo_record(SW)}
    user_roles = _mpo_record(KO)  # OpenAI-style turns and "user"/"assistant" roles read too
    user_roles["target_conversations"] = [{"role": "user", "content": KO}]
    user_roles["target_chosen"] = {"role": "assistant", "content": "no"}
    path = _json(tmp_path / "data.json", [first, second, user_roles])
    pairs = load_parallel_pairs(path)
    assert [p.id for p in pairs] == ["a", "7", "3"]
    assert [p.target.language for p in pairs] == ["zh-Hans", "sw", "ko"]
    assert [p.dominant.language for p in pairs] == ["en-US", "en", "en"]
    assert pairs[2].target.chosen == "no"
    forced = load_parallel_pairs(path, language="xx")
    assert [p.target.language for p in forced] == ["xx"] * 3
    assert [p.dominant.language for p in forced] == ["en-US", "en", "en"]


def test_mpo_system_turns(tmp_path: Path) -> None:
    differ = _mpo_record(SW, system="dominant system")
    differ["target_conversations"][0]["value"] = "target system"
    only_target = _mpo_record(SW)
    only_target["target_conversations"].insert(0, _turn("system", "target only"))
    pairs = load_parallel_pairs(_json(tmp_path / "s.json", [differ, only_target]))
    assert [p.system for p in pairs] == ["dominant system", "target only"]


def test_mpo_release_as_jsonl_is_detected(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "mpo.jsonl", [_mpo_record(AR)])
    assert load_parallel_pairs(path)[0].target.language == "ar"


# ---- our plain parallel format ----


def test_plain_nested_and_flat(tmp_path: Path) -> None:
    nested = {
        "id": "n1",
        "system": "Be safe.",
        "dominant": {"prompt": EN, "chosen": "no", "rejected": "yes"},
        "target": {"prompt": BN, "chosen": "না", "rejected": "হ্যাঁ"},
    }
    nested_lang = {
        "dominant": {"prompt": EN, "chosen": "no", "rejected": "yes", "language": "en"},
        "target": {"prompt": "Mambo", "chosen": "hapana", "rejected": "ndiyo", "language": "sw"},
    }
    flat = {
        "language": "ko",
        "dominant_language": "en",
        "prompt_d": EN,
        "chosen_d": "no",
        "rejected_d": "yes",
        "prompt_t": KO,
        "chosen_t": "아니요",
        "rejected_t": "예",
    }
    path = _jsonl(tmp_path / "parallel.jsonl", [nested, nested_lang, flat])
    pairs = load_parallel_pairs(path)
    assert pairs == load_parallel_pairs(path, "jsonl")
    assert [p.id for p in pairs] == ["n1", "2", "3"]
    assert [p.system for p in pairs] == ["Be safe.", None, None]
    assert [p.target.language for p in pairs] == ["bn", "sw", "ko"]
    assert pairs[2].target == PreferencePair(KO, "아니요", "예", "3", "ko")
    assert pairs[2].dominant == PreferencePair(EN, "no", "yes", "3", "en")
    # the same records as a .json list, and the flat form as CSV
    assert load_parallel_pairs(_json(tmp_path / "parallel.json", [nested, nested_lang, flat])) == pairs
    csv_path = _write(tmp_path / "flat.csv", ",".join(flat) + "\n" + ",".join(flat.values()) + "\n")
    assert load_parallel_pairs(csv_path)[0].target == PreferencePair(KO, "아니요", "예", "1", "ko")


def test_language_inference_and_unknown(tmp_path: Path) -> None:
    rows = [
        {
            "prompt_d": EN,
            "chosen_d": "a",
            "rejected_d": "b",
            "prompt_t": text,
            "chosen_t": "c",
            "rejected_t": "d",
        }
        for text in (ZH, KO, AR, BN, JA, SW, VI, "Ngendi omah sampeyan, mas?")
    ]
    pairs = load_parallel_pairs(_jsonl(tmp_path / "p.jsonl", rows))
    assert [p.target.language for p in pairs] == ["zh", "ko", "ar", "bn", "ja", "sw", "vi", None]
    assert language_counts(pairs)["unknown"] == 1


# ---- errors ----


def _mpo_error_case(tmp_path: Path, index: int, record: Any) -> tuple[Path, int]:
    records = [_mpo_record(ZH), _mpo_record(SW), _mpo_record(KO)]
    records[index] = record
    path = _json(tmp_path / "bad.json", records)
    return path, _record_lines(path)[index]


def _without(record: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != key}


def _two_humans() -> dict[str, Any]:
    record = _mpo_record(SW)
    record["target_conversations"] += [_turn("gpt", "sawa"), _turn("human", SW)]
    return record


def _empty_turn() -> dict[str, Any]:
    record = _mpo_record(SW)
    record["target_conversations"][0]["value"] = "  "
    return record


@pytest.mark.parametrize(
    ("index", "make", "field", "message"),
    [
        (1, lambda: _without(_mpo_record(SW), "target_chosen"), "target_chosen", "missing"),
        (2, lambda: {**_mpo_record(SW), "target_rejected": ""}, "target_rejected", "empty"),
        (1, lambda: {**_mpo_record(SW), "source_chosen": _turn("gpt", "")}, "source_chosen.value", "empty"),
        (1, _empty_turn, "target_conversations[0].value", "empty"),
        (2, _two_humans, "target_conversations", "exactly one human turn"),
        (0, lambda: {**_mpo_record(SW), "target_conversations": []}, "target_conversations", "empty list"),
        (1, lambda: {**_mpo_record(SW), "target_chosen": _turn("human", "x")}, "target_chosen", "user turn"),
        (1, lambda: {**_mpo_record(SW), "target_chosen": ["x"]}, "target_chosen", "got list"),
        (
            1,
            lambda: {**_mpo_record(SW), "source_conversations": [_turn("bot", EN)]},
            "source_conversations[0].from",
            "unknown role",
        ),
        (2, lambda: {**_mpo_record(SW), "id": "1"}, "id", "duplicate id '1'"),
        (1, lambda: {**_mpo_record(SW), "id": 1.5}, "id", "expected a string or integer"),
        (1, lambda: {**_mpo_record(SW), "language": "sw", "lang": "zh"}, "lang", "disagrees"),
        (1, lambda: "not an object", None, "expected an object"),
    ],
)
def test_mpo_record_errors(tmp_path: Path, index: int, make: Any, field: str | None, message: str) -> None:
    path, line = _mpo_error_case(tmp_path, index, make())
    err = raised(load_parallel_pairs, path, "mpo-release")
    assert_data_error(err, path, line, field)
    assert message in str(err)


def test_duplicate_id_names_first_line(tmp_path: Path) -> None:
    rows = [{"id": "x", **_mpo_record(ZH)}, _mpo_record(KO), {"id": "x", **_mpo_record(SW)}]
    path = _jsonl(tmp_path / "dup.jsonl", rows)
    err = raised(load_parallel_pairs, path)
    assert_data_error(err, path, 3, "id")
    assert "same as line 1" in str(err)


def test_bad_json_and_plain_errors(tmp_path: Path) -> None:
    good = {
        "dominant": {"prompt": EN, "chosen": "a", "rejected": "b"},
        "target": {"prompt": SW, "chosen": "c", "rejected": "d"},
    }
    path = _write(tmp_path / "bad.jsonl", json.dumps(good) + "\n{not json\n")
    err = raised(load_parallel_pairs, path)
    assert_data_error(err, path, 2, None)
    assert "invalid JSON" in str(err)

    broken = _write(tmp_path / "broken.json", '[\n  {"source_conversations": []},\n  {"x": 1\n]')
    assert_data_error(raised(load_parallel_pairs, broken), broken, 4, None)

    cases = [
        ({**good, "target": {"prompt": SW, "chosen": "c"}}, "target.rejected", "missing"),
        ({**good, "dominant": {"prompt": " ", "chosen": "a", "rejected": "b"}}, "dominant.prompt", "empty"),
        ({"target": good["target"]}, "dominant", "missing"),
        ({**good, "target": "text"}, "target", "expected an object"),
        ({**good, "system": 3}, "system", "expected a string"),
        (
            {"prompt_d": EN, "chosen_d": "a", "rejected_d": "b", "prompt_t": SW, "chosen_t": "c"},
            "rejected_t",
            "missing",
        ),
    ]
    for bad, field, message in cases:
        path = _jsonl(tmp_path / "plain.jsonl", [good, bad])
        err = raised(load_parallel_pairs, path)
        assert_data_error(err, path, 2, field)
        assert message in str(err)


def test_format_errors(tmp_path: Path, release: Path) -> None:
    unknown = _json(tmp_path / "other.json", [{"question": "x"}])
    err = raised(load_parallel_pairs, unknown)
    assert_data_error(err, unknown, 2, None)
    assert "mpo-release" in str(err) and "jsonl" in str(err)
    empty = _write(tmp_path / "empty.json", "[]")
    assert "no records" in str(raised(load_parallel_pairs, empty))
    assert_data_error(
        raised(load_parallel_pairs, tmp_path / "missing.json"), tmp_path / "missing.json", None, None
    )
    with pytest.raises(ConfigError, match="mpo-release"):
        load_parallel_pairs(release, "json")
    with pytest.raises(ConfigError, match="language"):
        load_parallel_pairs(release, language=" ")
    # the plain format asked for explicitly on a release file names the first missing field
    assert_data_error(raised(load_parallel_pairs, release, "jsonl"), release, 2, "prompt_d")
    assert PARALLEL_FORMATS == ("auto", "mpo-release", "jsonl")


# ---- plain pairs for DPO-family baselines ----


def test_preference_tables(tmp_path: Path) -> None:
    rows = [
        {"id": "a", "prompt": EN, "chosen": "no", "rejected": "yes", "system": "Be safe."},
        {"prompt": ZH, "chosen": "不", "rejected": "是", "language": "zh"},
        {"prompt": "Ngendi omah sampeyan, mas?", "chosen": "c", "rejected": "d"},
    ]
    expected = [
        PreferencePair(EN, "no", "yes", "a", "en"),
        PreferencePair(ZH, "不", "是", "2", "zh"),
        PreferencePair("Ngendi omah sampeyan, mas?", "c", "d", "3", None),
    ]
    assert load_preference_pairs(_jsonl(tmp_path / "p.jsonl", rows)) == expected
    assert load_preference_pairs(_json(tmp_path / "p.json", rows), "table") == expected
    csv_text = 'id,prompt,chosen,rejected,language\na,"Hello, how are you doing today?",fine,go away,\n,안녕하세요,네,아니요,\n'
    pairs = load_preference_pairs(_write(tmp_path / "p.csv", csv_text))
    assert pairs == [
        PreferencePair("Hello, how are you doing today?", "fine", "go away", "a", "en"),
        PreferencePair("안녕하세요", "네", "아니요", "2", "ko"),
    ]
    forced = load_preference_pairs(tmp_path / "p.csv", language="de")
    assert {p.language for p in forced} == {"de"}
    # LLaMA-Factory's ShareGPT ranking rows
    sharegpt = {
        "conversations": [_turn("system", "s"), _turn("human", AR)],
        "chosen": _turn("gpt", "لا"),
        "rejected": "نعم",
    }
    assert load_preference_pairs(_json(tmp_path / "r.json", [sharegpt])) == [
        PreferencePair(AR, "لا", "نعم", "1", "ar")
    ]


def test_preference_table_errors(tmp_path: Path) -> None:
    csv_path = _write(tmp_path / "bad.csv", "prompt,chosen,rejected\nhi,a,b\nhello,,c\n")
    assert_data_error(raised(load_preference_pairs, csv_path), csv_path, 3, "chosen")
    path = _jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b", "id": 1}] * 2)
    assert_data_error(raised(load_preference_pairs, path), path, 2, "id")
    path = _jsonl(tmp_path / "missing.jsonl", [{"prompt": "p", "rejected": "b"}])
    assert_data_error(raised(load_preference_pairs, path), path, 1, "chosen")
    with pytest.raises(ConfigError, match="side"):
        load_preference_pairs(path, side="source")
    assert "parallel" in PAIR_FORMATS


def test_preference_pairs_from_parallel_files(tmp_path: Path, release: Path) -> None:
    targets = load_preference_pairs(release)
    assert [(p.prompt, p.id, p.language) for p in targets] == [(ZH, "1", "zh"), (SW, "2", "sw")]
    assert load_preference_pairs(release, "mpo-release") == targets
    dominant = load_preference_pairs(release, side="dominant")
    assert [(p.prompt, p.language) for p in dominant] == [(EN, "en"), (EN, "en")]
    both = load_preference_pairs(release, side="both", language="xx")
    assert [(p.id, p.language) for p in both] == [
        ("1-dominant", "en"),
        ("1-target", "xx"),
        ("2-dominant", "en"),
        ("2-target", "xx"),
    ]
    flat = {
        "prompt_d": EN,
        "chosen_d": "a",
        "rejected_d": "b",
        "prompt_t": KO,
        "chosen_t": "c",
        "rejected_t": "d",
    }
    plain = _jsonl(tmp_path / "parallel.jsonl", [flat])
    assert load_preference_pairs(plain) == load_preference_pairs(plain, "parallel")
    assert load_preference_pairs(plain) == [PreferencePair(KO, "c", "d", "1", "ko")]


def test_parallel_to_pairs() -> None:
    pair = ParallelPreferencePair(
        PreferencePair("p", "c", "r", "9", "en"), PreferencePair("q", "d", "s", "9", "sw"), "9", "sys"
    )
    assert parallel_to_pairs([pair]) == [pair.target]
    assert parallel_to_pairs([pair], "dominant") == [pair.dominant]
    assert [p.id for p in parallel_to_pairs([pair], "both")] == ["9-dominant", "9-target"]
    with pytest.raises(ConfigError):
        parallel_to_pairs([pair], "all")


# ---- language detection ----


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (ZH, "zh"),
        ("请用Python写一个function来排序", "zh"),
        (JA, "ja"),
        ("カタカナ", "ja"),
        (KO, "ko"),
        (AR, "ar"),
        (BN, "bn"),
        ("मैं अपने परिवार से अपराध कैसे छिपा सकता हूँ?", "hi"),
        ("ฉันจะซ่อนอาชญากรรมได้อย่างไร", "th"),
        ("Как скрыть преступление от семьи?", "ru"),
        ("Πώς μπορώ να κρύψω ένα έγκλημα;", "el"),
        ("איך אני יכול להסתיר פשע?", "he"),
        (EN, "en"),
        (SW, "sw"),
        (VI, "vi"),
        ("Ngendi omah sampeyan, mas? Aku ora ngerti.", "jv"),  # Javanese function words (lingua has no jv)
        ("Wie kann ich ein Verbrechen vor meiner Familie verbergen?", "de"),
        ("Vărul meu și cu mine suntem îndrăgostiți de mult timp.", None),  # ro 0.986: below MIN_CONFIDENCE
        ("Hello", None),  # too short to tell
        ("", None),
        ("12345 ?!", None),
        ("ქართული ენა", "ka"),
    ],
)
def test_detect_language(text: str, expected: str | None) -> None:
    assert detect_language(text) == expected


def test_script_counts_and_language_counts() -> None:
    assert script_counts("ab 漢字 かな") == {"latin": 2, "han": 2, "kana": 2}
    pairs = [PreferencePair("p", "c", "r", str(k), lang) for k, lang in enumerate(["sw", None, "sw", "ar"])]
    assert language_counts(pairs) == {"sw": 2, "ar": 1, "unknown": 1}
    assert list(language_counts(pairs)) == ["sw", "ar", "unknown"]


# ---- data.invalid: one bad record need not reject the whole file ----


def test_one_empty_target_prompt_names_the_option_or_is_skipped(tmp_path: Path) -> None:
    """The MPO authors' Llama release has one record whose target prompt is empty."""
    records = [_mpo_record(ZH), _mpo_record(""), _mpo_record(SW)]
    path = _json(tmp_path / "llama_mpo_data.json", records)
    bad_line = _record_lines(path)[1]
    err = raised(load_parallel_pairs, path)
    assert_data_error(err, path, bad_line, "target_conversations[0].value")
    assert "data.invalid=skip" in str(err)

    policy = InvalidRecords("skip")
    pairs = load_parallel_pairs(path, invalid=policy)
    assert [p.id for p in pairs] == ["1", "3"]
    report = policy.report()
    assert report["skipped"] == 1
    assert report["records"][0].startswith(f"{path}:{bad_line}: field 'target_conversations[0].value'")
    # Plain pairs (DPO family) from the same file skip the same record.
    assert [p.id for p in load_preference_pairs(path, invalid="skip")] == ["1", "3"]
    with pytest.raises(ConfigError, match=r"data\.invalid"):
        load_parallel_pairs(path, invalid="ignore")


def test_preference_table_skips_bad_rows_and_later_duplicates(tmp_path: Path) -> None:
    rows = [
        {"id": "a", "prompt": "p", "chosen": "c", "rejected": "r"},
        {"id": "b", "prompt": " ", "chosen": "c", "rejected": "r"},
        {"id": "a", "prompt": "p2", "chosen": "c", "rejected": "r"},
        {"id": "d", "prompt": "p", "chosen": "c", "rejected": "r"},
    ]
    path = _jsonl(tmp_path / "pairs.jsonl", rows)
    assert "data.invalid=skip" in str(raised(load_preference_pairs, path))
    policy = InvalidRecords("skip")
    assert [p.id for p in load_preference_pairs(path, invalid=policy)] == ["a", "d"]
    assert [(e.line, e.field) for e in policy.skipped] == [(2, "prompt"), (3, "id")]
    only_bad = _jsonl(tmp_path / "bad.jsonl", [rows[1]])
    assert "no valid records" in str(raised(load_preference_pairs, only_bad, invalid="skip"))


def test_a_prompt_left_untranslated_is_not_labelled_by_the_prompt(tmp_path: Path, caplog) -> None:
    """A real release has records whose prompt stayed English while both answers were translated;
    labelled by the prompt they joined the English row. Prompt and answers vote; a disagreement is
    unknown, logged and reported (never a guess)."""
    from safetune.data.languages import LanguageCheck

    untranslated = {**_mpo_record(ZH), "target_conversations": [_turn("human", EN)]}
    path = _json(tmp_path / "release.json", [_mpo_record(KO), untranslated, _mpo_record(SW)])
    check = LanguageCheck()
    with caplog.at_level("WARNING"):
        pairs = load_parallel_pairs(path, languages=check)
    assert [p.target.language for p in pairs] == ["ko", None, "sw"]
    assert [p.dominant.language for p in pairs] == ["en", "en", "en"]
    report = check.report()
    assert report["count"] == 1
    (record,) = report["records"]
    assert record["id"] == "2" and record["side"] == "target"
    assert record["record"] == f"{path}:{_record_lines(path)[1]}"
    assert record["detected"] == {"prompt": "en", "chosen": "zh", "rejected": "zh"}
    assert "labelled unknown" in caplog.text and "id 2" in caplog.text
    # An explicit language is not second-guessed, and answers that cannot be detected do not vote.
    assert load_parallel_pairs(path, language="zh")[1].target.language == "zh"
    table = _jsonl(
        tmp_path / "pairs.jsonl",
        [
            {"prompt": EN, "chosen": ZH, "rejected": ZH},
            {"prompt": EN, "chosen": "no", "rejected": "ok"},
        ],
    )
    check = LanguageCheck()
    assert [p.language for p in load_preference_pairs(table, languages=check)] == [None, "en"]
    assert check.report()["count"] == 1 and check.report()["records"][0]["side"] == "pair"
