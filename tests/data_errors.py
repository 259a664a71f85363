"""Shared checks for the one-line `file:line: field` data errors (imported by the unit tests; pytest puts
this folder on sys.path because tests/conftest.py lives here)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from safetune.errors import DataError


def raised(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> DataError:
    """The DataError that `fn(*args, **kwargs)` raises (the test fails if it raises none)."""
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    return info.value


def assert_data_error(err: DataError, path: Path | str, line: int | None, field: str | None) -> None:
    """One line, starting "path:line: ", naming the field."""
    prefix = f"{path}:{line}: " if line is not None else f"{path}: "
    assert str(err).startswith(prefix), str(err)
    assert (err.line, err.field) == (line, field), str(err)
    if field is not None:
        assert f"field '{field}'" in str(err)
    assert "\n" not in str(err)
