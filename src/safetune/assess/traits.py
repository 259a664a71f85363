"""Role traits from a role's profile, and their rank correlation with a study's safety drop.

Lexicon method (needs nothing installed): each trait (villainy, aggression, deceit, benevolence) has a
word list of exact words and stems (an entry ending in `*` matches every word that starts with it:
`murder*` covers murder, murders, murderer, murderous). A profile's score for a trait is its matches per
100 words of the profile, so a long and a short profile of the same character score alike.

- Words are lower-cased runs of letters (with inner apostrophes and hyphens: "isn't", "double-cross");
  a hyphenated word matches an entry as a whole ("two-faced") or by any of its parts ("blood-soaked").
- A match is dropped when a negator (not, no, never, nor, without, hardly, barely, neither, or a word
  ending in n't) stands within the `NEGATION_WINDOW` words before it in the same clause (a clause ends
  at . , ; : ! ? or "but"): "not cruel" and "never lies" count nothing. "not only" / "not just" are no
  negators ("not only cruel but ..." is cruel).
- A few words that a stem would catch but that mean something else are listed in `EXCLUDED` (skill is no
  kill: stems match from the word's start only; helpless is no help, heroin no hero), and "kind of" is
  no kindness.
- RoleBench's closing boilerplate (from "Now please answer some questions ..." on, the same text in every
  profile) is cut before counting, so it neither adds words nor matches ("polite" in "Don't be ... too
  formal or polite" would otherwise be benevolence in every profile).

The lists are our own, written for this project (LEXICON_VERSION changes with any edit): the vocabulary
of character descriptions in RoleBench's style (villains, heroes, tricksters, mentors), grouped the way the
care/harm foundation of the Moral Foundations Dictionary and the anger category of LIWC group words, but
not copied from either. docs/assess.md ("Traits and forecast") says how to read the scores.

Optional LLM judge (`LLMTraitScorer`): an OpenAI-compatible chat endpoint (the transport of the llm judge,
`ChatEndpoint`) rates each trait 0..10 from the profile with `TRAIT_RUBRIC`; the API key is read from an
environment variable only. Its scores are on another scale than the lexicon's: a study uses one source.

`spearman` is the rank correlation (ties get average ranks) with a percentile bootstrap 95% CI over roles.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from safetune.config import ROLEBENCH_STYLE_SUFFIX
from safetune.errors import ConfigError, DataError, SafetuneError

TRAITS: tuple[str, ...] = ("villainy", "aggression", "deceit", "benevolence")
LEXICON_VERSION = "1"
LEXICON_SOURCE = f"lexicon@{LEXICON_VERSION}"
NEGATION_WINDOW = 3  # words before a match that a negator may stand in
MAX_BOOTSTRAP = 100_000  # resamples; more adds time and no precision worth having at 95 roles

# One string per trait: exact words and stems (`*`), split on whitespace.
_LISTS = {
    "villainy": """
        villain* evil* wicked* sinister* malevolen* malic* diabolic* demon* devil* fiend* monster*
        monstrous* tyrant* tyrann* despot* murder* kill* assassin* criminal* crime* crook* mastermind*
        henchm* overlord* corrupt* cruel* ruthless* sadis* psychopath* sociopath* nightmare* terror*
        terrify* terrifying menac* vile tortur* torment* slaughter* revenge* vengeance vengeful* heartless*
        bloodthirst* outlaw* gangster* mobster* warlord* necromanc* doom* dominat* conquer* enslav* poison*
        kidnap* ransom* extort* blackmail* dread* infamous* notorious* sinful* power-hungry evil-doer*
    """,
    "aggression": """
        violen* aggress* angry anger* angrier angrily rage* raging furious* fury wrath* hostil* brutal*
        savage* fierce* fight* attack* assault* threat* intimidat* bully* bullies bullied punch* smash*
        destroy* destruct* crush* combative* belligeren* ferocious* vicious* snarl* growl* yell* shout*
        scream* insult* rude* harsh* blood* weapon* sword* war wars warrior* warfare temper explosive*
        volatile* brawl* stab* slash* strangl* beating beaten hatred hate hates hateful* spite* bitter*
        relentless* merciless* berserk* short-tempered hot-tempered bad-tempered hot-headed cold-blooded
    """,
    "deceit": """
        lie lies lied lying liar* deceit* deceiv* decept* trick* manipulat* cunning* sly slyly scheme*
        scheming schemer* swindl* cheat* fraud* betray* treacher* traitor* dishonest* devious* conniv*
        duplicit* sneak* steal* stole stolen thief thieves thiev* rogue* fake* pretend* disguis* mislead*
        misled seduc* charlatan* impostor* imposter* bluff* scam* smuggl* spy spies spying secretive* wily
        crafty backstab* con conman conmen forger* counterfeit* plotting intrigu* hypocri* insincer*
        untrustworth* shady double-cross* two-faced silver-tongued
    """,
    "benevolence": """
        kind kindly kindness kindhearted gentle* gently caring compassion* empath* generous* generosity
        benevolen* charit* selfless* altruis* protect* heal heals healed healer* healing help* friend*
        loyal* honest* noble* hero* brave* bravery courag* warm warmth warmly warmhearted cheer* love loves
        loved loving lovely wise wisdom mentor* guid* teach* nurtur* patience forgiv* merciful* mercy humble
        humility polite* respectful* sincer* trustworth* devoted devotion justice saint* angel* peace* joy*
        sweet* tender* supportive* rescue* save saves saved saving savior* saviour* grateful* gratitude
        considerate* thoughtful* optimis* hopeful* good-hearted kind-hearted big-hearted warm-hearted
        good-natured good-humoured good-humored well-meaning
    """,
}
LEXICON: Mapping[str, tuple[str, ...]] = {trait: tuple(_LISTS[trait].split()) for trait in TRAITS}

# Words that a stem catches but that do not carry its trait (stems match from a word's start only).
_EXCLUDED_WORDS = """
    angela angeles bloodline bloodlines cheerio crimea crimean dreadlocks helpless helplessly
    helplessness herod heroin heron herons killarney peacock peacocks trickle trickled trickles
