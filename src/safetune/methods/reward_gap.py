"""Reward-gap MPO (Zhao et al., "MPO: Multilingual Safety Alignment via Reward Gap Optimization", ACL 2025).

Pure tensor functions; the trainer runs the models. Notation: `t` is the target language (the one being
aligned), `d` the dominant language (English), `y_w` / `y_l` the chosen / rejected responses.

    lp(m, x, y) = (1/|y|) sum_t log p_m(y_t | x, y_<t)          labelled tokens (response incl. end token)
    RG_t(theta) = lp(theta, x_t, y_w_t) - lp(theta, x_t, y_l_t)  target language, policy, with gradient
    RG_d(ref)   = lp(ref, x_d, y_w_d) - lp(ref, x_d, y_l_d)      dominant language, frozen reference: a constant
    L = gap_weight * mean_b (beta * RG_t(theta) - RG_d(ref))^2
        + repr_weight * MSE(hbar_d(theta), hbar_d(ref))

Defaults: beta 1.0, gap_weight 1.0, repr_weight 1.0; no SFT term, no KL. `beta` multiplies the TARGET gap, so
the optimum is RG_t = RG_d / beta. `hbar_d` is the last-layer hidden state (after the final norm, i.e.
`hidden_states[-1]` of a Hugging Face model) pooled over each dominant-language sequence, prompt+chosen
and prompt+rejected: two pooled vectors per example; the MSE averages over rows and hidden dimensions.

Sign flip: dL/dRG_t = 2 * gap_weight * beta * (beta * RG_t - RG_d) / B. While beta * RG_t < RG_d gradient
descent raises the target gap; once it overshoots, the gradient changes sign and pulls it back. DPO's
-logsigmoid(beta * margin) has a gradient of one sign everywhere: it never stops pushing the margin up.

Where the authors' code (circle-hit/MPO, LLaMA-Factory fork) is followed rather than the paper's text:
- the gaps are reference-free, length-normalised log-probability differences (mean over labelled tokens,
  `get_batch_logps / valid_length`), not DPO's reference-normalised summed log-ratios;
- their representation term pools with an unmasked mean over ALL positions, padding included
  (`hidden_states[-1].mean(dim=1)`): `pool_hidden(..., "mean_all")`. Their collator pads every batch to a
  multiple of 8 with the tokenizer's pad id (`pad_to_multiple_of=8`), so even their batch-1 runs average over
  up to 7 pad positions. The value depends on the padding, so our default is the masked `mean`; `mean_all`
  with per-pair `widths` (reference/pairs.py) reproduces their batch-1 computation exactly.

Ablations (options of `--method mpo`, docs/methods/mpo.md "Ablations"); neither the paper's main method nor
the authors' code does any of them:
- without the retain term, `repr_weight = 0`: L = gap_weight * mean_b (beta * RG_t - RG_d)^2; the policy's
  dominant-language pass and the reference's pooled hidden states are then not computed at all;
- summed log-probabilities, `mpo_logps = "sum"` (`mean_token_logps(..., average=False)`): lp(m, x, y) =
  sum_t log p_m(y_t | x, y_<t) in RG_t(theta), RG_d(ref) and RG_t(ref) alike;
- a reference-relative (DPO-style) target gap, `normalise_target_gap` (`ref_target_gap` here):
      RG_t(theta) -> RG_t(theta) - RG_t(ref)
                   = [lp(theta, y_w_t) - lp(ref, y_w_t)] - [lp(theta, y_l_t) - lp(ref, y_l_t)]
      L_gap = mean_b (beta * (RG_t(theta) - RG_t(ref)) - RG_d(ref))^2
  the difference of the implicit rewards log pi_theta / pi_ref of the chosen and the rejected answer; with
  `mpo_logps = "sum"` beta * (RG_t(theta) - RG_t(ref)) is exactly DPO's reward margin
  beta * [log pi_theta(y_w)/pi_ref(y_w) - log pi_theta(y_l)/pi_ref(y_l)], regressed on RG_d(ref) instead
  of pushed up by -log sigmoid. RG_d stays the reference's own (reference-free) gap: measured relative to
  itself the reference's gap would be 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from safetune.data.batching import IGNORE_INDEX
from safetune.methods.losses import DEFAULT_CHUNK_ELEMENTS, chunk_positions, shift_targets

PoolMode = Literal["mean", "mean_all", "last"]
LogpsMode = Literal["mean", "sum"]
POOL_MODES: tuple[str, ...] = ("mean", "mean_all", "last")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for half/bf16/fp32 logits, fp64 for fp64 logits (exact tests)."""
    return torch.promote_types(dtype, torch.float32)


