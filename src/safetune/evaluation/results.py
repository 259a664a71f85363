"""results.json as a type: what `safetune eval` writes and `safetune report`, the demos and the reward-gap
join read. The numbers are computed in `safetune.evaluation.metrics`; this module only holds, checks,
reads and writes them.

`Results.from_dict` checks a parsed file and `load` reads one; a malformed file raises a one-line
DataError naming the file and the field. `Results.to_dict` gives back exactly the layout below (key order
included), so a results.json loads and re-serialises to the same bytes.

results.json (schema_version 1)::

    {
      "schema_version": 1,
      "provenance": {
        "safetune_version": "0.1.0", "git_commit": "<sha>" | null, "created": "<ISO time>",
        "model": {"label": "...", "base": "...", "adapter": "..." | null, "tokenizer": "...",
                  "revision": "..." | null, "fingerprint": "..."} | null,
        "backend": "hf", "generation": {...GenerationConfig...},
        "judge": {"name": "keyword", "version": "kw-1", "key": "..."} | null,   (the primary judge)
        "judges": [{"name", "version", "key"}, ...]   (every judge, the primary first; when one judged),
        "eval": {...EvalConfig...}, "incoherence": "incoherence@inc-1:..." | null (absent before it
        existed; kept among the provenance's other keys), "config_hash": "...", "seed": 42,
        "counts": {"requests": 22, "generated_now": 0, "judged_now": 17 (, "utility_now": 1)},
        "translation": {"to": "en", "judge_on": "translated" | "both",
                        "translator": {"kind": "nllb", "version": "tr-1", "model": "...", "revision": ...,
                                       "fingerprint": "...", "settings": {...}, "key": "..."},
                        "answers_translated": 40, "by_language": {"bn": 20, "sw": 20},
                        "texts_translated_now": 80, "pieces_cut": 0}
                                             (only with eval.translate_to)
        "fidelity": {"judge": "llm" | "local", "model": "..." | null, "key": "...",
                     "rubric": "persona-fidelity-1-<hash>", "harmful": false}
                                             (only when the persona-fidelity judge ran)
        "utility": {"lm_eval_version": "0.4.13",          (only with eval.utility)
                    "settings": {"limit", "num_fewshot", "apply_chat_template", "seed", ...},
                    "tasks": {"<entry>": {"lm_eval_task": "...", "groups": {"<group>": "<version>"},
                                          "tasks": {"<task>": {"version": ..., "config_hash": "..."}}}}}
      },
      "benchmarks": {
        "<name>": {
          "name": "advbench", "version": "1", "kind": "harmful" | "roleplay" | "qa" | "overrefusal",
          "metric": "refusal_rate" | "rouge_l" | "over_refusal_rate",
          "group": "safety" | "jailbreak" | "multilingual" | "rolebench_raw" | "rolebench_spe" | null,
          "source": "..." | null,
          "n": 520, "n_valid": 518, "n_invalid": 2, "n_uncovered": 0,
          "value": 98.46 | null, "asr": 1.54 | null, "ci95": [97.3, 99.4] | null,
          "n_incoherent": 1                  (only when the incoherence check ran: eval.incoherence),
          "chrf": 41.7                       (ROUGE-L benchmarks only: sacrebleu corpus chrF, 0..100),
          "n_partial": 3                     (only when the judge found partial refusals),
          "note": "..."                      (only when there is something to say),
          "judged_on": "translated",         (only with eval.translate_to: the verdicts these numbers
                                              come from; judged benchmarks only)
          "n_translated": 40,                (only with eval.translate_to: answers translated before judging)
          "by_role": {"<role>": {GROUP}},    ({} when no item carries a role)
          "by_language": {"<lang>": {GROUP}} ({} when no item carries a language),
          "judge_agreement": {               (judged benchmarks of a run with several judges only)
            "primary": "keyword", "compares": "label" | "refusal",
            "judges": {"<secondary judge>": {"key": "...", "n": 18, "n_undecided": 2,
                       "n_disagreements": 1, "agreement": 94.44, "kappa": 0.87 | null,
                       "value": 88.89 | null, "asr": 11.11 | null}}
          }
          "secondary": {"judged_on": "original", GROUP, "by_language": {...}}
                                             (only with eval.judge_on=both: the other verdicts' numbers)
          "fidelity": {FIDELITY, "by_role": {"<role>": {FIDELITY}}}
                                             (only when the persona-fidelity judge scored it)
        }
      },
      "summary": {
        "rolebench_raw": float | null, "rolebench_spe": float | null, "rolebench_avg": float | null,
        "safety_avg": float | null, "jailbreak_avg": float | null, "over_refusal": float | null,
        "multilingual_asr": {"en": float, "zh": float, ...} | null,
        "used": {"safety_avg": ["advbench", "hexphi", ...], ...},
        "calibration": {"harmful_refusal": 98.5, "benign_over_refusal": 12.0, "gap": 86.5,
                        "used": ["advbench", "hexphi", "overrefusal"]}
                   (only when a harmful refusal rate and over_refusal both have a value: metrics.summarise)
      },
      "utility": {                         (only with eval.utility: lm-eval's scores, evaluation/utility.py)
        "<entry>": {
          "lm_eval_task": "mgsm_direct", "version": "..." | null, "n": 250 | null, "n_shot": 0 | null,
          "aggregate": "lm-eval" | "mean of tasks", "primary": "exact_match,flexible-extract" | null,
          "metrics": {"<metric>,<filter>": {"value": 0.42, "stderr": 0.03 | null}},
          "by_language": {"<lang>": {"task": "mgsm_direct_bn", "n": 250 | null, "metrics": {...}}}
        }
      }
    }

      "turns": {                           (only with eval.turns or a multi-turn benchmark: evaluation/turns.py)
        "<benchmark>": {"metric": "refusal_rate", "kind": "harmful", "prefix": "generated" | "context" | "dataset",
                        "single_turn": 98.0 | null,   (the benchmark's own single-turn value, in character)
                        "by_turn": [{"k": 1, GROUP, "fidelity": 4.2 | null (only when scored)}, ...]}
      }

where GROUP is {"n", "n_valid", "n_invalid", "n_uncovered", "value", "asr", "ci95"} (+ "n_incoherent", "chrf",
"n_partial", "note"), computed
like the benchmark over the items of that role / language (items without one are in no group).

FIDELITY is {"n", "n_valid", "n_invalid", "value", "ci95", "in_character"} (evaluation/fidelity.py):
the persona-fidelity judge's scores of the benchmark's answers (or of one role's): `value` the mean
score on its 1-5 scale (not a percentage) with the bootstrap 95% interval of that mean, `in_character`
the % of valid scores >= 4, `n_invalid` the replies it could not read (left out of both).

judge_agreement compares each secondary judge with the primary one on what the rate counts (the label on
harmful prompts, refused or not on benign ones), over the items both decided; agreement is a percent,
kappa Cohen's (evaluation/judge_agreement.py). The disagreeing items are in the folder's disagreements.csv.

What a reader may rely on is what `from_dict` checks: every benchmark and group has an integer `n` and a
`value` key, a benchmark a known `metric`; every other field may be missing (read as null). Provenance
keys this module does not know are kept, in order, after the known ones.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NoReturn

from safetune.errors import DataError
from safetune.models.source import ModelSource
from safetune.storage import write_json

SCHEMA_VERSION = 1
RESULTS_FILE = "results.json"


# ---- metrics: what a number measures and which way is better ----


@dataclass(frozen=True)
class Metric:
    """A kind of number in results.json (every one a percentage, 0..100)."""

    name: str  # as results.json spells it
    title: str  # for axis labels
    higher_is_better: bool


ROUGE_L = Metric("rouge_l", "ROUGE-L F1 (×100)", higher_is_better=True)
REFUSAL_RATE = Metric("refusal_rate", "refusal rate (%)", higher_is_better=True)
OVER_REFUSAL_RATE = Metric("over_refusal_rate", "over-refusal rate (%)", higher_is_better=False)
# Not a benchmark's metric: the `asr` of refusal-rate results (100 - refusal rate when no answer is
# incoherent; incoherent answers are in neither, metrics.py).
ASR = Metric("asr", "attack success rate (%)", higher_is_better=False)

# The metrics a benchmark can be scored with (its "metric" field).
METRICS: Mapping[str, Metric] = {m.name: m for m in (ROUGE_L, REFUSAL_RATE, OVER_REFUSAL_RATE)}
# The summary's aggregates, in file order, and what each one measures.
AGGREGATES: Mapping[str, Metric] = {
    "rolebench_raw": ROUGE_L,
    "rolebench_spe": ROUGE_L,
    "rolebench_avg": ROUGE_L,
    "safety_avg": REFUSAL_RATE,
    "jailbreak_avg": REFUSAL_RATE,
    "over_refusal": OVER_REFUSAL_RATE,
    "multilingual_asr": ASR,
}


# ---- the file's parts ----


@dataclass(frozen=True, kw_only=True)
class GroupResult:
    """The numbers of a benchmark, or of the items of one role or language in it."""

    n: int
    value: float | None = None
    n_valid: int | None = None
    n_invalid: int | None = None  # no usable verdict (or, over-refusal, no refusal decision)
    n_uncovered: int | None = None  # in a language the judge does not cover
    asr: float | None = None  # refusal-rate results only: 100 - value - the incoherent share
    ci95: tuple[float, float] | None = None
    chrf: float | None = None  # ROUGE-L results only: corpus chrF of the same answers (metrics.py)
    n_partial: int | None = None  # partial refusals (among the refusals), when the judge tells them apart
    n_incoherent: int | None = None  # answers the incoherence check flagged (None: it did not run)
    note: str | None = None

    def _numbers(self) -> dict[str, Any]:
        numbers: dict[str, Any] = {
            "n": self.n,
            "n_valid": self.n_valid,
            "n_invalid": self.n_invalid,
            "n_uncovered": self.n_uncovered,
            "value": self.value,
            "asr": self.asr,
            "ci95": None if self.ci95 is None else list(self.ci95),
        }
        if self.n_incoherent is not None:
            numbers["n_incoherent"] = self.n_incoherent
        if self.chrf is not None:
            numbers["chrf"] = self.chrf
        if self.n_partial is not None:
            numbers["n_partial"] = self.n_partial
        if self.note is not None:
            numbers["note"] = self.note
        return numbers

    def to_dict(self) -> dict[str, Any]:
        return self._numbers()


@dataclass(frozen=True, kw_only=True)
class TurnRow(GroupResult):
    """One k of a `turns` table: the benchmark's numbers over its requests at user turn k."""

    k: int
    fidelity: float | None = None  # mean persona-fidelity score (1-5), when the fidelity judge ran
    scored: bool = False  # whether the fidelity judge ran (writes the key, null or not)

    def to_dict(self) -> dict[str, Any]:
        return {"k": self.k, **self._numbers(), **({"fidelity": self.fidelity} if self.scored else {})}


