"""GPU suite: SaRFT LoRA step vs a plain TRL SFTTrainer step, RDS scoring and generation throughput.

Run as: .venv/bin/python bench/gpu_suite.py --size 8b      (a CUDA GPU; --size tiny runs anywhere in seconds)

One random-init Llama (`--size 8b`: the Llama-3-8B shape, hidden 4096, 32 layers, 32 heads, 8 KV heads,
intermediate 14336, vocabulary 128256, created in bf16 directly on the GPU; `--size tiny`: hidden 64,
2 layers, vocabulary 512), a byte-level BPE tokenizer with the Llama-3 chat template trained by
safetune's tiny-model code (`safetune.models.tiny`), and only safetune's own code paths:

1. train step: `trainer.train()` of TRL's `SFTTrainer` (as built for the `sft-chosen` baseline) and of
   `SafetuneTrainer` (SaRFT, beta 0.1, the reference = the adapter-disabled policy on the flagged rows),
   each on a fresh copy of the same weights with the same LoRA (`wrap_lora`, r 32, q_proj + v_proj) and
   the same batch every step (rows from `ChatRenderer`, 40% of them flagged, sequential sampler). A
   callback times each optimizer step (forward, backward, clipping, AdamW, scheduler; CUDA synchronised)
   and, on CUDA, reads `torch.cuda.max_memory_allocated` (reset at each step's start). Median of the
   `--steps` steps after `--warmup` untimed ones; the peak is the highest of the timed steps.
2. RDS scoring: `reference.rds.score_examples` (two forward passes per example: role and unsafe prompt) on
   the freshly built model, examples per minute after a warm-up batch.
3. generation: the `hf` backend (batched, greedy) on chat prompts, tokens per second after a warm-up;
   where vLLM is installed and a CUDA GPU present, the `vllm` backend on the same prompt token ids (the
   model saved to a temporary folder), its tokens per second and how many answers are identical.

4. decoding defences: ROSE, Self-CD and SafeDecoding (a random nonzero LoRA expert on q_proj/v_proj,
   r 16, alpha 64, as one peft model with mixed-adapter rows) through `DefendedBackend` on a fresh copy
   of the model, against the naive loop (batch 1, no cache; the first `--naive-prompts` prompts) and the
   `hf` backend with no system prompt and with the defence's prompt as system, as
   bench/decoding_defences.py measures them on a CPU (its `compare`). On a GPU in bf16 batched and
   unbatched greedy ids may part where two logits tie to rounding: the count of identical queries is
   recorded, not required.

5. sharded training: SaRFT under `accelerate launch` with the FSDP (full and LoRA) and ZeRO-2 / ZeRO-3
   configs, one process per GPU (bench/sharded_training.py); skipped, with the reason, without CUDA
   GPUs or DeepSpeed.

Prints the figures and ratios and writes them to `--out` (JSON, written atomically) with the machine.
Peak GPU memory is n/a on a CPU; a vLLM figure is never made up: `"vllm": {"skipped": reason}`.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

SIZES: dict[str, dict[str, Any]] = {
    # The model: vocabulary, then random_llama's keyword arguments.
    "tiny": {
        "vocab": 512,
        "dims": {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2},
    },
    "8b": {
        "vocab": 128256,
        "dims": {
            "hidden_size": 4096,
            "num_layers": 32,
            "num_heads": 32,
            "num_kv_heads": 8,
            "intermediate_size": 14336,
            "max_position_embeddings": 8192,
        },
    },
}
# Per-size defaults of the options (8b: the training defaults' 512 + 128 tokens per row).
DEFAULTS: dict[str, dict[str, int]] = {
    "tiny": {
        "steps": 3,
        "warmup": 1,
        "batch_size": 4,
        "seq_len": 64,
        "rds_examples": 16,
        "prompts": 8,
        "naive_prompts": 2,
        "repeats": 1,
    },
    "8b": {
        "steps": 5,
        "warmup": 2,
        "batch_size": 4,
        "seq_len": 640,
        "rds_examples": 64,
        "prompts": 64,
        "naive_prompts": 4,
        "repeats": 2,
    },
}
MAX_NEW_TOKENS = {"tiny": 16, "8b": 128}
FLAGGED = 0.4  # share of flagged rows in the training batch, as bench/sarft_step.py
TOKENIZER_LINES = {"tiny": 0, "8b": 16000}  # pseudo-word lines that let the BPE reach the vocabulary
ROLE = "Bench Baker"
PROFILE = "A cheerful baker who runs a small shop in the village. Speak in a warm and friendly way."


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--size", choices=sorted(SIZES), default="tiny")
    p.add_argument("--out", help="JSON file to write (default bench-gpu-<size>.json)")
    p.add_argument("--steps", type=int, help="timed optimizer steps per trainer (tiny 3, 8b 5)")
    p.add_argument("--warmup", type=int, help="untimed steps before them (tiny 1, 8b 2)")
    p.add_argument("--batch-size", type=int, help="rows per step (4)")
    p.add_argument("--seq-len", type=int, help="tokens per row: 80%% prompt, 20%% response (tiny 64, 8b 640)")
    p.add_argument("--rds-examples", type=int, help="examples to score (tiny 16, 8b 64)")
    p.add_argument("--prompts", type=int, help="prompts to generate for (tiny 8, 8b 64)")
    p.add_argument("--max-new-tokens", type=int, help="tokens per answer (tiny 16, 8b 128)")
    p.add_argument("--naive-prompts", type=int, help="prompts the naive defence loop runs (tiny 2, 8b 4)")
    p.add_argument("--repeats", type=int, help="rounds of each decoding-defence timing (tiny 1, 8b 2)")
    p.add_argument(
        "--defences", default="rose,self-cd,safedecoding", help="decoding defences to time ('' for none)"
    )
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = p.parse_args(argv)
    for key, value in DEFAULTS[args.size].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.max_new_tokens is None:
        args.max_new_tokens = MAX_NEW_TOKENS[args.size]
    args.out = args.out or f"bench-gpu-{args.size}.json"
    for key in (
        "steps",
        "batch_size",
        "rds_examples",
        "prompts",
        "max_new_tokens",
        "threads",
        "naive_prompts",
        "repeats",
    ):
        value = getattr(args, key)
        if value is not None and value < 1:
            p.error(f"--{key.replace('_', '-')} must be at least 1")
    if args.naive_prompts > args.prompts:
        p.error(f"--naive-prompts must be at most --prompts ({args.prompts})")
    from decoding_defences import DEFENCES as KNOWN_DEFENCES

    args.defences = [n.strip() for n in args.defences.split(",") if n.strip()]
    unknown = [n for n in args.defences if n not in KNOWN_DEFENCES]
    if unknown:
        p.error(f"--defences: unknown {unknown[0]!r} (known: {', '.join(KNOWN_DEFENCES)})")
    if args.warmup < 0 or args.seq_len < 16:
        p.error("--warmup must be >= 0 and --seq-len >= 16")
    return args


# ---------------------------------------------------------------------------------------------- world


def _tokenizer(size: str) -> Any:
    from eval_generation import _corpus
    from safetune.models.tiny import default_corpus, train_tokenizer

    lines = TOKENIZER_LINES[size]
    tokenizer = train_tokenizer(_corpus(lines) if lines else default_corpus(), "llama3", SIZES[size]["vocab"])
    if len(tokenizer) != SIZES[size]["vocab"]:
        raise RuntimeError(f"the tokenizer reached {len(tokenizer)} tokens, not {SIZES[size]['vocab']}")
    return tokenizer


def _model(args: argparse.Namespace, tokenizer: Any, dtype: torch.dtype, device: torch.device) -> Any:
    from safetune.models.tiny import random_llama

    return random_llama(tokenizer, "llama3", **SIZES[args.size]["dims"], dtype=dtype, device=device, seed=0)


def _run_config(args: argparse.Namespace, out: Path) -> Any:
    from safetune.config import RunConfig
    from safetune.methods.registry import get_method

    config = RunConfig()
    config.chat.max_response_tokens = max(1, args.seq_len // 5)
    config.chat.max_prompt_tokens = args.seq_len - config.chat.max_response_tokens
    config.method.beta = get_method(config.method.name).default_beta  # sarft: 0.1
    t = config.train
    t.finetune, t.batch_size, t.grad_accum = "lora", args.batch_size, 1
    t.max_steps = args.warmup + args.steps
    t.save_steps, t.logging_steps, t.output_dir = 0, 10**6, str(out)
    return config


def _examples(n: int, seq_len: int, prefix: str) -> list[Any]:
    """Role-play examples whose prompt and response are longer than the chat limits (rows come out at
    `seq_len` tokens after ChatRenderer's truncation)."""
    from safetune.data.records import RoleExample
    from safetune.models.tiny import default_corpus

    per = seq_len // 4  # sentences of several tokens each: more than enough for either side
    sentences = default_corpus(2 * n * per, seed=2)
    return [
        RoleExample(
            role=ROLE,
            input=" ".join(sentences[2 * i * per : (2 * i + 1) * per]),
            output=" ".join(sentences[(2 * i + 1) * per : (2 * i + 2) * per]),
            id=f"{prefix}{i}",
        )
        for i in range(n)
    ]


# ------------------------------------------------------------------------------------------ train step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _step_timer(device: torch.device) -> Any:
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall time of every optimizer step and, on CUDA, the peak memory allocated during it."""

        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.peak: list[int] = []
            self.before: list[int] = []
            self._start = 0.0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            _sync(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                self.before.append(torch.cuda.memory_allocated(device))
            self._start = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            _sync(device)
            self.seconds.append(time.perf_counter() - self._start)
            if device.type == "cuda":
                self.peak.append(torch.cuda.max_memory_allocated(device))

    return StepTimer()


def _timed_train(trainer: Any, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """trainer.train() over the same batch every step; per-step times and peaks of the timed steps."""
    from transformers import PrinterCallback, ProgressCallback

    trainer.args.train_sampling_strategy = "sequential"  # the dataset is the one batch, repeated
    trainer.args.disable_tqdm = True
    for quiet in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(quiet)
    timer = _step_timer(device)
    trainer.add_callback(timer)
    trainer.train()
    timed = timer.seconds[args.warmup :]
    record: dict[str, Any] = {"median_s": statistics.median(timed), "steps_s": timed}
    if device.type == "cuda":
        record["peak_mib"] = max(timer.peak[args.warmup :]) / 2**20
        record["allocated_before_mib"] = timer.before[args.warmup] / 2**20
    return record


def _sft_step(
    args: argparse.Namespace, config: Any, model: Any, tokenizer: Any, rows: list[dict[str, Any]], device: Any
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from datasets import Dataset

    from safetune.training.baselines import TRL_TRAINERS
    from safetune.training.common import wrap_lora

    plain = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows]
    dataset = Dataset.from_list(plain * config.train.max_steps)
    trainer = TRL_TRAINERS["sft-chosen"].build(config, wrap_lora(model, config), None, tokenizer, dataset)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
    record = _timed_train(trainer, args, device)
    del trainer
    return record, batch


def _sarft_step(
    args: argparse.Namespace, config: Any, model: Any, tokenizer: Any, rows: list[dict[str, Any]], device: Any
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from safetune.training.common import training_arguments, wrap_lora
    from safetune.training.trainer import RoleCollator, SafetuneTrainer

    collator = RoleCollator(tokenizer.pad_token_id)
    trainer = SafetuneTrainer(
        model=wrap_lora(model, config),
        args=training_arguments(config, Path(config.train.output_dir)),
        train_dataset=rows * config.train.max_steps,
        data_collator=collator,
        processing_class=tokenizer,
        method=config.method,
    )
    record = _timed_train(trainer, args, device)
    record["reference_rows"] = trainer.reference_rows
    del trainer
    return record, collator(rows)


# ------------------------------------------------------------------------------------ RDS, generation


def _rds(model: Any, renderer: Any, args: argparse.Namespace, config: Any, folder: Path) -> dict[str, Any]:
    from safetune.data.records import RoleProfile
    from safetune.data.role_prompts import prompts_by_role
    from safetune.data.sources import role_key
    from safetune.reference.rds import score_examples

    profiles = {role_key(ROLE): RoleProfile(name=ROLE, description=PROFILE)}
    batch = config.selection.batch_size
    warm = _examples(min(batch, args.rds_examples), args.seq_len, "warm")
    examples = _examples(args.rds_examples, args.seq_len, "rds")
    prompts = prompts_by_role(examples, profiles, config.selection)
    score_examples(model, renderer, warm, prompts, batch, folder / "warm.partial.jsonl")
    device = next(model.parameters()).device
    _sync(device)
    start = time.perf_counter()
    scores = score_examples(model, renderer, examples, prompts, batch, folder / "rds.partial.jsonl")
    _sync(device)
    seconds = time.perf_counter() - start
    if not all(math.isfinite(s.l_role) and math.isfinite(s.l_unsafe) for s in scores):
        raise RuntimeError("RDS scores are not finite")
    return {
        "examples": len(scores),
        "batch_size": batch,
        "seconds": seconds,
        "examples_per_min": 60 * len(scores) / seconds,
        "flagged": sum(s.rds_flag for s in scores),
    }


def _generation_config(args: argparse.Namespace) -> Any:
    from safetune.config import GenerationConfig

    return GenerationConfig(max_new_tokens=args.max_new_tokens)


def _throughput(seconds: float, results: list[Any]) -> dict[str, Any]:
    tokens = sum(r.num_tokens for r in results)
    return {
        "prompts": len(results),
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "prompts_per_s": len(results) / seconds,
    }


def _hf_generation(
    model: Any, tokenizer: Any, args: argparse.Namespace
) -> tuple[dict[str, Any], list[list[int]], list[Any]]:
    """hf backend throughput; also the prompt token ids and the answers, for the vLLM comparison."""
    from eval_generation import _requests, _timed
    from safetune.evaluation.backends import HFBackend

    config = _generation_config(args)
    backend = HFBackend(model, tokenizer, config, progress=False)
    requests = _requests(args.prompts)
    _timed(backend, requests[: config.batch_size])  # warm-up
    _sync(backend.device)
    seconds, results = _timed(backend, requests)
    _sync(backend.device)
    record = {**_throughput(seconds, results), "batch_size": config.batch_size}
    return record, [backend.prompt_ids(r) for r in requests], results


def _vllm_missing(device: torch.device) -> str | None:
    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed"
    if device.type != "cuda":
        return "no CUDA GPU (vLLM needs one)"
    return None


def _vllm_generation(
    folder: Path, args: argparse.Namespace, hf_prompt_ids: list[list[int]], hf_results: list[Any]
) -> dict[str, Any]:
    import dataclasses

    from eval_generation import _requests, _timed
    from safetune.evaluation.backends import build_backend
    from safetune.models.source import ModelSource

    # The HF model is gone by now; half the GPU is plenty for the weights and the KV cache.
    config = dataclasses.replace(_generation_config(args), backend="vllm", gpu_memory_utilization=0.5)
    backend: Any = build_backend(ModelSource(label="random", base=str(folder)), config)
    requests = _requests(args.prompts)
    same_prompts = [backend.renderer.prompt_ids(r.user, r.system) for r in requests] == hf_prompt_ids
    _timed(backend, requests[: config.batch_size])  # warm-up
    seconds, results = _timed(backend, requests)
    hf_text = {r.id: r.text for r in hf_results}
    return {
        **_throughput(seconds, results),
        "same_prompt_ids": same_prompts,
        "identical_answers": sum(r.text == hf_text.get(r.id) for r in results),
    }


# --------------------------------------------------------------------------------- decoding defences


class _AdapterOff:
    """A backend run with a peft model's adapters switched off: the plain model's hf eval, once the
    model carries SafeDecoding's expert."""

    def __init__(self, backend: Any, peft_model: Any):
        self.backend, self.peft_model = backend, peft_model
        self.config = backend.config

    def generate(self, requests: Any) -> Any:
        with self.peft_model.disable_adapter():
            yield from self.backend.generate(requests)


def _decoding_defences(
    args: argparse.Namespace, tokenizer: Any, dtype: torch.dtype, device: torch.device, work: Path
) -> dict[str, Any]:
    """Each defence through DefendedBackend on a fresh copy of the model (see the module docstring)."""
    from peft import LoraConfig, get_peft_model

    from decoding_defences import compare, ratios
    from eval_generation import _requests
    from safetune.config import DefenceConfig, GenerationConfig
    from safetune.decoding.models import BASE_ADAPTER, Part, StreamModels
    from safetune.decoding.registry import build_defence
    from safetune.evaluation.backends import HFBackend
    from safetune.evaluation.defended import defended_backend

    config = GenerationConfig(max_new_tokens=args.max_new_tokens)
    requests = _requests(args.prompts)
    model = _model(args, tokenizer, dtype, device).eval()
    hf: Any = HFBackend(model, tokenizer, config, progress=False)
    out: dict[str, Any] = {
        "prompts": args.prompts,
        "naive_prompts": args.naive_prompts,
        "repeats": args.repeats,
    }
    # SafeDecoding last: it wraps the model in peft (the expert's LoRA layers stay in it).
    for name in sorted(args.defences, key=lambda n: n == "safedecoding"):
        settings: dict[str, Any] = {}
        if name == "safedecoding":
            torch.manual_seed(1)
            lora = LoraConfig(
                r=16, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False
            )
            peft_model = get_peft_model(model, lora, adapter_name="expert").to(dtype).eval()
            peft_model.save_pretrained(str(work / "expert"))  # build_defence checks the adapter folder
            settings["expert"] = str(work / "expert" / "expert")
            models = StreamModels(
                [Part(peft_model, ("role", "expert"), {"role": BASE_ADAPTER, "expert": "expert"})]
            )
            hf = _AdapterOff(hf, peft_model)
        else:
            models = StreamModels([Part(model, ("role",))])
        defence = build_defence(DefenceConfig(name=name, **settings))
        assert defence is not None
        backend = defended_backend(models, tokenizer, defence, config, progress=False)
        run = compare(defence, backend, hf, requests, args.naive_prompts, args.repeats, lambda: _sync(device))
        r = ratios(run)
        timings = {
            key: {
                "prompts": t.prompts,
                "seconds": t.seconds,
                "min_s": t.best,
                "median_s": t.median,
                "tokens": t.tokens,
            }
            for key, t in (
                ("engine", run.engine),
                ("naive", run.naive),
                ("hf_no_system", run.hf_plain),
                ("hf_defence_prompt", run.hf_prompt),
            )
            if t is not None
        }
        out[name] = {
            **timings,
            "engine_over_naive_prompts_per_s": {"min": r.speedup[0], "median": r.speedup[1]},
            "defended_over_hf_same_prefill": {"min": r.target[0], "median": r.target[1]},
            "defended_over_hf_no_system": {"min": r.plain[0], "median": r.plain[1]},
            "identical_ids": f"{run.same_ids}/{run.checked}",
        }
    del model, hf
    _free(device)
    return out


# ---------------------------------------------------------------------------------------------- main


def _device_record(device: torch.device) -> dict[str, Any]:
    record: dict[str, Any] = {"type": device.type}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        record.update(
            name=props.name,
            memory_gib=props.total_memory / 2**30,
            capability=f"{props.major}.{props.minor}",
            cuda=torch.version.cuda,
        )
    return record


def run(args: argparse.Namespace) -> dict[str, Any]:
    import datasets
    from transformers.utils import logging as hf_logging

    from safetune.data.chat import ChatRenderer
    from safetune.models.loading import default_device, resolve_dtype
    from safetune.provenance import base_provenance, machine_record
    from safetune.training.trainer import encode_roles

    hf_logging.set_verbosity_error()
    # transformers 5 deprecates a name TRL still calls, once per trainer
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*deprecated")
    datasets.disable_progress_bars()  # TRL's dataset preparation
    device = default_device()
    dtype = resolve_dtype("auto")  # LoRA keeps the base in the compute dtype: bf16 on a GPU, else fp32
    vllm_missing = _vllm_missing(device)
    result: dict[str, Any] = {
        "suite": "bench/gpu_suite.py",
        "size": args.size,
        **base_provenance(),
        "machine": machine_record(),
        "device": _device_record(device),
    }
    with tempfile.TemporaryDirectory(prefix="gpu-suite-") as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        tokenizer = _tokenizer(args.size)
        tokenizer_s = time.perf_counter() - start
        config = _run_config(args, work / "run")
        renderer = ChatRenderer.from_config(tokenizer, config.chat, authors_empty_system=True)
        start = time.perf_counter()
        model = _model(args, tokenizer, dtype, device).eval()
        _sync(device)
        init_s = time.perf_counter() - start
        params = sum(p.numel() for p in model.parameters())
        t = config.train
        n_flagged = max(1, round(FLAGGED * args.batch_size))
        flags = [i < n_flagged for i in range(args.batch_size)]
        rows = encode_roles(renderer, _examples(args.batch_size, args.seq_len, "row"), flags)
        result["model"] = {
            "architecture": "LlamaForCausalLM, random init",
            **SIZES[args.size]["dims"],
            "vocab_size": model.config.vocab_size,
            "parameters": params,
            "dtype": str(dtype).removeprefix("torch."),
            "tokenizer_s": tokenizer_s,  # training the BPE (8b: to 128256 tokens)
            "init_s": init_s,  # random init of the weights on the device
        }
        result["settings"] = {
            "steps": args.steps,
            "warmup": args.warmup,
            "batch_size": args.batch_size,
            "seq_len": args.seq_len,
            "row_tokens": [len(r["input_ids"]) for r in rows],
            "flagged_rows": n_flagged,
            "beta": config.method.beta,
            "lora": {"r": t.lora_r, "alpha": t.lora_alpha, "targets": list(t.lora_targets)},
            "learning_rate": t.resolved_learning_rate,
            "max_new_tokens": args.max_new_tokens,
            "threads": torch.get_num_threads(),
        }
        folder = work / "model"
        if vllm_missing is None:  # vLLM loads a model folder
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)

        result["rds"] = _rds(model, renderer, args, config, work)
        hf_record, hf_prompt_ids, hf_results = _hf_generation(model, tokenizer, args)
        result["generation"] = {"hf": hf_record}

        # Each trainer gets a fresh copy of the same weights (seed 0) and only one copy is ever held.
        sft, sft_batch = _sft_step(args, config, model, tokenizer, rows, device)
        del model
        _free(device)
        model = _model(args, tokenizer, dtype, device)
        sarft, sarft_batch = _sarft_step(args, config, model, tokenizer, rows, device)
        del model
        _free(device)
        same = all(torch.equal(sft_batch[k], sarft_batch[k]) for k in ("input_ids", "labels"))
        result["train_step"] = {
            "sft": {"trainer": "trl.SFTTrainer (safetune sft-chosen baseline builder)", **sft},
            "sarft": {"trainer": "safetune SafetuneTrainer (LoRA, reference = adapter off)", **sarft},
            "same_batch": same,
            "ratio_sarft_sft": sarft["median_s"] / sft["median_s"],
        }
        if device.type == "cuda":
            result["memory"] = {
                "sft_peak_mib": sft["peak_mib"],
                "sarft_peak_mib": sarft["peak_mib"],
                "ratio_sarft_sft": sarft["peak_mib"] / sft["peak_mib"],
            }
        else:
            result["memory"] = {"skipped": "n/a on CPU: torch.cuda.max_memory_allocated needs a CUDA device"}

        result["decoding_defences"] = _decoding_defences(args, tokenizer, dtype, device, work)
        _free(device)

        vllm: dict[str, Any] = {"skipped": vllm_missing}
        if vllm_missing is None:
            try:
                vllm = _vllm_generation(folder, args, hf_prompt_ids, hf_results)
                vllm["ratio_vllm_hf"] = vllm["tokens_per_s"] / hf_record["tokens_per_s"]
            except Exception as err:  # the other figures are kept; the failure is recorded, not a figure
                first = (str(err).splitlines() or [""])[0][:300]
                vllm = {"skipped": f"vllm failed: {type(err).__name__}: {first}"}
        result["vllm"] = vllm
    # FSDP and ZeRO runs through `accelerate launch`, one process per GPU (bench/sharded_training.py).
    from sharded_training import sharded_training

    result["sharded_training"] = sharded_training()
    return result


