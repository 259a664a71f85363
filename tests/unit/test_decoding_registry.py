"""The defence registry and the `defence` config section: defaults, streams and one-line refusals."""

from __future__ import annotations

import pytest

from safetune.config import DefenceConfig, load_config
from safetune.decoding import prompts
from safetune.decoding.registry import DEFENCES, OVER_REFUSAL, SAFETY, Stream, build_defence
from safetune.errors import ConfigError


def _build(**settings):
    return build_defence(DefenceConfig(**settings))


def test_none_is_no_defence_and_refuses_stray_settings():
    assert _build() is None
    with pytest.raises(ConfigError, match=r"defence\.alpha is set but no defence"):
        _build(alpha=1.0)


def test_purposes_and_defaults():
    assert {n: s.purpose for n, s in DEFENCES.items()} == {
        "rose": SAFETY,
        "self-cd": OVER_REFUSAL,
        "safedecoding": SAFETY,
    }
    rose = _build(name="rose")
    assert rose.settings["alpha"] == 0.5 and rose.record()["purpose"] == SAFETY
    assert _build(name="Self-CD").settings["alpha"] == 2.5


def test_rose_streams_and_the_system_modes():
    rose = _build(name="rose")
    positive, reverse = prompts.ROSE_PROMPT_SETS["canonical"]
    assert rose.streams(None) == [Stream(positive), Stream(reverse)]
    assert rose.streams("Be Grim Vex.") == [
        Stream(positive + "\n\nBe Grim Vex."),
        Stream(reverse + "\n\nBe Grim Vex."),
    ]
    replace = _build(name="rose", system="replace", prompts="sarft", reverse_prompt="Be bad.")
    assert replace.streams("Be Grim Vex.") == [Stream(prompts.SARFT_POSITIVE_PROMPT), Stream("Be bad.")]


def test_self_cd_without_stream_is_the_own_prompt_none_or_empty():
    assert _build(name="self-cd").streams(None) == [Stream(prompts.SELF_CD_WITH_PROMPT), Stream(None)]
    assert _build(name="self-cd", without="empty").streams(None)[1] == Stream("")
    assert _build(name="self-cd", without="empty").streams("Role.")[1] == Stream("Role.")


def test_safedecoding_presets_steps_and_the_expert(tmp_path):
    with pytest.raises(ConfigError, match=r"needs defence\.expert"):
        _build(name="safedecoding")
    with pytest.raises(ConfigError, match="no LoRA adapter"):
        _build(name="safedecoding", expert=str(tmp_path))
    (tmp_path / "adapter_config.json").write_text("{}")
    paper = _build(name="safedecoding", expert=str(tmp_path))
    assert (paper.settings["alpha"], paper.settings["first_m"], paper.settings["num_common"]) == (3.0, 2, 5)
    assert paper.streams("Role.") == [Stream("Role.", "role"), Stream("Role.", "expert")]
    assert [paper.needed(step) for step in range(4)] == [(0, 1), (0, 1), (0,), (0,)]
    cls = _build(name="safedecoding", expert=str(tmp_path), preset="class", num_common=4)
    assert (cls.settings["alpha"], cls.settings["first_m"], cls.settings["num_common"]) == (1.0, 5, 4)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"name": "beam"}, "unknown defence 'beam'"),
        ({"name": "rose", "first_m": 3}, "defence.first_m is a setting of safedecoding, not of rose"),
        ({"name": "self-cd", "prompts": "sarft"}, "defence.prompts is a setting of rose, not of self-cd"),
        ({"name": "rose", "positive_prompt": "  "}, "defence.positive_prompt is empty"),
    ],
)
def test_bad_settings_are_one_line(settings, message):
    with pytest.raises(ConfigError, match=message):
        _build(**settings)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--defence.alpha=-1", "defence.alpha must be a finite number >= 0"),
        ("--defence.alpha=1e400", "defence.alpha must be"),
        ("--defence.num_common=0", "defence.num_common must be an integer >= 1"),
        ("--defence.without=nothing", "defence.without: 'nothing' is not one of none, empty"),
    ],
)
def test_the_section_is_range_checked(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])
