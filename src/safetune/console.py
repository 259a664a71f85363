"""What a command shows on the terminal: one home for the log lines, the progress bars and the libraries'
own output, at three levels (`-q`, default, `-v`).

- quiet: warnings and errors only, no progress bars.
- default: safetune's INFO lines and one safetune progress bar per long step (on a terminal only: a bar
  redrawn into a log file or a pipe is noise); transformers, datasets, huggingface_hub, accelerate, peft
  and trl at ERROR with their own bars off; Python's deprecation warnings (meant for developers) hidden.
- verbose: DEBUG lines, the libraries at INFO with their bars, every warning.

Log lines and bars go to stderr (a log line clears the bars and redraws them after itself); a command's
result goes to stdout, so `safetune eval ... > summary.txt` keeps only the result.
"""

from __future__ import annotations

import functools
import logging
import sys
import warnings
from collections.abc import Iterable
from enum import IntEnum
from typing import TypeVar

from rich.console import Console
from rich.logging import RichHandler
from tqdm.auto import tqdm

T = TypeVar("T")

# absl: rouge_score's logger (RoleBench scoring), which says "Using default tokenizer." at INFO; lm_eval:
# lm-evaluation-harness (eval.utility), which logs every task it builds.
LIBRARIES = ("transformers", "datasets", "huggingface_hub", "accelerate", "peft", "trl", "absl", "lm_eval")
# Loggers that stay at WARNING even with -v: their INFO/DEBUG is per-request or per-lock chatter.
CHATTY = ("httpx", "urllib3", "filelock", "fsspec")


class Verbosity(IntEnum):
    QUIET = -1
    NORMAL = 0
    VERBOSE = 1


_verbosity = Verbosity.NORMAL


def verbosity(verbose: bool, quiet: bool) -> Verbosity:
    """The level of the -v / -q flags; both at once is a usage error (ValueError)."""
    if verbose and quiet:
        raise ValueError("--verbose and --quiet contradict each other: give one")
    return Verbosity.VERBOSE if verbose else Verbosity.QUIET if quiet else Verbosity.NORMAL


def _handler() -> logging.Handler:
    """rich's lines on a terminal; plain ones in a log file or a pipe, where rich would wrap them at 80
    columns (a metrics line split in two) and pad them with spaces."""
    if sys.stderr.isatty():
        handler: logging.Handler = _RichLines(
            show_path=False, console=stderr_console(), log_time_format="[%X]"
        )
        handler.setFormatter(logging.Formatter("%(message)s"))  # rich adds the time and level
    else:
        handler = _PlainLines()
        handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)s %(message)s", "%X"))
    return handler


class _RichLines(RichHandler):
    def emit(self, record: logging.LogRecord) -> None:
        # Clears the progress bars, writes the line, redraws them: no line glued to a bar.
        with tqdm.external_write_mode(file=sys.stderr):
            super().emit(record)


class _PlainLines(logging.StreamHandler):  # type: ignore[type-arg]
    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr  # the current one: a caller (a test runner) may have swapped it
        with tqdm.external_write_mode(file=sys.stderr):
            super().emit(record)


def setup(level: Verbosity) -> None:
    """Configure logging, warnings and every progress bar for a command run at `level`."""
    global _verbosity
    _verbosity = level
    ours = {
        Verbosity.QUIET: logging.WARNING,
        Verbosity.NORMAL: logging.INFO,
        Verbosity.VERBOSE: logging.DEBUG,
    }
    logging.basicConfig(level=ours[level], handlers=[_handler()], force=True)
    logging.captureWarnings(True)  # warnings become log lines through the handler above
    for category in (DeprecationWarning, FutureWarning):  # the libraries' notes to their developers
        warnings.filterwarnings("default" if level == Verbosity.VERBOSE else "ignore", category=category)
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.WARNING)
    _quiet_libraries(level)


def _quiet_libraries(level: Verbosity) -> None:
    # Imported here, not on first use: both reset their logger's level when they are first imported.
    import datasets
    import transformers.utils.logging as hf_logging

    verbose = level == Verbosity.VERBOSE
    library_level = logging.INFO if verbose else logging.ERROR
    # transformers and datasets keep their own stderr handler (bound at import, and not propagating for
    # transformers): route their records through ours instead, so -q/-v and the bar handling apply.
    hf_logging.set_verbosity(library_level)
    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()
    datasets.logging.set_verbosity(library_level)
    for handler in list(logging.getLogger("datasets").handlers):
        logging.getLogger("datasets").removeHandler(handler)
    datasets.logging.enable_propagation()
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(library_level)
    if verbose:
        hf_logging.enable_progress_bar()  # and huggingface_hub's
        datasets.enable_progress_bars()
    else:
        hf_logging.disable_progress_bar()  # and huggingface_hub's
        datasets.disable_progress_bars()


def progress(
    iterable: Iterable[T] | None = None,
    *,
    total: int | None = None,
    desc: str,
    unit: str,
    initial: int = 0,
    enabled: bool = True,
) -> tqdm[T]:
    """safetune's progress bar for one long step, on stderr: off under -q (or when `enabled` is False), and
    off when stderr is not a terminal."""
    disable = None if enabled and _verbosity != Verbosity.QUIET else True
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        initial=initial,
        disable=disable,
        file=sys.stderr,
        dynamic_ncols=True,
    )


@functools.cache
def stderr_console() -> Console:
    """The rich console of the log lines (it looks up sys.stderr at each write)."""
    return Console(stderr=True)


@functools.cache
def stdout_console() -> Console:
    """The rich console of a command's result (tables)."""
    return Console()
