"""Imports point down: evaluation/ never reaches into training/, and the frozen-reference home sits below
both (issue 13)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"


def imported_modules(path: Path, root: Path = SRC) -> list[tuple[int, str]]:
    """(line, module) of every import in a file under `root`: function-level and TYPE_CHECKING ones too,
    relative ones resolved, and `from a import b` as both `a` and `a.b` (b may be a module)."""
    package = path.parent.relative_to(root).parts
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else ()
            module = ".".join((*base, *([node.module] if node.module else [])))
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def violations(folder: Path, forbidden: str, root: Path = SRC) -> list[str]:
    files = sorted(folder.rglob("*.py"))
    assert files, f"no modules under {folder}"
    return [
        f"{path.relative_to(root)}:{line} imports {module}"
        for path in files
        for line, module in imported_modules(path, root)
        if module == forbidden or module.startswith(f"{forbidden}.")
    ]


def test_evaluation_imports_nothing_from_training():
    assert violations(SRC / "safetune" / "evaluation", "safetune.training") == []


@pytest.mark.parametrize("above", ["safetune.training", "safetune.evaluation", "safetune.selection"])
def test_the_reference_home_sits_below_training_evaluation_and_selection(above):
    assert violations(SRC / "safetune" / "reference", above) == []


def test_the_check_sees_function_level_and_relative_imports(tmp_path):
    folder = tmp_path / "safetune" / "evaluation" / "judges"
    folder.mkdir(parents=True)
    (folder / "late.py").write_text(
        "import json\n\n\ndef late():\n    from safetune.training import mpo\n"
        "    from ...training.run import train\n    from ..metrics import summarise\n",
        encoding="utf-8",
    )
    found = violations(tmp_path / "safetune" / "evaluation", "safetune.training", root=tmp_path)
    assert found == [
        "safetune/evaluation/judges/late.py:5 imports safetune.training",
        "safetune/evaluation/judges/late.py:5 imports safetune.training.mpo",
        "safetune/evaluation/judges/late.py:6 imports safetune.training.run",
        "safetune/evaluation/judges/late.py:6 imports safetune.training.run.train",
    ]
