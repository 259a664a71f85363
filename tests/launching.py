"""Multi-process launches for the tests: torchrun and accelerate launch of `safetune` command lines on
the CPU (gloo), two processes. Each launch runs tests/launch_cli.py, which runs several command lines
in the same processes, so that the launch pays torch's and transformers' import once for all of them.
(Imported by the integration tests; pytest puts this folder on sys.path because tests/conftest.py
lives here.)"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "tests" / "launch_cli.py"
CPU_CONFIG = ROOT / "configs" / "accelerate" / "cpu_2proc.yaml"


@dataclass
class Launch:
    returncode: int
    stdout: str
    stderr: str
    wall_s: float


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _environment(extra: dict[str, str] | None) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    # The child processes import this checkout's package, as the test process does.
    src = str(ROOT / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    return {**env, **(extra or {})}


def launch(
    commands: list[list[str]],
    tmp: Path,
    *,
    launcher: str = "torchrun",
    processes: int = 2,
    env: dict[str, str] | None = None,
    timeout: float = 300,
) -> Launch:
    """Run `commands` (each a `safetune` argv) in one launch of `processes` CPU processes: "torchrun"
    (torch.distributed.run) or "accelerate" (accelerate launch with configs/accelerate/cpu_2proc.yaml)."""
    listing = tmp / f"commands-{time.monotonic_ns()}.json"
    listing.write_text(json.dumps(commands), encoding="utf-8")
    port = str(_free_port())
    if launcher == "torchrun":
        head = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}"]
        head += ["--master_addr=127.0.0.1", f"--master_port={port}"]
    elif launcher == "accelerate":
        head = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CPU_CONFIG)]
        head += [f"--num_processes={processes}", f"--main_process_port={port}"]
    else:
        raise ValueError(launcher)
    start = time.perf_counter()
    proc = subprocess.run(
        [*head, str(DRIVER), str(listing)],
        env=_environment(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp,
    )
    return Launch(proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - start)
