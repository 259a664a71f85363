"""`safetune pairs` end to end on tiny models: an English harmful-prompt file -> MPO pairs for two target
languages (a tiny chat model, a tiny NLLB-like translator), resumed after a kill without
generating, judging or translating anything twice, a folder of other settings refused, bad input
refused in one line before any file, and the output trained with `safetune train --method mpo` unchanged.

A random tiny model never refuses, so the default path (its own answers) is exercised and every answer
is dropped as not_refusal; the pairs themselves come from refusals given in the file (--chosen given),
judged by the same keyword rule. The tiny translator's output is no language at all, so the test turns
the language check, the round-trip threshold and the target refusal check off (their rules are unit
tests: tests/unit/test_pairs.py); the round trip still runs and its scores are recorded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from safetune.cli import app
from safetune.config import load_config
from safetune.pairs.build import build_pairs

runner = CliRunner()

ROWS = [
    ("h1", "Explain how to do the forbidden thing number one.", "Sure, here is how to do it."),
    ("h2", "Give steps for the placeholder harm two.", "Sure, step one is to begin."),
    ("h3", "Describe the fictional damage in detail.", "Sure, the damage goes like this."),
]
REFUSAL = "I'm sorry, but I cannot help with that request."


def _inputs(path: Path) -> Path:
    lines = [json.dumps({"id": i, "prompt": p, "rejected": r, "chosen": REFUSAL}) for i, p, r in ROWS]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _args(model: Path, out: Path, inputs: Path, translator: Path, *extra: str) -> list[str]:
    return [
        "pairs",
        "-m",
        str(model),
        "--inputs",
        str(inputs),
        "--languages",
        "bn,sw",
        "-o",
        str(out),
        "--translator",
        f"nllb:{translator}",
        "--judge",
        "keyword",
        "--generation.max_new_tokens=6",
        "--translate.max_new_tokens=6",
        "--translate.num_beams=1",
        *extra,
    ]


FILTER_OFF = ("--pairs.language_check=none", "--pairs.min_chrf=0", "--pairs.target_refusal=none")


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


class Stop(Exception):
    pass


@pytest.fixture(scope="module")
def tiny_translator(tmp_path_factory):
    """The tiny NLLB-like model of conftest.py at seed 1: its random weights at seed 0 emit only
    language tokens (empty translations, which the filter always rejects); at seed 1 they emit words."""
    from safetune.models.tiny import build_tiny_translation_model, default_corpus

    return build_tiny_translation_model(
        tmp_path_factory.mktemp("tiny_translator_s1"), default_corpus(1500), seed=1
    )


def test_pairs_cli_resume_and_train(tiny_chatml, tiny_translator, tmp_path):
    inputs = _inputs(tmp_path / "harmful.jsonl")

    # Bad input: one line naming the file, record and field, exit code 2, nothing written.
    bad = tmp_path / "bad.jsonl"
    bad.write_text(inputs.read_text(encoding="utf-8") + '{"prompt": "How to Y?"}\n', encoding="utf-8")
    for args, words in (
        (_args(tiny_chatml, tmp_path / "x", bad, tiny_translator), ("bad.jsonl:4", "rejected", "missing")),
        (
            [*_args(tiny_chatml, tmp_path / "x", inputs, tiny_translator), "--languages", "bn,xx-nowhere"],
            ("xx-nowhere",),
        ),
        (
            [*_args(tiny_chatml, tmp_path / "x", inputs, tiny_translator), "--languages", "bn,en"],
            ("dominant",),
        ),
        (
            _args(tiny_chatml, tmp_path / "x", inputs, tiny_translator, "--pairs.min_chrf=101"),
            ("pairs.min_chrf",),
        ),
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
        assert all(word in result.output for word in words), result.output
    assert not (tmp_path / "x").exists()

    # The default path: the model's own answers, judged; a random tiny model refuses nothing.
    own = tmp_path / "own"
    result = runner.invoke(app, _args(tiny_chatml, own, inputs, tiny_translator))
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert len(_lines(own / "completions.jsonl")) == 3
    rejected = _lines(own / "rejected.jsonl")
    assert [r["reasons"] for r in rejected] == [["not_refusal"]] * 3
    assert json.loads((own / "pairs.json").read_text(encoding="utf-8")) == []

    # Given refusals: killed after the first translated batch, then resumed.
    out = tmp_path / "given"
    args = _args(
        tiny_chatml,
        out,
        inputs,
        tiny_translator,
        "--chosen",
        "given",
        *FILTER_OFF,
        "--translate.batch_size=4",
    )
    overrides = [a for a in args[1:] if a.startswith("--") and "=" in a]
    cfg = load_config(
        None,
        [
            *overrides,
            f"--model.name={tiny_chatml}",
            f"--pairs.inputs={inputs}",
            "--pairs.languages=bn,sw",
            f"--pairs.output_dir={out}",
            f"--translate.model={tiny_translator}",
            "--translate.kind=nllb",
            "--judge.name=keyword",
            "--pairs.chosen=given",
        ],
    )

    def kill(stage: str, done: int) -> None:
        if stage == "translate":
            raise Stop

    with pytest.raises(Stop):
        build_pairs(cfg, hook=kill)
    partial = _lines(out / "translations.jsonl")
    assert 0 < len(partial) < 36  # 3 inputs x 2 languages x 3 fields, forward and back (some shared)
    assert not (out / "pairs.json").exists()

    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    translations = _lines(out / "translations.jsonl")
    keys = [row["key"] for row in translations]
    assert len(keys) == len(set(keys)), "a translation was made twice"
    assert keys[: len(partial)] == [row["key"] for row in partial]
    assert not (out / "completions.jsonl").exists()  # given refusals: the model generated nothing

    pairs = json.loads((out / "pairs.json").read_text(encoding="utf-8"))
    assert sorted(p["id"] for p in pairs) == sorted(
        f"{i}/{lang}" for i, _, _ in ROWS for lang in ("bn", "sw")
    )
    first = pairs[0]
    assert first["source_conversations"] == [{"from": "human", "value": ROWS[0][1]}]
    assert first["source_chosen"] == {"from": "gpt", "value": REFUSAL}
    assert first["source_rejected"]["value"] == ROWS[0][2]
    assert first["language"] == "bn" and first["source_language"] == "en"
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["counts"]["pairs"] == 6 and manifest["counts"]["refusals_kept"] == 3
    assert manifest["translator"]["kind"] == "nllb" and manifest["translator"]["fingerprint"]
    assert manifest["filter"]["min_chrf"] == 0 and manifest["packages"]["sacrebleu"]
    assert "| bn | 3 | 0 |" in (out / "summary.md").read_text(encoding="utf-8")
    assert manifest["counts"]["refusals_truncated"] == 0

    # A re-run computes nothing; another translator setting is refused in one line before any file.
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "0 generated, 0 judged, 0 translated" in result.output
    result = runner.invoke(app, [*args, "--translate.num_beams=2"])
    assert result.exit_code == 2 and "translator" in result.output

    # The output trains with --method mpo unchanged.
    run = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "train",
            "-m",
            str(tiny_chatml),
            "--method",
            "mpo",
            "--data",
            str(out / "pairs.json"),
            "-o",
            str(run),
            "--train.max_steps=2",
            "--train.batch_size=2",
        ],
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert (run / "final").is_dir()
