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

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from safetune import console
from safetune.data.batching import pad_batch
from safetune.data.chat import ChatRenderer
from safetune.data.records import Prompt
from safetune.methods.lsar import LsarDecomposition, lsar
from safetune.methods.reward_gap import PoolMode, pool_hidden
from safetune.models.loading import decoder_of

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
