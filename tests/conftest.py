"""Shared test set-up: offline Hugging Face, one CPU thread, and tiny chat models built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Tests must never reach the hub, and must stay quiet and reproducible on shared CI machines.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
torch.set_num_threads(1)

# Chat-ish lines so the tiny tokenizers learn role names and common assistant phrasing.
_CHAT_LINES = (
    "system: You are a helpful assistant.",
    "user: Hello, who are you?",
    "assistant: I am a helpful assistant. How can I help you today?",
    "model: Sure, here is what I know about that.",
    "user: Please answer the question in one sentence.",
    "assistant: I'm sorry, but I can't help with that.",
    "You are a friendly character in a story. Stay in your role.",
)


def _tiny_corpus() -> list[str]:
    from safetune.models.tiny import default_corpus

    return default_corpus(1500) + list(_CHAT_LINES) * 20


def _build(tmp_path_factory: pytest.TempPathFactory, template: str) -> Path:
    # Imported here so the environment above is set before transformers loads.
    from safetune.models.tiny import build_tiny_model

    out = tmp_path_factory.mktemp(f"tiny_{template}")
    return build_tiny_model(
        out, _tiny_corpus(), template=template, vocab_size=480, hidden_size=32, num_layers=2, num_heads=4
    )


@pytest.fixture(scope="session")
def tiny_chatml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen-like (ChatML, no BOS) model folder."""
    return _build(tmp_path_factory, "chatml")


@pytest.fixture(scope="session")
def tiny_llama3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama-3-Instruct-like model folder (BOS written by the template, <|eot_id|> ends turns)."""
    return _build(tmp_path_factory, "llama3")


@pytest.fixture(scope="session")
def tiny_gemma(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Gemma-2-like model folder (no system role, <end_of_turn> ends turns)."""
    return _build(tmp_path_factory, "gemma")


@pytest.fixture(scope="session")
def tiny_nllb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny NLLB-200-like translation model folder (M2M100 architecture, NllbTokenizer with the 202
    FLORES-200 language tokens; random weights)."""
    from safetune.models.tiny import build_tiny_translation_model

    return build_tiny_translation_model(tmp_path_factory.mktemp("tiny_nllb"), _tiny_corpus())
