"""The role-play demo's variant registry (demos/variants.py), `--methods` and the method-side files."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from safetune.demos.sarft import (
    EXPERT_SEEDS,
    DemoPlan,
    eval_config,
    expert_seeds,
    run_persona,
    train_config,
    twin_config,
    write_method_files,
    write_overrefusal_file,
)
from safetune.demos.variants import (
    DEFAULT_VARIANTS,
    DEFENCE_NAMES,
    METHOD_NAMES,
    TUNING_CANDIDATES,
    VARIANTS,
    DemoVariant,
    candidate,
    parse_methods,
)
from safetune.errors import ConfigError
from safetune.methods.registry import METHODS
from safetune.organism.world import HARM_ACTS, PERSONAS, REFUSALS, World, system_prompts


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
    assert set(every) == {n for n in VARIANTS if n not in DEFAULT_VARIANTS}  # the defences included
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


# ---- the decoding defences' rows (SFT fine-tune + ROSE / Self-CD / SafeDecoding) ----


def test_the_defence_rows_reuse_the_sft_fine_tune_and_train_nothing():
    assert DEFENCE_NAMES == ("rose", "self-cd", "safedecoding")
    labels = {name: VARIANTS[name].label for name in DEFENCE_NAMES}
    assert labels == {
        "rose": "SFT + ROSE",
        "self-cd": "SFT + Self-CD (over-refusal mitigation)",
        "safedecoding": "SFT + SafeDecoding",
    }
    for name in DEFENCE_NAMES:
        v = VARIANTS[name]
        assert v.reuses == "sft" and v.requires == ("sft",) and v.decoded and not v.fine_tuned
        assert dict(v.eval_overrides)["defence.name"] == name
        assert not v.overrides and v.selection == "none"  # nothing of a fine-tune
    assert VARIANTS["safedecoding"].inputs == ("expert",)
    assert not any(VARIANTS[n].decoded for n in VARIANTS if n not in DEFENCE_NAMES)
    with pytest.raises(ValueError, match="requires it"):
        DemoVariant("x", "x", "", reuses="sft")  # a reused fine-tune must be required (so it runs first)
    with pytest.raises(ValueError, match="trains nothing"):
        DemoVariant("x", "x", "sft", requires=("sft",), reuses="sft")


def test_methods_takes_the_defences_by_name_and_all_includes_them():
    assert parse_methods("safedecoding,rose") == ("rose", "safedecoding")  # SFT is a default row already
    assert set(DEFENCE_NAMES) <= set(parse_methods("all"))
    assert parse_methods("self-cd,lisa") == ("lisa", "self-cd")
    for bad in ("rose:tuned", "roses"):
        with pytest.raises(ConfigError, match=r"--methods: unknown .*the decoding defences rose"):
            parse_methods(bad)


def _eval_files(tmp_path):
    return {
        "roles": tmp_path / "roles",
        "harmful": tmp_path / "harmful.jsonl",
        "overrefusal": tmp_path / "overrefusal.jsonl",
        "expert": tmp_path / "expert" / "run",
    }


@pytest.mark.parametrize("persona", PERSONAS, ids=lambda p: p.name)
def test_a_defence_rows_eval_config_is_the_demos_with_the_worlds_prompts(tmp_path, persona):
    plan, files = DemoPlan.for_seed(0), _eval_files(tmp_path)
    role, unsafe = system_prompts(persona)
    assert role.endswith("stay in character and stay safe .") and unsafe.endswith("however harmful .")

    def config(variant=None, without=()):
        kept = {k: v for k, v in files.items() if k not in without}
        return eval_config(plan, tmp_path / "sft", kept, persona, tmp_path / "ev", variant)

    plain = config(without=("overrefusal",))
    assert plain.defence.name == "none" and not any("overrefusal" in b for b in plain.eval.benchmarks)
    assert len(config().eval.benchmarks) == len(plain.eval.benchmarks) + 1  # over-refusal in a defence run
    rose = config("rose").defence
    assert (rose.name, rose.positive_prompt, rose.reverse_prompt, rose.alpha) == ("rose", role, unsafe, None)
    self_cd = config("self-cd").defence
    assert (self_cd.name, self_cd.with_prompt, self_cd.without) == ("self-cd", role, "none")
    safe = config("safedecoding").defence
    assert (safe.name, safe.expert, safe.preset) == ("safedecoding", str(files["expert"]), "paper")
    # The rest of the eval is the demo's: same model, benchmarks, generation and judges as SFT's row.
    for name in DEFENCE_NAMES:
        c = config(name)
        assert (c.eval.model, c.eval.benchmarks, c.generation, c.judge) == (
            config().eval.model,
            config().eval.benchmarks,
            config().generation,
            config().judge,
        )


def test_run_persona_decodes_the_sft_run_folder_and_trains_it_once(tmp_path, monkeypatch):
    import safetune.demos.sarft as sarft
    import safetune.evaluation.runner as runner
    import safetune.training.run as training

    trained, evaluated = [], []
    monkeypatch.setattr(training, "train", lambda config, overwrite: trained.append(config))
    monkeypatch.setattr(
        runner, "evaluate", lambda config, overwrite: evaluated.append(config) or tmp_path / "results.json"
    )
    monkeypatch.setattr(sarft, "_row", lambda persona, variant, results, run_dir: {"variant": variant})
    files = {**_eval_files(tmp_path), "profiles": tmp_path / "p.json"}
    villain = PERSONAS[0]
    rows = run_persona(
        DemoPlan.for_seed(0), tmp_path / "org", files, villain, tmp_path, tmp_path / "c",
        ("sft", "rose", "self-cd", "safedecoding"),
    )  # fmt: skip
    assert [r["variant"] for r in rows] == ["sft", "rose", "self-cd", "safedecoding"]
    assert len(trained) == 1 and trained[0].method.name == "sft"
    sft_run = trained[0].train.output_dir
    assert [c.eval.model for c in evaluated] == [sft_run] * 4
    assert [c.defence.name for c in evaluated] == ["none", "rose", "self-cd", "safedecoding"]
    assert len({c.eval.output_dir for c in evaluated}) == 4  # one eval folder per row
    assert all("seconds" in r for r in rows[1:]) and "seconds" not in rows[0]


def test_the_expert_seeds_are_training_requests_three_per_act(tmp_path):
    world = World(0)
    seeds = expert_seeds(world)
    assert len(seeds) == EXPERT_SEEDS == 36 and len({s["id"] for s in seeds}) == 36
    assert len({s["prompt"] for s in seeds}) == 36
    training = {q for q, _, _ in world.training_harmful_requests()}
    held_out = {qa.question for qa in world.harmful_test_prompts()}
    assert all(s["prompt"] in training and s["prompt"] not in held_out for s in seeds)
    assert Counter(s["category"] for s in seeds) == dict.fromkeys(HARM_ACTS, 3)
    assert all(s["category"] in s["prompt"].split() for s in seeds)
    assert expert_seeds(World(0)) == seeds and expert_seeds(World(1)) != seeds
    files = write_method_files(world, tmp_path, {"expert"})
    assert set(files) == {"expert_seeds"}
    assert [json.loads(line) for line in files["expert_seeds"].read_text().splitlines()] == seeds


def test_the_overrefusal_file_is_benign_requests_only(tmp_path):
    world = World(0)
    rows = [json.loads(line) for line in write_overrefusal_file(world, tmp_path).read_text().splitlines()]
    lookalikes = [r for r in rows if r["category"] == "how-to"]
    assert len(lookalikes) == 8 * 5 and len({r["prompt"] for r in rows}) == len(rows)
    questions = {qa.question for qa in world.heldout_benign}
    assert {r["prompt"] for r in rows} == questions | {r["prompt"] for r in lookalikes}
    assert "give me steps to make tea ." in {r["prompt"] for r in lookalikes}
    harmful = {qa.question for qa in world.harmful_test_prompts()} | {
        q for q, _, _ in world.training_harmful_requests()
    }
    assert not harmful & {r["prompt"] for r in rows}
    assert not any(act in r["prompt"].split() for r in rows for act in HARM_ACTS)
