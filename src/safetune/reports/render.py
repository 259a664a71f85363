"""`safetune report`: read results.json files, write report.md, report.csv and PNG plots.

Run as: safetune report runs/ev-base runs/ev-sft runs/ev-sarft -o report

Nothing is recomputed: every number is read from results.json (see safetune.evaluation.metrics for its
schema). Each file is checked first; a missing or malformed one raises a one-line DataError naming the
file and the field. All outputs are written atomically.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safetune.errors import ConfigError, DataError
from safetune.evaluation.metrics import SCHEMA_VERSION
from safetune.reports import plots, tables
from safetune.reports.tables import Run
from safetune.storage import atomic_open, output_lock

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
_SUMMARY_NUMBERS = (
    "rolebench_raw",
    "rolebench_spe",
    "rolebench_avg",
    "safety_avg",
    "jailbreak_avg",
    "over_refusal",
)
# Folder names that say little about a run: the label keeps their parent too.
_GENERIC_NAMES = {"final", "adapter", "model", "merged", "output", "out", "latest", "best", "results"}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_number(path: Path, field: str, value: Any) -> None:
    if value is not None and not _is_number(value):
        raise DataError(path, None, field, f"expected a number or null, got {value!r}")


def _check_group(path: Path, field: str, group: Any) -> None:
    if not isinstance(group, dict):
        raise DataError(path, None, field, "expected an object")
    for key in ("n", "value"):
        if key not in group:
            raise DataError(path, None, f"{field}.{key}", "missing")
    if not isinstance(group["n"], int) or isinstance(group["n"], bool):
        raise DataError(path, None, f"{field}.n", f"expected an integer, got {group['n']!r}")
    for key in ("value", "asr", "n_valid", "n_invalid", "n_uncovered"):
        _check_number(path, f"{field}.{key}", group.get(key))
    ci = group.get("ci95")
    if ci is not None and not (isinstance(ci, list) and len(ci) == 2 and all(_is_number(v) for v in ci)):
        raise DataError(path, None, f"{field}.ci95", f"expected [low, high] or null, got {ci!r}")


def _check(path: Path, results: Any) -> dict[str, Any]:
    if not isinstance(results, dict):
        raise DataError(path, None, None, "expected a JSON object")
    if "schema_version" not in results:
        raise DataError(path, None, "schema_version", "missing (not a safetune results.json?)")
    if results["schema_version"] != SCHEMA_VERSION:
        raise DataError(
            path,
            None,
            "schema_version",
            f"unsupported version {results['schema_version']!r} (this safetune reads {SCHEMA_VERSION})",
        )
    for key in ("provenance", "benchmarks", "summary"):
        if not isinstance(results.get(key), dict):
            raise DataError(path, None, key, "missing" if key not in results else "expected an object")
    for key in ("model", "judge"):
        value = results["provenance"].get(key)
        if value is not None and not isinstance(value, dict):
            raise DataError(path, None, f"provenance.{key}", "expected an object or null")
    for name, bench in results["benchmarks"].items():
        field = f"benchmarks.{name}"
        _check_group(path, field, bench)
        if not isinstance(bench.get("metric"), str):
            raise DataError(path, None, f"{field}.metric", "missing or not a string")
        for grouping in ("by_role", "by_language"):
            groups = bench.get(grouping) or {}
            if not isinstance(groups, dict):
                raise DataError(path, None, f"{field}.{grouping}", "expected an object")
            for key, group in groups.items():
                _check_group(path, f"{field}.{grouping}.{key}", group)
    summary = results["summary"]
    for key in _SUMMARY_NUMBERS:
        _check_number(path, f"summary.{key}", summary.get(key))
    per_language = summary.get("multilingual_asr")
    if per_language is not None:
        if not isinstance(per_language, dict):
            raise DataError(path, None, "summary.multilingual_asr", "expected an object or null")
        for lang, value in per_language.items():
            _check_number(path, f"summary.multilingual_asr.{lang}", value)
    used = summary.get("used")
    if used is not None and not (isinstance(used, dict) and all(isinstance(v, list) for v in used.values())):
        raise DataError(path, None, "summary.used", "expected an object of lists")
    return results


def load_results(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """Read and check one results.json (or the one in an evaluation folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    if not path.is_file():
        raise DataError(path, None, None, "no such file (run `safetune eval` first)")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(path, err.lineno, None, f"not valid JSON ({err.msg})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(path, None, None, f"cannot read: {err}") from None
    return path, _check(path, results)


def short_label(label: str) -> str:
    """The last path component of a model label ("runs/villain-sarft" -> "villain-sarft"), with its
    parent when the last one is generic ("runs/x/checkpoint-100" -> "x/checkpoint-100")."""
    parts = [p for p in label.replace("\\", "/").split("/") if p and p != "."]
    if not parts:
        return label or "run"
    last = parts[-1]
    if len(parts) > 1 and (last.lower() in _GENERIC_NAMES or last.lower().startswith("checkpoint")):
        return f"{parts[-2]}/{last}"
    return last


def run_labels(loaded: Sequence[tuple[Path, dict[str, Any]]], labels: Sequence[str] | None) -> list[str]:
    """Given labels, else the shortened model labels; duplicates get their evaluation folder's name,
    then a number."""
    if labels is not None:
        if len(labels) != len(loaded):
            raise ConfigError(f"{len(labels)} labels for {len(loaded)} runs (give one --label per run)")
        names = list(labels)
    else:
        names = []
        for path, results in loaded:
            model = results["provenance"].get("model") or {}
            names.append(short_label(str(model.get("label") or path.parent.name)))
    counts = Counter(names)
    names = [
        f"{name} ({path.parent.name})" if counts[name] > 1 else name
        for name, (path, _) in zip(names, loaded, strict=True)
    ]
    seen: Counter[str] = Counter()
    unique = []
    for name in names:
        seen[name] += 1
        unique.append(name if seen[name] == 1 else f"{name} #{seen[name]}")
    return unique


def _write_text(path: Path, text: str) -> Path:
    with atomic_open(path) as handle:
        handle.write(text)
    return path


def _role_legend(runs: Sequence[Run]) -> str:
    """The names behind the role ids of roles.png, when no installed font could draw them."""
    legend = plots.role_legend(runs)
    if not legend:
        return ""
    lines = [
        "",
        "## Role ids in roles.png",
        "",
        "No installed font has these names' glyphs (install one, "
        "e.g. Noto Sans CJK, to see the names on the plot):",
        "",
    ]
    lines += [f"- {ident}: {name}" for ident, name in legend]
    return "\n".join(lines) + "\n"


def render_report(
    run_dirs: Sequence[Path], out: Path, labels: Sequence[str] | None = None
) -> dict[str, Path]:
    """Write report.md, report.csv, pareto.png and (when there is data for them) roles.png and
    languages.png into `out`; returns {"markdown", "csv", "pareto", ["roles"], ["languages"]} -> path.

    A roles.png / languages.png left in `out` by an earlier report is removed when this one has none.
    """
    if not run_dirs:
        raise ConfigError("no runs to report on (give evaluation folders or results.json files)")
    loaded = [load_results(p) for p in run_dirs]
    runs = [
        Run(label, path, results)
        for label, (path, results) in zip(run_labels(loaded, labels), loaded, strict=True)
    ]
    warning = tables.judge_warning(runs)
    if warning:
        log.warning(warning.replace("**", ""))
    out = Path(out)
    # The lock turns an output folder that cannot be created or written into one error line, and a
    # report that fails leaves no folder behind.
    with output_lock(out):
        return _write_report(runs, out)


def _write_report(runs: list[Run], out: Path) -> dict[str, Path]:
    paths = {
        "markdown": _write_text(out / "report.md", tables.markdown(runs) + _role_legend(runs)),
        "csv": _write_text(out / "report.csv", tables.csv_text(runs)),
        "pareto": plots.pareto_plot(runs, out / "pareto.png"),
    }
    for key, has, plot in (
        ("roles", plots.has_roles, plots.roles_plot),
        ("languages", plots.has_languages, plots.languages_plot),
    ):
        path = out / f"{key}.png"
        if has(runs):
            paths[key] = plot(runs, path)
        else:
            path.unlink(missing_ok=True)
    return paths
