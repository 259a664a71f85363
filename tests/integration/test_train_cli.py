"""select -> train end to end through the CLI on a tiny model and RoleBench-format data built here."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback
from typer.testing import CliRunner, Result

from killing import Crash
from safetune.cli import app
from safetune.config import load_config
from safetune.organism import roleplay
from safetune.training.run import train

runner = CliRunner()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_llama3: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("world")
    return {
        "model": tiny_llama3,
        "data": roleplay.write_rolebench_release(root / "rolebench.jsonl", count=12),
        "folders": roleplay.write_role_folders(root / "roles", count=12),
        "profiles": roleplay.write_profiles(root / "profiles.json"),
        "cache": root / "cache",
    }


def _common(world: dict[str, Path]) -> list[str]:
    return [
        "--model",
        str(world["model"]),
        "--data",
        str(world["data"]),
        "--role",
        "Grim Vex",
        "--profiles",
        str(world["profiles"]),
        f"--cache_dir={world['cache']}",
    ]


def _train_args(world: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "train",
        *_common(world),
        "-o",
        str(out),
        "--train.max_steps=2",
        "--train.batch_size=4",
        "--train.grad_accum=1",
        "--train.logging_steps=1",
        *extra,
    ]


def _invoke(args: list[str]) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)


def test_select_writes_scores_and_second_run_does_no_model_work(world, tmp_path, monkeypatch):
    out = tmp_path / "sel"
    _invoke(["select", *_common(world), "-o", str(out)])
    rows = [json.loads(line) for line in (out / "selection.jsonl").read_text().splitlines()]
    stats = json.loads((out / "selection_stats.json").read_text())
    assert len(rows) == 12 and stats["count"] == 12
    for row in rows:
        assert row["flag"] == int(row["l_unsafe"] > row["l_role"])
        assert row["margin"] == pytest.approx(row["l_unsafe"] - row["l_role"])
    assert sum(stats["margin_histogram"]["counts"]) == 12

    def no_model(*_args, **_kwargs):
        raise AssertionError("the model was loaded although the scores are cached")

    monkeypatch.setattr("safetune.models.loading.load_causal_lm", no_model)
    again = tmp_path / "sel2"
    _invoke(["select", *_common(world), "-o", str(again)])
    assert (again / "selection.jsonl").read_text() == (out / "selection.jsonl").read_text()


@pytest.mark.parametrize(
    ("extra", "variant"),
    [
        (["--method", "sarft", "--finetune", "lora"], "rds"),
        (["--method", "sarft", "--finetune", "full"], "rds"),
        (["--method", "sft"], "rds"),
        (["--method", "sarft", "--selection", "random"], "random"),
        (["--method", "sarft", "--selection", "flip", "--finetune", "full"], "flip"),
    ],
)
def test_train_variants(world, tmp_path, extra, variant):
    out = tmp_path / "run"
    _invoke(_train_args(world, out, *extra))
    assert (out / "final").is_dir() and (out / "README.md").exists() and (out / "config.yaml").exists()
    weights = {p.name for p in (out / "final").iterdir()}
    assert ("adapter_model.safetensors" in weights) or ("model.safetensors" in weights)
    assert "training_args.bin" not in weights
    run = json.loads((out / "run.json").read_text())
    assert run["selection"]["variant"] == variant
    if "sft" in extra:
        assert run["metrics"]["reference_rows"] == 0  # SFT never runs the reference


def test_random_and_flip_counts(world, tmp_path):
    rds, rnd, flip = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    _invoke(["select", *_common(world), "-o", str(rds)])
    _invoke(["select", *_common(world), "-o", str(rnd), "--variant", "random"])
    _invoke(["select", *_common(world), "-o", str(flip), "--variant", "flip"])
    flags = {
        p: [json.loads(x)["flag"] for x in (p / "selection.jsonl").read_text().splitlines()]
        for p in (rds, rnd, flip)
    }
    assert sum(flags[rnd]) == sum(flags[rds])
    assert [1 - f for f in flags[rds]] == flags[flip]


def test_external_flags_from_selection_file(world, tmp_path):
    flags_file = tmp_path / "flags.jsonl"
    flags_file.write_text("".join(json.dumps({"id": i, "flag": 1}) + "\n" for i in _ids(world)))
    out = tmp_path / "run"
    _invoke(_train_args(world, out, "--selection-file", str(flags_file)))
    run = json.loads((out / "run.json").read_text())
    assert run["selection"]["variant"] == "external" and run["selection"]["flagged"] == 12


def _ids(world: dict[str, Path]) -> list[str]:
    from safetune.data.sources import load_role_examples

    return [ex.id for ex in load_role_examples(world["data"], role="Grim Vex")]


def test_role_folder_layout_trains(world, tmp_path):
    out = tmp_path / "run"
    args = _train_args(world, out, "--method", "sarft")
    args[args.index(str(world["data"]))] = str(world["folders"])
    _invoke(args)
    assert json.loads((out / "run.json").read_text())["selection"]["count"] == 12


def test_bad_data_is_one_line_exit_2_and_no_output(world, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"role": "Grim Vex", "question": "hi", "generated": ["ok"]}\n{"role": "Grim Vex", "question": "x"}\n'
    )
    out = tmp_path / "run"
    args = _train_args(world, out)
    args[args.index(str(world["data"]))] = str(bad)
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and f"{bad}:2" in lines[0] and "generated" in lines[0]
    assert not (out / "final").exists() and not (out / "selection.jsonl").exists()


def _console(world: dict[str, Path], out: Path, capfd: pytest.CaptureFixture[str], *flags: str) -> Result:
    """A 2-step train run's result; fails if anything reached the process's own stdout/stderr past the
    CLI's streams (a library handler or bar bound to them)."""
    capfd.readouterr()
    result = runner.invoke(app, _train_args(world, out, *flags))
    assert result.exit_code == 0, result.output + repr(result.exception)
    leaked = capfd.readouterr()
    assert leaked.out + leaked.err == "", leaked
    return result