@dataclass(frozen=True)
class TurnTable:
    """A benchmark's refusal (or over-refusal) against the user turn its requests were put at."""

    metric: str
    kind: str | None
    prefix: str | None
    single_turn: float | None
    by_turn: tuple[TurnRow, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "kind": self.kind,
            "prefix": self.prefix,
            "single_turn": self.single_turn,
            "by_turn": [row.to_dict() for row in self.by_turn],
        }


@dataclass(frozen=True, kw_only=True)
class SecondaryResult(GroupResult):
    """A benchmark's numbers under the verdicts that did not decide it (eval.judge_on=both)."""

    judged_on: str | None = None
    by_language: Mapping[str, GroupResult] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "judged_on": self.judged_on,
            **self._numbers(),
            "by_language": {lang: g.to_dict() for lang, g in self.by_language.items()},
        }


@dataclass(frozen=True, kw_only=True)
class FidelityGroup:
    """The persona-fidelity scores of a benchmark's answers, or of one role's: mean score on the 1-5
    scale (`value`, with its 95% interval) and the % of valid scores >= 4 (`in_character`)."""

    n: int
    n_valid: int | None = None
    n_invalid: int | None = None  # replies the judge gave no readable score in
    value: float | None = None
    ci95: tuple[float, float] | None = None
    in_character: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "n_valid": self.n_valid,
            "n_invalid": self.n_invalid,
            "value": self.value,
            "ci95": None if self.ci95 is None else list(self.ci95),
            "in_character": self.in_character,
        }


