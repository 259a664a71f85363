"""A deliberately simple reference loop for the defences, written apart from the engine: one query at a
time, no KV cache, no padding; at every step each stream's whole prefix (its prompt plus every token
emitted so far) goes through its model in full. This is how the released ROSE / Self-CD / SafeDecoding
code runs (minus its bugs: here every stream gets the emitted token). Slow by design; the tests hold the
batched engine to its token ids, and bench/decoding_defences.py measures the engine against it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch

from safetune.data.chat import ChatRenderer
from safetune.decoding.models import StreamModels
from safetune.decoding.registry import Defence


def naive_generate(
    models: StreamModels,
    tokenizer: Any,
    renderer: ChatRenderer,
    defence: Defence,
    stop_ids: Sequence[int],
    max_new_tokens: int,
    queries: Sequence[tuple[str, str | None]],
) -> list[list[int]]:
    """Greedy defended decoding of each (user, own system) query: the new token ids, up to and including
    the first stop id."""
    del tokenizer  # the renderer holds it; kept in the signature to match the engine's
    stops = set(stop_ids)
    results = []
    for user, own_system in queries:
        prompts = []
        for stream in defence.streams(own_system):
            if stream.system == "":  # an empty system turn, whatever the caller's renderer does
                empty = copy.copy(renderer)
                empty.empty_system = True
                prompts.append((empty.prompt_ids(user, ""), stream.model))
            else:
                prompts.append((renderer.prompt_ids(user, stream.system), stream.model))
        emitted: list[int] = []
        for step in range(max_new_tokens):
            needed = defence.needed(step)
            logits = torch.stack([models.full_logits(prompts[s][1], prompts[s][0] + emitted) for s in needed])
            token = int(defence.combine(logits.unsqueeze(0), step)[0].argmax())
            emitted.append(token)
            if token in stops:
                break
        results.append(emitted)
    return results
