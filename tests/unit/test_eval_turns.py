"""Safety at turn k (evaluation/turns.py): conversations built at turn k, the model's own history turns,
the per-k table, multi-turn request rendering and hashing, and the CoSafe / SafeDialBench / MHJ loaders on
faithful copies of their release layouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from safetune.config import load_config
from safetune.data.chat import ChatRenderer
from safetune.data.records import Conversation, Message
from safetune.data.turns import render_prompt
from safetune.errors import ConfigError, DataError
from safetune.evaluation.backends import request_ids
from safetune.evaluation.benchmarks import load_benchmark
from safetune.evaluation.items import GenerationRequest
from safetune.evaluation.metrics import ScoredRow
from safetune.evaluation.results import Results
from safetune.evaluation.runner import build_tasks
from safetune.evaluation.stages import request_hash
from safetune.evaluation.turns import (
    OPENERS,
    Character,
    context_prefix,
    fill_history,
    generated_prefix,
    history_request,
    plan_turns,
    turn_of,
    turn_tables,
)
from safetune.models.tiny import default_corpus, train_tokenizer

CARD = {
    "spec": "chara_card_v2",
    "spec_version": "2.0",
    "data": {
        "name": "Grim Vex",
        "description": "{{char}} is a gruff pirate captain.",
        "personality": "",
        "scenario": "",
        "first_mes": "Ahoy, {{user}}!",
        "mes_example": "",
    },
}


def _m(role: str, text: str) -> Message:
    return Message(role, text)  # type: ignore[arg-type]


def _conv(*pairs: tuple[str, str], system: str | None = "S") -> Conversation:
    return Conversation("c", tuple(_m(r, t) for r, t in pairs), system=system)


# ---- conversations at turn k ----


def test_context_prefix_is_everything_before_the_kth_user_turn() -> None:
    conv = _conv(
        ("assistant", "hello"), ("user", "u1"), ("assistant", "a1"), ("user", "u2"), ("assistant", "a2")
    )
    assert context_prefix(conv, 1) == (_m("assistant", "hello"),)
    assert context_prefix(conv, 2) == (_m("assistant", "hello"), _m("user", "u1"), _m("assistant", "a1"))
    assert context_prefix(conv, 3) == conv.messages  # two answered exchanges: all of it
    assert context_prefix(conv, 4) is None
    unanswered = _conv(("user", "u1"), ("assistant", "a1"), ("user", "u2"))
    assert context_prefix(unanswered, 3) is None  # its second user turn has no answer


def test_generated_prefix_opens_with_the_greeting_then_openers() -> None:
    character = Character("Grim", "sys", "Ahoy!")
    assert generated_prefix(character, 1) == (_m("assistant", "Ahoy!"),)
    assert generated_prefix(character, 3) == (
        _m("assistant", "Ahoy!"),
        _m("user", OPENERS[0]),
        _m("user", OPENERS[1]),
    )
    assert generated_prefix(Character("Grim", "sys", None), 2) == (_m("user", OPENERS[0]),)


def test_fill_history_answers_each_unanswered_user_turn_in_order() -> None:
    history = (_m("assistant", "Ahoy!"), _m("user", "o1"), _m("user", "o2"))
    so_far, request = fill_history("sys", history, {})
    assert request is not None and so_far == [_m("assistant", "Ahoy!"), _m("user", "o1")]
    assert (request.user, request.system, request.history) == ("o1", "sys", (("assistant", "Ahoy!"),))
    filled = {request.id: "r1"}
    so_far, second = fill_history("sys", history, filled)
    assert second is not None and second.user == "o2"
    assert second.history == (("assistant", "Ahoy!"), ("user", "o1"), ("assistant", "r1"))
    filled[second.id] = "r2"
    done, none = fill_history("sys", history, filled)
    assert none is None and [m.content for m in done] == ["Ahoy!", "o1", "r1", "o2", "r2"]
    # Content-addressed: the same conversation so far is the same request, another system prompt is not.
    assert history_request("sys", done[:2]).id == request.id != history_request("other", done[:2]).id


def test_turn_of_counts_user_turns_runs() -> None:
    from safetune.data.records import Prompt

    prompt = Prompt("1", "last", "x", history=(_m("user", "a"), _m("user", "b"), _m("assistant", "c")))
    assert turn_of(prompt) == 2  # consecutive user messages are one turn
    assert turn_of(Prompt("1", "only", "x")) == 1


def _harmful(tmp_path: Path) -> Path:
    path = tmp_path / "harmful.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"harm {i}"}) + "\n" for i in range(3)), encoding="utf-8")
    return path


def _config(tmp_path: Path, *extra: str):
    return load_config(
        None,
        [
            f"eval.benchmarks=harmful-prompts={_harmful(tmp_path)},overrefusal",
            "eval.limit=3",
            "eval.model=x",
            *extra,
        ],
    )


def test_plan_with_a_card_puts_every_judged_request_at_each_k(tmp_path: Path) -> None:
    card = tmp_path / "card.json"
    card.write_text(json.dumps(CARD), encoding="utf-8")
    config = _config(tmp_path, "eval.turns=1,3", f"eval.card={card}")
    plan = plan_turns(config, build_tasks(config))
    assert plan is not None and plan.character is not None
    system = "Grim Vex is a gruff pirate captain."
    assert plan.character == Character("Grim Vex", system, "Ahoy, User!")
    assert {t.request.system for t in plan.single} == {system}  # single-turn numbers in character too
    assert len(plan.items) == 2 * 6  # (3 harmful + 3 benign) x 2 turns
    item = next(i for i in plan.items if i.task.request.id == "harmful-prompts@k3/2")
    assert item.k == 3 and item.prefix == "generated" and item.task.prompt.text == "harm 1"
    assert item.task.prompt.history == generated_prefix(plan.character, 3)
    # The first history turn is shared by every request: one request to generate, then the next one.
    pending = plan.pending({})
    assert [r.user for r in pending] == [OPENERS[0]]
    second = plan.pending({pending[0].id: "fine"})
    assert [r.user for r in second] == [OPENERS[1]]
    tasks = plan.tasks({pending[0].id: "fine", second[0].id: "good"})
    final = next(t for t in tasks if t.request.id == "harmful-prompts@k3/2")
    assert final.request.history == (
        ("assistant", "Ahoy, User!"),
        ("user", OPENERS[0]),
        ("assistant", "fine"),
        ("user", OPENERS[1]),
        ("assistant", "good"),
    )
    at_one = next(t for t in tasks if t.request.id == "harmful-prompts@k1/2")
    assert at_one.request.history == (("assistant", "Ahoy, User!"),)


def test_plan_with_context_cycles_through_long_enough_conversations(tmp_path: Path) -> None:
    rows = [
        {
            "messages": [
                {"role": "system", "content": "You are Ann."},
                {"role": "user", "content": "q1"},
                {"role": "assistant", "content": "a1"},
            ]
        },
        {
            "messages": [
                {"role": "system", "content": "You are Ann."},
                {"role": "user", "content": "x1"},
                {"role": "assistant", "content": "y1"},
                {"role": "user", "content": "x2"},
                {"role": "assistant", "content": "y2"},
            ]
        },
    ]
    context = tmp_path / "context.jsonl"
    context.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = _config(tmp_path, "eval.turns=2,3", f"eval.context={context}")
    plan = plan_turns(config, build_tasks(config))
    assert plan is not None and plan.character is not None and plan.character.system == "You are Ann."
    at_two = [i.task.prompt.history for i in plan.items if i.k == 2 and i.task.spec.name == "harmful-prompts"]
    first, second = (_m("user", "q1"), _m("assistant", "a1")), (_m("user", "x1"), _m("assistant", "y1"))
    assert at_two == [first, second, first]  # prompt i takes conversation i mod 2
    at_three = [
        i.task.prompt.history for i in plan.items if i.k == 3 and i.task.spec.name == "harmful-prompts"
    ]
    assert at_three == [rows_two := tuple(_m(r["role"], r["content"]) for r in rows[1]["messages"][1:])] * 3
    assert rows_two and plan.skipped == {2: 0, 3: 1}
    assert plan.pending({}) == []  # the context's answers are given: nothing to generate


def test_plan_checks_before_anything(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs a character"):
        plan_turns(_config(tmp_path, "eval.turns=1"), [])
    with pytest.raises(ConfigError, match="leave"):
        config = _config(tmp_path, "eval.turns=1", "eval.context=x.jsonl", "generation.system=hi")
        plan_turns(config, [])
    with pytest.raises(ConfigError, match=r"eval.turns: each turn must be an integer in \[1, 64\], got 0"):
        _config(tmp_path, "eval.turns=0")
    with pytest.raises(ConfigError, match="listed twice"):
        _config(tmp_path, "eval.turns=2,2")
    card = tmp_path / "card.json"
    card.write_text(json.dumps(CARD), encoding="utf-8")
    config = _config(tmp_path, f"eval.turns={len(OPENERS) + 2}", f"eval.card={card}")
    with pytest.raises(ConfigError, match="opener turns"):
        plan_turns(config, build_tasks(config))


# ---- the per-k table ----


def test_turn_table_by_k_against_hand_counts(tmp_path: Path) -> None:
    card = tmp_path / "card.json"
    card.write_text(json.dumps(CARD), encoding="utf-8")
    config = _config(tmp_path, "eval.turns=1,3", f"eval.card={card}", "eval.bootstrap=20")
    plan = plan_turns(config, build_tasks(config))
    assert plan is not None
    refused_at = {  # request id -> refused?  harmful: k=1 all three refused, k=3 one of three
        **{f"harmful-prompts@k1/{i}": True for i in (1, 2, 3)},
        "harmful-prompts@k3/1": True,
        "harmful-prompts@k3/2": False,
        "harmful-prompts@k3/3": False,
    }
    rows = {}
    benign_seen: dict[int, int] = {}
    for item in plan.items:
        rid = item.task.request.id
        if item.task.spec.name == "overrefusal":  # benign: only the first of the three refused at each k
            benign_seen[item.k] = benign_seen.get(item.k, 0) + 1
            refused = benign_seen[item.k] == 1
        else:
            refused = refused_at[rid]
        rows[rid] = ScoredRow(rid, label="safe" if refused else "unsafe", refused=refused)
    benchmarks = {"harmful-prompts": {"value": 100.0}, "overrefusal": {"value": 0.0}}
    tables = turn_tables(
        plan, rows, benchmarks, config, {rid: 4 if rid.startswith("h") else 2 for rid in rows}
    )
    harmful = tables["harmful-prompts"]
    assert harmful["single_turn"] == 100.0 and harmful["prefix"] == "generated"
    assert [(r["k"], r["n"], r["value"], r["asr"]) for r in harmful["by_turn"]] == [
        (1, 3, 100.0, 0.0),
        (3, 3, pytest.approx(33.33, abs=0.01), pytest.approx(66.67, abs=0.01)),
    ]
    assert [r["fidelity"] for r in harmful["by_turn"]] == [4.0, 4.0]
    benign = tables["overrefusal"]
    assert benign["metric"] == "over_refusal_rate"
    assert [r["value"] for r in benign["by_turn"]] == [pytest.approx(33.33, abs=0.01)] * 2
    # Typed on the way out: the table survives results.json's checks and re-serialises unchanged.
    data = {"schema_version": 1, "provenance": {}, "benchmarks": {}, "summary": {}, "turns": tables}
    assert Results.from_dict(json.loads(json.dumps(data))).to_dict()["turns"] == json.loads(
        json.dumps(tables)
    )
    bad = json.loads(json.dumps(data))
    bad["turns"]["overrefusal"]["by_turn"][0]["k"] = 0
    with pytest.raises(DataError, match=r"turns\.overrefusal\.by_turn\.0\.k"):
        Results.from_dict(bad)


# ---- rendering and hashing ----


@pytest.fixture(scope="module")
def tokenizers():
    corpus = default_corpus(200) + ["user: hello", "assistant: hi there"] * 10
    return {
        family: train_tokenizer(corpus, template=family, vocab_size=300) for family in ("chatml", "gemma")
    }


@pytest.mark.parametrize("family", ["chatml", "gemma"])
def test_request_ids_single_turn_unchanged_multi_turn_through_render_prompt(tokenizers, family: str) -> None:
    renderer = ChatRenderer(
        tokenizers[family], max_prompt_tokens=4096, max_response_tokens=1, prompt_truncation="tail"
    )
    single = GenerationRequest("a/1", "How are you?", "You are Ann.")
    assert request_ids(renderer, single, 4096) == renderer.prompt_ids("How are you?", "You are Ann.")
    multi = GenerationRequest(
        "a/1", "And now?", "You are Ann.", (("assistant", "Hello!"), ("user", "hi"), ("assistant", "yo"))
    )
    conversation = Conversation(
        "a/1",
        (_m("assistant", "Hello!"), _m("user", "hi"), _m("assistant", "yo"), _m("user", "And now?")),
        system="You are Ann.",
    )
    ids = request_ids(renderer, multi, 4096)
    assert ids == render_prompt(renderer, conversation)  # greeting-first works on Gemma too
    text = tokenizers[family].decode(ids)
    assert text.index("Hello!") < text.index("hi") < text.index("yo") < text.index("And now?")


def test_request_hash_single_turn_as_before_history_counted() -> None:
    from safetune.evaluation.stages import short_hash

    single = GenerationRequest("a/1", "q", "s")
    assert request_hash(single) == short_hash("q", "s")  # completions made before stay valid
    assert request_hash(
        GenerationRequest("a/1", "q", "s", (("user", "x"), ("assistant", "y")))
    ) != request_hash(single)


# ---- loaders ----


def _cosafe_line(*texts: str) -> str:
    roles = ["user", "assistant"] * len(texts)
    return json.dumps([{"role": r, "content": t} for r, t in zip(roles, texts, strict=False)])


def test_cosafe_release_layout_bom_blank_lines_and_skips(tmp_path: Path, caplog) -> None:
    folder = tmp_path / "CoSafe datasets"
    folder.mkdir()
    # The release's .json files hold one dialogue per line; a BOM and blank lines are tolerated.
    (folder / "self_harm.json").write_text(
        "\ufeff" + _cosafe_line("q1", "a1", "How, then?") + "\n\n" + _cosafe_line("q", "a") + "\n",
        encoding="utf-8",
    )
    (folder / "animal_abuse.json").write_text(_cosafe_line("Why?") + "\n", encoding="utf-8")
    spec, prompts = load_benchmark(f"cosafe={folder}")
    assert spec.kind == "harmful" and spec.group is None
    assert [(p.id, p.text, p.category) for p in prompts] == [
        ("animal_abuse:1", "Why?", "animal_abuse"),
        ("self_harm:1", "How, then?", "self_harm"),
    ]
    assert prompts[1].history == (_m("user", "q1"), _m("assistant", "a1"))
    assert "skipped 1 conversations whose last message is not a user message (lines 3)" in caplog.text
    bad = tmp_path / "bad.json"
    bad.write_text(
        _cosafe_line("q") + "\n" + json.dumps([{"role": "bot", "content": "x"}]) + "\n", encoding="utf-8"
    )
    with pytest.raises(
        DataError, match=r"bad.json:2: field '\[0\].role': expected user, assistant or system, got 'bot'"
    ):
        load_benchmark(f"cosafe={bad}")


def test_safedialbench_layout_drops_the_reference_answer(tmp_path: Path) -> None:
    rows = [
        {
            "task": "Privacy",
            "method": "Fallacy Attack",
            "model_type": "ChatGPT",
            "scene": "Healthcare",
            "id": 10,
            "history": [
                {"user": "u1", "bot": "b1"},
                {"user": "u2", "bot": "b2"},
                {"user": "attack", "bot": "ref"},
            ],
        },
        {
            "task": "Ethics",
            "method": "Role Play",
            "model_type": "ChatGPT",
            "scene": "Daily Life",
            "id": 11,
            "history": [],
        },
    ]
    path = tmp_path / "privacy.jsonl"
    path.write_text(
        "\ufeff" + "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8"
    )
    _, prompts = load_benchmark(f"safedialbench={path}")
    assert len(prompts) == 1  # the empty history is skipped and counted
    prompt = prompts[0]
    assert (prompt.id, prompt.text, prompt.category) == ("10", "attack", "Privacy/Fallacy Attack")
    assert prompt.history == (
        _m("user", "u1"),
        _m("assistant", "b1"),
        _m("user", "u2"),
        _m("assistant", "b2"),
    )
    assert turn_of(prompt) == 3
    path.write_text(
        json.dumps({"id": 1, "history": [{"user": "u1"}, {"user": "u2", "bot": "b"}]}) + "\n",
        encoding="utf-8",
    )
    with pytest.raises(
        DataError, match=r"privacy.jsonl:1: field 'history\[0\].bot': expected a string, got null"
    ):
        load_benchmark(f"safedialbench={path}")


def test_mhj_csv_layout_user_turns_only(tmp_path: Path) -> None:
    def cell(role: str, body: str) -> str:
        return json.dumps({"body": body, "role": role})

    import csv

    path = tmp_path / "harmbench_behaviors.csv"
    with open(path, "w", newline="", encoding="utf-8-sig") as handle:  # utf-8-sig: a BOM, as Excel saves
        writer = csv.writer(handle)
        writer.writerow(
            [
                "question_id",
                "time_spent",
                "submission_message",
                "temperature",
                "tactic",
                "message_0",
                "message_1",
                "message_2",
                "message_3",
            ]
        )
        writer.writerow(
            [
                "7",
                "300",
                "done",
                "0",
                "Direct Request",
                cell("system", "be nice"),
                cell("user", "t1"),
                cell("user", "t2"),
                "",
            ]
        )
        writer.writerow(["8", "100", "", "0", "Hidden Intention", cell("system", "x"), "", "", ""])
    _, prompts = load_benchmark(f"mhj={path}")
    assert len(prompts) == 1  # row 8 has no user turn: skipped, counted
    prompt = prompts[0]
    assert (prompt.id, prompt.text, prompt.category, prompt.history) == (
        "7:1",
        "t2",
        "Direct Request",
        (_m("user", "t1"),),
    )
    # The model answers the red teamer's earlier turn itself: one history turn to generate.
    _, request = fill_history(None, prompt.history, {})
    assert request is not None and request.user == "t1"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["question_id", "message_0"])
        writer.writerow(["1", "{not json"])
    with pytest.raises(
        DataError, match=r"harmbench_behaviors.csv:2: field 'message_0': expected a JSON object"
    ):
        load_benchmark(f"mhj={path}")
