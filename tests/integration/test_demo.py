"""`safetune demo --quick` runs end to end through the CLI."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from safetune.cli import app


def test_demo_quick(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    rows = json.loads((tmp_path / "summary.json").read_text())
    assert {(r["role"], r["method"]) for r in rows} == {
        ("Grim Vex", "sft"),
        ("Grim Vex", "sarft"),
        ("Penny Bun", "sft"),
        ("Penny Bun", "sarft"),
    }
    assert all(r["reference_rows"] == 0 for r in rows if r["method"] == "sft")
    assert "| role | method |" in (tmp_path / "summary.md").read_text()
