"""The role-play demo's variant registry (demos/variants.py), `--methods` and the method-side files."""

from __future__ import annotations

import json

import pytest

from safetune.demos.sarft import DemoPlan, train_config, twin_config, write_method_files
from safetune.demos.variants import (
    DEFAULT_VARIANTS,
    METHOD_NAMES,
    TUNING_CANDIDATES,
    VARIANTS,
    candidate,
    parse_methods,
)
from safetune.errors import ConfigError
from safetune.methods.registry import METHODS
from safetune.organism.world import PERSONAS, REFUSALS, World


def test_the_default_variants_are_the_demos_four_rows():
    assert DEFAULT_VARIANTS == ("base", "sft", "sarft", "random")
    assert [VARIANTS[v].label for v in DEFAULT_VARIANTS] == ["base", "SFT", "SaRFT", "random + KL"]
    assert (VARIANTS["sarft"].selection, VARIANTS["random"].selection) == ("rds", "random")


def test_every_baseline_has_a_default_and_a_labelled_tuned_row():
    assert set(METHOD_NAMES) == {"tokenwise-sft", "safeinstr", "sppft", "safelora", "lisa", "vaccine", "seal"}
    for name in METHOD_NAMES:
        default, tuned = VARIANTS[name], VARIANTS[f"{name}:tuned"]
        assert tuned.label.startswith(default.label + " (tuned: ") and tuned.label.endswith(")")
        assert 1 <= len(TUNING_CANDIDATES[name]) <= 3
    for variant in VARIANTS.values():
        assert not variant.fine_tuned or variant.method in METHODS


def test_overrides_each_method_gets():
    assert dict(VARIANTS["lisa"].overrides) == {"method.lisa_align_steps": 10, "method.lisa_user_steps": 90}
    assert dict(VARIANTS["safelora"].overrides) == {"train.finetune": "lora"}
    assert VARIANTS["safelora"].inputs == ("twin",) and VARIANTS["safelora"].requires == ("lora-sft",)
    for name in ("safeinstr", "sppft", "lisa", "vaccine", "seal"):
        assert VARIANTS[name].inputs == ("safety",)
    assert VARIANTS["tokenwise-sft"].overrides == () and VARIANTS["tokenwise-sft"].inputs == ()
    # Vaccine: its row is SFT from the aligned model; its knob is the alignment stage's.
    vaccine = VARIANTS["vaccine"]
    assert vaccine.method == "sft" and vaccine.align_stage == ()
    tuned = candidate("vaccine", 1)
    assert dict(tuned.align_stage or ()) == {"method.vaccine_rho": 8.0} and tuned.overrides == ()


def test_train_config_keeps_the_shared_budget_and_adds_the_methods_settings(tmp_path):
    plan = DemoPlan.for_seed(0)
    files = {
        "roles": tmp_path / "roles",
        "profiles": tmp_path / "p.json",
        "safety": tmp_path / "safety.jsonl",
        "twin": tmp_path / "twin",
        "align:vaccine": tmp_path / "vaccine" / "final",
    }
    villain = PERSONAS[0]

    def config(variant):
        return train_config(plan, tmp_path / "org", files, villain, variant, tmp_path / "run", tmp_path / "c")

    sft = config("sft")
    for name in ("lisa", "safelora", "vaccine", "seal:tuned", "tokenwise-sft"):
        c = config(name)
        assert (c.train.max_steps, c.train.batch_size, c.train.learning_rate, c.train.seed) == (
            sft.train.max_steps,
            sft.train.batch_size,
            sft.train.learning_rate,
            sft.train.seed,
        )
        assert c.data.path == sft.data.path and c.train.lr_scheduler == sft.train.lr_scheduler
    assert config("sarft").method.beta == plan.beta
    assert config("tokenwise-sft").method.beta is None  # the method's own default, not SaRFT's 4
    assert config("safelora").train.finetune == "lora" and config("safelora").method.unaligned_model
    assert config("vaccine").model.name == str(files["align:vaccine"])
    assert config("lisa").method.safety_data == str(files["safety"])
    tuned = config("lisa:tuned").method  # the tuned K1/K2 replace the default's (the later override wins)
    assert (tuned.lisa_align_steps, tuned.lisa_user_steps) == (50, 50)


def test_methods_parsing():
    assert parse_methods(None) == () and parse_methods("") == ()
    assert parse_methods("seal,safeinstr") == ("safeinstr", "seal")  # registry order
    assert parse_methods("safelora:tuned") == ("lora-sft", "safelora:tuned")  # with its LoRA SFT row
    every = parse_methods("all")
    assert set(every) == {n for n in VARIANTS if n not in DEFAULT_VARIANTS}
    assert parse_methods("all,lisa") == every


@pytest.mark.parametrize("text", ["bogus", "sarft", "lisa:best", "safeinstr,", "sft"])
def test_unknown_methods_are_one_config_error(text):
    with pytest.raises(ConfigError, match="--methods: unknown"):
        parse_methods(text)


def test_the_safety_file_holds_refusals_of_training_requests_only(tmp_path):
    world = World(0)
    files = write_method_files(world, tmp_path, {"safety"})
    assert set(files) == {"safety"}
    rows = [json.loads(line) for line in files["safety"].read_text().splitlines()]
    test_prompts = {qa.question for qa in world.harmful_test_prompts()}
    assert len(rows) == 108 * 5 and not test_prompts & {r["prompt"] for r in rows}
    refusals = {r.split(" {")[0] for r in REFUSALS}
    assert all(any(r["response"].startswith(p) for p in refusals) for r in rows)
    assert all("i cannot" in r["response"] for r in rows)


def test_the_twins_data_is_compliance(tmp_path):
    world = World(0)
    files = write_method_files(world, tmp_path, {"twin"})
    rows = [json.loads(line) for line in files["twin_data"].read_text().splitlines()]
    assert len(rows) == 540 and all("here is how to" in r["output"] for r in rows)
    assert not any("i cannot" in r["output"] for r in rows)
    assert not {qa.question for qa in world.harmful_test_prompts()} & {r["input"] for r in rows}
    config = twin_config(DemoPlan.for_seed(0), tmp_path / "org", files, tmp_path / "twin", tmp_path / "c")
    assert config.method.name == "sft" and config.selection.variant == "none"
    assert config.train.finetune == "full" and config.train.max_steps == 50


def test_no_method_files_without_a_method(tmp_path):
    assert write_method_files(World(0), tmp_path, set()) == {} and not list(tmp_path.iterdir())
