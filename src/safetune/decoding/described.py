"""A defence's record (`Defence.record()`, results.json's `provenance.defence`, a study's identity) told
in words for tables and consoles: its name, what it is for, alpha, and the settings that differ from the
defence's defaults, so that two evaluations of one model are told apart at a glance.

Records are read as written: one from another safetune version, with a defence this one does not know,
is shown with every setting it holds rather than refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from safetune.config import DefenceConfig
from safetune.decoding import prompts
from safetune.decoding.registry import DEFENCES, OVER_REFUSAL, SAFEDECODING_PRESETS

# Keys of a record that are no setting to list: shown apart (name, purpose, alpha) or derived from the
# others (the streams' names, the expert's resolved source, which `expert` names already).
_NOT_SETTINGS = ("name", "purpose", "alpha", "streams", "expert_model")
# The known prompt texts by name: a prompt setting equal to one is shown by that name, not its bytes.
_PROMPT_NAMES = {
    prompts.LLAMA2_SYSTEM_PROMPT: "Llama-2 safety prompt",
    prompts.ROSE_REVERSE_PROMPT: "ROSE reverse prompt",
    prompts.SARFT_POSITIVE_PROMPT: "SaRFT code's positive prompt",
    prompts.SARFT_REVERSE_PROMPT: "SaRFT code's reverse prompt",
    prompts.SELF_CD_WITH_PROMPT: "Llama-2 safety prompt, 3 sentences",
    prompts.SARFT_SELF_CD_WITH_PROMPT: "SaRFT code's 3 sentences",
}
SHOWN_CHARS = 40  # of a prompt of no known name


@dataclass(frozen=True)
class DefenceDescription:
    """What a table shows of one defence record."""

    name: str
    purpose: str
    alpha: float | None
    changed: Mapping[str, Any]  # the settings that differ from the defence's defaults, as recorded

    @property
    def over_refusal_mitigation(self) -> bool:
        """Whether it is for over-refusal, not safety (Self-CD): its refusal rates drop by design."""
        return self.purpose == OVER_REFUSAL

    def settings_text(self) -> str:
        """The changed settings, `key value` comma-separated (prompts by name or their first characters)."""
        return ", ".join(f"{key} {_shown(key, value)}" for key, value in self.changed.items())

    def text(self) -> str:
        """One line: `self-cd (over-refusal mitigation), alpha 2.5, without empty`."""
        parts = [f"{self.name} ({self.purpose})" if self.purpose else self.name]
        if self.alpha is not None:
            parts.append(f"alpha {self.alpha:g}")
        if self.changed:
            parts.append(self.settings_text())
        return ", ".join(parts)


def _shown(key: str, value: Any) -> str:
    if not isinstance(value, str) or not key.endswith("prompt"):
        return str(value)
    if value in _PROMPT_NAMES:
        return f"({_PROMPT_NAMES[value]})"
    one = " ".join(value.split())
    return repr(one if len(one) <= SHOWN_CHARS else one[: SHOWN_CHARS - 1].rstrip() + "…")


def default_settings(record: Mapping[str, Any]) -> dict[str, Any] | None:
    """The settings a record of its defence holds when nothing is set but the choices that pick whole
    defaults (ROSE's `prompts`, SafeDecoding's `preset`); None for a defence this version does not know."""
    name = str(record.get("name", ""))
    if name == "safedecoding":
        preset = str(record.get("preset", "paper"))
        return {"preset": "paper", **SAFEDECODING_PRESETS.get(preset, SAFEDECODING_PRESETS["paper"])}
    if name not in DEFENCES:
        return None
    # ROSE's prompt pair follows its `prompts` choice: a record of the SaRFT pair left as it is differs
    # in `prompts` only, not in both prompts' bytes too.
    chosen = record.get("prompts")
    config = DefenceConfig(name=name)
    if name == "rose" and chosen in prompts.ROSE_PROMPT_SETS:
        config.prompts = chosen
    settings = dict(DEFENCES[name].build(config).settings)
    if name == "rose":
        settings["prompts"] = "canonical"
    return settings


def changed_settings(record: Mapping[str, Any]) -> dict[str, Any]:
    """The record's settings that differ from its defence's defaults (every setting for an unknown
    defence); SafeDecoding's expert always, as no default exists for it."""
    defaults = default_settings(record)
    missing = object()
    return {
        key: value
        for key, value in record.items()
        if key not in _NOT_SETTINGS and (defaults is None or defaults.get(key, missing) != value)
    }


def describe(record: Mapping[str, Any]) -> DefenceDescription:
    alpha = record.get("alpha")
    number = alpha if isinstance(alpha, int | float) and not isinstance(alpha, bool) else None
    return DefenceDescription(
        name=str(record.get("name", "?")),
        purpose=str(record.get("purpose") or ""),
        alpha=None if number is None else float(number),
        changed=changed_settings(record),
    )
