"""A study folder's layout and its plan: where each unit's files are, and reading a finished unit's
result. Below both the study runner (assess/study.py) and its report (assess/report.py), which read it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetune.assess.aggregate import UnitResult
from safetune.assess.units import Unit
from safetune.config import RunConfig
from safetune.data.sources import role_key

STUDY_FILE = "study.json"
CONFIG_FILE = "config.yaml"
UNIT_FILE = "unit.json"
SELECTION_DIR = "selection"
DEFENCE_PREFIX = "defence."  # a study identity's keys of its decoding defence's record


def role_slug(role: str) -> str:
    """The folder name of a role: its role_key with `_` for spaces (one folder per matched name)."""
    return "_".join(role_key(role).split())


def unit_folder(study: Path, role: str, method: str) -> Path:
    if role == "":
        return study / "base"
    return study / "units" / role_slug(role) / method


@dataclass(frozen=True)
class StudyPlan:
    config: RunConfig
    study: Path
    roles: tuple[str, ...]  # the study's roles, as the data names them (an existing study's first)
    data_roles: tuple[str, ...]  # every role of the data (the shared selection scores them all)
    identity: dict[str, Any]
    units: tuple[Unit, ...]  # every unit, base ones first

    @property
    def defence(self) -> dict[str, Any] | None:
        """The decoding defence every unit's evaluation runs under (its record), None without one."""
        return identity_defence(self.identity)


def identity_defence(identity: Mapping[str, Any]) -> dict[str, Any] | None:
    """The defence record a study's identity holds (None: no defence)."""
    found = {k[len(DEFENCE_PREFIX) :]: v for k, v in identity.items() if k.startswith(DEFENCE_PREFIX)}
    return found or None


def read_unit(unit: Unit) -> UnitResult | None:
    path = unit_folder(Path(unit.study), unit.role, unit.method) / UNIT_FILE
    if not path.exists():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return UnitResult.from_dict({**data, "role": unit.role, "method": unit.method})
