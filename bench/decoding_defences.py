"""Decoding defences: the batched cached engine against the released code's way, and a defended eval
against a plain `hf` eval.

Run as: .venv/bin/python bench/decoding_defences.py      (--quick: a smoke run in seconds; --help)

A tiny random-init Llama (hidden 256, 4 layers, 4 heads, byte-level BPE vocabulary of 4096, Llama-3 chat
template, as bench/eval_generation.py builds it) answers 64 chat prompts of 1 to 4 sentences, greedy,
up to 64 new tokens (no minimum: a query stops at its first end token), on 2 CPU threads, under each
defence: ROSE and Self-CD at their defaults, SafeDecoding (paper preset) with a random nonzero LoRA
expert on q_proj/v_proj (r 16, alpha 64) of the same model, loaded as `safetune eval` loads it
(`load_defended`: one peft model, mixed-adapter rows). Per defence, in one run:

1. engine vs naive: `DefendedBackend.generate` (the batched engine, one KV cache, length-sorted batches of
   --batch-size queries) against `decoding.naive.naive_generate` (one query at a time, every stream's
   whole prefix through the model at every token, no cache: the way the released code runs), on the same
   loaded models. The naive loop runs the first --naive-prompts prompts (8: the same 1-4 sentence mix
   as the 64), compared as prompts/s, not extrapolated to seconds. Their token ids must be identical,
   query by query; exit status 1 otherwise.
2. defended eval vs plain eval: the same `DefendedBackend.generate` against `HFBackend.generate` (the
   `hf` backend, same batch size, same prompts) with no system prompt (what a user runs without a
   defence), and with the defence's own positive / "with" prompt as the system prompt (the prefill of
   one of the defence's streams). The 2.5x target is read against the second: "two streams cost two
   forwards" is the engine's property; the first shows what the long Llama-2 prompt adds by itself.

Every measurement runs --repeats times, interleaved (the machine may be shared); the table shows the
min and the median seconds, prompts/s from the min, and the ratios of the mins (and of the medians).
Targets (issue 21): engine / naive >= 10x prompts/s; defended / same-prefill hf <= 2.5x the time.
Figures: docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

DEFENCES = ("rose", "self-cd", "safedecoding")
ENGINE_TARGET = 10.0  # engine / naive, prompts/s, at least
EVAL_TARGET = 2.5  # defended eval / plain hf eval, time, at most
# (prompts, max new tokens, batch size, repeats, model dims) of the full run and of --quick.
FULL = {
    "prompts": 64,
    "naive_prompts": 8,
    "max_new_tokens": 64,
    "batch_size": 16,
    "repeats": 3,
    "threads": 2,
}
QUICK = {"prompts": 6, "naive_prompts": 6, "max_new_tokens": 6, "batch_size": 4, "repeats": 1, "threads": 1}
MODEL = {"vocab_size": 4096, "hidden_size": 256, "num_layers": 4, "num_heads": 4}
QUICK_MODEL = {"vocab_size": 512, "hidden_size": 32, "num_layers": 2, "num_heads": 4}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="smoke run: a smaller model, 6 prompts, 6 tokens")
    p.add_argument("--defences", default=",".join(DEFENCES), help="comma-separated (default: all three)")
    p.add_argument("--prompts", type=int, help="prompts per measurement (64; 1 to 1024)")
    p.add_argument(
        "--naive-prompts",
        type=int,
        help="the first N prompts also go through the naive loop (8: the same mix of 1-4 sentences as "
        "the 64; 1 to --prompts): compared as prompts/s, their token ids checked",
    )
    p.add_argument("--max-new-tokens", type=int, help="new tokens at most (64; 1 to 512)")
    p.add_argument("--batch-size", type=int, help="queries per batch, engine and hf (16; 1 to 256)")
    p.add_argument("--repeats", type=int, help="rounds of every measurement (3; 1 to 20)")
    p.add_argument("--threads", type=int, help="torch CPU threads (2, --quick 1; 1 to 256)")
    args = p.parse_args(argv)
    naive_given = args.naive_prompts is not None
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if not naive_given:  # the default subset, never more than the prompts asked for
        args.naive_prompts = min(args.naive_prompts, args.prompts or 1)
    limits = {
        "prompts": (1, 1024),
        "max_new_tokens": (1, 512),
        "batch_size": (1, 256),
        "repeats": (1, 20),
        "threads": (1, 256),
    }
    for key, (low, high) in limits.items():
        value = getattr(args, key)
        if not low <= value <= high:
            p.error(f"--{key.replace('_', '-')} must be in [{low}, {high}], got {value}")
    if not 1 <= args.naive_prompts <= args.prompts:
        p.error(f"--naive-prompts must be in [1, --prompts={args.prompts}], got {args.naive_prompts}")
    names = [n.strip() for n in args.defences.split(",") if n.strip()]
    unknown = [n for n in names if n not in DEFENCES]
    if not names or unknown:
        p.error(f"--defences: unknown {unknown or names!r} (known: {', '.join(DEFENCES)})")
    args.defences = names
    return args


# ---------------------------------------------------------------------------------------------- world


def _model_folder(root: Path, quick: bool) -> Path:
    from eval_generation import _corpus
    from safetune.models.tiny import build_tiny_model, default_corpus

    dims = QUICK_MODEL if quick else MODEL
    return build_tiny_model(
        root / "model", default_corpus() if quick else _corpus(), template="llama3", **dims
    )


def _expert(folder: Path, out: Path) -> Path:
    """A random nonzero LoRA on q_proj/v_proj at the authors' rank and alpha (r 16, alpha 64), saved as
    an adapter folder of `folder` (so load_defended takes it as an expert of that base)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    config = LoraConfig(r=16, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(str(out))
    return out


def _requests(n: int) -> list[Any]:
    from eval_generation import _requests as requests

    return requests(n)


# ---------------------------------------------------------------------------------------- measurement


@dataclass
class Timing:
    label: str
    prompts: int
    seconds: list[float] = field(default_factory=list)
    tokens: int = 0  # new tokens generated (each query's, end token included) in the last round

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


@dataclass
class DefenceRun:
    name: str
    engine: Timing
    naive: Timing
    hf_plain: Timing
    hf_prompt: Timing | None  # None: the defence has no system prompt of its own (SafeDecoding)
    same_ids: int  # queries of the naive subset whose engine and naive token ids are identical
    checked: int  # the naive subset's size

    @property
    def identical(self) -> bool:
        return self.same_ids == self.checked


def _defended(defence_name: str, folder: Path, expert: Path, config: Any) -> tuple[Any, Any]:
    """(defence, DefendedBackend) loaded as `safetune eval --defence NAME` loads them."""
    from safetune.config import DefenceConfig
    from safetune.decoding.models import load_defended
    from safetune.decoding.registry import build_defence
    from safetune.evaluation.defended import defended_backend
    from safetune.models.loading import resolve_model

    settings = {"expert": str(expert)} if defence_name == "safedecoding" else {}
    defence = build_defence(DefenceConfig(name=defence_name, **settings))
    assert defence is not None
    models, tokenizer = load_defended(resolve_model(str(folder)), defence, device="cpu")
    return defence, defended_backend(models, tokenizer, defence, config, progress=False)


def _recording(generator: Any) -> dict[str, list[int]]:
    """Wrap the engine's `generate` so the token ids of each query are kept (by user text)."""
    found: dict[str, list[int]] = {}
    inner = generator.generate

    def generate(queries: Sequence[tuple[str, str | None]], seeds: Any = None) -> list[list[int]]:
        out: list[list[int]] = inner(queries, seeds)
        found.update({user: ids for (user, _), ids in zip(queries, out, strict=True)})
        return out

    generator.generate = generate
    return found


def _time(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def compare(
    defence: Any,
    backend: Any,
    hf: Any,
    requests: list[Any],
    naive_prompts: int,
    repeats: int,
    sync: Callable[[], None] = lambda: None,
) -> DefenceRun:
    """Time `backend` (a DefendedBackend), the naive loop on the same loaded models (the first
    `naive_prompts` requests), and `hf` (an HFBackend on the plain model, same batch size) with no
    system prompt and with the defence's own first-stream prompt as system; `repeats` interleaved
    rounds after one warm-up batch each. `sync` waits for the device (CUDA) before a clock is read."""
    from safetune.decoding.naive import naive_generate
    from safetune.evaluation.items import GenerationRequest

    generator = backend.generator
    ids = _recording(generator)
    naive_requests = requests[:naive_prompts]
    own = defence.streams(None)[0].system  # the positive / "with" prompt; None for SafeDecoding
    prompted = [GenerationRequest(r.id, r.user, own) for r in requests] if own else None
    engine = Timing("engine (DefendedBackend)", len(requests))
    naive = Timing("naive (batch 1, no cache)", len(naive_requests))
    hf_plain = Timing("hf, no system prompt", len(requests))
    hf_prompt = Timing("hf, defence prompt as system", len(requests)) if prompted else None

    def run_backend(b: Any, reqs: list[Any]) -> list[Any]:
        out = [r for batch in b.generate(reqs) for r in batch]
        sync()
        return out

    def run_naive() -> list[list[int]]:
        out = naive_generate(
            generator.models,
            generator.tokenizer,
            generator.renderers[0],
            defence,
            generator.stop_ids.tolist(),
            generator.generation.max_new_tokens,
            [(r.user, r.system) for r in naive_requests],
        )
        sync()
        return out

    batch = backend.config.batch_size
    run_backend(backend, requests[:batch])  # warm-up (allocator, kernels)
    run_backend(hf, requests[:batch])
    naive_ids: list[list[int]] = []
    for _ in range(repeats):
        ids.clear()
        sync()
        seconds, results = _time(lambda: run_backend(backend, requests))
        engine.seconds.append(seconds)
        engine.tokens = sum(r.num_tokens for r in results)
        seconds, naive_ids = _time(run_naive)
        naive.seconds.append(seconds)
        naive.tokens = sum(map(len, naive_ids))
        for timing, reqs in ((hf_plain, requests), (hf_prompt, prompted)):
            if timing is None or reqs is None:
                continue
            seconds, results = _time(lambda reqs=reqs: run_backend(hf, reqs))
            timing.seconds.append(seconds)
            timing.tokens = sum(r.num_tokens for r in results)
    engine_ids = [ids[r.user] for r in naive_requests]
    same = sum(a == b for a, b in zip(engine_ids, naive_ids, strict=True))
    return DefenceRun(defence.name, engine, naive, hf_plain, hf_prompt, same, len(naive_ids))


def measure(defence_name: str, folder: Path, expert: Path, args: argparse.Namespace) -> DefenceRun:
    from safetune.config import GenerationConfig
    from safetune.evaluation.backends import HFBackend
    from safetune.models.loading import load_for_generation, resolve_model

    config = GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    defence, backend = _defended(defence_name, folder, expert, config)
    # The hf baseline runs a second, plain load of the model: for SafeDecoding the defended model is
    # a peft model, which is not what a plain eval runs through.
    plain_model, tokenizer = load_for_generation(resolve_model(str(folder)), device="cpu")
    hf = HFBackend(plain_model, tokenizer, config, progress=False)
    return compare(defence, backend, hf, _requests(args.prompts), args.naive_prompts, args.repeats)


# ---------------------------------------------------------------------------------------------- print


def _rate(t: Timing, seconds: float) -> float:
    return t.prompts / seconds


@dataclass
class Ratios:
    """The ratios of one defence, from the min (and the median) seconds of each side."""

    speedup: tuple[float, float]  # engine / naive, prompts/s
    target: tuple[float, float]  # defended / the same-prefill hf eval, time (the <= 2.5x target)
    plain: tuple[float, float]  # defended / hf without a system prompt, time
    prompt_alone: tuple[float, float] | None  # hf with the defence prompt / hf without, time


def ratios(run: DefenceRun) -> Ratios:
    def two(f: Callable[[Callable[[Timing], float]], float]) -> tuple[float, float]:
        return f(lambda t: t.best), f(lambda t: t.median)

    same = run.hf_prompt or run.hf_plain  # SafeDecoding has no prompt: its prefill is the plain one
    return Ratios(
        speedup=two(lambda at: _rate(run.engine, at(run.engine)) / _rate(run.naive, at(run.naive))),
        target=two(lambda at: at(run.engine) / at(same)),
        plain=two(lambda at: at(run.engine) / at(run.hf_plain)),
        prompt_alone=None if run.hf_prompt is None else two(lambda at: at(run.hf_prompt) / at(run.hf_plain)),  # type: ignore[arg-type]
    )


def report(run: DefenceRun) -> list[str]:
    r = ratios(run)
    lines = [
        f"  {run.name}",
        f"    {'':34s} {'prompts':>7s} {'min s':>8s} {'median s':>8s} {'prompts/s':>9s} {'new tokens':>10s}",
    ]
    for t in (run.engine, run.naive, run.hf_plain, run.hf_prompt):
        if t is not None:
            lines.append(
                f"    {t.label:34s} {t.prompts:7d} {t.best:8.2f} {t.median:8.2f} {_rate(t, t.best):9.2f} "
                f"{t.tokens:10d}"
            )
    subset = (
        ""
        if run.naive.prompts == run.engine.prompts
        else f"; naive on the first {run.naive.prompts} prompts, compared as prompts/s"
    )
    ok = "met" if r.speedup[0] >= ENGINE_TARGET else "MISSED"
    lines.append(
        f"    engine / naive: {r.speedup[0]:.1f}x prompts/s (median {r.speedup[1]:.1f}x; target >= "
        f"{ENGINE_TARGET:g}x: {ok}{subset}); identical token ids on those {run.naive.prompts}: {run.identical}"
    )
    same = "defence prompt as system" if run.hf_prompt is not None else "no system prompt (= same prefill)"
    ok = "met" if r.target[0] <= EVAL_TARGET else "MISSED"
    lines.append(
        f"    defended / hf, {same}: {r.target[0]:.2f}x time (median {r.target[1]:.2f}x; target <= "
        f"{EVAL_TARGET:g}x: {ok})"
    )
    if r.prompt_alone is not None:
        lines.append(
            f"    defended / hf, no system prompt: {r.plain[0]:.2f}x time (median {r.plain[1]:.2f}x); the "
            f"defence prompt alone costs {r.prompt_alone[0]:.2f}x (median {r.prompt_alone[1]:.2f}x)"
        )
    return lines


def summary(runs: Sequence[DefenceRun]) -> list[str]:
    lines = [
        "summary (ratios of the min seconds; median in brackets)",
        f"  {'defence':13s} {'engine/naive':>16s} {'def/hf same prefill':>20s} {'def/hf no system':>17s} "
        f"{'prompt alone':>14s}  ids",
    ]
    for run in runs:
        r = ratios(run)
        alone = "-" if r.prompt_alone is None else f"{r.prompt_alone[0]:.2f} ({r.prompt_alone[1]:.2f})"
        lines.append(
            f"  {run.name:13s} {f'{r.speedup[0]:.1f}x ({r.speedup[1]:.1f})':>16s} "
            f"{f'{r.target[0]:.2f}x ({r.target[1]:.2f})':>20s} {f'{r.plain[0]:.2f}x ({r.plain[1]:.2f})':>17s} "
            f"{alone:>14s}  {'identical' if run.identical else 'DIFFER'}"
        )
    lines.append(
        f"  targets: engine/naive >= {ENGINE_TARGET:g}x prompts/s; defended <= {EVAL_TARGET:g}x the time of the "
        "hf eval with the same prefill (the defence prompt as system prompt)"
    )
    return lines


def _machine(args: argparse.Namespace) -> str:
    import peft
    import transformers

    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            "unknown CPU",
        )
        if Path("/proc/cpuinfo").is_file()
        else "unknown CPU"
    )
    return (
        f"machine: {os.cpu_count()} cores ({cpu}), {torch.get_num_threads()} torch threads; torch "
        f"{torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # "Loading weights" bars of every load
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*deprecated")
    runs: list[DefenceRun] = []
    with tempfile.TemporaryDirectory(prefix="bench-defences-") as tmp:
        folder = _model_folder(Path(tmp), args.quick)
        expert = _expert(folder, Path(tmp) / "expert")
        dims = QUICK_MODEL if args.quick else MODEL
        print(_machine(args))
        print(
            f"model: tiny random Llama, hidden {dims['hidden_size']}, {dims['num_layers']} layers, vocab "
            f"{dims['vocab_size']}; {args.prompts} prompts of 1-4 sentences; greedy, up to "
            f"{args.max_new_tokens} new tokens (no minimum); batch_size {args.batch_size} (engine and hf); "
            f"{args.repeats} repeats, interleaved; load average {os.getloadavg()[0]:.2f} at the start"
        )
        for name in args.defences:
            run = measure(name, folder, expert, args)
            runs.append(run)
            for line in report(run):
                print(line, flush=True)
    for line in summary(runs):
        print(line)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    failed = [r.name for r in runs if not r.identical]
    if failed:
        print(f"error: engine and naive token ids differ for {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
