"""Where a result came from: package version and git commit, recorded in every run and results file."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from safetune import __version__


def git_commit() -> str | None:
    """The commit of the safetune checkout in use, or None for an installed wheel / no git."""
    try:
        here = Path(__file__).resolve().parent
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=False
        )
    except OSError:
        return None
    return result.stdout.strip() or None


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def base_provenance() -> dict[str, str | None]:
    return {"safetune_version": __version__, "git_commit": git_commit(), "created": now_iso()}


def _cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo (Linux), else platform.processor(), else None."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def machine_record() -> dict[str, object]:
    """What decides float-level results on a CPU: threads, CPU kind and the SIMD level torch dispatches
    to, and the versions of the numerical stack. Two runs with the same seed and the same record give
    the same numbers; a different record may differ in the last bits (docs/demo.md)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch

    versions: dict[str, str | None] = {}
    for package in ("torch", "transformers", "trl", "peft", "accelerate"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return {
        "threads": torch.get_num_threads(),
        "cpu": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "versions": versions,
    }


@contextmanager
def pinned_threads(count: int) -> Iterator[None]:
    """Run the block with `count` torch CPU threads and deterministic algorithms where torch has them
    (warn-only: CPU kernels are deterministic for a fixed thread count), then restore both."""
    import torch

    if count < 1:
        raise ValueError(f"threads must be >= 1, got {count}")
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(count)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
