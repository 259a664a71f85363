"""`safetune assess --defence NAME` on the tiny model: every unit's evaluation (the base model's and each
fine-tune's) decodes under the defence, the study's identity holds the defence's record (another defence,
none, or another setting is refused in one line before anything is written), and results.csv,
summary.json and report.md say which defence. SafeDecoding's expert must come from the study's model."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from tests.integration.test_assess_cli import _command, _env, write_authors_layout
from typer.testing import CliRunner

from adapters import lora_run
from safetune.cli import app

runner = CliRunner()


def _study_args(model: Path, data: Path, study: Path, *extra: str) -> list[str]:
    roles_dir, profiles, harmful = write_authors_layout(data) if not data.exists() else _layout(data)
    return _command(
        model,
        roles_dir,
        profiles,
        harmful,
        study,
        "--roles",
        "Grim_Vex",
        "--methods",
        "sft",
        "--roleplay",
        "none",
        "--train.max_steps=1",
        *extra,
    )[3:]


def _layout(data: Path) -> tuple[Path, Path, Path]:
    return data / "roles", data / "prompt_v2.json", data / "harmful.jsonl"


def _units(study: Path) -> dict[str, int]:
    return {str(p.relative_to(study)): p.stat().st_mtime_ns for p in study.rglob("unit.json")}


def _texts(folder: Path) -> dict[str, str]:
    lines = (folder / "completions.jsonl").read_text(encoding="utf-8").splitlines()
    return {row["id"]: row["text"] for row in map(json.loads, lines)}


def test_study_under_rose_records_reports_and_refuses_another_defence(tiny_chatml, tmp_path):
    data, study = tmp_path / "data", tmp_path / "study"
    args = _study_args(tiny_chatml, data, study, "--defence", "rose", "--defence.alpha=0.7")
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "1 roles: 2 units run now, 0 finished before" in result.stdout

    # Both units (the base model, the fine-tune) generated under the defence, as results.json and
    # unit.json record; the units read it from config.yaml, as any executor's workers do.
    for unit in ("base", "units/grim_vex/sft"):
        provenance = json.loads((study / unit / "eval" / "results.json").read_text())["provenance"]
        assert (provenance["defence"]["name"], provenance["defence"]["alpha"]) == ("rose", 0.7)
        assert json.loads((study / unit / "unit.json").read_text())["defence"] == provenance["defence"]
    assert "name: rose" in (study / "config.yaml").read_text()
    identity = json.loads((study / "study.json").read_text())["identity"]
    assert identity["defence.name"] == "rose" and identity["defence.alpha"] == 0.7
    # The base unit's answers are those of `safetune eval --defence rose` on the model: the same engine.
    plain = tmp_path / "eval-rose"
    harmful = data / "harmful.jsonl"
    direct = runner.invoke(
        app,
        [
            "eval",
            "-m",
            str(tiny_chatml),
            "--benchmarks",
            f"harmful-prompts={harmful}",
            "-o",
            str(plain),
            "--generation.max_new_tokens=6",
            "--eval.bootstrap=10",
            "--defence",
            "rose",
            "--defence.alpha=0.7",
        ],
    )
    assert direct.exit_code == 0, direct.output
    assert "defence: rose (safety defence), alpha 0.7" in direct.stdout
    assert _texts(study / "base" / "eval") == _texts(plain)

    rows = list(csv.DictReader((study / "results.csv").open(encoding="utf-8")))
    assert [(r["defence"], r["defence_purpose"], r["defence_alpha"]) for r in rows] == [
        ("rose", "safety defence", "0.7")
    ]
    assert json.loads((study / "summary.json").read_text())["defence"]["name"] == "rose"
    assert "**Decoding defence: rose (safety defence), alpha 0.7.**" in (study / "report.md").read_text()

    # Another defence, none, or another alpha: another study, refused in one line; nothing rewritten.
    before = _units(study)
    written = {p: p.stat().st_mtime_ns for p in (study / "study.json", study / "results.csv")}
    for extra, message in (
        ((), "differs in defence: the study's rose, this run's none"),
        (("--defence", "self-cd"), "differs in defence: the study's rose, this run's self-cd"),
        (("--defence", "rose"), "(differs in defence.alpha)"),
    ):
        refused = runner.invoke(app, _study_args(tiny_chatml, data, study, *extra))
        assert refused.exit_code == 2, refused.output
        assert message in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert _units(study) == before
    assert {p: p.stat().st_mtime_ns for p in written} == written

    again = runner.invoke(app, args)  # the same study: nothing to run
    assert again.exit_code == 0 and "0 units run now, 2 finished before" in again.stdout


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ("--defence", "rose", "--generation.backend=mock"),
            "generation.backend=mock cannot run the decoding defence",
        ),
        (
            ("--defence", "rose", "--defence.expert=x"),
            "defence.expert is a setting of safedecoding, not of rose",
        ),
        (("--defence", "safedecoding"), "defence.name=safedecoding needs defence.expert"),
        (("--defence.alpha=2",), "defence.alpha is set but no defence is chosen"),
    ],
)
def test_assess_defence_bad_input_writes_nothing(tiny_chatml, tmp_path, extra, message):
    study = tmp_path / "study"
    result = runner.invoke(app, _study_args(tiny_chatml, tmp_path / "data", study, *extra))
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not study.exists() and not (tmp_path / "cache").exists()


def test_safedecoding_expert_of_another_base_is_refused_before_the_study(tiny_chatml, tiny_llama3, tmp_path):
    expert = lora_run(tiny_llama3, tmp_path / "expert")
    study = tmp_path / "study"
    extra = ("--defence", "safedecoding", f"--defence.expert={expert}")
    result = runner.invoke(app, _study_args(tiny_chatml, tmp_path / "data", study, *extra))
    assert result.exit_code == 2, result.output
    assert "the safety expert was trained on" in result.stderr
    assert f"but this study's base model is '{tiny_chatml}'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not study.exists()


def test_forecast_with_a_defence_is_refused(tiny_chatml, tmp_path):
    roles_dir, profiles, _ = write_authors_layout(tmp_path / "data")
    args = [
        "assess",
        "--forecast",
        str(tmp_path / "forecast.json"),
        "-m",
        str(tiny_chatml),
        "--data",
        str(roles_dir),
        "--profiles",
        str(profiles),
        "--defence",
        "rose",
        "-o",
        str(tmp_path / "risk"),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "--forecast evaluates nothing" in result.stderr
    assert not (tmp_path / "risk").exists()


@pytest.mark.slow  # two fine-tunes and a SafeDecoding eval each, one study on a local Ray: minutes
@pytest.mark.parametrize("executor", ["sequential", "ray"])
def test_safedecoding_study_with_its_expert(tiny_chatml, tmp_path, executor):
    """SafeDecoding in a study, the expert a LoRA on the study's model: the base unit runs base + expert
    adapter, the fine-tune (a LoRA) role adapter + expert adapter in one batch; under Ray the units run
    in worker processes, which read the defence from the study's config.yaml."""
    if executor == "ray":
        pytest.importorskip("ray")
    expert = lora_run(tiny_chatml, tmp_path / "expert")
    study = tmp_path / "study"
    extra = ["--defence", "safedecoding", f"--defence.expert={expert}", "--defence.preset=class"]
    if executor == "ray":
        extra += ["--executor", "ray", "--ray-local-cpus", "2", "--assess.cpus_per_unit=1"]
    args = [sys.executable, "-m", "safetune.cli", *_study_args(tiny_chatml, tmp_path / "data", study, *extra)]
    process = subprocess.Popen(args, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = process.communicate(timeout=900)
    assert process.returncode == 0, err
    assert "2 units run now" in out
    for unit in ("base", "units/grim_vex/sft"):
        record = json.loads((study / unit / "unit.json").read_text())
        defence = record["defence"]
        assert (defence["name"], defence["first_m"], defence["num_common"]) == ("safedecoding", 5, 3)
        assert defence["expert_model"]["adapter"] == str((expert / "final").resolve())
        # under Ray a worker process ran the unit, not the driver
        assert (record["worker"]["pid"] == process.pid) == (executor == "sequential")
    rows = list(csv.DictReader((study / "results.csv").open(encoding="utf-8")))
    assert rows[0]["defence"] == "safedecoding" and "preset class" in rows[0]["defence_settings"]
