"""The suite's two tiers: plain `pytest` is the fast one, and `make test` (CI) runs both."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _collected(*args: str) -> set[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {line.split("::")[0] for line in proc.stdout.splitlines() if "::" in line}


def test_plain_pytest_leaves_the_demos_and_launches_to_the_slow_tier():
    addopts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["addopts"]
    assert '-m "not slow"' in addopts  # plain `pytest` deselects the slow tier
    slow = _collected("tests/integration", "-m", "slow")
    # The demos, and the multi-process launches (each starts processes that import torch and transformers).
    assert slow == {
        "tests/integration/test_demo.py",
        "tests/integration/test_demo_mpo.py",
        "tests/integration/test_multi_process.py",
    }


def test_make_test_runs_both_tiers():
    proc = subprocess.run(["make", "-n", "test"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    runs = [line for line in proc.stdout.splitlines() if re.search(r"-m pytest\b", line)]
    assert any('-m "not slow"' in line for line in runs), runs
    assert any(line.rstrip().endswith("-m slow") for line in runs), runs