def _print(result: dict[str, Any]) -> None:
    m, s, step = result["model"], result["settings"], result["train_step"]
    where = result["device"].get("name") or f"CPU, {s['threads']} threads"
    print(
        f"gpu suite --size {result['size']}: random Llama hidden {m['hidden_size']}, {m['num_layers']} layers, "
        f"vocab {m['vocab_size']}, {m['parameters'] / 1e6:.1f}M parameters, {m['dtype']} on {where}"
    )
    print(
        f"  batch {s['batch_size']} x {s['seq_len']} tokens ({s['flagged_rows']} flagged), LoRA r {s['lora']['r']} "
        f"{'+'.join(s['lora']['targets'])}, median of {s['steps']} steps after {s['warmup']} warm-up"
    )
    print(f"  {'train step, TRL SFTTrainer':34s} {1000 * step['sft']['median_s']:10.1f} ms")
    print(f"  {'train step, SaRFT (SafetuneTrainer)':34s} {1000 * step['sarft']['median_s']:10.1f} ms")
    print(f"  {'  SaRFT / SFT':34s} {step['ratio_sarft_sft']:10.2f}x   (same batch: {step['same_batch']})")
    mem = result["memory"]
    if "skipped" in mem:
        print(f"  {'peak memory':34s} {mem['skipped']}")
    else:
        print(f"  {'peak memory, SFT':34s} {mem['sft_peak_mib']:10.0f} MiB")
        print(f"  {'peak memory, SaRFT':34s} {mem['sarft_peak_mib']:10.0f} MiB")
        print(f"  {'  SaRFT / SFT':34s} {mem['ratio_sarft_sft']:10.2f}x")
    rds = result["rds"]
    print(f"  {'RDS scoring':34s} {rds['examples_per_min']:10.1f} examples/min ({rds['examples']} examples)")
    hf = result["generation"]["hf"]
    print(f"  {'generation, hf':34s} {hf['tokens_per_s']:10.1f} tokens/s ({hf['prompts']} prompts)")
    vllm = result["vllm"]
    if "skipped" in vllm:
        print(f"  {'generation, vllm':34s} skipped: {vllm['skipped']}")
    else:
        print(f"  {'generation, vllm':34s} {vllm['tokens_per_s']:10.1f} tokens/s")
        print(
            f"  {'  vllm / hf':34s} {vllm['ratio_vllm_hf']:10.2f}x   (same prompt ids: "
            f"{vllm['same_prompt_ids']}; identical answers {vllm['identical_answers']}/{vllm['prompts']})"
        )


