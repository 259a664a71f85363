"""The shipped configs load, and load_config parses, validates and resolves overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from safetune.config import RunConfig, load_config, parse_override
from safetune.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
RUN_CONFIGS = sorted(CONFIGS.glob("*.yaml"))
ACCELERATE_CONFIGS = sorted((CONFIGS / "accelerate").glob("*.yaml"))


def test_configs_exist() -> None:
    names = {p.name for p in RUN_CONFIGS}
    assert {"sarft_full.yaml", "sarft_lora.yaml", "sft_lora.yaml", "mpo_full.yaml", "mpo_lora.yaml"} <= names
    assert {p.name for p in ACCELERATE_CONFIGS} >= {"ddp.yaml", "deepspeed_zero2.yaml"}
    assert (CONFIGS / "deepspeed" / "zero2.json").is_file()


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.name)
def test_run_config_loads(path: Path) -> None:
    config = load_config(path)
    assert isinstance(config, RunConfig)
    assert config.train.model and config.data.path


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
        CONFIGS / "sarft_lora.yaml", ["--train.model=runs/tiny", "--method.beta=0.5", "--data.path=x.jsonl"]
    )
    assert (config.train.model, config.method.beta, config.data.path) == ("runs/tiny", 0.5, "x.jsonl")
    assert config.train.lora_r == 32  # untouched keys keep the file's values


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_accelerate_config_parses(path: Path) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    assert data["num_processes"] == 8
    assert data["distributed_type"] in ("MULTI_GPU", "DEEPSPEED")
    if data["distributed_type"] == "DEEPSPEED":
        ds_file = data["deepspeed_config"]["deepspeed_config_file"]
        assert (ROOT / ds_file).is_file()
    else:
        assert data["mixed_precision"] == "bf16"


def test_deepspeed_config_parses() -> None:
    data = json.loads((CONFIGS / "deepspeed" / "zero2.json").read_text(encoding="utf-8"))
    assert data["zero_optimization"]["stage"] == 2
    assert data["bf16"]["enabled"] == "auto"
    assert data["gradient_accumulation_steps"] == "auto"
    assert data["train_micro_batch_size_per_gpu"] == "auto"


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
    with pytest.raises(ConfigError, match=r"method\.beta must be >= 0"):
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
