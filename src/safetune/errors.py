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


class BusyError(SafetuneError):
    """Another safetune process holds the lock on an output folder."""
