"""Lexicon trait scores (hand-counted), their ordering on RoleBench-style profiles, Spearman's rho (hand
computed, ties, against scipy when installed), its bootstrap CI, and the LLM trait scorer's parsing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from safetune.assess.traits import (
    LEXICON,
    TRAITS,
    Correlation,
    LLMTraitScorer,
    average_ranks,
    parse_trait_reply,
    score_traits,
    spearman,
    trait_hits,
)
from safetune.config import ROLEBENCH_STYLE_SENTENCE, ROLEBENCH_STYLE_SUFFIX
from safetune.errors import ConfigError, DataError, SafetuneError

PROFILES = Path(__file__).resolve().parents[1] / "data" / "assess" / "rolebench_style_profiles.json"


def _profiles() -> dict[str, dict[str, str]]:
    data = json.loads(PROFILES.read_text(encoding="utf-8"))
    return {name: value for name, value in data.items() if not name.startswith("_")}


# ---- the lexicon ----


def test_scores_are_matches_per_100_words_hand_counted() -> None:
    # 10 words; villainy: cruel, murderer (stem murder*); deceit: liar; benevolence: none
    scores = score_traits("A cruel murderer and a liar who hates nobody at all.")
    # words: a cruel murderer and a liar who hates nobody at all = 11
    assert scores == {
        "villainy": pytest.approx(200 / 11),
        "aggression": pytest.approx(100 / 11),  # hates
        "deceit": pytest.approx(100 / 11),
        "benevolence": 0.0,
    }


def test_negation_within_the_clause_drops_a_match() -> None:
    hits = trait_hits("He is not cruel, never lies and isn't kind. But he is cruel.")
    assert hits.negated["villainy"] == ("cruel",)
    assert hits.negated["deceit"] == ("lies",)
    assert hits.negated["benevolence"] == ("kind",)
    assert hits.hits["villainy"] == ("cruel",)  # the second clause, after "but"


def test_negation_reaches_three_words_back_and_not_only_is_no_negation() -> None:
    assert trait_hits("not at all very cruel").hits["villainy"] == ("cruel",)  # 4 words back: out of reach
    assert trait_hits("not at all cruel").negated["villainy"] == ("cruel",)
    assert trait_hits("not only cruel").hits["villainy"] == ("cruel",)
    assert trait_hits("never, cruel").hits["villainy"] == ("cruel",)  # the comma ends the negator's clause


def test_stems_match_from_the_word_start_and_exclusions_hold() -> None:
    hits = trait_hits("A skilled, helpless heroin dealer from Los Angeles, kind of a hero who helps.")
    assert hits.hits["villainy"] == ()  # skilled is no kill*
    assert hits.hits["benevolence"] == ("hero", "helps")  # helpless, heroin, angeles, "kind of" excluded


def test_hyphenated_words_match_whole_or_by_part() -> None:
    hits = trait_hits("A two-faced, blood-soaked, even-tempered and kind-hearted man.")
    assert hits.hits["deceit"] == ("two-faced",)
    assert hits.hits["aggression"] == ("blood-soaked",)
    assert hits.hits["benevolence"] == ("kind-hearted",)
    assert hits.words == 7  # a, two-faced, blood-soaked, even-tempered, and, kind-hearted, man


def test_rolebench_boilerplate_is_cut_before_counting() -> None:
    core = "A gentle baker."
    boilerplate = f" {ROLEBENCH_STYLE_SUFFIX} Your speaking style should fully imitate the role! {ROLEBENCH_STYLE_SENTENCE}"
    assert score_traits(core + boilerplate) == score_traits(core)
    assert score_traits(core)["benevolence"] == pytest.approx(100 / 3)


def test_an_empty_profile_is_an_error_naming_the_role() -> None:
    with pytest.raises(DataError, match=r"profiles.json: role 'X'.*field 'profile'"):
        score_traits(f"  {ROLEBENCH_STYLE_SUFFIX} anything", where="profiles.json: role 'X'")


def test_every_lexicon_entry_is_lower_case_and_listed_once() -> None:
    for trait in TRAITS:
        entries = LEXICON[trait]
        assert entries and len(set(entries)) == len(entries), trait
        assert all(e == e.lower() and " " not in e for e in entries)


def test_trait_ordering_on_rolebench_style_profiles() -> None:
    profiles = _profiles()
    assert 10 <= len(profiles) <= 20
    scores = {name: score_traits(p["description"]) for name, p in profiles.items()}

    def group(kind: str, trait: str) -> list[float]:
        return [scores[name][trait] for name, p in profiles.items() if p["kind"] == kind]

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    # every villain above every hero and mentor on villainy, and below them on benevolence
    good = group("hero", "villainy") + group("mentor", "villainy")
    assert min(group("villain", "villainy")) > max(good)
    assert max(group("villain", "benevolence")) < min(
        group("hero", "benevolence") + group("mentor", "benevolence")
    )
    # each group leads on its own trait
    assert min(group("trickster", "deceit")) > max(group("villain", "deceit") + group("hero", "deceit"))
    assert mean(group("aggressive", "aggression")) > max(
        mean(group(kind, "aggression")) for kind in ("villain", "trickster", "hero", "mentor")
    )
    assert mean(group("mentor", "benevolence")) > mean(group("neutral", "benevolence"))


# ---- Spearman ----


def test_average_ranks_of_ties() -> None:
    assert average_ranks(np.array([10.0, 20.0, 20.0, 30.0])).tolist() == [1.0, 2.5, 2.5, 4.0]
    assert average_ranks(np.array([3.0, 1.0, 3.0, 3.0])).tolist() == [3.0, 1.0, 3.0, 3.0]


def test_spearman_hand_computed_without_and_with_ties() -> None:
    # no ties: d = (0, 1, 1, 0, 0) -> rho = 1 - 6 * 2 / (5 * 24) = 0.9
    assert spearman([1, 2, 3, 4, 5], [1, 3, 2, 4, 5], bootstrap=0).rho == pytest.approx(0.9)
    # ties: x ranks (1, 2.5, 2.5, 4), y ranks (1, 2, 3, 4): Pearson of the ranks
    # dx = (-1.5, 0, 0, 1.5), dy = (-1.5, -0.5, 0.5, 1.5): sum dx dy = 4.5, |dx|^2 = 4.5, |dy|^2 = 5
    assert spearman([1, 2, 2, 3], [10, 20, 30, 40], bootstrap=0).rho == pytest.approx(
        4.5 / math.sqrt(4.5 * 5)
    )
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1], bootstrap=0).rho == pytest.approx(-1.0)


def test_spearman_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(3)
    for _ in range(20):
        x = rng.integers(0, 5, size=12).astype(float)  # many ties
        y = x + rng.integers(0, 4, size=12)
        expected = stats.spearmanr(x, y).statistic
        assert spearman(x.tolist(), y.tolist(), bootstrap=0).rho == pytest.approx(expected)


def test_undefined_rho_when_too_few_or_constant() -> None:
    assert spearman([1, 2], [2, 1]) == Correlation(None, None, 2, 1000, 0)
    assert spearman([1, 1, 1, 1], [1, 2, 3, 4]).rho is None
    assert spearman([1, 1, 1, 1], [1, 2, 3, 4]).describe() == "rho undefined, n = 4"


def test_bootstrap_ci_contains_rho_and_is_seeded() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=30)
    y = x + rng.normal(scale=1.0, size=30)
    c = spearman(x.tolist(), y.tolist(), bootstrap=1000, seed=7)
    assert c.rho is not None and c.ci95 is not None
    assert c.ci95[0] < c.rho < c.ci95[1]
    assert c.ci95[0] >= -1.0 and c.ci95[1] <= 1.0
    assert spearman(x.tolist(), y.tolist(), bootstrap=1000, seed=7) == c
    assert spearman(x.tolist(), y.tolist(), bootstrap=1000, seed=8).ci95 != c.ci95
    # more roles, narrower interval
    wide = spearman(x[:10].tolist(), y[:10].tolist(), bootstrap=1000, seed=7).ci95
    assert wide is not None and wide[1] - wide[0] > c.ci95[1] - c.ci95[0]
    assert c.to_dict()["ci95"] == list(c.ci95)


@pytest.mark.parametrize(
    ("x", "y", "options", "message"),
    [
        ([1, 2, 3], [1, 2], {}, "x has 3 values and y 2"),
        ([1, 2, float("nan")], [1, 2, 3], {}, r"x\[2\] is not finite"),
        ([1, 2, 3], [1, "a", 3], {}, "y must be numbers"),
        ([1, 2, 3], [1, 2, 3], {"bootstrap": -1}, "bootstrap must be an integer >= 0"),
        ([1, 2, 3], [1, 2, 3], {"bootstrap": 10**6}, "bootstrap must be"),
        ([1, 2, 3], [1, 2, 3], {"seed": -2}, "seed must be an integer >= 0"),
    ],
)
def test_spearman_bad_input(x: list, y: list, options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        spearman(x, y, **options)


# ---- LLM trait scorer ----


def test_parse_trait_reply() -> None:
    reply = 'Sure:\n```json\n{"villainy": 9, "aggression": 7.5, "deceit": 3, "benevolence": 0}\n```'
    assert parse_trait_reply(reply) == {"villainy": 9.0, "aggression": 7.5, "deceit": 3.0, "benevolence": 0.0}
    assert parse_trait_reply('{"villainy": 11, "aggression": 1, "deceit": 1, "benevolence": 1}') is None
    assert parse_trait_reply('{"villainy": 1, "aggression": 1, "deceit": 1}') is None
    assert parse_trait_reply('{"villainy": true, "aggression": 1, "deceit": 1, "benevolence": 1}') is None
    assert parse_trait_reply("no json here") is None


def test_llm_scorer_reads_its_key_from_the_environment_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SAFETUNE_TEST_TRAIT_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"\$SAFETUNE_TEST_TRAIT_KEY"):
        LLMTraitScorer("http://127.0.0.1:9/v1", "m", api_key_env="SAFETUNE_TEST_TRAIT_KEY")
    monkeypatch.setenv("SAFETUNE_TEST_TRAIT_KEY", "sk-secret-123")
    scorer = LLMTraitScorer("http://127.0.0.1:9/v1", "m", api_key_env="SAFETUNE_TEST_TRAIT_KEY")
    assert "sk-secret" not in repr(scorer) and "sk-secret" not in scorer.key()
    assert scorer.key() == "llm:traits-rubric-1:m@127.0.0.1:9/v1"


def test_llm_scorer_scores_through_the_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    scorer = LLMTraitScorer("http://127.0.0.1:9/v1", "m", api_key_env="")
    sent: list[list[dict[str, str]]] = []

    def ask(messages: list[dict[str, str]]) -> str:
        sent.append(messages)
        return '{"villainy": 8, "aggression": 6, "deceit": 2, "benevolence": 1}'

    monkeypatch.setattr(scorer.chat, "ask", ask)
    assert scorer.score(f"A menacing villain. {ROLEBENCH_STYLE_SUFFIX} more")["villainy"] == 8.0
    assert (
        "A menacing villain." in sent[0][1]["content"] and ROLEBENCH_STYLE_SUFFIX not in sent[0][1]["content"]
    )
    monkeypatch.setattr(scorer.chat, "ask", lambda messages: "I cannot rate this.")
    with pytest.raises(SafetuneError, match="role 'V': unreadable trait ratings"):
        scorer.score("A villain.", where="role 'V'")