def test_train_console_is_one_line_per_logging_step(world, tmp_path, capfd):
    result = _console(world, tmp_path / "run", capfd)
    shown = result.output
    assert "'loss':" not in shown and "Loading weights" not in shown and "Writing model shards" not in shown
    for step in (1, 2):
        assert re.search(rf"step {step}/2  loss [\d.]+  lr \S+  grad_norm \S+  \([\d.]+ s\)", result.stderr)
    assert "DEBUG" not in shown
    assert result.stdout.splitlines() == [
        f"done: weights in {tmp_path / 'run' / 'final'}, model card {tmp_path / 'run' / 'README.md'}"
    ]


def test_train_console_quiet_and_verbose(world, tmp_path, capfd):
    quiet = _console(world, tmp_path / "quiet", capfd, "-q")
    assert (
        quiet.stderr == ""
        and quiet.stdout.startswith("done: weights in")
        and len(quiet.stdout.splitlines()) == 1
    )
    verbose = _console(world, tmp_path / "verbose", capfd, "--verbose")
    assert "DEBUG" in verbose.stderr and "step 2/2  loss" in verbose.stderr
    both = runner.invoke(app, _train_args(world, tmp_path / "both", "-q", "-v"))
    assert both.exit_code == 2 and "error:" in both.stderr


