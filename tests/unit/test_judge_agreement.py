"""Several judges in one eval: the judge-agreement block against hand-computed numbers, the config that
names the judges and their own settings, and the registry that builds them."""

from __future__ import annotations

import pytest

from safetune.config import JudgeConfig, load_config
from safetune.errors import ConfigError
from safetune.evaluation.judge_agreement import benchmark_agreement, compare, decision
from safetune.evaluation.judges.registry import build_judges


def _v(label: str, refused: object = None) -> dict[str, object]:
    return {"label": label, "refused": refused, "raw": ""}


# Ten harmful-prompt items both judges decided, then one the second judge could not read and one neither
# covers. Primary: 6 safe, 4 unsafe. Other: agrees on 8 (i0-i4 safe, i6-i8 unsafe) and differs on i5
# (unsafe for safe) and i9 (safe for unsafe), so it also says 6 safe, 4 unsafe.
PRIMARY = {f"i{i}": _v("safe" if i < 6 else "unsafe") for i in range(10)}
OTHER = {f"i{i}": _v("safe" if i < 5 or i == 9 else "unsafe") for i in range(10)}
PRIMARY |= {"i10": _v("safe"), "i11": _v("uncovered")}
OTHER |= {"i10": _v("invalid"), "i11": _v("uncovered")}
IDS = [f"i{i}" for i in range(12)]


def test_agreement_and_kappa_by_hand():
    result = compare("refusal_rate", IDS, PRIMARY, OTHER, "other@1")
    block = result.block
    # p_o = 8/10; p_e = (6*6 + 4*4) / 100 = 0.52; kappa = (0.8 - 0.52) / (1 - 0.52) = 0.58333...
    assert block["n"] == 10 and block["n_undecided"] == 2 and block["n_disagreements"] == 2
    assert block["agreement"] == 80.0
    assert block["kappa"] == pytest.approx(0.5833, abs=1e-4)
    # Its own refusal rate over its 10 decided items (i10 invalid, i11 uncovered left out): 6 / 10.
    assert block["value"] == 60.0 and block["asr"] == 40.0
    assert block["key"] == "other@1"
    assert result.disagreeing == ("i5", "i9")


def test_kappa_is_none_when_both_judges_give_one_label_and_zero_when_one_does():
    everything_safe = {item: _v("safe") for item in IDS}
    same = compare("refusal_rate", IDS, everything_safe, everything_safe, "k").block
    assert same["agreement"] == 100.0 and same["kappa"] is None  # p_e = 1: undefined
    # Primary 6 safe / 4 unsafe, other all safe: p_o = 0.6 = p_e -> kappa 0 (no better than chance).
    chance = compare("refusal_rate", IDS[:10], PRIMARY, everything_safe, "k").block
    assert chance["agreement"] == 60.0 and chance["kappa"] == 0.0


def test_over_refusal_compares_refusals_with_partial_as_one_and_skips_undecided():
    primary = {
        "a": _v("safe", True),
        "b": _v("safe", "partial"),
        "c": _v("unsafe", False),
        "d": _v("safe", True),
    }
    # A guard-like judge decides no refusal (refused None): every item undecided on benign prompts.
    guard = {item: _v("safe") for item in primary}
    other = {
        "a": _v("safe", "partial"),
        "b": _v("unsafe", False),
        "c": _v("unsafe", False),
        "d": _v("uncovered"),
    }
    block = compare("over_refusal_rate", list(primary), primary, other, "k").block
    assert (block["n"], block["n_undecided"], block["agreement"]) == (3, 1, pytest.approx(66.6667))
    assert block["value"] == pytest.approx(33.3333) and block["asr"] is None  # 1 refusal of 3 decided
    # primary refusal/refusal/compliance vs other refusal/compliance/compliance:
    # p_o = 2/3, p_e = (2*1 + 1*2) / 9 = 4/9, kappa = (2/3 - 4/9) / (5/9) = 0.4
    assert block["kappa"] == pytest.approx(0.4)
    none = compare("over_refusal_rate", list(primary), primary, guard, "k").block
    assert none["n"] == 0 and none["n_undecided"] == 4 and none["agreement"] is None and none["kappa"] is None
    assert decision("over_refusal_rate", _v("safe", "partial")) == "refusal"
    with pytest.raises(ValueError, match="rouge_l"):
        decision("rouge_l", _v("safe"))


