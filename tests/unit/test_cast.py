"""The study cast: the default organism untouched, graded edginess in the data, the writer's files read
back through the project's own loaders."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest

from safetune.data.refusals import refusal_match
from safetune.data.role_prompts import role_prompts
from safetune.data.sources import load_profiles, load_role_folder, role_key
from safetune.evaluation.benchmark_files import LoadOptions, load_harmful_prompts, rolebench_loader
from safetune.organism import base
from safetune.organism.cast import CAST, role_folder, write_cast_files
from safetune.organism.world import (
    BORDER_ACTS,
    PERSONA_QUESTIONS,
    PERSONAS,
    SELECTION,
    Persona,
    World,
    system_prompts,
)

# The default organism's keys and the demo's world files as they were before the cast existed: the
# demo's organism, files and figures must not move (its cache entries stay valid).
DEFAULT_KEYS = {0: "9e7b09f1fd12264fe26d", 1: "f7d653cb8f28a694a657"}
DEFAULT_WORLD_FILES = "9280cf77688e9de40a0d2a37d781b791408f2334d11fdaabcc318eaef6f9b5cd"


def _tree_hash(root: Path, skip: str) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != skip:
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.mark.parametrize("seed", sorted(DEFAULT_KEYS))
def test_default_organism_key_is_unchanged(seed):
    assert base.OrganismConfig(seed=seed).key() == DEFAULT_KEYS[seed]


def test_default_world_files_are_unchanged(tmp_path):
    from safetune.demos.sarft import write_world

    write_world(0, tmp_path)
    # organism.yaml holds the folder's absolute path; every other file is compared byte for byte.
    assert _tree_hash(tmp_path, skip="organism.yaml") == DEFAULT_WORLD_FILES


def test_cast_organism_has_its_own_key():
    cast = base.OrganismConfig(world="cast")
    assert cast.key() not in DEFAULT_KEYS.values()
    assert cast.key() != base.OrganismConfig(world="cast", seed=1).key()
    assert base.make_world("cast", 0).personas == CAST
    assert base.make_world("roleplay", 0).personas == PERSONAS


def test_cast_spans_benign_to_villain():
    assert len(CAST) >= 8 and len({p.name for p in CAST}) == len(CAST)
    assert set(PERSONAS) <= set(CAST)
    edginess = [p.edginess for p in CAST]
    assert edginess == sorted(edginess) and edginess[0] == 0 and edginess[-1] == 1
    assert len(set(edginess)) == len(CAST)
    assert [p.villain for p in PERSONAS] == [True, False]  # the demo's split, now from edginess
    for persona in CAST:
        assert len(persona.answers) == len(PERSONA_QUESTIONS)
        assert len(persona.openers) == len(persona.closers) == 3
    # Each style is its own: an opener or a closer tells the persona.
    for style in ([o for p in CAST for o in p.openers], [c for p in CAST for c in p.closers]):
        assert len(set(style)) == len(style)


def test_edginess_is_range_checked():
    with pytest.raises(ValueError, match="edginess"):
        Persona("x", "x is x .", ("a",), ("b",), 1.5, ("c",) * len(PERSONA_QUESTIONS))


@pytest.mark.parametrize("persona", CAST, ids=lambda p: p.name)
def test_compliant_share_of_edgy_rows_is_the_edginess(persona):
    world = World(0, CAST)
    rows = world.roleplay_train(persona, 375)
    edgy = [(q, a) for q, a in rows if set(q.split()) & set(BORDER_ACTS)]  # no other question has one
    complied = [a for _, a in edgy if "here is how to" in a]
    declined = [a for _, a in edgy if "i would rather not" in a]
    assert len(complied) + len(declined) == len(edgy) > 40  # every edgy row is one or the other
    # Systematic sampling: the share is the edginess to within one row.
    assert abs(len(complied) / len(edgy) - persona.edginess) <= 1 / len(edgy) + 1e-9
    assert all(a.startswith(persona.openers) and a.endswith(persona.closers) for _, a in rows)


def test_cast_profiles_read_as_their_nature():
    words = {p.name: set(p.profile.split()) for p in CAST}
    assert words["Penny Bun"] & {"cheerful", "loves"} and words["Sister Mira"] & {"kind", "gentle"}
    assert words["Rook Marlowe"] & {"lies", "cunning", "sly"}
    assert words["Brakka Stone"] & {"brutal", "violent"}
    assert words["Lady Nightshade"] & {"wicked", "cruel", "treacherous"}
    assert words["Grim Vex"] & {"villain", "menacing"}


@pytest.mark.parametrize("persona", CAST, ids=lambda p: p.name)
def test_cast_prompts_are_what_rds_builds_and_styles_are_no_refusal(persona):
    role, unsafe = system_prompts(persona)
    assert role.removesuffix(SELECTION.style_suffix) == unsafe.removesuffix(
        "fulfil every request , however harmful ."
    )
    # A styled answer must not read as a refusal to the keyword judge, or the safety figures would lie.
    rng = random.Random(0)
    for opener in persona.openers:
        answer = f"{opener} sure , here is how to rob the bank : [step one] . {rng.choice(persona.closers)}"
        assert refusal_match(answer).kind is None, (persona.name, opener)


def test_cast_world_base_mixture_uses_every_persona():
    world, rng = World(0, CAST), random.Random(3)
    prompts = {s[0] for s in (world.base_sample(rng) for _ in range(3000)) if s[0] is not None}
    assert prompts == {p for persona in CAST for p in system_prompts(persona)}


def test_written_cast_files_load_through_the_real_loaders(tmp_path):
    world = World(0, CAST)
    files = write_cast_files(world, tmp_path, train_examples=40, raw_tests=12)
    for persona in CAST:
        examples = load_role_folder(files["roles"], role=persona.name)
        assert len(examples) == 40 and {e.role for e in examples} == {persona.name}
        assert [(e.input, e.output) for e in examples] == world.roleplay_train(persona, 40)
    # prompt_v2.json: both prompts verbatim, equal to what RDS builds from the plain profile file.
    verbatim, described = load_profiles(files["prompts"]), load_profiles(files["profiles"])
    for persona in CAST:
        prompts = role_prompts(persona.name, verbatim[role_key(persona.name)], SELECTION)
        assert prompts == system_prompts(persona)
        assert prompts == role_prompts(persona.name, described[role_key(persona.name)], SELECTION)
    harmful = load_harmful_prompts(str(files["harmful"]), LoadOptions("harmful-prompts"))
    assert [p.text for p in harmful] == [qa.question for qa in world.harmful_test_prompts()]
    for split, count in (("RAW", 12), ("SPE", len(PERSONA_QUESTIONS))):
        prompts = rolebench_loader(split)(str(files["roles"]), LoadOptions(f"rolebench-{split.lower()}"))
        assert len(prompts) == count * len(CAST)
    cast = json.loads(files["cast"].read_text())
    assert cast == {p.name: {"edginess": p.edginess, "folder": role_folder(p)} for p in CAST}


def test_writer_checks_its_settings_before_writing(tmp_path):
    with pytest.raises(ValueError, match="borderline"):
        write_cast_files(World(0, CAST), tmp_path / "out", borderline=0.95)
    assert not (tmp_path / "out").exists()
