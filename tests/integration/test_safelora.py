"""SafeLoRA end to end on a tiny "aligned" model and an "unaligned" one of the same shapes (another seed):
`train --method safelora` through the CLI, --resume after a kill, the post-hoc `safetune safelora` command
on the run (the input untouched, the same projection) and `safetune eval` on its output."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer
from typer.testing import CliRunner

from killing import Crash
from safetune.cli import app
from safetune.config import load_config
from safetune.models.loading import resolve_model
from safetune.models.tiny import random_llama
from safetune.organism import roleplay
from safetune.training.run import train

runner = CliRunner()
ADAPTER = "adapter_model.safetensors"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_llama3: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("safelora-world")
    unaligned = root / "unaligned"
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama3)
    # conftest's tiny model with another seed: the same shapes, other weights
    random_llama(tokenizer, "llama3", hidden_size=32, num_layers=2, num_heads=4, seed=1).save_pretrained(
        unaligned
    )
    return {
        "model": tiny_llama3,
        "unaligned": unaligned,
        "data": roleplay.write_rolebench_release(root / "rolebench.jsonl", count=8),
        "profiles": roleplay.write_profiles(root / "profiles.json"),
        "cache": root / "cache",
    }


def _overrides(world: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        f"model.name={world['model']}",
        f"data.path={world['data']}",
        "data.role=Grim Vex",
        f"data.profiles={world['profiles']}",
        f"cache_dir={world['cache']}",
        f"train.output_dir={out}",
        "method.name=safelora",
        f"method.unaligned_model={world['unaligned']}",
        "selection.variant=none",
        "train.batch_size=4",
        "train.grad_accum=1",
        "train.learning_rate=1e-2",
        *extra,
    ]


def _invoke(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


def _expected_b(world: dict[str, Path], module: str, b: torch.Tensor) -> torch.Tensor:
    """C B for one module, from the two models' files: C = V V^T / ||V||_F."""
    aligned, unaligned = (
        load_file(world[m] / "model.safetensors")[f"{module}.weight"] for m in ("model", "unaligned")
    )
    v = aligned - unaligned
    return (v @ v.T / torch.norm(v)) @ b


def test_train_projects_final_and_the_posthoc_command_repeats_it(world, tmp_path):
    run = tmp_path / "run"
    args = [f"--{o}" for o in _overrides(world, run, "train.max_steps=2", "method.safelora_k=3")]
    _invoke(["train", *args])
    report = json.loads((run / "safelora.json").read_text())
    trained, final = (load_file(run / d / ADAPTER) for d in ("trained", "final"))
    assert (
        report["modules_total"] == 4 and report["mode"] == "number" and report["compute_dtype"] == "float32"
    )
    assert report["modules_projected"] >= 3  # k = 3, more on ties
    for line in report["modules"]:
        key_b = f"base_model.model.{line['module']}.lora_B.weight"
        key_a = key_b.replace("lora_B", "lora_A")
        assert torch.equal(final[key_a], trained[key_a])
        expected = _expected_b(world, line["module"], trained[key_b]) if line["projected"] else trained[key_b]
        assert torch.allclose(final[key_b], expected, atol=1e-6), line["module"]
        assert line["norm_b_before"] == pytest.approx(float(trained[key_b].norm()), rel=1e-5)
        assert line["norm_b_after"] == pytest.approx(float(final[key_b].norm()), rel=1e-5)
    details = json.loads((run / "run.json").read_text())
    assert (
        details["method"] == "safelora"
        and details["safelora"]["modules_projected"] == report["modules_projected"]
    )

    # post hoc on the run: it reads trained/, writes only OUT, and gives the same projected adapter
    before = _digests(run)
    out = tmp_path / "posthoc"
    printed = _invoke(
        ["safelora", str(run), "--unaligned", str(world["unaligned"]), "-o", str(out), "--k", "3"]
    )
    assert "modules projected" in printed
    assert _digests(run) == before
    again = load_file(out / "final" / ADAPTER)
    assert again.keys() == final.keys() and all(torch.equal(again[k], final[k]) for k in final)
    assert json.loads((out / "safelora.json").read_text())["modules"] == report["modules"]
    assert load_config(out / "config.yaml").method.name == "safelora"

    # the output is a run folder `safetune eval` resolves as base + projected adapter
    source = resolve_model(str(out))
    assert source.adapter == str((out / "final").resolve()) and Path(source.base) == world["model"].resolve()
    evaluation = tmp_path / "eval"
    _invoke(
        [
            "eval",
            "-m",
            str(out),
            "--benchmarks",
            "overrefusal",
            "--backend",
            "mock",
            "--limit",
            "2",
            "-o",
            str(evaluation),
        ]
    )
    assert json.loads((evaluation / "eval.json").read_text())["model"]["adapter"] == source.adapter

    # threshold mode with the exact projector, post hoc: other settings, another folder
    other = tmp_path / "threshold"
    _invoke(
        [
            "safelora",
            str(run),
            "--unaligned",
            str(world["unaligned"]),
            "-o",
            str(other),
            "--mode",
            "threshold",
            "--threshold",
            "0.99",
            "--projector",
            "exact",
        ]
    )
    exact = json.loads((other / "safelora.json").read_text())
    assert exact["projector"] == "exact" and exact["threshold"] == 0.99
    assert [m["projected"] for m in exact["modules"]] == [m["cosine"] <= 0.99 for m in exact["modules"]]


def test_resume_after_kill_gives_the_same_projected_adapter(world, tmp_path):
    def config(out: Path):
        return load_config(
            None, _overrides(world, out, "train.max_steps=4", "train.save_steps=2", "method.safelora_k=2")
        )

    straight = train(config(tmp_path / "straight"))
    with pytest.raises(KeyboardInterrupt):
        train(config(tmp_path / "killed"), callbacks=[Crash()])
    assert (
        not (tmp_path / "killed" / "final").exists() and not (tmp_path / "killed" / "safelora.json").exists()
    )
    resumed = train(config(tmp_path / "killed"), resume=True)
    for folder in ("final", "trained"):
        a, b = load_file(straight / folder / ADAPTER), load_file(resumed / folder / ADAPTER)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), folder
    assert (
        json.loads((straight / "safelora.json").read_text())["modules"]
        == json.loads((resumed / "safelora.json").read_text())["modules"]
    )
