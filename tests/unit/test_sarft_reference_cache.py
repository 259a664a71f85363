"""SaRFT's reference cache: the frozen reference's states at the KL positions, computed once before
training, give the loss and gradients a live reference forward gives (single-turn rows and conversation
rows, full fine-tuning and LoRA); the cache holds exactly the KL positions; the frozen head is a copy."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments

from safetune.config import MethodConfig
from safetune.data.chat import ChatRenderer
from safetune.data.records import Conversation, Message, RoleExample
from safetune.data.turns import render_conversations
from safetune.models.loading import FrozenLmHead, lm_head_fn, load_causal_lm, load_tokenizer
from safetune.training.trainer import (
    ReferenceCache,
    RoleCollator,
    SafetuneTrainer,
    encode_conversation_rows,
    encode_roles,
)


@pytest.fixture(scope="module")
def tiny(tiny_llama3: Path) -> tuple[Any, ChatRenderer]:
    tokenizer = load_tokenizer(str(tiny_llama3))
    model = load_causal_lm(str(tiny_llama3), None, torch.float32).eval()
    return model, ChatRenderer(tokenizer, empty_system=True)


def _conv(ident: str, turns: int) -> Conversation:
    messages = []
    for k in range(turns):
        messages.append(Message("user", f"What do you sell, number {k}?" + " Tell me more." * k))
        messages.append(Message("assistant", f"Blades and poison {k}, friend."))
    return Conversation(ident, tuple(messages), system="You are Vex, a merchant.", role="Vex")


EXAMPLES = [
    RoleExample("Vex", "What do you sell?", "Blades, friend.", "e0"),
    RoleExample("Vex", "Where is the gate?", "Past the bridge, by the river at night.", "e1"),
    RoleExample("Vex", "Hello.", "Silver first.", "e2"),
    RoleExample("Vex", "Who watches the gates at night?", "Guards who count their coins.", "e3"),
]


def _rows(renderer: ChatRenderer, kind: str) -> list[dict[str, Any]]:
    if kind == "single":
        return encode_roles(renderer, EXAMPLES, [True, False, True, True])
    rendered = render_conversations(renderer, [_conv("a", 3), _conv("b", 2), _conv("c", 4)]).conversations
    # a: its middle turn; b: nothing (no reference); c: its first and last turns
    return encode_conversation_rows(rendered, {"a": {1: True}, "c": {0: True, 3: True}})


def _policy(model: Any, finetune: str) -> Any:
    """A policy that differs from the reference, so the KL and its gradient are not zero."""
    torch.manual_seed(1)
    policy = copy.deepcopy(model)
    if finetune == "lora":
        from peft import LoraConfig, get_peft_model

        policy = get_peft_model(policy, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.data.normal_(0, 0.5)
    else:
        with torch.no_grad():
            for param in policy.parameters():
                param.add_(torch.randn_like(param) * 0.02)
    return policy.train()


def _loss_and_grads(
    trainer: SafetuneTrainer, policy: Any, batch: dict
) -> tuple[float, dict[str, torch.Tensor]]:
    policy.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(policy, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}
    policy.zero_grad(set_to_none=True)
    return loss.item(), grads


@pytest.mark.parametrize("finetune", ["full", "lora"])
@pytest.mark.parametrize(
    ("kind", "kl_positions"), [("single", "all"), ("single", "response"), ("turns", "all")]
)
def test_cached_reference_gives_the_loss_and_gradients_of_a_live_one(
    tiny, tmp_path: Path, finetune: str, kind: str, kl_positions: str
) -> None:
    model, renderer = tiny
    method = MethodConfig(name="sarft", beta=0.5, kl_positions=kl_positions)  # type: ignore[arg-type]
    rows = _rows(renderer, kind)
    collate = RoleCollator(renderer.tokenizer.pad_token_id)
    batch = collate(rows)
    assert batch["row_index"].tolist() == list(range(len(rows)))
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    policy = _policy(model, finetune)
    live = SafetuneTrainer(
        model=policy,
        args=args,
        train_dataset=[],
        data_collator=collate,
        method=method,
        ref_model=copy.deepcopy(model) if finetune == "full" else None,
    )
    expected_loss, expected = _loss_and_grads(live, policy, batch)
    # batch size 2: the cache's batches differ from the step's, which must not matter
    cache = ReferenceCache.build(model, rows, method, renderer.tokenizer.pad_token_id, batch_size=2)
    cached = SafetuneTrainer(
        model=policy,
        args=args,
        train_dataset=[],
        data_collator=collate,
        method=method,
        reference_cache=cache,
        reference_head=FrozenLmHead(model) if finetune == "full" else None,
    )
    loss, grads = _loss_and_grads(cached, policy, batch)
    assert cached.reference_rows == live.reference_rows == sum(r["flag"] for r in rows)
    # the KL term is really in both: the same step without it differs
    plain = SafetuneTrainer(
        model=policy,
        args=args,
        train_dataset=[],
        data_collator=collate,
        method=MethodConfig(name="sarft", beta=0.0),
    )
    assert abs(_loss_and_grads(plain, policy, batch)[0] - expected_loss) > 1e-4
    assert loss == pytest.approx(expected_loss, rel=1e-5, abs=1e-7)
    assert grads.keys() == expected.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_cache_holds_exactly_the_kl_positions_and_their_states(tiny) -> None:
    model, renderer = tiny
    rendered = render_conversations(renderer, [_conv("a", 3), _conv("c", 4)]).conversations
    flags = {"a": {1: True}, "c": {0: True, 3: True}}
    rows = encode_conversation_rows(rendered, flags)
    method = MethodConfig(name="sarft", beta=0.1)
    cache = ReferenceCache.build(model, rows, method, renderer.tokenizer.pad_token_id, batch_size=8)
    for conv, row in zip(rendered, rows, strict=True):
        # position t predicts token t + 1: a flagged turn's tokens [start, end) are read at [start-1, end-1)
        expected = [
            t
            for span in conv.sequences[0].spans
            if flags[conv.id].get(span.turn)
            for t in range(span.start - 1, span.end - 1)
        ]
        assert cache.positions[row["index"]].tolist() == expected
        with torch.no_grad():
            alone = model.model(input_ids=torch.tensor([row["input_ids"]])).last_hidden_state[0]
        torch.testing.assert_close(cache.states[row["index"]], alone[expected], rtol=1e-5, atol=1e-6)
        assert cache.states[row["index"]].dtype == torch.float32  # the model's dtype
    # single-turn rows, kl_positions "all": every non-pad position of each flagged row, none of the others
    single = encode_roles(renderer, EXAMPLES, [True, False, True, False])
    cache = ReferenceCache.build(model, single, method, renderer.tokenizer.pad_token_id, batch_size=8)
    assert sorted(cache.positions) == [0, 2]
    for i in (0, 2):
        assert cache.positions[i].tolist() == list(range(len(single[i]["input_ids"])))
    figures = cache.report()
    hidden = model.config.hidden_size
    positions = len(single[0]["input_ids"]) + len(single[2]["input_ids"])
    assert figures == {"rows": 2, "positions": positions, "bytes": positions * hidden * 4}


def test_a_flagged_row_missing_from_the_cache_is_an_error(tiny) -> None:
    model, renderer = tiny
    rows = encode_roles(renderer, EXAMPLES, [True, False, False, False])
    method = MethodConfig(name="sarft", beta=0.1)
    cache = ReferenceCache.build(model, rows, method, renderer.tokenizer.pad_token_id, batch_size=8)
    with pytest.raises(ValueError, match="no entry for flagged row 1"):
        cache.outputs([1], torch.tensor([-1, 0]), 8, torch.device("cpu"), lambda h: h)


def test_frozen_head_of_tied_embeddings_is_a_copy() -> None:
    config = LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    frozen = FrozenLmHead(model)
    hidden = torch.randn(3, 16)
    torch.testing.assert_close(frozen(hidden), lm_head_fn(model)(hidden))
    assert frozen.head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    assert not any(p.requires_grad for p in frozen.parameters())
    before = frozen(hidden).clone()
    with torch.no_grad():
        model.get_input_embeddings().weight.add_(1.0)  # training moves the tied embedding
    torch.testing.assert_close(frozen(hidden), before)
    assert not torch.allclose(lm_head_fn(model)(hidden), before)


def test_frozen_head_keeps_the_final_soft_capping() -> None:
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=32,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    )
    model.config.final_logit_softcapping = 0.5
    hidden = torch.randn(2, 16) * 10
    out = FrozenLmHead(model)(hidden)
    assert out.abs().max() < 0.5
    torch.testing.assert_close(out, torch.tanh(model.lm_head(hidden) / 0.5) * 0.5)
