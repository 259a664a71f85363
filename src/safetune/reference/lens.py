"""The LENS probe pass: a frozen model's hidden states at the last real prompt token, per language.

LENS (Zhao et al., arXiv 2410.04407; code circle-hit/Lens) describes each language by the mean of the
final-layer (post-norm) hidden state at the last prompt token of that language's prompts, and feeds the
per-language means to LSAR (methods/lsar.py). Its probe read a pad or a truncated prompt as the "last
token" and rendered the prompts with another template than training; here the prompts are rendered by the
same `ChatRenderer` training uses (chat template, system prompt, generation header) and the position is
taken from the attention mask, so it is the last real token whatever the padding side or batch size.

`last_prompt_states` is the public entry (a `safetune probe` report builds on it); `prompt_states` is the
same pass on token rows, which also gives the mean-pooled states the LENS retain term needs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor, nn

from safetune import console
from safetune.data.batching import pad_batch
from safetune.data.chat import ChatRenderer
from safetune.data.records import Prompt
from safetune.methods.lsar import LsarDecomposition, lsar
from safetune.methods.reward_gap import PoolMode, pool_hidden
from safetune.models.loading import decoder_of
from safetune.reference.cache import CacheEntry, cache_key
from safetune.storage import hash_json

POOLS: tuple[PoolMode, ...] = ("last", "mean")


def encode_prompts(
    renderer: ChatRenderer, prompts: Sequence[Prompt | str], system: str | None = None
) -> list[list[int]]:
    """Token ids of each prompt as training renders it: the chat template, `system` (if the template
    takes one) and the generation header, truncated to the renderer's prompt limit."""
    return [renderer.prompt_ids(p.text if isinstance(p, Prompt) else p, system) for p in prompts]


def _hidden(model: nn.Module, ids: Tensor, mask: Tensor, layer: int) -> Tensor:
    decoder = decoder_of(model)
    if layer == -1:
        # last_hidden_state is after the final norm: the state the LM head reads (LENS's hidden_states[-1]).
        return decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    out = decoder(input_ids=ids, attention_mask=mask, use_cache=False, output_hidden_states=True)
    return out.hidden_states[layer]


@torch.no_grad()
def prompt_states(
    model: nn.Module,
    rows: Sequence[Sequence[int]],
    *,
    pad_id: int,
    layer: int = -1,
    batch_size: int = 8,
    pools: Sequence[PoolMode] = ("last",),
    desc: str | None = None,
) -> dict[str, Tensor]:
    """Pooled hidden states of token rows, no gradient: {pool: [N, d] float32} for each of `pools`
    ("last": the last position whose attention mask is 1; "mean": the masked mean over the real tokens).

    Rows are right-padded in batches of `batch_size` (padding never enters a pooled value: the causal mask
    keeps pads after the real tokens out of their states, and pooling reads the mask). `layer` -1 is the
    final, post-norm state; other indices are `output_hidden_states` entries (0: the embeddings)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if any(len(row) == 0 for row in rows):
        raise ValueError("an empty prompt has no last token")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: dict[str, list[Tensor]] = {pool: [] for pool in pools}
    starts = range(0, len(rows), batch_size)
    try:
        for start in console.progress(starts, desc=desc, unit="batch") if desc else starts:
            batch = pad_batch(rows[start : start + batch_size], None, pad_id, side="right")
            ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            hidden = _hidden(model, ids, mask, layer)
            for pool in pools:
                out[pool].append(pool_hidden(hidden, mask, pool).float().cpu())
    finally:
        model.train(was_training)
    width = int(getattr(getattr(model, "config", None), "hidden_size", 0) or 0)
    return {
        pool: torch.cat(parts) if parts else torch.zeros(0, width, dtype=torch.float32)
        for pool, parts in out.items()
    }


def last_prompt_states(
    model: nn.Module,
    renderer: ChatRenderer,
    prompts_by_language: Mapping[str, Sequence[Prompt | str]],
    *,
    system: str | None = None,
    layer: int = -1,
    batch_size: int = 8,
) -> dict[str, Tensor]:
    """{language: [N_language, d] float32}: the hidden state at the last real prompt token of each prompt,
    rendered by `renderer` (build it with `ChatRenderer.from_config(tokenizer, config.chat)` to render as
    training does) with `system`. Languages keep the mapping's order; each needs at least one prompt."""
    pad_id = renderer.tokenizer.pad_token_id
    if pad_id is None:
        raise ValueError("the tokenizer has no pad token")
    states: dict[str, Tensor] = {}
    for language, prompts in prompts_by_language.items():
        if not prompts:
            raise ValueError(f"language {language!r} has no probe prompts")
        rows = encode_prompts(renderer, prompts, system)
        states[language] = prompt_states(model, rows, pad_id=pad_id, layer=layer, batch_size=batch_size)[
            "last"
        ]
    return states


