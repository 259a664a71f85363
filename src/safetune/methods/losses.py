"""Loss functions as pure functions of tensors.

Conventions (Hugging Face causal LM): `logits[b, t]` predicts token `t + 1`; `labels[b, t]` is the token at
position `t`, -100 where it is not trained on (prompt, padding). `shift_targets` turns labels into the
per-position targets that the logits at that position predict.

The SaRFT loss (methods/sarft.md) is computed by one fused, chunked pass over the vocabulary that also
writes the gradient, so that no full-sequence, full-vocabulary fp32 tensor exists: at a 128k vocabulary
the logits are the memory peak of a training step, and a naive "log_softmax both models, then kl_div"
holds several fp32 copies of them at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from safetune.data.batching import IGNORE_INDEX
from safetune.methods.lsar import project_common, project_specific

# Elements of a [positions, vocab] fp32 block handled at once (8 MiB per temporary).
DEFAULT_CHUNK_ELEMENTS = 1 << 21

KlDirection = Literal["forward", "reverse"]
KlPositions = Literal["all", "response"]
CeNormalisation = Literal["row_length", "response_tokens"]


def shift_targets(labels: Tensor) -> Tensor:
    """targets[b, t] = labels[b, t + 1]; the last position has no target (-100)."""
    targets = torch.full_like(labels, IGNORE_INDEX)
    targets[:, :-1] = labels[:, 1:]
    return targets


def chunk_positions(vocab: int, chunk_elements: int) -> int:
    """Positions per chunk so that one [chunk, vocab] fp32 block holds about `chunk_elements` values."""
    return max(1, chunk_elements // max(vocab, 1))


@torch.no_grad()
def sequence_logps(
    logits: Tensor,
    labels: Tensor,
    average: bool = True,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> Tensor:
    """Per-row log-probability of the labelled tokens under `logits`, in fp32, without gradient.

    Returns the mean over labelled tokens when `average` (the RDS score and MPO reward gap are
    length-normalised), else the sum. Rows with no labelled token give 0. Chunked over positions so
    that only a [chunk, vocab] fp32 block exists at a time.
    """
    targets = shift_targets(labels)
    batch, length, vocab = logits.shape
    flat_logits = logits.reshape(batch * length, vocab)
    flat_targets = targets.reshape(-1)
    token_logps = torch.zeros(batch * length, dtype=torch.float32, device=logits.device)
    step = chunk_positions(vocab, chunk_elements)
    for start in range(0, batch * length, step):
        stop = min(start + step, batch * length)
        tgt = flat_targets[start:stop]
        keep = tgt != IGNORE_INDEX
        if not keep.any():
            continue
        block = flat_logits[start:stop][keep].float()
        picked = block.gather(1, tgt[keep].unsqueeze(1)).squeeze(1)
        token_logps[start:stop][keep] = picked - torch.logsumexp(block, dim=-1)
    token_logps = token_logps.view(batch, length)
    total = token_logps.sum(dim=1)
    if not average:
        return total
    count = (targets != IGNORE_INDEX).sum(dim=1)
    return total / count.clamp(min=1)


@dataclass
class ReferenceOutputs:
    """The frozen reference model's output for the rows that need it (SaRFT: the flagged rows).

    `values` holds either logits [F, T, V] (`head` None) or last hidden states [F, T, H] with `head`
    mapping hidden states to logits; the latter lets the loss materialise reference logits one chunk at a
    time. `row_index[b]` is the row of batch row b in `values`, or -1 when row b has no reference output.

    Packed layout (`position_index` given): `values` is [N, ...], one entry per (row, position) that has
    an output, and `position_index[f, t]` is the entry of row f at position t, or -1. The reference cache
    (training/trainer.py) uses it: it holds the reference only at the positions the KL reads.
    """

    values: Tensor
    row_index: Tensor
    head: Callable[[Tensor], Tensor] | None = None
    position_index: Tensor | None = None

    def logits_at(self, batch_rows: Tensor, positions: Tensor) -> Tensor:
        rows = self.row_index[batch_rows]
        if bool((rows < 0).any()):
            raise ValueError("KL requested on a row without reference output")
        if self.position_index is None:
            picked = self.values[rows, positions]
        else:
            entries = self.position_index[rows, positions]
            if bool((entries < 0).any()):
                raise ValueError("KL requested at a position without reference output")
            picked = self.values[entries]
        return self.head(picked) if self.head is not None else picked


def _kl_and_grad(
    log_q: Tensor, q: Tensor, ref_logits: Tensor, direction: KlDirection
) -> tuple[Tensor, Tensor]:
    """Per-position KL and its gradient w.r.t. the policy logits (fp32, [k] and [k, V]).

    forward  KL(ref || pol) = sum r (log r - log q);   d/dz = q - r
    reverse  KL(pol || ref) = sum q (log q - log r);   d/dz = q * ((log q - log r) - KL)
    """
    log_r = torch.log_softmax(ref_logits.float(), dim=-1)
    if direction == "forward":
        r = log_r.exp()
        kl = (r * (log_r - log_q)).sum(-1)
        return kl, q - r
    diff = log_q - log_r
    kl = (q * diff).sum(-1)
    return kl, q * (diff - kl.unsqueeze(-1))


class _FusedCeKl(torch.autograd.Function):
    """Weighted token CE + beta * weighted KL to a reference, gradient computed in the forward pass.

    The gradient w.r.t. the logits is written chunk by chunk into a buffer (the logits tensor itself when
    `inplace`, as Liger-Kernel does for its fused CE), so the backward pass is one multiplication.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        logits: Tensor,
        targets: Tensor,
        ce_weight: Tensor,
        kl_weight: Tensor,
        beta: float,
        reference: ReferenceOutputs | None,
        direction: KlDirection,
        chunk_elements: int,
        inplace: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        batch, length, vocab = logits.shape
        ctx.shape = logits.shape
        flat = logits.view(batch * length, vocab)
        grad = flat if inplace else torch.empty_like(flat)
        flat_targets = targets.reshape(-1)
        flat_ce_w = ce_weight.reshape(-1).float()
        flat_kl_w = kl_weight.reshape(-1).float() if reference is not None and beta != 0 else None
        ce_total = torch.zeros((), dtype=torch.float32, device=logits.device)
        kl_total = torch.zeros((), dtype=torch.float32, device=logits.device)
        step = chunk_positions(vocab, chunk_elements)
        for start in range(0, batch * length, step):
            stop = min(start + step, batch * length)
            z = flat[start:stop].float()
            log_q = torch.log_softmax(z, dim=-1)
            q = log_q.exp()
            w_ce = flat_ce_w[start:stop]
            tgt = flat_targets[start:stop]
            has_ce = (tgt != IGNORE_INDEX) & (w_ce != 0)
            safe_tgt = torch.where(has_ce, tgt, torch.zeros_like(tgt))
            nll = -log_q.gather(1, safe_tgt.unsqueeze(1)).squeeze(1)
            ce_total += (nll * w_ce * has_ce).sum()
            # d CE / dz = w * (q - onehot(target)); zero rows where the position carries no CE.
            g = q * (w_ce * has_ce).unsqueeze(1)
            g.scatter_add_(1, safe_tgt.unsqueeze(1), -(w_ce * has_ce).unsqueeze(1))
            if flat_kl_w is not None and reference is not None:
                w_kl = flat_kl_w[start:stop]
                sel = (w_kl != 0).nonzero().squeeze(1)
                if sel.numel():
                    pos = sel + start
                    ref_logits = reference.logits_at(pos // length, pos % length)
                    kl, kl_grad = _kl_and_grad(log_q[sel], q[sel], ref_logits, direction)
                    kl_total += (kl * w_kl[sel]).sum()
                    g.index_add_(0, sel, kl_grad * (beta * w_kl[sel]).unsqueeze(1))
            grad[start:stop] = g.to(grad.dtype)
        # Save the base tensor, not a view made under no_grad (autograd refuses to unpack such views).
        ctx.save_for_backward(logits if inplace else grad)
        loss = ce_total + beta * kl_total
        ctx.mark_non_differentiable(ce_total, kl_total)
        return loss, ce_total, kl_total

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor, *_: Any) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        # The buffer is used once, so scale it in place instead of allocating a second one.
        scaled = grad.mul_(grad_loss.to(grad.dtype))
        return scaled.view(ctx.shape), None, None, None, None, None, None, None, None


