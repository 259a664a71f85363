"""`safetune demo mpo --quick` end to end through the CLI, and `safetune organism --world multilingual`.

The quick organism is trained for 250 steps only, so this checks the pipeline (every model trained,
evaluated per language with the organism judge and the qa benchmark, reward gaps measured, report and
summary written, caches reused), not the demo's numbers: those are in docs/demo.md.
"""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from safetune.cli import app

# The slow tier: minutes each on 2 cores (`make test` runs it; plain `pytest` skips it).
pytestmark = pytest.mark.slow


def test_demo_mpo_quick_end_to_end(tmp_path):
    out, cache = tmp_path / "demo", tmp_path / "cache"
    args = ["demo", "mpo", "--quick", "--out", str(out), "--cache-dir", str(cache)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    summary = json.loads((out / "summary.json").read_text())
    rows = {r["variant"]: r for r in summary["rows"]}
    assert list(rows) == ["base", "sft", "dpo", "mpo"]
    for row in rows.values():
        for lang in ("l1", "l2"):
            assert 0 <= row[f"refusal_{lang}"] <= 100 and 0 <= row[f"utility_{lang}"] <= 100
            assert isinstance(row[f"gap_{lang}"], float)
    # The premise already holds on the short-trained organism: safe in L1, not in L2.
    assert rows["base"]["refusal_l1"] >= 90 and rows["base"]["refusal_l2"] <= 30
    assert rows["base"]["gap_l1"] > rows["base"]["gap_l2"] + 1
    # Every fine-tune is a real run of `safetune train` with its method.
    for variant, method in (("sft", "sft-chosen"), ("dpo", "dpo"), ("mpo", "mpo")):
        run = json.loads((out / "runs" / variant / "run.json").read_text())
        assert run["method"] == method
    mpo_config = yaml.safe_load((out / "runs" / "mpo" / "config.yaml").read_text())
    assert mpo_config["method"]["beta"] == summary["plan"]["mpo_beta"]
    results = json.loads((out / "eval" / "mpo" / "results.json").read_text())
    assert results["provenance"]["judge"]["name"] == "organism"
    assert set(results["benchmarks"]["qa"]["by_language"]) == {"l1", "l2"}
    assert len(summary["checks"]) == 6 and summary["checks"][3][2] is None  # MPO vs DPO: reported
    assert "| expected (the MPO paper, in miniature) |" in result.output
    assert (out / "report" / "report.md").exists() and (out / "report" / "pareto.png").exists()
    assert len(list((cache / "mpo").iterdir())) == 1  # one reference cache, for the MPO run

    # A second run reuses the organism and the MPO reference cache (no new entries for MPO's own row),
    # and adds the cross-lingual baselines and MPO on the pairs `safetune pairs` builds on the organism.
    again = CliRunner().invoke(app, [*args, "--beta", "8", "--methods", "sdrrl,lens,mpo-built"])
    assert again.exit_code == 0, again.output + repr(again.exception)
    assert len(list((cache / "organism").iterdir())) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["plan"]["mpo_beta"] == 8
    assert [r["variant"] for r in summary["rows"]] == [
        "base",
        "sft",
        "dpo",
        "mpo",
        "sdrrl",
        "lens",
        "mpo-built",
    ]
    for variant in ("sdrrl", "lens", "mpo-built"):
        run = json.loads((out / "runs" / variant / "run.json").read_text())
        assert run["method"] == variant.removesuffix("-built")
    manifest = json.loads((out / "data" / "built" / "manifest.json").read_text())
    assert manifest["translator"]["kind"] == "organism" and manifest["counts"]["pairs"] > 0
    built = yaml.safe_load((out / "runs" / "mpo-built" / "config.yaml").read_text())
    assert built["data"]["path"] == str(out / "data" / "built" / "pairs.json")
    # one MPO reference cache per pairs file (the world's and the built one); LENS's frozen pass cached
    assert len(list((cache / "mpo").iterdir())) == 2 and any((cache / "lens").iterdir())
    assert "### The added rows against MPO" in again.output


def test_organism_multilingual_writes_the_world(tmp_path):
    cache, data = tmp_path / "cache", tmp_path / "world"
    (cache / "organism").mkdir(parents=True)
    result = CliRunner().invoke(
        app, ["organism", "--world", "nope", "--cache-dir", str(cache), "--data", str(data)]
    )
    assert result.exit_code != 0 and "nope" in result.output
    assert not data.exists()