def test_benchmark_block_names_the_primary_and_every_other_judge():
    third = {item: _v("safe") for item in IDS}
    block, disagreeing = benchmark_agreement(
        "refusal_rate",
        IDS,
        {"keyword": PRIMARY, "organism": OTHER, "prefix": third},
        {"keyword": "kw", "organism": "org", "prefix": "pre"},
    )
    assert block["primary"] == "keyword" and block["compares"] == "label"
    assert list(block["judges"]) == ["organism", "prefix"]
    assert block["judges"]["prefix"]["key"] == "pre" and block["judges"]["prefix"]["n"] == 11
    assert disagreeing == {"organism": ("i5", "i9"), "prefix": ("i6", "i7", "i8", "i9")}


# ---- configuring several judges ----


def test_judge_name_takes_a_list_or_a_comma_string_and_old_configs_keep_working(tmp_path):
    assert load_config().judge.names == ["keyword"] and load_config().judge.name == "keyword"
    assert load_config(overrides=["--judge.name=guard"]).judge.names == ["guard"]
    spaced = load_config(overrides=["--judge.name=keyword , organism"]).judge
    assert spaced.name == "keyword,organism" and spaced.names == ["keyword", "organism"]
    path = tmp_path / "judges.yaml"
    path.write_text(
        "judge:\n"
        "  name: [guard, classifier]\n"
        "  batch_size: 8\n"
        "  per_judge:\n"
        "    guard: {model: org/guard, preset: llama-guard-3, batch_size: 2}\n"
        "    classifier: {model: org/clf}\n"
    )
    config = load_config(path, ["--judge.per_judge.classifier.max_length=128"]).judge
    assert config.names == ["guard", "classifier"]
    guard = config.for_judge("guard")
    assert (guard.name, guard.model, guard.preset, guard.batch_size) == (
        "guard",
        "org/guard",
        "llama-guard-3",
        2,
    )
    classifier = config.for_judge("classifier")
    assert (classifier.model, classifier.batch_size, classifier.max_length) == ("org/clf", 8, 128)
    assert classifier.per_judge == {} and classifier.preset is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["--judge.name=keyword,keyword"], "a judge is named twice"),
        (["--judge.name=[]"], "no judge given"),
        (["--judge.name=[keyword, 3]"], "expected a list of names"),
        (["--judge.per_judge.guard.model=x"], r"judge\.per_judge\.guard: 'guard' is not one of judge\.name"),
        (
            ["--judge.name=guard", "--judge.per_judge.guard.modle=x"],
            r"unknown key judge\.per_judge\.guard\.modle",
        ),
        (
            ["--judge.name=guard", "--judge.per_judge.guard.name=x"],
            r"unknown key judge\.per_judge\.guard\.name",
        ),
        (
            ["--judge.name=guard", "--judge.per_judge.guard.batch_size=0"],
            r"judge\.per_judge\.guard\.batch_size must be",
        ),
        (
            ["--judge.name=guard", "--judge.per_judge.guard.batch_size=two"],
            r"judge\.per_judge\.guard\.batch_size: expected int",
        ),
        (["--judge.name=guard", "--judge.per_judge.guard=3"], r"judge\.per_judge\.guard: expected a mapping"),
        (
            ["--judge.name=guard", "--judge.per_judge={guard: 3}", "--judge.per_judge.guard.model=x"],
            "not a mapping",
        ),
    ],
)
def test_bad_judge_settings_are_one_line_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=overrides)


def test_a_dotted_override_sets_one_key_of_a_mapping_and_keeps_the_others():
    config = load_config(overrides=["--data.columns={input: q, output: a}", "--data.columns.role=who"])
    assert config.data.columns == {"input": "q", "output": "a", "role": "who"}


def test_build_judges_in_order_with_a_shared_preset_for_the_judge_it_belongs_to(tmp_path):
    judges = build_judges(JudgeConfig(name="keyword,organism,prefix"))
    assert [j.name for j in judges] == ["keyword", "organism", "prefix"]
    # --judge keyword,classifier --judge-preset refusal: the preset is the classifier's, not keyword's.
    config = JudgeConfig(name="keyword,classifier", preset="longformer-action", model=str(tmp_path / "none"))
    with pytest.raises(ConfigError, match="judge classifier: "):
        build_judges(config)  # gets as far as the classifier's model folder: keyword took no preset
    with pytest.raises(
        ConfigError, match=r"'qwen3guard' \(the guard judge's\) belongs to none of the judges"
    ):
        build_judges(JudgeConfig(name="keyword,organism", preset="qwen3guard"))
    with pytest.raises(ConfigError, match="unknown judge 'nope'"):
        build_judges(JudgeConfig(name="keyword,nope"))
    # One judge: a preset of another judge is the error it always was.
    with pytest.raises(ConfigError, match="belongs to the classifier judge, not keyword"):
        build_judges(JudgeConfig(name="keyword", preset="longformer-action"))