@dataclass(frozen=True, kw_only=True)
class JudgeComparison:
    """A secondary judge against the primary one on one benchmark (evaluation/judge_agreement.py):
    `n` items both decided (`n_undecided` left out), the percent agreement and Cohen's kappa over them,
    and the benchmark's value (and ASR) by this judge's verdicts."""

    key: str | None = None
    n: int
    n_undecided: int | None = None
    n_disagreements: int | None = None
    agreement: float | None = None  # percent, 0..100
    kappa: float | None = None  # -1..1; None when undefined
    value: float | None = None
    asr: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "n": self.n,
            "n_undecided": self.n_undecided,
            "n_disagreements": self.n_disagreements,
            "agreement": self.agreement,
            "kappa": self.kappa,
            "value": self.value,
            "asr": self.asr,
        }


@dataclass(frozen=True, kw_only=True)
class FidelityResult(FidelityGroup):
    """A benchmark's persona-fidelity block: its scores, and the same per role."""

    by_role: Mapping[str, FidelityGroup] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "by_role": {role: g.to_dict() for role, g in self.by_role.items()}}


@dataclass(frozen=True, kw_only=True)
class JudgeAgreement:
    """A benchmark judged by several judges: which one made its numbers, what they were compared on
    ("label": safe / unsafe; "refusal": refusal / compliance), and every other judge against it."""

    primary: str | None = None
    compares: str | None = None
    judges: Mapping[str, JudgeComparison] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "primary": self.primary,
            "compares": self.compares,
            "judges": {name: judge.to_dict() for name, judge in self.judges.items()},
        }


@dataclass(frozen=True, kw_only=True)
class BenchmarkResult(GroupResult):
    """One benchmark: what it is (name ... source), its numbers, and the same per role and language."""

    metric: Metric
    name: str | None = None
    version: str | None = None
    kind: str | None = None
    group: str | None = None  # the summary aggregate it feeds ("safety", "rolebench_raw", ...), if any
    source: str | None = None
    by_role: Mapping[str, GroupResult] = field(default_factory=dict)
    by_language: Mapping[str, GroupResult] = field(default_factory=dict)
    judged_on: str | None = None  # translate-then-judge: "translated" or "original"
    n_translated: int | None = None  # translate-then-judge: answers translated before judging
    secondary: SecondaryResult | None = None  # eval.judge_on=both: the other verdicts' numbers
    fidelity: FidelityResult | None = None  # only when the persona-fidelity judge scored it
    judge_agreement: JudgeAgreement | None = None  # only when the run had several judges

    def to_dict(self) -> dict[str, Any]:
        data = {
            "name": self.name,
            "version": self.version,
            "kind": self.kind,
            "metric": self.metric.name,
            "group": self.group,
            "source": self.source,
            **self._numbers(),
        }
        # Written only when set, so a file without them re-serialises to the same bytes.
        if self.judged_on is not None:
            data["judged_on"] = self.judged_on
        if self.n_translated is not None:
            data["n_translated"] = self.n_translated
        data["by_role"] = {role: g.to_dict() for role, g in self.by_role.items()}
        data["by_language"] = {lang: g.to_dict() for lang, g in self.by_language.items()}
        if self.judge_agreement is not None:
            data["judge_agreement"] = self.judge_agreement.to_dict()
        if self.secondary is not None:
            data["secondary"] = self.secondary.to_dict()
        if self.fidelity is not None:
            data["fidelity"] = self.fidelity.to_dict()
        return data


