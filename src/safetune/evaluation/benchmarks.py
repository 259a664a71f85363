"""The benchmark registry: one short, versioned spec per benchmark, used by the runner and the CLI.

A benchmark entry is `name` (the spec's default source) or `name=source` (a local file or folder, or
a Hugging Face dataset id / save_to_disk folder). Loaders live in benchmark_files.py. Names match
case-insensitively (`jailbreak:aim` is `jailbreak:AIM`). Bump a spec's `version` whenever loading or
prompt construction changes, so that cached generations are not reused across the change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from safetune.data.records import Prompt
from safetune.errors import ConfigError, DataError
from safetune.evaluation.benchmark_files import (
    BUILTIN_OVERREFUSAL,
    LoadOptions,
    TableOptions,
    load_advbench,
    load_beavertails,
    load_cosafe,
    load_harmful_prompts,
    load_hexphi,
    load_jailbreak,
    load_mhj,
    load_multijail,
    load_overrefusal,
    load_qa,
    load_safedialbench,
    rolebench_loader,
)

__all__ = [
    "BENCHMARKS",
    "JAILBREAKS",
    "BenchmarkSpec",
    "LoadOptions",
    "TableOptions",
    "get_benchmark",
    "load_benchmark",
    "parse_entry",
]

# roleplay and qa are scored with ROUGE-L against reference answers (no judge); harmful and overrefusal
# are judged. qa (group None) feeds no summary average: it is reported on its own and per language.
Kind = Literal["roleplay", "qa", "harmful", "overrefusal"]
Metric = Literal["rouge_l", "refusal_rate", "over_refusal_rate"]
Group = Literal["rolebench_raw", "rolebench_spe", "safety", "jailbreak", "multilingual"]


@dataclass(frozen=True)
class BenchmarkSpec:
    """One benchmark: what it measures, where its data comes from, and how to load it."""

    name: str
    version: str  # bump when loading or prompt construction changes
    kind: Kind
    metric: Metric
    group: Group | None
    description: str
    source: str  # where the data comes from (paper / URL), for the docs
    licence: str
    size: str
    default_source: str | None  # used when the entry names no source; None: a source is required
    loader: Callable[[str, LoadOptions], list[Prompt]]
    tables: bool = False  # reads prompt files: eval.columns / eval.header / eval.language apply

    def load(
        self,
        source: str | None = None,
        *,
        limit: int | None = None,
        roles: list[str] | None = None,
        table: TableOptions | None = None,
    ) -> list[Prompt]:
        """The benchmark's prompts from `source` (default: `default_source`).

        `roles` keeps those roles (RoleBench only; other benchmarks ignore it); `limit` then keeps the
        first N prompts; `table` says how a prompt file's table is read (benchmarks with `tables` only,
        a ConfigError for the others). Ids are unique and stable; an empty result is an error naming
        the source.
        """
        if limit is not None and limit < 1:
            raise ConfigError(f"limit must be >= 1, got {limit}")
        table = table or TableOptions()
        if not self.tables and not table.default:
            names = (spec.name.split(":")[0] + (":*" if ":" in spec.name else "") for spec in _SPECS)
            readers = ", ".join(
                dict.fromkeys(n for n, spec in zip(names, _SPECS, strict=True) if spec.tables)
            )
            raise ConfigError(
                f"eval.columns, eval.header and eval.language apply to prompt files ({readers}), "
                f"not to {self.name}; evaluate it in a run without them"
            )
        where = source or self.default_source
        if where is None:
            raise ConfigError(
                f"benchmark {self.name!r} has no default source; give one as {self.name}=<file or folder>"
            )
        prompts = self.loader(where, LoadOptions(self.name, tuple(roles) if roles else None, table))
        seen: set[str] = set()
        for prompt in prompts:  # loaders reject duplicates with their line; this is the last guard
            if prompt.id in seen:
                raise DataError(where, None, "id", f"duplicate id {prompt.id!r}")
            seen.add(prompt.id)
        if not prompts:
            only = f" for roles {', '.join(roles)}" if roles and self.kind == "roleplay" else ""
            raise DataError(where, None, None, f"no prompts{only} (benchmark {self.name})")
        return prompts[:limit]


JAILBREAKS: tuple[str, ...] = ("AIM", "AutoDAN", "GCG", "Cipher", "CodeChameleon", "ICA")

_JAILBREAK_ABOUT = {
    "AIM": "the AIM ('always intelligent and Machiavellian') role-play jailbreak template",
    "AutoDAN": "AutoDAN (Liu et al., ICLR 2024): genetically evolved DAN-style prompts",
    "GCG": "GCG (Zou et al., 2023): harmful requests with optimised adversarial suffixes",
    "Cipher": "CipherChat (Yuan et al., ICLR 2024): requests encoded in a cipher",
    "CodeChameleon": "CodeChameleon (Lv et al., 2024): requests hidden in code-completion tasks",
    "ICA": "In-Context Attack (Wei et al., 2023): few-shot harmful demonstrations",
}


def _jailbreak(name: str) -> BenchmarkSpec:
    return BenchmarkSpec(
        name=f"jailbreak:{name}",
        version="1",
        kind="harmful",
        metric="refusal_rate",
        group="jailbreak",
        description=f"Jailbreak prompts: {_JAILBREAK_ABOUT[name]}.",
        source="prompt files as released with the SaRFT paper ({'Instances': [{'input': ...}]}), or any prompt file",
        licence="that of the prompt file used (the attacks' own repositories)",
        size="as in the file",
        default_source=None,
        loader=load_jailbreak,
        tables=True,
    )


_SPECS: tuple[BenchmarkSpec, ...] = (
    BenchmarkSpec(
        name="rolebench-raw",
        version="2",  # 2: release-file ids keep the role's case (Freddy_Krueger:1)
        kind="roleplay",
        metric="rouge_l",
        group="rolebench_raw",
        description="RoleBench general instructions answered in character; ROUGE-L against all gold answers.",
        source="RoleBench (Wang et al., RoleLLM, 2023): https://huggingface.co/datasets/ZenMoore/RoleBench",
        licence="Apache-2.0 (RoleBench); check the SaRFT per-role files' own terms",
        size="per role: the test split's instructions",
        default_source=None,
        loader=rolebench_loader("RAW"),
    ),
    BenchmarkSpec(
        name="rolebench-spe",
        version="2",  # 2: release-file ids keep the role's case (Freddy_Krueger:1)
        kind="roleplay",
        metric="rouge_l",
        group="rolebench_spe",
        description="RoleBench role-specific questions; ROUGE-L against all gold answers.",
        source="RoleBench (Wang et al., RoleLLM, 2023): https://huggingface.co/datasets/ZenMoore/RoleBench",
        licence="Apache-2.0 (RoleBench); check the SaRFT per-role files' own terms",
        size="per role: the test split's questions",
        default_source=None,
        loader=rolebench_loader("SPE"),
    ),
    BenchmarkSpec(
        name="qa",
        version="1",
        kind="qa",
        metric="rouge_l",
        group=None,
        description="Any file of benign questions with reference answers; ROUGE-L, overall and per language.",
        source="your own JSON/JSONL/CSV file or HF dataset (prompt field + reference/references/answer/output)",
        licence="that of the file",
        size="as in the file",
        default_source=None,
        loader=load_qa,
        tables=True,
    ),
    BenchmarkSpec(
        name="advbench",
        version="1",
        kind="harmful",
        metric="refusal_rate",
        group="safety",
        description="AdvBench harmful behaviours (the `goal` column).",
        source="Zou et al., 2023: https://github.com/llm-attacks/llm-attacks (harmful_behaviors.csv)",
        licence="MIT",
        size="520 prompts",
        default_source="walledai/AdvBench",
        loader=load_advbench,
        tables=True,
    ),
    BenchmarkSpec(
        name="hexphi",
        version="1",
        kind="harmful",
        metric="refusal_rate",
        group="safety",
        description="HEx-PHI harmful instructions in 11 categories (headerless category_N.csv files).",
        source="Qi et al., 2023: https://huggingface.co/datasets/LLM-Tuning-Safety/HEx-PHI (gated)",
        licence="HEx-PHI licence agreement (gated; no redistribution)",
        size="330 prompts (30 x 11 categories; the public files hold 300, category 2 withheld)",
        default_source=None,
        loader=load_hexphi,
    ),
    BenchmarkSpec(
        name="beavertails",
        version="1",
        kind="harmful",
        metric="refusal_rate",
        group="safety",
        description="BeaverTails prompts, unique, unsafe QA pairs only; --eval.limit 1000 for the usual subset.",
        source="Ji et al., 2023: https://huggingface.co/datasets/PKU-Alignment/BeaverTails",
        licence="CC BY-NC 4.0",
        size="30k_test split: ~33k QA pairs; papers use a 1000-prompt subset",
        default_source="PKU-Alignment/BeaverTails",
        loader=load_beavertails,
    ),
    BenchmarkSpec(
        name="harmful-prompts",
        version="1",
        kind="harmful",
        metric="refusal_rate",
        group=None,
        description="Any harmful-prompt file (prompt/goal/instruction/question/text/input field).",
        source="your own JSON/JSONL/CSV file or HF dataset",
        licence="that of the file",
        size="as in the file",
        default_source=None,
        loader=load_harmful_prompts,
        tables=True,
    ),
    *(_jailbreak(name) for name in JAILBREAKS),
    BenchmarkSpec(
        name="multijail",
        version="1",
        kind="harmful",
        metric="refusal_rate",
        group="multilingual",
        description="MultiJail: the same harmful prompts in 10 languages, one prompt per (row, language).",
        source="Deng et al., ICLR 2024: https://huggingface.co/datasets/DAMO-NLP-SG/MultiJail",
        licence="MIT",
        size="315 prompts x 10 languages = 3150 prompts",
        default_source="DAMO-NLP-SG/MultiJail",
        loader=load_multijail,
    ),
    BenchmarkSpec(
        name="overrefusal",
        version="1",
        kind="overrefusal",
        metric="over_refusal_rate",
        group=None,
        description="Benign prompts with risky-sounding words (built-in set, or the safe rows of XSTest).",
        source="safetune's own set (resources/overrefusal.jsonl); XSTest (Röttger et al., NAACL 2024) files",
        licence="Apache-2.0 (built-in set); XSTest: CC BY 4.0",
        size="50 prompts (built-in); XSTest: 250 safe prompts",
        default_source=BUILTIN_OVERREFUSAL,
        loader=load_overrefusal,
        tables=True,
    ),
    # Multi-turn safety sets, for evaluation only: the history as given, the last user turn the request,
    # reported per user turn k too (evaluation/turns.py). In no summary average (group None).
    BenchmarkSpec(
        name="cosafe",
        version="1",
        kind="harmful",
        metric="refusal_rate",
        group=None,
        description="CoSafe: multi-turn dialogues whose last user turn is a harmful request by coreference.",
        source="CoSafe (Yu et al., EMNLP 2024): https://github.com/ErxinYu/CoSafe-Dataset (CoSafe datasets/)",
        licence="that of the CoSafe release (check its repository)",
        size="1,400 dialogues in 14 category files",
        default_source=None,
        loader=load_cosafe,
    ),
    BenchmarkSpec(
        name="safedialbench",
        version="1",
        kind="harmful",
        metric="refusal_rate",
        group=None,
        description="SafeDialBench: multi-turn jailbreak dialogues (task, method, scene); the last user turn is judged.",
        source="SafeDialBench (Cao et al., 2025): https://github.com/drivetosouth/SafeDialBench-Dataset",
        licence="that of the SafeDialBench release (check its repository)",
        size="about 4,000 dialogues (Chinese and English)",
        default_source=None,
        loader=load_safedialbench,
    ),
    BenchmarkSpec(
        name="mhj",
        version="1",
        kind="harmful",
        metric="refusal_rate",
        group=None,
        description="MHJ: human multi-turn jailbreaks; the model answers each red-teamer turn, the last is judged.",
        source="MHJ (Li et al., 2024): https://huggingface.co/datasets/ScaleAI/mhj (gated: bring your own file)",
        licence="the MHJ terms you accept on Hugging Face; never shipped with safetune",
        size="2,912 prompts in 537 conversations",
        default_source=None,
        loader=load_mhj,
    ),
)

BENCHMARKS: dict[str, BenchmarkSpec] = {spec.name: spec for spec in _SPECS}
_BY_KEY = {name.lower(): spec for name, spec in BENCHMARKS.items()}


def get_benchmark(name: str) -> BenchmarkSpec:
    """The spec registered under `name` (case-insensitive)."""
    key = name.strip().lower()
    if key in _BY_KEY:
        return _BY_KEY[key]
    if key == "jailbreak" or key.startswith("jailbreak:"):
        known = ", ".join(f"jailbreak:{j}" for j in JAILBREAKS)
        raise ConfigError(f"unknown jailbreak benchmark {name!r}; known: {known}")
    raise ConfigError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")


def parse_entry(entry: str) -> tuple[BenchmarkSpec, str | None]:
    """`name` or `name=source` -> (spec, source or None for the default source)."""
    name, sep, source = entry.partition("=")
    if sep and not source.strip():
        raise ConfigError(f"benchmark entry {entry!r}: empty source after '='")
    return get_benchmark(name), source.strip() or None


def load_benchmark(
    entry: str, limit: int | None = None, roles: list[str] | None = None, table: TableOptions | None = None
) -> tuple[BenchmarkSpec, list[Prompt]]:
    """Parse `name[=source]` and load its prompts (see BenchmarkSpec.load)."""
    spec, source = parse_entry(entry)
    return spec, spec.load(source, limit=limit, roles=roles, table=table)
