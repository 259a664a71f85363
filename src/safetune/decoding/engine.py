"""One batched decoding loop for every defence: queries x streams, one KV cache per model object.

Each query runs its defence's streams (e.g. ROSE's positive and reverse prompts) as rows of one batch:

- every stream's prompt is rendered with the caller's ChatRenderer (exactly one BOS, as the hf backend),
  left-padded, with explicit position ids = cumsum(mask) - 1, so a row's positions do not depend on the
  other rows' lengths;
- the prefill keeps only the last position's logits (`logits_to_keep=1`);
- at each step the rows' raw fp32 logits are combined by the defence's rule before any sampling warper,
  one token is chosen per query (greedy, or temperature + top-p sampling from the query's own random
  stream) and appended to every stream of that query: the conditioning context is the emitted text;
- a query stops at its first stop id (eos and end-of-turn) or after max_new_tokens; finished queries and
  the streams a defence no longer needs (SafeDecoding's expert after m tokens) leave the batch and the
  caches (`batch_select_indices`), so they cost nothing afterwards.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from safetune.config import GenerationConfig
from safetune.data.chat import ChatRenderer
from safetune.decoding.models import StreamModels
from safetune.decoding.registry import Defence
from safetune.decoding.sampling import gumbel_scores
from safetune.errors import ConfigError


def sample(scores: Tensor, generators: Sequence[torch.Generator], temperature: float, top_p: float) -> Tensor:
    """One token per row from softmax(scores / T) within the top-p nucleus, drawn as the hf backend draws
    (decoding/sampling.py), so a query's sample depends on its seed alone."""
    return gumbel_scores(scores, generators, temperature, top_p).argmax(-1)


def stream_renderers(renderer: ChatRenderer) -> tuple[ChatRenderer, ChatRenderer]:
    """(the caller's renderer, the same with empty system turns): a stream whose system prompt is ""
    gets an empty system turn (Self-CD's `without=empty`), whatever the caller's setting."""
    empty = copy.copy(renderer)
    empty.empty_system = True
    return renderer, empty


def stream_prompt_ids(
    renderers: tuple[ChatRenderer, ChatRenderer], user: str, system: str | None
) -> list[int]:
    plain, empty = renderers
    return (empty if system == "" else plain).prompt_ids(user, system)


class DefendedGenerator:
    """Generates with a defence: `generate(queries, seeds)` -> the new token ids of each query, up to and
    including its first stop id.

    `models` computes the streams (decoding/models.py), `stop_ids` the eos and end-of-turn ids (the hf
    backend's `stop_token_ids`), `pad_id` the id left padding writes (masked out everywhere), and
    `generation` the decoding settings (max_new_tokens, do_sample, temperature, top_p).
    """

    def __init__(
        self,
        models: StreamModels,
        tokenizer: Any,
        renderer: ChatRenderer,
        defence: Defence,
        stop_ids: Sequence[int],
        pad_id: int,
        generation: GenerationConfig,
    ):
        models.check(defence)
        vocab = int(models.parts[0].model.config.vocab_size)
        common = defence.settings.get("num_common")
        if isinstance(common, int) and common > vocab:
            raise ConfigError(f"defence.num_common={common} is more than the vocabulary's {vocab} tokens")
        if not stop_ids:
            raise ValueError("no stop token ids")
        self.models, self.tokenizer, self.defence = models, tokenizer, defence
        self.renderers = stream_renderers(renderer)
        self.stop_ids = torch.tensor(sorted(set(stop_ids)), dtype=torch.long)
        self.pad_id, self.generation = int(pad_id), generation
        self.sampling = generation.do_sample and generation.temperature > 0

    def prompt_ids(self, user: str, own_system: str | None) -> list[list[int]]:
        """Each stream's prompt ids for one query."""
        return [
            stream_prompt_ids(self.renderers, user, stream.system)
            for stream in self.defence.streams(own_system)
        ]

    @torch.inference_mode()
    def generate(
        self, queries: Sequence[tuple[str, str | None]], seeds: Sequence[int] | None = None
    ) -> list[list[int]]:
        """queries: (user text, the request's own system prompt or None); seeds: one per query when
        sampling (the hf backend's `request_seed`), ignored when greedy."""
        if not queries:
            return []
        if self.sampling and (seeds is None or len(seeds) != len(queries)):
            raise ValueError("sampling needs one seed per query")
        device = self.models.device
        prompts = [self.prompt_ids(user, system) for user, system in queries]
        generators = (
            [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
            if self.sampling and seeds is not None
            else []
        )
        streams = list(self.defence.needed(0))
        kinds = list(self.defence.kinds)
        rows = [prompts[q][s] for q in range(len(queries)) for s in streams]
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, ids in enumerate(rows):
            input_ids[i, width - len(ids) :] = torch.tensor(ids)
            mask[i, width - len(ids) :] = 1
        input_ids, mask = input_ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp_(min=0)
        row_kinds = [kinds[s] for _ in queries for s in streams]
        logits = self.models.prefill(row_kinds, input_ids, mask, positions)
        next_position = positions[:, -1:] + 1

        active = list(range(len(queries)))  # query indices still generating, in row order
        outputs: list[list[int]] = [[] for _ in queries]
        stop_ids = self.stop_ids.to(device)
        limit = self.generation.max_new_tokens
        step = 0
        while True:
            scores = self.defence.combine(logits.view(len(active), len(streams), -1), step)
            if self.sampling:
                chosen = sample(
                    scores,
                    [generators[q] for q in active],
                    self.generation.temperature,
                    self.generation.top_p,
                )
            else:
                chosen = scores.argmax(-1)
            for q, token in zip(active, chosen.tolist(), strict=True):
                outputs[q].append(token)
            going = ~torch.isin(chosen, stop_ids)
            if len(outputs[active[0]]) >= limit:
                break
            step += 1
            needed = list(self.defence.needed(step))
            keep_queries = going.nonzero().flatten().tolist()
            if not keep_queries:
                break
            keep_streams = [streams.index(s) for s in needed]
            if len(keep_queries) < len(active) or needed != streams:
                keep = torch.tensor(
                    [q * len(streams) + s for q in keep_queries for s in keep_streams], device=device
                )
                self.models.keep(keep)
                mask, next_position = mask[keep], next_position[keep]
                chosen = chosen[keep_queries]
                active = [active[q] for q in keep_queries]
                streams = needed
            tokens = chosen.repeat_interleave(len(streams)).unsqueeze(-1)
            mask = torch.cat([mask, mask.new_ones(len(mask), 1)], dim=-1)
            logits = self.models.step(tokens, mask, next_position)
            next_position = next_position + 1
        return outputs
