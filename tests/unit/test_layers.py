"""Imports point down (docs/architecture.md).

Every module of the package sits in one component (a package, or a module with the small modules it
owns), and every component in one layer. A module may import its own component and anything in a
lower layer: never a sibling component of its own layer, never anything above. Top-level,
function-level, TYPE_CHECKING and relative imports all count: an import written inside a function to
dodge a cycle is still a dependency. Also: no module imports another module's private (`_name`) names;
a name another module needs gets a public name in its home module.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
ROOT = "safetune"  # the package itself (its __init__ holds only __version__)

# Bottom to top: layer -> {component: the module prefixes it covers}.
LAYERS: tuple[dict[str, tuple[str, ...]], ...] = (
    {"package": (ROOT,), "errors": ("safetune.errors",), "console": ("safetune.console",)},
    {
        "config": ("safetune.config",),
        "storage": ("safetune.storage",),
        "provenance": ("safetune.provenance",),
    },
    {"launch": ("safetune.launch",)},
    {"data": ("safetune.data",)},
    {"models": ("safetune.models",)},
    {"translation": ("safetune.translation",), "decoding": ("safetune.decoding",)},
    {"methods": ("safetune.methods",)},
    {"frozen-reference passes": ("safetune.reference",)},
    {"selection": ("safetune.selection", "safetune.selection_variants"), "organism": ("safetune.organism",)},
    {"training": ("safetune.training",), "evaluation": ("safetune.evaluation",)},
    {"reports": ("safetune.reports",)},
    {
        "assess": ("safetune.assess",),
        "safety expert": ("safetune.expert",),
        "pair builder": ("safetune.pairs",),
    },
    {"demos": ("safetune.demos",)},
    {"cli": ("safetune.cli",)},
)

# Imports that break the order today, each with why it is still there: (importer, imported) -> reason.
# Empty now; an entry added here must name the issue that removes it, and goes once it is gone.
EXCEPTIONS: dict[tuple[str, str], str] = {}


def module_name(path: Path, root: Path = SRC) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def known_modules(root: Path = SRC) -> set[str]:
    return {module_name(path, root) for path in root.rglob("*.py")}


def imports(path: Path, modules: set[str], root: Path = SRC) -> Iterator[tuple[int, str, str | None]]:
    """(line, imported module, the name taken from it if any) for every import in a file, at any depth.
    Relative imports are resolved; `from a import b` is module `a.b` when that is a module."""
    package = module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, None
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            for alias in node.names:
                yield node.lineno, m if (m := f"{module}.{alias.name}") in modules else module, alias.name


def component_of(module: str) -> tuple[int, str] | None:
    """(layer, component) of a module of the package: the longest prefix that covers it."""
    best: tuple[int, int, str] | None = None
    for layer, components in enumerate(LAYERS):
        for name, prefixes in components.items():
            for prefix in prefixes:
                covers = module == prefix or (prefix != ROOT and module.startswith(f"{prefix}."))
                if covers and (best is None or len(prefix) > best[0]):
                    best = (len(prefix), layer, name)
    return None if best is None else (best[1], best[2])


def layer_violations(root: Path = SRC) -> list[str]:
    modules = known_modules(root)
    found = set()
    for path in sorted(root.rglob("*.py")):
        importer = module_name(path, root)
        here = component_of(importer)
        assert here is not None, f"{importer} is in no layer: add it to LAYERS in {Path(__file__).name}"
        for line, imported, _ in imports(path, modules, root):
            if imported != ROOT and not imported.startswith(f"{ROOT}."):
                continue
            there = component_of(imported)
            assert there is not None, (
                f"{path.relative_to(root)}:{line} imports {imported}, which is in no layer"
            )
            upward = there[0] > here[0] or (there[0] == here[0] and there[1] != here[1])
            if upward and (importer, imported) not in EXCEPTIONS:
                found.add(f"{path.relative_to(root)}:{line}: {here[1]} imports {imported} ({there[1]})")
    return sorted(found)


def private_imports(root: Path = SRC) -> list[str]:
    """`path:line: module._name` for each import of another module's private name."""
    modules = known_modules(root)
    found = []
    for path in sorted(root.rglob("*.py")):
        for line, imported, name in imports(path, modules, root):
            if name and name.startswith("_") and not name.endswith("__") and imported.startswith(ROOT):
                found.append(f"{path.relative_to(root)}:{line}: {imported}.{name}")
    return found


def test_every_import_points_down() -> None:
    assert layer_violations() == []


def test_every_module_is_in_a_layer() -> None:
    assert [m for m in sorted(known_modules()) if component_of(m) is None] == []


def test_listed_exceptions_still_exist() -> None:
    """An exception that no longer happens is removed from the list, so that the list stays the truth."""
    modules = known_modules()
    for (importer, imported), reason in EXCEPTIONS.items():
        path = SRC / (importer.replace(".", "/") + ".py")
        if not path.exists():
            path = SRC / importer.replace(".", "/") / "__init__.py"
        assert imported in {m for _, m, _ in imports(path, modules)}, (
            f"stale: {importer} -> {imported} ({reason})"
        )


def test_no_module_imports_another_modules_private_names() -> None:
    assert private_imports() == []


def _write(root: Path, name: str, text: str) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_the_checks_see_function_level_relative_and_sibling_imports(tmp_path: Path) -> None:
    for name in ("__init__", "errors", "config", "storage", "data/__init__", "data/readers"):
        _write(tmp_path, f"safetune/{name}.py", "")
    _write(tmp_path, "safetune/evaluation/__init__.py", "")
    _write(tmp_path, "safetune/training/__init__.py", "")
    _write(tmp_path, "safetune/training/run.py", "")
    _write(
        tmp_path,
        "safetune/evaluation/late.py",
        "import json\nfrom safetune.data import readers\n\n\ndef late():\n"
        "    from safetune.training import run\n    from ..training.run import train\n"
        "    from ..data.readers import _private, __version__\n",
    )
    _write(tmp_path, "safetune/storage.py", "from safetune import config\n")
    _write(tmp_path, "safetune/data/readers.py", "from safetune.errors import Error\n")
    assert layer_violations(tmp_path) == [
        "safetune/evaluation/late.py:6: evaluation imports safetune.training.run (training)",
        "safetune/evaluation/late.py:7: evaluation imports safetune.training.run (training)",
        "safetune/storage.py:1: storage imports safetune.config (config)",
    ]
    assert private_imports(tmp_path) == ["safetune/evaluation/late.py:8: safetune.data.readers._private"]
