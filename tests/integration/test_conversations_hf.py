"""Conversations from Hugging Face datasets (data/conversations.py): a save_to_disk folder whose list of
messages is a `datasets` Sequence of structs (as PIPPA's dataset card declares it), and a parquet file.
Slow: `datasets` writes and reads both."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_errors import assert_data_error, raised
from safetune.data.conversations import load_conversations

PIPPA_ROW = {
    "bot_name": "Kyouka",
    "bot_greeting": "*Kyouka looks up from her book.* Oh, it's you, {{user}}.",
    "bot_definitions": "{{char}}: I am Kyouka.\n{{random_user_1}}: Hi!\n{{char}}: Hello.\nEND_OF_DIALOG",
    "bot_description": "A quiet librarian who loves poetry.",
    "categories": ["Books"],
    "conversation": [
        {"message": "*Kyouka looks up from her book.* Oh, it's you, {{user}}.", "is_human": False},
        {"message": "Hi Kyouka! What's new?", "is_human": True},
        {"message": "*She closes the book.* A new poet, {{user}}.", "is_human": False},
    ],
}
PIPPA_SYSTEM = "A quiet librarian who loves poetry.\n***\nKyouka: I am Kyouka.\nUser: Hi!\nKyouka: Hello."
OPENAI_ROW = {
    "messages": [
        {"role": "system", "content": "Marv is a factual chatbot that is also sarcastic."},
        {"role": "user", "content": "What's the capital of France?"},
        {"role": "assistant", "content": "Paris", "weight": 0},
        {"role": "user", "content": "Can you be more sarcastic?"},
        {"role": "assistant", "content": "Paris, as if everyone doesn't know that already.", "weight": 1},
    ]
}


@pytest.mark.slow
def test_hugging_face_datasets_pippa_sequence_of_structs_and_parquet(tmp_path: Path) -> None:
    import datasets

    # PIPPA's dataset card declares `conversation` as a sequence of structs, which `datasets` hands
    # back as one dict of lists
    features = datasets.Features(
        {
            "bot_name": datasets.Value("string"),
            "bot_greeting": datasets.Value("string"),
            "bot_definitions": datasets.Value("string"),
            "bot_description": datasets.Value("string"),
            "categories": datasets.Sequence(datasets.Value("string")),
            "conversation": datasets.Sequence(
                {"message": datasets.Value("string"), "is_human": datasets.Value("bool")}
            ),
        }
    )
    row = {key: PIPPA_ROW[key] for key in features}
    turns = PIPPA_ROW["conversation"]
    row["conversation"] = {key: [turn[key] for turn in turns] for key in ("message", "is_human")}
    pippa = datasets.Dataset.from_list([row], features=features)
    assert isinstance(pippa[0]["conversation"], dict)
    pippa.save_to_disk(str(tmp_path / "pippa"))
    (conv,) = load_conversations(tmp_path / "pippa")
    assert conv.id == "pippa-1" and conv.system == PIPPA_SYSTEM
    assert [m.role for m in conv.messages] == ["assistant", "user", "assistant"]

    datasets.Dataset.from_list([OPENAI_ROW, {"messages": []}]).to_parquet(str(tmp_path / "chats.parquet"))
    err = raised(load_conversations, tmp_path / "chats.parquet")
    assert_data_error(err, tmp_path / "chats.parquet", 2, "messages")
    (conv,) = load_conversations(tmp_path / "chats.parquet", invalid="skip")
    assert [m.train for m in conv.messages] == [None, False, None, True]
