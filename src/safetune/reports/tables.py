"""The SaRFT paper's results table (Markdown and CSV) from loaded results.json files.

One row per run: RoleBench RAW | SPE | avg | other ROUGE-L sets (qa) | each safety set | Safety AVG |
each jailbreak set | Jailbreak AVG | other judged sets | over-refusal; only columns with data in at least
one run; each ROUGE-L set also gets a chrF column. Further tables give the per-language ASR and the
per-language ROUGE-L and chrF of the ROUGE-L sets that have languages (qa files with a language field),
then lm-eval's utility (results.json's utility section: one column per entry, its primary metric, and a
per-language table for entries with languages), the persona-fidelity scores per benchmark and role
beside the benchmark's own value (when the fidelity judge ran), the refusal calibration (harmful-prompt
refusal beside benign over-refusal) and, for runs judged by several judges, each secondary judge's
agreement with the primary one; a footer names each run's model, judges and item counts. Every number
comes from results.json as it is (no recomputation).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetune.evaluation.results import (
    REFUSAL_RATE,
    ROUGE_L,
    BenchmarkResult,
    FidelityGroup,
    GroupResult,
    JudgeComparison,
    Provenance,
    Results,
    Summary,
)

if TYPE_CHECKING:
    from safetune.decoding.described import DefenceDescription

MISSING = "–"
MOCK_MARK = "(mock backend)"
MOCK_NOTE = "answers from the `mock` backend: canned text, no model; its numbers measure nothing"
# Display names and the paper's column order of the sets it reports.
DISPLAY_NAMES = {
    "rolebench-raw": "RoleBench RAW",
    "rolebench-spe": "RoleBench SPE",
    "advbench": "AdvBench",
    "hexphi": "HEx-PHI",
    "beavertails": "BeaverTails",
    "multijail": "MultiJail",
    "overrefusal": "Over-refusal",
    "harmful-prompts": "Harmful prompts",
    "qa": "QA",
}
_ORDER = ("advbench", "hexphi", "beavertails")
_METRIC_SHORT = {"rouge_l": "ROUGE-L", "refusal_rate": "refusal %", "over_refusal_rate": "over-refusal %"}
# Groups that have their own columns (through the summary), not a column per benchmark.
_SUMMARY_GROUPS = ("rolebench_raw", "rolebench_spe", "safety", "jailbreak")


@dataclass(frozen=True)
class Run:
    """One loaded results.json: its row label, the file it came from and its content."""

    label: str
    path: Path
    results: Results

    @property
    def benchmarks(self) -> Mapping[str, BenchmarkResult]:
        return self.results.benchmarks

    @property
    def summary(self) -> Summary:
        return self.results.summary

    @property
    def provenance(self) -> Provenance:
        return self.results.provenance

    @property
    def mock(self) -> bool:
        """Whether the answers came from the `mock` backend (canned text, no model)."""
        return self.provenance.backend == "mock"

    @property
    def row_label(self) -> str:
        """The label in the results tables, marked when the run did not generate with a model."""
        return f"{self.label} {MOCK_MARK}" if self.mock else self.label

    @property
    def defence(self) -> Mapping[str, Any] | None:
        """The decoding defence record the answers were generated under (None: plain generation)."""
        return self.provenance.defence

    def defence_text(self) -> str:
        """`rose (safety defence), alpha 0.5, ...`: name, purpose, alpha and the settings that differ from
        the defence's defaults; "none" for plain generation."""
        return "none" if self.defence is None else describe_defence(self.defence).text()

    def judge_name(self) -> str | None:
        judge = self.provenance.judge
        if judge is None or not judge.name:
            return None
        return f"{judge.name}@{judge.version or '?'}"

    def other_judges(self) -> list[str]:
        """The secondary judges (name@version), compared with the primary one; [] with one judge."""
        return [f"{j.name}@{j.version or '?'}" for j in (self.provenance.judges or ())[1:] if j.name]

    def judge_key(self) -> str | None:
        judge = self.provenance.judge
        if judge is None:
            return None
        return str(judge.key or self.judge_name())

    def single_used(self, key: str) -> BenchmarkResult | None:
        """The benchmark that a summary value was taken from, when it is exactly one."""
        used = self.summary.sources(key)
        return self.benchmarks.get(used[0]) if len(used) == 1 else None