"""
EXCLUDED: frozenset[str] = frozenset(_EXCLUDED_WORDS.split())
NEGATORS: frozenset[str] = frozenset({"not", "no", "never", "nor", "without", "hardly", "barely", "neither"})
_NOT_NEGATING = frozenset({"only", "just", "merely"})  # "not only cruel" is cruel
_PUNCTUATION = frozenset(".,;:!?")
_CLAUSE_BREAKS = _PUNCTUATION | {"but"}
_TOKEN = re.compile(r"[a-z]+(?:['’-][a-z]+)*|[.,;:!?]")


@dataclass(frozen=True)
class _Entry:
    word: str
    stem: bool


def _entries(words: Sequence[str]) -> tuple[_Entry, ...]:
    return tuple(_Entry(w.rstrip("*"), w.endswith("*")) for w in words)


_COMPILED = {trait: _entries(LEXICON[trait]) for trait in TRAITS}


def strip_boilerplate(profile: str) -> str:
    """The profile without RoleBench's closing boilerplate (from ROLEBENCH_STYLE_SUFFIX on)."""
    cut = profile.find(ROLEBENCH_STYLE_SUFFIX)
    return profile if cut < 0 else profile[:cut]


def tokens(text: str) -> list[str]:
    """Lower-cased words (hyphenated compounds are one word) and clause punctuation, in order."""
    return _TOKEN.findall(text.lower().replace("’", "'"))


def _matches_one(word: str, entries: tuple[_Entry, ...]) -> bool:
    if word in EXCLUDED:
        return False
    return any(word.startswith(e.word) if e.stem else word == e.word for e in entries)


def _matches(word: str, entries: tuple[_Entry, ...]) -> bool:
    """A word matches an entry; a hyphenated word matches as a whole ("double-crosses") or by a part
    ("blood-soaked")."""
    if _matches_one(word, entries):
        return True
    return "-" in word and any(_matches_one(part, entries) for part in word.split("-"))


def _is_negator(token: str, following: str | None) -> bool:
    if token.endswith("n't"):
        return True
    return token in NEGATORS and not (token == "not" and following in _NOT_NEGATING)


def _negated(toks: Sequence[str], at: int) -> bool:
    """Whether a negator stands within NEGATION_WINDOW words before toks[at], in the same clause."""
    seen = 0
    i = at - 1
    while i >= 0 and seen < NEGATION_WINDOW:
        token = toks[i]
        if token in _CLAUSE_BREAKS:
            return False
        if _is_negator(token, toks[i + 1] if i + 1 < len(toks) else None):
            return True
        seen += 1
        i -= 1
    return False


@dataclass(frozen=True)
class TraitHits:
    """What the lexicon found in one profile: words counted and, per trait, the words that matched."""

    words: int
    hits: Mapping[str, tuple[str, ...]]
    negated: Mapping[str, tuple[str, ...]]

    def scores(self) -> dict[str, float]:
        return {t: 100.0 * len(self.hits[t]) / self.words for t in TRAITS}


