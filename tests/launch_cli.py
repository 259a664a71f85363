"""Runs several `safetune` command lines in one process, one after another, so that a multi-process
launch pays torch's and transformers' import once for all of them:

    torchrun --nproc_per_node 2 tests/launch_cli.py COMMANDS.json

COMMANDS.json holds a list of argument lists (each one `safetune`'s argv). Exits with the first
non-zero exit code, or 0. With SAFETUNE_TEST_KILL=RANK:STEP in the environment, the process of that
rank kills itself (SIGKILL, as an out-of-memory kill would) at the end of that optimiser step."""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

from transformers import TrainerCallback

import safetune.training.run as run
from safetune.cli import app


class KillAt(TrainerCallback):
    def __init__(self, rank: int, step: int):
        self.rank, self.step = rank, step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if int(os.environ.get("RANK", "0")) == self.rank and state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def _kill_when_asked() -> None:
    kill = os.environ.get("SAFETUNE_TEST_KILL")
    if not kill:
        return
    rank, step = (int(part) for part in kill.split(":"))
    train_whole_run = run._train_whole_run

    def killed(trainer: Any, checkpoint: str | None) -> Any:
        trainer.add_callback(KillAt(rank, step))
        return train_whole_run(trainer, checkpoint)

    run._train_whole_run = killed


def main(path: str) -> int:
    _kill_when_asked()
    with open(path, encoding="utf-8") as handle:
        commands = json.load(handle)
    for args in commands:
        try:
            # Not standalone: an exit code comes back (typer.Exit) instead of ending the process.
            code = app(args, standalone_mode=False)
        except SystemExit as exit_:
            code = exit_.code
        if isinstance(code, int) and code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