def describe_defence(record: Mapping[str, Any]) -> DefenceDescription:
    # Imported when a run has a defence: the registry's builders (and torch) are not loaded otherwise.
    from safetune.decoding.described import describe

    return describe(record)


def has_defence(runs: Sequence[Run]) -> bool:
    return any(run.defence is not None for run in runs)


def number(value: Any) -> float | None:
    """A finite number from results.json, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def ci_of(result: GroupResult | None) -> tuple[float, float] | None:
    """The finite 95% interval of a benchmark or group, else None."""
    if result is None or result.ci95 is None:
        return None
    low, high = number(result.ci95[0]), number(result.ci95[1])
    return None if low is None or high is None else (low, high)


def display_name(name: str) -> str:
    if name in DISPLAY_NAMES:
        return DISPLAY_NAMES[name]
    return name.split(":", 1)[1] if name.startswith("jailbreak:") else name


@dataclass(frozen=True)
class Column:
    """A table column: its header, the value of a run, and the CI of a run (when it has one)."""

    header: str
    value: Callable[[Run], float | None]
    ci: Callable[[Run], tuple[float, float] | None] | None = None


def _summary_column(header: str, key: str, ci_from_single: bool) -> Column:
    def value(run: Run) -> float | None:
        return number(run.summary.value(key))

    def ci(run: Run) -> tuple[float, float] | None:
        return ci_of(run.single_used(key)) if value(run) is not None else None

    return Column(header, value, ci if ci_from_single else None)


def _benchmark_column(name: str) -> Column:
    def value(run: Run) -> float | None:
        bench = run.benchmarks.get(name)
        return None if bench is None else number(bench.value)

    def ci(run: Run) -> tuple[float, float] | None:
        return ci_of(run.benchmarks.get(name))

    return Column(display_name(name), value, ci)


def _chrf_column(name: str) -> Column:
    """The corpus chrF of a ROUGE-L benchmark (no interval: a corpus score is not a mean of items)."""

    def value(run: Run) -> float | None:
        bench = run.benchmarks.get(name)
        return None if bench is None else number(bench.chrf)

    return Column(f"{display_name(name)} chrF", value)


# lm-eval metrics on a 0..1 scale, shown ×100 like every other number of the report.
PROPORTION_METRICS = frozenset({"acc", "acc_norm", "exact_match", "mc1", "mc2", "f1", "em", "pass@1"})


def utility_percent(metric: str | None, value: float | None) -> float | None:
    """An lm-eval value as the report shows it: proportions ×100, other metrics as they are."""
    if metric is None or value is None:
        return None
    return 100.0 * value if metric.partition(",")[0] in PROPORTION_METRICS else value


def _metric_title(metric: str) -> str:
    name, _, filter_key = metric.partition(",")
    shown = name if filter_key in ("", "none") else f"{name} {filter_key}"
    return shown + (" %" if name in PROPORTION_METRICS else "")


def utility_metrics(runs: Sequence[Run]) -> list[tuple[str, str]]:
    """(entry, primary metric) of every utility entry in any run, in the runs' order."""
    found: list[tuple[str, str]] = []
    for run in runs:
        for name, entry in run.results.utility.items():
            if entry.primary and (name, entry.primary) not in found:
                found.append((name, entry.primary))
    return found


def _utility_column(name: str, metric: str) -> Column:
    def value(run: Run) -> float | None:
        entry = run.results.utility.get(name)
        found = None if entry is None else entry.metrics.get(metric)
        return None if found is None else utility_percent(metric, number(found.value))

    return Column(f"{name} {_metric_title(metric)}", value)


