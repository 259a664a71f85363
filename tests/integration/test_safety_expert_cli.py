"""`safetune safety-expert` end to end on a tiny model: the mock backend makes the refusals deterministic
(a tiny random model rarely refuses) and the real trainer builds the expert, killed and resumed; the hf
backend's path samples from the tiny model itself."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from killing import Crash
from safetune.cli import app
from safetune.evaluation.items import JudgeItem, Verdict

runner = CliRunner()


def _seeds(path: Path, count: int, complying: int) -> Path:
    """`count` prompts; the mock backend refuses all but the first `complying` ("[[comply]]")."""
    rows = [
        {
            "id": f"p{i}",
            "category": f"c{i % 3}",
            "prompt": f"{'[[comply]]' if i < complying else '[[refuse]]'} ask {i}",
        }
        for i in range(count)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_safety_expert_builds_a_lora_expert_and_resumes_after_a_kill(tiny_llama3, tmp_path, monkeypatch):
    out = tmp_path / "expert"
    seeds = _seeds(tmp_path / "seeds.jsonl", count=6, complying=1)
    args = [
        "safety-expert",
        "-m",
        str(tiny_llama3),
        "--seeds",
        str(seeds),
        "--backend",
        "mock",
        "-o",
        str(out),
        "--expert.min_refusals=4",
        "--train.save_steps=2",
        "--train.logging_steps=1",
        f"--cache_dir={tmp_path / 'cache'}",
        "-q",
    ]
    import safetune.expert.build as build

    real_train = build.train

    def killed_train(*a: Any, **k: Any) -> Any:  # a kill after optimizer step 3 (checkpoint-2 is on disk)
        return real_train(*a, **k, callbacks=[Crash()])

    monkeypatch.setattr(build, "train", killed_train)
    killed = runner.invoke(app, args)
    assert killed.exit_code != 0 and not (out / "run" / "final").exists()
    assert (out / "run" / "checkpoints" / "checkpoint-2").is_dir()
    answers = _lines(out / "completions.jsonl")
    # 6 prompts x 2 samples: the 10 refusing slots are filled at once, the 2 complying ones tried 5 times
    assert len(answers) == 10 + 2 * 5
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["training"]["status"] == "training"
    assert manifest["counts"]["kept"] == 10 and manifest["counts"]["dropped"]["complied"] == 10

    # The re-run samples and judges nothing again, and training resumes from the checkpoint.
    monkeypatch.setattr(build, "train", real_train)
    monkeypatch.setattr(
        "safetune.evaluation.backends.MockBackend.generate",
        lambda *_: pytest.fail("an answer was sampled again after the kill"),
    )
    resumed = runner.invoke(app, args)
    assert resumed.exit_code == 0, resumed.output + repr(resumed.exception)
    assert "10 refusals kept of 12 sought" in resumed.output and "0 sampled now" in resumed.output
    assert _lines(out / "completions.jsonl") == answers
    assert len(_lines(out / "refusals.jsonl")) == 10

    run = out / "run"
    adapter = json.loads((run / "final" / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"], adapter["lora_dropout"]) == (16, 64, 0.1)
    assert sorted(adapter["target_modules"]) == ["q_proj", "v_proj"]
    result = json.loads((run / "run.json").read_text())
    assert (
        result["method"] == "sft" and result["metrics"]["global_step"] == 10 * 2
    )  # 10 rows, batch 1, 2 epochs
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["training"]["status"] == "done" and manifest["training"]["global_step"] == 20

    from safetune.models.loading import resolve_model

    source = resolve_model(str(run))  # what `safetune eval --model DIR/run` and --defence.expert read
    assert source.base == str(tiny_llama3) and source.adapter == str((run / "final").resolve())

    # Another seed set refuses the folder in one line, before anything is written.
    other = runner.invoke(app, [*args[:4], str(_seeds(tmp_path / "other.jsonl", 3, 0)), *args[5:]])
    assert other.exit_code == 2 and "holds the safety expert of another seed set" in other.output
    assert _lines(out / "completions.jsonl") == answers


class EveryAnswerRefuses:
    """A judge stub that calls every answer a refusal: the tiny random model never refuses in words."""

    name, version = "stub", "1"

    def key(self) -> str:
        return "stub@1"

    def judge(self, items: Sequence[JudgeItem]) -> Iterator[list[Verdict]]:
        yield [Verdict(item.id, "safe", True, "") for item in items]


def test_the_hf_backend_samples_the_models_own_answers_seeded(tiny_llama3, tmp_path):
    from safetune.expert.build import build_expert, load_expert_config

    def config(out: Path, *extra: str) -> Any:
        return load_expert_config(
            overrides=[
                f"--model.name={tiny_llama3}",
                f"--expert.output_dir={out}",
                f"--expert.seeds={_seeds(tmp_path / 'seeds.jsonl', 3, 0)}",
                "--expert.max_new_tokens=8",
                "--expert.min_chars=0",
                "--expert.min_refusals=1",
                "--train.num_epochs=1",
                f"--cache_dir={tmp_path / 'cache'}",
                *extra,
            ]
        )

    # Fewer refusals than expert.min_refusals (7 > the 6 slots): a clear stop before training.
    from safetune.expert.build import TooFewRefusals

    with pytest.raises(
        TooFewRefusals, match=r"\d refusals kept for 6 slots .* fewer than expert.min_refusals = 7"
    ):
        build_expert(config(tmp_path / "keyword", "--expert.attempts=1", "--expert.min_refusals=7"))
    assert not (tmp_path / "keyword" / "run").exists()

    first = build_expert(config(tmp_path / "a"), make_judge=lambda _: EveryAnswerRefuses())
    again = build_expert(config(tmp_path / "b"), make_judge=lambda _: EveryAnswerRefuses())
    assert first.tally.kept == 6 and first.trained_now and (first.run / "final").is_dir()
    texts = [json.loads(line)["text"] for line in _lines(tmp_path / "a" / "completions.jsonl")]
    # Seeded per request: another folder samples the very same answers; the 2 samples of a prompt differ.
    assert texts == [json.loads(line)["text"] for line in _lines(tmp_path / "b" / "completions.jsonl")]
    assert again.tally.to_dict() == first.tally.to_dict()
    assert len(set(texts)) > 3