class _MeanTokenLogps(torch.autograd.Function):
    """Length-normalised (or, `average=False`, summed) log-prob of the labelled tokens, chunked over
    labelled positions.

    Forward: for each chunk of labelled positions, gather the target logit and subtract the logsumexp of
    that [chunk, V] block (in fp32). Saved for backward: the logits tensor itself (a reference, no copy),
    the flat indices and targets of the labelled positions, their logsumexp (fp32, one value per labelled
    token) and the per-row token counts. Backward recomputes softmax = exp(z - lse) one chunk at a time and
    writes (onehot - softmax) * g / n into a single gradient buffer of the logits' shape and dtype (what
    autograd must return anyway); positions without a label get exact zeros and are never visited.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, logits: Tensor, targets: Tensor, chunk_elements: int, average: bool
    ) -> Tensor:
        batch, length, vocab = logits.shape
        dtype = _compute_dtype(logits.dtype)
        flat = logits.reshape(batch * length, vocab)
        flat_targets = targets.reshape(-1)
        index = (flat_targets != IGNORE_INDEX).nonzero().squeeze(1)
        picked_targets = flat_targets[index]
        token_logps = torch.empty(index.numel(), dtype=dtype, device=logits.device)
        lse = torch.empty(index.numel(), dtype=dtype, device=logits.device)
        step = chunk_positions(vocab, chunk_elements)
        for start in range(0, index.numel(), step):
            stop = min(start + step, index.numel())
            block = flat[index[start:stop]].to(dtype)
            lse[start:stop] = torch.logsumexp(block, dim=-1)
            picked = block.gather(1, picked_targets[start:stop].unsqueeze(1)).squeeze(1)
            token_logps[start:stop] = picked - lse[start:stop]
        rows = index // length
        # The divisor per row: its labelled-token count (mean), or 1 (sum).
        if average:
            counts = torch.bincount(rows, minlength=batch)
        else:
            counts = torch.ones(batch, dtype=torch.long, device=logits.device)
        total = torch.zeros(batch, dtype=dtype, device=logits.device).index_add_(0, rows, token_logps)
        ctx.save_for_backward(logits, index, picked_targets, lse, counts)
        ctx.chunk_elements = chunk_elements
        return total / counts.clamp(min=1).to(dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, None, None, None]:  # type: ignore[override]
        logits, index, picked_targets, lse, counts = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        batch, length, vocab = logits.shape
        grad = torch.zeros((batch * length, vocab), dtype=logits.dtype, device=logits.device)
        flat = logits.reshape(batch * length, vocab)
        # d lp_b / d z_bt = (onehot(y_t) - softmax(z_bt)) / n_b for labelled t.
        row_scale = grad_out.to(lse.dtype) / counts.clamp(min=1).to(lse.dtype)
        step = chunk_positions(vocab, ctx.chunk_elements)
        for start in range(0, index.numel(), step):
            stop = min(start + step, index.numel())
            pos = index[start:stop]
            scale = row_scale[pos // length].unsqueeze(1)
            block = flat[pos].to(lse.dtype)
            g = torch.exp(block - lse[start:stop].unsqueeze(1)).mul_(-scale)
            g.scatter_add_(1, picked_targets[start:stop].unsqueeze(1), scale)
            grad[pos] = g.to(grad.dtype)
        return grad.view(batch, length, vocab), None, None, None


def mean_token_logps(
    logits: Tensor, labels: Tensor, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS, average: bool = True
) -> Tensor:
    """Per-row mean (`average=False`: summed) log-probability of the labelled tokens, WITH gradient
    w.r.t. `logits`.

    `logits` [B, T, V] (any float dtype), `labels` [B, T] with -100 on prompt and padding (shifted inside:
    logits[b, t] predicts labels[b, t + 1]). Returns [B] in fp32 (fp64 for fp64 logits); rows with no
    labelled token give 0 (and zero gradient). Only labelled positions are visited, `chunk_elements` logits
    at a time, so no [B, T, V] fp32 tensor is ever materialised, in the forward or the backward pass.

    Memory kept by autograd: the logits tensor itself (no copy), plus O(labelled tokens) fp32 values (the
    logsumexp per token) and int64 indices. The backward pass allocates one gradient of the logits' shape
    and dtype (the minimum autograd needs) plus one [chunk, V] fp32 block at a time. Not twice
    differentiable. Equals `losses.sequence_logps(logits, labels, average)` in value.
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"logits [B, T, V] and labels [B, T] expected, got {logits.shape} and {labels.shape}"
        )
    if chunk_elements < 1:
        raise ValueError(f"chunk_elements must be positive, got {chunk_elements}")
    targets = shift_targets(labels)
    out: Tensor = _MeanTokenLogps.apply(logits, targets, int(chunk_elements), bool(average))
    return out


