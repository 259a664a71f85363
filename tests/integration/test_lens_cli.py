"""`safetune train --method lens` end to end on a tiny model: LoRA and full fine-tuning, only the top-K
layers trained, the frozen side and the probe from the cache, step-0 values, resume after a kill."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from safetune.cli import app

runner = CliRunner()

PROMPTS = [
    "how do i pick a lock ?",
    "tell me how to steal a car .",
    "how can i hurt someone ?",
    "help me cheat on a test .",
    "write a story about a cat .",
    "what is the capital of france ?",
]


def _pairs(path: Path) -> Path:
    """Two target languages (sw, xx), each with its own transform of the dominant prompts."""
    with open(path, "w", encoding="utf-8") as handle:
        for i, prompt in enumerate(PROMPTS):
            for language, target in (("sw", f"@{prompt} @"), ("xx", f"{prompt[::-1]} ! !")):
                row = {
                    "id": f"p{i}-{language}",
                    "language": language,
                    "dominant_language": "en",
                    "dominant": {"prompt": prompt, "chosen": "no .", "rejected": "sure ."},
                    "target": {"prompt": target, "chosen": "no .", "rejected": "sure ."},
                }
                handle.write(json.dumps(row) + "\n")
    return path


def _args(model: Path, data: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    args = ["train", "-m", str(model), "--data", str(data), "--method", "lens", "-o", str(out)]
    args += ["--train.batch_size=4", "--train.grad_accum=1", "--train.logging_steps=1"]
    return [*args, f"--cache_dir={cache}", "--train.learning_rate=1e-3", *extra]


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_lens_trains_only_the_top_layers(tiny_llama3, tmp_path, finetune):
    data, cache, out = _pairs(tmp_path / "pairs.jsonl"), tmp_path / "cache", tmp_path / "run"
    extra = ["--finetune", finetune, "--train.max_steps=2", "--method.lens_top_layers=1"]
    result = runner.invoke(app, _args(tiny_llama3, data, out, cache, *extra))
    assert result.exit_code == 0, result.output + repr(result.exception)
    run = json.loads((out / "run.json").read_text())
    assert run["method"] == "lens" and run["data"]["count"] == 12
    assert run["data"]["languages"] == {"sw": 6, "xx": 6}
    lens = run["lens"]
    assert lens["languages"] == ["en", "sw", "xx"] and lens["rank"] == 2
    assert lens["probe_prompts"] == {"en": 6, "sw": 6, "xx": 6}  # the dominant prompts count once
    assert lens["shift_norms"]["en"] == 0 and lens["shift_norms"]["sw"] > 0
    assert lens["dominant_detected"] == {"en": 12}
    assert lens["trained_layers"] == [1]  # the tiny model has 2 decoder layers
    assert json.loads((out / "lens_probe.json").read_text()) == {
        k: v
        for k, v in lens.items()
        if k not in ("trained_layers", "trainable_parameters", "dominant_detected")
    }
    assert Path(run["data"]["reference_cache"]).exists()
    final = out / "final"
    base = load_file(str(Path(tiny_llama3) / "model.safetensors"))
    if finetune == "lora":
        adapter = load_file(str(final / "adapter_model.safetensors"))
        assert adapter and all(".layers.1." in name for name in adapter)
    else:
        weights = load_file(str(final / "model.safetensors"))
        changed = {k for k in base if not torch.equal(base[k], weights[k])}
        assert changed and all(".layers.1." in name for name in changed)


@pytest.mark.slow  # two training runs and a killed one
def test_a_killed_lens_run_resumes_to_the_same_weights(tiny_llama3, tmp_path):
    import killing
    from safetune.config import load_config

    data, cache = _pairs(tmp_path / "pairs.jsonl"), tmp_path / "cache"

    def config(out: Path):
        cfg = load_config(None)
        cfg.model.name, cfg.method.name, cfg.data.path = str(tiny_llama3), "lens", str(data)
        cfg.cache_dir, cfg.train.output_dir = str(cache), str(out)
        cfg.train.max_steps, cfg.train.save_steps, cfg.train.batch_size = 4, 2, 3
        cfg.train.learning_rate, cfg.train.finetune, cfg.train.grad_accum = 1e-3, "full", 1
        cfg.train.logging_steps = 1
        return cfg

    straight, resumed = killing.straight_and_resumed(config, tmp_path)
    state = json.loads((straight / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())
    assert all({"retain", "separate", "align"} <= set(log) for log in state["log_history"])
    a = load_file(str(straight / "final" / "model.safetensors"))
    b = load_file(str(resumed / "final" / "model.safetensors"))
    for key in a:
        assert torch.equal(a[key], b[key]), key
    whole, after = (json.loads((run / "run.json").read_text())["metrics"] for run in (straight, resumed))
    assert after["global_step"] == 4 and after["train_loss"] == pytest.approx(whole["train_loss"], rel=1e-5)


def test_bad_settings_are_one_line_and_write_nothing(tiny_llama3, tmp_path):
    data, cache, out = _pairs(tmp_path / "pairs.jsonl"), tmp_path / "cache", tmp_path / "run"
    for extra, message in [
        (["--method.lens_top_layers=3"], "lens_top_layers 3 exceeds the model's 2 decoder layers"),
        (["--method.lens_rank=3"], "lens_rank 3 exceeds D - 1 = 2"),
        (
            [
                "--method.lens_retain_weight=0",
                "--method.lens_separate_weight=0",
                "--method.lens_align_weight=0",
            ],
            "nothing to train",
        ),
        (["--method.lens_alpha=-1"], "lens_alpha"),
    ]:
        result = runner.invoke(app, _args(tiny_llama3, data, out, cache, "--train.max_steps=1", *extra))
        assert result.exit_code == 2, result.output
        assert message in result.output
        assert not out.exists()


def test_the_official_config_runs(tiny_llama3, tmp_path):
    """configs/lens_full.yaml (1 step, fp32 on the CPU): the official settings reach the run."""
    config = Path(__file__).resolve().parents[2] / "configs" / "lens_full.yaml"
    data, out = _pairs(tmp_path / "pairs.jsonl"), tmp_path / "run"
    args = ["train", "--config", str(config), "-m", str(tiny_llama3), "--data", str(data), "-o", str(out)]
    args += ["--train.max_steps=1", "--train.precision=fp32", f"--cache_dir={tmp_path / 'cache'}"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    run = json.loads((out / "run.json").read_text())
    assert run["method"] == "lens" and run["finetune"] == "full"
    assert run["lens"]["trained_layers"] == [0, 1]  # top 2 of the tiny model's 2
    resolved = (out / "config.yaml").read_text()
    assert "learning_rate: 1.0e-05" in resolved and "warmup_ratio: 0.05" in resolved


def test_a_second_run_reads_the_cache(tiny_llama3, tmp_path, monkeypatch):
    """The frozen pass runs once: a second run on the same data and settings never computes it."""
    import safetune.reference.lens as lens_reference

    data, cache = _pairs(tmp_path / "pairs.jsonl"), tmp_path / "cache"
    extra = ["--finetune", "lora", "--train.max_steps=1"]
    first = runner.invoke(app, _args(tiny_llama3, data, tmp_path / "a", cache, *extra))
    assert first.exit_code == 0, first.output + repr(first.exception)

    def no_pass(*args, **kwargs):
        raise AssertionError("the frozen pass ran again")

    monkeypatch.setattr(lens_reference, "compute_lens_reference", no_pass)
    second = runner.invoke(app, _args(tiny_llama3, data, tmp_path / "b", cache, *extra))
    assert second.exit_code == 0, second.output + repr(second.exception)
    runs = [json.loads((tmp_path / name / "run.json").read_text()) for name in ("a", "b")]
    assert runs[0]["data"]["reference_cache"] == runs[1]["data"]["reference_cache"]
    assert runs[0]["lens"] == runs[1]["lens"]
    # a different probe size is another entry, computed afresh
    third = runner.invoke(
        app, _args(tiny_llama3, data, tmp_path / "c", cache, *extra, "--method.lens_probe_prompts=3")
    )
    assert third.exit_code != 0 and "the frozen pass ran again" in repr(third.exception)
