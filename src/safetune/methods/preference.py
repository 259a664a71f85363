"""The DPO-family preference methods of the MPO paper as data (what each is, where it comes from, its
default beta and data), and R-DPO's loss, the one loss TRL does not have. How each is trained lives in
training/baselines.py; the method registry reads this module, so `methods/` imports no trainer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch.nn.functional as F
from torch import Tensor

DataKind = Literal["sft", "paired", "unpaired"]


@dataclass(frozen=True)
class PreferenceMethod:
    """One preference baseline. `data_kind`: "sft" (prompt + chosen, prompt masked), "paired"
    (prompt/chosen/rejected ids) or "unpaired" (each pair -> one desirable and one undesirable example,
    KTO). `uses_beta` is False where the method has no beta (SFT; ORPO, whose weight is
    `method.orpo_lambda`): `method.beta` is then ignored and recorded as 0."""

    name: str
    summary: str
    source: str
    default_beta: float
    data_kind: DataKind
    needs_reference: bool
    uses_beta: bool = True


PREFERENCE_METHODS: tuple[PreferenceMethod, ...] = (
    PreferenceMethod(
        name="sft-chosen",
        summary="supervised fine-tuning on the chosen responses (prompt tokens masked)",
        source="SFT baseline; trl.SFTTrainer on pre-tokenised input_ids/labels",
        default_beta=0.0,
        data_kind="sft",
        needs_reference=False,
        uses_beta=False,
    ),
    PreferenceMethod(
        name="dpo",
        summary="DPO: -log sigmoid(beta * (chosen - rejected policy/reference log-ratio))",
        source="Rafailov et al., NeurIPS 2023 (arXiv:2305.18290); trl.DPOTrainer loss_type ['sigmoid']",
        default_beta=0.1,
        data_kind="paired",
        needs_reference=True,
    ),
    PreferenceMethod(
        name="ipo",
        summary="IPO: squared loss pulling the (per-token averaged) log-ratio margin to 1/(2*tau), tau = beta",
        source="Azar et al., AISTATS 2024 (arXiv:2310.12036); trl.DPOTrainer loss_type ['ipo']",
        default_beta=0.1,
        data_kind="paired",
        needs_reference=True,
    ),
    PreferenceMethod(
        name="rdpo",
        summary="robust DPO: unbiased DPO loss under label flips at rate method.label_smoothing",
        source="Chowdhury et al., ICML 2024 (arXiv:2403.00409); trl.DPOTrainer loss_type ['robust']",
        default_beta=0.1,
        data_kind="paired",
        needs_reference=True,
    ),
    PreferenceMethod(
        name="cpo",
        summary="CPO: reference-free sigmoid preference loss + method.cpo_alpha * NLL on chosen",
        source="Xu et al., ICML 2024 (arXiv:2401.08417); trl.experimental.cpo.CPOTrainer loss_type 'sigmoid'",
        default_beta=0.1,
        data_kind="paired",
        needs_reference=False,
    ),
    PreferenceMethod(
        name="simpo",
        summary="SimPO: -log sigmoid(beta * length-averaged log-prob margin - gamma), reference-free",
        source=(
            "Meng et al., NeurIPS 2024 (arXiv:2405.14734); trl.experimental.cpo.CPOTrainer loss_type 'simpo', "
            "cpo_alpha 0, simpo_gamma = method.simpo_gamma"
        ),
        default_beta=2.0,
        data_kind="paired",
        needs_reference=False,
    ),
    PreferenceMethod(
        name="orpo",
        summary="ORPO: NLL on chosen + method.orpo_lambda * odds-ratio loss, reference-free (no beta)",
        source="Hong et al., EMNLP 2024 (arXiv:2403.07691); trl.experimental.orpo.ORPOTrainer (beta = lambda)",
        default_beta=0.0,
        data_kind="paired",
        needs_reference=False,
        uses_beta=False,
    ),
    PreferenceMethod(
        name="kto",
        summary="KTO: prospect-theoretic loss on unpaired examples (each pair -> 1 desirable + 1 undesirable)",
        source="Ethayarajh et al., ICML 2024 (arXiv:2402.01306); trl.KTOTrainer loss_type 'kto'",
        default_beta=0.1,
        data_kind="unpaired",
        needs_reference=True,
    ),
    PreferenceMethod(
        name="r-dpo",
        summary="length-regularised DPO: -log sigmoid(beta * margin + alpha * (|y_w| - |y_l|))",
        source=(
            "Park et al., Findings of ACL 2024 (arXiv:2403.19159); trl.DPOTrainer subclass with rdpo_loss, "
            "alpha = method.length_alpha"
        ),
        default_beta=0.1,
        data_kind="paired",
        needs_reference=True,
    ),
)


def rdpo_loss(
    chosen_logratios: Tensor,
    rejected_logratios: Tensor,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    beta: float,
    alpha: float,
) -> Tensor:
    """Per-pair length-regularised DPO loss (R-DPO; Park, Rafailov, Ermon & Finn, "Disentangling Length from
    Quality in Direct Preference Optimization", Findings of ACL 2024, arXiv:2403.19159):

        L_R-DPO = -log sigmoid( beta * log[pi(y_w|x) / ref(y_w|x)] - beta * log[pi(y_l|x) / ref(y_l|x)]
                                + alpha * (|y_w| - |y_l|) )

    The sign follows from the paper's objective, max r(x, y) - alpha * |y| under the KL constraint: its optimal
    policy gives r(x, y) = beta * log[pi(y|x) / ref(y|x)] + alpha * |y| (+ a term that cancels in the
    pair), and Bradley-Terry on r gives the line above. The length term credits part of a longer chosen
    answer's preference to its length, so its log-ratio margin is pushed up less: with |y_w| > |y_l| the
    loss and its gradient are smaller than DPO's, with |y_w| < |y_l| larger (the policy learns less length).

    `*_logratios` are log pi(y|x) - log ref(y|x) summed over the response tokens, `*_lengths` the response
    lengths |y| in tokens. alpha = 0 is DPO's sigmoid loss. Returns one loss per pair (no reduction).
    """
    length_margin = chosen_lengths.to(chosen_logratios.dtype) - rejected_lengths.to(chosen_logratios.dtype)
    logits = beta * (chosen_logratios - rejected_logratios) + alpha * length_margin
    return -F.logsigmoid(logits)
