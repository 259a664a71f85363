"""SafeLoRA's projection math (methods/safelora.py) against hand-computed matrices and a naive loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from safetune.errors import ConfigError
from safetune.methods.safelora import (
    alignment_projector,
    lora_cosine,
    lora_modules,
    project_adapter,
    select_modules,
)

# V = aligned - unaligned = [[3, 0], [4, 0]]: ||V||_F = 5, column space spanned by u = (0.6, 0.8).
ALIGNED = torch.tensor([[4.0, 1.0], [4.0, -2.0]])
UNALIGNED = torch.tensor([[1.0, 1.0], [0.0, -2.0]])
B = torch.tensor([[1.0], [0.0]])
A = torch.tensor([[1.0, 1.0]])


def test_projectors_by_hand():
    official = alignment_projector(ALIGNED, UNALIGNED, "official")
    exact = alignment_projector(ALIGNED, UNALIGNED, "exact")
    # V V^T / ||V||_F = [[9, 12], [12, 16]] / 5 (the norm itself, not its square)
    assert torch.allclose(official, torch.tensor([[1.8, 2.4], [2.4, 3.2]]))
    assert torch.allclose(exact, torch.tensor([[0.36, 0.48], [0.48, 0.64]]), atol=1e-6)
    assert official.dtype == torch.float32


def test_exact_projector_is_idempotent_and_the_official_one_is_not():
    gen = torch.Generator().manual_seed(0)
    aligned, unaligned = torch.randn(6, 4, generator=gen), torch.randn(6, 4, generator=gen)
    exact = alignment_projector(aligned, unaligned, "exact", torch.float64)
    assert torch.allclose(exact @ exact, exact, atol=1e-10) and torch.allclose(exact, exact.T, atol=1e-12)
    v = (aligned - unaligned).double()
    assert torch.allclose(exact, v @ torch.linalg.pinv(v.T @ v) @ v.T, atol=1e-10)  # V (V^T V)^+ V^T
    official = alignment_projector(aligned, unaligned, "official", torch.float64)
    assert not torch.allclose(official @ official, official, atol=1e-3)


def test_cosine_and_projected_b_by_hand():
    # C B A = [[.36, .36], [.48, .48]] (exact) and B A = [[1, 1], [0, 0]]: cos = 0.72 / (0.6 * 2) = 0.6;
    # the official C is 5 times the exact one here, so the cosine is the same.
    for form in ("official", "exact"):
        c = alignment_projector(ALIGNED, UNALIGNED, form)
        assert lora_cosine(c, B, A) == pytest.approx(0.6, abs=1e-5)
    adapter = {"base_model.model.m.lora_A.weight": A, "base_model.model.m.lora_B.weight": B}
    result = project_adapter(
        adapter,
        lambda _: alignment_projector(ALIGNED, UNALIGNED, "official"),
        mode="threshold",
        threshold=0.6,
    )
    assert result.modules[0].projected and result.modules[0].cosine == 0.6
    assert torch.allclose(result.weights["base_model.model.m.lora_B.weight"], torch.tensor([[1.8], [2.4]]))
    assert torch.equal(result.weights["base_model.model.m.lora_A.weight"], A)  # A unchanged
    assert result.modules[0].norm_b_before == 1.0 and result.modules[0].norm_b_after == pytest.approx(3.0)


def test_selection_modes_and_ties():
    cosines = [0.3, 0.1, 0.3, 0.9]
    assert select_modules(cosines, "number", k=2) == (0.3, [True, True, True, False])  # a tie: 3 > k
    assert select_modules(cosines, "number", k=1) == (0.1, [False, True, False, False])
    assert select_modules(cosines, "number", k=10) == (0.9, [True] * 4)  # fewer than k: all
    assert select_modules(cosines, "threshold", threshold=0.3) == (0.3, [True, True, True, False])
    assert select_modules(cosines, "threshold", threshold=0.05) == (0.05, [False] * 4)


def _adapter(gen: torch.Generator, modules: int, d_out: int = 6, d_in: int = 5, r: int = 2) -> dict:
    adapter = {}
    for i in range(modules):
        adapter[f"base_model.model.layers.{i}.q_proj.lora_A.weight"] = torch.randn(r, d_in, generator=gen)
        adapter[f"base_model.model.layers.{i}.q_proj.lora_B.weight"] = torch.randn(d_out, r, generator=gen)
    return adapter


def _naive(adapter, weights, k):
    """The method written out module by module: vec cosines, k-th smallest, B' = C B."""
    names = sorted({key.split(".lora_")[0] for key in adapter})
    cs, cosines = {}, []
    for name in names:
        aligned, unaligned = weights[name.removeprefix("base_model.model.")]
        v = aligned - unaligned
        cs[name] = v @ v.T / torch.norm(v)
        a, b = adapter[f"{name}.lora_A.weight"], adapter[f"{name}.lora_B.weight"]
        full = b @ a
        cos = F.cosine_similarity((cs[name] @ b @ a).reshape(1, -1), full.reshape(1, -1)).item()
        cosines.append(round(cos, 5))
    threshold = sorted(cosines)[:k][-1]
    out = {key: t.clone() for key, t in adapter.items()}
    for name, cos in zip(names, cosines, strict=True):
        if cos <= threshold:
            out[f"{name}.lora_B.weight"] = cs[name] @ adapter[f"{name}.lora_B.weight"]
    return out, cosines


def test_matches_a_naive_implementation_and_never_changes_its_input():
    gen = torch.Generator().manual_seed(1)
    adapter = _adapter(gen, modules=5)
    weights = {
        f"layers.{i}.q_proj": (torch.randn(6, 5, generator=gen), torch.randn(6, 5, generator=gen))
        for i in range(5)
    }
    before = {key: t.clone() for key, t in adapter.items()}

    def projector(name):
        return alignment_projector(*weights[name], "official")

    first = project_adapter(adapter, projector, mode="number", k=2)
    second = project_adapter(adapter, projector, mode="number", k=2)
    expected, cosines = _naive(adapter, weights, k=2)
    assert [m.cosine for m in first.modules] == pytest.approx(cosines, abs=1e-5)
    assert sum(m.projected for m in first.modules) == 2
    for key in adapter:
        assert torch.equal(adapter[key], before[key]), key  # the input is untouched
        assert torch.allclose(first.weights[key], expected[key], atol=1e-5), key
        assert torch.equal(first.weights[key], second.weights[key]), key  # a second call: the same result
    assert first.modules == second.modules and first.threshold == second.threshold


def test_adapters_safelora_does_not_define_are_refused():
    with pytest.raises(ConfigError, match="not a LoRA A/B weight"):
        lora_modules(["base_model.model.m.lora_A.weight", "base_model.model.m.lora_B.weight", "m.bias"])
    with pytest.raises(ConfigError, match="lacks its lora_A or lora_B"):
        lora_modules(["base_model.model.m.lora_A.weight"])
    assert lora_modules(["base_model.model.m.lora_B.weight", "base_model.model.m.lora_A.weight"]) == {
        "m": ("base_model.model.m.lora_A.weight", "base_model.model.m.lora_B.weight")
    }
    with pytest.raises(ValueError, match="identical"):
        alignment_projector(ALIGNED, ALIGNED)
    with pytest.raises(ValueError, match="need equal 2-D"):
        alignment_projector(ALIGNED, UNALIGNED[:1])