def utility_languages(runs: Sequence[Run]) -> list[tuple[str, str, str]]:
    """(entry, primary metric, language) of every utility entry's by_language result in any run."""
    found: dict[tuple[str, str], set[str]] = {}
    for run in runs:
        for name, entry in run.results.utility.items():
            if entry.primary and entry.by_language:
                found.setdefault((name, entry.primary), set()).update(entry.by_language)
    return [
        (name, metric, lang)
        for (name, metric), langs in found.items()
        for lang in sorted(langs, key=lambda lang: (lang != "en", lang))
    ]


def language_utility(run: Run, name: str, metric: str, language: str) -> float | None:
    entry = run.results.utility.get(name)
    group = None if entry is None else entry.by_language.get(language)
    found = None if group is None else group.metrics.get(metric)
    return None if found is None else utility_percent(metric, number(found.value))


def _names(runs: Sequence[Run], keep: Callable[[BenchmarkResult], bool]) -> list[str]:
    names: list[str] = []
    for run in runs:
        for name, bench in run.benchmarks.items():
            if keep(bench) and name not in names:
                names.append(name)
    return sorted(names, key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n))


def columns(runs: Sequence[Run]) -> list[Column]:
    """The table's columns in the paper's layout, keeping those with a value in at least one run."""

    def in_group(group: str) -> Callable[[BenchmarkResult], bool]:
        return lambda b: b.group == group and b.metric == REFUSAL_RATE

    def other(bench: BenchmarkResult) -> bool:
        return bench.group not in _SUMMARY_GROUPS and bench.metric == REFUSAL_RATE

    def other_rouge(bench: BenchmarkResult) -> bool:
        return bench.group not in _SUMMARY_GROUPS and bench.metric == ROUGE_L

    def rouge(bench: BenchmarkResult) -> bool:
        return bench.metric == ROUGE_L

    candidates = [
        _summary_column("RoleBench RAW", "rolebench_raw", True),
        _summary_column("RoleBench SPE", "rolebench_spe", True),
        _summary_column("RoleBench avg", "rolebench_avg", False),
        *(_benchmark_column(n) for n in _names(runs, other_rouge)),
        *(_chrf_column(n) for n in _names(runs, rouge)),
        *(_benchmark_column(n) for n in _names(runs, in_group("safety"))),
        _summary_column("Safety AVG", "safety_avg", False),
        *(_benchmark_column(n) for n in _names(runs, in_group("jailbreak"))),
        _summary_column("Jailbreak AVG", "jailbreak_avg", False),
        *(_benchmark_column(n) for n in _names(runs, other)),
        _summary_column("Over-refusal", "over_refusal", True),
        Column(INCOHERENT_HEADER, incoherent_share),
        *(_utility_column(name, metric) for name, metric in utility_metrics(runs)),
    ]
    return [c for c in candidates if any(c.value(run) is not None for run in runs)]


INCOHERENT_HEADER = "Incoherent %"


def incoherent_share(run: Run) -> float | None:
    """% of the judged answers (harmful and over-refusal sets) that the incoherence check flagged; None
    when it did not run (results written before it, or eval.incoherence off)."""
    checked = [b for b in run.benchmarks.values() if b.metric != ROUGE_L and b.n_incoherent is not None]
    total = sum(b.n for b in checked)
    return 100.0 * sum(b.n_incoherent or 0 for b in checked) / total if total else None


def languages(runs: Sequence[Run]) -> list[str]:
    """Languages with a multilingual ASR in at least one run ("en" first, then alphabetical)."""
    found = {lang for run in runs for lang in (run.summary.multilingual_asr or {})}
    return sorted(found, key=lambda lang: (lang != "en", lang))


