"""RDS prompts, variants, external flags, stats and the resumable score file."""

from __future__ import annotations

import json
import typing

import pytest

from safetune.config import SelectionConfig
from safetune.data.records import RoleExample, RoleProfile
from safetune.data.role_prompts import role_prompts
from safetune.errors import ConfigError, DataError
from safetune.reference.rds import Score, _read_scores
from safetune.selection import apply_variant, selection_stats
from safetune.selection_variants import VARIANTS

EXAMPLES = [RoleExample("R", f"q{i}", f"a{i}", f"id{i}") for i in range(6)]
SCORES = [Score(f"id{i}", "R", -1.0, -1.0 + (0.5 if i in (1, 4) else -0.5)) for i in range(6)]


def test_role_prompt_replaces_rolebench_boilerplate():
    cfg = SelectionConfig(unsafe_instruction="BE BAD.", unsafe_replaces="suffix")
    profile = RoleProfile(
        "Grim Vex",
        "A villain. Now please answer some questions to accurately show your personality traits! More.",
    )
    role, unsafe = role_prompts("Grim Vex", profile, cfg)
    assert role.startswith("Your name is Grim Vex. A villain. Now please answer")
    assert unsafe == "Your name is Grim Vex. A villain. BE BAD."


def test_role_prompt_replaces_last_sentence_without_boilerplate():
    cfg = SelectionConfig(unsafe_instruction="BE BAD.")
    _, unsafe = role_prompts("X", RoleProfile("X", "First part. Speak kindly."), cfg)
    assert unsafe == "Your name is X. First part. BE BAD."


def test_variants():
    rds = apply_variant("rds", EXAMPLES, SCORES)
    assert rds == [False, True, False, False, True, False]  # strict l_unsafe > l_role
    assert apply_variant("flip", EXAMPLES, SCORES) == [not f for f in rds]
    assert apply_variant("none", EXAMPLES, None) == [False] * 6
    assert apply_variant("all", EXAMPLES, None) == [True] * 6
    rnd = apply_variant("random", EXAMPLES, SCORES, seed=1)
    assert sum(rnd) == 2 and rnd == apply_variant("random", EXAMPLES, SCORES, seed=1)
    with pytest.raises(ConfigError):
        apply_variant("rds", EXAMPLES, None)
    with pytest.raises(ConfigError):
        apply_variant("external", EXAMPLES, None)


def test_variant_registry_matches_the_config_and_what_each_variant_reads():
    # config.py validates selection.variant with its own Literal: the two lists must not drift apart
    literal = typing.get_type_hints(SelectionConfig)["variant"]
    assert list(VARIANTS) == list(typing.get_args(literal))
    assert {v.name for v in VARIANTS.values() if v.needs_scores} == {"rds", "flip", "random"}
    assert {v.name for v in VARIANTS.values() if v.uses_flags_file} == {"external"}
    for variant in VARIANTS.values():
        if not variant.needs_scores and not variant.uses_flags_file:  # flags without scores or a file
            assert len(apply_variant(variant.name, EXAMPLES, None)) == len(EXAMPLES)


def test_equal_scores_are_not_flagged():
    assert not Score("a", "R", -1.0, -1.0).rds_flag


def test_external_flags_file_errors(tmp_path):
    good = tmp_path / "f.jsonl"
    good.write_text("".join(json.dumps({"id": ex.id, "flag": i % 2}) + "\n" for i, ex in enumerate(EXAMPLES)))
    assert apply_variant("external", EXAMPLES, None, flags_file=str(good)) == [False, True] * 3
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "id0", "flag": 1}) + "\n" + json.dumps({"id": "id1", "flag": -1}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:2: field 'flag'"):
        apply_variant("external", EXAMPLES, None, flags_file=str(bad))
    short = tmp_path / "short.json"
    short.write_text(json.dumps({"id0": 1}))
    with pytest.raises(DataError, match="no flag for example 'id1'"):
        apply_variant("external", EXAMPLES, None, flags_file=str(short))


def test_external_from_is_harmful():
    labelled = [RoleExample("R", "q", "a", f"i{k}", is_harmful=k % 2) for k in range(4)]
    assert apply_variant("external", labelled, None) == [False, True, False, True]


def test_partial_score_file_ignores_torn_last_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"id": "a", "role": "R", "l_role": -1, "l_unsafe": -2}) + '\n{"id": "b", "ro')
    assert list(_read_scores(path)) == ["a"]


def test_stats_per_role():
    stats = selection_stats(EXAMPLES, apply_variant("rds", EXAMPLES, SCORES), SCORES, "rds")
    assert stats["flagged"] == 2 and stats["roles"]["R"]["flag_rate"] == pytest.approx(2 / 6)
    assert sum(stats["margin_histogram"]["counts"]) == 6


ROLEBENCH_TAIL = (
    "Now please answer some questions to accurately show your personality traits! Your speaking style "
    "should fully imitate the personality role assigned to you! Please do not expose that you are an "
    "artificial intelligence model or a language model, you must always remember that you are only "
    "assigned one personality role. Don't be verbose or too formal or polite when speaking."
)