@dataclass
class SarftLossOutput:
    """loss = role + beta * safe; `role` and `safe` are detached, for logging."""

    loss: Tensor
    role: Tensor
    safe: Tensor


def sarft_weights(
    labels: Tensor,
    attention_mask: Tensor,
    flags: Tensor,
    kl_positions: KlPositions = "all",
    ce_normalisation: CeNormalisation = "row_length",
    kl_tokens: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-position targets, CE weights and KL weights that make the sums equal the RBO loss.

    L_role = (1/B) sum_i sum_{t in response} CE_it / N_i        N_i = non-pad tokens of row i (authors)
    L_safe = (1/B) sum_i h_i sum_{t non-pad} KL_it / N_i        (unshifted positions, as in their code)
    `ce_normalisation="response_tokens"` divides CE by the response length instead (the paper's text);
    `kl_positions="response"` restricts the KL to positions that predict response tokens and divides it by
    their count.

    `kl_tokens` (multi-turn SaRFT; [B, T] like `labels`, true on the tokens of flagged turns) puts the KL
    only on the positions that predict those tokens, whatever `kl_positions` says; `kl_positions` then
    chooses the divisor: "all" the row's non-pad length (as CE), "response" the count of those positions.
    """
    batch = labels.shape[0]
    targets = shift_targets(labels)
    response = targets != IGNORE_INDEX
    row_len = attention_mask.sum(dim=1).clamp(min=1).float()
    resp_len = response.sum(dim=1).clamp(min=1).float()
    ce_norm = row_len if ce_normalisation == "row_length" else resp_len
    ce_weight = response.float() / ce_norm.unsqueeze(1) / batch
    if kl_tokens is not None:
        # Position t predicts token t + 1: the same shift as the CE targets.
        kl_mask = torch.zeros_like(attention_mask, dtype=torch.bool)
        kl_mask[:, :-1] = kl_tokens[:, 1:].bool() & attention_mask[:, 1:].bool()
        kl_count = kl_mask.sum(dim=1).clamp(min=1).float()
        kl_norm = row_len if kl_positions == "all" else kl_count
    elif kl_positions == "all":
        kl_mask, kl_norm = attention_mask.bool(), row_len
    else:
        kl_mask, kl_norm = response, resp_len
    kl_weight = kl_mask.float() * flags.float().unsqueeze(1) / kl_norm.unsqueeze(1) / batch
    return targets, ce_weight, kl_weight


def sarft_loss(
    logits: Tensor,
    labels: Tensor,
    attention_mask: Tensor,
    flags: Tensor,
    reference: ReferenceOutputs | None,
    beta: float = 0.1,
    kl_direction: KlDirection = "forward",
    kl_positions: KlPositions = "all",
    ce_normalisation: CeNormalisation = "row_length",
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    inplace: bool = False,
    kl_tokens: Tensor | None = None,
) -> SarftLossOutput:
    """SaRFT's role-safety balanced objective, L = L_role + beta * L_safe (methods/sarft.md, RBO).

    Defaults reproduce the authors' code: forward KL(ref || policy) over every non-pad position, CE per row
    divided by the whole row length, both averaged over all B rows (so the KL strength scales with the
    flagged share of the batch). Plain SFT is beta = 0 (or no flagged row): the reference is not touched.
    `inplace=True` overwrites `logits` with its gradient (saves one logits-sized buffer); use it only when
    nothing reads the logits afterwards. `kl_tokens`: the KL on flagged turns only (`sarft_weights`).
    """
    if kl_direction not in ("forward", "reverse"):
        raise ValueError(f"kl_direction must be forward or reverse, got {kl_direction!r}")
    targets, ce_weight, kl_weight = sarft_weights(
        labels, attention_mask, flags, kl_positions, ce_normalisation, kl_tokens
    )
    needs_kl = beta != 0 and bool(flags.any())
    if needs_kl and reference is None:
        raise ValueError("flagged rows with beta != 0 need reference outputs")
    if not logits.requires_grad:
        inplace = False  # nothing to back-propagate; never overwrite a caller's tensor for nothing
    loss, role, safe = _FusedCeKl.apply(
        logits,
        targets,
        ce_weight,
        kl_weight,
        float(beta),
        reference if needs_kl else None,
        kl_direction,
        chunk_elements,
        inplace,
    )
    return SarftLossOutput(loss=loss, role=role, safe=safe)


def sft_loss(logits: Tensor, labels: Tensor, attention_mask: Tensor, **kwargs: Any) -> SarftLossOutput:
    """Plain SFT with SaRFT's CE definition (beta = 0, no reference)."""
    flags = torch.zeros(labels.shape[0], dtype=torch.bool, device=labels.device)
    return sarft_loss(logits, labels, attention_mask, flags, None, beta=0.0, **kwargs)


# --- R-DPO: the one preference loss TRL does not have (trained by training/baselines.py) -------------


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


# --- Token-wise constrained SFT (Qi et al., ICLR 2025; docs/methods/tokenwise.md) ---------------------------


def tokenwise_betas(
    targets: Tensor,
    beta: float,
    bias_factor: float = 20.0,
    bias_length: int = 5,
    first_token_factor: float = 5.0,
    per_turn: bool = False,
) -> Tensor:
    """beta_t per position of `targets` (shifted labels): the k-th supervised token of a row (k = 0, 1, ...,
    counted in order over the row, whatever the prompt length) gets beta * first_token_factor at k = 0,
    beta * bias_factor for 0 < k < bias_length, beta after; 0 where there is no target. The authors'
    get_beta_list, with bias_length 0 meaning a flat beta.

    `per_turn`: k restarts at 0 at the first token of each run of supervised positions, i.e. each trained
    assistant turn of a conversation row (turns are separated by unlabelled user and header tokens), so
    every turn's response gets the tight first-token constraint, as it would as a single-turn example.
    A single-turn row has one run: the same schedule either way."""
    supervised = targets != IGNORE_INDEX
    counted = supervised.long().cumsum(dim=1)
    k = counted - 1
    if per_turn:
        previous = torch.zeros_like(supervised)
        previous[:, 1:] = supervised[:, :-1]
        starts = supervised & ~previous
        # Supervised tokens before the current run: the count just before its latest start.
        before = torch.where(starts, counted - 1, torch.zeros_like(counted)).cummax(dim=1).values
        k = counted - 1 - before
    betas = torch.full(targets.shape, float(beta), dtype=torch.float32, device=targets.device)
    betas = torch.where(k < bias_length, betas * bias_factor, betas)
    if bias_length > 0:
        betas = torch.where(k == 0, torch.full_like(betas, beta * first_token_factor), betas)
    return torch.where(supervised, betas, torch.zeros_like(betas))


@torch.no_grad()
def target_logps(logits: Tensor, targets: Tensor, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> Tensor:
    """log p(target) per position in fp32, 0 where there is no target; no gradient. Chunked over the
    positions that have a target, so only a [chunk, vocab] fp32 block exists at a time."""
    vocab = logits.shape[-1]
    flat_logits = logits.reshape(-1, vocab)
    flat_targets = targets.reshape(-1)
    out = torch.zeros(flat_targets.shape, dtype=torch.float32, device=logits.device)
    positions = (flat_targets != IGNORE_INDEX).nonzero().squeeze(1)
    step = chunk_positions(vocab, chunk_elements)
    for start in range(0, positions.numel(), step):
        rows = positions[start : start + step]
        block = flat_logits[rows].float()
        chosen = block.gather(1, flat_targets[rows].unsqueeze(1)).squeeze(1)
        out[rows] = chosen - torch.logsumexp(block, dim=-1)
    return out.view(targets.shape)


@dataclass
class TokenwiseLossOutput:
    """`loss` has the value of `objective` and the gradient of the authors' surrogate (`surrogate`);
    `objective`, `surrogate` and `delta` (mean log pi_aligned - log pi_theta) are detached, for logging."""

    loss: Tensor
    objective: Tensor
    surrogate: Tensor
    delta: Tensor


def tokenwise_loss(
    logits: Tensor,
    labels: Tensor,
    ref_logps: Tensor,
    beta: float = 0.1,
    bias_factor: float = 20.0,
    bias_length: int = 5,
    first_token_factor: float = 5.0,
    min_weight: float = 1e-3,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    inplace: bool = False,
    per_turn: bool = False,
) -> TokenwiseLossOutput:
    """Token-wise constrained SFT (Qi et al., "Safety Alignment Should Be Made More Than Just a Few Tokens
    Deep", ICLR 2025), averaged over the supervised tokens of the batch:

        l_t = (2 / beta_t) * softplus(beta_t * Delta_t),   Delta_t = log pi_aligned(y_t) - log pi_theta(y_t)

    Its gradient is w_t * (-grad log pi_theta(y_t)) with w_t = 2 * sigmoid(beta_t * Delta_t): SFT's token
    gradient, damped where the policy already exceeds the aligned model. The authors back-propagate the
    surrogate mean_t(-stopgrad(max(w_t, 1e-3)) * log pi_theta(y_t)); so do we (`min_weight` = their clamp;
    0 gives the objective's exact gradient), through the fused chunked CE, so no full-vocabulary fp32
    tensor exists. `ref_logps[b, t]` is log pi_aligned of `shift_targets(labels)[b, t]` (0 elsewhere).
    As beta -> 0, w_t -> 1 and the gradient is the token-mean SFT gradient. `per_turn`: tokenwise_betas'.
    """
    if beta <= 0:
        raise ValueError(f"tokenwise_loss needs beta > 0 (beta -> 0 is SFT), got {beta}")
    targets = shift_targets(labels)
    supervised = targets != IGNORE_INDEX
    count = supervised.sum().clamp(min=1).float()
    betas = tokenwise_betas(targets, beta, bias_factor, bias_length, first_token_factor, per_turn)
    policy = target_logps(logits.detach(), targets, chunk_elements)
    delta = torch.where(supervised, ref_logps.float().to(policy.device) - policy, torch.zeros_like(policy))
    safe_betas = torch.where(supervised, betas, torch.ones_like(betas))
    weight = (2 * torch.sigmoid(safe_betas * delta)).clamp(min=min_weight) * supervised
    objective = (2 / safe_betas * F.softplus(safe_betas * delta) * supervised).sum() / count
    if not logits.requires_grad:
        inplace = False
    surrogate, _, _ = _FusedCeKl.apply(
        logits,
        targets,
        weight / count,
        torch.zeros_like(weight),
        0.0,
        None,
        "forward",
        chunk_elements,
        inplace,
    )
    # The value the Trainer logs is the objective; the gradient is the surrogate's.
    loss = surrogate + (objective - surrogate).detach()
    return TokenwiseLossOutput(
        loss=loss,
        objective=objective.detach(),
        surrogate=surrogate.detach(),
        delta=(delta.sum() / count).detach(),
    )


# --- LENS (docs/methods/lens.md): the three manipulation terms on pooled final-layer states ------------
# The official trainer (circle-hit/Lens Manipulation/src/trainer_lens.py) names them retain, pull (our
# `separate`) and push (our `align`); each is an nn.MSELoss, a mean over the batch rows and the d features.


@dataclass
class LensLossOutput:
    """The weighted total and each term's unweighted value (detached; 0 for a term whose weight is 0,
    which is then not computed)."""

    loss: Tensor
    retain: Tensor
    separate: Tensor
    align: Tensor


def _at_least_fp32(states: Tensor) -> Tensor:
    return states.to(torch.promote_types(states.dtype, torch.float32))


def lens_retain_loss(pooled: Tensor, ref_pooled: Tensor) -> Tensor:
    """MSE(mean-pooled final states of the dominant prompts under theta, the same under the frozen model),
    over rows and features, in fp32 at least."""
    pooled = _at_least_fp32(pooled)
    return F.mse_loss(pooled, ref_pooled.to(device=pooled.device, dtype=pooled.dtype))


def lens_separate_loss(
    last: Tensor, ref_last: Tensor, languages: Tensor, shifts: Tensor, basis: Tensor, alpha: float
) -> Tensor:
    """sum over the target languages t in the batch of MSE(P_s(h_t) - P_s(h_t(ref)), alpha * delta_t).

    `last`/`ref_last` [B, d]: last-prompt-token states of the target prompts; `languages` [B]: each row's
    index into `shifts` ([L, d], the LSAR shifts delta_t); `basis` [d, r]: M_s. P_s is linear, so
    P_s(h) - P_s(h_ref) is computed as P_s(h - h_ref): the same value without the cancellation."""
    # in fp32 at least: the difference of two nearly equal bf16 states would be rounding noise
    last = _at_least_fp32(last)
    moved = project_specific(last - ref_last.to(device=last.device, dtype=last.dtype), basis.to(last.device))
    target = alpha * shifts.to(device=last.device, dtype=moved.dtype)[languages.to(last.device)]
    total = moved.new_zeros(())
    for language in torch.unique(languages):
        rows = languages.to(last.device) == language
        total = total + F.mse_loss(moved[rows], target[rows])
    return total


def lens_align_loss(dominant_last: Tensor, target_last: Tensor, languages: Tensor, common: Tensor) -> Tensor:
    """sum over the target languages t in the batch of MSE(P_c(h_dom), P_c(h_t)), row i of `dominant_last`
    the dominant prompt parallel to row i of `target_last` (both under theta). P_c(h) = (h . c^) c^."""
    dominant_last = _at_least_fp32(dominant_last)
    gap = project_common(dominant_last - target_last.to(dominant_last.dtype), common.to(dominant_last.device))
    total = gap.new_zeros(())
    for language in torch.unique(languages):
        rows = languages.to(gap.device) == language
        total = total + gap[rows].pow(2).mean()
    return total


def lens_loss(
    *,
    retain_weight: float,
    separate_weight: float,
    align_weight: float,
    pooled: Tensor | None = None,
    ref_pooled: Tensor | None = None,
    target_last: Tensor | None = None,
    ref_target_last: Tensor | None = None,
    dominant_last: Tensor | None = None,
    languages: Tensor | None = None,
    shifts: Tensor | None = None,
    basis: Tensor | None = None,
    common: Tensor | None = None,
    alpha: float = 1.0,
) -> LensLossOutput:
    """retain_weight * retain + separate_weight * separate + align_weight * align. A term with weight 0 is
    skipped (its inputs may be None); a term with a nonzero weight and a missing input is a ValueError."""

    def need(name: str, value: Tensor | None) -> Tensor:
        if value is None:
            raise ValueError(f"lens_loss: {name} is needed by a term with a nonzero weight")
        return value

    values: dict[str, Tensor] = {}
    if retain_weight != 0:
        values["retain"] = lens_retain_loss(need("pooled", pooled), need("ref_pooled", ref_pooled))
    if separate_weight != 0:
        values["separate"] = lens_separate_loss(
            need("target_last", target_last),
            need("ref_target_last", ref_target_last),
            need("languages", languages),
            need("shifts", shifts),
            need("basis", basis),
            alpha,
        )
    if align_weight != 0:
        values["align"] = lens_align_loss(
            need("dominant_last", dominant_last),
            need("target_last", target_last),
            need("languages", languages),
            need("common", common),
        )
    if not values:
        raise ValueError("lens_loss: every weight is 0, nothing to train")
    weights = {"retain": retain_weight, "separate": separate_weight, "align": align_weight}
    total = sum((weights[k] * v for k, v in values.items()), start=next(iter(values.values())).new_zeros(()))
    zero = total.detach().new_zeros(())
    return LensLossOutput(
        total,
        *(values[k].detach() if k in values else zero for k in ("retain", "separate", "align")),
    )
