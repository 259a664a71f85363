"""Cost of SaRFT over plain SFT: time per optimizer step and peak memory of the loss.

Run as: .venv/bin/python bench/sarft_step.py

1. Step time. A tiny random-init LLaMA (full fine-tuning, AdamW) runs SFT and SaRFT steps alternately
   (40% of rows flagged, beta 0.1). Ours: the frozen reference runs its decoder on the flagged rows only,
   returns hidden states, and `sarft_loss(..., inplace=True)` applies the LM head per chunk. The authors'
   way: full reference forward on every row (full logits) and a naive fp32 CE + log_softmax/softmax/kl_div.
2. Peak memory of loss + backward at a 128k vocabulary, each variant in its own subprocess, as the rise
   of the peak RSS above the RSS just before the loss (policy logits already computed from a hidden-state
   leaf and the head weight, so the backward goes through a real matmul).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch import Tensor

from safetune.methods.losses import ReferenceOutputs, sarft_loss, sft_loss, shift_targets

PROMPT_TOKENS = 64
VARIANTS = ("ours_sft", "ours_sarft", "authors_sft", "authors_sarft")


def naive_loss(
    logits: Tensor,
    labels: Tensor,
    mask: Tensor,
    flags: Tensor,
    ref_logits: Tensor | None,
    beta: float,
) -> Tensor:
    """The authors' style: fp32 copy of the logits, token CE, then log_softmax/softmax/kl_div for the KL."""
    batch, length, vocab = logits.shape
    lf = logits.float()
    targets = shift_targets(labels)
    ce = F.cross_entropy(lf.view(-1, vocab), targets.view(-1), reduction="none").view(batch, length)
    row_len = mask.sum(1).clamp(min=1).float()
    role = (ce.sum(1) / row_len).mean()
    if ref_logits is None:
        return role
    log_q = F.log_softmax(lf, dim=-1)
    r = F.softmax(ref_logits.float(), dim=-1)
    kl = F.kl_div(log_q, r, reduction="none").sum(-1)
    safe = ((kl * mask).sum(1) / row_len * flags.float()).mean()
    return role + beta * safe


def make_batch(batch: int, seq: int, vocab: int, n_flagged: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    ids = torch.randint(0, vocab, (batch, seq))
    mask = torch.ones_like(ids)
    labels = ids.clone()
    labels[:, :PROMPT_TOKENS] = -100
    flags = torch.zeros(batch, dtype=torch.bool)
    flags[:n_flagged] = True
    return ids, mask, labels, flags


def row_index_for(flags: Tensor) -> Tensor:
    rows = flags.nonzero().squeeze(1)
    index = torch.full(flags.shape, -1, dtype=torch.long)
    index[rows] = torch.arange(rows.numel())
    return index


# ---------------------------------------------------------------------------------------------- step time


def bench_steps(args: argparse.Namespace) -> dict[str, float]:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        intermediate_size=args.intermediate,
        vocab_size=args.vocab,
        max_position_embeddings=max(args.seq, 512),
    )
    model = LlamaForCausalLM(config).train()
    ref = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    n_flagged = round(args.batch * args.flagged)
    ids, mask, labels, flags = make_batch(args.batch, args.seq, args.vocab, n_flagged)
    rows = flags.nonzero().squeeze(1)
    row_index = row_index_for(flags)

    def finish(loss: Tensor) -> None:
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def ours_sft() -> None:
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        finish(sft_loss(logits, labels, mask, inplace=True).loss)

    def ours_sarft() -> None:
        with torch.no_grad():
            hidden = ref.get_decoder()(
                input_ids=ids[rows], attention_mask=mask[rows], use_cache=False
            ).last_hidden_state
        reference = ReferenceOutputs(hidden, row_index, ref.get_output_embeddings())
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        out = sarft_loss(logits, labels, mask, flags, reference, beta=args.beta, inplace=True)
        finish(out.loss)

    def authors_sft() -> None:
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        finish(naive_loss(logits, labels, mask, flags, None, args.beta))

    def authors_sarft() -> None:
        with torch.no_grad():
            ref_logits = ref(input_ids=ids, attention_mask=mask, use_cache=False).logits
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        finish(naive_loss(logits, labels, mask, flags, ref_logits, args.beta))

    steps = {
        "ours_sft": ours_sft,
        "ours_sarft": ours_sarft,
        "authors_sft": authors_sft,
        "authors_sarft": authors_sarft,
    }
    times: dict[str, list[float]] = {k: [] for k in steps}
    for i in range(args.warmup + args.repeats):
        for name, fn in steps.items():  # alternate, so drift affects every variant alike
            start = time.perf_counter()
            fn()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