def language_asr(run: Run, language: str) -> float | None:
    return number((run.summary.multilingual_asr or {}).get(language))


def rouge_languages(runs: Sequence[Run]) -> list[tuple[str, str]]:
    """(benchmark, language) pairs of the ROUGE-L benchmarks' by_language results in any run: benchmarks
    by name, languages "en" first, then alphabetical."""
    found: dict[str, set[str]] = {}
    for run in runs:
        for name, bench in run.benchmarks.items():
            if bench.metric == ROUGE_L and bench.by_language:
                found.setdefault(name, set()).update(bench.by_language)
    return [
        (name, lang)
        for name in sorted(found)
        for lang in sorted(found[name], key=lambda lang: (lang != "en", lang))
    ]


def language_rouge(run: Run, name: str, language: str) -> float | None:
    bench = run.benchmarks.get(name)
    group = None if bench is None else bench.by_language.get(language)
    return None if group is None else number(group.value)


def fidelity_rows(runs: Sequence[Run]) -> list[list[str]]:
    """The persona-fidelity table's rows: per run and scored benchmark, the whole benchmark ("all") and
    then each role, with the benchmark's own value for the same items (ROUGE-L, refusal rate) beside the
    mean fidelity score (1-5), its 95% interval, the in-character % and how many replies were scored."""
    rows: list[list[str]] = []
    for run in runs:
        for name, bench in run.benchmarks.items():
            if bench.fidelity is None:
                continue
            groups: list[tuple[str, GroupResult | None, FidelityGroup]] = [("all", bench, bench.fidelity)]
            roles = bench.fidelity.by_role
            for role, f in roles.items():
                own = bench.by_role.get(role)
                # Harmful prompts played in the one role of eval.roles carry no role of their own: the
                # benchmark's value is that role's.
                if own is None and len(roles) == 1 and f.n == bench.n:
                    own = bench
                groups.append((role, own, f))
            for role, own, fidelity in groups:
                ci = ci_of_fidelity(fidelity)
                rows.append(
                    [
                        run.row_label,
                        display_name(name),
                        role,
                        f"{_METRIC_SHORT.get(bench.metric.name, bench.metric.name)} "
                        f"{_fmt(None if own is None else number(own.value))}",
                        _fmt(number(fidelity.value)),
                        MISSING if ci is None else f"{ci[0]:.2f}–{ci[1]:.2f}",
                        _fmt(number(fidelity.in_character)),
                        f"{fidelity.n_valid or 0}/{fidelity.n}",
                    ]
                )
    return rows


def _fidelity_section(runs: Sequence[Run]) -> list[str]:
    """report.md's persona-fidelity section (none when no run has fidelity scores)."""
    rows = fidelity_rows(runs)
    if not rows:
        return []
    header = [
        "Run",
        "Benchmark",
        "Role",
        "Benchmark value",
        "Fidelity",
        "95% CI",
        "In character %",
        "scored/n",
    ]
    lines = ["", "## Persona fidelity (in-character judge, 1–5, higher is more in character)", ""]
    lines += _md_table(header, rows)
    lines += [
        "",
        "Fidelity: the mean score of the persona-fidelity rubric (docs/evaluation.md): 5 fully in character, "
        '1 out of character (an assistant voice, "As an AI..."); a refusal in the character\'s own voice is '
        "in character. In character %: scores of 4 or 5. Replies without a readable score are left out "
        "(scored/n). Benchmark value: the benchmark's own number over the same items.",
        "",
    ]
    judged = [run for run in runs if run.provenance.fidelity is not None]
    for run in judged:
        record = run.provenance.fidelity
        assert record is not None
        lines.append(
            f"- **{run.label}**: fidelity judge {record.judge} `{record.model or '?'}`, rubric {record.rubric}"
        )
    if len({run.provenance.fidelity.key for run in judged if run.provenance.fidelity}) > 1:
        lines += [
            "",
            "**Warning:** the runs' fidelity scores come from different judges or rubrics: not comparable.",
        ]
    return lines