def _world_config(world: dict[str, Path], out: Path, *overrides: str):
    """A training config on the module's world (the villain's data and profile) writing to `out`."""
    base = [
        f"model.name={world['model']}",
        f"data.path={world['data']}",
        "data.role=Grim Vex",
        f"data.profiles={world['profiles']}",
        f"cache_dir={world['cache']}",
        f"train.output_dir={out}",
    ]
    return load_config(None, [*base, *overrides])


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_resume_after_kill_gives_same_weights(world, tmp_path, finetune):
    def config(out: Path):
        return _world_config(
            world,
            out,
            "selection.variant=all",
            f"train.finetune={finetune}",
            "train.max_steps=4",
            "train.save_steps=2",
            "train.batch_size=4",
            "train.grad_accum=2",
            "train.learning_rate=1e-3",
            "method.beta=0.5",
        )

    straight = train(config(tmp_path / "straight"))
    with pytest.raises(KeyboardInterrupt):
        train(config(tmp_path / "killed"), callbacks=[Crash()])
    assert not (tmp_path / "killed" / "final").exists()
    resumed = train(config(tmp_path / "killed"), resume=True)
    name = "adapter_model.safetensors" if finetune == "lora" else "model.safetensors"
    a, b = load_file(straight / "final" / name), load_file(resumed / "final" / name)
    assert a.keys() == b.keys()
    base = load_file(world["model"] / "model.safetensors") if finetune == "full" else None
    for key in a:
        assert torch.equal(a[key], b[key]), key
    if base is not None:  # training really moved the weights
        assert any(not torch.equal(a[k], base[k]) for k in a if k in base)
    # run.json's train_loss is the whole run's, not only the resumed steps' (issue 12, item 12)
    whole, after = (json.loads((run / "run.json").read_text())["metrics"] for run in (straight, resumed))
    assert after["train_loss"] == pytest.approx(whole["train_loss"], rel=1e-5)
    # the weights follow the umask like every other output (safetensors writes 0600; item 10)
    expected = 0o666 & ~_umask()
    assert (resumed / "final" / name).stat().st_mode & 0o777 == expected
    assert (resumed / "run.json").stat().st_mode & 0o777 == expected


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _killed_run(world: dict[str, Path], out: Path, *extra: str) -> list[str]:
    """CLI arguments of a run that is killed after its step-2 checkpoint (see _Crash)."""
    args = _train_args(
        world, out, "--selection.variant=all", "--train.max_steps=4", "--train.save_steps=2", *extra
    )
    cfg = load_config(
        None,
        [a[2:] for a in args[1:] if a.startswith("--") and "=" in a]
        + [
            f"model.name={world['model']}",
            f"data.path={world['data']}",
            "data.role=Grim Vex",
            f"data.profiles={world['profiles']}",
            f"train.output_dir={out}",
        ],
    )
    with pytest.raises(KeyboardInterrupt):
        train(cfg, callbacks=[Crash()])
    assert (out / "checkpoints" / "checkpoint-2").is_dir() and (out / "identity.json").is_file()
    return args


