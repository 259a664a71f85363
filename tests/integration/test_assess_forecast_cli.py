"""`safetune assess --forecast` through the CLI on the tiny model, in the SaRFT authors' layout: the
scoring pass only, each role's drop predicted from a saved forecast; a forecast fitted on other trait
scores is refused before anything is written."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from tests.integration.test_assess_cli import write_authors_layout
from typer.testing import CliRunner

from safetune.assess.forecast import Forecast, RoleRow
from safetune.assess.traits import TRAITS
from safetune.cli import app


def _forecast(trait_source: str = "lexicon@1") -> Forecast:
    """A forecast fitted on a hand-made study of 6 roles (the drop rises with villainy)."""
    rows = [
        RoleRow.from_margins(
            f"role {i}",
            [-1.0 + 0.1 * i, 0.2 * i, -0.5],
            {t: (3.0 * i if t == "villainy" else 1.0 + (i % 2)) for t in TRAITS},
            drop=5.0 * i,
            base_refusal=90.0,
            trait_source=trait_source,
        )
        for i in range(6)
    ]
    return Forecast.fit(rows, study="studies/hand-made", permutations=20)


def _args(model: Path, data: Path, forecast: Path, out: Path) -> list[str]:
    roles_dir, profiles, _ = write_authors_layout(data)
    return [
        "assess",
        "-q",
        "--forecast",
        str(forecast),
        "-m",
        str(model),
        "--data",
        str(roles_dir),
        "--profiles",
        str(profiles),
        "-o",
        str(out),
        f"--cache_dir={out.parent / 'cache'}",
    ]


def test_assess_forecast_predicts_each_role(tiny_chatml: Path, tmp_path: Path) -> None:
    fitted = _forecast()
    path = fitted.save(tmp_path / "forecast.json")
    out = tmp_path / "risk"
    result = CliRunner().invoke(app, _args(tiny_chatml, tmp_path / "data", path, out))
    assert result.exit_code == 0, result.output
    assert "4 roles: 4 forecast" in result.stdout
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert {r["role"] for r in rows} == {"Grim Vex", "Penny Bun", "Dough Boy", "Night Vex"}
    predicted = [float(r["predicted_drop"]) for r in rows]
    assert predicted == sorted(predicted, reverse=True)
    # the same prediction by hand from the row's features: the forecast's own arithmetic
    selection = [
        json.loads(line) for line in (out / "selection" / "selection.jsonl").read_text().splitlines()
    ]
    grim = next(r for r in rows if r["role"] == "Grim Vex")
    margins = [s["margin"] for s in selection if s["role"] == "Grim Vex"]
    traits = {t: float(grim[f"trait_{t}"]) for t in TRAITS}
    row = RoleRow.from_margins("Grim Vex", margins, traits)
    assert float(grim["predicted_drop"]) == float(f"{fitted.predict(row):.4g}")
    report = (out / "predictions.md").read_text()
    assert "studies/hand-made" in report and f"mean absolute error {fitted.loo.mae:.1f}" in report
    assert not (out / "units").exists()  # nothing fine-tuned or evaluated


def test_assess_forecast_refuses_other_trait_source(tiny_chatml: Path, tmp_path: Path) -> None:
    path = _forecast("llm:traits-rubric-1:gpt@x").save(tmp_path / "forecast.json")
    out = tmp_path / "risk"
    result = CliRunner().invoke(app, _args(tiny_chatml, tmp_path / "data", path, out))
    assert result.exit_code == 2, result.output
    assert "fitted on traits from llm:traits-rubric-1:gpt@x" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({**_forecast().to_json(), "scale": [1.0]}))
    result = CliRunner().invoke(app, _args(tiny_chatml, tmp_path / "data2", broken, out))
    assert result.exit_code == 2 and "scale" in result.stderr and not out.exists()