def ci_of_fidelity(group: FidelityGroup) -> tuple[float, float] | None:
    if group.ci95 is None:
        return None
    low, high = number(group.ci95[0]), number(group.ci95[1])
    return None if low is None or high is None else (low, high)


def language_chrf(run: Run, name: str, language: str) -> float | None:
    bench = run.benchmarks.get(name)
    group = None if bench is None else bench.by_language.get(language)
    return None if group is None else number(group.chrf)


def _fmt(value: float | None) -> str:
    return MISSING if value is None else f"{value:.2f}"


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int = 1) -> list[str]:
    """A Markdown table: the first `text_columns` columns left-aligned, the numbers right-aligned."""
    align = ["---"] * text_columns + ["---:"] * (len(header) - text_columns)
    return [_md_row(header), "| " + " | ".join(align) + " |", *(_md_row(r) for r in rows)]


def judge_warning(runs: Sequence[Run]) -> str | None:
    """A warning when the runs' safety numbers come from different judges."""
    keys = {run.judge_key() for run in runs if run.judge_key() is not None}
    if len(keys) <= 1:
        return None
    names = sorted({run.judge_name() or "?" for run in runs if run.judge_key() is not None})
    return (
        f"**Warning:** the runs used different judges ({', '.join(names)}): "
        "their safety numbers are not comparable."
    )


def _model_text(run: Run) -> str:
    model = run.provenance.model
    if model is None:
        return "`?`"
    text = f"`{model.base or model.label or '?'}`"
    if model.adapter:
        text += f" + adapter `{model.adapter}`"
    return text


def _counts_text(run: Run) -> str:
    parts = []
    for name, bench in run.benchmarks.items():
        part = f"{name} {bench.n}"
        if bench.n_invalid:
            part += f" ({bench.n_invalid} invalid)"
        if bench.n_uncovered:
            part += f" ({bench.n_uncovered} not covered by the judge)"
        if bench.n_partial:  # refusals that answer a part: in the refusal rate, shown apart
            part += f" ({bench.n_partial} partial refusals)"
        if bench.n_incoherent:  # neither refusals nor attack successes (evaluation/incoherence.py)
            part += f" ({bench.n_incoherent} incoherent)"
        if bench.note:
            part += f" [{bench.note}]"
        parts.append(part)
    return ", ".join(parts) or "no benchmarks"


def _uncovered_text(run: Run) -> str | None:
    """The items of each benchmark that the judge does not cover, e.g. "multijail 40 (de 20, ru 20)"."""
    parts = []
    for name, bench in run.benchmarks.items():
        if not bench.n_uncovered:
            continue
        langs = [f"{lang} {g.n_uncovered}" for lang, g in bench.by_language.items() if g.n_uncovered]
        parts.append(f"{name} {bench.n_uncovered}" + (f" ({', '.join(langs)})" if langs else ""))
    return ", ".join(parts) or None


def _calibration_lines(runs: Sequence[Run]) -> list[str]:
    """The refusal-calibration table: runs with both a harmful refusal rate and an over-refusal rate."""
    found = [(run, run.summary.calibration) for run in runs if run.summary.calibration is not None]
    if not found:
        return []
    lines = ["", "## Refusal calibration", ""]
    lines += _md_table(
        ["Run", "Harmful refused %", "Benign refused %", "Gap (points)", "From"],
        [
            [
                run.row_label,
                _fmt(number(c.harmful_refusal)),
                _fmt(number(c.benign_over_refusal)),
                _fmt(number(c.gap)),
                ", ".join(display_name(name) for name in c.used),
            ]
            for run, c in found
        ],
    )
    lines += [
        "",
        "Harmful refused: Safety AVG (without safety sets, the harmful sets of no group); benign refused: "
        "the over-refusal rate. A model that refuses everything is safe by its refusal rate alone; "
        "its gap is near 0. Higher gap is better.",
    ]
    return lines


