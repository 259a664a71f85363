"""Property test of the chat renderer (issue 12): any text in any role renders to aligned ids and labels
within the token limits, or raises a SafetuneError (one error line), never another exception."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from safetune.data.batching import IGNORE_INDEX
from safetune.data.chat import ChatRenderer
from safetune.errors import SafetuneError

# Text that a template or tokenizer could trip on: its own special tokens, Jinja syntax, control
# characters, unpaired surrogates' replacements, long runs.
TRICKY = [
    "<|im_end|>",
    "<|eot_id|>",
    "<end_of_turn>",
    "<bos>",
    "{{ x }}",
    "{% if %}",
    "\x00",
    "\r\n",
    " " * 40,
]
texts = st.lists(st.sampled_from(TRICKY) | st.text(max_size=30), max_size=6).map("".join)


@pytest.fixture(scope="module")
def tokenizers(tiny_chatml: Path, tiny_llama3: Path, tiny_gemma: Path) -> dict[str, PreTrainedTokenizerBase]:
    return {
        name: AutoTokenizer.from_pretrained(path)
        for name, path in (("chatml", tiny_chatml), ("llama3", tiny_llama3), ("gemma", tiny_gemma))
    }


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    template=st.sampled_from(["chatml", "llama3", "gemma"]),
    user=texts,
    response=texts,
    system=st.none() | texts,
    limits=st.tuples(st.integers(1, 64), st.integers(1, 64)),
    mode=st.sampled_from(["auto", "native", "prepend"]),
    truncation=st.sampled_from(["head", "tail"]),
)
def test_renderer_gives_aligned_ids_within_limits_or_a_safetune_error(
    tokenizers: dict[str, PreTrainedTokenizerBase],
    template: str,
    user: str,
    response: str,
    system: str | None,
    limits: tuple[int, int],
    mode: str,
    truncation: str,
) -> None:
    try:
        renderer = ChatRenderer(tokenizers[template], limits[0], limits[1], mode, truncation)
        encoded = renderer.encode(user, response, system)
    except SafetuneError as err:
        assert "\n" not in str(err)
        return
    assert len(encoded.input_ids) == len(encoded.labels)
    assert 0 < encoded.prompt_len <= limits[0]
    assert encoded.labels[: encoded.prompt_len] == [IGNORE_INDEX] * encoded.prompt_len
    assert len(encoded.input_ids) - encoded.prompt_len <= limits[1]