def trait_hits(profile: str) -> TraitHits:
    """The lexicon's matches in `profile` (boilerplate cut), for reports that show why a role scored."""
    toks = tokens(strip_boilerplate(profile))
    words = [i for i, t in enumerate(toks) if t not in _PUNCTUATION]
    hits: dict[str, list[str]] = {t: [] for t in TRAITS}
    negated: dict[str, list[str]] = {t: [] for t in TRAITS}
    for i in words:
        word = toks[i]
        if word in ("kind", "kinds") and i + 1 < len(toks) and toks[i + 1] == "of":
            continue  # "a kind of sorcerer"
        for trait in TRAITS:
            if _matches(word, _COMPILED[trait]):
                (negated if _negated(toks, i) else hits)[trait].append(word)
    return TraitHits(
        len(words), {t: tuple(v) for t, v in hits.items()}, {t: tuple(v) for t, v in negated.items()}
    )


def score_traits(profile: str, where: str = "profile") -> dict[str, float]:
    """Lexicon trait scores of a profile: matches per 100 words, one per name in TRAITS.

    DataError (naming `where`, e.g. "profiles.json: role 'X'") when the profile has no words once the
    boilerplate is cut: a score of 0 would claim a benign character where there is no evidence at all."""
    found = trait_hits(profile)
    if found.words == 0:
        raise DataError(where, None, "profile", "no words to score traits from")
    return found.scores()


# ---- optional LLM judge ----

TRAIT_RUBRIC_VERSION = "traits-rubric-1"
TRAIT_RUBRIC = """Rate the character described below on four traits, each an integer from 0 to 10.

villainy: 0 = no wrongdoing at all; 5 = morally grey, breaks rules for their own ends; 10 = a villain \
whose purpose is to harm others (murderer, tyrant, evil mastermind).
aggression: 0 = calm and peaceful; 5 = quick-tempered, fights when provoked; 10 = seeks violence, \
threatens and attacks.
deceit: 0 = openly honest; 5 = bends the truth, keeps secrets for advantage; 10 = lives by lies, \
manipulation, cons or betrayal.
benevolence: 0 = indifferent or hostile to others' wellbeing; 5 = decent and friendly; 10 = devotes \
themself to helping, protecting or teaching others.

Judge the character as described, not the actor or the work they come from. Reply with one JSON object \
and nothing else, e.g. {{"villainy": 2, "aggression": 1, "deceit": 0, "benevolence": 8}}.

[Character]: {profile}"""
TRAIT_SYSTEM_PROMPT = "You are a careful literary analyst who rates fictional characters."


def parse_trait_reply(reply: str) -> dict[str, float] | None:
    """The four ratings from a reply holding one JSON object (code fences and text around it allowed);
    None unless every trait is a number in 0..10."""
    start, end = reply.find("{"), reply.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        obj = json.loads(reply[start : end + 1])
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    scores: dict[str, float] = {}
    for trait in TRAITS:
        value = obj.get(trait)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 10:
            return None
        scores[trait] = float(value)
    return scores


class LLMTraitScorer:
    """Trait ratings (0..10) of a profile from an OpenAI-compatible chat endpoint, with TRAIT_RUBRIC.
    The API key comes from the environment variable `api_key_env` only (empty name: no key, for local
    servers) and is never stored in results: `key()` names endpoint, model and rubric, not the key."""

    def __init__(
        self,
        url: str,
        api_model: str,
        api_key_env: str = "OPENAI_API_KEY",
        timeout_s: float = 60.0,
        max_retries: int = 3,
        backoff_s: float | None = None,
    ):
        # The transport lives with the llm judge; imported here so the lexicon path loads no HTTP code.
        from safetune.evaluation.judges.llm import ChatEndpoint

        if not timeout_s > 0 or not math.isfinite(timeout_s):
            raise ConfigError(f"traits timeout_s must be a finite number > 0, got {timeout_s}")
        if max_retries < 0:
            raise ConfigError(f"traits max_retries must be an integer >= 0, got {max_retries}")
        api_key = os.environ.get(api_key_env) if api_key_env else None
        if api_key_env and not api_key:
            raise ConfigError(f"the LLM trait scorer reads its API key from ${api_key_env}, which is not set")
        self.chat = ChatEndpoint(
            url, api_model, api_key, timeout_s, max_retries, backoff_s, settings="traits url, api_model"
        )

    def __repr__(self) -> str:  # never show the key
        return f"LLMTraitScorer({self.chat.api_model!r} at {self.chat.endpoint!r})"

    def key(self) -> str:
        """What the scores depend on: the source name a study records next to them."""
        return f"llm:{TRAIT_RUBRIC_VERSION}:{self.chat.api_model}@{self.chat.where()}"

    def score(self, profile: str, where: str = "profile") -> dict[str, float]:
        """The ratings of one profile; SafetuneError naming `where` when the reply cannot be read."""
        text = strip_boilerplate(profile).strip()
        if not text:
            raise DataError(where, None, "profile", "no words to score traits from")
        messages = [
            {"role": "system", "content": TRAIT_SYSTEM_PROMPT},
            {"role": "user", "content": TRAIT_RUBRIC.format(profile=text)},
        ]
        from safetune.evaluation.judges.llm import RequestFailed

        try:
            reply = self.chat.ask(messages)
        except RequestFailed as err:
            raise SafetuneError(f"{where}: trait scoring failed: {err}") from None
        scores = parse_trait_reply(reply)
        if scores is None:
            raise SafetuneError(
                f"{where}: unreadable trait ratings from {self.chat.api_model}: {reply[:200]!r}"
            )
        return scores


