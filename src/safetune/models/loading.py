"""Load tokenizers and causal LMs (hub id or local folder), fingerprint them for cache keys."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from safetune.errors import ConfigError

log = logging.getLogger(__name__)

# Files whose full content defines a model folder's behaviour apart from the weights.
_SMALL_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "adapter_config.json",
)
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def model_fingerprint(model_id: str, revision: str | None = None) -> str:
    """A content key for a model: a local folder hashes its config/tokenizer files fully and each weight
    file by size plus its first and last MiB (a full hash of 16 GB of weights would dominate a cached run);
    a hub id is `id@revision`."""
    path = Path(model_id)
    if not path.is_dir():
        return f"hub:{model_id}@{revision or 'main'}"
    digest = hashlib.sha256()
    for file in sorted(p for p in path.iterdir() if p.is_file()):
        if file.name in _SMALL_FILES:
            digest.update(file.name.encode() + file.read_bytes())
        elif file.suffix in _WEIGHT_SUFFIXES:
            size = file.stat().st_size
            with open(file, "rb") as handle:
                head = handle.read(1 << 20)
                handle.seek(max(0, size - (1 << 20)))
                tail = handle.read()
            digest.update(f"{file.name}:{size}".encode() + head + tail)
    return f"dir:{digest.hexdigest()}"


def resolve_dtype(precision: str) -> torch.dtype:
    """Weights dtype for inference-only work (scoring, reference): bf16 on a bf16 GPU when auto."""
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if precision == "auto" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_tokenizer(model_id: str, revision: str | None = None, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            model_id, revision=revision, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot load tokenizer {model_id!r}: {err}") from err
    if tokenizer.pad_token is None:
        # Padding is masked everywhere; any token works, and eos keeps the vocabulary unchanged.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(
    model_id: str,
    revision: str | None = None,
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
    device: str | torch.device | None = None,
) -> Any:
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            model_id, revision=revision, dtype=dtype, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot load model {model_id!r}: {err}") from err
    if device is not None:
        model.to(device)  # type: ignore[arg-type]
    return model


def default_device() -> torch.device:
    """This process's accelerator (LOCAL_RANK under `accelerate launch`), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def lm_head_fn(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """hidden states -> logits exactly as the model's forward does (incl. Gemma-2's final soft-capping)."""
    head: Any = model.get_output_embeddings()  # type: ignore[operator]
    if head is None:
        raise ConfigError("model has no output embeddings (LM head)")
    config = getattr(model, "config", None)
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        return lambda hidden: torch.tanh(head(hidden) / cap) * cap
    return head