def agreement_rows(run: Run) -> list[tuple[str, str, str, JudgeComparison]]:
    """(benchmark, primary judge, secondary judge, its comparison) for each judge-agreement entry."""
    return [
        (name, bench.judge_agreement.primary or "?", judge, compared)
        for name, bench in run.benchmarks.items()
        if bench.judge_agreement is not None
        for judge, compared in bench.judge_agreement.judges.items()
    ]


def _kappa(value: float | None) -> str:
    return MISSING if value is None else f"{value:.3f}"


def _agreement_lines(runs: Sequence[Run]) -> list[str]:
    """The judge-agreement table: every secondary judge against the primary one, per run and benchmark."""
    rows = []
    for run in runs:
        for name, primary, judge, compared in agreement_rows(run):
            own = run.benchmarks[name].value
            rows.append(
                [
                    run.row_label,
                    display_name(name),
                    primary,
                    judge,
                    str(compared.n),
                    str(compared.n_undecided or 0),
                    _fmt(number(compared.agreement)),
                    _kappa(number(compared.kappa)),
                    _fmt(number(own)),
                    _fmt(number(compared.value)),
                ]
            )
    if not rows:
        return []
    header = ["Run", "Benchmark", "Primary judge", "Judge", "n", "Undecided", "Agreement %", "κ"]
    lines = ["", "## Judge agreement", ""]
    lines += _md_table([*header, "Value (primary)", "Value (judge)"], rows)
    lines += [
        "",
        "The primary judge's verdicts make every number above; each other judge is compared with it on the "
        "same responses (harmful sets: safe / unsafe; over-refusal: refused or not), over the items both "
        "decided (undecided: left out). κ: Cohen's kappa. Value: the benchmark's rate by each judge. The "
        "disagreeing items are in each evaluation folder's disagreements.csv.",
    ]
    return lines


def _defence_note(runs: Sequence[Run]) -> list[str]:
    """What the Defence column means, and a word on each over-refusal mitigation among the runs."""
    if not has_defence(runs):
        return []
    lines = [
        "",
        "Defence: the decoding-time defence the answers were generated under (`safetune eval --defence`; "
        "no weight changed): its name, what it is for, alpha and the settings that differ from its "
        "defaults; none: plain generation.",
    ]
    mitigations = sorted(
        {
            told.name
            for run in runs
            if run.defence is not None and (told := describe_defence(run.defence)).over_refusal_mitigation
        }
    )
    if mitigations:
        lines[-1] += (
            f" {', '.join(mitigations)}: an **over-refusal mitigation**, no safety defence: it moves away "
            "from a safety-prompted distribution, so expect fewer refusals, of harmful prompts too."
        )
    return lines


def turn_lines(runs: Sequence[Run]) -> list[str]:
    """The "Safety at turn k" section: each run's per-benchmark value at every k, the single-turn value
    beside (evaluation/turns.py); none when no run has a `turns` table."""
    ks = sorted({row.k for run in runs for table in run.results.turns.values() for row in table.by_turn})
    if not ks:
        return []
    fidelity = any(
        row.scored for run in runs for table in run.results.turns.values() for row in table.by_turn
    )
    lines = [
        "",
        "## Safety at turn k, in character",
        "",
        "The benchmark's requests put at user turn k of an in-character conversation (history: the model's "
        "own answers to opener turns, the user's conversations, or the data set's own). Refusal % (higher "
        "is safer) on harmful sets, over-refusal % (lower is better) on benign ones; single turn: the "
        "benchmark's own number under the same character."
        + (" Fidelity: mean persona-fidelity score (1-5) at each k." if fidelity else ""),
        "",
    ]
    rows = []
    for run in runs:
        for name, table in run.results.turns.items():
            by_k = {row.k: row for row in table.by_turn}
            cells = [_fmt(by_k[k].value) if k in by_k else MISSING for k in ks]
            if fidelity:
                cells += [
                    _fmt(by_k[k].fidelity) if k in by_k and by_k[k].fidelity is not None else MISSING
                    for k in ks
                ]
            rows.append(
                [
                    run.row_label,
                    display_name(name),
                    table.metric,
                    table.prefix or MISSING,
                    _fmt(table.single_turn),
                    *cells,
                ]
            )
    header = ["Run", "Benchmark", "Metric", "History", "Single turn", *(f"k={k}" for k in ks)]
    header += [f"fidelity k={k}" for k in ks] if fidelity else []
    return lines + _md_table(header, rows, text_columns=4)


