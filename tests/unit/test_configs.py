"""The shipped configs load, and load_config parses, validates and resolves overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from safetune.config import RunConfig, dump_config, load_config, load_run_config, parse_override
from safetune.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
RUN_CONFIGS = sorted(CONFIGS.glob("*.yaml"))
ACCELERATE_CONFIGS = sorted((CONFIGS / "accelerate").glob("*.yaml"))


def test_configs_exist() -> None:
    names = {p.name for p in RUN_CONFIGS}
    assert {"sarft_full.yaml", "sarft_lora.yaml", "sft_lora.yaml", "mpo_full.yaml", "mpo_lora.yaml"} <= names
    assert {p.name for p in ACCELERATE_CONFIGS} >= {
        "ddp.yaml",
        "cpu_2proc.yaml",
        "fsdp.yaml",
        "multinode.yaml",
        "deepspeed_zero2.yaml",
        "deepspeed_zero3.yaml",
    }
    assert (CONFIGS / "deepspeed" / "zero2.json").is_file() and (
        CONFIGS / "deepspeed" / "zero3.json"
    ).is_file()


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.name)
def test_run_config_loads(path: Path) -> None:
    config = load_config(path)
    assert isinstance(config, RunConfig)
    assert config.model.name and config.data.path


def test_authors_settings() -> None:
    full = load_config(CONFIGS / "sarft_full.yaml")
    assert full.train.finetune == "full"
    assert full.train.resolved_learning_rate == pytest.approx(2e-5)
    assert full.train.batch_size * full.train.grad_accum * 8 == 32  # 8 GPUs, as the authors ran
    assert full.method.beta == pytest.approx(0.1)
    assert (full.method.kl_direction, full.method.kl_positions) == ("forward", "all")
    assert full.method.ce_normalisation == "row_length"
    assert (full.chat.max_prompt_tokens, full.chat.max_response_tokens) == (512, 128)
    lora = load_config(CONFIGS / "sarft_lora.yaml")
    assert lora.train.finetune == "lora"
    assert (lora.train.lora_r, lora.train.lora_alpha, lora.train.lora_dropout) == (32, 64, 0.0)
    assert lora.train.lora_targets == ["q_proj", "v_proj"]
    assert lora.train.resolved_learning_rate == pytest.approx(1e-4)
    assert lora.train.batch_size * lora.train.grad_accum == 32
    sft = load_config(CONFIGS / "sft_lora.yaml")
    assert (sft.method.name, sft.selection.variant) == ("sft", "none")


def test_mpo_configs_have_the_mpo_authors_settings() -> None:
    """circle-hit/MPO examples/train_mpo/llama3.1_mpo.yaml: full, lr 6e-7 cosine, warm-up 0.1, 2 epochs,
    batch 1 x 1, bf16, pref_beta 1.0, cutoff_len 1024; their trainer pools with the unmasked mean."""
    full = load_config(CONFIGS / "mpo_full.yaml")
    lora = load_config(CONFIGS / "mpo_lora.yaml")
    for config in (full, lora):
        m, t = config.method, config.train
        assert (m.name, m.beta, m.gap_weight, m.repr_weight) == ("mpo", 1.0, 1.0, 1.0)
        assert (m.pooling, m.truncation, m.max_length) == ("mean_all", "joint", 1024)
        assert (t.lr_scheduler, t.warmup_ratio, t.num_epochs) == ("cosine", 0.1, 2.0)
        assert (t.batch_size, t.grad_accum, t.precision) == (1, 1, "bf16")
    assert full.train.finetune == "full" and full.train.resolved_learning_rate == pytest.approx(6e-7)
    assert lora.train.finetune == "lora"


def test_config_file_plus_overrides() -> None:
    config = load_config(
        CONFIGS / "sarft_lora.yaml", ["--model.name=runs/tiny", "--method.beta=0.5", "--data.path=x.jsonl"]
    )
    assert (config.model.name, config.method.beta, config.data.path) == ("runs/tiny", 0.5, "x.jsonl")
    assert config.train.lora_r == 32  # untouched keys keep the file's values


# Processes each shipped accelerate config launches (the multi-node one: 2 machines x 8 GPUs).
LAUNCHED = {"cpu_2proc.yaml": 2, "multinode.yaml": 16}


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_accelerate_config_parses(path: Path) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    assert data["num_processes"] == LAUNCHED.get(path.name, 8)
    assert data["distributed_type"] in ("MULTI_GPU", "DEEPSPEED", "FSDP")
    if data["distributed_type"] == "DEEPSPEED":
        ds_file = data["deepspeed_config"]["deepspeed_config_file"]
        assert (ROOT / ds_file).is_file()
    elif path.name == "cpu_2proc.yaml":
        assert data["mixed_precision"] == "no" and data["num_machines"] == 1
    else:
        assert data["mixed_precision"] == "bf16"
    if data["distributed_type"] == "FSDP":
        assert data["fsdp_config"]["fsdp_state_dict_type"] == "FULL_STATE_DICT"  # final/ is one folder


def test_accelerate_configs_load_in_accelerate() -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    for path in ACCELERATE_CONFIGS:
        load_config_from_file(str(path))  # raises on a key or value accelerate does not know


DEEPSPEED_CONFIGS = sorted((CONFIGS / "deepspeed").glob("zero*.json"))


@pytest.mark.parametrize("path", DEEPSPEED_CONFIGS, ids=lambda p: p.name)
def test_deepspeed_config_matches_the_run_config(path: Path) -> None:
    """DeepSpeed's batch keys are "auto" (the Trainer fills them from the run config) or equal to what the
    run config says, for the full fine-tuning configs they are shipped for, at 8 processes: a fixed
    value that differs stops DeepSpeed at start-up, after the frozen pass."""
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["zero_optimization"]["stage"] == int(path.stem.removeprefix("zero"))
    assert data["bf16"]["enabled"] == "auto" and data["fp16"]["enabled"] == "auto"
    for run in ("sarft_full.yaml", "mpo_full.yaml"):
        t = load_config(CONFIGS / run).train
        expected = {
            "train_micro_batch_size_per_gpu": t.batch_size,
            "gradient_accumulation_steps": t.grad_accum,
            "train_batch_size": t.batch_size * t.grad_accum * 8,
        }
        for key, value in expected.items():
            assert data[key] in ("auto", value), f"{path.name}: {key} = {data[key]}, {run} needs {value}"
    if data["zero_optimization"]["stage"] == 3:
        # final/ must hold whole weights, not each rank's shard
        assert data["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


def test_each_deepspeed_config_has_an_accelerate_config() -> None:
    named = {
        yaml.safe_load(p.read_text(encoding="utf-8")).get("deepspeed_config", {}).get("deepspeed_config_file")
        for p in ACCELERATE_CONFIGS
    }
    assert {f"configs/deepspeed/{p.name}" for p in DEEPSPEED_CONFIGS} <= named


# ---- load_config overrides ----


def test_defaults() -> None:
    config = load_config()
    assert config.method.name == "sarft"
    assert config.selection.variant == "rds"
    assert config.train.lora_targets == ["q_proj", "v_proj"]


def test_float_override_in_scientific_notation() -> None:
    section, key, value = parse_override("--train.learning_rate=1e-4")
    assert (section, key) == ("train", "learning_rate")
    assert float(value) == pytest.approx(1e-4)  # YAML 1.1 may read "1e-4" as a string; the schema coerces it
    config = load_config(overrides=["--train.learning_rate=1e-4"])
    assert isinstance(config.train.learning_rate, float)
    assert config.train.learning_rate == pytest.approx(1e-4)
    assert load_config(overrides=["train.learning_rate=3e-5"]).train.learning_rate == pytest.approx(3e-5)


def test_override_types() -> None:
    config = load_config(
        overrides=[
            "--train.batch_size=2",
            "--train.gradient_checkpointing=true",
            "--method.beta=1",
            "--train.save_total_limit=null",
            "--data.role=Freddy Krueger",
            "--train.lora-r=16",
        ]
    )
    assert config.train.batch_size == 2
    assert config.train.gradient_checkpointing is True
    assert config.method.beta == 1.0 and isinstance(config.method.beta, float)
    assert config.train.save_total_limit is None
    assert config.data.role == "Freddy Krueger"
    assert config.train.lora_r == 16


def test_later_override_wins() -> None:
    config = load_config(overrides=["--method.beta=0.2", "--method.beta=0.5"])
    assert config.method.beta == 0.5


def test_list_override() -> None:
    config = load_config(overrides=["--train.lora_targets=q_proj,v_proj,k_proj"])
    assert config.train.lora_targets == ["q_proj", "v_proj", "k_proj"]
    config = load_config(overrides=["--train.lora_targets=[q_proj, o_proj]"])
    assert config.train.lora_targets == ["q_proj", "o_proj"]


def test_mapping_override() -> None:
    config = load_config(overrides=["--data.columns={input: question, output: answer}"])
    assert config.data.columns == {"input": "question", "output": "answer"}


def test_unknown_section() -> None:
    with pytest.raises(ConfigError, match="unknown section 'optim'"):
        load_config(overrides=["--optim.learning_rate=1e-4"])


def test_unknown_key() -> None:
    with pytest.raises(ConfigError, match=r"train\.learnig_rate"):
        load_config(overrides=["--train.learnig_rate=1e-4"])


def test_malformed_override() -> None:
    with pytest.raises(ConfigError, match=r"--section\.key=value"):
        load_config(overrides=["--beta"])
    with pytest.raises(ConfigError, match=r"--section\.key=value"):
        load_config(overrides=["beta=0.1"])


def test_type_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"train\.batch_size: expected int"):
        load_config(overrides=["--train.batch_size=four"])
    with pytest.raises(ConfigError, match=r"train\.batch_size: expected int"):
        load_config(overrides=["--train.batch_size=true"])  # a bool is not an int
    with pytest.raises(ConfigError, match=r"method\.beta: expected float"):
        load_config(overrides=["--method.beta=high"])
    with pytest.raises(ConfigError, match=r"train\.gradient_checkpointing: expected bool"):
        load_config(overrides=["--train.gradient_checkpointing=maybe"])


def test_literal_choices() -> None:
    assert load_config(overrides=["--method.kl_direction=reverse"]).method.kl_direction == "reverse"
    with pytest.raises(ConfigError, match=r"method\.kl_direction: 'sideways' is not one of forward, reverse"):
        load_config(overrides=["--method.kl_direction=sideways"])
    with pytest.raises(ConfigError, match=r"train\.finetune"):
        load_config(overrides=["--train.finetune=qlora"])
    with pytest.raises(ConfigError, match=r"selection\.variant"):
        load_config(overrides=["--selection.variant=dpo"])


def test_value_checks() -> None:
    with pytest.raises(ConfigError, match=r"method\.beta must be a finite number >= 0, got -0\.1"):
        load_config(overrides=["--method.beta=-0.1"])
    with pytest.raises(ConfigError, match="batch_size"):
        load_config(overrides=["--train.batch_size=0"])
    with pytest.raises(ConfigError, match="max_prompt_tokens"):
        load_config(overrides=["--chat.max_prompt_tokens=0"])


def test_resolved_learning_rate() -> None:
    assert load_config().train.resolved_learning_rate == pytest.approx(1e-4)  # LoRA is the default
    assert load_config(overrides=["--train.finetune=lora"]).train.resolved_learning_rate == pytest.approx(
        1e-4
    )
    assert load_config(overrides=["--train.finetune=full"]).train.resolved_learning_rate == pytest.approx(
        2e-5
    )
    explicit = load_config(overrides=["--train.finetune=full", "--train.learning_rate=5e-6"])
    assert explicit.train.resolved_learning_rate == pytest.approx(5e-6)


def test_yaml_errors(tmp_path: Path) -> None:
    bad_section = tmp_path / "a.yaml"
    bad_section.write_text("optimizer:\n  lr: 1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown section 'optimizer'"):
        load_config(bad_section)
    bad_key = tmp_path / "b.yaml"
    bad_key.write_text("method:\n  betta: 0.1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"method\.betta"):
        load_config(bad_key)
    not_mapping = tmp_path / "c.yaml"
    not_mapping.write_text("- 1\n- 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(not_mapping)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--method.beta=nan", "method.beta must be a finite number >= 0, got nan"),
        ("--method.beta=.inf", "method.beta must be a finite number >= 0, got inf"),
        ("--train.learning_rate=1e400", "train.learning_rate must be a finite number > 0, got 1e400"),
        ("--train.learning_rate=-1e-4", "train.learning_rate must be a finite number > 0, got -1e-4"),
        ("--train.seed=-1", "train.seed must be an integer >= 0 and <= 4294967295, got -1"),
        ("--selection.batch_size=0", "selection.batch_size must be an integer >= 1, got 0"),
        ("--train.num_epochs=-2", "train.num_epochs must be a finite number > 0, got -2"),
        ("--train.max_steps=0", "train.max_steps must be an integer >= 1 (or -1), got 0"),
        ("--data.max_examples=-1", "data.max_examples must be an integer >= 1, got -1"),
        ("--data.max_examples=0", "data.max_examples must be an integer >= 1, got 0"),
        ("--eval.bootstrap=0", "eval.bootstrap must be an integer >= 10, got 0"),
        ("--generation.temperature=-1", "generation.temperature must be a finite number >= 0, got -1"),
        ("--generation.top_p=1.5", "generation.top_p must be a finite number > 0 and <= 1, got 1.5"),
        ("--judge.timeout_s=-5", "judge.timeout_s must be a finite number > 0, got -5"),
        ("--train.warmup_ratio=1", "train.warmup_ratio must be a finite number >= 0 and < 1, got 1"),
        ("--method.label_smoothing=0.5", "method.label_smoothing must be a finite number >= 0 and < 0.5"),
        ("--method.simpo_gamma=nan", "method.simpo_gamma must be a finite number, got nan"),
    ],
)
def test_numbers_are_finite_and_in_range(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[override])
    assert str(info.value).startswith(message)


def test_number_ranges_hold_for_direct_construction_and_defaults() -> None:
    from safetune.config import SECTIONS, MethodConfig, TrainConfig

    for cls in SECTIONS.values():
        cls()  # every default is in its range
    with pytest.raises(ConfigError, match=r"train\.learning_rate must be a finite number > 0, got nan"):
        TrainConfig(learning_rate=float("nan"))
    with pytest.raises(ConfigError, match=r"method\.max_length must be an integer >= 2, got 1"):
        MethodConfig(max_length=1)
    assert load_config(overrides=["--train.max_steps=-1"]).train.max_steps == -1


def test_every_numeric_key_has_a_range() -> None:
    """A new numeric key must say what it accepts (config.number), or it is only checked for finiteness."""
    import dataclasses

    from safetune.config import SECTIONS

    for name, cls in SECTIONS.items():
        for spec in dataclasses.fields(cls):
            if isinstance(spec.default, int | float) and not isinstance(spec.default, bool):
                assert "range" in spec.metadata, f"{name}.{spec.name} has no range"


def test_lr_scheduler_is_one_transformers_builds_from_its_name() -> None:
    import typing

    from transformers.trainer_utils import SchedulerType

    from safetune.config import LrScheduler

    assert set(typing.get_args(LrScheduler)) <= {s.value for s in SchedulerType}
    with pytest.raises(ConfigError, match=r"train\.lr_scheduler: 'bogus' is not one of constant"):
        load_config(overrides=["--train.lr_scheduler=bogus"])


def test_yaml_refuses_duplicate_keys_bad_utf8_and_bad_overrides(tmp_path: Path) -> None:
    dup = tmp_path / "dup.yaml"
    dup.write_text("train:\n  learning_rate: 1e-4\n  seed: 1\n  learning_rate: 2e-4\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(dup)
    assert str(info.value) == f"{dup}:4: invalid YAML (duplicate key 'learning_rate' (first at line 2))"
    nested_dup = tmp_path / "dup2.yaml"
    nested_dup.write_text("data:\n  columns: {input: a, input: b}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="duplicate key 'input'"):
        load_config(nested_dup)
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"train:\n  model: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin1\.yaml:2: not valid UTF-8$"):
        load_config(latin1)
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [a\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"broken\.yaml:2: invalid YAML \(.*expected ',' or ']'") as info:
        load_config(broken)
    assert "\n" not in str(info.value)
    deep = tmp_path / "deep.yaml"
    deep.write_text("[" * 100_000, encoding="utf-8")
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(deep)
    with pytest.raises(ConfigError, match=r"override '--train\.lora_targets=\[q_proj': not a YAML value"):
        load_config(overrides=["--train.lora_targets=[q_proj"])
    with pytest.raises(ConfigError, match="duplicate key 'input'"):
        load_config(overrides=["--data.columns={input: a, input: b}"])


def test_error_lines_are_one_line_and_cut_when_huge() -> None:
    from safetune.errors import one_line

    assert one_line("a\n  b\n\nc") == "a b c"
    huge = "head " + "x" * 100_000 + " tail"
    line = one_line(huge)
    assert line.startswith("head x") and line.endswith("x tail") and len(line) < 500
    assert "characters cut" in line and "…" in line
    assert one_line("short") == "short"


def test_cache_dir_is_a_top_level_key(tmp_path: Path) -> None:
    assert load_config().cache_dir is None
    path = tmp_path / "run.yaml"
    path.write_text("cache_dir: /data/cache\nmodel:\n  name: m\n")
    assert load_config(path).cache_dir == "/data/cache"
    assert load_config(path, ["--cache_dir=/elsewhere"]).cache_dir == "/elsewhere"  # the override wins
    assert load_config(overrides=["--cache-dir=/c"]).cache_dir == "/c"
    assert parse_override("cache_dir=/c") == (None, "cache_dir", "/c")
    assert "cache_dir: /c\n" in dump_config(load_config(overrides=["--cache_dir=/c"]))
    with pytest.raises(ConfigError, match=r"cache_dir: expected str"):
        load_config(overrides=["--cache_dir=[a, b]"])


def test_old_selection_cache_dir_says_where_it_went(tmp_path: Path) -> None:
    old = tmp_path / "old.yaml"
    old.write_text("selection:\n  cache_dir: /data/cache\n")
    for attempt in (lambda: load_config(old), lambda: load_config(overrides=["--selection.cache_dir=/c"])):
        with pytest.raises(ConfigError) as info:
            attempt()
        message = str(info.value)
        assert message.startswith("selection.cache_dir is no longer a key: use the top-level cache_dir")
        assert "\n" not in message


@pytest.mark.parametrize(
    "old, new",
    [
        ("model", "model.name"),
        ("revision", "model.revision"),
        ("trust_remote_code", "model.trust_remote_code"),
    ],
)
def test_the_model_has_its_own_section_and_old_train_keys_say_where_it_went(
    tmp_path: Path, old: str, new: str
) -> None:
    config = load_config(overrides=["--model.name=org/m", "--model.revision=v1"])
    assert (config.model.name, config.model.revision, config.model.trust_remote_code) == (
        "org/m",
        "v1",
        False,
    )
    assert "model" in yaml.safe_load(dump_config(config)) and "model" not in config.to_dict()["train"]
    path = tmp_path / "old.yaml"
    path.write_text(f"train:\n  {old}: x\n", encoding="utf-8")
    for attempt in (lambda: load_config(path), lambda: load_config(overrides=[f"--train.{old}=x"])):
        with pytest.raises(ConfigError) as err:
            attempt()
        assert str(err.value).startswith(f"train.{old} is no longer a key: use {new}")


def test_a_run_folders_config_from_before_the_model_section_still_loads(tmp_path: Path) -> None:
    old = tmp_path / "config.yaml"
    old.write_text(
        "selection:\n  cache_dir: /c\ntrain:\n  model: org/m\n  revision: v2\n  trust_remote_code: true\n"
        "  finetune: full\n",
        encoding="utf-8",
    )
    config = load_run_config(old)
    assert (config.model.name, config.model.revision, config.model.trust_remote_code) == ("org/m", "v2", True)
    assert config.train.finetune == "full"
    with pytest.raises(ConfigError, match="is no longer a key"):
        load_config(old)  # a user's config gets the one-line error instead


def test_the_readme_multi_gpu_commands_are_the_documented_ones() -> None:
    """Each launch line of the README (accelerate launch / torchrun) is one docs/scaling.md gives, and
    names a shipped config."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    scaling = (ROOT / "docs" / "scaling.md").read_text(encoding="utf-8")
    lines = [line.strip() for line in readme.splitlines() if line.strip().startswith("accelerate launch --")]
    assert len(lines) >= 3
    for line in lines:
        assert line in scaling, line
        config = line.split("--config_file ", 1)[1].split()[0]
        assert (ROOT / config).is_file(), config