def test_default_unsafe_prompt_replaces_only_the_last_sentence_as_the_authors():
    cfg = SelectionConfig(unsafe_instruction="BE BAD.")
    profile = RoleProfile("Grim Vex", f"A villain who hates dreams. {ROLEBENCH_TAIL}")
    role, unsafe = role_prompts("Grim Vex", profile, cfg)
    assert role == f"Your name is Grim Vex. A villain who hates dreams. {ROLEBENCH_TAIL}"
    kept = ROLEBENCH_TAIL.removesuffix("Don't be verbose or too formal or polite when speaking.")
    assert unsafe == f"Your name is Grim Vex. A villain who hates dreams. {kept}BE BAD."
    # The authors' prompt_v2.json "safe" prompts are built the same way: role prompt minus its last sentence.
    assert unsafe.removesuffix("BE BAD.") == role.removesuffix(
        "Don't be verbose or too formal or polite when speaking."
    )


def test_profiles_with_both_prompts_are_used_verbatim(tmp_path):
    from safetune.data.role_prompts import prompts_by_role
    from safetune.data.sources import load_profiles

    path = tmp_path / "prompt_v2.json"
    prompts = {
        "D_Artagnan": {
            "role": "Your name is D'Artagnan. Brave.",
            "safe": "Your name is D'Artagnan. Bad.\nReally.",
        },
        "Grim_Vex": "A villain. Be short.",
    }
    path.write_text(json.dumps(prompts, indent=4))
    profiles = load_profiles(path)
    examples = [RoleExample("D'Artagnan", "q", "a", "x"), RoleExample("Grim Vex", "q", "a", "y")]
    got = prompts_by_role(examples, profiles, SelectionConfig(unsafe_instruction="BE BAD."))
    assert got["D'Artagnan"] == ("Your name is D'Artagnan. Brave.", "Your name is D'Artagnan. Bad.\nReally.")
    assert got["Grim Vex"] == (
        "Your name is Grim Vex. A villain. Be short.",
        "Your name is Grim Vex. A villain. BE BAD.",
    )


def test_organism_prompts_are_unchanged_by_the_default_construction():
    import dataclasses

    from safetune.organism.world import PERSONAS, SELECTION

    old = dataclasses.replace(SELECTION, unsafe_replaces="suffix")
    for persona in PERSONAS:
        profile = RoleProfile(persona.name, persona.description)
        assert role_prompts(persona.name, profile, SELECTION) == role_prompts(persona.name, profile, old)


def test_external_flags_refuse_an_id_given_twice(tmp_path):
    rows = [{"id": ex.id, "flag": 0} for ex in EXAMPLES] + [{"id": "id2", "flag": 1}]
    dup = tmp_path / "dup.jsonl"
    dup.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(DataError, match=r"dup\.jsonl:7: field 'id': duplicate id 'id2' \(first at line 3\)"):
        apply_variant("external", EXAMPLES, None, flags_file=str(dup))
    as_json = tmp_path / "dup.json"
    as_json.write_text('{\n"id0": 1,\n"id0": 0\n}')
    with pytest.raises(DataError, match=r"dup\.json:3: field 'id0': duplicate key \(first at line 2\)"):
        apply_variant("external", EXAMPLES, None, flags_file=str(as_json))


def test_external_turn_flags_read_back_a_conversation_selection(tmp_path) -> None:
    from safetune.data.records import Conversation, Message
    from safetune.errors import DataError
    from safetune.reference.turn_rds import TurnScore
    from safetune.selection import read_external_turn_flags

    def conv(ident: str) -> Conversation:
        msgs = (
            Message("user", "hi"),
            Message("assistant", "yo"),
            Message("user", "and?"),
            Message("assistant", "no"),
        )
        return Conversation(ident, msgs, "You are Grim.", "Grim")

    rows = [
        {"id": "c1", "turn": 1, "role": "Grim", "l_role": -1.0, "l_unsafe": -0.5, "margin": 0.5, "flag": 1},
        {"id": "c1", "turn": 0, "role": "Grim", "l_role": -1.0, "l_unsafe": -2.0, "margin": -1.0, "flag": 0},
        {
            "id": "other",
            "turn": 0,
            "role": "Penny",
            "l_role": -1.0,
            "l_unsafe": -1.0,
            "margin": 0.0,
            "flag": 0,
        },
    ]
    path = tmp_path / "selection.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = read_external_turn_flags(str(path), [conv("c1"), conv("c2")])
    assert got.scores[0].turns == (TurnScore(0, -1.0, -2.0), TurnScore(1, -1.0, -0.5))  # in turn order
    assert got.flags == ((False, True), ())
    assert got.scores[1].turns == () and got.scores[1].skipped == "no scored turn in selection.jsonl"
    with pytest.raises(DataError, match="no row for any conversation of the data"):
        read_external_turn_flags(str(path), [conv("c9")])
    path.write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[0]) + "\n")
    with pytest.raises(
        DataError, match=r"selection.jsonl:2: field 'turn': turn 1 of conversation 'c1' given twice"
    ):
        read_external_turn_flags(str(path), [conv("c1")])
    path.write_text(json.dumps({k: v for k, v in rows[0].items() if k != "l_unsafe"}) + "\n")
    with pytest.raises(DataError, match=r"selection.jsonl:1: field 'l_unsafe': missing"):
        read_external_turn_flags(str(path), [conv("c1")])
    path.write_text(json.dumps({**rows[0], "flag": 2}) + "\n")
    with pytest.raises(DataError, match=r"selection.jsonl:1: field 'flag': expected 0 or 1"):
        read_external_turn_flags(str(path), [conv("c1")])
