"""The one registry of the MPO demo's variants: name -> MpoVariant (label, method, overrides).
`safetune demo mpo` runs DEFAULT_VARIANTS (base, SFT on the L2 chosen replies, DPO, MPO); `safetune demo
mpo --methods LIST` adds the rest of the MPO paper's comparison on the same parallel pairs: the DPO
family (each at its documented default: docs/methods/mpo.md "Baselines"), the cross-lingual transfer
baselines, and MPO's ablations (docs/methods/mpo.md "Ablations"), each a row of the same table.

Every variant fine-tunes with the plan's shared budget (full fine-tuning, steps, batch, learning rate,
seed, the same pairs file: demos/mpo.py `train_config`); a variant's `overrides` are only what makes it
that method at that setting. `beta` says whose beta the row takes: "dpo" (the plan's DPO beta), "mpo"
(the plan's MPO beta, or `--beta`), or None (the method's registry default). This module imports nothing
heavy, so the command line checks `--methods` without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from safetune.errors import ConfigError

ALL = "all"
BetaOf = Literal["dpo", "mpo"]
# Which pairs a row trains on: the world's noisy training pairs (every row but one), or the pairs that
# `safetune pairs`' own stages build from the same harmful prompts (demos/mpo.py build_world_pairs).
Pairs = Literal["world", "built"]


@dataclass(frozen=True)
class MpoVariant:
    """One row of the MPO demo's table. `method` "" is the base organism (no fine-tune)."""

    name: str  # the `--methods` token, the rows' `variant` and the run folder's name
    label: str  # the table's model column
    method: str
    beta: BetaOf | None = None
    overrides: tuple[tuple[str, object], ...] = ()  # config key -> value, on top of the shared plan
    group: str = ""  # the table's section: "" (the default rows), "DPO family", "cross-lingual", "ablation"
    pairs: Pairs = "world"

    @property
    def fine_tuned(self) -> bool:
        return bool(self.method)


_DEFAULTS = (
    MpoVariant("base", "base", ""),
    MpoVariant("sft", "SFT (L2 chosen)", "sft-chosen"),
    MpoVariant("dpo", "DPO (L2 pairs)", "dpo", beta="dpo"),
    MpoVariant("mpo", "MPO (parallel pairs)", "mpo", beta="mpo"),
)

# The DPO family at their registry defaults (beta 0.1; SimPO 2.0 with gamma 0.5; ORPO lambda 0.1), on the
# target side of the pairs as the paper's baselines train. Robust DPO is given the pairs' true flip rate
# as its label smoothing (its one knob is the flip rate it assumes): the demo knows it, a user would have
# to estimate it. R-DPO's length term is 0 by default (= DPO), so its row sets a small alpha of our
# choosing, 0.05 (the organism's refusals are shorter than its compliances).
_DPO_FAMILY = (
    MpoVariant("ipo", "IPO", "ipo", group="DPO family"),
    MpoVariant(
        "rdpo",
        "robust DPO (flip rate 0.25)",
        "rdpo",
        overrides=(("method.label_smoothing", 0.25),),
        group="DPO family",
    ),
    MpoVariant(
        "r-dpo", "R-DPO (alpha 0.05)", "r-dpo", overrides=(("method.length_alpha", 0.05),), group="DPO family"
    ),
    MpoVariant("cpo", "CPO", "cpo", group="DPO family"),
    MpoVariant("simpo", "SimPO", "simpo", group="DPO family"),
    MpoVariant("orpo", "ORPO", "orpo", group="DPO family"),
    MpoVariant("kto", "KTO", "kto", group="DPO family"),
)

# The cross-lingual transfer baselines (docs/methods/sdrrl.md, lens.md) at their own defaults: the MPO
# paper does not say how it ran them.
_CROSSLINGUAL = (
    MpoVariant("sdrrl", "SDRRL (self-distilled transfer set)", "sdrrl", group="cross-lingual"),
    MpoVariant("lens", "LENS (top 2 layers: all of the organism's)", "lens", group="cross-lingual"),
    # LENS at its official schedule (configs/lens_full.yaml: lr 1e-5 cosine, warm-up 0.05, one epoch of
    # the pairs at effective batch 8) instead of the shared budget (lr 1e-4, 4 epochs): the shared budget
    # moves far more than the official run does, so both are shown.
    MpoVariant(
        "lens-official",
        "LENS (official schedule: lr 1e-5, 1 epoch)",
        "lens",
        group="cross-lingual",
        overrides=(
            ("train.learning_rate", 1e-5),
            ("train.lr_scheduler", "cosine"),
            ("train.warmup_ratio", 0.05),
            ("train.max_steps", 15),
        ),
    ),
)

# MPO on the pairs `safetune pairs` builds from the same harmful prompts: the organism's own refusals
# (generated, kept when the organism judge calls them refusals), its L2 transform as the translator, the
# quality filter with the organism's language identifier. No side is swapped: these pairs are clean.
_BUILT = (
    MpoVariant(
        "mpo-built",
        "MPO (pairs built by safetune pairs)",
        "mpo",
        beta="mpo",
        group="pair builder",
        pairs="built",
    ),
)

# MPO's ablations, each at the demo's MPO beta (so a row differs from MPO's in one thing only).
_ABLATIONS = (
    MpoVariant(
        "mpo-no-retain",
        "MPO without the retain term",
        "mpo",
        beta="mpo",
        overrides=(("method.repr_weight", 0.0),),
        group="ablation",
    ),
    MpoVariant(
        "mpo-sum",
        "MPO, summed log-probs",
        "mpo",
        beta="mpo",
        overrides=(("method.mpo_logps", "sum"),),
        group="ablation",
    ),
    MpoVariant(
        "mpo-dpo-gap",
        "MPO, reference-relative target gap",
        "mpo",
        beta="mpo",
        overrides=(("method.normalise_target_gap", True),),
        group="ablation",
    ),
)

VARIANTS: dict[str, MpoVariant] = {
    v.name: v for v in _DEFAULTS + _DPO_FAMILY + _CROSSLINGUAL + _ABLATIONS + _BUILT
}
DEFAULT_VARIANTS: tuple[str, ...] = tuple(v.name for v in _DEFAULTS)
METHOD_NAMES: tuple[str, ...] = tuple(n for n in VARIANTS if n not in DEFAULT_VARIANTS)


def parse_methods(text: str | None) -> tuple[str, ...]:
    """`--methods` for the MPO demo: comma-separated variant names or `all`. Returns the variants to add
    to the default rows, in registry order; ConfigError names the first unknown token."""
    if text is None or not text.strip():
        return ()
    wanted: set[str] = set()
    for token in (t.strip() for t in text.split(",")):
        if token == ALL:
            wanted.update(METHOD_NAMES)
        elif token in METHOD_NAMES:
            wanted.add(token)
        else:
            raise ConfigError(
                f"--methods: unknown {token!r} for demo mpo (known: {', '.join(METHOD_NAMES)}; or {ALL})"
            )
    return tuple(n for n in METHOD_NAMES if n in wanted)
