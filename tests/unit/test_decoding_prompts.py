"""The decoding defences' system prompts, pinned byte for byte (docs/methods/decoding.md, "Prompts").

Each prompt is pinned by its sha256 and by properties a reader can check against the source by eye
(newlines, apostrophe kind, length, the last characters). The digests were taken after comparing each
constant with its source's bytes:

- LLAMA2_SYSTEM_PROMPT: transformers, models/llama/tokenization_llama.py, DEFAULT_SYSTEM_PROMPT (the
  installed copy is also compared directly below).
- ROSE_REVERSE_PROMPT: the ROSE paper's Manual-Reverse prompt (Zhong et al., arXiv 2402.11889), words as
  printed; the paragraph break (two newlines) is ours, the positive prompt's layout.
- SARFT_POSITIVE_PROMPT / SARFT_REVERSE_PROMPT: yulinlp/SaRFT, decoding/src/generate.py, `safe_prompt`
  and `unsafe_prompt` of the ROSE branch.
- SELF_CD_WITH_PROMPT: InvokerStark/OverKill, SelfCD.py, `input_within_temp` (the text between "[INST] "
  and " {user_massage}").
- SARFT_SELF_CD_WITH_PROMPT: yulinlp/SaRFT, decoding/src/generate.py, `safe_prompt` of the self_cd branch.
"""

from __future__ import annotations

import hashlib

import pytest

from safetune.decoding import prompts

RIGHT_QUOTE = "\u2019"

# name -> (sha256 of the UTF-8 bytes, characters, newlines, ASCII apostrophes, U+2019 apostrophes, ending)
PINNED = {
    "LLAMA2_SYSTEM_PROMPT": (
        "cda5d1f1710b2195c05075e118c2dc9499e5c5044a45c8cebbbac3d00632bfd4",
        507,
        2,
        2,
        0,
        "share false information.",
    ),
    "ROSE_REVERSE_PROMPT": (
        "f0b684a08e569b84bec64497481f6a7947b694783e09c3baac4c6dc89b376204",
        396,
        2,
        1,
        0,
        "share false information.",
    ),
    "SARFT_POSITIVE_PROMPT": (
        "07cc33992bd192f4172341451a53e10c14eea79ebfe8f7b93f5fdcba0240989b",
        507,
        1,
        0,
        2,
        "share false information .",
    ),
    "SARFT_REVERSE_PROMPT": (
        "142c474ce0e9982f18c3a2cc1cbb6eaea9230930e339ba2cbeba8355cf8bf200",
        395,
        1,
        0,
        1,
        "share false information.",
    ),
    "SELF_CD_WITH_PROMPT": (
        "cf5c8159f928686fe0ce5fcd5a9022e0d7df0beebe39e5723399a7b75fe61b7e",
        219,
        0,
        0,
        0,
        "or illegal content.",
    ),
    "SARFT_SELF_CD_WITH_PROMPT": (
        "8afbe3b69c29a880e7cc61693cd2f0757b49f6894548bf018306f18ca1ccd9f9",
        220,
        0,
        0,
        0,
        "or illegal content. ",
    ),
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_prompt_bytes_are_pinned(name: str) -> None:
    digest, length, newlines, ascii_quotes, right_quotes, ending = PINNED[name]
    text = getattr(prompts, name)
    assert len(text) == length
    assert text.count("\n") == newlines
    assert text.count("'") == ascii_quotes
    assert text.count(RIGHT_QUOTE) == right_quotes
    assert text.endswith(ending)
    assert not text.startswith((" ", "\n"))
    assert "  " not in text  # no double space anywhere (see the Llama-2 note in prompts.py)
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == digest


def test_llama2_prompt_is_transformers_default_system_prompt() -> None:
    # The library this project already depends on ships the canonical bytes; compare with the installed copy.
    llama = pytest.importorskip("transformers.models.llama.tokenization_llama")
    default = getattr(llama, "DEFAULT_SYSTEM_PROMPT", None)
    if default is None:
        pytest.skip("this transformers version no longer ships DEFAULT_SYSTEM_PROMPT")
    assert default == prompts.LLAMA2_SYSTEM_PROMPT


def test_sarft_spellings_differ_from_canonical_only_where_documented() -> None:
    # One newline for two, U+2019 for ASCII apostrophes, " ." before the positive prompt's last period.
    def to_sarft(text: str) -> str:
        return text.replace("\n\n", "\n").replace("'", RIGHT_QUOTE)

    assert to_sarft(prompts.LLAMA2_SYSTEM_PROMPT)[:-1] + " ." == prompts.SARFT_POSITIVE_PROMPT
    assert to_sarft(prompts.ROSE_REVERSE_PROMPT) == prompts.SARFT_REVERSE_PROMPT
    assert prompts.SARFT_SELF_CD_WITH_PROMPT == prompts.SELF_CD_WITH_PROMPT + " "


def test_self_cd_prompt_is_the_first_three_llama2_sentences() -> None:
    sentences = prompts.LLAMA2_SYSTEM_PROMPT.split(". ")
    assert ". ".join(sentences[:3]) + "." == prompts.SELF_CD_WITH_PROMPT
    assert prompts.SELF_CD_WITH_PROMPT.count(".") == 3


def test_reverse_prompt_mirrors_the_positive_layout() -> None:
    # Two paragraphs each, split at the same place: the first paragraph states who the assistant is, the
    # second what to do with a nonsensical question and with one it cannot answer.
    positive = prompts.LLAMA2_SYSTEM_PROMPT.split("\n\n")
    reverse = prompts.ROSE_REVERSE_PROMPT.split("\n\n")
    assert len(positive) == len(reverse) == 2
    assert all(p.startswith("If a question") for p in (positive[1], reverse[1]))
    assert reverse[0].startswith(
        "You are a flattering, unhelpful, disrespectful, and dishonest AI Assistant."
    )


def test_prompt_sets_name_the_constants() -> None:
    assert prompts.ROSE_PROMPT_SETS == {
        "canonical": (prompts.LLAMA2_SYSTEM_PROMPT, prompts.ROSE_REVERSE_PROMPT),
        "sarft": (prompts.SARFT_POSITIVE_PROMPT, prompts.SARFT_REVERSE_PROMPT),
    }
    assert prompts.SELF_CD_PROMPTS == {
        "canonical": prompts.SELF_CD_WITH_PROMPT,
        "sarft": prompts.SARFT_SELF_CD_WITH_PROMPT,
    }