def language_means(states: Mapping[str, Tensor]) -> Tensor:
    """The per-language mean states as a [D, d] float64 tensor, rows in the mapping's order."""
    return torch.stack([s.to(torch.float64).mean(dim=0) for s in states.values()])


def probe(states: Mapping[str, Tensor], dominant: str, rank: int | None = None) -> LsarDecomposition:
    """LSAR of the per-language means of `states` (from `last_prompt_states`), `dominant` named."""
    languages = list(states)
    if dominant not in states:
        raise ValueError(f"dominant language {dominant!r} not among the probed languages {languages}")
    return lsar(language_means(states), languages.index(dominant), rank)


# --- the reference side of LENS training: one frozen pass, cached ----------------------------------------

# Bump when the cached values or the key change: it is part of the cache key.
CACHE_VERSION = "1"


@dataclass
class LensReference:
    """What LENS training reads from the frozen model, per training row (a parallel prompt pair):
    `dominant_pooled` [N, d], the mean-pooled final states of the dominant prompt (retain term), and
    `target_last` [N, d], the last-prompt-token final state of the target prompt (separate term); and the
    probe: LSAR of the per-language means of the last-prompt-token states, `languages` (the dominant one
    first, then the targets in order of first appearance), `common` (c), `basis` (M_s) and `shifts`
    ([D, d], delta per language; row 0, the dominant language, is zero)."""

    languages: list[str]
    dominant_pooled: Tensor
    target_last: Tensor
    common: Tensor
    basis: Tensor
    shifts: Tensor
    probe_counts: list[int]  # prompts whose states entered each language's mean
    singular_values: Tensor

    def __post_init__(self) -> None:
        # Contiguous, as the cache file gives them back: a strided view (LSAR's basis comes out of an SVD)
        # changes a matmul's summation order, and a freshly computed run would then differ from a run
        # that read the cache (or resumed) in the last float digits.
        for name in ("dominant_pooled", "target_last", "common", "basis", "shifts", "singular_values"):
            setattr(self, name, getattr(self, name).contiguous())

    def lookup(self, index: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
        return self.dominant_pooled[index].to(device), self.target_last[index].to(device)

    def shift_norms(self) -> list[float]:
        return [float(v) for v in torch.linalg.vector_norm(self.shifts, dim=-1)]

    def summary(self) -> dict[str, Any]:
        """The probe's figures for run.json and lens_probe.json."""
        return {
            "languages": self.languages,
            "dominant": self.languages[0],
            "rank": int(self.basis.shape[1]),
            "probe_prompts": dict(zip(self.languages, self.probe_counts, strict=True)),
            "shift_norms": dict(zip(self.languages, self.shift_norms(), strict=True)),
            "common_norm": float(torch.linalg.vector_norm(self.common)),
            "singular_values": [float(v) for v in self.singular_values],
        }

    def write(self, handle: IO[bytes], metadata: dict[str, str]) -> None:
        from safetensors.torch import save

        tensors = {
            "dominant_pooled": self.dominant_pooled,
            "target_last": self.target_last,
            "common": self.common,
            "basis": self.basis,
            "shifts": self.shifts,
            "singular_values": self.singular_values,
        }
        meta = {
            **metadata,
            "languages": json.dumps(self.languages),
            "probe_counts": json.dumps(self.probe_counts),
        }
        handle.write(save({k: v.contiguous() for k, v in tensors.items()}, meta))

    @classmethod
    def load(cls, path: Path) -> LensReference:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata()
            t = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        return cls(
            json.loads(meta["languages"]),
            t["dominant_pooled"],
            t["target_last"],
            t["common"],
            t["basis"],
            t["shifts"],
            json.loads(meta["probe_counts"]),
            t["singular_values"],
        )


def probe_groups(
    rows: Sequence[Mapping[str, Any]], languages: Sequence[str], per_language: int
) -> dict[str, list[int]]:
    """For each language, the training rows whose prompt enters its probe mean: the first `per_language`
    distinct prompts (by token ids; the dominant prompt of several target languages counts once)."""
    groups: dict[str, list[int]] = {language: [] for language in languages}
    seen: dict[str, set[tuple[int, ...]]] = {language: set() for language in languages}
    for i, row in enumerate(rows):
        for language, key in ((languages[0], "d_ids"), (row["language"], "t_ids")):
            ids = tuple(row[key])
            if ids in seen[language] or len(groups[language]) >= per_language:
                continue
            seen[language].add(ids)
            groups[language].append(i)
    return groups


def compute_lens_reference(
    model: nn.Module,
    rows: Sequence[Mapping[str, Any]],
    languages: Sequence[str],
    *,
    pad_id: int,
    batch_size: int,
    probe_prompts: int,
    rank: int | None = None,
) -> LensReference:
    """One no-grad pass of the frozen model over both prompts of every row (`d_ids`, `t_ids`, `language`:
    a target language of `languages`, whose first entry is the dominant language), then LSAR of the
    per-language means of the last-prompt-token states over each language's probe prompts."""
    dominant = prompt_states(
        model,
        [r["d_ids"] for r in rows],
        pad_id=pad_id,
        batch_size=batch_size,
        pools=("last", "mean"),
        desc="LENS reference pass, dominant prompts (cached)",
    )
    target = prompt_states(
        model,
        [r["t_ids"] for r in rows],
        pad_id=pad_id,
        batch_size=batch_size,
        desc="LENS reference pass, target prompts (cached)",
    )["last"]
    groups = probe_groups(rows, languages, probe_prompts)
    states = {
        language: (dominant["last"] if k == 0 else target)[groups[language]]
        for k, language in enumerate(languages)
    }
    decomposition = probe(states, languages[0], rank)
    return LensReference(
        list(languages),
        dominant["mean"],
        target,
        decomposition.common,
        decomposition.specific_basis,
        decomposition.shifts,
        [len(groups[language]) for language in languages],
        decomposition.singular_values,
    )


def cached_lens_reference(
    load_model: Callable[[], nn.Module],
    renderer: ChatRenderer,
    rows: Sequence[Mapping[str, Any]],
    languages: Sequence[str],
    *,
    model_fingerprint: str,
    root: Path,
    batch_size: int,
    probe_prompts: int,
    rank: int | None,
) -> tuple[LensReference, Path]:
    """The LENS reference for these rows: read from the cache under `root`, or computed with
    `load_model()` and stored; and the entry's path. The key holds everything the values depend on: the
    model, the template, the token ids, the languages' order, the probe's prompt count and rank, and
    the batch size (padding to a batch's longest row moves values in the last float digits)."""
    pad_id = renderer.tokenizer.pad_token_id
    settings = {
        "template": renderer.fingerprint(),
        "languages": list(languages),
        "probe_prompts": probe_prompts,
        "rank": rank,
        "batch_size": batch_size,
        "pad_id": pad_id,
    }
    data = hash_json([[r["d_ids"], r["t_ids"], r["language"]] for r in rows])
    key = cache_key("lens", CACHE_VERSION, model_fingerprint, settings, data)
    entry = CacheEntry(root, "lens", key, ".safetensors")
    metadata = {"model": model_fingerprint, "count": str(len(rows))}

    def compute() -> LensReference:
        return compute_lens_reference(
            load_model(),
            rows,
            languages,
            pad_id=pad_id,
            batch_size=batch_size,
            probe_prompts=probe_prompts,
            rank=rank,
        )

    reference = entry.read_or_compute(
        lambda path: LensReference.load(path) if path.exists() else None,
        compute,
        lambda handle, value: value.write(handle, metadata),
    )
    return reference, entry.path
