"""The processes of one launch: `torchrun --nproc_per_node N` or `accelerate launch` start N copies of a
safetune command, one per device, that tell each other apart by the environment the launcher sets
(WORLD_SIZE, RANK). This module is the one place that reads it.

What a multi-process launch means for each command (docs/scaling.md):
    train   data-parallel: every rank trains on its shard of each global batch; the frozen pass runs on
            the main process first and the others read its cache; every file is written by the main
            process only (training/run.py)
    eval    generation is split across ranks, each writing its own shard; the main process merges them
            and judges (evaluation/runner.py)
    others  refused with one line (`refuse_multi_process`): they would do the same work N times
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

from safetune.errors import ConfigError
from safetune.storage import output_lock

T = TypeVar("T")

# How long a rank waits at a barrier: the others wait there while the main process runs a frozen pass
# (RDS scoring, the MPO reference over a whole data set), or for the slowest rank's share of an
# evaluation's generation, which can take hours; torch's default (10-30 minutes) would end a healthy
# run. A rank that dies does not leave the rest waiting this long: the launcher stops them all.
WAIT_S = 12 * 3600


def world_size() -> int:
    """How many processes this launch started (1 without a launcher)."""
    return _env_int("WORLD_SIZE", 1)


def rank() -> int:
    """This process's index among them (0: the main process)."""
    return _env_int("RANK", 0)


def is_multi_process() -> bool:
    return world_size() > 1


def is_main_process() -> bool:
    return rank() == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise ConfigError(
            f"{name}={value!r} in the environment is not a number (set by the launcher)"
        ) from None


def refuse_multi_process(command: str, multi_process_commands: Iterable[str]) -> None:
    """A ConfigError (one line, exit 2) for a command that runs in one process, when N were launched:
    each would do the whole work and write the same files."""
    if is_multi_process():
        allowed = " and ".join(sorted(multi_process_commands))
        raise ConfigError(
            f"safetune {command} runs in one process, but this launch started {world_size()} (WORLD_SIZE); "
            f"run it without torchrun / accelerate launch (a multi-process launch runs: {allowed})"
        )


def uses_cpu_processes() -> bool:
    """Whether this launch's processes must run on the CPU (gloo): several processes on a machine
    without CUDA. accelerate (and the Trainer through it) otherwise sees no device to spread over and
    runs each process as a single one: no gradient sync, each rank on all the data."""
    import torch

    if not is_multi_process() or torch.cuda.is_available():
        return False
    # accelerate shards a model only across GPUs: on CPU processes an FSDP or DeepSpeed launch would
    # quietly train plain DDP (FSDP) or not start (DeepSpeed), so it stops here instead.
    for variable, name in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")):
        if os.environ.get(variable, "").lower() in ("1", "true", "yes"):
            raise ConfigError(
                f"{name} shards the model across CUDA GPUs and this machine has none; for data-parallel "
                "CPU processes launch with configs/accelerate/cpu_2proc.yaml"
            )
    return True


def _process_group() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def init_process_group() -> None:
    """Join this launch's process group (a no-op in one process or when joined already), on the backend
    accelerate would pick: gloo on CPU processes, nccl on GPUs."""
    if not is_multi_process() or _process_group():
        return
    from accelerate import PartialState

    PartialState(cpu=uses_cpu_processes(), timeout=timedelta(seconds=WAIT_S))
    # Left to the interpreter's exit, gloo's threads can abort the process ("terminate called without
    # an active exception") after the work succeeded: leave the group first.
    atexit.register(_leave_process_group)


def _leave_process_group() -> None:
    if _process_group():
        import torch.distributed as dist

        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every process of the launch gets here (a no-op in one process)."""
    if is_multi_process():
        import torch.distributed as dist

        init_process_group()
        dist.barrier()


@contextmanager
def main_process_first() -> Iterator[None]:
    """The block runs on the main process first, then on the others: work the main process caches
    (RDS scores, the MPO reference) is read from that cache by the rest."""
    if not is_main_process():
        barrier()
    yield
    if is_main_process():
        barrier()


def main_process_lock(folder: Path) -> AbstractContextManager[object]:
    """An output folder's lock (storage.output_lock), held by the main process of a launch: the one
    that writes the folder's own files; the other ranks would find it busy."""
    return output_lock(folder) if is_main_process() else nullcontext()


def shard(items: Sequence[T]) -> list[T]:
    """This process's share of `items`: every world_size-th one from its rank on (all of them in one
    process), so the shards together hold each item once and each is a stable function of the list."""
    return list(items[rank() :: world_size()])