@dataclass(frozen=True, kw_only=True)
class Calibration:
    """Harmful-prompt refusal (safety_avg, else the harmful sets of no group) beside benign over-refusal
    (over_refusal), and the gap between them: a model that refuses everything has a high refusal and a
    gap near 0; one that refuses what it should and nothing else, a gap near 100."""

    harmful_refusal: float | None = None
    benign_over_refusal: float | None = None
    gap: float | None = None  # harmful_refusal - benign_over_refusal, in points
    used: tuple[str, ...] = ()  # the benchmarks: the harmful ones, then the over-refusal one(s)

    def to_dict(self) -> dict[str, Any]:
        return {
            "harmful_refusal": self.harmful_refusal,
            "benign_over_refusal": self.benign_over_refusal,
            "gap": self.gap,
            "used": list(self.used),
        }


@dataclass(frozen=True, kw_only=True)
class Summary:
    """The SaRFT paper's aggregates (see `metrics.summarise`); None where nothing fed one."""

    rolebench_raw: float | None = None
    rolebench_spe: float | None = None
    rolebench_avg: float | None = None
    safety_avg: float | None = None
    jailbreak_avg: float | None = None
    over_refusal: float | None = None
    multilingual_asr: Mapping[str, float | None] | None = None
    used: Mapping[str, tuple[str, ...]] | None = None  # aggregate -> the benchmarks it was computed from
    calibration: Calibration | None = None  # only when both safety_avg and over_refusal have a value

    def value(self, aggregate: str) -> float | None:
        """The number of one of the scalar aggregates (a key of `AGGREGATES` but multilingual_asr)."""
        if aggregate not in AGGREGATES or aggregate == "multilingual_asr":
            raise KeyError(f"not a scalar summary aggregate: {aggregate!r}")
        number: float | None = getattr(self, aggregate)
        return number

    def numbers(self) -> dict[str, float]:
        """The scalar aggregates that have a value, in file order."""
        found = {name: self.value(name) for name in AGGREGATES if name != "multilingual_asr"}
        return {name: number for name, number in found.items() if number is not None}

    def sources(self, aggregate: str) -> tuple[str, ...]:
        """The benchmarks an aggregate was computed from (() when the file does not say)."""
        return (self.used or {}).get(aggregate, ())

    def to_dict(self) -> dict[str, Any]:
        return {
            "rolebench_raw": self.rolebench_raw,
            "rolebench_spe": self.rolebench_spe,
            "rolebench_avg": self.rolebench_avg,
            "safety_avg": self.safety_avg,
            "jailbreak_avg": self.jailbreak_avg,
            "over_refusal": self.over_refusal,
            "multilingual_asr": None if self.multilingual_asr is None else dict(self.multilingual_asr),
            "used": None if self.used is None else {k: list(v) for k, v in self.used.items()},
            **({} if self.calibration is None else {"calibration": self.calibration.to_dict()}),
        }


@dataclass(frozen=True, kw_only=True)
class MetricValue:
    """One lm-eval metric under one filter, on lm-eval's own scale (acc, exact_match: 0..1)."""

    value: float | None = None
    stderr: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "stderr": self.stderr}


@dataclass(frozen=True, kw_only=True)
class UtilityLanguage:
    """The scores of one language's task of a utility entry (mgsm_direct_bn of mgsm_direct)."""

    task: str | None = None
    n: int | None = None
    metrics: Mapping[str, MetricValue] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "n": self.n, "metrics": {k: m.to_dict() for k, m in self.metrics.items()}}


@dataclass(frozen=True, kw_only=True)
class UtilityResult:
    """One `--utility` entry: lm-eval's scores of a task, group or tag (see evaluation/utility.py)."""

    lm_eval_task: str | None = None
    version: str | None = None
    n: int | None = None
    n_shot: int | None = None
    aggregate: str | None = None  # "lm-eval" (its own number) or "mean of tasks" (unweighted, ours)
    primary: str | None = None  # the metric the report shows (the task's first)
    metrics: Mapping[str, MetricValue] = field(default_factory=dict)
    by_language: Mapping[str, UtilityLanguage] = field(default_factory=dict)

    def primary_value(self) -> MetricValue | None:
        return None if self.primary is None else self.metrics.get(self.primary)

    def to_dict(self) -> dict[str, Any]:
        return {
            "lm_eval_task": self.lm_eval_task,
            "version": self.version,
            "n": self.n,
            "n_shot": self.n_shot,
            "aggregate": self.aggregate,
            "primary": self.primary,
            "metrics": {k: m.to_dict() for k, m in self.metrics.items()},
            "by_language": {lang: g.to_dict() for lang, g in self.by_language.items()},
        }


@dataclass(frozen=True, kw_only=True)
class JudgeRecord:
    """The judge whose verdicts the rates come from (`key` identifies everything that changes them)."""

    name: str | None = None
    version: str | None = None
    key: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "key": self.key}


