"""Lisa's schedule and proximal term, Vaccine's perturbation, attention discovery and two-pass gradients
(methods/lisa.py, methods/vaccine.py, training/vaccine.py) against hand computations and naive versions."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, TrainingArguments

from safetune.config import MethodConfig
from safetune.errors import ConfigError
from safetune.methods.lisa import lisa_phase, proximal_active, proximal_term, snapshot
from safetune.methods.vaccine import NORM_EPS, adversarial_perturbation, global_norm, random_perturbation
from safetune.training.trainer import RoleCollator
from safetune.training.vaccine import VaccineTrainer, attention_modules

# --- Lisa --------------------------------------------------------------------------------------------------


def test_schedule_alternates_alignment_first():
    phases = [lisa_phase(s, 2, 3) for s in range(12)]
    a, u = "alignment", "user"
    assert phases == [a, a, u, u, u, a, a, u, u, u, a, a]
    assert all(lisa_phase(s, 0, 5) == u for s in range(7))  # K1 = 0: never aligns
    assert all(lisa_phase(s, 4, 0) == a for s in range(7))  # K2 = 0: always aligns
    # the paper's 100/900
    assert (
        lisa_phase(99, 100, 900) == a and lisa_phase(100, 100, 900) == u and lisa_phase(1000, 100, 900) == a
    )


def test_proximal_warmup_is_strictly_after_the_fraction():
    # the official `self.steps > 0.1 * total`
    assert [proximal_active(s, 100, 0.1) for s in (0, 10, 11)] == [False, False, True]
    assert proximal_active(0, 100, 0.0)


def test_proximal_term_matches_a_hand_computation_and_its_gradient():
    a = torch.tensor([1.0, 2.0], requires_grad=True)
    b = torch.tensor([[3.0]], requires_grad=True)
    anchors = {"a": torch.zeros(2), "b": torch.tensor([[1.0]])}
    term = proximal_term([("a", a), ("b", b)], anchors, rho=0.5)
    assert term is not None
    assert term.item() == pytest.approx(0.25 * (1 + 4 + 4))
    term.backward()
    assert torch.allclose(a.grad, 0.5 * torch.tensor([1.0, 2.0]))  # rho * (w - anchor)
    assert torch.allclose(b.grad, torch.tensor([[1.0]]))
    assert proximal_term([], {}, 1.0) is None


def test_snapshot_is_a_detached_copy():
    w = torch.ones(3, requires_grad=True)
    anchor = snapshot([("w", w)])
    with torch.no_grad():
        w.add_(1)
    assert torch.equal(anchor["w"], torch.ones(3)) and not anchor["w"].requires_grad


# --- Vaccine: the perturbation -------------------------------------------------------------------------------


def test_adversarial_perturbation_has_global_norm_rho_along_the_gradient():
    torch.manual_seed(0)
    grads = [torch.randn(2, 5, 8), torch.randn(2, 5, 8) * 3, torch.zeros(2, 5, 8)]
    eps = adversarial_perturbation(grads, rho=2.0)
    norm = global_norm(grads)
    assert global_norm(eps).item() == pytest.approx(2.0 * norm.item() / (norm.item() + NORM_EPS), rel=1e-6)
    for g, e in zip(grads, eps, strict=True):
        assert torch.allclose(e, g * (2.0 / (norm + NORM_EPS)), atol=1e-7)  # one scale for every layer
    assert adversarial_perturbation([], 2.0) == []


def test_random_perturbation_has_variance_rho():
    torch.manual_seed(0)
    noise = random_perturbation(torch.empty(200_000), rho=4.0)
    assert noise.var().item() == pytest.approx(4.0, rel=0.02)


# --- Vaccine: attention discovery and the two passes ------------------------------------------------------


def _llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2
    )
    return LlamaForCausalLM(config).eval()


def test_attention_modules_found_on_llama_gpt2_and_through_peft():
    llama = _llama()
    assert attention_modules(llama) == [layer.self_attn for layer in llama.model.layers]
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=32))
    assert attention_modules(gpt2) == [block.attn for block in gpt2.transformer.h]
    from peft import LoraConfig, get_peft_model

    wrapped = get_peft_model(_llama(), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    found = attention_modules(wrapped)
    assert len(found) == 3 and all(type(m).__name__ == "LlamaAttention" for m in found)
    with pytest.raises(ConfigError, match="no decoder layers"):
        attention_modules(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def _rows(lengths: list[int]) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    rows = []
    for n in lengths:
        ids = torch.randint(3, 64, (n,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [-100, -100, *ids[2:]], "flag": False})
    return rows


def _trainer(model, tmp_path, grad_accum: int, rho: float = 2.0) -> VaccineTrainer:
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=grad_accum,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )
    method = MethodConfig(name="vaccine", beta=0.0, vaccine_rho=rho)
    trainer = VaccineTrainer(model=model, args=args, data_collator=RoleCollator(0), method=method)
    trainer.current_gradient_accumulation_steps = grad_accum
    return trainer


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _naive_vaccine_grads(model, batch, rho: float, scale: float = 1.0) -> dict[str, torch.Tensor]:
    """The official two passes written out: retain_grad on each attention output, backward, scale to norm
    rho, zero the gradients, forward with the perturbation added, backward."""
    from safetune.methods.losses import sarft_loss

    layers = [layer.self_attn for layer in model.model.layers]
    outs: list[torch.Tensor] = []

    def keep(module, args, output):
        output[0].retain_grad()
        outs.append(output[0])

    def loss_of():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        flags = torch.zeros(len(logits), dtype=torch.bool)
        return sarft_loss(logits, batch["labels"], batch["attention_mask"], flags, None, beta=0.0).loss

    hooks = [m.register_forward_hook(keep) for m in layers]
    loss_of().backward()
    for h in hooks:
        h.remove()
    g = [o.grad for o in outs]
    norm = torch.stack([x.norm() for x in g]).norm()
    eps = {layers[i]: rho * g[i] / (norm + 1e-7) for i in range(len(g))}
    model.zero_grad()
    hooks = [m.register_forward_hook(lambda mod, a, out: (out[0] + eps[mod], *out[1:])) for m in layers]
    (loss_of() * scale).backward()
    for h in hooks:
        h.remove()
    grads = _grads(model)
    model.zero_grad()
    return grads


def test_two_pass_gradients_equal_the_naive_implementation(tmp_path):
    model = _llama().train()
    batch = RoleCollator(0)(_rows([7, 5]))
    naive = _naive_vaccine_grads(model, batch, rho=2.0)
    trainer = _trainer(model, tmp_path, grad_accum=1)
    trainer.training_step(model, dict(batch))
    ours = _grads(model)
    assert naive.keys() == ours.keys()
    for name in naive:
        assert torch.allclose(naive[name], ours[name], atol=1e-6), name
    # the perturbation moved the gradients: the clean gradient differs
    model.zero_grad()
    _trainer(model, tmp_path, grad_accum=1, rho=0.0).training_step(model, dict(batch))
    assert any(not torch.allclose(_grads(model)[n], ours[n], atol=1e-6) for n in ours)


def test_gradient_accumulation_adds_up_the_micro_batches(tmp_path):
    model = _llama().train()
    rows = _rows([7, 5, 6, 4])
    first, second = RoleCollator(0)(rows[:2]), RoleCollator(0)(rows[2:])
    expected = {}
    for batch in (first, second):  # each micro-batch's own two-pass gradient, halved
        for name, grad in _naive_vaccine_grads(model, batch, rho=2.0, scale=0.5).items():
            expected[name] = expected.get(name, 0) + grad
    trainer = _trainer(model, tmp_path, grad_accum=2)
    trainer.training_step(model, dict(first))
    trainer.training_step(model, dict(second))  # the official zero_grad would drop the first one here
    ours = _grads(model)
    for name in expected:
        assert torch.allclose(expected[name], ours[name], atol=1e-6), name
    # with no perturbation (rho 0), accumulating 2 x 2 rows equals one batch of 4 rows
    model.zero_grad()
    trainer = _trainer(model, tmp_path, grad_accum=2, rho=0.0)
    trainer.training_step(model, dict(first))
    trainer.training_step(model, dict(second))
    accumulated = _grads(model)
    model.zero_grad()
    _trainer(model, tmp_path, grad_accum=1, rho=0.0).training_step(model, RoleCollator(0)(rows))
    for name, grad in _grads(model).items():
        assert torch.allclose(accumulated[name], grad, atol=1e-6), name
