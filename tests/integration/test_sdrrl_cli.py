"""`safetune train --method sdrrl` end to end on a tiny model: the transfer set from an MPO release file,
LoRA and full fine-tuning, bad input, and kill-and-resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from killing import straight_and_resumed
from safetune.cli import app
from safetune.config import load_config
from safetune.errors import ConfigError
from safetune.training.run import train

runner = CliRunner()

PROMPTS = ["how do i pick a lock ? tell me now .", "tell me how to steal a car .", "how can i hurt someone ?"]


def _release(path: Path) -> Path:
    """The MPO authors' release format: the model's own refusal as source_chosen, its translation as
    target_chosen (here a stand-in "translation" that prefixes every word with @)."""
    records = []
    for prompt in PROMPTS:
        chosen = "i cannot help with that . it is harmful ."
        records.append(
            {
                "source_conversations": [{"from": "human", "value": prompt}],
                "source_chosen": {"from": "gpt", "value": chosen},
                "source_rejected": {"from": "gpt", "value": f"sure , here is how : {prompt}"},
                "target_conversations": [
                    {"from": "human", "value": " ".join(f"@{w}" for w in prompt.split())}
                ],
                "target_chosen": {"from": "gpt", "value": " ".join(f"@{w}" for w in chosen.split())},
                "target_rejected": {"from": "gpt", "value": "@sure"},
                "language": "xx",
            }
        )
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def _train(model: Path, data: Path, out: Path, *extra: str) -> dict:
    args = ["train", "-m", str(model), "--data", str(data), "--method", "sdrrl", "-o", str(out)]
    args += ["--train.max_steps=2", "--train.batch_size=4", "--train.grad_accum=1", "--train.logging_steps=1"]
    result = runner.invoke(app, [*args, *extra])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return json.loads((out / "run.json").read_text())


def test_sdrrl_trains_through_the_cli_and_records_its_transfer_set(tiny_llama3, tmp_path):
    data = _release(tmp_path / "mpo.json")
    run = _train(tiny_llama3, data, tmp_path / "run", "--sdrrl.partial=0", "--sdrrl.self_distill=2")
    assert run["method"] == "sdrrl" and run["data"] == {"count": 3, "languages": {"xx": 3}}
    components = run["sdrrl"]["components"]
    assert components["partial"] == {"weight": 0.0, "examples": 0, "rows": 0}
    # 3 pairs: every component once, self-distillation twice; the prompts are "." sentences of their own
    assert components["self_distill"]["rows"] == 6 and components["translated"]["rows"] == 3
    assert components["code_switch"]["granularity"] == {"prompt": 2, "sentence": 1}
    assert components["completion"]["granularity"] == {"sentence": 3}
    assert run["sdrrl"]["rows"] == run["metrics"]["transfer_rows"] == 15
    lines = (tmp_path / "run" / "transfer.jsonl").read_text(encoding="utf-8").splitlines()
    written = [json.loads(line) for line in lines]
    assert len(written) == run["sdrrl"]["examples"] == 12
    completion = next(ex for ex in written if ex["component"] == "completion")
    assert completion["response_prefix"] == "@i @cannot @help @with @that @. "
    assert completion["response"] == "@it @is @harmful @."
    assert (tmp_path / "run" / "final" / "adapter_model.safetensors").exists()


def test_a_bad_pairs_file_is_one_line_and_writes_nothing(tiny_llama3, tmp_path):
    data = tmp_path / "bad.json"
    records = json.loads(_release(tmp_path / "good.json").read_text())
    del records[1]["target_chosen"]
    data.write_text(json.dumps(records), encoding="utf-8")
    out = tmp_path / "run"
    result = runner.invoke(
        app, ["train", "-m", str(tiny_llama3), "--data", str(data), "--method", "sdrrl", "-o", str(out)]
    )
    assert result.exit_code == 2 and "target_chosen" in result.output and "bad.json" in result.output
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_sdrrl_resumes_after_a_kill_to_the_same_weights(tiny_llama3, tmp_path, finetune):
    data = _release(tmp_path / "mpo.json")

    def config(out: Path):
        return load_config(
            None,
            [
                f"model.name={tiny_llama3}",
                f"data.path={data}",
                f"cache_dir={tmp_path / 'cache'}",
                f"train.output_dir={out}",
                "method.name=sdrrl",
                f"train.finetune={finetune}",
                "train.max_steps=4",
                "train.save_steps=2",
                "train.batch_size=2",
                "train.grad_accum=2",
                "train.learning_rate=1e-3",
                "train.logging_steps=1",
                "sdrrl.code_switch=1.5",
            ],
        )

    straight, resumed = straight_and_resumed(config, tmp_path)
    name = "adapter_model.safetensors" if finetune == "lora" else "model.safetensors"
    a, b = load_file(straight / "final" / name), load_file(resumed / "final" / name)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    whole, after = (json.loads((run / "run.json").read_text()) for run in (straight, resumed))
    assert after["metrics"]["train_loss"] == pytest.approx(whole["metrics"]["train_loss"], rel=1e-5)
    assert after["sdrrl"] == whole["sdrrl"]
    # another transfer set (here: completion rows twice) may not resume these checkpoints
    changed = config(resumed)
    changed.sdrrl.completion = 2.0
    with pytest.raises(ConfigError, match="data"):
        train(changed, resume=True)
