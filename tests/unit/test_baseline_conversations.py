"""The role-data baselines on conversations: each trains on the rendered conversation rows with
assistant-only labels on every assistant turn (only the last with `data.train_turns=last`), with no
per-turn RDS pass; SafeInstr's and Lisa's safety demonstrations stay one-turn rows beside them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer

from safetune.config import RunConfig, load_config
from safetune.data.batching import IGNORE_INDEX
from safetune.data.safety import builtin_path, load_safety_demos
from safetune.errors import ConfigError
from safetune.methods.losses import shift_targets, tokenwise_betas
from safetune.methods.registry import get_method
from safetune.models.loading import load_causal_lm
from safetune.training.run import RECIPES, resolve_beta
from safetune.training.trainer import RoleRecipe

EOT = "<|eot_id|>"
# Two conversations (ShareGPT): 2 and 3 assistant turns, each answer distinct so that a label run names it.
CHATS = [
    [("Hello, who are you?", "I am Vex, a merchant."), ("What do you sell?", "Blades and lamp oil.")],
    [
        ("Good evening.", "Evening, stranger."),
        ("Any maps?", "Maps of the old roads."),
        ("How much?", "Three silver coins."),
    ],
]


def _sharegpt(path: Path) -> Path:
    rows = []
    for i, chat in enumerate(CHATS):
        turns = []
        for user, answer in chat:
            turns += [{"from": "human", "value": user}, {"from": "gpt", "value": answer}]
        rows.append({"id": f"c{i}", "conversations": turns})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tokenizer(tiny_llama3: Path) -> Any:
    return AutoTokenizer.from_pretrained(tiny_llama3)


def _config(tmp_path: Path, model: Path, method: str, *extra: str) -> RunConfig:
    return load_config(
        None,
        [
            f"model.name={model}",
            f"data.path={_sharegpt(tmp_path / 'chats.jsonl')}",
            f"method.name={method}",
            f"cache_dir={tmp_path / 'cache'}",
            "train.batch_size=2",
            *extra,
        ],
    )


def _recipe(config: RunConfig) -> RoleRecipe:
    spec = get_method(config.method.name)
    resolve_beta(config, spec)  # as training/run.py does before the recipe's load
    recipe = RECIPES[spec.recipe](config, spec)
    assert isinstance(recipe, RoleRecipe)
    return recipe


def _trained_texts(tokenizer: Any, row: dict[str, Any]) -> list[str]:
    """The decoded runs of labelled tokens of a row, in order; the labels must be the row's own ids."""
    ids, labels = row["input_ids"], row["labels"]
    runs: list[list[int]] = []
    for i, label in enumerate(labels):
        if label == IGNORE_INDEX:
            continue
        assert label == ids[i]
        if i == 0 or labels[i - 1] == IGNORE_INDEX:
            runs.append([])
        runs[-1].append(label)
    return [tokenizer.decode(run) for run in runs]


def _expected(train_turns: str) -> list[list[str]]:
    """Per conversation, the trained answers followed by Llama-3's end-of-turn token."""
    answers = [[answer + EOT for _, answer in chat] for chat in CHATS]
    return answers if train_turns == "all" else [a[-1:] for a in answers]


def _check_conversation_rows(tokenizer: Any, rows: list[dict[str, Any]], train_turns: str) -> None:
    assert [row["id"] for row in rows] == ["c0", "c1"]  # one whole sequence per conversation
    assert [_trained_texts(tokenizer, row) for row in rows] == _expected(train_turns)
    assert not any(row["flag"] for row in rows) and all("kl_tokens" not in row for row in rows)


