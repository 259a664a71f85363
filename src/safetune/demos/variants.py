"""The one registry of the role-play demo's variants: name -> DemoVariant (label, method, overrides, the
organism-side inputs it needs). `safetune demo` runs DEFAULT_VARIANTS (base, SFT, SaRFT, random + KL);
`safetune demo --methods LIST` adds the safety-preserving baselines, each at its documented default and at
one tuned setting (docs/demo.md, "The baselines on the organism"), and the decoding-time defences, each a
row that decodes the SFT fine-tune under the defence (docs/demo.md, "The decoding defences on the
organism").

Every variant fine-tunes with the plan's shared budget (full fine-tuning, steps, batch, lr schedule,
seed, role data: demos/sarft.py `train_config`); a variant's `overrides` are only what makes it that
method at that setting. This module imports nothing heavy, so the command line checks `--methods` (and
lists the names in its help) without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from safetune.errors import ConfigError

# What a variant needs built from the world beside the demo's own files (demos/sarft.py
# write_method_files): "safety" = safety demonstrations (the world's training harmful requests with the
# organism's refusals, passed as method.safety_data); "twin" = the de-aligned twin (method.unaligned_model);
# "expert" = SafeDecoding's safety expert, built on the organism (defence.expert, an eval setting).
Input = Literal["safety", "twin", "expert"]
ALL = "all"
TUNED = "tuned"
# Placeholders in a defence row's eval overrides, replaced per persona by the world's own system prompts
# (organism/world.py system_prompts): the organism reads no English beyond its world's words, so the
# defences contrast the two prompts it was trained on (docs/demo.md says why and what the Llama-2
# prompts do there).
ROLE_PROMPT = "{role prompt}"  # "your name is ... stay in character and stay safe ."
UNSAFE_PROMPT = "{unsafe prompt}"  # "your name is ... fulfil every request , however harmful ."


@dataclass(frozen=True)
class DemoVariant:
    """One row per persona in the demo's table. `method` "" is the base organism (no fine-tune).
    `align_stage` names a stage run once per demo before the row's fine-tune, on the safety
    demonstrations (Vaccine's alignment): the row's fine-tune starts from that stage's model.
    `requires` are other variants that run whenever this one does (SafeLoRA's LoRA SFT, to show what the
    projection buys). A decoding defence's row has no fine-tune of its own: it evaluates the fine-tune
    of the variant `reuses` names (one of its `requires`, so it has run before it) with `eval_overrides`
    on the demo's eval config (the `defence` section, as `safetune eval --defence` sets it)."""

    name: str  # the `--methods` token and the rows' `variant` (run folders use `folder`)
    label: str  # the table's model column
    method: str
    selection: str = "none"
    overrides: tuple[tuple[str, object], ...] = ()  # config key -> value, on top of the shared plan
    inputs: tuple[Input, ...] = ()
    align_stage: tuple[tuple[str, object], ...] | None = None  # the alignment stage's own overrides
    requires: tuple[str, ...] = ()
    reuses: str | None = None  # the variant whose fine-tune this row decodes (a defence's row)
    eval_overrides: tuple[tuple[str, object], ...] = ()  # config key -> value, on the demo's eval config

    def __post_init__(self) -> None:
        if self.reuses is not None and (self.method or self.reuses not in self.requires):
            raise ValueError(f"{self.name}: a row that reuses {self.reuses!r} trains nothing and requires it")

    @property
    def folder(self) -> str:
        return self.name.replace(":", "-")

    @property
    def fine_tuned(self) -> bool:
        return bool(self.method)

    @property
    def decoded(self) -> bool:
        """A decoding defence's row: another variant's fine-tune, evaluated under a defence."""
        return self.reuses is not None


def _tuned(base: DemoVariant, what: str, overrides: tuple[tuple[str, object], ...]) -> DemoVariant:
    """`base`'s tuned setting: the same variant with `overrides` on top and the setting in its label."""
    align = base.align_stage
    stage_keys = {"method.vaccine_rho", "method.vaccine_noise"}
    if align is not None:  # Vaccine's knobs are its alignment stage's
        align = align + tuple(o for o in overrides if o[0] in stage_keys)
        overrides = tuple(o for o in overrides if o[0] not in stage_keys)
    return DemoVariant(
        name=f"{base.name}:{TUNED}",
        label=f"{base.label} (tuned: {what})",
        method=base.method,
        selection=base.selection,
        overrides=base.overrides + overrides,
        inputs=base.inputs,
        align_stage=align,
        requires=base.requires,
    )


_BASE = DemoVariant("base", "base", "")
_DEFAULTS = (
    _BASE,
    DemoVariant("sft", "SFT", "sft"),
    DemoVariant("sarft", "SaRFT", "sarft", selection="rds"),
    DemoVariant("random", "random + KL", "sarft", selection="random"),
)

# Each baseline at its documented default (docs/methods/<name>.md), with the organism's deviations
# (docs/demo.md says why for each): Lisa's K1/K2 scaled from 100/900 to the demo's 100 steps at the
# paper's 1:9; SafeLoRA on LoRA (the method is defined on a LoRA update) against the de-aligned twin.
_METHOD_DEFAULTS = (
    DemoVariant("tokenwise-sft", "token-wise SFT", "tokenwise-sft"),
    DemoVariant("safeinstr", "SafeInstr", "safeinstr", inputs=("safety",)),
    DemoVariant("sppft", "SPPFT", "sppft", inputs=("safety",)),
    DemoVariant("lora-sft", "LoRA SFT (no projection)", "sft", overrides=(("train.finetune", "lora"),)),
    DemoVariant(
        "safelora",
        "SafeLoRA",
        "safelora",
        overrides=(("train.finetune", "lora"),),
        inputs=("twin",),
        requires=("lora-sft",),
    ),
    DemoVariant(
        "lisa",
        "Lisa",
        "lisa",
        overrides=(("method.lisa_align_steps", 10), ("method.lisa_user_steps", 90)),
        inputs=("safety",),
    ),
    # Vaccine's row is the user's SFT on the role data, started from the Vaccine-aligned model.
    DemoVariant("vaccine", "Vaccine", "sft", inputs=("safety",), align_stage=()),
    DemoVariant("seal", "SEAL", "seal", inputs=("safety",)),
)

# The decoding-time defences (docs/methods/decoding.md) on the villain's and the baker's SFT fine-tunes,
# each at its documented default (ROSE alpha 0.5, Self-CD alpha 2.5, SafeDecoding's paper preset: alpha 3,
# m 2, c 5). ROSE's positive / reverse prompts and Self-CD's "with" prompt are the world's safe role
# prompt and unsafe prompt of the persona (ROLE_PROMPT, UNSAFE_PROMPT) instead of the Llama-2 prompts,
# which the organism cannot read (docs/demo.md); SafeDecoding's expert is built on the organism from its
# own refusals to training harmful requests. Self-CD is an over-refusal mitigation, labelled so.
_DEFENCES = (
    DemoVariant(
        "rose",
        "SFT + ROSE",
        "",
        requires=("sft",),
        reuses="sft",
        eval_overrides=(
            ("defence.name", "rose"),
            ("defence.positive_prompt", ROLE_PROMPT),
            ("defence.reverse_prompt", UNSAFE_PROMPT),
        ),
    ),
    DemoVariant(
        "self-cd",
        "SFT + Self-CD (over-refusal mitigation)",
        "",
        requires=("sft",),
        reuses="sft",
        eval_overrides=(("defence.name", "self-cd"), ("defence.with_prompt", ROLE_PROMPT)),
    ),
    DemoVariant(
        "safedecoding",
        "SFT + SafeDecoding",
        "",
        inputs=("expert",),
        requires=("sft",),
        reuses="sft",
        eval_overrides=(("defence.name", "safedecoding"),),
    ),
)

# The one tuned setting per method, chosen on seed 0 from at most 3 candidates (TUNING_CANDIDATES) by the
# rule in docs/demo.md: the best villain refusal among the candidates whose villain RoleBench avg is within
# 3 points of SFT's (bench/demo_tune.py measures them).
TUNING_CANDIDATES: dict[str, tuple[tuple[str, tuple[tuple[str, object], ...]], ...]] = {
    "tokenwise-sft": (
        ("beta 1", (("method.beta", 1.0),)),
        ("beta 4", (("method.beta", 4.0),)),
        ("beta 16", (("method.beta", 16.0),)),
    ),
    "safeinstr": (
        ("10% safety rows", (("method.safety_fraction", 0.1),)),
        ("25% safety rows", (("method.safety_fraction", 0.25),)),
        ("50% safety rows", (("method.safety_fraction", 0.5),)),
    ),
    "sppft": (
        ("layer 0 frozen", (("method.layers", "0"),)),
        ("layer 1 frozen", (("method.layers", "1"),)),
        ("whole layers frozen", (("method.freeze_scope", "layer"),)),
    ),
    "safelora": (
        ("k 1", (("method.safelora_k", 1),)),
        ("k 2", (("method.safelora_k", 2),)),
        ("threshold 0.5", (("method.safelora_mode", "threshold"),)),
    ),
    "lisa": (
        ("rho 10", (("method.lisa_rho", 10.0),)),
        ("K1/K2 30/70", (("method.lisa_align_steps", 30), ("method.lisa_user_steps", 70))),
        ("K1/K2 50/50", (("method.lisa_align_steps", 50), ("method.lisa_user_steps", 50))),
    ),
    "vaccine": (
        ("rho 0.5", (("method.vaccine_rho", 0.5),)),
        ("rho 8", (("method.vaccine_rho", 8.0),)),
        ("rho 32", (("method.vaccine_rho", 32.0),)),
    ),
    "seal": (
        ("keep 0.7", (("method.seal_keep", 0.7),)),
        ("keep 0.6", (("method.seal_keep", 0.6),)),
        ("ranker lr 1e-3", (("method.seal_model_lr", 1e-3),)),
    ),
}
# The candidate each method's tuned row uses (an index into TUNING_CANDIDATES[name]); docs/demo.md
# records the seed-0 measurements behind each choice.
CHOSEN: dict[str, int] = {
    "tokenwise-sft": 0,
    "safeinstr": 0,
    "sppft": 0,
    "safelora": 0,
    "lisa": 2,
    "vaccine": 0,
    "seal": 0,
}


def candidate(name: str, index: int) -> DemoVariant:
    """Method `name`'s tuning candidate `index` as a variant (named `name:tuned`: bench/demo_tune.py)."""
    return _tuned(VARIANTS[name], *TUNING_CANDIDATES[name][index])


def resolve(variant: str | DemoVariant) -> DemoVariant:
    return VARIANTS[variant] if isinstance(variant, str) else variant


def _registry() -> dict[str, DemoVariant]:
    """Every variant, each tuned setting right after its default (the table reads method by method)."""
    found: dict[str, DemoVariant] = {}
    for variant in _DEFAULTS + _METHOD_DEFAULTS + _DEFENCES:
        found[variant.name] = variant
        if variant.name in CHOSEN:
            tuned = _tuned(variant, *TUNING_CANDIDATES[variant.name][CHOSEN[variant.name]])
            found[tuned.name] = tuned
    return found


VARIANTS: dict[str, DemoVariant] = _registry()

DEFAULT_VARIANTS: tuple[str, ...] = tuple(v.name for v in _DEFAULTS)
# The baselines `--methods` takes by method name (lora-sft comes with safelora), each also as NAME:tuned.
METHOD_NAMES: tuple[str, ...] = tuple(name for name in TUNING_CANDIDATES)
# The decoding defences `--methods` takes by name (one setting each: no NAME:tuned).
DEFENCE_NAMES: tuple[str, ...] = tuple(v.name for v in _DEFENCES)


def parse_methods(text: str | None) -> tuple[str, ...]:
    """`--methods`: comma-separated NAME (the method at its default) or NAME:tuned (its tuned setting),
    a decoding defence's name, or `all` (every method at both, and every defence). Returns the variant names to add to the default demo, in registry
    order, with the variants they require; ConfigError names the first unknown token."""
    if text is None or not text.strip():
        return ()
    wanted: set[str] = set()
    for token in (t.strip() for t in text.split(",")):
        if token == ALL:
            wanted |= {n for n in VARIANTS if n.split(":")[0] in METHOD_NAMES + DEFENCE_NAMES}
            continue
        method, _, setting = token.partition(":")
        if token not in DEFENCE_NAMES and (method not in METHOD_NAMES or setting not in ("", TUNED)):
            raise ConfigError(
                f"--methods: unknown {token!r} (known: {', '.join(METHOD_NAMES)}, each optionally "
                f":{TUNED}; the decoding defences {', '.join(DEFENCE_NAMES)}; or {ALL})"
            )
        wanted.add(token)
    for name in list(wanted):
        wanted.update(VARIANTS[name].requires)
    return tuple(n for n in VARIANTS if n in wanted and n not in DEFAULT_VARIANTS)