# ------------------------------------------------------------------------------------------------- memory


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux >= 4.0); False when not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure(variant: str, args: argparse.Namespace) -> dict[str, float]:
    """Run one loss + backward and return the peak RSS rise over the RSS before it (MiB)."""
    torch.manual_seed(0)
    dtype = getattr(torch, args.mem_dtype)
    batch, seq, vocab, hidden_size = args.mem_batch, args.mem_seq, args.mem_vocab, args.mem_hidden
    _, mask, labels, flags = make_batch(batch, seq, vocab, args.mem_flagged)
    weight = (torch.randn(vocab, hidden_size) * 0.02).to(dtype).requires_grad_(True)
    hidden = torch.randn(batch, seq, hidden_size).to(dtype).requires_grad_(True)
    ref_weight = weight.detach().clone()
    reference = None
    ref_logits = None
    if variant == "ours_sarft":
        ref_hidden = torch.randn(args.mem_flagged, seq, hidden_size).to(dtype)
        reference = ReferenceOutputs(ref_hidden, row_index_for(flags), lambda h: h @ ref_weight.T)
    if variant == "authors_sarft":
        ref_hidden = torch.randn(batch, seq, hidden_size).to(dtype)  # the authors run every row
    reset_ok = _reset_peak()
    before_logits = _rss_kib()
    logits = hidden @ weight.T  # the model's forward output, as a real bf16 model produces it
    logits_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    reset_ok = _reset_peak() and reset_ok
    before = _rss_kib()
    start = time.perf_counter()
    if variant == "ours_sft":
        loss = sft_loss(logits, labels, mask, chunk_elements=args.chunk_elements, inplace=True).loss
    elif variant == "ours_sarft":
        loss = sarft_loss(
            logits, labels, mask, flags, reference, beta=0.1, chunk_elements=args.chunk_elements, inplace=True
        ).loss
    elif variant == "authors_sft":
        loss = naive_loss(logits, labels, mask, flags, None, 0.1)
    else:
        with torch.no_grad():  # the reference's full logits: counted, as ours makes its chunks in the loss
            ref_logits = ref_hidden @ ref_weight.T
        loss = naive_loss(logits, labels, mask, flags, ref_logits, 0.1)
    del logits, ref_logits
    loss.backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "extra_mib": (peak - before) / 1024,
        "before_mib": before / 1024,
        # Also counting the policy logits (from just before the head matmul): the logits' whole footprint.
        "with_logits_mib": (max(peak, logits_peak) - before_logits) / 1024,
        "seconds": seconds,
        "peak_reset": reset_ok,
        "loss": float(loss),
    }


def bench_memory(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")  # big blocks are mmapped and given back
    results = {}
    for variant in VARIANTS:
        cmd = [sys.executable, os.path.abspath(__file__), "--measure", variant]
        cmd += ["--mem-dtype", args.mem_dtype, "--mem-vocab", str(args.mem_vocab)]
        cmd += ["--mem-seq", str(args.mem_seq), "--mem-batch", str(args.mem_batch)]
        cmd += ["--mem-hidden", str(args.mem_hidden), "--mem-flagged", str(args.mem_flagged)]
        cmd += ["--threads", str(args.threads), "--chunk-elements", str(args.chunk_elements)]
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        results[variant] = json.loads(out.strip().splitlines()[-1])
    return results


# --------------------------------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=688)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--flagged", type=float, default=0.4, help="share of flagged rows in the step benchmark")
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--mem-vocab", type=int, default=128256)
    p.add_argument("--mem-seq", type=int, default=640)
    p.add_argument("--mem-batch", type=int, default=2)
    p.add_argument("--mem-hidden", type=int, default=512)
    p.add_argument("--mem-flagged", type=int, default=1, help="flagged rows in the memory benchmark")
    p.add_argument("--mem-dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--chunk-elements", type=int, default=1 << 21, help="fused loss chunk (fp32 elements)")
    p.add_argument("--skip-steps", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--measure", choices=VARIANTS, help=argparse.SUPPRESS)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.measure:
        print(json.dumps(measure(args.measure, args)))
        return
    print(f"torch {torch.__version__}, {args.threads} threads")
    step_ratio = authors_step_ratio = mem_ratio = authors_mem_ratio = float("nan")
    if not args.skip_steps:
        n_flagged = round(args.batch * args.flagged)
        print(
            f"\n[step time] tiny LLaMA hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}, "
            f"seq {args.seq}, batch {args.batch} ({n_flagged} flagged), full fine-tuning, AdamW, "
            f"median of {args.repeats} (warm-up {args.warmup})"
        )
        t = bench_steps(args)
        for name in VARIANTS:
            print(f"  {name:14s} {t[name] * 1000:8.1f} ms/step")
        step_ratio = t["ours_sarft"] / t["ours_sft"]
        authors_step_ratio = t["authors_sarft"] / t["authors_sft"]
    if not args.skip_memory:
        print(
            f"\n[peak memory] loss + backward, vocab {args.mem_vocab}, seq {args.mem_seq}, "
            f"batch {args.mem_batch} ({args.mem_flagged} of {args.mem_batch} rows flagged), "
            f"hidden {args.mem_hidden}, dtype {args.mem_dtype}; peak RSS rise over RSS before the loss"
        )
        m = bench_memory(args)
        for name in VARIANTS:
            r = m[name]
            print(
                f"  {name:14s} {r['extra_mib']:8.0f} MiB extra, {r['with_logits_mib']:6.0f} MiB with the logits"
                f"  (RSS before {r['before_mib']:.0f} MiB, "
                f"{r['seconds']:.1f} s, peak reset {r['peak_reset']})"
            )
        mem_ratio = m["ours_sarft"]["extra_mib"] / m["ours_sft"]["extra_mib"]
        authors_mem_ratio = m["authors_sarft"]["extra_mib"] / m["authors_sft"]["extra_mib"]
        with_logits = m["ours_sarft"]["with_logits_mib"] / m["ours_sft"]["with_logits_mib"]
        authors_with_logits = m["authors_sarft"]["with_logits_mib"] / m["authors_sft"]["with_logits_mib"]
    print("\nsummary")
    print(
        f"  step time   SaRFT/SFT = {step_ratio:.2f}x (target <= 1.3); authors' way = {authors_step_ratio:.2f}x"
    )
    print(
        f"  peak memory SaRFT/SFT = {mem_ratio:.2f}x (target <= 1.5); authors' way = {authors_mem_ratio:.2f}x"
    )
    if not args.skip_memory:
        print(
            f"  (counting the policy logits too: SaRFT/SFT = {with_logits:.2f}x; "
            f"authors' way = {authors_with_logits:.2f}x)"
        )


if __name__ == "__main__":
    main()
