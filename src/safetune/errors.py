"""Errors that the CLI turns into one line and exit code 2 (bad input, bad config)."""

from __future__ import annotations


class SafetuneError(Exception):
    """Base class: a user-facing error with a one-line message."""


class DataError(SafetuneError):
    """Bad input data: names the file, the record (line, 1-based, or record index) and the field."""

    def __init__(self, path: object, line: int | None, field: str | None, message: str):
        self.path, self.line, self.field, self.message = str(path), line, field, message
        where = self.path if line is None else f"{self.path}:{line}"
        what = f"field '{field}': {message}" if field else message
        super().__init__(f"{where}: {what}")


class ConfigError(SafetuneError):
    """Bad configuration value or override; names the key."""


class TrainingDiverged(SafetuneError):
    """The loss or the weights became NaN or infinite: training stopped before saving them."""


# An error line stays readable when it quotes a huge value (a 52 MB override): its head names the file,
# line and field, its tail often says what was expected.
MESSAGE_HEAD, MESSAGE_TAIL = 300, 100


def one_line(message: str) -> str:
    """`message` as one line of at most about 400 characters: line breaks become spaces (a library's
    multi-line message) and the middle of a long message is cut, the cut marked with an ellipsis."""
    text = " ".join(part.strip() for part in message.splitlines() if part.strip())
    if len(text) <= MESSAGE_HEAD + MESSAGE_TAIL + 40:
        return text
    cut = len(text) - MESSAGE_HEAD - MESSAGE_TAIL
    return f"{text[:MESSAGE_HEAD]} … ({cut} characters cut) … {text[-MESSAGE_TAIL:]}"


class BusyError(SafetuneError):
    """Another safetune process holds the lock on an output folder."""
