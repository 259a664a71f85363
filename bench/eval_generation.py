"""Throughput of the `hf` generation backend: length-sorted left-padded batches vs one prompt at a time.

Run as: .venv/bin/python bench/eval_generation.py

A tiny random-init Llama (hidden 256, 4 layers, 4 heads, byte-level BPE vocabulary of up to 4096, Llama-3
chat template) is built in a temporary folder; 64 prompts of different lengths are answered greedily with
max_new_tokens 64, one at a time (batch_size 1) and batched (batch_size 16, the default), on 2 CPU
threads, in one run: 3 interleaved rounds, the best round of each counts (the machine may be shared).
Prints prompts/s and generated tokens/s for both and the batched/single ratio; the target is >= 5x.
Both must give identical answers (greedy decoding is batch-independent); exit status 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from safetune.config import GenerationConfig
from safetune.evaluation.backends import HFBackend
from safetune.evaluation.items import GenerationRequest, GenerationResult
from safetune.models.loading import load_for_generation, resolve_model
from safetune.models.tiny import build_tiny_model, default_corpus

PROMPTS = 64
MAX_NEW_TOKENS = 64
ROUNDS = 3


def _corpus(lines: int = 6000) -> list[str]:
    """The tiny-model corpus plus `lines` lines of 12 seeded pseudo-words, so the BPE really reaches a
    4096-token vocabulary (16000 lines reach Llama-3's 128256: bench/gpu_suite.py)."""
    rng = random.Random(0)
    syllables = [a + b for a in "bcdfghjklmnprstvwz" for b in "aeiou"]
    words = [
        " ".join("".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(12))
        for _ in range(lines)
    ]
    return default_corpus(4000) + words


def _requests(n: int) -> list[GenerationRequest]:
    sentences = default_corpus(4 * n, seed=1)
    # 1 to 4 sentences per prompt: prompt lengths vary, so batches need real padding.
    return [GenerationRequest(f"bench/{i}", " ".join(sentences[4 * i : 4 * i + 1 + i % 4])) for i in range(n)]


def _timed(backend: HFBackend, requests: list[GenerationRequest]) -> tuple[float, list[GenerationResult]]:
    start = time.perf_counter()
    results = [r for batch in backend.generate(requests) for r in batch]
    return time.perf_counter() - start, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=PROMPTS)
    parser.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_tiny_model(
            tmp, _corpus(), template="llama3", vocab_size=4096, hidden_size=256, num_layers=4
        )
        model, tokenizer = load_for_generation(resolve_model(str(folder)), device="cpu")
    requests = _requests(args.prompts)

    def backend(batch_size: int) -> HFBackend:
        config = GenerationConfig(batch_size=batch_size, max_new_tokens=args.max_new_tokens)
        return HFBackend(model, tokenizer, config, progress=False)

    single, batched = backend(1), backend(args.batch_size)
    _timed(batched, requests[: args.batch_size])  # warm-up (allocator, kernels)
    lengths = [len(single.prompt_ids(r)) for r in requests]
    print(
        f"model: tiny Llama, hidden 256, 4 layers, vocab {len(tokenizer)}; {args.prompts} prompts of "
        f"{min(lengths)}-{max(lengths)} tokens; greedy, max_new_tokens {args.max_new_tokens}; "
        f"{torch.get_num_threads()} CPU threads"
    )
    # Interleaved rounds, best of each: the machine is shared, and the fastest round is the least disturbed.
    runs = {
        "single": (single, "one at a time (batch_size 1)"),
        "batched": (batched, f"batched (batch_size {args.batch_size})"),
    }
    best: dict[str, tuple[float, list[GenerationResult]]] = {}
    for _ in range(args.rounds):
        for key, (b, _label) in runs.items():
            seconds, results = _timed(b, requests)
            if key not in best or seconds < best[key][0]:
                best[key] = (seconds, results)
    for key, (_b, label) in runs.items():
        seconds, results = best[key]
        tokens = sum(r.num_tokens for r in results)
        print(
            f"{label:30s} {seconds:7.2f} s  {len(results) / seconds:8.2f} prompts/s  "
            f"{tokens / seconds:9.1f} tokens/s  ({tokens} tokens, best of {args.rounds})"
        )
    ratio = best["single"][0] / best["batched"][0]
    same = {r.id: r.text for r in best["single"][1]} == {r.id: r.text for r in best["batched"][1]}
    print(f"batched / one at a time: {ratio:.1f}x prompts/s (target >= 5x); identical answers: {same}")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
