"""Generation under a decoding-time defence (`defence.name`: rose, self-cd, safedecoding): the `hf`
backend's prompts, stop ids, batches and results, with the batched multi-stream engine of
safetune/decoding/ in place of `model.generate`.

`plan_defence` checks the defence and the backend before anything is loaded or written: only `hf` runs
a defence (vLLM's logits processors cannot keep a second stream's KV cache; `mock` has no model). Its
record (name, purpose, every resolved setting, the expert's fingerprint) goes into the eval folder's
identity and results.json's provenance, so two defences never share a folder.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from safetune import console
from safetune.config import GenerationConfig, RunConfig
from safetune.data.batching import length_sorted_batches
from safetune.decoding.engine import DefendedGenerator
from safetune.decoding.models import StreamModels, expert_source, load_defended
from safetune.decoding.registry import Defence, build_defence
from safetune.errors import ConfigError
from safetune.evaluation.backends import (
    generation_result,
    is_sampling,
    make_renderer,
    request_seed,
    stop_token_ids,
)
from safetune.evaluation.items import GenerationRequest, GenerationResult
from safetune.models.loading import default_device, resolve_dtype
from safetune.models.source import ModelSource


@dataclass(frozen=True)
class DefencePlan:
    """A checked defence and its record (provenance, and part of the eval folder's identity)."""

    defence: Defence
    record: dict[str, Any]


def plan_defence(config: RunConfig) -> DefencePlan | None:
    """The run's defence, checked with its backend (None without one); loads no model."""
    defence = build_defence(config.defence)
    if defence is None:
        return None
    backend = config.generation.backend
    if backend != "hf":
        raise ConfigError(
            f"generation.backend={backend} cannot run the decoding defence {defence.name} (each stream needs "
            "its own KV cache and the raw logits of every step): use generation.backend=hf"
        )
    record = defence.record()
    if defence.uses_expert:
        record["expert_model"] = expert_source(str(defence.settings["expert"])).to_dict()
    return DefencePlan(defence, record)


class DefendedBackend:
    """The hf backend under a defence: requests rendered with the model's chat template, sorted by their
    streams' prompt length into batches of `batch_size` queries (each query runs all its streams), one
    progress bar, each request's result cut at its first stop id as hf's. When sampling, each request
    draws from its own random stream seeded by (seed, request id), as hf's."""

    name = "hf"

    def __init__(self, generator: DefendedGenerator, config: GenerationConfig, progress: bool = True):
        self.generator, self.config, self.progress = generator, config, progress
        self.sampling = is_sampling(config)
        self.stops = set(generator.stop_ids.tolist())

    def generate(self, requests: Sequence[GenerationRequest]) -> Iterator[list[GenerationResult]]:
        lengths = [sum(map(len, self.generator.prompt_ids(r.user, r.system))) for r in requests]
        batches = length_sorted_batches(lengths, self.config.batch_size)
        with console.progress(
            total=len(requests), desc="generating", unit="prompt", enabled=self.progress
        ) as bar:
            for batch in batches:
                chosen = [requests[i] for i in batch]
                seeds = [request_seed(self.config.seed, r.id) for r in chosen] if self.sampling else None
                tokens = self.generator.generate([(r.user, r.system) for r in chosen], seeds)
                tokenizer = self.generator.tokenizer
                results = [
                    generation_result(r.id, row, self.stops, tokenizer)
                    for r, row in zip(chosen, tokens, strict=True)
                ]
                bar.update(len(batch))
                yield results


def defended_backend(
    models: StreamModels, tokenizer: Any, defence: Defence, config: GenerationConfig, progress: bool = True
) -> DefendedBackend:
    """A DefendedBackend on loaded models, with the hf backend's renderer, stop ids and pad id."""
    renderer = make_renderer(tokenizer, config)
    model_eos = getattr(getattr(models.parts[0].model, "generation_config", None), "eos_token_id", None)
    stop_ids = stop_token_ids(tokenizer, renderer, model_eos)
    pad = tokenizer.pad_token_id
    pad_id = int(pad) if pad is not None else stop_ids[0]
    generator = DefendedGenerator(models, tokenizer, renderer, defence, stop_ids, pad_id, config)
    return DefendedBackend(generator, config, progress)


def build_defended_backend(
    source: ModelSource, plan: DefencePlan, config: GenerationConfig
) -> DefendedBackend:
    """Load the streams' models for `source` and wrap them as a backend."""
    models, tokenizer = load_defended(
        source, plan.defence, resolve_dtype(config.precision), default_device(), config.trust_remote_code
    )
    return defended_backend(models, tokenizer, plan.defence, config)