def pool_hidden(
    hidden: Tensor, attention_mask: Tensor | None, mode: PoolMode = "mean", widths: Tensor | None = None
) -> Tensor:
    """Pool hidden states [B, T, H] into [B, H] (fp32; fp64 for fp64 input), differentiably.

    mean      masked mean over the positions where attention_mask is 1 (independent of padding; default)
    mean_all  unmasked mean over positions 0..widths[b]-1, padding included (the authors' code); all T
              positions when `widths` is None. It changes with the padding, so the trainer passes each
              pair's own padded width (reference/pairs.py) to make it independent of batch composition.
              `attention_mask` is ignored.
    last      hidden state of the last non-pad position (the largest t with mask 1): right padding gives
              position len-1, left padding position T-1.
    Rows whose mask is all zero pool to 0 for `mean` and `last`. `attention_mask=None` means no padding.
    Accumulates in fp32 without an fp32 copy of `hidden`.
    """
    if hidden.dim() != 3:
        raise ValueError(f"hidden [B, T, H] expected, got {tuple(hidden.shape)}")
    batch, length, _ = hidden.shape
    dtype = _compute_dtype(hidden.dtype)
    if mode == "mean_all":
        if widths is None:
            return hidden.sum(dim=1, dtype=dtype) / length
        if widths.shape != (batch,) or bool((widths < 1).any()) or bool((widths > length).any()):
            raise ValueError(f"widths must be [{batch}] values in 1..{length}, got {widths.tolist()}")
        # A prefix sum: positions at or beyond a row's width (padding another pair added) do not count.
        inside = torch.arange(length, device=hidden.device) < widths.to(hidden.device).unsqueeze(1)
        summed = (hidden * inside.unsqueeze(-1).to(hidden.dtype)).sum(dim=1, dtype=dtype)
        return summed / widths.to(device=hidden.device, dtype=dtype).unsqueeze(1)
    if mode not in POOL_MODES:
        raise ValueError(f"pooling mode must be one of {POOL_MODES}, got {mode!r}")
    if attention_mask is None:
        attention_mask = torch.ones(batch, length, dtype=torch.long, device=hidden.device)
    if attention_mask.shape != hidden.shape[:2]:
        raise ValueError(f"attention_mask {tuple(attention_mask.shape)} does not match hidden {hidden.shape}")
    mask = attention_mask.bool()
    count = mask.sum(dim=1)
    if mode == "mean":
        summed = (hidden * mask.unsqueeze(-1).to(hidden.dtype)).sum(dim=1, dtype=dtype)
        return summed / count.clamp(min=1).to(dtype).unsqueeze(1)
    positions = torch.arange(length, device=hidden.device)
    last = torch.where(mask, positions, torch.zeros_like(positions)).amax(dim=1)
    picked = hidden[torch.arange(batch, device=hidden.device), last].to(dtype)
    return picked * (count > 0).to(dtype).unsqueeze(1)


@dataclass
class RewardGapOutput:
    """`loss` carries the gradient; the other fields are detached, for logging.

    gap_term   mean_b (beta * RG_t - RG_d)^2, before gap_weight
    repr_term  MSE of the pooled dominant-language hidden states, before repr_weight (0 when not computed)
    target_gap [B] RG_t as used in the loss (minus RG_t(ref) when `ref_target_gap` was given)
    gap_error  [B] beta * RG_t - RG_d (negative: the target gap is still below its goal)
    """

    loss: Tensor
    gap_term: Tensor
    repr_term: Tensor
    target_gap: Tensor
    gap_error: Tensor


