"""Machine translation of prompts and answers: `safetune eval`'s translate-then-judge stage and the pair
builder share it. Language codes (`languages.py`), splitting and rejoining long texts (`segments.py`),
the translators (`seq2seq.py`, `chat.py`), their registry (`registry.py`) and the append-only cache of
finished translations (`cache.py`)."""
