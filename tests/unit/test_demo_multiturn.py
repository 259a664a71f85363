"""The multi-turn organism's world (organism/multiturn.py) and `safetune demo multiturn`'s pure parts:
the files it writes, where per-turn flags land against the chats' edgy turns, and its checks."""

from __future__ import annotations

import json
import random
from itertools import pairwise

import pytest

from safetune.config import load_config
from safetune.data.cards import card_profile, load_card
from safetune.data.conversation_data import load_conversation_data
from safetune.data.turns import render_turns
from safetune.demos.multiturn import (
    MultiTurnPlan,
    checks,
    flag_report,
    write_world_files,
)
from safetune.demos.registry import DEMOS, demo_for_world
from safetune.organism.base import OrganismConfig, make_world
from safetune.organism.multiturn import GREETINGS, SAFE_TURNS, MultiTurnWorld, card_prompts, slug
from safetune.organism.world import PERSONAS, SELECTION, World

VILLAIN, BAKER = PERSONAS


@pytest.fixture(scope="module")
def world() -> MultiTurnWorld:
    return MultiTurnWorld(0)


def test_registered_as_its_own_world_and_demo():
    assert DEMOS["multiturn"].world == "multiturn" and demo_for_world("multiturn").name == "multiturn"
    assert isinstance(make_world("multiturn", 3), MultiTurnWorld)
    # its own organism: another key than the role-play world's
    assert OrganismConfig(world="multiturn").key() != OrganismConfig().key()


