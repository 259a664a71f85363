"""The decoding defences' registry: what each is, its defaults, and the `Defence` a `defence` section
builds (docs/methods/decoding.md).

A `Defence` says which streams each query runs (a system prompt and the model that computes it: the
role model, or the safety expert), how one step's raw logits of those streams combine into one score
row, and which streams a step still needs (SafeDecoding drops the expert after its first m tokens).
`build_defence` checks every setting before any model is loaded: a bad one is a one-line ConfigError.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from torch import Tensor

from safetune.config import DefenceConfig
from safetune.decoding import prompts, rules
from safetune.errors import ConfigError

StreamModel = Literal["role", "expert"]
SAFETY = "safety defence"
OVER_REFUSAL = "over-refusal mitigation"


@dataclass(frozen=True)
class Stream:
    """One stream of a query: the system prompt it is rendered with ("" = an empty system turn, None =
    none) and the model that computes it."""

    system: str | None
    model: StreamModel = "role"


@dataclass(frozen=True)
class Defence:
    """A resolved defence. `kinds` are the models of its streams, the same for every query;
    `prompts` the defence's own system prompt per stream (None: the request's own alone)."""

    name: str
    purpose: str
    kinds: tuple[StreamModel, ...]
    prompts: tuple[str | None, ...]
    combine_rule: Callable[[Tensor], Tensor]
    settings: Mapping[str, Any]
    system: Literal["before", "replace"] = "before"
    empty_without: bool = False  # a stream with no prompt of either kind gets an empty system turn
    expert_steps: int | None = None  # the expert stream is needed for the first N tokens only (None: all)

    def streams(self, own_system: str | None) -> list[Stream]:
        """The query's streams given the request's own system prompt (generation.system, or None)."""
        return [
            Stream(self._system(prompt, own_system), kind)
            for prompt, kind in zip(self.prompts, self.kinds, strict=True)
        ]

    def _system(self, prompt: str | None, own: str | None) -> str | None:
        if prompt is None:
            return own if own else ("" if self.empty_without else None)
        if self.system == "replace" or not own:
            return prompt
        return prompt + "\n\n" + own

    def needed(self, step: int) -> tuple[int, ...]:
        """The indices of the streams step `step` (0 = the first new token) computes."""
        return tuple(
            i
            for i, kind in enumerate(self.kinds)
            if kind != "expert" or self.expert_steps is None or step < self.expert_steps
        )

    def combine(self, logits: Tensor, step: int) -> Tensor:
        """Scores [Q, V] from the raw logits [Q, S, V] of the streams `needed(step)` returns."""
        if logits.shape[1] == len(self.kinds):
            return self.combine_rule(logits)
        if logits.shape[1] == 1:  # the streams that need a partner have been dropped: the model alone
            return logits[:, 0].float()
        raise ValueError(
            f"{self.name}: {logits.shape[1]} streams at step {step}, expected {self.needed(step)}"
        )

    @property
    def uses_expert(self) -> bool:
        return "expert" in self.kinds

    def record(self) -> dict[str, Any]:
        """Name, purpose and every resolved setting (provenance, and part of an eval folder's identity)."""
        return {"name": self.name, "purpose": self.purpose, **self.settings}


@dataclass(frozen=True)
class DefenceSpec:
    """A registered defence: its name, one-line summary, what it is for (a safety defence, or an
    over-refusal mitigation), its paper and official code, its defaults and the keys it reads."""

    name: str
    summary: str
    purpose: str
    source: str
    defaults: Mapping[str, Any]
    keys: tuple[str, ...]
    build: Callable[[DefenceConfig], Defence] = field(repr=False)


# The keys every defence may set; the others belong to one defence and are refused elsewhere.
_SHARED = ("name", "alpha")
SAFEDECODING_PRESETS: dict[str, dict[str, float | int]] = {
    "paper": {"alpha": 3.0, "first_m": 2, "num_common": 5},  # exp/defense.py of the paper's code
    "class": {"alpha": 1.0, "first_m": 5, "num_common": 3},  # the SafeDecoding class's defaults
}


def _prompt(config: DefenceConfig, key: str, default: str) -> str:
    value = getattr(config, key)
    if value is None:
        return default
    if not value.strip():
        raise ConfigError(f"defence.{key} is empty (leave it unset for the default prompt)")
    return str(value)


def _alpha(config: DefenceConfig, default: float) -> float:
    return float(default if config.alpha is None else config.alpha)


def _build_rose(config: DefenceConfig) -> Defence:
    positive, reverse = prompts.ROSE_PROMPT_SETS[config.prompts]
    positive = _prompt(config, "positive_prompt", positive)
    reverse = _prompt(config, "reverse_prompt", reverse)
    alpha = _alpha(config, DEFENCES["rose"].defaults["alpha"])
    settings = {
        "alpha": alpha,
        "prompts": config.prompts,
        "positive_prompt": positive,
        "reverse_prompt": reverse,
        "system": config.system,
        "streams": ["positive", "reverse"],
    }
    return Defence(
        "rose",
        SAFETY,
        ("role", "role"),
        (positive, reverse),
        lambda z: rules.rose(z, alpha),
        settings,
        system=config.system,
    )


def _build_self_cd(config: DefenceConfig) -> Defence:
    with_prompt = _prompt(config, "with_prompt", prompts.SELF_CD_WITH_PROMPT)
    alpha = _alpha(config, DEFENCES["self-cd"].defaults["alpha"])
    settings = {
        "alpha": alpha,
        "with_prompt": with_prompt,
        "without": config.without,
        "system": config.system,
        "streams": ["with", "without"],
    }
    return Defence(
        "self-cd",
        OVER_REFUSAL,
        ("role", "role"),
        (with_prompt, None),
        lambda z: rules.self_cd(z, alpha),
        settings,
        system=config.system,
        empty_without=config.without == "empty",
    )


def _build_safedecoding(config: DefenceConfig) -> Defence:
    preset = SAFEDECODING_PRESETS[config.preset]
    alpha = _alpha(config, float(preset["alpha"]))
    first_m = int(preset["first_m"] if config.first_m is None else config.first_m)
    num_common = int(preset["num_common"] if config.num_common is None else config.num_common)
    if not config.expert:
        raise ConfigError(
            "defence.name=safedecoding needs defence.expert: the safety expert's LoRA adapter folder or a "
            "safetune run folder holding one"
        )
    expert = Path(config.expert).expanduser()
    adapter = expert / "final" if (expert / "run.json").is_file() else expert
    if not (adapter / "adapter_config.json").is_file():
        raise ConfigError(
            f"defence.expert {config.expert!r}: no LoRA adapter there (adapter_config.json, or a run "
            "folder's final/adapter_config.json)"
        )
    settings = {
        "alpha": alpha,
        "preset": config.preset,
        "first_m": first_m,
        "num_common": num_common,
        "expert": str(expert.resolve()),
        "streams": ["original", "expert"],
    }
    return Defence(
        "safedecoding",
        SAFETY,
        ("role", "expert"),
        (None, None),
        lambda z: rules.safedecoding(z, alpha, num_common),
        settings,
        expert_steps=first_m,
    )


DEFENCES: dict[str, DefenceSpec] = {
    spec.name: spec
    for spec in (
        DefenceSpec(
            "rose",
            "raw logits under a safety system prompt minus alpha x under a reverse prompt",
            SAFETY,
            "Zhong et al., Findings of ACL 2024 (arXiv 2402.11889); code WHU-ZQH/ROSE",
            {"alpha": 0.5, "prompts": "canonical"},
            ("prompts", "positive_prompt", "reverse_prompt", "system"),
            _build_rose,
        ),
        DefenceSpec(
            "self-cd",
            "z_with - alpha (z_with - z_without): moves away from a safety-prompted stream",
            OVER_REFUSAL,
            "Shi et al., ACL 2024 (arXiv 2401.17633); code InvokerStark/OverKill",
            {"alpha": 2.5, "without": "none"},
            ("with_prompt", "without", "system"),
            _build_self_cd,
        ),
        DefenceSpec(
            "safedecoding",
            "a LoRA safety expert over the shared top-k sample space for the first m tokens",
            SAFETY,
            "Xu et al., ACL 2024 (arXiv 2402.08983); code uw-nsl/SafeDecoding",
            {"preset": "paper", **SAFEDECODING_PRESETS["paper"]},
            ("preset", "first_m", "num_common", "expert"),
            _build_safedecoding,
        ),
    )
}


def _changed(config: DefenceConfig) -> list[str]:
    """The keys set to anything but their default."""
    return [f.name for f in fields(config) if getattr(config, f.name) != f.default]


def build_defence(config: DefenceConfig) -> Defence | None:
    """The defence the `defence` section names, every setting checked (None for "none"); loads nothing."""
    name = config.name.strip().lower()
    if name == "none":
        stray = [key for key in _changed(config) if key != "name"]
        if stray:
            raise ConfigError(f"defence.{stray[0]} is set but no defence is chosen (defence.name=none)")
        return None
    spec = DEFENCES.get(name)
    if spec is None:
        raise ConfigError(
            f"defence.name: unknown defence {config.name!r} (known: none, {', '.join(DEFENCES)})"
        )
    stray = [key for key in _changed(config) if key not in (*_SHARED, *spec.keys)]
    if stray:
        owners = [s.name for s in DEFENCES.values() if stray[0] in s.keys]
        raise ConfigError(f"defence.{stray[0]} is a setting of {', '.join(owners)}, not of {name}")
    return spec.build(config)