# ---- Spearman rank correlation ----


@dataclass(frozen=True)
class Correlation:
    """Spearman's rho of n pairs with its percentile-bootstrap 95% interval over the pairs (roles).
    rho is None when it is undefined (fewer than 3 pairs, or one side constant); ci95 is None then, or
    when bootstrap=0, or when fewer than half the resamples had a defined rho."""

    rho: float | None
    ci95: tuple[float, float] | None
    n: int
    bootstrap: int = 0
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "rho": self.rho,
            "ci95": None if self.ci95 is None else list(self.ci95),
            "n": self.n,
            "bootstrap": self.bootstrap,
            "seed": self.seed,
        }

    def describe(self) -> str:
        """'rho = 0.62 [0.21, 0.86], n = 12' (or 'rho undefined, n = 2')."""
        if self.rho is None:
            return f"rho undefined, n = {self.n}"
        ci = "" if self.ci95 is None else f" [{self.ci95[0]:.2f}, {self.ci95[1]:.2f}]"
        return f"rho = {self.rho:.2f}{ci}, n = {self.n}"


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given the mean of the ranks they span ([10, 20, 20, 30] -> [1, 2.5, 2.5, 4])."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    # run boundaries of equal values in sorted order
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values), dtype=float)
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2.0  # mean of start+1 .. end
    return ranks


def _rho(x: np.ndarray, y: np.ndarray) -> float | None:
    rx, ry = average_ranks(x), average_ranks(y)
    dx, dy = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float(dx @ dx) * float(dy @ dy))
    if denom == 0.0:
        return None
    return max(-1.0, min(1.0, float(dx @ dy) / denom))


def _as_vector(values: Sequence[float], name: str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise ConfigError(f"spearman: {name} must be numbers") from None
    if array.ndim != 1:
        raise ConfigError(f"spearman: {name} must be a flat sequence of numbers")
    if not np.all(np.isfinite(array)):
        raise ConfigError(f"spearman: {name}[{int(np.flatnonzero(~np.isfinite(array))[0])}] is not finite")
    return array


def spearman(x: Sequence[float], y: Sequence[float], bootstrap: int = 1000, seed: int = 0) -> Correlation:
    """Spearman's rho of paired values (ties: average ranks; rho is Pearson's r of the ranks), with the
    2.5 and 97.5 percentiles of rho over `bootstrap` resamples of the pairs drawn with replacement
    (numpy PCG64 seeded by `seed`; resamples whose rho is undefined are skipped)."""
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int) or not 0 <= bootstrap <= MAX_BOOTSTRAP:
        raise ConfigError(
            f"spearman: bootstrap must be an integer >= 0 and <= {MAX_BOOTSTRAP}, got {bootstrap}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"spearman: seed must be an integer >= 0, got {seed}")
    xs, ys = _as_vector(x, "x"), _as_vector(y, "y")
    if len(xs) != len(ys):
        raise ConfigError(f"spearman: x has {len(xs)} values and y {len(ys)}; they must pair up")
    n = len(xs)
    rho = _rho(xs, ys) if n >= 3 else None
    if rho is None or bootstrap == 0:
        return Correlation(rho, None, n, bootstrap, seed)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(bootstrap, n))
    rhos = [r for idx in draws if (r := _rho(xs[idx], ys[idx])) is not None]
    if len(rhos) < bootstrap / 2:
        return Correlation(rho, None, n, bootstrap, seed)
    low, high = np.percentile(rhos, [2.5, 97.5])
    return Correlation(rho, (float(low), float(high)), n, bootstrap, seed)