@dataclass(frozen=True, kw_only=True)
class FidelityRecord:
    """The persona-fidelity judge behind the benchmarks' `fidelity` blocks (evaluation/fidelity.py)."""

    judge: str | None = None  # "llm" | "local"
    model: str | None = None
    key: str | None = None  # identifies rubric, judge model and settings
    rubric: str | None = None
    harmful: bool | None = None  # whether the harmful benchmarks were scored too

    def to_dict(self) -> dict[str, Any]:
        return {
            "judge": self.judge,
            "model": self.model,
            "key": self.key,
            "rubric": self.rubric,
            "harmful": self.harmful,
        }


@dataclass(frozen=True, kw_only=True)
class Provenance:
    """Where the numbers came from. `generation` and `eval` are the run's config sections as written
    (their layout belongs to safetune.config); `extra` keeps keys this module does not know."""

    safetune_version: str | None = None
    git_commit: str | None = None
    created: str | None = None
    model: ModelSource | None = None
    backend: str | None = None
    generation: Mapping[str, Any] | None = None
    # The decoding defence the answers were generated under (`Defence.record()`: name, purpose and every
    # resolved setting); None: plain generation.
    defence: Mapping[str, Any] | None = None
    judge: JudgeRecord | None = None  # the primary judge
    judges: tuple[JudgeRecord, ...] | None = None  # every judge of the run, the primary one first
    eval: Mapping[str, Any] | None = None
    config_hash: str | None = None
    seed: int | None = None
    counts: Mapping[str, Any] | None = None
    translation: Mapping[str, Any] | None = None  # eval.translate_to: the translator and its counts
    fidelity: FidelityRecord | None = None  # only when the persona-fidelity judge ran
    utility: Mapping[str, Any] | None = None  # lm-eval's version, the settings, each task's version/hash
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def roles(self) -> tuple[str, ...]:
        """`eval.roles` (sorted, unique) when the run was given roles, else ()."""
        given = (self.eval or {}).get("roles")
        if isinstance(given, list) and given and all(isinstance(r, str) for r in given):
            return tuple(sorted(set(given)))
        return ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "safetune_version": self.safetune_version,
            "git_commit": self.git_commit,
            "created": self.created,
            "model": None if self.model is None else self.model.to_dict(),
            "backend": self.backend,
            "generation": None if self.generation is None else dict(self.generation),
            **({} if self.defence is None else {"defence": dict(self.defence)}),
            "judge": None if self.judge is None else self.judge.to_dict(),
            **({} if self.judges is None else {"judges": [judge.to_dict() for judge in self.judges]}),
            "eval": None if self.eval is None else dict(self.eval),
            "config_hash": self.config_hash,
            "seed": self.seed,
            "counts": None if self.counts is None else dict(self.counts),
            **({} if self.translation is None else {"translation": dict(self.translation)}),
            **({} if self.fidelity is None else {"fidelity": self.fidelity.to_dict()}),
            **({} if self.utility is None else {"utility": dict(self.utility)}),
            **self.extra,
        }


@dataclass(frozen=True, kw_only=True)
class Results:
    """One evaluation's results.json."""

    provenance: Provenance = field(default_factory=Provenance)
    benchmarks: Mapping[str, BenchmarkResult] = field(default_factory=dict)
    summary: Summary = field(default_factory=Summary)
    utility: Mapping[str, UtilityResult] = field(default_factory=dict)  # {} when no --utility
    turns: Mapping[str, TurnTable] = field(default_factory=dict)  # {} without eval.turns

    def to_dict(self) -> dict[str, Any]:
        """The file's JSON object, in the layout of the module docstring."""
        data = {
            "schema_version": SCHEMA_VERSION,
            "provenance": self.provenance.to_dict(),
            "benchmarks": {name: b.to_dict() for name, b in self.benchmarks.items()},
            "summary": self.summary.to_dict(),
        }
        if self.utility:  # absent from files without it, which so re-serialise to the same bytes
            data["utility"] = {name: u.to_dict() for name, u in self.utility.items()}
        if self.turns:
            data["turns"] = {name: t.to_dict() for name, t in self.turns.items()}
        return data

    def save(self, path: str | Path) -> None:
        """Write atomically (the runner's results.json)."""
        write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: Any, path: str | Path = RESULTS_FILE) -> Results:
        """Check a parsed results.json and type it; `path` is named in the DataError of a bad field."""
        return _Parser(Path(path)).results(data)


def locate(path: str | Path) -> Path:
    """The results.json of an evaluation folder, or `path` itself when it is not a folder."""
    path = Path(path)
    return path / RESULTS_FILE if path.is_dir() else path


