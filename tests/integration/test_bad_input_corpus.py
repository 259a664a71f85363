"""The bad-input corpus (issue 12): malformed settings, config files and data through the real CLI.

Every case must exit with code 2 and print exactly one line starting with `error:` that names what is
wrong (the key, or file:line and field), with no traceback and no new file in the output folder.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from safetune.cli import app
from safetune.organism import roleplay

runner = CliRunner()


@dataclass(frozen=True)
class Case:
    """argv (with {model} {data} {profiles} {out} {tmp} placeholders) and what the error line must say."""

    args: tuple[str, ...]
    says: tuple[str, ...]
    files: Callable[[Path], None] | None = None  # writes this case's input files into {tmp}


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
        _write("latin1.yaml", b"train:\n  model: caf\xe9\n"),
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
    "organism seed negative": Case(("organism", "--seed", "-1"), ("--seed",)),
    "tiny heads": Case(("tiny-model", "{out}", "--hidden-size", "10", "--heads", "4"), ("divisible",)),
    "tiny vocab": Case(("tiny-model", "{out}", "--vocab-size", "10"), ("vocab_size must be at least",)),
    "tiny layers": Case(("tiny-model", "{out}", "--layers", "0"), ("--layers",)),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_llama3: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("corpus-world")
    return {
        "model": tiny_llama3,
        "data": roleplay.write_rolebench_release(root / "rolebench.jsonl", count=4),
        "profiles": roleplay.write_profiles(root / "profiles.json"),
    }


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_error_line_exit_2_and_no_output(
    name: str, world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = CASES[name]
    inputs, out = tmp_path / "inputs", tmp_path / "out"
    inputs.mkdir()
    if case.files is not None:
        case.files(inputs)
    monkeypatch.chdir(tmp_path)  # a command that wrote into the working folder would show up below
    monkeypatch.setenv("SAFETUNE_CACHE", str(tmp_path / "cache"))
    values = {k: str(v) for k, v in world.items()} | {"out": str(out), "tmp": str(inputs)}
    args = [
        arg.format(**values) if "{" in arg and not arg.startswith("--selection") else arg for arg in case.args
    ]
    before = _files(tmp_path)

    result = runner.invoke(app, args)

    output = result.output
    assert result.exit_code == 2, f"exit {result.exit_code}: {output[-2000:]} {result.exception!r}"
    assert "Traceback" not in output, output[-2000:]
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output[-2000:]
    for part in case.says:
        assert part in errors[0], errors[0][:1000]
    assert len(errors[0]) < 1000
    assert _files(tmp_path) - before == set(), sorted(_files(tmp_path) - before)
