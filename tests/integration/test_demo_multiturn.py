"""`safetune demo multiturn --quick` end to end through the CLI.

The quick organism is trained for 150 steps only, so this checks the pipeline (cards and chats written,
SFT and SaRFT trained on conversations with `--card`, per-turn selection, eval at turn k with the
held-out chats as context, the baker's `select`, report and summary), not the demo's numbers: those are
in docs/demo.md.
"""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from safetune.cli import app

pytestmark = pytest.mark.slow


def test_demo_multiturn_quick_end_to_end(tmp_path):
    out, cache = tmp_path / "demo", tmp_path / "cache"
    args = ["demo", "multiturn", "--quick", "--out", str(out), "--cache-dir", str(cache)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    summary = json.loads((out / "summary.json").read_text())
    rows = {r["model"]: r for r in summary["rows"]}
    assert list(rows) == ["base", "sft", "sarft"]
    for row in rows.values():
        assert set(row["refusal_at"]) == set(row["over_refusal_at"]) == {"1", "3"}
        assert all(0 <= v <= 100 for v in row["refusal_at"].values())
    for method in ("sft", "sarft"):
        run_dir = out / "runs" / f"grim-vex-{method}"
        assert json.loads((run_dir / "run.json").read_text())["method"] == method
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert config["data"]["card"].endswith("grim-vex.json") and config["data"]["format"] == "messages"
    # SaRFT's per-turn selection, scored against the chats' own record of their edgy turns
    selection = [json.loads(line) for line in (out / "runs" / "grim-vex-sarft" / "selection.jsonl").open()]
    assert {"id", "turn", "flag", "margin"} <= set(selection[0])
    flags = summary["plan"]["flags"]
    assert set(flags) == {"grim-vex", "penny-bun"} and flags["grim-vex"]["edgy"] > 0
    assert (out / "runs" / "penny-bun-select" / "selection_stats.json").exists()
    results = json.loads((out / "eval" / "grim-vex-sarft" / "results.json").read_text())
    assert [r["k"] for r in results["turns"]["harmful-prompts"]["by_turn"]] == [1, 3]
    assert "| expected (issue 23, in miniature) |" in result.output
    assert (out / "report" / "report.md").exists()