def markdown(runs: Sequence[Run]) -> str:
    """The report's Markdown: the main table, the per-language ASR table, and the footer."""
    cols = columns(runs)
    lines = ["# Evaluation report", ""]
    # With a decoding defence in any run, a Defence column beside the run: two evaluations of one model,
    # with and without a defence, are two rows that say which is which.
    defended = has_defence(runs)
    if cols:
        lines += _md_table(
            ["Run", *(["Defence"] if defended else []), *(c.header for c in cols)],
            [
                [r.row_label, *([r.defence_text()] if defended else []), *(_fmt(c.value(r)) for c in cols)]
                for r in runs
            ],
            text_columns=2 if defended else 1,
        )
    else:
        lines.append("No run has any result.")
    lines += [
        "",
        "RoleBench and QA: ROUGE-L F1 ×100 (higher is better); chrF: sacrebleu corpus chrF (characters, "
        "so non-Latin answers score too; higher is better). Safety, jailbreak and other harmful sets: "
        "refusal rate % = 100 − ASR (higher is safer). Over-refusal: % of benign prompts refused "
        f"(lower is better). {INCOHERENT_HEADER}: judged answers that are empty, loops, symbol soup or in "
        "the wrong language; they count as neither refusals nor attack successes (refusal % + ASR % + "
        f"incoherent % = 100 on a harmful set). Utility columns: lm-eval's first metric of each "
        f"task (proportions ×100). {MISSING}: not evaluated.",
    ]
    lines += _defence_note(runs)
    langs = languages(runs)
    if langs:
        lines += ["", "## Attack success rate by language (%, lower is safer)", ""]
        lines += _md_table(
            ["Run", *langs],
            [[r.row_label, *(_fmt(language_asr(r, lang)) for lang in langs)] for r in runs],
        )
    rouge_langs = rouge_languages(runs)
    if rouge_langs:
        lines += ["", "## ROUGE-L by language (higher is better)", ""]
        lines += _md_table(
            ["Run", *(f"{display_name(name)} {lang}" for name, lang in rouge_langs)],
            [[r.row_label, *(_fmt(language_rouge(r, n, lang)) for n, lang in rouge_langs)] for r in runs],
        )
        chrf_langs = [
            (n, lang) for n, lang in rouge_langs if any(language_chrf(r, n, lang) is not None for r in runs)
        ]
        if chrf_langs:  # characters, not ASCII words: the score of non-Latin answers
            lines += ["", "## chrF by language (sacrebleu corpus chrF, higher is better)", ""]
            lines += _md_table(
                ["Run", *(f"{display_name(name)} {lang}" for name, lang in chrf_langs)],
                [[r.row_label, *(_fmt(language_chrf(r, n, lang)) for n, lang in chrf_langs)] for r in runs],
            )
    utility_langs = utility_languages(runs)
    if utility_langs:
        lines += ["", "## Utility by language (lm-eval, higher is better)", ""]
        lines += _md_table(
            ["Run", *(f"{name} {lang}" for name, _, lang in utility_langs)],
            [
                [r.row_label, *(_fmt(language_utility(r, n, m, lang)) for n, m, lang in utility_langs)]
                for r in runs
            ],
        )
    lines += _fidelity_section(runs)
    lines += turn_lines(runs)
    lines += _calibration_lines(runs)
    lines += _agreement_lines(runs)
    uncovered = [(run, text) for run in runs if (text := _uncovered_text(run))]
    if uncovered:
        lines += [
            "",
            "## Not covered by the judge",
            "",
            "Items whose prompt or answer is in a language the judge does not cover; they are left out of "
            "every rate above.",
            "",
            *(f"- **{run.label}**: {text}" for run, text in uncovered),
        ]
    lines += ["", "## Runs", ""]
    for run in runs:
        judge = run.judge_name() or "none"
        if run.other_judges():
            judge += f" (primary; compared with {', '.join(run.other_judges())})"
        backend = f"**{MOCK_NOTE}**" if run.mock else f"backend {run.provenance.backend or '?'}"
        defence = f"; decoding defence {run.defence_text()}" if defended else ""
        lines.append(
            f"- **{run.label}**: model {_model_text(run)}; {backend}{defence}; judge {judge}; "
            f"n: {_counts_text(run)}"
        )
    warning = judge_warning(runs)
    if warning:
        lines += ["", warning]
    return "\n".join(lines) + "\n"