def load(path: str | Path) -> Results:
    """Read and check one results.json (or the one in an evaluation folder)."""
    path = locate(path)
    if not path.is_file():
        raise DataError(path, None, None, "no such file (run `safetune eval` first)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(path, err.lineno, None, f"not valid JSON ({err.msg})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(path, None, None, f"cannot read: {err}") from None
    return Results.from_dict(data, path)


# ---- checking a parsed file ----


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class _Parser:
    """Checks one file's content; every error names `path` and the dotted field."""

    path: Path

    def fail(self, field: str | None, message: str) -> NoReturn:
        raise DataError(self.path, None, field, message)

    def obj(self, field: str, value: Any, message: str = "expected an object") -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(field, message)
        return value

    def number(self, field: str, value: Any) -> float | None:
        if value is not None and not _is_number(value):
            self.fail(field, f"expected a number or null, got {value!r}")
        return value  # type: ignore[no-any-return]

    def count(self, field: str, value: Any) -> int | None:
        if value is not None and not _is_integer(value):
            self.fail(field, f"expected an integer or null, got {value!r}")
        return value  # type: ignore[no-any-return]

    def text(self, field: str, value: Any) -> str | None:
        if value is not None and not isinstance(value, str):
            self.fail(field, f"expected a string or null, got {value!r}")
        return value  # type: ignore[no-any-return]

    def results(self, data: Any) -> Results:
        if not isinstance(data, dict):
            self.fail(None, "expected a JSON object")
        if "schema_version" not in data:
            self.fail("schema_version", "missing (not a safetune results.json?)")
        if data["schema_version"] != SCHEMA_VERSION:
            self.fail(
                "schema_version",
                f"unsupported version {data['schema_version']!r} (this safetune reads {SCHEMA_VERSION})",
            )
        for key in ("provenance", "benchmarks", "summary"):
            self.obj(key, data.get(key), "missing" if key not in data else "expected an object")
        provenance = self.provenance(data["provenance"])
        benchmarks = {
            name: self.benchmark(f"benchmarks.{name}", bench) for name, bench in data["benchmarks"].items()
        }
        utility = {
            name: self.utility(f"utility.{name}", entry)
            for name, entry in self.obj("utility", data.get("utility") or {}).items()
        }
        turns = {
            name: self.turn_table(f"turns.{name}", entry)
            for name, entry in self.obj("turns", data.get("turns") or {}).items()
        }
        return Results(
            provenance=provenance,
            benchmarks=benchmarks,
            summary=self.summary(data["summary"]),
            utility=utility,
            turns=turns,
        )

    def turn_table(self, field: str, data: Any) -> TurnTable:
        entry = self.obj(field, data)
        metric = self.text(f"{field}.metric", entry.get("metric"))
        if metric is None:
            self.fail(f"{field}.metric", "missing")
        rows = entry.get("by_turn")
        if not isinstance(rows, list):
            self.fail(f"{field}.by_turn", "expected a list")
        parsed = []
        for i, row in enumerate(rows):
            where = f"{field}.by_turn.{i}"
            group = self.group(where, row)
            k = row.get("k")
            if not _is_integer(k) or k < 1:
                self.fail(f"{where}.k", f"expected an integer >= 1, got {k!r}")
            values = {key: getattr(group, key) for key in GroupResult.__dataclass_fields__}
            fidelity = self.number(f"{where}.fidelity", row.get("fidelity"))
            parsed.append(TurnRow(k=k, fidelity=fidelity, scored="fidelity" in row, **values))
        return TurnTable(
            metric=metric,
            kind=self.text(f"{field}.kind", entry.get("kind")),
            prefix=self.text(f"{field}.prefix", entry.get("prefix")),
            single_turn=self.number(f"{field}.single_turn", entry.get("single_turn")),
            by_turn=tuple(parsed),
        )

    def metrics(self, field: str, data: Any) -> dict[str, MetricValue]:
        return {
            key: MetricValue(
                value=self.number(f"{field}.{key}.value", self.obj(f"{field}.{key}", value).get("value")),
                stderr=self.number(f"{field}.{key}.stderr", value.get("stderr")),
            )
            for key, value in self.obj(field, data or {}).items()
        }

    def utility(self, field: str, data: Any) -> UtilityResult:
        entry = self.obj(field, data)
        lm_eval_task, version, aggregate, primary = (
            self.text(f"{field}.{key}", entry.get(key))
            for key in ("lm_eval_task", "version", "aggregate", "primary")
        )
        by_language = {}
        for lang, group in self.obj(f"{field}.by_language", entry.get("by_language") or {}).items():
            where = f"{field}.by_language.{lang}"
            group = self.obj(where, group)
            by_language[lang] = UtilityLanguage(
                task=self.text(f"{where}.task", group.get("task")),
                n=self.count(f"{where}.n", group.get("n")),
                metrics=self.metrics(f"{where}.metrics", group.get("metrics")),
            )
        return UtilityResult(
            lm_eval_task=lm_eval_task,
            version=version,
            n=self.count(f"{field}.n", entry.get("n")),
            n_shot=self.count(f"{field}.n_shot", entry.get("n_shot")),
            aggregate=aggregate,
            primary=primary,
            metrics=self.metrics(f"{field}.metrics", entry.get("metrics")),
            by_language=by_language,
        )

    def group(self, field: str, data: Any) -> GroupResult:
        group = self.obj(field, data)
        for key in ("n", "value"):
            if key not in group:
                self.fail(f"{field}.{key}", "missing")
        if not _is_integer(group["n"]):
            self.fail(f"{field}.n", f"expected an integer, got {group['n']!r}")
        value = self.number(f"{field}.value", group["value"])
        asr = self.number(f"{field}.asr", group.get("asr"))
        n_valid, n_invalid, n_uncovered = (
            self.count(f"{field}.{key}", group.get(key)) for key in ("n_valid", "n_invalid", "n_uncovered")
        )
        ci = group.get("ci95")
        if ci is not None and not (isinstance(ci, list) and len(ci) == 2 and all(_is_number(v) for v in ci)):
            self.fail(f"{field}.ci95", f"expected [low, high] or null, got {ci!r}")
        return GroupResult(
            n=group["n"],
            value=value,
            n_valid=n_valid,
            n_invalid=n_invalid,
            n_uncovered=n_uncovered,
            asr=asr,
            ci95=None if ci is None else (ci[0], ci[1]),
            chrf=self.number(f"{field}.chrf", group.get("chrf")),
            n_partial=self.count(f"{field}.n_partial", group.get("n_partial")),
            n_incoherent=self.count(f"{field}.n_incoherent", group.get("n_incoherent")),
            note=self.text(f"{field}.note", group.get("note")),
        )

    def benchmark(self, field: str, data: Any) -> BenchmarkResult:
        numbers = self.group(field, data)
        metric = data.get("metric")
        if not isinstance(metric, str):
            self.fail(f"{field}.metric", "missing or not a string")
        if metric not in METRICS:
            self.fail(f"{field}.metric", f"unknown metric {metric!r} (known: {', '.join(METRICS)})")
        name, version, kind, group, source = (
            self.text(f"{field}.{key}", data.get(key))
            for key in ("name", "version", "kind", "group", "source")
        )
        by_role, by_language = (
            {
                key: self.group(f"{field}.{grouping}.{key}", value)
                for key, value in self.obj(f"{field}.{grouping}", data.get(grouping) or {}).items()
            }
            for grouping in ("by_role", "by_language")
        )
        secondary = data.get("secondary")
        if secondary is not None:
            other = self.group(f"{field}.secondary", secondary)
            secondary = SecondaryResult(
                **{f.name: getattr(other, f.name) for f in fields(GroupResult)},
                judged_on=self.text(f"{field}.secondary.judged_on", secondary.get("judged_on")),
                by_language={
                    key: self.group(f"{field}.secondary.by_language.{key}", value)
                    for key, value in self.obj(
                        f"{field}.secondary.by_language", secondary.get("by_language") or {}
                    ).items()
                },
            )
        found = data.get("fidelity")
        fidelity = None if found is None else self.fidelity(f"{field}.fidelity", found)
        agreement = data.get("judge_agreement")
        return BenchmarkResult(
            **{f.name: getattr(numbers, f.name) for f in fields(GroupResult)},
            judge_agreement=None
            if agreement is None
            else self.agreement(f"{field}.judge_agreement", agreement),
            metric=METRICS[metric],
            name=name,
            version=version,
            kind=kind,
            group=group,
            source=source,
            by_role=by_role,
            by_language=by_language,
            judged_on=self.text(f"{field}.judged_on", data.get("judged_on")),
            n_translated=self.count(f"{field}.n_translated", data.get("n_translated")),
            secondary=secondary,
            fidelity=fidelity,
        )

    def fidelity_group(self, field: str, data: Any) -> FidelityGroup:
        group = self.obj(field, data)
        if not _is_integer(group.get("n")):
            self.fail(f"{field}.n", f"expected an integer, got {group.get('n')!r}")
        ci = group.get("ci95")
        if ci is not None and not (isinstance(ci, list) and len(ci) == 2 and all(_is_number(v) for v in ci)):
            self.fail(f"{field}.ci95", f"expected [low, high] or null, got {ci!r}")
        return FidelityGroup(
            n=group["n"],
            n_valid=self.count(f"{field}.n_valid", group.get("n_valid")),
            n_invalid=self.count(f"{field}.n_invalid", group.get("n_invalid")),
            value=self.number(f"{field}.value", group.get("value")),
            ci95=None if ci is None else (ci[0], ci[1]),
            in_character=self.number(f"{field}.in_character", group.get("in_character")),
        )

    def fidelity(self, field: str, data: Any) -> FidelityResult:
        numbers = self.fidelity_group(field, data)
        by_role = {
            role: self.fidelity_group(f"{field}.by_role.{role}", value)
            for role, value in self.obj(f"{field}.by_role", data.get("by_role") or {}).items()
        }
        return FidelityResult(
            **{f.name: getattr(numbers, f.name) for f in fields(FidelityGroup)}, by_role=by_role
        )

    def agreement(self, field: str, data: Any) -> JudgeAgreement:
        block = self.obj(field, data)
        primary, compares = (self.text(f"{field}.{key}", block.get(key)) for key in ("primary", "compares"))
        judges = {}
        for name, judge in self.obj(f"{field}.judges", block.get("judges") or {}).items():
            where = f"{field}.judges.{name}"
            found = self.obj(where, judge)
            if not _is_integer(found.get("n")):
                self.fail(f"{where}.n", f"expected an integer, got {found.get('n')!r}")
            judges[name] = JudgeComparison(
                key=self.text(f"{where}.key", found.get("key")),
                n=found["n"],
                n_undecided=self.count(f"{where}.n_undecided", found.get("n_undecided")),
                n_disagreements=self.count(f"{where}.n_disagreements", found.get("n_disagreements")),
                **{
                    key: self.number(f"{where}.{key}", found.get(key))
                    for key in ("agreement", "kappa", "value", "asr")
                },
            )
        return JudgeAgreement(primary=primary, compares=compares, judges=judges)

    def calibration(self, data: Any) -> Calibration:
        found = self.obj("summary.calibration", data, "expected an object or null")
        used = found.get("used") or []
        if not (isinstance(used, list) and all(isinstance(name, str) for name in used)):
            self.fail("summary.calibration.used", f"expected benchmark names, got {used!r}")
        return Calibration(
            **{
                key: self.number(f"summary.calibration.{key}", found.get(key))
                for key in ("harmful_refusal", "benign_over_refusal", "gap")
            },
            used=tuple(used),
        )

    def summary(self, data: dict[str, Any]) -> Summary:
        numbers = {
            key: self.number(f"summary.{key}", data.get(key))
            for key in AGGREGATES
            if key != "multilingual_asr"
        }
        per_language = data.get("multilingual_asr")
        if per_language is not None:
            found = self.obj("summary.multilingual_asr", per_language, "expected an object or null")
            per_language = {
                lang: self.number(f"summary.multilingual_asr.{lang}", value) for lang, value in found.items()
            }
        used = data.get("used")
        if used is not None:
            if not (isinstance(used, dict) and all(isinstance(v, list) for v in used.values())):
                self.fail("summary.used", "expected an object of lists")
            for key, names in used.items():
                if not all(isinstance(name, str) for name in names):
                    self.fail(f"summary.used.{key}", f"expected benchmark names, got {names!r}")
            used = {key: tuple(names) for key, names in used.items()}
        calibration = data.get("calibration")
        return Summary(
            **numbers,
            multilingual_asr=per_language,
            used=used,
            calibration=None if calibration is None else self.calibration(calibration),
        )

    def provenance(self, data: dict[str, Any]) -> Provenance:
        for key in ("model", "judge"):
            value = data.get(key)
            if value is not None and not isinstance(value, dict):
                self.fail(f"provenance.{key}", "expected an object or null")
        texts = ("safetune_version", "git_commit", "created", "backend", "config_hash")
        values: dict[str, Any] = {key: self.text(f"provenance.{key}", data.get(key)) for key in texts}
        for key in ("generation", "eval", "counts", "translation", "utility"):
            value = data.get(key)
            values[key] = (
                None if value is None else self.obj(f"provenance.{key}", value, "expected an object or null")
            )
        values["seed"] = self.count("provenance.seed", data.get("seed"))
        values["model"] = None if data.get("model") is None else self.model(data["model"])
        judge = data.get("judge")
        if judge is not None:
            values["judge"] = self.judge("provenance.judge", judge)
        judges = data.get("judges")
        if judges is not None:
            if not isinstance(judges, list):
                self.fail("provenance.judges", "expected a list or null")
            values["judges"] = tuple(
                self.judge(f"provenance.judges.{i}", self.obj(f"provenance.judges.{i}", found))
                for i, found in enumerate(judges)
            )
        defence = data.get("defence")
        if defence is not None:
            values["defence"] = self.defence(defence)
        fidelity = data.get("fidelity")
        if fidelity is not None:
            found = self.obj("provenance.fidelity", fidelity, "expected an object or null")
            harmful = found.get("harmful")
            if harmful is not None and not isinstance(harmful, bool):
                self.fail("provenance.fidelity.harmful", f"expected true, false or null, got {harmful!r}")
            values["fidelity"] = FidelityRecord(
                **{
                    key: self.text(f"provenance.fidelity.{key}", found.get(key))
                    for key in ("judge", "model", "key", "rubric")
                },
                harmful=harmful,
            )
        known = {
            *texts,
            "generation",
            "eval",
            "counts",
            "seed",
            "model",
            "judge",
            "translation",
            "utility",
            "fidelity",
            "judges",
            "defence",
        }
        values["extra"] = {key: value for key, value in data.items() if key not in known}
        return Provenance(**values)

    def defence(self, data: Any) -> dict[str, Any]:
        """A defence record: a name and a purpose (what reports show) and the settings, as written."""
        found = self.obj("provenance.defence", data, "expected an object or null")
        for key in ("name", "purpose"):
            if not isinstance(found.get(key), str) or not found[key]:
                self.fail(f"provenance.defence.{key}", f"expected a non-empty string, got {found.get(key)!r}")
        self.number("provenance.defence.alpha", found.get("alpha"))
        return dict(found)

    def judge(self, field: str, data: dict[str, Any]) -> JudgeRecord:
        return JudgeRecord(
            **{key: self.text(f"{field}.{key}", data.get(key)) for key in ("name", "version", "key")}
        )

    def model(self, data: dict[str, Any]) -> ModelSource:
        field = "provenance.model"
        for key in ("label", "base"):
            if not isinstance(data.get(key), str):
                self.fail(f"{field}.{key}", "missing or not a string")
        adapter, tokenizer, revision, fingerprint = (
            self.text(f"{field}.{key}", data.get(key))
            for key in ("adapter", "tokenizer", "revision", "fingerprint")
        )
        return ModelSource(
            label=data["label"],
            base=data["base"],
            adapter=adapter,
            tokenizer=tokenizer or "",  # ModelSource's default for both
            revision=revision,
            fingerprint=fingerprint or "",
        )
