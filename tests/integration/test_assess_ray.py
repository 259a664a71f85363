"""The same tiny study (2 roles x sft, in the SaRFT authors' layout, judged by two judges) run through
the CLI once with the sequential executor and once with `--executor ray` on a local 2-CPU Ray: the same
rows in results.csv, value for value."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest
from tests.integration.test_assess_cli import _command, _env, write_authors_layout

pytest.importorskip("ray")


def _rows(study: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((study / "results.csv").open(encoding="utf-8")))


@pytest.mark.slow  # two studies of 5 units each, one of them on a Ray it starts
def test_ray_executor_gives_the_sequential_rows(tiny_chatml: Path, tmp_path: Path) -> None:
    roles_dir, profiles, harmful = write_authors_layout(tmp_path / "data")
    runs, drivers = {}, {}
    for name, extra in {
        "sequential": [],
        "ray": ["--executor", "ray", "--ray-local-cpus", "2", "--assess.cpus_per_unit=1"],
    }.items():
        study = tmp_path / name
        args = _command(
            tiny_chatml,
            roles_dir,
            profiles,
            harmful,
            study,
            "--roles",
            "Grim_Vex,Penny Bun",
            "--methods",
            "sft",
            "--judge",
            "keyword,prefix",
        )
        process = subprocess.Popen(
            [*args, *extra], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        out, err = process.communicate(timeout=900)
        assert process.returncode == 0, err
        # 1 shared base safety + 2 base role-play + 2 fine-tunes
        assert "5 units run now, 0 finished before" in out
        runs[name], drivers[name] = _rows(study), process.pid
    assert len(runs["sequential"]) == 2
    assert runs["ray"] == runs["sequential"]
    for row in runs["ray"]:
        assert row["drop_sft"] != "" and row["roleplay_sft"] != "" and row["flag_rate"] != ""
        # two judges: the second one's agreement with the primary, per run
        assert row["agreement_base"] != "" and row["agreement_sft"] != ""
    # the tiny model's rates are flat (0 everywhere), so the units' own work is compared too: the
    # training loss of each fine-tune and every generated answer, and where each unit ran
    for unit in sorted(p.relative_to(tmp_path / "ray") for p in (tmp_path / "ray").rglob("unit.json")):
        ray_unit, seq_unit = (json.loads((tmp_path / n / unit).read_text()) for n in ("ray", "sequential"))
        assert ray_unit["train"] == seq_unit["train"]
        assert seq_unit["worker"]["pid"] == drivers["sequential"]
        assert ray_unit["worker"]["pid"] != drivers["ray"]  # a Ray worker process, not the driver
        answers = [(tmp_path / n / unit).parent / "eval" / "completions.jsonl" for n in ("ray", "sequential")]
        texts = [[json.loads(line)["text"] for line in a.read_text().splitlines()] for a in answers]
        assert texts[0] == texts[1] and texts[0]
    identities = {
        name: json.loads((tmp_path / name / "study.json").read_text())["identity_hash"] for name in runs
    }
    assert identities["ray"] == identities["sequential"]  # the executor is no part of a study's identity
