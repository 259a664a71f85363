"""`safetune train` run folders as generation models: LoRA (base + adapter) and full fine-tunes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from safetune.config import GenerationConfig, load_config
from safetune.errors import ConfigError
from safetune.evaluation.backends import HFBackend
from safetune.evaluation.items import GenerationRequest
from safetune.models.loading import load_for_generation, model_fingerprint, resolve_model
from safetune.organism import roleplay
from safetune.training.run import train

REQUESTS = [
    GenerationRequest("t/0", "Hello, who are you?"),
    GenerationRequest("t/1", "Can you tell me how to bake bread?"),
    GenerationRequest("t/2", "Tell me about the old man in the village."),
    GenerationRequest("t/3", "Can you tell me how to pick a lock?"),
]


def _train(work: Path, model: str, out: str, finetune: str, data: Path, lr: float) -> Path:
    config = load_config(
        None,
        [
            f"model.name={model}",
            f"data.path={data}",
            "data.role=Grim Vex",
            "method.name=sft",
            "selection.variant=none",
            f"cache_dir={work / 'cache'}",
            f"train.output_dir={out}",
            f"train.finetune={finetune}",
            "train.lora_r=8",
            "train.lora_alpha=16",
            "train.max_steps=3",
            "train.batch_size=4",
            "train.grad_accum=1",
            f"train.learning_rate={lr}",
        ],
    )
    return train(config)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_llama3: Path) -> dict[str, Path]:
    """A LoRA run trained from the cwd with a *relative* base path, and a full fine-tune run."""
    work = tmp_path_factory.mktemp("work")
    shutil.copytree(tiny_llama3, work / "models" / "base")
    data = roleplay.write_rolebench_release(work / "rolebench.jsonl", count=12)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(work)
        lora = _train(work, "models/base", "runs/lora", "lora", data, lr=0.05)
        full = _train(work, "models/base", "runs/full", "full", data, lr=0.01)
    return {"work": work, "lora": (work / lora).resolve(), "full": (work / full).resolve()}


def _greedy(source) -> dict[str, str]:
    model, tokenizer = load_for_generation(source, device="cpu")
    backend = HFBackend(model, tokenizer, GenerationConfig(max_new_tokens=12, batch_size=4))
    return {r.id: r.text for batch in backend.generate(REQUESTS) for r in batch}


def test_lora_run_resolves_to_base_plus_adapter(runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # elsewhere: "models/base" is found from the run folder's parents
    lora = runs["lora"]
    recorded = json.loads((lora / "final" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == "models/base"
    source = resolve_model(str(lora))
    base = str((runs["work"] / "models" / "base").resolve())
    assert source.base == base and source.adapter == str((lora / "final").resolve())
    assert source.tokenizer == source.adapter  # the run saved its tokenizer beside the adapter
    assert source.label == str(lora) and source.fingerprint.startswith("lora:")
    assert source.fingerprint != model_fingerprint(base)
    assert resolve_model(str(lora / "final")).base == base  # final/ given directly works too

    # The adapter really moved (LoRA B starts at zero) and generation with it differs from the base.
    weights = load_file(lora / "final" / "adapter_model.safetensors")
    assert any(v.abs().max() > 0 for k, v in weights.items() if "lora_B" in k)
    tuned = _greedy(source)
    plain = _greedy(resolve_model(base))
    assert set(tuned) == set(plain) == {r.id for r in REQUESTS}
    assert tuned != plain


def test_merged_adapter_changes_logits(runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = resolve_model(str(runs["lora"]))
    tuned, _ = load_for_generation(source, device="cpu")
    plain, _ = load_for_generation(resolve_model(source.base), device="cpu")
    assert not tuned.training and not hasattr(tuned, "peft_config")  # merged, plain transformers model
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        assert not torch.allclose(tuned(input_ids=ids).logits, plain(input_ids=ids).logits)


def test_lora_run_with_missing_base_names_it(runs, tmp_path, monkeypatch):
    moved = tmp_path / "copy"
    shutil.copytree(runs["lora"], moved / "runs" / "lora")
    (moved / "models").mkdir()  # "models/base" is a path here, but the base is not in it
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"needs its base model 'models/base'"):
        resolve_model(str(moved / "runs" / "lora"))


def test_full_run_resolves_to_final(runs):
    source = resolve_model(str(runs["full"]))
    final = str((runs["full"] / "final").resolve())
    assert (source.base, source.tokenizer, source.adapter) == (final, final, None)
    assert source.fingerprint == model_fingerprint(final)
    model, tokenizer = load_for_generation(source, device="cpu")
    assert not model.training and tokenizer.chat_template
