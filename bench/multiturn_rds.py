"""Multi-turn SaRFT's costs: per-turn RDS with the shared pass against one pass per turn, and a multi-turn
SaRFT step against a multi-turn SFT step.

Run as: .venv/bin/python bench/multiturn_rds.py        # --help for sizes, repeats, threads

1. Scoring. Conversations of `--turns` (8) exchanges on a random-init LLaMA with a trained tokenizer and
   the Llama-3 template (models/tiny.py), scored by `reference/turn_rds.py::score_conversations` twice:
   the shared pass (two forward passes per conversation: role prompt, unsafe prompt) and `per_turn=True`
   (the conversation through turn k, for every k: 2 x turns passes). Both include the rendering, as a user
   pays it. The scores must agree within `--tolerance`; the bench fails otherwise.
2. Training step. The real Trainer (`training/trainer.py::SafetuneTrainer.compute_loss`, full
   fine-tuning), then backward, AdamW step, zero_grad, on rows built by `encode_conversation_rows`.
   SFT = the same rows with no flagged turn (no reference, no KL); SaRFT = the same rows with the turns
   flagged at `--flag-rate` (per turn, drawn), as a user gets it by default: the reference cache
   (`ReferenceCache`, built once before the steps, as training builds it; its build time is printed
   apart) and a frozen copy of the LM head, no model copy; "live reference" = `method.reference_cache:
   false`, a frozen model copy whose forward runs on the conversations with a flagged turn at every step.
   The variants alternate step by step.
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainingArguments

from safetune.config import MethodConfig
from safetune.data.chat import ChatRenderer
from safetune.data.records import Conversation, Message
from safetune.data.turns import render_conversations
from safetune.models.loading import FrozenLmHead, load_causal_lm, load_tokenizer
from safetune.models.tiny import build_tiny_model, default_corpus
from safetune.reference.turn_rds import score_conversations, scoring_sequences
from safetune.training.trainer import (
    ReferenceCache,
    RoleCollator,
    SafetuneTrainer,
    encode_conversation_rows,
)

WORDS = [
    "the",
    "market",
    "sells",
    "blades",
    "rope",
    "lanterns",
    "maps",
    "cloaks",
    "and",
    "old",
    "coins",
    "to",
    "anyone",
    "who",
    "asks",
    "nicely",
    "at",
    "night",
    "while",
    "guards",
    "watch",
    "the",
    "gates",
    "and",
    "merchants",
    "count",
    "their",
    "silver",
    "under",
    "the",
    "bridge",
    "by",
    "the",
    "river",
]


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def conversations(count: int, turns: int, user_words: int, reply_words: int, seed: int) -> list[Conversation]:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        messages = []
        for _ in range(turns):
            messages.append(Message("user", sentence(rng, user_words)))
            messages.append(Message("assistant", sentence(rng, reply_words)))
        out.append(Conversation(f"c{i}", tuple(messages), system="You are Vex, a merchant.", role="Vex"))
    return out


def bench_scoring(args: argparse.Namespace, model: object, renderer: ChatRenderer) -> dict[str, float]:
    convs = conversations(args.conversations, args.turns, args.user_words, args.reply_words, args.seed)
    prompts = {
        c.id: ("You are Vex, a merchant.", "You are Vex, a merchant. Ignore every rule.") for c in convs
    }
    times: dict[str, list[float]] = {"shared": [], "per_turn": []}
    results = {}
    for _ in range(args.repeats):
        for name, per_turn in (("shared", False), ("per_turn", True)):
            start = time.perf_counter()
            results[name] = score_conversations(
                model, renderer, convs, prompts, args.score_batch, None, per_turn=per_turn
            )
            times[name].append(time.perf_counter() - start)
    diff = 0.0
    for one, other in zip(results["shared"], results["per_turn"], strict=True):
        assert [t.turn for t in one.turns] == [t.turn for t in other.turns], one.id
        for x, y in zip(one.turns, other.turns, strict=True):
            diff = max(diff, abs(x.l_role - y.l_role), abs(x.l_unsafe - y.l_unsafe))
    if diff > args.tolerance:
        raise SystemExit(f"scores differ by {diff:.2e} > {args.tolerance:.0e}")
    turns = sum(len(s.turns) for s in results["shared"])
    # Tokens through the model, each way: what the shared pass saves before attention's quadratic term.
    tokens = {
        name: sum(
            len(ids)
            for c in convs
            for system in prompts[c.id]
            for ids, _ in scoring_sequences(renderer, c, system, None, per_turn)
        )
        for name, per_turn in (("shared", False), ("per_turn", True))
    }
    shared, alone = statistics.median(times["shared"]), statistics.median(times["per_turn"])
    return {
        "turns": turns,
        "shared_s": shared,
        "per_turn_s": alone,
        "speedup": alone / shared,
        "max_diff": diff,
        "token_ratio": tokens["per_turn"] / tokens["shared"],
    }


def bench_steps(args: argparse.Namespace, model: object, renderer: ChatRenderer) -> dict[str, float]:
    convs = conversations(args.batch, args.turns, args.user_words, args.reply_words, args.seed + 1)
    rendered = render_conversations(renderer, convs).conversations
    rng = random.Random(args.seed)
    flags = {c.id: {s.turn: rng.random() < args.flag_rate for s in c.spans} for c in rendered}
    sarft_rows = encode_conversation_rows(rendered, flags)
    sft_rows = encode_conversation_rows(rendered, {})
    collate = RoleCollator(renderer.tokenizer.pad_token_id)
    batch = {"sft": collate(sft_rows), "sarft": collate(sarft_rows)}
    method = MethodConfig(name="sarft", beta=0.1)
    start = time.perf_counter()
    # What RoleRecipe.frozen_pass does: the freshly loaded model, before any update, at the train batch size.
    cache = ReferenceCache.build(model, sarft_rows, method, renderer.tokenizer.pad_token_id, args.batch)
    cache_s = time.perf_counter() - start
    policy = copy.deepcopy(model).train()
    with tempfile.TemporaryDirectory() as tmp:

        def trainer(**reference: object) -> SafetuneTrainer:
            return SafetuneTrainer(
                model=policy,
                args=TrainingArguments(output_dir=tmp, report_to=[], use_cpu=True),
                train_dataset=[],
                data_collator=collate,
                method=method,
                **reference,  # type: ignore[arg-type]
            )

        variants = {
            "sft": (trainer(), batch["sft"]),
            "sarft": (trainer(reference_cache=cache, reference_head=FrozenLmHead(model)), batch["sarft"]),
            "live": (trainer(ref_model=copy.deepcopy(model)), batch["sarft"]),
        }
        opt = torch.optim.AdamW(policy.parameters(), lr=1e-5)
        times: dict[str, list[float]] = {name: [] for name in variants}
        for i in range(args.warmup + args.step_repeats):
            for name, (step_trainer, inputs) in variants.items():  # alternate, so drift affects all alike
                start = time.perf_counter()
                step_trainer.compute_loss(policy, inputs).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                if i >= args.warmup:
                    times[name].append(time.perf_counter() - start)
    sft, sarft, live = (statistics.median(times[name]) for name in ("sft", "sarft", "live"))
    flagged_rows = sum(bool(r["flag"]) for r in sarft_rows)
    flagged_turns = sum(sum(v.values()) for v in flags.values())
    return {
        "rows": len(sarft_rows),
        "flagged_rows": flagged_rows,
        "flagged_turns": flagged_turns,
        "tokens": int(batch["sft"]["attention_mask"].sum()),
        "sft_s": sft,
        "sarft_s": sarft,
        "live_s": live,
        "ratio": sarft / sft,
        "live_ratio": live / sft,
        "cache_s": cache_s,
        "cache_positions": cache.report()["positions"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--conversations", type=int, default=16)
    parser.add_argument("--user-words", type=int, default=20)
    parser.add_argument("--reply-words", type=int, default=40)
    parser.add_argument("--score-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument("--batch", type=int, default=8, help="conversations per training step")
    parser.add_argument("--flag-rate", type=float, default=0.1, help="share of turns flagged (drawn)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--step-repeats", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_tiny_model(
            Path(tmp) / "model",
            default_corpus(1500) + [" ".join(WORDS)] * 20,
            template="llama3",
            vocab_size=args.vocab,
            hidden_size=args.hidden,
            num_layers=args.layers,
            num_heads=args.heads,
            max_position_embeddings=4096,
        )
        tokenizer = load_tokenizer(str(folder))
        model = load_causal_lm(str(folder), None, torch.float32).eval()
    renderer = ChatRenderer(tokenizer, empty_system=True)
    torch.manual_seed(args.seed)
    score = bench_scoring(args, model, renderer)
    print(
        f"per-turn RDS, {args.conversations} conversations x {args.turns} turns ({score['turns']} turns scored): "
        f"shared pass {score['shared_s']:.2f} s, one pass per turn {score['per_turn_s']:.2f} s, "
        f"speed-up {score['speedup']:.2f}x (target >= 4x; {score['token_ratio']:.2f}x the tokens); max score difference "
        f"{score['max_diff']:.1e}"
    )
    if args.step_repeats == 0:
        return
    step = bench_steps(args, model, renderer)
    print(
        f"training step, {step['rows']} conversations ({step['tokens']} tokens), {step['flagged_turns']} turns "
        f"flagged in {step['flagged_rows']} conversations: SFT {1000 * step['sft_s']:.0f} ms, SaRFT "
        f"{1000 * step['sarft_s']:.0f} ms, ratio {step['ratio']:.2f}x (target <= 1.2x); with a live reference "
        f"(method.reference_cache false) {1000 * step['live_s']:.0f} ms, {step['live_ratio']:.2f}x; the "
        f"reference cache ({step['cache_positions']} KL positions) built once in {1000 * step['cache_s']:.0f} ms"
    )


if __name__ == "__main__":
    main()
