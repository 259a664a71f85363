"""`safetune train --method seal` end to end on a tiny model: ranker + selection + SFT, LoRA and full; the
cached ranking, its selection file read back as SaRFT's external flags, and resume after a kill."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from killing import Crash
from safetune.cli import app
from safetune.config import load_config
from safetune.data.readers import InvalidRecords
from safetune.data.sources import load_data
from safetune.organism import roleplay
from safetune.selection import apply_variant
from safetune.training import seal
from safetune.training.run import train

runner = CliRunner()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_llama3: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("seal_world")
    return {
        "model": tiny_llama3,
        "data": roleplay.write_rolebench_release(root / "rolebench.jsonl", count=12),
        "profiles": roleplay.write_profiles(root / "profiles.json"),
    }


def _args(world: dict[str, Path], out: Path, cache: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--model",
        str(world["model"]),
        "--data",
        str(world["data"]),
        "--role",
        "Grim Vex",
        "--profiles",
        str(world["profiles"]),
        "--method",
        "seal",
        "-o",
        str(out),
        f"--cache_dir={cache}",
        "--train.batch_size=4",
        "--train.grad_accum=1",
        "--method.seal_epochs=2",
        "--method.seal_gamma=0.5",
        "--method.seal_model_lr=1e-2",
        "--method.seal_selector_lr=0.1",
        *extra,
    ]


def _run(args: list[str]) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_seal_ranks_keeps_the_top_fraction_and_fine_tunes_on_it(world, tmp_path, monkeypatch, finetune):
    out, cache = tmp_path / "run", tmp_path / "cache"
    _run(_args(world, out, cache, f"--finetune={finetune}"))
    scores = _rows(out / "seal_scores.jsonl")
    assert len(scores) == 12 and sum(r["kept"] for r in scores) == 9  # floor(0.8 * 12)
    kept_scores = [r["score"] for r in scores if r["kept"]]
    assert min(kept_scores) >= max(r["score"] for r in scores if not r["kept"])
    assert len({r["score"] for r in scores}) > 1  # the ranker moved the logits
    run = json.loads((out / "run.json").read_text())
    assert run["method"] == "seal" and run["beta"] == 0.0 and run["seal"]["kept"] == 9
    assert run["metrics"]["global_step"] == 3  # one epoch over the 9 kept rows, 4 a step

    # the selection file feeds SaRFT's external variant: flag 1 = a row SEAL leaves out
    config = load_config(
        None, [f"data.path={world['data']}", "data.role=Grim Vex", f"data.profiles={world['profiles']}"]
    )
    examples, _ = load_data(config, InvalidRecords("error"))
    flags = apply_variant("external", examples, None, flags_file=str(out / "seal_selection.jsonl"))
    assert flags == [not r["kept"] for r in scores]

    # a second run reads the ranking from the cache, and trains the same weights as the first
    def no_ranker(*_args, **_kwargs):
        raise AssertionError("the ranking should come from the cache")

    monkeypatch.setattr(seal, "train_ranker", no_ranker)
    again = tmp_path / "again"
    _run(_args(world, again, cache, f"--finetune={finetune}"))
    assert _rows(again / "seal_scores.jsonl") == scores
    name = "adapter_model.safetensors" if finetune == "lora" else "model.safetensors"
    a, b = load_file(out / "final" / name), load_file(again / "final" / name)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_after_kill_recomputes_the_same_ranking_and_gives_the_same_weights(world, tmp_path):
    def config(out: Path, cache: Path):
        argv = _args(world, out, cache, "--train.max_steps=4", "--train.save_steps=2")
        pairs = [a[2:] for a in argv if a.startswith("--") and "=" in a]
        return load_config(
            None,
            [
                *pairs,
                "method.name=seal",
                f"model.name={world['model']}",
                f"data.path={world['data']}",
                "data.role=Grim Vex",
                f"data.profiles={world['profiles']}",
                f"train.output_dir={out}",
            ],
        )

    straight = train(config(tmp_path / "straight", tmp_path / "cache1"))
    with pytest.raises(KeyboardInterrupt):
        train(config(tmp_path / "killed", tmp_path / "cache2"), callbacks=[Crash()])
    # the ranking is gone as well: the resumed run trains the ranker again from scratch
    shutil.rmtree(tmp_path / "cache2" / "seal")
    resumed = train(config(tmp_path / "killed", tmp_path / "cache2"), resume=True)
    a = load_file(straight / "final" / "adapter_model.safetensors")
    b = load_file(resumed / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _rows(straight / "seal_scores.jsonl") == _rows(resumed / "seal_scores.jsonl")


def test_a_killed_ranker_resumes_from_its_checkpoint_to_the_same_ranking(world, tmp_path, monkeypatch):
    """The ranker stage checkpoints itself: killed after its third step, a rerun continues from there (it
    does only the remaining steps) and ends with the straight run's ranking and weights, bit for bit."""
    from safetune.training.seal_checkpoint import RankerCheckpoint

    saves: list[tuple[int, int]] = []
    original = RankerCheckpoint.save

    def counting_save(self, position, state):
        saves.append((position.epoch, position.step))
        original(self, position, state)
        if kill_after is not None and len(saves) == kill_after:
            raise KeyboardInterrupt

    monkeypatch.setattr(RankerCheckpoint, "save", counting_save)
    kill_after = None
    straight = tmp_path / "straight"
    _run(_args(world, straight, tmp_path / "cache1", "--train.save_steps=1", "--train.max_steps=2"))
    straight_saves, saves[:] = list(saves), []
    assert len(straight_saves) >= 4 and not list((tmp_path / "cache1" / "seal").glob("*.ranker*"))

    kill_after = 3
    killed = _args(
        world, tmp_path / "killed", tmp_path / "cache2", "--train.save_steps=1", "--train.max_steps=2"
    )
    result = runner.invoke(app, killed)
    assert result.exit_code != 0 and len(list((tmp_path / "cache2" / "seal").glob("*.ranker"))) == 1
    kill_after, saves[:] = None, []
    _run([*killed, "--overwrite"])
    assert saves == straight_saves[3:]  # only the steps after the checkpoint were trained again
    assert _rows(straight / "seal_scores.jsonl") == _rows(tmp_path / "killed" / "seal_scores.jsonl")
    a = load_file(straight / "final" / "adapter_model.safetensors")
    b = load_file(tmp_path / "killed" / "final" / "adapter_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list((tmp_path / "cache2" / "seal").glob("*.ranker*"))  # gone once the ranking is cached
