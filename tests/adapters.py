"""A nonzero LoRA run folder on a tiny model, shared by the defence tests (a stand-in safety expert or a
LoRA role model)."""

from __future__ import annotations

from pathlib import Path

import torch


def lora_run(base: Path, run: Path) -> Path:
    """A `safetune train` run folder (run.json + final/) of a LoRA on `base` with nonzero weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(str(base)),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    model.save_pretrained(str(run / "final"))
    (run / "run.json").write_text("{}", encoding="utf-8")
    return run
