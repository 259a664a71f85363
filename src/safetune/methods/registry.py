"""The one registry of training methods: name -> MethodSpec. `safetune list`, `train --help` and
`safetune train` read it. It imports nothing heavy (no torch), so the CLI can read it at start-up, and
nothing from `training/`: a spec names its trainer recipe, and `training/run.py` maps that name to code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from safetune.errors import ConfigError

# What a method trains on, in the one vocabulary of the data loaders: role-play examples (`RoleExample`,
# data/sources.py), plain preference pairs (`PreferencePair`) or parallel preference pairs
# (`ParallelPreferencePair`, data/preferences.py), or safety demonstrations (`SafetyDemo`, data/safety.py:
# an alignment stage such as Vaccine's).
DataKind = Literal["role", "preference", "parallel", "safety"]
# Which Trainer runs a method (training/run.py: RECIPES): SafetuneTrainer (SaRFT's loss), MpoTrainer
# (reward-gap MPO with the reference cache), one of TRL's trainers (training/baselines.py), or
# SafetuneTrainer followed by SafeLoRA's projection (training/safelora.py); tokenwise
# (training/tokenwise.py), safeinstr (training/safeinstr.py) and sppft (training/sppft.py: the safety
# layers frozen) are role-data recipes without RDS; Lisa's and Vaccine's own Trainers (training/lisa.py,
# training/vaccine.py); SEAL's recipe (training/seal.py) adds the bilevel data ranker before the SFT;
# SDRRL's (training/sdrrl.py) builds its transfer set from parallel pairs, then the SFT.
# LENS (training/lens.py) trains the top layers on prompts only, its reference and probe cached.
RecipeName = Literal[
    "role",
    "mpo",
    "trl",
    "safelora",
    "tokenwise",
    "safeinstr",
    "sppft",
    "lisa",
    "vaccine",
    "seal",
    "sdrrl",
    "lens",
]


@dataclass(frozen=True)
class MethodSpec:
    """A training method: what it is and where it comes from (`summary`, `source`: paper + official
    code), what it trains on, its beta (`uses_beta` False: the method has none, and `method.beta` is
    recorded as 0), whether it needs a frozen reference (a model copy under full fine-tuning, the
    adapter-disabled base under LoRA, or the reference cache for MPO) and which recipe trains it."""

    name: str
    summary: str
    source: str
    data_kind: DataKind
    recipe: RecipeName
    needs_reference: bool
    uses_beta: bool = True
    default_beta: float = 0.1


_SPECS: tuple[MethodSpec, ...] = (
    MethodSpec(
        name="sarft",
        summary="SFT + beta * KL(ref || policy) on RDS-flagged rows (Zhao et al., ACL 2025)",
        source="arXiv 2502.20968; yulinlp/SaRFT sarft/src/trainer.py",
        data_kind="role",
        recipe="role",
        needs_reference=True,
    ),
    MethodSpec(
        name="sft",
        summary="plain supervised fine-tuning (SaRFT's CE with beta = 0; no reference model)",
        source="SaRFT's loss with beta = 0 (arXiv 2502.20968)",
        data_kind="role",
        recipe="role",
        needs_reference=False,
        uses_beta=False,
        default_beta=0.0,
    ),
    MethodSpec(
        name="mpo",
        summary="reward-gap MPO: pull the target language's reward gap to the dominant one's (Zhao et al., ACL 2025)",
        source="arXiv 2505.16869; circle-hit/MPO (LLaMA-Factory fork)",
        data_kind="parallel",
        recipe="mpo",
        needs_reference=True,  # through the on-disk reference cache: no reference model while training
        default_beta=1.0,
    ),
    # The DPO-family baselines of the MPO paper, trained through TRL (training/baselines.py).
    MethodSpec(
        name="sft-chosen",
        summary="supervised fine-tuning on the chosen responses (prompt tokens masked)",
        source="SFT baseline; trl.SFTTrainer on pre-tokenised input_ids/labels",
        data_kind="preference",
        recipe="trl",
        needs_reference=False,
        uses_beta=False,
        default_beta=0.0,
    ),
    MethodSpec(
        name="dpo",
        summary="DPO: -log sigmoid(beta * (chosen - rejected policy/reference log-ratio))",
        source="Rafailov et al., NeurIPS 2023 (arXiv:2305.18290); trl.DPOTrainer loss_type ['sigmoid']",
        data_kind="preference",
        recipe="trl",
        needs_reference=True,
    ),
    MethodSpec(
        name="ipo",
        summary="IPO: squared loss pulling the (per-token averaged) log-ratio margin to 1/(2*tau), tau = beta",
        source="Azar et al., AISTATS 2024 (arXiv:2310.12036); trl.DPOTrainer loss_type ['ipo']",
        data_kind="preference",
        recipe="trl",
        needs_reference=True,
    ),
    MethodSpec(
        name="rdpo",
        summary="robust DPO: unbiased DPO loss under label flips at rate method.label_smoothing",
        source="Chowdhury et al., ICML 2024 (arXiv:2403.00409); trl.DPOTrainer loss_type ['robust']",
        data_kind="preference",
        recipe="trl",
        needs_reference=True,
    ),
    MethodSpec(
        name="cpo",
        summary="CPO: reference-free sigmoid preference loss + method.cpo_alpha * NLL on chosen",
        source="Xu et al., ICML 2024 (arXiv:2401.08417); trl.experimental.cpo.CPOTrainer loss_type 'sigmoid'",
        data_kind="preference",
        recipe="trl",
        needs_reference=False,
    ),
    MethodSpec(
        name="simpo",
        summary="SimPO: -log sigmoid(beta * length-averaged log-prob margin - gamma), reference-free",
        source=(
            "Meng et al., NeurIPS 2024 (arXiv:2405.14734); trl.experimental.cpo.CPOTrainer loss_type 'simpo', "
            "cpo_alpha 0, simpo_gamma = method.simpo_gamma"
        ),
        data_kind="preference",
        recipe="trl",
        needs_reference=False,
        default_beta=2.0,
    ),
    MethodSpec(
        name="orpo",
        summary="ORPO: NLL on chosen + method.orpo_lambda * odds-ratio loss, reference-free (no beta)",
        source="Hong et al., EMNLP 2024 (arXiv:2403.07691); trl.experimental.orpo.ORPOTrainer (beta = lambda)",
        data_kind="preference",
        recipe="trl",
        needs_reference=False,
        uses_beta=False,
        default_beta=0.0,
    ),
    MethodSpec(
        name="kto",
        summary="KTO: prospect-theoretic loss on unpaired examples (each pair -> 1 desirable + 1 undesirable)",
        source="Ethayarajh et al., ICML 2024 (arXiv:2402.01306); trl.KTOTrainer loss_type 'kto'",
        data_kind="preference",
        recipe="trl",
        needs_reference=True,
    ),
    MethodSpec(
        name="r-dpo",
        summary="length-regularised DPO: -log sigmoid(beta * margin + alpha * (|y_w| - |y_l|))",
        source=(
            "Park et al., Findings of ACL 2024 (arXiv:2403.19159); trl.DPOTrainer subclass with "
            "methods/losses.py rdpo_loss, alpha = method.length_alpha"
        ),
        data_kind="preference",
        recipe="trl",
        needs_reference=True,
    ),
    # SafeLoRA: LoRA SFT on the role data, then the trained update projected onto the alignment subspace.
    MethodSpec(
        name="safelora",
        summary="LoRA SFT, then each low-cosine module's update projected onto the alignment subspace",
        source=(
            "Hsu et al., NeurIPS 2024 (arXiv:2405.16833); IBM/SafeLoRA model.py (SafeLoRA.get_aligned_matrix, "
            "projected_weighted) and config.py"
        ),
        data_kind="role",
        recipe="safelora",
        needs_reference=False,
        uses_beta=False,
        default_beta=0.0,
    ),
)

# Safety-preserving fine-tuning baselines on role data (issue 13, part 2).
_SPECS += (
    MethodSpec(
        name="tokenwise-sft",
        summary="token-wise constrained SFT: per-token softplus constraint to the initial model, tightest on "
        "the first response tokens (Qi et al., ICLR 2025)",
        source=(
            "arXiv 2406.05946; Unispac/shallow-vs-deep-alignment "
            "finetuning_buckets/trainer/trainer.py (soft_sft_loss, get_beta_list), finetune.py"
        ),
        data_kind="role",
        recipe="tokenwise",
        needs_reference=True,  # the aligned model's token log-probs, computed once before training
    ),
    MethodSpec(
        name="safeinstr",
        summary="SafeInstr: SFT on the role data mixed with safety demonstrations (Bianchi et al., ICLR 2024)",
        source="arXiv 2309.07875; vinid/safety-tuned-llamas (data/training, training/finetuning.py)",
        data_kind="role",
        recipe="safeinstr",
        needs_reference=False,
        uses_beta=False,
        default_beta=0.0,
    ),
    # --- SPPFT (docs/methods/sppft.md) ---
    MethodSpec(
        name="sppft",
        summary="SFT with the safety layers frozen (located by the N-N / N-M cosine gap + over-rejection)",
        source="Li et al., ICLR 2025 (arXiv:2408.17003); listen0425/Safety-Layers",
        data_kind="role",
        recipe="sppft",
        needs_reference=False,
        uses_beta=False,
        default_beta=0.0,
    ),
    # Safety-preserving fine-tuning baselines of Huang et al. (docs/methods/lisa.md, vaccine.md).
    MethodSpec(
        name="lisa",
        summary="Lisa: user fine-tune alternating with safety-alignment steps, proximal term to the last switch",
        source="Huang et al., NeurIPS 2024 (arXiv:2405.18641); git-disl/Lisa trainer.py ADMMTrainer",
        data_kind="role",
        recipe="lisa",
        needs_reference=False,
        uses_beta=False,
        default_beta=0.0,
    ),
    MethodSpec(
        name="vaccine",
        summary="Vaccine: alignment on safety demos under worst-case attention-output perturbation (rho)",
        source="Huang et al., NeurIPS 2024 (arXiv:2402.01109); git-disl/Vaccine trainer.py BaseTrainer",
        data_kind="safety",
        recipe="vaccine",
        needs_reference=False,
        uses_beta=False,
        default_beta=0.0,
    ),
    # SEAL: a data ranker trained by bilevel selection against a safe set, then SFT on the top rows.
    MethodSpec(
        name="seal",
        summary="bilevel data ranker against a safe set (method.safety_data), then SFT on the top method.seal_keep",
        source=(
            "Shen et al., ICLR 2025 (arXiv 2410.07471) Algorithm 2; hanshen95/SEAL "
            "seal/trainer/sft_selector_trainer.py, examples/train_sft.py"
        ),
        data_kind="role",
        recipe="seal",
        needs_reference=False,
        uses_beta=False,
        default_beta=0.0,
    ),
)

# The MPO paper's cross-lingual transfer baselines (issue 22; docs/methods/sdrrl.md, lens.md).
_SPECS += (
    MethodSpec(
        name="sdrrl",
        summary="SDRRL: SFT on a transfer set of the model's own dominant-language answers, their "
        "translations, code-switched, partially translated and completion data (Zhang et al., ACL 2024)",
        source="arXiv 2402.12204; THUNLP-MT/SDRRL (its construction details not readable here: see the docs)",
        data_kind="parallel",
        recipe="sdrrl",
        needs_reference=False,
        uses_beta=False,
        default_beta=0.0,
    ),
    MethodSpec(
        name="lens",
        summary="LENS: move each target language from the dominant one in the language-specific subspace "
        "and towards it along the common direction, top-K layers only (Zhao et al.)",
        source=(
            "arXiv 2410.04407; circle-hit/Lens Manipulation/src/trainer_lens.py, Probing/utils.py, "
            "scripts/run_manipulation.sh"
        ),
        data_kind="parallel",
        recipe="lens",
        needs_reference=True,  # through the on-disk cache of the frozen pass: no reference model held
        uses_beta=False,
        default_beta=0.0,
    ),
)

METHODS: dict[str, MethodSpec] = {spec.name: spec for spec in _SPECS}


def get_method(name: str) -> MethodSpec:
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r} (known: {', '.join(sorted(METHODS))})")
    return METHODS[name]


def methods_by_data_kind() -> dict[str, list[str]]:
    """Method names grouped by what they train on, in registry order (the `--method` help)."""
    groups: dict[str, list[str]] = {}
    for spec in METHODS.values():
        groups.setdefault(spec.data_kind, []).append(spec.name)
    return groups
