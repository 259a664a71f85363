"""Kill-and-resume for the training tests (imported by the integration tests; pytest puts this folder on
sys.path because tests/conftest.py lives here)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from transformers import TrainerCallback

from safetune.training.run import train


class Crash(TrainerCallback):
    """Simulates a kill after optimizer step 3 (after the step-2 checkpoint was written)."""

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == 3:
            raise KeyboardInterrupt


def straight_and_resumed(config: Callable[[Path], Any], tmp_path: Path) -> tuple[Path, Path]:
    """Train `config(tmp/"straight")` through; train `config(tmp/"killed")`, kill it after step 3, and
    resume it. Returns both run folders."""
    straight = train(config(tmp_path / "straight"))
    with pytest.raises(KeyboardInterrupt):
        train(config(tmp_path / "killed"), callbacks=[Crash()])
    return straight, train(config(tmp_path / "killed"), resume=True)