def test_resume_refuses_another_runs_checkpoint(world, tmp_path):
    """Issue 12, item 1: --resume with other settings or other data is refused, naming what differs."""
    out = tmp_path / "run"
    args = _killed_run(world, out, "--train.learning_rate=1e-3")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))

    result = runner.invoke(app, [*args[:-1], "--train.learning_rate=5e-5", "--resume"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    assert "train.learning_rate (0.001 -> 5e-05)" in lines[0]

    other = tmp_path / "other.jsonl"
    rows = [json.loads(line) for line in world["data"].read_text(encoding="utf-8").splitlines()]
    rows[0]["generated"] = ["hah , fool . the key is gone . now leave my castle ."]
    other.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    data_at = args.index("--data") + 1
    changed = [*args[:data_at], str(other), *args[data_at + 1 :], "--resume"]
    result = runner.invoke(app, changed)
    assert result.exit_code == 2, result.output
    assert "data (another content)" in result.output and "learning_rate" not in result.output
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # nothing touched

    result = runner.invoke(app, args)  # neither --resume nor --overwrite: the checkpoints are kept
    assert result.exit_code == 2 and "pass --resume" in result.output, result.output
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before

    # the same run, with only what may change on resume changed (the data file's path, logging), resumes
    same = tmp_path / "same.jsonl"
    same.write_bytes(world["data"].read_bytes())
    ok = [*args[:data_at], str(same), *args[data_at + 1 :], "--train.logging_steps=2", "--resume"]
    _invoke(ok)
    assert (out / "final").is_dir()


def test_train_into_a_busy_folder_is_one_line_exit_2(world, tmp_path):
    """Issue 12, item 11: a second train into a folder another process is training into stops at once."""
    import fcntl

    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".safetune.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        result = runner.invoke(app, _train_args(world, out))
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "is busy" in lines[0], result.output
    assert [p.name for p in out.iterdir()] == [".safetune.lock"]


def test_select_into_a_busy_folder_is_one_line_exit_2(world, tmp_path):
    import fcntl

    out = tmp_path / "sel"
    out.mkdir()
    with open(out / ".safetune.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        result = runner.invoke(app, ["select", *_common(world), "-o", str(out)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "is busy" in lines[0], result.output
    assert not (out / "selection.jsonl").exists()


def test_lora_reference_with_adapter_disabled_equals_base(world):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(world["model"]).eval()
    ids = torch.randint(0, base.config.vocab_size, (2, 9))
    with torch.no_grad():
        expected = base(input_ids=ids).logits
    policy = get_peft_model(
        AutoModelForCausalLM.from_pretrained(world["model"]),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    ).eval()
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_()  # a trained adapter: it changes the output
        adapted = policy(input_ids=ids).logits
        with policy.disable_adapter():
            disabled = policy(input_ids=ids).logits
    assert not torch.allclose(adapted, expected)
    assert torch.equal(disabled, expected)


class _Poison(TrainerCallback):
    """Makes the trained weights NaN at the end of a given step, as a diverging optimizer would."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            with torch.no_grad():
                next(p for p in model.parameters() if p.requires_grad).fill_(float("nan"))


@pytest.mark.parametrize(
    ("save_steps", "caught"),
    # save every step: the NaN weights are caught before checkpoint-2 is written; no checkpoints:
    # the NaN loss of step 2 is caught when it is logged
    [(1, "weight"), (0, "the training loss is nan")],
)
def test_nan_stops_training_and_keeps_the_last_good_checkpoint(world, tmp_path, save_steps, caught):
    from safetune.errors import TrainingDiverged

    out = tmp_path / "run"
    config = _world_config(
        world,
        out,
        "train.max_steps=4",
        f"train.save_steps={save_steps}",
        "train.logging_steps=1",
        "train.batch_size=4",
        "train.grad_accum=1",
    )
    poison = 2 if save_steps else 1
    with pytest.raises(TrainingDiverged) as info:
        train(config, callbacks=[_Poison(poison)])
    message = str(info.value)
    assert caught in message and "\n" not in message
    checkpoints = sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*"))
    if save_steps:
        assert checkpoints == ["checkpoint-1"] and "checkpoint-1" in message
    else:
        assert checkpoints == [] and "no checkpoint was saved" in message
    assert not (out / "final").exists() and not (out / "run.json").exists()


def test_lora_targets_that_match_no_module_are_a_config_error(world):
    from transformers import AutoModelForCausalLM

    from safetune.errors import ConfigError
    from safetune.training.common import wrap_lora

    model = AutoModelForCausalLM.from_pretrained(world["model"])
    config = load_config(None, ["train.lora_targets=[qproj]"])
    with pytest.raises(ConfigError) as info:
        wrap_lora(model, config)
    message = str(info.value)
    assert (
        message.startswith("train.lora_targets ['qproj']: ") and "q_proj" in message and "\n" not in message
    )


def test_full_finetune_with_the_reference_cache_copies_no_model(world, tmp_path, monkeypatch):
    """SaRFT under full fine-tuning through the CLI: the reference cache (the default) replaces the frozen
    model copy by a copy of the LM head, and trains the weights a live reference copy trains."""
    from transformers import PreTrainedModel

    from safetune.training import run as run_module

    copied: list[str] = []
    deepcopy = run_module.copy.deepcopy

    def watched(obj, *args):
        if isinstance(obj, PreTrainedModel):
            copied.append(type(obj).__name__)
        return deepcopy(obj, *args)

    monkeypatch.setattr(run_module.copy, "deepcopy", watched)
    extra = ["--method", "sarft", "--selection", "all", "--finetune", "full", "--method.beta=0.5"]
    _invoke(_train_args(world, tmp_path / "cached", *extra, "--train.learning_rate=1e-3"))
    assert copied == []
    metrics = json.loads((tmp_path / "cached" / "run.json").read_text())["metrics"]
    assert metrics["reference_cache_rows"] == 12 and metrics["reference_cache_positions"] > 0
    assert metrics["reference_rows"] == 8  # 2 steps x 4 rows, every row flagged, served from the cache
    _invoke(
        _train_args(
            world, tmp_path / "live", *extra, "--train.learning_rate=1e-3", "--method.reference_cache=false"
        )
    )
    assert copied == ["LlamaForCausalLM"]
    live = json.loads((tmp_path / "live" / "run.json").read_text())["metrics"]
    assert "reference_cache_rows" not in live and live["reference_rows"] == 8
    a = load_file(tmp_path / "cached" / "final" / "model.safetensors")
    b = load_file(tmp_path / "live" / "final" / "model.safetensors")
    base = load_file(world["model"] / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    assert any(not torch.equal(a[k], base[k]) for k in a if k in base)
