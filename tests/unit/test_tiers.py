"""The suite's two tiers: plain `pytest` is the fast one, and `make test` (CI) runs both."""

from __future__ import annotations

import ast
import re
import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _marked_slow(tree: ast.Module) -> tuple[bool, set[str]]:
    """(the whole module is slow, the names of the test functions marked slow one by one)."""

    def is_slow(node: ast.expr) -> bool:
        return ast.unparse(node) in ("pytest.mark.slow", "mark.slow")

    module = any(
        isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets)
        and (
            is_slow(node.value)
            or (isinstance(node.value, ast.List | ast.Tuple) and any(is_slow(e) for e in node.value.elts))
        )
        for node in tree.body
    )
    tests = {
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and any(is_slow(d) for d in node.decorator_list)
    }
    return module, tests


def _slow_tier() -> dict[str, set[str] | None]:
    """Test file -> None (every test in it is slow) or the names of its slow tests; read from the source,
    not by collecting (collecting imports torch and transformers in a second process: seconds)."""
    found: dict[str, set[str] | None] = {}
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        module, tests = _marked_slow(ast.parse(path.read_text(encoding="utf-8")))
        if module or tests:
            found[path.relative_to(ROOT).as_posix()] = None if module else tests
    return found


def test_plain_pytest_leaves_the_demos_and_launches_to_the_slow_tier():
    addopts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["addopts"]
    assert '-m "not slow"' in addopts  # plain `pytest` deselects the slow tier
    slow = _slow_tier()
    # The demos and the multi-process launches (each starts processes that import torch and transformers)
    # are slow as whole files; single tests elsewhere may be too (a full suite run, a killed process).
    for name in ("test_demo.py", "test_demo_mpo.py", "test_multi_process.py"):
        assert slow.get(f"tests/integration/{name}", set()) is None, name
    assert not any(path.startswith("tests/unit/") for path in slow), slow  # unit tests stay fast


def test_make_test_runs_both_tiers():
    proc = subprocess.run(["make", "-n", "test"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    runs = [line for line in proc.stdout.splitlines() if re.search(r"-m pytest\b", line)]
    assert any('-m "not slow"' in line for line in runs), runs
    assert any(line.rstrip().endswith("-m slow") for line in runs), runs