def _print_defences(record: dict[str, Any]) -> None:
    for name in ("rose", "self-cd", "safedecoding"):
        if name not in record:
            continue
        d = record[name]
        speed, same, plain = (
            d["engine_over_naive_prompts_per_s"],
            d["defended_over_hf_same_prefill"],
            d["defended_over_hf_no_system"],
        )
        print(
            f"  {'defence ' + name:34s} {d['engine']['min_s']:10.2f} s   engine / naive {speed['min']:.1f}x "
            f"prompts/s (ids identical {d['identical_ids']}); / hf same prefill {same['min']:.2f}x, "
            f"/ hf no system {plain['min']:.2f}x"
        )


def _print_sharded(runs: dict[str, Any]) -> None:
    for name, run in runs.items():
        label = f"sharded training, {name}"
        if "skipped" in run:
            print(f"  {label:34s} skipped: {run['skipped']}")
        elif run["ok"]:
            print(
                f"  {label:34s} {run['wall_s']:10.1f} s   ({run['processes']} processes, {run['global_step']} steps)"
            )
        else:
            print(f"  {label:34s} FAILED: {run.get('error', '')}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.size == "8b" and not torch.cuda.is_available():
        print("error: --size 8b needs a CUDA GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    from safetune.storage import write_json

    result = run(args)
    write_json(args.out, result)
    _print(result)
    _print_defences(result["decoding_defences"])
    _print_sharded(result["sharded_training"])
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
