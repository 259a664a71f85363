"""`safetune report`: read results.json files, write report.md, report.csv and PNG plots.

Run as: safetune report runs/ev-base runs/ev-sft runs/ev-sarft -o report

Nothing is recomputed: every number is read from results.json (safetune.evaluation.results). Each file
is loaded and checked first; a missing or malformed one raises a one-line DataError naming the file and
the field. All outputs are written atomically.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from safetune.errors import ConfigError
from safetune.evaluation import results
from safetune.evaluation.results import Results
from safetune.reports import plots, tables
from safetune.reports.tables import Run
from safetune.storage import atomic_open, output_lock

log = logging.getLogger(__name__)

# Folder names that say little about a run: the label keeps their parent too.
_GENERIC_NAMES = {"final", "adapter", "model", "merged", "output", "out", "latest", "best", "results"}


def load_results(path: str | Path) -> tuple[Path, Results]:
    """Read and check one results.json (or the one in an evaluation folder): its path and content."""
    path = results.locate(path)
    return path, results.load(path)


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


def run_labels(loaded: Sequence[tuple[Path, Results]], labels: Sequence[str] | None) -> list[str]:
    """Given labels, else the shortened model labels; duplicates get their evaluation folder's name,
    then a number."""
    if labels is not None:
        if len(labels) != len(loaded):
            raise ConfigError(f"{len(labels)} labels for {len(loaded)} runs (give one --label per run)")
        names = list(labels)
    else:
        names = []
        for path, content in loaded:
            model = content.provenance.model
            name = short_label(model.label if model and model.label else path.parent.name)
            defence = content.provenance.defence
            # A defended evaluation of a model is not the model's: "villain-sft + rose" beside "villain-sft".
            names.append(name if defence is None else f"{name} + {defence['name']}")
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
    """Write report.md, report.csv, pareto.png and (when there is data for them) roles.png,
    languages.png and turns.png (refusal against turn k) into `out`; returns {"markdown", "csv",
    "pareto", ["roles"], ["languages"], ["turns"]} -> path.

    A roles.png / languages.png left in `out` by an earlier report is removed when this one has none.
    """
    if not run_dirs:
        raise ConfigError("no runs to report on (give evaluation folders or results.json files)")
    loaded = [load_results(p) for p in run_dirs]
    runs = [
        Run(label, path, content)
        for label, (path, content) in zip(run_labels(loaded, labels), loaded, strict=True)
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
        ("turns", plots.has_turns, plots.turns_plot),
    ):
        path = out / f"{key}.png"
        if has(runs):
            paths[key] = plot(runs, path)
        else:
            path.unlink(missing_ok=True)
    return paths