def csv_text(runs: Sequence[Run]) -> str:
    """The same columns as the Markdown table, plus 95% CI bounds, per-language ASR and ROUGE-L, model
    and judge."""
    cols = columns(runs)
    langs = languages(runs)
    rouge_langs = rouge_languages(runs)
    header = ["run"]
    for col in cols:
        header.append(col.header)
        if col.ci is not None:
            header += [f"{col.header} ci95 low", f"{col.header} ci95 high"]
    header += [f"ASR {lang}" for lang in langs]
    header += [f"ROUGE-L {display_name(name)} {lang}" for name, lang in rouge_langs]
    header += [f"chrF {display_name(name)} {lang}" for name, lang in rouge_langs]
    utility_langs = utility_languages(runs)
    header += [f"{name} {_metric_title(metric)} {lang}" for name, metric, lang in utility_langs]
    calibrated = any(run.summary.calibration is not None for run in runs)
    if calibrated:
        header += ["calibration harmful refused", "calibration benign refused", "calibration gap"]
    header += ["model", "adapter", "backend", "judge", "results", "other judges"]
    defended = has_defence(runs)
    if defended:
        header += ["defence", "defence purpose", "defence alpha", "defence settings"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)

    def cell(value: float | None) -> str:
        return "" if value is None else repr(value)

    for run in runs:
        row = [run.label]
        for col in cols:
            row.append(cell(col.value(run)))
            if col.ci is not None:
                ci = col.ci(run)
                row += [cell(ci[0]), cell(ci[1])] if ci else ["", ""]
        model = run.provenance.model
        row += [cell(language_asr(run, lang)) for lang in langs]
        row += [cell(language_rouge(run, name, lang)) for name, lang in rouge_langs]
        row += [cell(language_chrf(run, name, lang)) for name, lang in rouge_langs]
        row += [cell(language_utility(run, n, m, lang)) for n, m, lang in utility_langs]
        if calibrated:
            found = run.summary.calibration
            numbers = (found.harmful_refusal, found.benign_over_refusal, found.gap) if found else (None,) * 3
            row += [cell(number(value)) for value in numbers]
        row += [(model.base or model.label) if model else "", (model.adapter or "") if model else ""]
        row += [run.provenance.backend or "", run.judge_name() or "", str(run.path)]
        row += [" ".join(run.other_judges())]
        if defended:
            told = None if run.defence is None else describe_defence(run.defence)
            row += (
                ["none", "", "", ""]
                if told is None
                else [told.name, told.purpose, cell(told.alpha), told.settings_text()]
            )
        writer.writerow(row)
    return buffer.getvalue()
