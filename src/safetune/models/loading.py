"""Load tokenizers and causal LMs (hub id or local folder), fingerprint them for cache keys, and resolve
what `--model` names (hub id, model folder, LoRA adapter or `safetune train` run) for generation."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch
import yaml
from torch import Tensor, nn

from safetune.errors import ConfigError
from safetune.models.source import ModelSource
from safetune.storage import cache_root, write_json

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


def model_fingerprint(model_id: str, revision: str | None = None, cache_dir: Path | None = None) -> str:
    """A content key for a model: a local folder hashes its config/tokenizer files and the sha256 of
    every weight file (see `weights_sha256`: computed once per file and remembered under `cache_dir`,
    default: storage.cache_root); a hub id is `id@revision`.

    Every byte of the weights counts: two weight files of one size that differ anywhere must not share
    the RDS cache or an evaluation folder.
    """
    path = Path(model_id)
    if not path.is_dir():
        return f"hub:{model_id}@{revision or 'main'}"
    digest = hashlib.sha256()
    for file in sorted(p for p in path.iterdir() if p.is_file()):
        if file.name in _SMALL_FILES:
            digest.update(file.name.encode() + file.read_bytes())
        elif file.suffix in _WEIGHT_SUFFIXES:
            digest.update(f"{file.name}:{weights_sha256(file, cache_dir)}".encode())
    return f"dir:{digest.hexdigest()}"


_HEX64 = re.compile(r"[0-9a-f]{64}")
DIGEST_CACHE = "weight-digests.json"


def weights_sha256(file: Path, cache_dir: Path | None = None) -> str:
    """The sha256 of a weight file, read once: a hub snapshot's file links to a blob named by its
    sha256 (LFS), which is used as is; otherwise the digest is remembered in a small JSON file keyed by
    absolute path, size and mtime (a changed file is hashed again), so an 8B model is hashed only once."""
    target = file.resolve()
    if file.is_symlink() and _HEX64.fullmatch(target.name) and target.parent.name == "blobs":
        return target.name
    stat = target.stat()
    cache_file = cache_root(cache_dir) / DIGEST_CACHE
    entry = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    known = _read_digests(cache_file)
    remembered = known.get(str(target))
    if isinstance(remembered, dict) and all(remembered.get(k) == v for k, v in entry.items()):
        digest = remembered.get("sha256")
        if isinstance(digest, str) and _HEX64.fullmatch(digest):
            return digest
    digest = _sha256_file(target)
    known = _read_digests(cache_file)  # again: another process may have added entries meanwhile
    known[str(target)] = {**entry, "sha256": digest}
    try:
        write_json(cache_file, known)
    except OSError as err:  # a read-only cache costs a re-hash next time, nothing else
        log.warning("cannot remember the weights digest in %s: %s", cache_file, err)
    return digest


def _read_digests(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _sha256_file(path: Path) -> str:
    """sha256 of a file, streamed in 8 MiB chunks (weights can be many GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


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


# Weight files that only torch.load (pickle, which can run code hidden in the file) or another framework
# reads: safetune loads safetensors only.
_UNSAFE_WEIGHTS = ("*.bin", "*.bin.index.json", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack")


def check_model_folder(model_id: str, what: str = "model") -> None:
    """Cheap checks of a local model or adapter folder before any work: it exists, its weights are
    safetensors (pickle-only weights are refused) and every safetensors file is whole (its header
    covers the file: a copy or download cut short is named here, not deep inside loading). A hub id
    (no such local folder) is left to loading."""
    folder = Path(model_id).expanduser()
    if not folder.is_dir():
        if folder.exists():
            raise ConfigError(f"{what} {model_id!r} is a file; expected a model folder or a hub id")
        if _looks_like_path(model_id, [Path.cwd()]):
            raise ConfigError(f"{what} folder {model_id!r} not found")
        return
    tensors = sorted(folder.glob("*.safetensors"))
    pickles = sorted({p.name for pattern in _UNSAFE_WEIGHTS for p in folder.glob(pattern)})
    if not tensors and pickles:
        raise ConfigError(
            f"{folder / pickles[0]}: weights in pickle or another framework's format only; safetune loads "
            "safetensors only (convert them, e.g. save_pretrained(..., safe_serialization=True))"
        )
    for file in tensors:
        check_safetensors(file)


def check_safetensors(file: Path) -> None:
    """Refuse a safetensors file that is not whole, naming it (safetensors' own message does not)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt"):  # reads the header only
            pass
    except (SafetensorError, OSError) as err:
        raise ConfigError(f"{file}: not a whole safetensors file ({err})") from None


def load_causal_lm(
    model_id: str,
    revision: str | None = None,
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
    device: str | torch.device | None = None,
) -> Any:
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    check_model_folder(model_id)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            model_id,
            revision=revision,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            use_safetensors=True,  # never unpickle weights (a hub repo with .bin files only is refused)
        )
    except (OSError, ValueError, SafetensorError) as err:
        raise ConfigError(f"cannot load model {model_id!r}: {err}") from err
    if device is not None:
        model.to(device)  # type: ignore[arg-type]
    return model


def default_device() -> torch.device:
    """This process's accelerator (LOCAL_RANK under `accelerate launch`), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def decoder_of(model: nn.Module) -> Any:
    """The decoder stack (embeddings .. final norm) of a causal LM, through a PEFT wrapper if any: running
    it gives the last hidden states without the LM head."""
    base: Any = model.get_base_model() if hasattr(model, "get_base_model") else model  # type: ignore[operator]
    decoder: Any = base.get_decoder()
    if decoder is None:
        raise ValueError("model has no decoder (get_decoder() returned None)")
    return decoder


def _output_head(model: nn.Module) -> tuple[Any, float | None]:
    """The model's LM head module and its final logit soft-capping (Gemma-2; None elsewhere)."""
    head: Any = model.get_output_embeddings()  # type: ignore[operator]
    if head is None:
        raise ConfigError("model has no output embeddings (LM head)")
    return head, getattr(getattr(model, "config", None), "final_logit_softcapping", None)


def _softcap(logits: Tensor, cap: float | None) -> Tensor:
    return torch.tanh(logits / cap) * cap if cap else logits


def lm_head_fn(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """hidden states -> logits exactly as the model's forward does (incl. Gemma-2's final soft-capping)."""
    head, cap = _output_head(model)
    if cap:
        return lambda hidden: _softcap(head(hidden), cap)
    return cast(Callable[[Tensor], Tensor], head)


class FrozenLmHead(nn.Module):
    """A frozen copy of a causal LM's head, with the model's final logit soft-capping (Gemma-2): what
    `lm_head_fn` computes, from weights that training does not move. The module is deep-copied on its own,
    so a head tied to the input embeddings gets its own tensor, not the live (trained) embedding."""

    def __init__(self, model: nn.Module):
        super().__init__()
        head, self.cap = _output_head(model)
        self.head = copy.deepcopy(head).requires_grad_(False).eval()

    def forward(self, hidden: Tensor) -> Tensor:
        return _softcap(self.head(hidden), self.cap)


# --- what `--model` names: hub id, model folder, or a `safetune train` run folder ------------------------

_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "tokenizer.model")


def _looks_like_path(text: str, roots: list[Path]) -> bool:
    """Whether a name that exists nowhere is a (missing) local path rather than a hub id.

    A hub id is `name` or `org/name`; anything absolute, relative (`./`, `../`, `~`), deeper than one
    slash, or whose first part is a local folder under one of `roots` is a path.
    """
    if text.startswith(("/", ".", "~")) or "\\" in text or text.count("/") > 1:
        return True
    first = text.split("/", 1)[0]
    return "/" in text and any((root / first).is_dir() for root in roots)


def _find_local(name: str, roots: list[Path]) -> Path | None:
    """`name` as given (from the cwd), else relative to each of `roots`; None if it is nowhere."""
    path = Path(name).expanduser()
    if path.exists():
        return path.resolve()
    if path.is_absolute():
        return None
    for root in roots:
        if (root / path).exists():
            return (root / path).resolve()
    return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read {path}: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return data


def _run_model_section(run_dir: Path | None) -> dict[str, Any]:
    """The model a run folder's config.yaml says it trained from: its `model` section, or the `train`
    section's model / revision in a run written before the `model` section existed ({} when none)."""
    if run_dir is None or not (run_dir / "config.yaml").is_file():
        return {}
    try:
        data = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read {run_dir / 'config.yaml'}: {err}") from err
    if not isinstance(data, dict):
        return {}
    model, train = data.get("model"), data.get("train")
    if isinstance(model, dict) and model.get("name"):
        return {"name": model.get("name"), "revision": model.get("revision")}
    if isinstance(train, dict) and train.get("model"):
        return {"name": train.get("model"), "revision": train.get("revision")}
    return {}


def _lora_base(adapter: Path, run_dir: Path | None) -> tuple[str, str | None]:
    """The base model of a LoRA adapter folder: (hub id or absolute folder, revision from config.yaml).

    The adapter records `base_model_name_or_path` as training saw it; a relative folder is looked up from
    the cwd, then from the run folder's parents, then the run's `config.yaml` `model.name` likewise.
    """
    recorded = str(_read_json(adapter / "adapter_config.json").get("base_model_name_or_path") or "")
    trained = _run_model_section(run_dir)
    trained_from = str(trained.get("name") or "")
    revision = trained.get("revision") if recorded in ("", trained_from) else None
    anchor = (run_dir if run_dir is not None else adapter).resolve()
    roots = [anchor, *anchor.parents]
    for name in dict.fromkeys(n for n in (recorded, trained_from) if n):
        found = _find_local(name, roots)
        if found is not None:
            return str(found), None
    for name in dict.fromkeys(n for n in (recorded, trained_from) if n):
        if not _looks_like_path(name, roots):
            return name, revision if isinstance(revision, str) else None
    if not recorded and not trained_from:
        raise ConfigError(f"{adapter}/adapter_config.json names no base model (base_model_name_or_path)")
    raise ConfigError(
        f"LoRA adapter {adapter} needs its base model {recorded or trained_from!r}, which was not found "
        f"(looked from the current folder and from {anchor} upwards); put the base model there"
    )


def resolve_model(model: str, revision: str | None = None) -> ModelSource:
    """Resolve `--model`: a hub id, a full model folder, a LoRA adapter folder or a `safetune train` run.

    A run folder (run.json + final/) stands for its `final/`. A folder with `adapter_config.json` is a LoRA
    adapter: base = its `base_model_name_or_path` (see `_lora_base`), tokenizer from the adapter folder
    when it holds tokenizer files (a run saves them there), else from the base; the fingerprint combines
    base and adapter. Any other folder or a hub id is the model itself. A missing path, or a folder whose
    weights are not whole safetensors (`check_model_folder`) -> ConfigError.
    """
    if not model:
        raise ConfigError("no model given (hub id, model folder or safetune train run folder)")
    path = Path(model).expanduser()
    if not path.is_dir():
        if path.exists():
            raise ConfigError(f"model {model!r} is a file; expected a model folder, a run folder or a hub id")
        if _looks_like_path(model, [Path.cwd()]):
            raise ConfigError(f"model folder {model!r} not found")
        return ModelSource(
            label=model,
            base=model,
            tokenizer=model,
            revision=revision,
            fingerprint=model_fingerprint(model, revision),
        )
    run_dir: Path | None = None
    folder = path
    if (path / "run.json").is_file() and (path / "final").is_dir():
        run_dir, folder = path, path / "final"
    else:  # the run's final/ or checkpoints/checkpoint-N given directly
        run_dir = next(
            (
                p
                for p in (path.parent, path.parent.parent)
                if (p / "run.json").is_file() or (p / "config.yaml").is_file()
            ),
            None,
        )
    folder = folder.resolve()
    check_model_folder(str(folder))  # before its weights are hashed for the fingerprint
    if not (folder / "adapter_config.json").is_file():
        if not (folder / "config.json").is_file():
            if (folder / "checkpoints").is_dir():
                raise ConfigError(
                    f"{folder} is an unfinished safetune run (no final/); pass one of its checkpoints/ folders"
                )
            raise ConfigError(f"{folder} holds neither a model (config.json) nor a LoRA adapter")
        return ModelSource(
            label=model,
            base=str(folder),
            tokenizer=str(folder),
            revision=revision,
            fingerprint=model_fingerprint(str(folder)),
        )
    base, base_revision = _lora_base(folder, run_dir)
    check_model_folder(base)
    base_revision = revision or base_revision
    has_tokenizer = any((folder / name).is_file() for name in _TOKENIZER_FILES)
    combined = hashlib.sha256(
        f"{model_fingerprint(base, base_revision)}+{model_fingerprint(str(folder))}".encode()
    ).hexdigest()
    return ModelSource(
        label=model,
        base=base,
        adapter=str(folder),
        tokenizer=str(folder) if has_tokenizer else base,
        revision=base_revision,
        fingerprint=f"lora:{combined}",
    )


def load_for_generation(
    source: ModelSource,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
) -> tuple[Any, Any]:
    """(model, tokenizer) for inference: base weights, the LoRA adapter merged in, eval mode.

    `source.revision` applies to the base (and to the tokenizer when it is read from the base).
    """
    device = default_device() if device is None else device
    model = load_causal_lm(source.base, source.revision, dtype, trust_remote_code, device)
    if source.adapter:
        from peft import PeftModel

        check_model_folder(source.adapter, "LoRA adapter")
        try:
            model = PeftModel.from_pretrained(model, source.adapter).merge_and_unload()
        except (OSError, ValueError, RuntimeError) as err:
            raise ConfigError(
                f"cannot apply LoRA adapter {source.adapter!r} to {source.base!r}: {err}"
            ) from err
    model.eval()
    tokenizer_id = source.tokenizer or source.base
    tokenizer_revision = source.revision if tokenizer_id == source.base else None
    tokenizer = load_tokenizer(tokenizer_id, tokenizer_revision, trust_remote_code)
    return model, tokenizer