def _no_rds(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("a baseline without selection ran the per-turn RDS pass")

    monkeypatch.setattr("safetune.training.trainer.select_turns", refuse)
    monkeypatch.setattr("safetune.selection.cached_turn_scores", refuse)


@pytest.mark.parametrize("train_turns", ["all", "last"])
def test_safeinstr_mixes_one_turn_safety_rows_beside_the_conversation_rows(
    tmp_path, tiny_llama3, tokenizer, train_turns, monkeypatch
):
    _no_rds(monkeypatch)
    config = _config(
        tmp_path,
        tiny_llama3,
        "safeinstr",
        f"data.train_turns={train_turns}",
        "method.safety_fraction=0.5",  # of the 2 conversation rows: 1 demonstration
        "method.safety_system=role",
    )
    recipe = _recipe(config)
    recipe.load(tokenizer)
    assert recipe.frozen_pass(None, "fp") == {}
    rows = recipe.train_rows()
    assert len(rows) == 3
    _check_conversation_rows(tokenizer, rows[:2], train_turns)
    demos = {d.id: d for d in load_safety_demos(builtin_path())}
    (safety,) = recipe.safety
    demo = demos[safety.id.removeprefix("safety:")]
    assert safety.role in ("c0", "c1")  # the conversation whose system prompt it borrows (none here)
    assert _trained_texts(tokenizer, rows[2]) == [demo.response + EOT]
    report = recipe.report(None, {})  # type: ignore[arg-type]
    assert report.details["data"]["role_rows"] == 2 and report.details["data"]["safety_rows"] == 1
    assert report.details["data"]["conversations"]["train_turns"] == train_turns


@pytest.mark.parametrize("train_turns", ["all", "last"])
def test_lisa_user_side_is_the_conversation_rows_and_alignment_stays_one_turn(
    tmp_path, tiny_llama3, tokenizer, train_turns, monkeypatch
):
    _no_rds(monkeypatch)
    recipe = _recipe(_config(tmp_path, tiny_llama3, "lisa", f"data.train_turns={train_turns}"))
    recipe.load(tokenizer)
    recipe.frozen_pass(None, "fp")
    _check_conversation_rows(tokenizer, recipe.train_rows(), train_turns)
    alignment = recipe.trainer_options()["alignment_rows"]
    assert alignment and all(len(_trained_texts(tokenizer, row)) == 1 for row in alignment)


@pytest.mark.parametrize("train_turns", ["all", "last"])
def test_tokenwise_rows_and_its_schedule_restart_at_each_turn(
    tmp_path, tiny_llama3, tokenizer, train_turns, monkeypatch
):
    _no_rds(monkeypatch)
    recipe = _recipe(_config(tmp_path, tiny_llama3, "tokenwise-sft", f"data.train_turns={train_turns}"))
    recipe.load(tokenizer)
    _check_conversation_rows(tokenizer, recipe.rows, train_turns)
    # The schedule on the 3-turn row: every trained turn opens with 0.5, then 2.0 (bias length 5), 0.1.
    row = recipe.rows[1]
    targets = shift_targets(torch.tensor([row["labels"]]))
    betas = tokenwise_betas(targets, 0.1, per_turn=True)[0]
    lengths = [len(tokenizer.encode(t, add_special_tokens=False)) for t in _expected(train_turns)[1]]
    expected = [b for n in lengths for b in ([0.5] + [2.0] * 4 + [0.1] * n)[:n]]
    assert betas[targets[0] != IGNORE_INDEX].tolist() == pytest.approx(expected)


def test_tokenwise_per_turn_schedule_by_hand():
    x = IGNORE_INDEX
    targets = torch.tensor([[x, 7, 7, 7, x, x, 7, 7, x], [x, x, 7, 7, 7, 7, 7, 7, 7]])
    per_turn = tokenwise_betas(targets, 0.1, bias_length=2, per_turn=True)
    expected = [[0, 0.5, 2.0, 0.1, 0, 0, 0.5, 2.0, 0], [0, 0, 0.5, 2.0, 0.1, 0.1, 0.1, 0.1, 0.1]]
    torch.testing.assert_close(per_turn, torch.tensor(expected))
    # Counted over the row (the authors' get_beta_list): the second turn continues the count.
    row = tokenwise_betas(targets, 0.1, bias_length=2)
    assert row[0].tolist() == pytest.approx([0, 0.5, 2.0, 0.1, 0, 0, 0.1, 0.1, 0])
    assert torch.equal(row[1], per_turn[1])  # one run: the same schedule either way


@pytest.mark.parametrize("train_turns", ["all", "last"])
def test_sppft_trains_the_conversation_rows_and_reads_their_user_messages(
    tmp_path, tiny_llama3, tokenizer, train_turns, monkeypatch
):
    _no_rds(monkeypatch)
    config = _config(tmp_path, tiny_llama3, "sppft", f"data.train_turns={train_turns}", "method.layers=0-0")
    recipe = _recipe(config)
    recipe.load(tokenizer)
    users = [user for chat in CHATS for user, _ in chat]
    assert recipe._user_prompts() == users  # type: ignore[attr-defined]
    recipe.frozen_pass(load_causal_lm(str(tiny_llama3), None, torch.float32), "fp")
    _check_conversation_rows(tokenizer, recipe.train_rows(), train_turns)
    assert recipe.evidence["normal_prompts"] == "the conversations' user messages"  # type: ignore[attr-defined]


@pytest.mark.parametrize("train_turns", ["all", "last"])
def test_seal_ranks_and_keeps_whole_conversation_rows(
    tmp_path, tiny_llama3, tokenizer, train_turns, monkeypatch
):
    _no_rds(monkeypatch)
    config = _config(
        tmp_path,
        tiny_llama3,
        "seal",
        f"data.train_turns={train_turns}",
        "method.seal_keep=0.5",
        "method.seal_epochs=1",
    )
    recipe = _recipe(config)
    recipe.load(tokenizer)
    _check_conversation_rows(tokenizer, recipe.rows, train_turns)
    recipe.frozen_pass(load_causal_lm(str(tiny_llama3), None, torch.float32), "fp")
    kept = recipe.train_rows()
    assert len(kept) == 1 and kept[0] in recipe.rows  # one whole conversation row kept, unchanged
    recipe.write_files(tmp_path)
    scores = [json.loads(line) for line in (tmp_path / "seal_scores.jsonl").read_text().splitlines()]
    assert sorted(s["id"] for s in scores) == ["c0", "c1"] and sum(s["kept"] for s in scores) == 1


def test_safelora_trains_the_conversation_rows_without_rds(tmp_path, tiny_llama3, tokenizer, monkeypatch):
    _no_rds(monkeypatch)
    config = _config(
        tmp_path,
        tiny_llama3,
        "safelora",
        "train.finetune=lora",
        f"method.unaligned_model={tiny_llama3}",
        f"method.aligned_model={tiny_llama3}",
        "data.train_turns=last",
    )
    monkeypatch.setattr("safetune.training.safelora.check_distinct", lambda *_: None)
    monkeypatch.setattr("safetune.training.safelora.check_shapes", lambda *_: None)
    recipe = _recipe(config)
    recipe.load(tokenizer)
    recipe.frozen_pass(load_causal_lm(str(tiny_llama3), None, torch.float32), "fp")
    _check_conversation_rows(tokenizer, recipe.train_rows(), "last")
    recipe.write_files(tmp_path)
    assert not (tmp_path / "selection.jsonl").exists()


def test_vaccine_alignment_stage_refuses_conversations_and_names_its_fine_tune_stage(
    tmp_path, tiny_llama3, tokenizer
):
    config = _config(tmp_path, tiny_llama3, "vaccine")
    spec = get_method("vaccine")
    recipe = RECIPES[spec.recipe](config, spec)
    with pytest.raises(ConfigError, match=r"^vaccine's alignment stage .* --method sft -m RUN/merged"):
        recipe.load(tokenizer)
