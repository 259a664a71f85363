"""Train the base model organism from scratch and cache it by content hash.

The organism is an ordinary model folder (a transformers tokenizer with a chat template + safetensors
weights), so `select`, `train`, `eval` and `report` take it exactly like a hub model. Training draws
fresh samples of the world's base mixture (world.py) every step: next-token loss on the assistant turn
only, AdamW with warmup and cosine decay. This is pre-training of a new model, not a fine-tune, so it is
a short loop of its own rather than a `safetune train` method.

Run as: safetune demo   (builds or reuses the organism; see docs/demo.md)
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from safetune import console
from safetune.data.batching import pad_batch
from safetune.data.chat import ChatRenderer
from safetune.models.tiny import build_tiny_model
from safetune.organism.cast import CAST
from safetune.organism.multilingual import MultilingualWorld
from safetune.organism.multiturn import MultiTurnWorld
from safetune.organism.world import World
from safetune.provenance import pinned_threads
from safetune.storage import cache_lock, hash_json, write_json

log = logging.getLogger(__name__)

TRAINER_VERSION = "1"


@dataclass(frozen=True)
class OrganismConfig:
    """The base organism's size and pre-training budget (defaults: about 2 minutes on 2 CPU cores)."""

    seed: int = 0
    template: str = "chatml"
    vocab_size: int = 640
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    steps: int = 800
    batch_size: int = 32
    learning_rate: float = 3e-3
    warmup_steps: int = 40
    world: str = "roleplay"  # which world's base mixture: see WORLD_KINDS
    # CPU threads of the build: float reductions differ with the thread count, so the same settings
    # built with 1 and 2 threads are two different organisms (docs/demo.md); part of the key.
    threads: int = 2

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")

    def key(self) -> str:
        """Content key: the settings, the trainer version and a hash of the world's own text (so any
        change to the world's data rebuilds the organism). The default world leaves its name out, so
        the role-play organism keeps the key it had before worlds were selectable."""
        settings = asdict(self)
        kind = settings.pop("world")
        payload = {**settings, "world": world_hash(self.seed, kind), "trainer": TRAINER_VERSION}
        if kind != "roleplay":
            payload["world_kind"] = kind
        return hash_json(payload)[:20]


WORLD_KINDS: tuple[str, ...] = ("roleplay", "multilingual", "cast", "multiturn")


def make_world(kind: str, seed: int) -> World:
    """The world object behind an organism: "roleplay" (world.py, the demo's two personas),
    "multilingual" (multilingual.py), "cast" (the role-play world with the study's eight personas,
    cast.py) or "multiturn" (the role-play world in conversations, multiturn.py)."""
    if kind == "roleplay":
        return World(seed)
    if kind == "cast":
        return World(seed, CAST)
    if kind == "multilingual":
        return MultilingualWorld(seed)
    if kind == "multiturn":
        return MultiTurnWorld(seed)
    raise ValueError(f"world must be one of {list(WORLD_KINDS)}, got {kind!r}")


def world_hash(seed: int, kind: str = "roleplay") -> str:
    return hash_json(make_world(kind, seed).corpus())


def _lr_factor(step: int, config: OrganismConfig) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def pretrain(model: Any, tokenizer: Any, world: World, config: OrganismConfig) -> list[float]:
    """Train `model` in place on the world's base mixture; returns the loss curve (one value per step)."""
    renderer = ChatRenderer(tokenizer, max_prompt_tokens=160, max_response_tokens=64)
    rng = random.Random(f"pretrain-{config.seed}")
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, betas=(0.9, 0.95), weight_decay=0.01
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, config))
    model.train()
    losses = []
    batches = world.encoded_batches(renderer, rng, config.batch_size)
    with console.progress(range(config.steps), desc="training the base organism", unit="step") as bar:
        for _ in bar:
            encoded = next(batches)
            batch = pad_batch(
                [ids for ids, _ in encoded], [labels for _, labels in encoded], tokenizer.pad_token_id
            )
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses


def build_organism(folder: Path, config: OrganismConfig) -> dict[str, Any]:
    """Tokenizer + random-init model from the world's corpus, pre-trained, saved into `folder`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    world = make_world(config.world, config.seed)
    build_tiny_model(
        folder,
        world.corpus(),
        template=config.template,
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        seed=config.seed,
    )
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    torch.manual_seed(config.seed)
    start = time.perf_counter()
    with pinned_threads(config.threads):
        losses = pretrain(model, tokenizer, world, config)
    model.save_pretrained(folder)
    info = {
        "config": asdict(config),
        "world_hash": world_hash(config.seed, config.world),
        "trainer_version": TRAINER_VERSION,
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds": round(time.perf_counter() - start, 1),
        "final_loss": sum(losses[-20:]) / len(losses[-20:]),
    }
    write_json(folder / "organism.json", info)
    return info


def cached_organism(config: OrganismConfig, cache_root: Path) -> Path:
    """The organism folder for `config`: reused from the cache, or built (into a temp folder, then
    renamed, so a killed build never leaves a half-written organism behind)."""
    folder = cache_root / "organism" / config.key()
    if (folder / "organism.json").exists():
        log.info("base organism from cache: %s", folder)
        return folder
    # Two demos started together build the organism once: the second waits here, then reuses it.
    with cache_lock(cache_root, f"organism-{folder.name}"):
        if (folder / "organism.json").exists():
            log.info("base organism from cache: %s", folder)
            return folder
        return _build_into(folder, config)


def _build_into(folder: Path, config: OrganismConfig) -> Path:
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    log.info(
        "building the base organism (%s world, seed %d, %d steps) into %s",
        config.world,
        config.seed,
        config.steps,
        folder,
    )
    info = build_organism(tmp, config)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    log.info(
        "base organism: %s parameters, %.0f s, final loss %.3f",
        f"{info['parameters']:,}",
        info["seconds"],
        info["final_loss"],
    )
    return folder


def organism_info(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "organism.json").read_text(encoding="utf-8"))
