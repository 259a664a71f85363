"""Where a result came from: package version and git commit, recorded in every run and results file."""

from __future__ import annotations

import subprocess
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
