"""No module of the package imports another module's private (`_name`) names.

A leading underscore says "only this module uses it"; a name another module needs is part of its
home module's interface and gets a public name there. Tests may still reach into a module's privates.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_imports(root: Path = SRC) -> list[str]:
    """`path:line: from module import _name` for every such import under `root` (any depth in a file)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if not node.module.startswith("safetune"):
                    continue
                names = [alias.name for alias in node.names if _private(alias.name)]
                if names or any(_private(part) for part in node.module.split(".")):
                    where = path.relative_to(root)
                    found.append(f"{where}:{node.lineno}: from {node.module} import {', '.join(names)}")
            elif isinstance(node, ast.ImportFrom) and node.level > 0:
                found.append(f"{path.relative_to(root)}:{node.lineno}: relative import (write it absolute)")
    return found


def test_no_module_imports_another_modules_private_names() -> None:
    assert private_imports() == []


def test_the_check_sees_private_names_at_any_depth(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text(
        "from safetune.data.readers import read_text, __version__\n"
        "def f():\n    from safetune.data.sources import _profile\n",
        encoding="utf-8",
    )
    assert private_imports(tmp_path) == ["m.py:3: from safetune.data.sources import _profile"]
