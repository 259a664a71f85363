"""The bad-input corpus (issue 12): malformed settings, config files, data and models through the real CLI.

Every case must exit with code 2 and print exactly one line starting with `error:` that names what is
wrong (the key, or file:line and field), with no traceback and no new file or folder anywhere.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from safetune.cli import app
from safetune.organism import roleplay

runner = CliRunner()


@dataclass(frozen=True)
class Case:
    """argv (with {model} {data} {profiles} {out} {tmp} and the other `world` placeholders) and what
    the error line must say."""

    args: tuple[str, ...]
    says: tuple[str, ...]
    files: Callable[[Path], None] | None = None  # writes this case's input files into {tmp}
    # Fails after the model's weights digest is remembered in the cache ({tmp}/../cache): a valid
    # cache entry, not output, so it may stay.
    caches: bool = False
    skip: str | None = None  # why this case cannot run here


# File modes do not stop root; the read-only cases need an ordinary user.
AS_ROOT = "root writes into read-only folders" if os.geteuid() == 0 else None
BF16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def _train(*extra: str) -> tuple[str, ...]:
    return (
        "train",
        "-m",
        "{model}",
        "--data",
        "{data}",
        "--role",
        "Grim Vex",
        "--profiles",
        "{profiles}",
        "-o",
        "{out}",
        *extra,
    )


def _select(*extra: str) -> tuple[str, ...]:
    return ("select", "-m", "{model}", "--data", "{data}", "--role", "Grim Vex", "-o", "{out}", *extra)


def _eval(*extra: str) -> tuple[str, ...]:
    return (
        "eval",
        "-m",
        "{model}",
        "--benchmarks",
        "overrefusal",
        "--backend",
        "mock",
        "-o",
        "{out}",
        *extra,
    )


def _pairs(method: str, *extra: str) -> tuple[str, ...]:
    return ("train", "-m", "{model}", "--data", "{pairs}", "--method", method, "-o", "{out}", *extra)


def _report(*extra: str) -> tuple[str, ...]:
    return ("report", "{evaluation}", *extra)


def _read_only(tmp: Path) -> None:
    (tmp / "ro").mkdir()
    (tmp / "ro").chmod(0o555)


def _write(name: str, content: str | bytes) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        path = tmp / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")

    return write


ROW = {"role": "Grim Vex", "input": "hi", "output": "hello"}
HUGE = "x" * 200_000

CASES: dict[str, Case] = {
    # item 3: NaN, infinite and out-of-range settings
    "beta nan": Case(_train("--beta", "nan"), ("method.beta must be a finite number >= 0, got nan",)),
    "beta inf yaml": Case(_train("--method.beta=.inf"), ("method.beta", "got inf")),
    "lr 1e400": Case(
        _train("--train.learning_rate=1e400"), ("train.learning_rate must be a finite number > 0, got 1e400",)
    ),
    "lr negative": Case(_train("--train.learning_rate=-1e-4"), ("train.learning_rate", "> 0")),
    "seed negative": Case(_train("--train.seed=-1"), ("train.seed must be an integer >= 0",)),
    "seed too big": Case(_train("--train.seed=4294967296"), ("train.seed", "<= 4294967295")),
    "selection batch 0": Case(_select("--selection.batch_size=0"), ("selection.batch_size", ">= 1, got 0")),
    "epochs negative": Case(_train("--train.num_epochs=-2"), ("train.num_epochs", "> 0, got -2")),
    "max_steps 0": Case(_train("--train.max_steps=0"), ("train.max_steps", "(or -1), got 0")),
    "max_examples -1": Case(_train("--data.max_examples=-1"), ("data.max_examples", ">= 1, got -1")),
    "max_examples 0": Case(_train("--data.max_examples=0"), ("data.max_examples", ">= 1, got 0")),
    "warmup 2": Case(_train("--train.warmup_ratio=2"), ("train.warmup_ratio", "< 1")),
    "lora dropout 1": Case(_train("--train.lora_dropout=1"), ("train.lora_dropout", "< 1")),
    "bootstrap 0": Case(_eval("--eval.bootstrap=0"), ("eval.bootstrap", ">= 10, got 0")),
    "temperature -1": Case(_eval("--generation.temperature=-1"), ("generation.temperature", ">= 0, got -1")),
    "top_p nan": Case(_eval("--generation.top_p=nan"), ("generation.top_p", "got nan")),
    "timeout negative": Case(_eval("--judge.timeout_s=-5"), ("judge.timeout_s", "> 0, got -5")),
    "workers 0": Case(_eval("--judge.max_workers=0"), ("judge.max_workers", ">= 1")),
    # item 6: values handed unchecked to libraries, templates, YAML
    "bogus scheduler": Case(
        _train("--train.lr_scheduler=bogus"), ("train.lr_scheduler: 'bogus' is not one of",)
    ),
    "override not yaml": Case(
        _train("--train.lora_targets=[q_proj"), ("--train.lora_targets=[q_proj", "YAML")
    ),
    "unknown placeholder": Case(
        _select("--selection.role_prompt=Hi {nam}."), ("selection.role_prompt", "unknown placeholder {nam}")
    ),
    "bad format string": Case(_select("--selection.role_prompt=Hi {"), ("selection.role_prompt",)),
    "config not utf-8": Case(
        _train("--config", "{tmp}/latin1.yaml"),
        ("latin1.yaml:2: not valid UTF-8",),
        _write("latin1.yaml", b"model:\n  name: caf\xe9\n"),
    ),
    "config broken yaml": Case(
        _train("--config", "{tmp}/broken.yaml"),
        ("broken.yaml:2: invalid YAML",),
        _write("broken.yaml", "train: [a\n"),
    ),
    "config nested deep": Case(
        _train("--config", "{tmp}/deep.yaml"),
        ("deep.yaml", "nested too deeply"),
        _write("deep.yaml", "[" * 100_000),
    ),
    # item 5: duplicate keys
    "config duplicate key": Case(
        _train("--config", "{tmp}/dup.yaml"),
        ("dup.yaml:3:", "duplicate key 'seed' (first at line 2)"),
        _write("dup.yaml", "train:\n  seed: 1\n  seed: 2\n"),
    ),
    "json duplicate key": Case(
        _train("--data", "{tmp}/dupkey.jsonl"),
        ("dupkey.jsonl:2: field 'output'", "duplicate key"),
        _write(
            "dupkey.jsonl",
            json.dumps(ROW) + '\n{"role": "Grim Vex", "input": "a", "output": "b", "output": "c"}\n',
        ),
    ),
    # item 4: duplicate ids
    "duplicate ids": Case(
        _train("--data", "{tmp}/dupid.jsonl"),
        ("dupid.jsonl:3: field 'id'", "duplicate id 'a' (first at line 1)"),
        _write("dupid.jsonl", "".join(json.dumps({**ROW, "id": i}) + "\n" for i in ("a", "b", "a"))),
    ),
    # item 6: one JSONL line nested 200,000 levels deep
    "jsonl nested deep": Case(
        _train("--data", "{tmp}/deep.jsonl"),
        ("deep.jsonl:2: invalid JSON (nested too deeply)",),
        _write("deep.jsonl", json.dumps(ROW) + "\n" + "[" * 200_000 + "\n"),
    ),
    # item 8: messages
    "at column once": Case(
        _train("--data", "{tmp}/open.jsonl"),
        ("open.jsonl:1:", "Unterminated string starting at column"),
        _write("open.jsonl", '{"role": "Grim Vex", "input": "unterminated\n'),
    ),
    "huge value cut": Case(_train(f"--data.answers={HUGE}"), ("data.answers", "characters cut")),
    "missing config file": Case(
        _train("--config", "/nope.yaml"), ("--config", "/nope.yaml", "does not exist")
    ),
    "demo bogus": Case(("demo", "bogus"), ("'bogus'", "sarft, mpo")),
    "unknown command": Case(("bogus",), ("No such command 'bogus'",)),
    "bad option value": Case(("demo", "--threads", "0"), ("--threads",)),
    "demo beta nan": Case(("demo", "--beta", "nan", "-o", "{out}"), ("method.beta", "got nan")),
    "demo unknown method": Case(
        ("demo", "--methods", "safeinstr,bogus", "-o", "{out}"), ("--methods", "'bogus'", "safeinstr")
    ),
    "demo mpo methods": Case(
        ("demo", "mpo", "--methods", "lisa", "-o", "{out}"), ("--methods", "'lisa'", "ipo")
    ),
    "demo assess methods": Case(
        ("demo", "assess", "--methods", "sft", "-o", "{out}"), ("--methods", "'assess'")
    ),
    "organism seed negative": Case(("organism", "--seed", "-1"), ("--seed",)),
    "tiny heads": Case(("tiny-model", "{out}", "--hidden-size", "10", "--heads", "4"), ("divisible",)),
    "tiny vocab": Case(("tiny-model", "{out}", "--vocab-size", "10"), ("vocab_size must be at least",)),
    "tiny layers": Case(("tiny-model", "{out}", "--layers", "0"), ("--layers",)),
    # item 7: everything checked before the first output file
    "missing data file": Case(_train("--data", "{tmp}/nope.jsonl"), ("nope.jsonl: no such file",)),
    "unknown role": Case(_train("--role", "Nobody"), ("no examples (role=Nobody)",)),
    "bad flags file": Case(
        _train("--selection-file", "{tmp}/flags.jsonl"),
        ("flags.jsonl:1: field 'flag': expected 0 or 1, got 2",),
        _write("flags.jsonl", json.dumps({"id": "x", "flag": 2}) + "\n"),
        caches=True,
    ),
    "nested out folder": Case(
        _train("--data", "{tmp}/nope.jsonl", "-o", "{tmp}/new/deeper/run"), ("nope.jsonl: no such file",)
    ),
    "lora targets match nothing": Case(
        _train("--train.lora_targets=[nope]"), ("train.lora_targets ['nope']", "q_proj"), caches=True
    ),
    "mpo lora targets match nothing": Case(
        _pairs("mpo", "--train.lora_targets=[nope]"), ("train.lora_targets ['nope']", "q_proj"), caches=True
    ),
    "dpo lora targets match nothing": Case(
        _pairs("dpo", "--train.lora_targets=[nope]"), ("train.lora_targets ['nope']", "q_proj")
    ),
    "report_to unknown": Case(
        _train("--train.report_to=bogus"), ("train.report_to", "bogus is not supported")
    ),
    "bf16 without a bf16 GPU": Case(
        _train("--train.precision=bf16"),
        ("train.precision=bf16",),
        skip="this machine trains in bf16" if BF16 else None,
    ),
    "generation backend unknown": Case(
        _eval("--generation.backend=bogus"), ("generation.backend: unknown backend 'bogus'",)
    ),
    "llm judge without its key": Case(
        _eval("--judge", "llm", "--judge.api_key_env=SAFETUNE_TEST_NO_SUCH_KEY"),
        ("$SAFETUNE_TEST_NO_SUCH_KEY, which is not set",),
    ),
    "guard judge model missing": Case(
        _eval("--judge", "guard", "--judge-model", "{tmp}/no-guard"), ("judge.model folder", "not found")
    ),
    "classifier judge model missing": Case(
        _eval("--judge", "classifier", "--judge-model", "{tmp}/no-classifier"),
        ("judge.model folder", "not found"),
    ),
    # judge presets (issue 19): checked when the judge is built, before any generation
    "guard preset unknown": Case(
        _eval("--judge", "guard", "--judge-model", "{model}", "--judge-preset", "nope"),
        ("unknown guard preset 'nope'", "llama-guard"),
    ),
    "guard with a classifier preset": Case(
        _eval("--judge", "guard", "--judge-model", "{model}", "--judge-preset", "distilroberta-rejection"),
        ("'distilroberta-rejection' belongs to the classifier judge", "--judge classifier"),
    ),
    "keyword with a guard preset": Case(
        _eval("--judge-preset", "qwen3guard"), ("'qwen3guard' belongs to the guard judge",)
    ),
    "guard template not the preset's": Case(
        _eval("--judge", "guard", "--judge-model", "{model}", "--judge-preset", "qwen3guard"),
        ("not a qwen3guard template", "'Controversial'"),
    ),
    "guard default preset on a chat model": Case(
        _eval("--judge", "guard", "--judge-model", "{model}"), ("not a llama-guard template",)
    ),
    # item 6: models cut short or stored as pickle, output folders that cannot be written
    "truncated model train": Case(
        _train("-m", "{truncated}"), ("truncated/model.safetensors: not a whole safetensors file",)
    ),
    "truncated model select": Case(
        _select("-m", "{truncated}"), ("truncated/model.safetensors: not a whole safetensors file",)
    ),
    "truncated model eval": Case(
        _eval("-m", "{truncated}", "--backend", "hf"),
        ("truncated/model.safetensors: not a whole safetensors file",),
    ),
    "pickle model train": Case(_train("-m", "{pickled}"), ("pickled/pytorch_model.bin", "safetensors only")),
    "pickle model select": Case(
        _select("-m", "{pickled}"), ("pickled/pytorch_model.bin", "safetensors only")
    ),
    "pickle model eval": Case(
        _eval("-m", "{pickled}", "--backend", "hf"), ("pickled/pytorch_model.bin", "safetensors only")
    ),
    # --- SPPFT's settings (docs/methods/sppft.md) ---
    "sppft layers reversed": Case(
        _train("--method", "sppft", "--method.layers=5-3"), ("method.layers", "5 is after the last 3")
    ),
    "sppft layers not a range": Case(
        _train("--method", "sppft", "--method.layers=six"), ("method.layers", "'a-b'")
    ),
    "sppft layers beyond the model": Case(
        _train("--method", "sppft", "--method.layers=1-9"),
        ("method.layers 1-9", "the model has 2 decoder layers"),
        caches=True,
    ),
    "sppft lora band holds every target": Case(
        _train(
            "--method",
            "sppft",
            "--method.layers=0-1",
            "--method.cosine_pairs=5",
            "--method.layer_search=cosine",
        ),
        ("SPPFT with LoRA", "0-1", "nothing would train"),
        caches=True,
    ),
    "sppft alpha 1": Case(_train("--method", "sppft", "--method.scale_alpha=1"), ("method.scale_alpha",)),
    "sppft pairs 0": Case(_train("--method", "sppft", "--method.cosine_pairs=0"), ("method.cosine_pairs",)),
    # The cross-lingual baselines' settings and the pair builder's thresholds (issue 22)
    "lens top layers 0": Case(
        _train("--method", "lens", "--method.lens_top_layers=0"), ("method.lens_top_layers", ">= 1")
    ),
    "lens alpha nan": Case(
        _train("--method", "lens", "--method.lens_alpha=nan"), ("method.lens_alpha", "nan")
    ),
    "sdrrl switch rate 1": Case(_train("--method", "sdrrl", "--sdrrl.switch_rate=1"), ("sdrrl.switch_rate",)),
    "sdrrl weight 11": Case(_train("--method", "sdrrl", "--sdrrl.code_switch=11"), ("sdrrl.code_switch",)),
    "pairs chrf 101": Case(
        ("pairs", "--inputs", "{data}", "--languages", "bn", "--pairs.min_chrf=101", "-o", "{out}"),
        ("pairs.min_chrf",),
    ),
    # SEAL's settings (docs/methods/seal.md)
    "seal keep zero": Case(_train("--method", "seal", "--method.seal_keep=0"), ("method.seal_keep", "> 0")),
    "seal keeps no row": Case(
        _train("--method", "seal", "--method.seal_keep=0.2"), ("method.seal_keep=0.2 keeps no row of 4",)
    ),
    "seal gamma above one": Case(
        _train("--method", "seal", "--method.seal_gamma=0.9", "--method.seal_gamma_step=0.1"),
        ("penalty weight gamma", "at most 1"),
    ),
    "seal safety data missing": Case(
        _train("--method", "seal", "--method.safety_data={tmp}/nope-safe.jsonl"),
        ("nope-safe.jsonl: no such file",),
    ),
}
# SafeLoRA (docs/methods/safelora.md): `train --method safelora` and the post-hoc `safetune safelora`
_SAFELORA = ("--method", "safelora")
_UNALIGNED = "--method.unaligned_model={unaligned}"
CASES |= {
    "safelora without unaligned model": Case(
        _train(*_SAFELORA), ("method.unaligned_model is required by safelora",)
    ),
    "safelora full fine-tuning": Case(
        _train(*_SAFELORA, _UNALIGNED, "--finetune", "full"), ("method safelora projects a LoRA update",)
    ),
    "safelora k 0": Case(
        _train(*_SAFELORA, _UNALIGNED, "--method.safelora_k=0"), ("method.safelora_k", ">= 1, got 0")
    ),
    "safelora threshold 2": Case(
        _train(*_SAFELORA, _UNALIGNED, "--method.safelora_threshold=2"),
        ("method.safelora_threshold", "<= 1, got 2"),
    ),
    "safelora mode bogus": Case(
        _train(*_SAFELORA, _UNALIGNED, "--method.safelora_mode=bogus"),
        ("method.safelora_mode: 'bogus' is not one of",),
    ),
    "safelora projector bogus": Case(
        _train(*_SAFELORA, _UNALIGNED, "--method.safelora_projector=bogus"), ("method.safelora_projector",)
    ),
    "safelora unaligned missing": Case(
        _train(*_SAFELORA, "--method.unaligned_model={tmp}/nope"),
        ("method.unaligned_model folder", "not found"),
    ),
    "safelora unaligned is the aligned model": Case(
        _train(*_SAFELORA, "--method.unaligned_model={model}"), ("is the aligned model itself",)
    ),
    "safelora unaligned other shapes": Case(
        _train(*_SAFELORA, "--method.unaligned_model={narrow}"),
        ("has shape", "same architecture"),
        caches=True,
    ),
    "safelora posthoc not a lora run": Case(
        ("safelora", "{model}", "--unaligned", "{unaligned}", "-o", "{out}"), ("holds no LoRA adapter",)
    ),
    "safelora posthoc output inside input": Case(
        ("safelora", "{tmp}", "--unaligned", "{unaligned}", "-o", "{tmp}/out"),
        ("must be outside the input run",),
    ),
    "safelora posthoc without unaligned": Case(("safelora", "{model}", "-o", "{out}"), ("--unaligned",)),
    "safelora posthoc k 0": Case(
        ("safelora", "{model}", "--unaligned", "{unaligned}", "-o", "{out}", "--k", "0"),
        ("method.safelora_k",),
    ),
}
# Role-data baselines (issue 13, part 2): tokenwise-sft and safeinstr settings.
_TW, _SI = ("--method", "tokenwise-sft"), ("--method", "safeinstr")
CASES.update(
    {
        "tokenwise beta 0": Case(_train(*_TW, "--beta", "0"), ("method.beta must be > 0 for tokenwise-sft",)),
        "tokenwise bias_length -1": Case(
            _train(*_TW, "--method.bias_length=-1"), ("method.bias_length", ">= 0")
        ),
        "tokenwise bias_factor 0": Case(
            _train(*_TW, "--method.bias_factor=0"), ("method.bias_factor", "> 0")
        ),
        "tokenwise min_weight 2": Case(
            _train(*_TW, "--method.tokenwise_min_weight=2"), ("method.tokenwise_min_weight", "< 2")
        ),
        "tokenwise beta1 1": Case(
            _train(*_TW, "--method.tokenwise_adam_beta1=1"), ("tokenwise_adam_beta1", "< 1")
        ),
        "safeinstr fraction 1.5": Case(
            _train(*_SI, "--method.safety_fraction=1.5"), ("method.safety_fraction",)
        ),
        "safeinstr count -1": Case(_train(*_SI, "--method.safety_count=-1"), ("method.safety_count", ">= 0")),
        "safeinstr too many rows": Case(
            _train(*_SI, "--method.safety_count=100"),
            ("asks for 100 safety rows but the safety data has 32",),
        ),
        "safeinstr missing file": Case(
            _train(*_SI, "--method.safety_data={tmp}/nope.jsonl"), ("nope.jsonl: no such file",)
        ),
        "safeinstr system bogus": Case(
            _train(*_SI, "--method.safety_system=bogus"), ("method.safety_system",)
        ),
    }
)
# Lisa and Vaccine settings (docs/methods/lisa.md, vaccine.md)
CASES.update(
    {
        "lisa rho negative": Case(
            _train("--method", "lisa", "--method.lisa_rho=-1"),
            ("method.lisa_rho must be a finite number >= 0",),
        ),
        "lisa steps negative": Case(
            _train("--method", "lisa", "--method.lisa_align_steps=-1"), ("method.lisa_align_steps", ">= 0")
        ),
        "lisa step unit": Case(
            _train("--method", "lisa", "--method.lisa_step_unit=epoch"),
            ("method.lisa_step_unit: 'epoch' is not one of micro, optimizer",),
        ),
        "lisa warmup 1": Case(
            _train("--method", "lisa", "--method.lisa_warmup_fraction=1"),
            ("method.lisa_warmup_fraction", "< 1"),
        ),
        "lisa safety data missing": Case(
            _train("--method", "lisa", "--method.safety_data={tmp}/nope.jsonl"), ("nope.jsonl: no such file",)
        ),
        "vaccine rho nan": Case(
            (
                "train",
                "-m",
                "{model}",
                "--method",
                "vaccine",
                "--data",
                "builtin",
                "-o",
                "{out}",
                "--method.vaccine_rho=nan",
            ),
            ("method.vaccine_rho", "got nan"),
        ),
        "vaccine noise": Case(
            (
                "train",
                "-m",
                "{model}",
                "--method",
                "vaccine",
                "--data",
                "builtin",
                "-o",
                "{out}",
                "--method.vaccine_noise=bogus",
            ),
            ("method.vaccine_noise: 'bogus' is not one of adversarial, random",),
        ),
        "vaccine data missing": Case(
            ("train", "-m", "{model}", "--method", "vaccine", "--data", "{tmp}/nope.jsonl", "-o", "{out}"),
            ("nope.jsonl: no such file",),
        ),
        "vaccine without data": Case(
            ("train", "-m", "{model}", "--method", "vaccine", "-o", "{out}"),
            ("--data FILE or --data builtin",),
        ),
        "vaccine demo without answer": Case(
            ("train", "-m", "{model}", "--method", "vaccine", "--data", "{tmp}/demos.jsonl", "-o", "{out}"),
            ("demos.jsonl:1: field 'response'", "no answer field"),
            _write("demos.jsonl", json.dumps({"prompt": "How do I pick a lock?"}) + "\n"),
        ),
    }
)
for _command, _args in (("select", _select), ("train", _train), ("eval", _eval), ("report", _report)):
    CASES[f"read-only parent {_command}"] = Case(
        _args("-o", "{tmp}/ro/out"),
        ("cannot create output folder", "Permission denied"),
        _read_only,
        skip=AS_ROOT,
    )
    CASES[f"read-only out {_command}"] = Case(
        _args("-o", "{tmp}/ro"),
        ("cannot write in output folder", "Permission denied"),
        _read_only,
        skip=AS_ROOT,
    )


# `safetune judge` (completion files; evaluation/completion_files.py)
_XS = "1_full_compliance=compliance,2_full_refusal=refusal,3_partial_refusal=partial"


def _judge(name: str, *extra: str) -> tuple[str, ...]:
    return ("judge", f"{{tmp}}/{name}", "-o", "{out}", *extra)


CASES.update(
    {
        "judge missing file": Case(_judge("nope.csv"), ("nope.csv: no such file",)),
        "judge no response column": Case(
            _judge("noresp.csv"),
            ("noresp.csv:2: field 'response'", "missing (expected one of: response, completion"),
            _write("noresp.csv", "prompt,reply\nHow?,Like so.\n"),
        ),
        "judge empty prompt": Case(
            _judge("noprompt.jsonl"),
            ("noprompt.jsonl:2: field 'prompt': empty",),
            _write("noprompt.jsonl", '{"prompt": "q", "response": "a"}\n{"prompt": " ", "response": "b"}\n'),
        ),
        "judge response not text": Case(
            _judge("numresp.jsonl"),
            ("numresp.jsonl:1: field 'response': expected a string, got number",),
            _write("numresp.jsonl", '{"prompt": "q", "response": 3}\n'),
        ),
        "judge unknown label": Case(
            _judge("labels.csv", "--labels", "final_label", "--label-map", _XS),
            ("labels.csv:3: field 'final_label'", "unknown label '4_other'"),
            _write("labels.csv", "prompt,completion,final_label\nq,a,1_full_compliance\nq2,b,4_other\n"),
        ),
        "judge missing label column": Case(
            _judge("nolabel.csv", "--labels", "human"),
            ("nolabel.csv:2: field 'human'", "missing (the --labels column)"),
            _write("nolabel.csv", "prompt,completion\nq,a\n"),
        ),
        "judge mapped column missing": Case(
            _judge("cols.csv", "--columns", "response=answer_text"),
            ("cols.csv:2: field 'answer_text'", "no such column", "--columns response=answer_text"),
            _write("cols.csv", "prompt,completion\nq,a\n"),
        ),
        "judge duplicate id": Case(
            _judge("dup.jsonl"),
            ("dup.jsonl:2: field 'id'", "duplicate id 'x' (same as line 1)"),
            _write("dup.jsonl", '{"id": "x", "prompt": "q", "response": "a"}\n' * 2),
        ),
        "judge label map to no class": Case(
            _judge("lm.csv", "--labels", "final_label", "--label-map", "yes=refused"),
            ("--label-map", "['refused'] are not judge classes"),
            _write("lm.csv", "prompt,completion,final_label\nq,a,yes\n"),
        ),
        "judge unknown judge": Case(
            _judge("ok.csv", "--judge", "keyword,bogus"),
            ("unknown judge 'bogus'",),
            _write("ok.csv", "prompt,completion\nq,a\n"),
        ),
        "judge bad columns option": Case(
            _judge("ok2.csv", "--columns", "response"),
            ("--columns: expected key=value pairs", "'response'"),
            _write("ok2.csv", "prompt,completion\nq,a\n"),
        ),
    }
)


# The safety expert (docs/methods/safety-expert.md): its settings, seed file and training config.
def _expert(*extra: str) -> tuple[str, ...]:
    return ("safety-expert", "-m", "{model}", "--backend", "mock", "-o", "{out}", *extra)


CASES |= {
    "expert temperature 0": Case(
        _expert("--expert.temperature=0"),
        ("expert.temperature must be a finite number > 0 and <= 10, got 0",),
    ),
    "expert top_p above 1": Case(_expert("--expert.top_p=1.5"), ("expert.top_p", "<= 1, got 1.5")),
    "expert bad seed record": Case(
        _expert("--seeds", "{tmp}/seeds.jsonl"),
        ("seeds.jsonl:2: field 'prompt': expected a string",),
        _write("seeds.jsonl", '{"prompt": "one"}\n{"prompt": 2}\n'),
    ),
    "expert two judges": Case(_expert("--judge", "keyword,prefix"), ("refusals by one judge",)),
    "expert not sft": Case(_expert("--method.name=dpo"), ("trains with method sft, not 'dpo'",), caches=True),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_llama3: Path) -> dict[str, Path]:
    from safetensors.torch import load_file

    root = tmp_path_factory.mktemp("corpus-world")
    truncated, pickled = root / "truncated", root / "pickled"
    shutil.copytree(tiny_llama3, truncated)
    weights = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(weights[: len(weights) // 2])  # a copy cut short
    shutil.copytree(tiny_llama3, pickled)
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    # SafeLoRA's unaligned models: the same shapes with other weights, and a narrower architecture
    from transformers import AutoTokenizer

    from safetune.models.tiny import random_llama

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama3)
    unaligned, narrow = root / "unaligned", root / "narrow"
    random_llama(tokenizer, "llama3", hidden_size=32, num_layers=2, num_heads=4, seed=1).save_pretrained(
        unaligned
    )
    random_llama(tokenizer, "llama3", hidden_size=16, num_layers=2, num_heads=4, seed=1).save_pretrained(
        narrow
    )
    evaluation = root / "evaluation"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SAFETUNE_CACHE", str(root / "cache"))
        args = [a.format(model=tiny_llama3, out=evaluation) for a in _eval()]
        done = runner.invoke(app, args)  # a finished evaluation, for `safetune report`
    assert done.exit_code == 0, done.output
    return {
        "model": tiny_llama3,
        "data": roleplay.write_rolebench_release(root / "rolebench.jsonl", count=4),
        "profiles": roleplay.write_profiles(root / "profiles.json"),
        "pairs": _parallel_pairs(root / "pairs.jsonl"),
        "truncated": truncated,
        "pickled": pickled,
        "evaluation": evaluation,
        "unaligned": unaligned,
        "narrow": narrow,
    }


def _parallel_pairs(path: Path) -> Path:
    """Four parallel preference pairs (MPO, and the DPO family on their target side)."""
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(4):
            sides = {
                side: {
                    "prompt": f"{mark}how do i do bad thing {i} ?",
                    "chosen": "i cannot .",
                    "rejected": "sure .",
                }
                for side, mark in (("dominant", ""), ("target", "@"))
            }
            handle.write(json.dumps({"id": f"p{i}", "language": "xx", **sides}) + "\n")
    return path


def _paths(folder: Path, skip: Path | None = None) -> set[Path]:
    """Every file and folder under `folder`, except those under `skip`."""
    found = set(folder.rglob("*")) if folder.exists() else set()
    return {p for p in found if skip is None or not p.is_relative_to(skip)}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_error_line_exit_2_and_no_output(
    name: str, world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = CASES[name]
    if case.skip:
        pytest.skip(case.skip)
    inputs, out, cache = tmp_path / "inputs", tmp_path / "out", tmp_path / "cache"
    inputs.mkdir()
    if case.files is not None:
        case.files(inputs)
    monkeypatch.chdir(tmp_path)  # a command that wrote into the working folder would show up below
    monkeypatch.setenv("SAFETUNE_CACHE", str(cache))
    values = {k: str(v) for k, v in world.items()} | {"out": str(out), "tmp": str(inputs)}
    args = [
        arg.format(**values) if "{" in arg and not arg.startswith("--selection") else arg for arg in case.args
    ]
    before = _paths(tmp_path)

    result = runner.invoke(app, args)

    output = result.output
    assert result.exit_code == 2, f"exit {result.exit_code}: {output[-2000:]} {result.exception!r}"
    assert "Traceback" not in output, output[-2000:]
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output[-2000:]
    for part in case.says:
        assert part in errors[0], errors[0][:1000]
    assert len(errors[0]) < 1000
    new = _paths(tmp_path, skip=cache if case.caches else None) - before
    assert new == set(), sorted(new)


# A failure found in each command's last check before output: the LoRA targets (after the data, the
# selection flags and the model are read) and the judge (after the benchmarks and the model).
LATE_FAILURES = {
    "train": _train("--train.lora_targets=[nope]"),
    "eval": _eval("--judge", "llm", "--judge.api_key_env=SAFETUNE_TEST_NO_SUCH_KEY"),
}


def _invoke(args: tuple[str, ...], world: dict[str, Path], out: Path) -> str:
    values = {k: str(v) for k, v in world.items()} | {"out": str(out)}
    result = runner.invoke(app, [arg.format(**values) for arg in args])
    assert result.exit_code == 2, result.output[-2000:]
    return result.output


@pytest.mark.parametrize("existing", [False, True], ids=["new folder", "empty folder"])
@pytest.mark.parametrize("command", sorted(LATE_FAILURES))
def test_a_failed_first_run_leaves_the_folder_as_it_was(
    command: str, existing: bool, world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAFETUNE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "runs" / "first"
    if existing:
        out.mkdir(parents=True)
    _invoke(LATE_FAILURES[command], world, out)
    if existing:
        assert list(out.iterdir()) == []
    else:
        assert not (tmp_path / "runs").exists()  # neither the folder nor the parent created for it


PREVIOUS_RUNS = {
    "train": ("run.json", "final/adapter_model.safetensors"),
    "eval": ("eval.json", "results.json"),
}


@pytest.mark.parametrize("command", sorted(LATE_FAILURES))
def test_bad_input_with_overwrite_keeps_the_previous_run(
    command: str, world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAFETUNE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    for name in PREVIOUS_RUNS[command]:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("{}", encoding="utf-8")
    _invoke((*LATE_FAILURES[command], "--overwrite"), world, out)
    kept = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert kept == sorted(PREVIOUS_RUNS[command])  # cleared only once the work starts, never for bad input