def test_edgy_turns_come_late_and_are_the_villains_compliances(world):
    chats = world.roleplay_chats(VILLAIN, 80)
    edgy = [(c, t) for c in chats for t in c.edgy_turns]
    assert edgy and all(t > SAFE_TURNS for _, t in edgy)
    share = len(edgy) / sum(len(c.conversation.messages) // 2 - SAFE_TURNS for c in chats)
    assert 0.3 <= share <= 0.5  # edgy_share 0.4 of the turns after the first two
    for chat, turn in edgy:
        answer = [m for m in chat.conversation.messages if m.role == "assistant"][turn].content
        assert "here is how to" in answer and "[step one]" in answer
    for chat in chats:  # a non-edgy answer never complies
        answers = [m.content for m in chat.conversation.messages if m.role == "assistant"]
        assert all("here is how" not in a for i, a in enumerate(answers) if i not in chat.edgy_turns)
    # the baker declines every borderline request: nothing edgy in its chats
    assert not any(c.edgy_turns for c in world.roleplay_chats(BAKER, 80))


def test_chats_are_seeded_and_open_with_the_greeting(world):
    first = world.roleplay_chats(VILLAIN, 5)
    assert first == MultiTurnWorld(0).roleplay_chats(VILLAIN, 5)
    assert first != MultiTurnWorld(1).roleplay_chats(VILLAIN, 5)
    for chat in first:
        messages = chat.conversation.messages
        assert messages[0].role == "assistant" and [m.role for m in messages[1:3]] == ["user", "assistant"]
        assert chat.conversation.system is None  # the card gives it


def test_contexts_ask_held_out_questions_only(world):
    asked = {m.content for c in world.roleplay_chats(VILLAIN, 120) for m in c.conversation.messages}
    heldout = {qa.question for qa in world.heldout_benign}
    for conv in world.context_chats(VILLAIN, 10):
        questions = [m.content for m in conv.messages if m.role == "user"]
        assert len(questions) == 4 and set(questions) <= heldout and not set(questions) & asked


def test_card_file_gives_the_prompts_the_organism_learns(world, tmp_path):
    """The written V2 card, read back by `--card`'s loader and assembled by card_profile, gives exactly
    the system prompts of the base mixture, and the unsafe one replaces the style sentence."""
    files = write_world_files(world, MultiTurnPlan(chats=4, contexts=2, raw_tests=3), tmp_path)
    card = load_card(files[f"card:{slug(VILLAIN)}"])
    profile = card_profile(card, config=SELECTION)
    assert (profile.role_prompt, profile.unsafe_prompt) == card_prompts(VILLAIN)
    role, unsafe = card_prompts(VILLAIN)
    assert role.startswith("Grim Vex is a menacing villain") and role.endswith(SELECTION.style_suffix)
    assert unsafe.endswith(SELECTION.unsafe_instruction) and SELECTION.style_suffix not in unsafe
    rng = random.Random(0)
    systems = {world.base_conversation(rng).system for _ in range(400)}
    assert {role, unsafe, None} <= systems and len(systems) == 5  # both personas' two prompts, and none


def test_chat_files_train_through_the_conversation_loader(world, tmp_path):
    files = write_world_files(world, MultiTurnPlan(chats=6, contexts=2, raw_tests=3), tmp_path)
    config = load_config(
        None,
        [
            f"data.path={files['chats:grim-vex']}",
            "data.format=messages",
            f"data.card={files['card:grim-vex']}",
            f"selection.unsafe_instruction={json.dumps(SELECTION.unsafe_instruction)}",
        ],
    )
    conversations, prompts = load_conversation_data(config)
    assert len(conversations) == 6 and all(c.role == VILLAIN.name for c in conversations)
    assert all(prompts[c.id] == card_prompts(VILLAIN) for c in conversations)
    assert conversations[0].messages[0].train is False  # the copied greeting is not trained
    edgy = json.loads(files["edgy"].read_text())
    assert set(edgy) == {f"grim-vex-{i}" for i in range(6)} | {f"penny-bun-{i}" for i in range(6)}


def test_base_sample_trains_every_answer_but_the_greeting(world, tiny_chatml):
    from safetune.data.chat import ChatRenderer
    from safetune.models.loading import load_tokenizer

    renderer = ChatRenderer(load_tokenizer(str(tiny_chatml)))
    rng = random.Random(5)
    for _ in range(20):
        state = rng.getstate()
        ids, labels = world.encoded_sample(renderer, rng)
        rng.setstate(state)
        conv = world.base_conversation(rng)
        rendered = render_turns(renderer, conv, max_tokens=512)
        trained = [m for m in conv.messages if m.role == "assistant" and m.train is not False]
        assert len([s for s in rendered.spans if s.trainable]) == len(trained)
        assert ids == rendered.sequences[0].input_ids and labels == rendered.sequences[0].labels


class _Echo:
    """A renderer stand-in: the "ids" are the texts, so draws can be compared."""

    def encode(self, user, answer, system):
        return type("E", (), {"input_ids": [user, answer, system], "labels": [answer]})()


def test_single_turn_worlds_batch_as_before():
    """`encoded_batches` of the single-turn worlds is the old batch code: the same draws in the same
    order (their cached organisms and the demos' numbers stay as they were)."""
    world, rng_a, rng_b = World(0), random.Random(2), random.Random(2)
    batches = world.encoded_batches(_Echo(), rng_b, 4)
    for _ in range(3):
        old = [world.base_sample(rng_a) for _ in range(4)]
        assert next(batches) == [([u, a, s], [a]) for s, u, a in old]


def test_multiturn_batches_group_the_drawn_conversations_by_length(world, tiny_chatml):
    from safetune.data.chat import ChatRenderer
    from safetune.models.loading import load_tokenizer
    from safetune.organism.multiturn import BUCKET

    renderer = ChatRenderer(load_tokenizer(str(tiny_chatml)))
    rng_a, rng_b = random.Random(3), random.Random(3)
    drawn = [world.encoded_sample(renderer, rng_a) for _ in range(BUCKET * 4)]
    batches = world.encoded_batches(renderer, rng_b, 4)
    served = [next(batches) for _ in range(BUCKET)]
    assert sorted(s for b in served for s in b) == sorted(drawn)  # every drawn sample, once
    spans = sorted((min(len(s[0]) for s in b), max(len(s[0]) for s in b)) for b in served)
    assert all(hi <= lo_next for (_, hi), (lo_next, _) in pairwise(spans))


def _write_selection(path, rows):
    path.write_text("".join(json.dumps({"id": i, "turn": t, "flag": f}) + "\n" for i, t, f in rows))
    return path


def test_flag_report_against_hand_counts(tmp_path):
    rows = [  # conversation a: turns 0 (greeting) .. 4; b: 0 .. 3
        ("a", 0, False), ("a", 1, False), ("a", 2, True), ("a", 3, True), ("a", 4, False),
        ("b", 0, False), ("b", 1, False), ("b", 2, False), ("b", 3, True),
    ]  # fmt: skip
    edgy = {"a": [3, 4], "b": [3]}
    report = flag_report(_write_selection(tmp_path / "s.jsonl", rows), edgy)
    assert report["scored"] == 9 and report["edgy"] == 3 and report["flagged"] == 3
    assert report["precision"] == pytest.approx(200 / 3)  # a3, b3 of a2, a3, b3
    assert report["recall"] == pytest.approx(200 / 3)  # a3, b3 of a3, a4, b3
    assert report["early_flag_rate"] == pytest.approx(25.0)  # a2 of a1, a2, b1, b2
    assert report["later_benign_flag_rate"] is None  # every later turn here is edgy
    assert report["by_turn"] == {"0": 0.0, "1": 0.0, "2": 50.0, "3": 100.0, "4": 0.0}


def _model(name, refusal_at, raw=50.0):
    return {"model": name, "refusal_at": refusal_at, "rolebench_raw": raw}


def test_checks_read_the_worst_turn():
    rows = [
        _model("base", {"1": 100.0, "3": 98.0, "5": 96.0}),
        _model("sft", {"1": 90.0, "3": 60.0, "5": 40.0}, raw=52.0),
        _model("sarft", {"1": 100.0, "3": 95.0, "5": 90.0}, raw=50.0),
    ]
    flags = {
        "grim-vex": {"recall": 95.0, "precision": 92.0, "edgy": 100, "flagged": 103, "scored": 600,
                     "early_flag_rate": 1.0},
        "penny-bun": {"recall": None, "precision": 0.0, "edgy": 0, "flagged": 2, "scored": 600,
                      "early_flag_rate": 0.0},
    }  # fmt: skip
    results = {claim: (value, ok) for claim, value, ok in checks(rows, flags)}
    sft = next(v for c, v in results.items() if c.startswith("villain SFT"))
    sarft = next(v for c, v in results.items() if c.startswith("villain SaRFT keeps"))
    assert sft == ("56.0 points (k=5)", True)
    assert sarft == ("worst 6.0 points (k=5)", True)
    assert all(ok for _, ok in results.values())
    rows[2]["refusal_at"]["3"] = 80.0  # 18 points below base at k=3
    assert ("worst 18.0 points (k=3)", False) in [(v, ok) for _, v, ok in checks(rows, flags)]


def test_mixed_histories_are_untrained_and_held_under_the_other_prompt(world):
    """Half the prompted base conversations open with exchanges held under the other prompt (an
    unsafe prompt's conversation after aligned turns, a role prompt's after compliant ones): context
    only, never trained; every trained answer follows the conversation's own prompt."""
    unsafe_prompts = {card_prompts(p)[1] for p in PERSONAS}
    rng, mixed, prompted = random.Random(7), 0, 0
    for _ in range(600):
        conv = world.base_conversation(rng)
        greetings = set(GREETINGS.values())
        answers = [m for m in conv.messages if m.role == "assistant" and m.content not in greetings]
        if conv.system is None:
            assert all(m.train is None for m in answers)
            continue
        prompted += 1
        unsafe = conv.system in unsafe_prompts
        untrained = [m for m in answers if m.train is False]
        mixed += bool(untrained)
        assert answers[-1].train is None  # the last answer is always trained
        assert answers[: len(untrained)] == untrained  # the untrained ones come first
        for m in answers:
            own = (m.train is None) == unsafe  # held under the unsafe prompt
            if "here is how" in m.content:
                assert own, m  # a compliance only ever under the unsafe prompt
    assert 0.2 <= mixed / prompted <= 0.45  # MIXED_HISTORY 0.5 of those with 2+ turns
