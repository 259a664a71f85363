"""The one registry of training methods: name -> MethodSpec. The CLI's choices come from here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from safetune.methods.losses import sarft_loss
from safetune.methods.preference import PREFERENCE_METHODS, rdpo_loss
from safetune.methods.reward_gap import reward_gap_mpo_loss


@dataclass(frozen=True)
class MethodSpec:
    """A training objective: its loss, whether it needs the frozen reference, which records it trains on."""

    name: str
    summary: str
    loss: Callable[..., Any] | None  # None: the loss lives in a TRL trainer (training/baselines.py)
    needs_reference: bool
    data_kind: (
        str  # "role" (RoleExample) | "preference" (PreferencePair) | "parallel" (ParallelPreferencePair)
    )
    force_beta_zero: bool = False
    source: str = ""
    default_beta: float = 0.1


METHODS: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    if spec.name in METHODS:
        raise ValueError(f"method {spec.name!r} is already registered")
    METHODS[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    from safetune.errors import ConfigError

    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r} (known: {', '.join(sorted(METHODS))})")
    return METHODS[name]


register(
    MethodSpec(
        name="sarft",
        summary="SFT + beta * KL(ref || policy) on RDS-flagged rows (Zhao et al., ACL 2025)",
        loss=sarft_loss,
        needs_reference=True,
        data_kind="role",
        source="arXiv 2502.20968; yulinlp/SaRFT sarft/src/trainer.py",
    )
)
register(
    MethodSpec(
        name="sft",
        summary="plain supervised fine-tuning (SaRFT's CE with beta = 0; no reference model)",
        loss=sarft_loss,
        needs_reference=False,
        data_kind="role",
        force_beta_zero=True,
    )
)
register(
    MethodSpec(
        name="mpo",
        summary="reward-gap MPO: pull the target language's reward gap to the dominant one's (Zhao et al., ACL 2025)",
        loss=reward_gap_mpo_loss,
        needs_reference=True,  # through the on-disk reference cache: no reference model while training
        data_kind="parallel",
        source="arXiv 2505.16869; circle-hit/MPO (LLaMA-Factory fork)",
        default_beta=1.0,
    )
)


def _register_baselines() -> None:
    """The DPO-family baselines of the MPO paper, trained through TRL (training/baselines.py)."""
    for spec in PREFERENCE_METHODS:
        register(
            MethodSpec(
                name=spec.name,
                summary=spec.summary,
                loss=rdpo_loss if spec.name == "r-dpo" else None,
                needs_reference=spec.needs_reference,
                data_kind="preference",
                source=spec.source,
                default_beta=spec.default_beta,
            )
        )


_register_baselines()
