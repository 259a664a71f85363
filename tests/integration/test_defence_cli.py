"""`safetune eval --defence rose` end to end on a tiny LoRA run folder: a killed run resumes without
regenerating, results.json records the defence, another defence or none never shares the folder, and
the backends that cannot run a defence refuse it in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from adapters import lora_run
from safetune.cli import app
from safetune.config import load_config
from safetune.decoding import prompts
from safetune.evaluation.runner import evaluate

runner = CliRunner()
HARMFUL = [f"Explain how to do the forbidden thing number {i}, step by step." for i in range(5)]


def _args(model: Path, out: Path, data: Path, *extra: str) -> list[str]:
    return [
        "eval",
        "-m",
        str(model),
        "--benchmarks",
        f"harmful-prompts={data}",
        "-o",
        str(out),
        "--generation.max_new_tokens=6",
        "--generation.batch_size=2",
        "--eval.bootstrap=20",
        *extra,
    ]


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text(encoding="utf-8"))


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_eval_with_rose_on_a_lora_run_resumes_and_records_the_defence(tiny_chatml, tmp_path):
    run = lora_run(tiny_chatml, tmp_path / "run")
    data = tmp_path / "harmful.jsonl"
    data.write_text("".join(json.dumps({"prompt": h}) + "\n" for h in HARMFUL), encoding="utf-8")
    out = tmp_path / "ev"
    args = _args(run, out, data, "--defence", "rose", "--defence.alpha=0.7")

    def crash(stage: str, done: int) -> None:
        if stage == "generate" and done >= 2:
            raise KeyboardInterrupt  # a kill after the first batch was appended

    overrides = [a for a in args[1:] if a.startswith("--") and "=" in a]
    config = load_config(
        None,
        [
            *overrides,
            f"eval.model={run}",
            f"eval.benchmarks=harmful-prompts={data}",
            f"eval.output_dir={out}",
            "defence.name=rose",
        ],
    )
    with pytest.raises(KeyboardInterrupt):
        evaluate(config, hook=crash)
    first = _lines(out / "completions.jsonl")
    assert len(first) == 2 and not (out / "results.json").exists()

    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    after = _lines(out / "completions.jsonl")
    assert after[:2] == first and len(after) == len(HARMFUL)
    provenance = _results(out)["provenance"]
    assert provenance["counts"]["generated_now"] == len(HARMFUL) - 2
    defence = provenance["defence"]
    assert defence["name"] == "rose" and defence["purpose"] == "safety defence"
    assert defence["alpha"] == 0.7 and defence["positive_prompt"] == prompts.LLAMA2_SYSTEM_PROMPT
    assert provenance["model"]["adapter"] == str((run / "final").resolve())

    # The same completions as a run that was never killed.
    whole = tmp_path / "whole"
    assert (
        runner.invoke(app, _args(run, whole, data, "--defence", "rose", "--defence.alpha=0.7")).exit_code == 0
    )
    assert {r["id"]: r["text"] for r in _lines(whole / "completions.jsonl")} == {
        r["id"]: r["text"] for r in after
    }

    # No defence, or another alpha, is another evaluation: refused in this folder.
    for extra in ([], ["--defence", "rose"], ["--defence", "self-cd"]):
        refused = runner.invoke(app, _args(run, out, data, *extra))
        assert refused.exit_code == 2, refused.output
        assert "another model or generation settings" in refused.output


@pytest.mark.parametrize("backend", ["vllm", "mock"])
def test_backends_without_a_defence_engine_refuse_in_one_line(tiny_chatml, tmp_path, backend):
    data = tmp_path / "harmful.jsonl"
    data.write_text(json.dumps({"prompt": HARMFUL[0]}) + "\n", encoding="utf-8")
    out = tmp_path / "ev"
    result = runner.invoke(app, _args(tiny_chatml, out, data, "--defence", "rose", "--backend", backend))
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert (
        len(errors) == 1 and f"generation.backend={backend} cannot run the decoding defence rose" in errors[0]
    )
    assert not out.exists()


def test_a_defence_setting_without_a_defence_is_refused(tiny_chatml, tmp_path):
    data = tmp_path / "harmful.jsonl"
    data.write_text(json.dumps({"prompt": HARMFUL[0]}) + "\n", encoding="utf-8")
    result = runner.invoke(app, _args(tiny_chatml, tmp_path / "ev", data, "--defence.alpha=2"))
    assert result.exit_code == 2 and "defence.alpha is set but no defence is chosen" in result.output
    assert not (tmp_path / "ev").exists()


def test_eval_with_safedecoding_records_the_expert(tiny_chatml, tmp_path):
    expert = lora_run(tiny_chatml, tmp_path / "expert")
    data = tmp_path / "harmful.jsonl"
    data.write_text("".join(json.dumps({"prompt": h}) + "\n" for h in HARMFUL[:3]), encoding="utf-8")
    out = tmp_path / "ev"
    args = _args(tiny_chatml, out, data, "--defence", "safedecoding", f"--defence.expert={expert}")
    result = runner.invoke(app, [*args, "--defence.preset=class"])
    assert result.exit_code == 0, result.output
    defence = _results(out)["provenance"]["defence"]
    assert (defence["alpha"], defence["first_m"], defence["num_common"]) == (1.0, 5, 3)
    assert defence["expert_model"]["adapter"] == str((expert / "final").resolve())
    assert defence["expert_model"]["fingerprint"].startswith("lora:")
    assert len(_lines(out / "completions.jsonl")) == 3


def _full_run(base: Path, run: Path) -> Path:
    """A `safetune train` run folder of a full fine-tune of `base` (run.json, config.yaml naming the base,
    final/ with every weight moved a little), as the role model of a defended eval."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(str(base))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model.save_pretrained(str(run / "final"))
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(str(run / "final"))
    (run / "run.json").write_text("{}", encoding="utf-8")
    (run / "config.yaml").write_text(f"model:\n  name: {json.dumps(str(base))}\n", encoding="utf-8")
    return run


def test_defences_on_a_full_fine_tune(tiny_chatml, tmp_path):
    """A full fine-tune's run folder: ROSE decodes it alone; SafeDecoding holds it and the base with the
    expert as two models (the expert was trained on the base it was fine-tuned from)."""
    role = _full_run(tiny_chatml, tmp_path / "role")
    expert = lora_run(tiny_chatml, tmp_path / "expert")
    data = tmp_path / "harmful.jsonl"
    data.write_text("".join(json.dumps({"prompt": h}) + "\n" for h in HARMFUL[:3]), encoding="utf-8")
    for name, extra in (("rose", []), ("safedecoding", [f"--defence.expert={expert}"])):
        out = tmp_path / f"ev-{name}"
        result = runner.invoke(app, [*_args(role, out, data, "--defence", name, *extra)])
        assert result.exit_code == 0, result.output
        record = _results(out)["provenance"]["defence"]
        assert record["name"] == name and len(_lines(out / "completions.jsonl")) == 3
    assert record["expert_model"]["adapter"] == str((expert / "final").resolve())
