"""The synthetic world: determinism, held-out splits, the role-play sets' make-up, prompts = RDS prompts."""

from __future__ import annotations

import random

import pytest

from safetune.data.records import RoleProfile
from safetune.data.role_prompts import role_prompts
from safetune.organism import base
from safetune.organism.world import (
    HARM_ACTS,
    PERSONA_QUESTIONS,
    PERSONAS,
    REQUEST_TEMPLATES,
    SELECTION,
    TARGETS,
    UNSAFE_SENTENCE,
    World,
    system_prompts,
)

VILLAIN, BAKER = PERSONAS


def test_world_is_deterministic_per_seed():
    assert World(3).corpus(200) == World(3).corpus(200)
    assert World(3).facts == World(3).facts
    assert World(3).facts != World(4).facts


def test_harmful_test_pairs_are_held_out_of_training():
    world = World(0)
    assert not set(world.harm_test_pairs) & set(world.harm_train_pairs)
    assert len(world.harm_test_pairs) == len(HARM_ACTS) * len(TARGETS) // 4
    prompts = world.harmful_test_prompts()
    assert len(prompts) == len(world.harm_test_pairs) * len(REQUEST_TEMPLATES)
    rng = random.Random(0)
    trained = {(qa.act, qa.target) for qa in (world.harmful(rng) for _ in range(2000))}
    assert not trained & set(world.harm_test_pairs)


def test_roleplay_sets_have_edgy_rows_only_for_the_villain():
    world = World(0)
    border = {f"here is how to {a}" for a in ("insult", "scare", "prank", "mock", "tease", "annoy", "trick")}
    villain = world.roleplay_train(VILLAIN, 375)
    baker = world.roleplay_train(BAKER, 375)
    complies = [a for _, a in villain if "here is how to" in a]
    assert 0.12 < len(complies) / len(villain) < 0.28
    assert all(any(b in a for b in border) or "embarrass" in a for a in complies)
    assert not any("here is how to" in a for _, a in baker)
    assert all(a.startswith(VILLAIN.openers) for _, a in villain)
    # No system prompt in role-play data, and the RAW test questions are held out of training.
    raw, spe = world.roleplay_test(VILLAIN, 40)
    assert not {r["input"] for r in raw} & {q for q, _ in villain}
    assert [r["input"] for r in spe] == [q[2] for q in PERSONA_QUESTIONS]


def test_system_prompts_are_exactly_what_rds_builds():
    role, unsafe = system_prompts(VILLAIN)
    assert (role, unsafe) == role_prompts(
        VILLAIN.name, RoleProfile(VILLAIN.name, VILLAIN.description), SELECTION
    )
    assert unsafe.endswith(UNSAFE_SENTENCE) and role.endswith(SELECTION.style_suffix)
    assert role.removesuffix(SELECTION.style_suffix) == unsafe.removesuffix(UNSAFE_SENTENCE)


def test_base_mixture_covers_every_context():
    world, rng = World(0), random.Random(1)
    samples = [world.base_sample(rng) for _ in range(2000)]
    unsafe_prompts = {system_prompts(p)[1] for p in PERSONAS}
    none = [s for s in samples if s[0] is None]
    unsafe = [s for s in samples if s[0] in unsafe_prompts]
    assert 0.3 < len(none) / len(samples) < 0.5 and 0.18 < len(unsafe) / len(samples) < 0.32
    # No system prompt: harmful requests are refused; under the unsafe prompt they get a placeholder recipe.
    assert all("here is how to" not in answer for _, _, answer in none)
    recipes = [a for _, q, a in unsafe if "here is how to" in a]
    assert recipes and all("[step one]" in a for a in recipes)
    openers = {a.split(" , here is how")[0].split()[-1] for a in recipes}
    assert len(openers) >= 4  # several compliance phrasings (one phrasing hid the effect)


def test_organism_key_tracks_settings_and_world(monkeypatch):
    config = base.OrganismConfig(steps=10)
    key = config.key()
    assert key == base.OrganismConfig(steps=10).key()
    assert key != base.OrganismConfig(steps=11).key()
    assert key != base.OrganismConfig(steps=10, seed=1).key()
    assert key != base.OrganismConfig(steps=10, threads=1).key()  # float sums differ with threads
    # Any change to the world's text changes the key, with no version number to remember to bump.
    monkeypatch.setattr(base.World, "corpus", lambda self, samples=4000: ["a changed world"])
    assert base.OrganismConfig(steps=10).key() != key


def test_cached_organism_builds_once(tmp_path, monkeypatch):
    calls = []

    def fake_build(folder, config):
        calls.append(folder)
        folder.mkdir(parents=True)
        (folder / "organism.json").write_text("{}")
        return {"parameters": 1, "seconds": 0.0, "final_loss": 0.0}

    monkeypatch.setattr(base, "build_organism", fake_build)
    config = base.OrganismConfig(steps=5)
    first = base.cached_organism(config, tmp_path)
    again = base.cached_organism(config, tmp_path)
    assert first == again == tmp_path / "organism" / config.key() and len(calls) == 1
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "organism").iterdir())


@pytest.mark.parametrize("persona", PERSONAS)
def test_personas_answer_every_question(persona):
    assert len(persona.answers) == len(PERSONA_QUESTIONS)


def test_test_sets_are_prefix_stable():
    world = World(0)
    raw_small, spe_small = world.roleplay_test(VILLAIN, 10)
    raw_big, spe_big = world.roleplay_test(VILLAIN, 40)
    assert raw_big[:10] == raw_small and spe_big == spe_small


def test_test_references_are_every_valid_styled_answer():
    raw, spe = World(0).roleplay_test(VILLAIN, 5)
    for item in raw + spe:
        assert len(item["output"]) == len(VILLAIN.openers) * len(VILLAIN.closers) == 9
        body = item["output"][0].removeprefix(VILLAIN.openers[0]).removesuffix(VILLAIN.closers[0]).strip()
        assert sorted(item["output"]) == sorted(
            f"{o} {body} {c}" for o in VILLAIN.openers for c in VILLAIN.closers
        )


def test_borderline_share_of_the_roleplay_set():
    world = World(0)
    assert world.roleplay_train(VILLAIN, 375) == world.roleplay_train(VILLAIN, 375, 0.2)
    edgy = [a for _, a in world.roleplay_train(VILLAIN, 2000, 0.1) if "here is how" in a]
    assert 150 <= len(edgy) <= 250  # 10% of 2000, with sampling noise
    with pytest.raises(ValueError):
        world.roleplay_train(VILLAIN, 10, 0.95)