def reward_gap_mpo_loss(
    chosen_logps_t: Tensor,
    rejected_logps_t: Tensor,
    ref_gap_d: Tensor,
    policy_pooled_d: Tensor | None,
    ref_pooled_d: Tensor | None,
    beta: float = 1.0,
    gap_weight: float = 1.0,
    repr_weight: float = 1.0,
    ref_target_gap: Tensor | None = None,
) -> RewardGapOutput:
    """L = gap_weight * mean_b (beta * RG_t - RG_d)^2 + repr_weight * MSE(policy_pooled_d, ref_pooled_d).

    chosen_logps_t, rejected_logps_t  [B] length-normalised (or, the `mpo_logps="sum"` ablation, summed)
                                      policy log-probs of the target-language chosen / rejected responses
                                      (`mean_token_logps`), with gradient
    ref_gap_d        [B] RG_d: the frozen reference's chosen minus rejected log-prob (normalised as above) on
                     the dominant-language pair; treated as a constant (detached)
    policy_pooled_d  [2B, H] pooled dominant-language hidden states of the policy (`pool_hidden`): rows
                     0..B-1 are prompt+chosen, rows B..2B-1 prompt+rejected (the concatenated-forward order);
                     any row order works as long as `ref_pooled_d` uses the same one
    ref_pooled_d     [2B, H] the same for the frozen reference (detached)
    ref_target_gap   [B] optional RG_t(ref) on the target-language pair; when given the loss uses
                     RG_t(theta) - RG_t(ref), the reference-relative (DPO-style) target gap of the
                     `normalise_target_gap` ablation: L_gap = mean_b (beta * (RG_t(theta) - RG_t(ref)) - RG_d)^2

    With repr_weight == 0 the hidden states may be None (if both are given the term is still logged).
    """
    if chosen_logps_t.shape != rejected_logps_t.shape or chosen_logps_t.dim() != 1:
        raise ValueError(
            f"chosen/rejected log-probs must both be [B], got {chosen_logps_t.shape}, {rejected_logps_t.shape}"
        )
    batch = chosen_logps_t.shape[0]
    if ref_gap_d.shape != (batch,):
        raise ValueError(f"ref_gap_d must be [{batch}], got {tuple(ref_gap_d.shape)}")
    dtype = _compute_dtype(chosen_logps_t.dtype)
    target_gap = chosen_logps_t.to(dtype) - rejected_logps_t.to(dtype)
    if ref_target_gap is not None:
        if ref_target_gap.shape != (batch,):
            raise ValueError(f"ref_target_gap must be [{batch}], got {tuple(ref_target_gap.shape)}")
        target_gap = target_gap - ref_target_gap.detach().to(dtype)
    gap_error = beta * target_gap - ref_gap_d.detach().to(dtype)
    gap_term = gap_error.pow(2).mean()
    loss = gap_weight * gap_term

    have_hidden = policy_pooled_d is not None and ref_pooled_d is not None
    if repr_weight != 0 and not have_hidden:
        raise ValueError("repr_weight != 0 needs policy_pooled_d and ref_pooled_d")
    repr_term = torch.zeros((), dtype=dtype, device=chosen_logps_t.device)
    if have_hidden:
        assert policy_pooled_d is not None and ref_pooled_d is not None
        if policy_pooled_d.shape != ref_pooled_d.shape or policy_pooled_d.dim() != 2:
            raise ValueError(
                f"pooled hidden states must match as [2B, H], got {policy_pooled_d.shape}, {ref_pooled_d.shape}"
            )
        if policy_pooled_d.shape[0] != 2 * batch:
            raise ValueError(
                f"pooled hidden states need 2B = {2 * batch} rows, got {policy_pooled_d.shape[0]}"
            )
        pooled_dtype = _compute_dtype(policy_pooled_d.dtype)
        if repr_weight != 0:
            repr_term = F.mse_loss(policy_pooled_d.to(pooled_dtype), ref_pooled_d.detach().to(pooled_dtype))
            loss = loss + repr_weight * repr_term.to(dtype)
        else:
            with torch.no_grad():
                repr_term = F.mse_loss(policy_pooled_d.to(pooled_dtype), ref_pooled_d.to(pooled_dtype))
    return RewardGapOutput(
        loss=loss,
        gap_term=gap_term.detach(),
        repr_term=repr_term.detach(),
        target_gap=target_gap.detach(),
        gap_error=gap_error.detach(),
    )
