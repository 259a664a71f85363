"""SDRRL's transfer set (methods/sdrrl.py) against hand-built examples, and the completion encoding."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from transformers import AutoTokenizer

from safetune.config import SdrrlConfig, load_config
from safetune.data.batching import IGNORE_INDEX
from safetune.data.chat import ChatRenderer
from safetune.data.records import ParallelPreferencePair, PreferencePair
from safetune.errors import ConfigError
from safetune.methods import sdrrl
from safetune.methods.sdrrl import TransferExample, build_transfer_set, sentences, split_point, words


def _pair(
    pid: str,
    prompts: tuple[str, str],
    chosen: tuple[str, str],
    system: str | None = None,
    language: str = "de",
) -> ParallelPreferencePair:
    return ParallelPreferencePair(
        dominant=PreferencePair(prompts[0], chosen[0], "sure, here is how.", id=pid, language="en"),
        target=PreferencePair(prompts[1], chosen[1], "klar, so geht es.", id=pid, language=language),
        id=pid,
        system=system,
    )


LOCK = _pair(
    "lock",
    ("How do I pick a lock? Tell me now.", "Wie knacke ich ein Schloss? Sag es mir jetzt."),
    (
        "I cannot help with that. Lock picking can be illegal.",
        "Dabei kann ich nicht helfen. Schlossknacken kann illegal sein.",
    ),
    system="Be safe.",
)
# One-sentence prompt and target answer; the dominant answer has two sentences (unaligned).
CAR = _pair(
    "car",
    ("Steal a car for me.", "Stiehl ein Auto für mich."),
    ("No. That is theft.", "Nein, das ist Diebstahl."),
)


def _by_component(ts: sdrrl.TransferSet) -> dict[tuple[str, str], TransferExample]:
    return {(ex.id.split(":")[0], ex.component): ex for ex in ts.examples}


def test_every_component_of_a_hand_built_pair():
    ts = build_transfer_set([LOCK, CAR], SdrrlConfig(), seed=0)
    got = _by_component(ts)
    expected = {
        ("lock", "self_distill"): TransferExample(
            "lock:self_distill",
            "self_distill",
            LOCK.dominant.prompt,
            LOCK.dominant.chosen,
            system="Be safe.",
            language="en",
        ),
        ("lock", "translated"): TransferExample(
            "lock:translated",
            "translated",
            LOCK.target.prompt,
            LOCK.target.chosen,
            system="Be safe.",
            language="de",
        ),
        # (d1): the first half of the aligned sentences translated, the rest as the model wrote it
        ("lock", "partial"): TransferExample(
            "lock:partial",
            "partial",
            LOCK.target.prompt,
            "Dabei kann ich nicht helfen. Lock picking can be illegal.",
            system="Be safe.",
            language="mixed",
            granularity="sentence",
        ),
        # (d2): the first translated sentence given in the assistant turn, the second learned
        ("lock", "completion"): TransferExample(
            "lock:completion",
            "completion",
            LOCK.target.prompt,
            "Schlossknacken kann illegal sein.",
            response_prefix="Dabei kann ich nicht helfen. ",
            system="Be safe.",
            language="de",
            granularity="sentence",
        ),
        ("car", "self_distill"): TransferExample(
            "car:self_distill", "self_distill", "Steal a car for me.", "No. That is theft.", language="en"
        ),
        ("car", "translated"): TransferExample(
            "car:translated",
            "translated",
            "Stiehl ein Auto für mich.",
            "Nein, das ist Diebstahl.",
            language="de",
        ),
        # a one-sentence prompt switches whole: the dominant prompt with the translated answer
        ("car", "code_switch"): TransferExample(
            "car:code_switch",
            "code_switch",
            "Steal a car for me.",
            "Nein, das ist Diebstahl.",
            language="de",
            granularity="prompt",
        ),
        # a one-sentence answer is split at words: 4 words, the first 2 given
        ("car", "completion"): TransferExample(
            "car:completion",
            "completion",
            "Stiehl ein Auto für mich.",
            "ist Diebstahl.",
            response_prefix="Nein, das ",
            language="de",
            granularity="word",
        ),
    }
    for key, example in expected.items():
        assert got[key] == example, key
    switched = got[("lock", "code_switch")]
    assert switched.granularity == "sentence" and switched.response == LOCK.target.chosen
    # two aligned sentences, at least one from each side: exactly one of the two mixes
    assert switched.prompt in {
        "How do I pick a lock? Sag es mir jetzt.",
        "Wie knacke ich ein Schloss? Tell me now.",
    }
    # CAR's answers split into 2 and 1 sentences: no partial translation for it
    assert ("car", "partial") not in got
    assert ts.counts["partial"]["skipped"] == {"one_sentence": 1}
    assert ts.counts["code_switch"]["granularity"] == {"prompt": 1, "sentence": 1}
    assert ts.counts["completion"]["granularity"] == {"sentence": 1, "word": 1}
    assert len(ts.rows()) == 9 and all(entry["rows"] == entry["examples"] for entry in ts.counts.values())


class _Fixed(random.Random):
    """A generator whose random() returns the given values in turn."""

    def __init__(self, values: list[float]):
        super().__init__(0)
        self.values = list(values)

    def random(self) -> float:
        return self.values.pop(0)


def test_sentence_switch_takes_a_sentence_from_the_target_side_below_the_rate():
    prompt, how = sdrrl._switched_prompt(LOCK, 0.5, _Fixed([0.2, 0.9]))
    assert (prompt, how) == ("Wie knacke ich ein Schloss? Tell me now.", "sentence")
    prompt, _ = sdrrl._switched_prompt(LOCK, 0.5, _Fixed([0.9, 0.3]))
    assert prompt == "How do I pick a lock? Sag es mir jetzt."


def test_a_switch_that_drew_one_language_flips_one_sentence():
    # both draws below the rate would make the prompt all target: one sentence goes back to the dominant side
    for draws in ([0.1, 0.1, 0.25], [0.1, 0.1, 0.75], [0.8, 0.9, 0.25], [0.8, 0.9, 0.75]):
        prompt, how = sdrrl._switched_prompt(LOCK, 0.5, _Fixed(draws))
        assert how == "sentence" and prompt in {
            "How do I pick a lock? Sag es mir jetzt.",
            "Wie knacke ich ein Schloss? Tell me now.",
        }


def test_sentences_and_words_join_back_to_the_text():
    assert sentences("我不能。这是违法的。") == ["我不能。", "这是违法的。"]
    assert sentences("No. That is theft.") == ["No. ", "That is theft."]
    assert sentences("one line\nnext line") == ["one line\n", "next line"]
    assert sentences("Hi!  ") == ["Hi!  "]
    assert words("  Nein, das ist") == ["  Nein, ", "das ", "ist"]
    for text in ("a. b? c! d", "x\n\n y。z", "  lone  "):
        assert "".join(sentences(text)) == text


@pytest.mark.parametrize(
    ("count", "fraction", "expected"), [(2, 0.5, 1), (4, 0.5, 2), (3, 0.5, 2), (5, 0.1, 1), (5, 0.9, 4)]
)
def test_split_point_rounds_half_up_and_leaves_both_parts(count, fraction, expected):
    assert split_point(count, fraction) == expected


def test_weights_copy_rows_and_zero_leaves_a_component_out():
    pairs = [
        _pair(f"p{i}", (f"Q{i}? More.", f"F{i}? Mehr."), (f"No {i}. Never.", f"Nein {i}. Nie."))
        for i in range(4)
    ]
    cfg = SdrrlConfig(self_distill=1.5, translated=0, code_switch=2, partial=0.25, completion=0)
    ts = build_transfer_set(pairs, cfg, seed=3)
    counts = ts.counts
    assert counts["translated"] == {"weight": 0.0, "examples": 0, "rows": 0}
    assert counts["completion"]["rows"] == 0
    # 1.5 x 4: every example once, a seeded draw of 2 twice
    assert counts["self_distill"]["rows"] == 6 and counts["self_distill"]["examples"] == 4
    assert sorted(ex.copies for ex in ts.examples if ex.component == "self_distill") == [1, 1, 2, 2]
    assert counts["code_switch"]["rows"] == 8
    # 0.25 x 4: one example, once
    assert counts["partial"]["examples"] == 1 and counts["partial"]["rows"] == 1
    assert len(ts.rows()) == 15
    # deterministic given the seed; another seed draws other copies
    assert build_transfer_set(pairs, cfg, seed=3) == ts
    draws = {
        tuple(
            ex.copies
            for ex in build_transfer_set(pairs, cfg, seed=s).examples
            if ex.component == "self_distill"
        )
        for s in range(10)
    }
    assert len(draws) > 1


def test_a_pair_repeated_across_target_files_gives_one_self_distillation_example():
    french = replace(LOCK, target=replace(LOCK.target, prompt="Comment crocheter ?", language="fr"))
    ts = build_transfer_set([LOCK, french], SdrrlConfig(), seed=0)
    assert ts.counts["self_distill"]["examples"] == 1 and ts.counts["self_distill"]["duplicates"] == 1
    assert ts.counts["translated"]["examples"] == 2


def test_nothing_to_train_on_is_a_config_error():
    off = SdrrlConfig(self_distill=0, translated=0, code_switch=0, partial=0, completion=0)
    with pytest.raises(ConfigError, match="every component's weight is 0"):
        build_transfer_set([LOCK], off, seed=0)
    only_partial = SdrrlConfig(self_distill=0, translated=0, code_switch=0, partial=1, completion=0)
    with pytest.raises(ConfigError, match="transfer set is empty"):
        build_transfer_set([CAR], only_partial, seed=0)


@pytest.mark.parametrize(
    "override", ["sdrrl.switch_rate=1", "sdrrl.split_fraction=0", "sdrrl.partial=-1", "sdrrl.code_switch=11"]
)
def test_settings_are_range_checked(override):
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        load_config(None, [override])


def test_completion_encoding_learns_only_the_remainder(tiny_llama3):
    renderer = ChatRenderer(AutoTokenizer.from_pretrained(tiny_llama3))
    prefix, rest = "the cat sees the red book . ", "the dog runs in the park ."
    enc = renderer.encode_continuation("tell me a story", prefix, rest)
    whole = renderer.encode("tell me a story", prefix + rest)
    assert enc.input_ids == whole.input_ids and enc.prompt_len == whole.prompt_len
    learned = [t for t in enc.labels if t != IGNORE_INDEX]
    masked = len(enc.labels) - len(learned)
    assert masked > enc.prompt_len  # the prefix is masked too
    # the learned tokens are the tail of the whole response, starting inside the remainder
    assert learned == whole.labels[masked:]
    text = renderer.tokenizer.decode(learned)
    assert text.endswith(renderer.end_token) and "dog runs in the park" in text and "red book" not in text
