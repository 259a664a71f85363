"""SPPFT's safety-layer math (reference/safety_layers.py) against naive loops and hand-made curves, the
freezing (training/sppft.py), the bit-exact weight restore and the `method.layers` parsing."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from safetune.config import load_config, parse_layer_band
from safetune.errors import ConfigError
from safetune.reference.safety_layers import (
    angle_gap,
    band_regex,
    check_band,
    choose_band,
    initial_band,
    pair_cosines,
    published_band,
    refine_band,
    sample_pairs,
    scaled_band,
)
from safetune.training.sppft import freeze_band


def _naive_cos(u: list[float], v: list[float]) -> float:
    dot = sum(a * b for a, b in zip(u, v, strict=True))
    return dot / (math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in v)))


def test_angle_gap_matches_a_naive_loop():
    gen = torch.Generator().manual_seed(0)
    normal, malicious = torch.randn(5, 3, 4, generator=gen), torch.randn(6, 3, 4, generator=gen)
    nn_pairs = sample_pairs(5, 5, True, 7, 10)
    nm_pairs = sample_pairs(5, 6, False, 7, 1000)
    assert all(i != j for i, j in nn_pairs) and all(j < 6 for _, j in nm_pairs)
    cos_nn = pair_cosines(normal, normal, nn_pairs)
    cos_nm = pair_cosines(normal, malicious, nm_pairs)
    for mode in ("mean_cosine", "mean_angle"):
        gap = angle_gap(cos_nn, cos_nm, mode)
        for layer in range(3):
            nn = [_naive_cos(normal[i, layer].tolist(), normal[j, layer].tolist()) for i, j in nn_pairs]
            nm = [_naive_cos(normal[i, layer].tolist(), malicious[j, layer].tolist()) for i, j in nm_pairs]
            if mode == "mean_cosine":
                want = math.degrees(math.acos(sum(nm) / 7)) - math.degrees(math.acos(sum(nn) / 7))
            else:
                want = (
                    sum(math.degrees(math.acos(c)) for c in nm) / 7
                    - sum(math.degrees(math.acos(c)) for c in nn) / 7
                )
            assert gap[layer].item() == pytest.approx(want, abs=1e-9)


def test_angle_gap_of_hand_made_states():
    # layer 0: all vectors equal (gap 0); layer 1: normal along x, malicious along y (N-M 90 degrees).
    normal = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[2.0, 0.0], [3.0, 0.0]]])
    malicious = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[5.0, 0.0], [0.0, 2.0]]])
    gap = angle_gap(pair_cosines(normal, normal, [(0, 1)]), pair_cosines(normal, malicious, [(0, 1), (1, 0)]))
    assert gap.tolist() == pytest.approx([0.0, 90.0])


@pytest.mark.parametrize(
    ("gaps", "band"),
    [
        ([0, 0, 1, 4, 8, 9, 9.2, 9.3], (2, 5)),  # appears at 2; the rise 9 -> 9.2 after layer 5 is flat
        ([0, 0, 0, 5, 10, 15, 20, 25], (3, 7)),  # rises to the last layer
        ([0, 3, 3, 3], (1, 1)),  # appears and is flat at once
        ([0, -1, -2], (0, 0)),  # no positive gap: the layer with the largest gap
    ],
)
def test_band_rule_on_synthetic_curves(gaps, band):
    assert initial_band(gaps, onset=0.1, flat=0.2)[0] == band


def test_refinement_maximises_upper_then_lower_bound():
    counts = {(2, 3): 5, (2, 4): 7, (2, 5): 7, (2, 6): 1, (1, 4): 6, (3, 4): 9, (4, 4): 2}
    band, trials = refine_band((2, 4), num_layers=7, alpha=1.2, radius=2, count=lambda b: counts.get(b, 0))
    assert [t["stage"] for t in trials] == ["upper"] * 5 + ["lower"] * 5
    assert band == (3, 4)  # upper: 4 (tie with 5 goes to the nearer bound), then lower: 3
    down, _ = refine_band((2, 4), num_layers=7, alpha=0.8, radius=1, count=lambda b: counts.get(b, 0))
    assert down == (1, 3)  # minimising: upper 3 (5 refusals), then lower 1 (tie with 3 goes to the lower)


def _tiny(layers: int = 3) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    return LlamaForCausalLM(config)


def test_scaled_band_restores_weights_bit_exactly():
    model = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with scaled_band(model, (1, 2), 1.1):
        w = model.model.layers[1].self_attn.o_proj.weight
        assert torch.equal(w, before["model.layers.1.self_attn.o_proj.weight"] * 1.1)
        assert torch.equal(
            model.model.layers[0].mlp.up_proj.weight, before["model.layers.0.mlp.up_proj.weight"]
        )
        assert torch.equal(
            model.model.layers[1].input_layernorm.weight, before["model.layers.1.input_layernorm.weight"]
        )
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    with pytest.raises(RuntimeError), scaled_band(model, (0, 2), 0.7):
        raise RuntimeError("a failed trial")
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("scope", ["attn_mlp", "layer"])
def test_freeze_band_freezes_exactly_the_band(scope):
    model = _tiny(4)
    frozen = set(freeze_band(model, (1, 2), scope))
    for name, param in model.named_parameters():
        in_band = name.startswith(("model.layers.1.", "model.layers.2."))
        in_blocks = ".self_attn." in name or ".mlp." in name
        expected = in_band and (in_blocks or scope == "layer")
        assert (name in frozen) == expected, name
        assert param.requires_grad == (not expected), name
    # norms stay trainable by default
    assert model.model.layers[1].input_layernorm.weight.requires_grad == (scope == "attn_mlp")


def test_lora_exclusion_pattern_matches_only_the_band():
    import re

    pattern = band_regex((1, 2))
    assert re.fullmatch(pattern, "model.layers.1.self_attn.q_proj")
    assert re.fullmatch(pattern, "base_model.model.model.layers.2.mlp.up_proj")
    assert not re.fullmatch(pattern, "model.layers.12.self_attn.q_proj")
    assert not re.fullmatch(pattern, "model.layers.0.self_attn.q_proj")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("5-3", "first layer 5 is after the last 3"),
        ("a-b", "expected 'a-b'"),
        ("1-2-3", "expected 'a-b'"),
        ("-2", "expected 'a-b'"),
    ],
)
def test_layers_option_errors(text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [f"method.layers={text}"])


def test_layers_option_parses_and_checks_the_layer_count():
    assert parse_layer_band("6-12") == (6, 12)
    assert parse_layer_band("7") == (7, 7)
    check_band((0, 3), 4, "method.layers")
    with pytest.raises(ConfigError, match="the model has 4 decoder layers"):
        check_band((2, 4), 4, "method.layers")


def test_published_bands_and_the_choice():
    assert published_band("meta-llama/Meta-Llama-3-8B-Instruct", 32).band == (6, 12)  # type: ignore[union-attr]
    assert published_band("google/gemma-2b-it", 18).alpha == 1.1  # type: ignore[union-attr]
    assert published_band("google/gemma-2b-it", 2) is None  # another model under a familiar name
    assert published_band("Qwen/Qwen2.5-7B-Instruct", 28) is None
    analysis = {"cosine_band": [1, 2], "refinement": {"band": [1, 3]}}
    assert choose_band(analysis, None, None) == {"band": [1, 3], "source": "located"}
    assert choose_band(analysis, (0, 0), None)["source"] == "override"
    phi = published_band("microsoft/Phi-3-mini-4k-instruct", 32)
    assert choose_band(analysis, None, phi)["band"] == [11, 15]
    assert choose_band({"cosine_band": [1, 2], "refinement": None}, None, None)["source"] == "cosine"
