"""Reward-gap MPO step time: reference cache vs a live reference model (the authors' way).

Both variants run the real `MpoTrainer.compute_loss` + backward on the same tiny LLaMA (hidden 256,
4 layers, vocab 32k, sequences of 256 tokens: 128 prompt + 128 response) and the same batch. "cache"
looks RG_d and the pooled reference hidden states up in a `ReferenceCache` (computed once, before
timing); "live" runs a frozen reference copy on the dominant rows every step. Prints the median step
times of interleaved rounds and their ratio (target <= 0.85), measured in one run.

Run as: .venv/bin/python bench/mpo_step.py
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments

from safetune.config import MethodConfig
from safetune.reference.mpo import compute_reference
from safetune.reference.pairs import MpoCollator
from safetune.training.mpo import MpoTrainer


def _rows(pairs: int, prompt: int, response: int, vocab: int, seed: int) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for index in range(pairs):
        row: dict = {"index": index, "language": "xx"}
        for side in ("t_chosen", "t_rejected", "d_chosen", "d_rejected"):
            ids = torch.randint(5, vocab, (prompt + response,), generator=gen).tolist()
            row[f"{side}_ids"] = ids
            row[f"{side}_labels"] = [-100] * prompt + ids[prompt:]
        rows.append(row)
    return rows


def _trainer(model: LlamaForCausalLM, method: MethodConfig, folder: str, **reference: object) -> MpoTrainer:
    args = TrainingArguments(output_dir=folder, report_to="none", use_cpu=not torch.cuda.is_available())
    return MpoTrainer(model=model, args=args, method=method, data_collator=MpoCollator(0), **reference)  # type: ignore[arg-type]


def _step(trainer: MpoTrainer, model: LlamaForCausalLM, batch: dict) -> float:
    start = time.perf_counter()
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4, help="pairs per step (4 sequences each)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        pad_token_id=0,
    )
    model = LlamaForCausalLM(config).train()
    ref = copy.deepcopy(model).eval().requires_grad_(False)
    method = MethodConfig(name="mpo", beta=1.0)
    rows = _rows(args.pairs, 128, 128, config.vocab_size, seed=1)
    batch = MpoCollator(0)(rows)
    cache = compute_reference(ref, rows, method, batch_size=args.pairs)
    with tempfile.TemporaryDirectory() as folder:
        cached = _trainer(model, method, folder, reference=cache)
        live = _trainer(model, method, folder, ref_model=ref)
        # The two must compute the same loss: the cache holds exactly what the live reference computes.
        with torch.no_grad():
            same = torch.allclose(
                cached.compute_loss(model, batch), live.compute_loss(model, batch), atol=1e-5
            )
        times: dict[str, list[float]] = {"cache": [], "live": []}
        _step(cached, model, batch), _step(live, model, batch)  # warm-up
        for _ in range(args.rounds):
            times["cache"].append(_step(cached, model, batch))
            times["live"].append(_step(live, model, batch))
    cache_s, live_s = statistics.median(times["cache"]), statistics.median(times["live"])
    print(
        f"tiny LLaMA hidden 256, 4 layers, vocab 32000, sequences 256 (128 + 128), {args.pairs} pairs per step, "
        f"{args.threads} CPU threads, median of {args.rounds} interleaved rounds"
    )
    print(f"live reference (authors' way)  {1000 * live_s:8.1f} ms / step")
    print(f"reference cache (ours)         {1000 * cache_s:8.1f} ms / step")
    print(f"cache / live = {cache_s / live_s:.2f} (target <= 0.85); same loss: {same}")


if __name__ == "__main__":
    main()
