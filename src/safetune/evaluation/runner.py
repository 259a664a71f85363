"""Staged, resumable evaluation: requests -> completions.jsonl -> judgements.jsonl -> results.json.

Between judging and results, incoherence.jsonl holds the incoherence check of every completion
(evaluation/incoherence.py; eval.incoherence=false skips it), reused like the verdicts.

Each stage appends whole lines as batches finish, so a killed run resumes where it stopped: a re-run
recomputes only what is missing. A completion is reused only for the very same request text, and a
verdict only for the very same judge key and response text, so changing the judge reuses every
completion (no generation model is loaded) and changing a benchmark file regenerates only its changed
prompts. results.json is rewritten from the stage files on every run and carries the provenance.

With a persona-fidelity judge (`fidelity.judge`, evaluation/fidelity.py) a stage after judging scores the
role-play answers in fidelity.jsonl, reused by the same judge key and the same (role, profile, prompt,
answer): a re-run scores nothing twice, and another rubric or judge model scores everything again.
With several judges (`judge.name` keyword,organism) every judge's verdicts go into judgements.jsonl; the
first judge's make the numbers, and each judged benchmark gets a judge-agreement block comparing the
others with it (evaluation/judge_agreement.py), the disagreeing items listed in disagreements.csv.
Re-running with another list of judges judges only what no listed judge has judged yet.

Under a multi-process launch (torchrun / accelerate launch, one model per device) the generation is
sharded: each rank answers every world_size-th missing request and appends its answers to its own
`completions.rank-<r>.jsonl`; the main process then merges the shards into completions.jsonl and
removes them, and judges and scores alone. Shards left by a killed launch count as completions on the
next run, whatever its number of processes.

Run as: safetune eval -m runs/villain-sarft --benchmarks advbench=data/advbench.csv --judge keyword -o runs/ev
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetune.config import RunConfig
from safetune.data.records import Prompt, RoleProfile
from safetune.errors import ConfigError
from safetune.evaluation.benchmarks import BenchmarkSpec, TableOptions, load_benchmark
from safetune.evaluation.fidelity import (
    FidelityItem,
    FidelityJudge,
    check_plan,
    fidelity_result,
    scored_kinds,
)
from safetune.evaluation.incoherence import KEY as INCOHERENCE_KEY
from safetune.evaluation.incoherence import STAGE_FILE as INCOHERENCE_FILE
from safetune.evaluation.incoherence import check as check_incoherence
from safetune.evaluation.items import Backend, GenerationRequest, Judge, JudgeItem
from safetune.evaluation.metrics import ScoredRow, benchmark_result, rouge_l, summarise
from safetune.evaluation.results import RESULTS_FILE, SCHEMA_VERSION, Results
from safetune.evaluation.stages import (
    BatchHook,
    Task,
    append_completions,
    item_hash,
    judge_pending,
    keyed_stage,
    read_rows,
    request_hash,
    short_hash,
)
from safetune.evaluation.turns import (
    TURNS_FILE,
    TurnPlan,
    generate_turns,
    plan_turns,
    turn_tables,
    turns_on_disk,
)
from safetune.evaluation.utility import UtilityPlan, plan_utility, run_utility, utility_section
from safetune.launch import barrier, is_main_process, is_multi_process, main_process_lock
from safetune.launch import rank as process_rank
from safetune.launch import shard as process_shard
from safetune.models.source import ModelSource
from safetune.provenance import base_provenance

if TYPE_CHECKING:  # translated.py imports this module: the type only
    from safetune.evaluation.defended import DefencePlan
    from safetune.evaluation.translated import TranslationStage

from safetune.storage import (
    append_jsonl,
    atomic_open,
    hash_json,
    write_json,
    write_jsonl,
)

log = logging.getLogger(__name__)

STAGE_FILES = (
    "eval.json",
    "requests.jsonl",
    "completions.jsonl",
    "translations.jsonl",  # eval.translate_to (evaluation/translated.py)
    "judgements.jsonl",
    "fidelity.jsonl",
    INCOHERENCE_FILE,
    "utility.jsonl",  # evaluation/utility.py: lm-eval's scores per --utility entry
    "results.json",
    "disagreements.csv",
    TURNS_FILE,  # evaluation/turns.py: the model's own history turns
)
FIDELITY_FILE = "fidelity.jsonl"
DISAGREEMENTS_FILE = "disagreements.csv"  # several judges: the items where a judge differs from the primary
COMPLETION_SHARDS = "completions.rank-*.jsonl"  # one per rank of a multi-process launch, until merged
# Settings that do not change what is generated: a resumed run may change them freely.
_NOT_IN_GENERATION_KEY = ("batch_size", "gpu_memory_utilization")

# ---- stage 0: tasks ----


def played_role(config: RunConfig, prompt: Prompt) -> str | None:
    """The role a prompt is answered in: its own, or, for prompts without one (harmful sets) under
    `generation.system=role`, the single role of `eval.roles` (evaluating a model in character)."""
    if prompt.role is not None:
        return prompt.role
    if config.generation.system == "role" and config.eval.roles and len(config.eval.roles) == 1:
        return config.eval.roles[0]
    return None


def _role_system(config: RunConfig, prompt: Prompt, profiles: dict[str, RoleProfile]) -> str:
    """The role prompt for `generation.system=role`: the prompt's own role, or, for prompts without one
    (harmful sets), the single role of `eval.roles` (evaluating a model in character)."""
    role = played_role(config, prompt)
    if role is None:
        raise ConfigError(
            f"generation.system=role needs a role for every prompt; {prompt.benchmark}/{prompt.id} has none "
            "(give exactly one --eval.roles to play it on every benchmark)"
        )
    from safetune.data.sources import role_key

    profile = profiles.get(role_key(role))
    if profile is None:
        raise ConfigError(f"no profile for role {role!r} in eval.profiles ({config.eval.profiles})")
    if profile.role_prompt:  # a prompt_v2.json-style profile gives the role prompt verbatim
        return profile.role_prompt
    return config.selection.role_prompt.format(name=profile.name, description=profile.description).strip()


def build_tasks(config: RunConfig) -> list[Task]:
    """Load every benchmark entry and turn its prompts into generation requests (ids are unique)."""
    from safetune.data.sources import load_profiles

    if not config.eval.benchmarks:
        if config.eval.utility:  # utility alone (lm-eval tasks): nothing to generate
            return []
        raise ConfigError(
            "no benchmarks given (--benchmarks name[=source],...; see `safetune list`; or --utility TASKS)"
        )
    system = config.generation.system
    profiles = load_profiles(config.eval.profiles) if config.eval.profiles else {}
    table = TableOptions.of(config.eval.columns, config.eval.header, config.eval.language)
    tasks: list[Task] = []
    seen: set[str] = set()
    for entry in config.eval.benchmarks:
        spec, prompts = load_benchmark(entry, limit=config.eval.limit, roles=config.eval.roles, table=table)
        if spec.name in seen:
            raise ConfigError(f"benchmark {spec.name!r} is listed twice")
        seen.add(spec.name)
        log.info("benchmark %s: %d prompts", spec.name, len(prompts))
        for prompt in prompts:
            sys_text = _role_system(config, prompt, profiles) if system == "role" else system
            request = GenerationRequest(f"{spec.name}/{prompt.id}", prompt.text, sys_text or None)
            tasks.append(Task(spec, prompt, request))
    return tasks


def _request_row(task: Task) -> dict[str, Any]:
    row = asdict(task.request)
    if not task.request.history:  # single-turn rows keep their layout
        del row["history"]
    return {**row, "benchmark": task.spec.name, "prompt": task.prompt.to_dict()}


# ---- the output folder ----


def generation_key(source: ModelSource, config: RunConfig, defence: Mapping[str, Any] | None = None) -> str:
    """What the completions depend on: the model, the generation settings and the decoding defence's
    record (absent without one, so folders made before defences existed keep their key)."""
    settings = {k: v for k, v in asdict(config.generation).items() if k not in _NOT_IN_GENERATION_KEY}
    identity = {"model": source.fingerprint, "adapter": source.adapter, "generation": settings}
    return hash_json(identity if defence is None else {**identity, "defence": dict(defence)})


def check_output(out: Path, key: str, overwrite: bool) -> None:
    """Refuse to mix completions of different models/settings in one folder (unless --overwrite)."""
    meta_path = out / "eval.json"
    if meta_path.exists() and not overwrite:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("generation_key") != key:
            raise ConfigError(
                f"{out} holds an evaluation of another model or generation settings "
                f"({meta.get('model', {}).get('label')!r}); use another --out or pass --overwrite"
            )


def start_output(out: Path, key: str, source: ModelSource, overwrite: bool) -> None:
    """The folder's eval.json, once everything is checked; --overwrite first removes this evaluation's
    own files and nothing else."""
    if overwrite:
        for name in STAGE_FILES:
            (out / name).unlink(missing_ok=True)
        for path in out.glob(COMPLETION_SHARDS):
            path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "eval.json", {"generation_key": key, "model": source.to_dict()})


# ---- stage 1: completions ----


def completions_on_disk(tasks: Sequence[Task], out: Path) -> dict[str, dict[str, Any]]:
    """The completions in the folder that answer these very requests (by id and request text), from
    completions.jsonl and any shard a multi-process launch left unmerged."""
    wanted = {t.request.id: request_hash(t.request) for t in tasks}
    rows: dict[str, dict[str, Any]] = {}
    for path in (out / "completions.jsonl", *sorted(out.glob(COMPLETION_SHARDS))):
        rows.update(read_rows(path, lambda row: wanted.get(row["id"]) == row.get("request_hash")))
    return rows


def completion_shard(out: Path, rank: int) -> Path:
    return out / f"completions.rank-{rank}.jsonl"


def merge_completion_shards(out: Path) -> None:
    """The main process, once every rank has generated: the shards' rows appended to completions.jsonl,
    then the shards removed (a kill in between leaves rows twice, which read as once)."""
    shards = sorted(out.glob(COMPLETION_SHARDS))
    for path in shards:
        append_jsonl(out / "completions.jsonl", read_rows(path, lambda row: True).values())
    for path in shards:
        path.unlink()


def generate_missing(
    tasks: Sequence[Task],
    out: Path,
    done: dict[str, dict[str, Any]],
    backend: Backend | None,
    hook: BatchHook | None = None,
) -> tuple[dict[str, dict[str, Any]], int]:
    """Completions for every task: `done` (those on disk) plus newly generated ones; `backend` is None
    only when nothing is missing. Under a multi-process launch: this rank's share of the missing ones,
    into its shard file."""
    path = completion_shard(out, process_rank()) if is_multi_process() else out / "completions.jsonl"
    missing = missing_requests(tasks, done)
    log.info("completions: %d on disk, %d to generate", len(done), len(missing))
    if not missing:
        return done, 0
    assert backend is not None  # _evaluate builds one whenever a completion is missing
    done = dict(done)
    return done, append_completions(missing, backend, path, done, hook)


def missing_requests(tasks: Sequence[Task], done: dict[str, dict[str, Any]]) -> list[GenerationRequest]:
    """The requests without a completion on disk that this process answers (a multi-process launch:
    every world_size-th one from its rank on)."""
    return process_shard([t.request for t in tasks if t.request.id not in done])


# ---- stage 2: judgements ----


def judge_missing(
    tasks: Sequence[Task],
    completions: dict[str, dict[str, Any]],
    out: Path,
    judge: Judge,
    hook: BatchHook | None = None,
) -> tuple[dict[str, dict[str, Any]], int]:
    """Verdicts for every judged task's completion, reusing those of the same judge and response."""
    judged = [t for t in tasks if t.judged]
    items = [
        JudgeItem(
            t.request.id,
            t.prompt.text,
            completions[t.request.id]["text"],
            t.prompt.language,
            t.request.history,  # a turn-k request's conversation before the harmful prompt
        )
        for t in judged
    ]
    hashes = {item.id: item_hash(item) for item in items}
    return judge_pending(items, hashes, out / "judgements.jsonl", judge, hook)


# ---- stage 2b: incoherence ----


def check_missing(
    tasks: Sequence[Task], completions: dict[str, dict[str, Any]], out: Path, hook: BatchHook | None = None
) -> tuple[dict[str, dict[str, Any]], int]:
    """The incoherence verdict (evaluation/incoherence.py) of every completion, appended to
    incoherence.jsonl; those of the same check key, prompt and response already in it are reused."""
    path = out / INCOHERENCE_FILE
    hashes = {
        t.request.id: short_hash(t.prompt.text, completions[t.request.id]["text"], t.prompt.language)
        for t in tasks
    }
    done = read_rows(
        path, lambda row: row.get("key") == INCOHERENCE_KEY and hashes.get(row["id"]) == row.get("hash")
    )
    pending = [t for t in tasks if t.request.id not in done]
    rows = []
    for task in pending:
        found = check_incoherence(
            task.prompt.text, completions[task.request.id]["text"], task.prompt.language
        )
        rows.append(
            {
                "id": task.request.id,
                **found.to_dict(),
                "key": INCOHERENCE_KEY,
                "hash": hashes[task.request.id],
            }
        )
    if rows:
        append_jsonl(path, rows)  # cheap (no model): one append for the whole stage
        done.update((row["id"], row) for row in rows)
        if hook:
            hook("incoherence", len(rows))
    log.info("incoherence: %d on disk, %d checked", len(done) - len(rows), len(rows))
    return done, len(rows)


# ---- stage 2c: persona fidelity (evaluation/fidelity.py) ----


@dataclass(frozen=True)
class FidelityTask:
    """A task whose answer the fidelity judge scores: the role it is played in and the role's profile."""

    task: Task
    role: str
    profile: str | None


def plan_fidelity(tasks: Sequence[Task], config: RunConfig) -> list[FidelityTask]:
    """The tasks the fidelity judge scores (none when it is off), checked before any file is written:
    the settings against the run, and a role for every scored prompt."""
    from safetune.data.sources import load_profiles, role_key

    check_plan(config.fidelity, config.generation.system, [t.spec.kind for t in tasks])
    kinds = scored_kinds(config.fidelity)
    if not kinds:
        return []
    profiles = load_profiles(config.eval.profiles) if config.eval.profiles else {}
    planned: list[FidelityTask] = []
    for task in tasks:
        if task.spec.kind not in kinds:
            continue
        role = played_role(config, task.prompt)
        if role is None:
            raise ConfigError(
                f"persona fidelity: {task.request.id} has no role to be in (give exactly one --eval.roles "
                "with --system role)"
            )
        found = profiles.get(role_key(role))
        profile = None if found is None else (found.role_prompt or found.description or None)
        planned.append(FidelityTask(task, role, profile))
    return planned


def fidelity_missing(
    planned: Sequence[FidelityTask],
    completions: dict[str, dict[str, Any]],
    out: Path,
    judge: FidelityJudge,
    hook: BatchHook | None = None,
) -> tuple[dict[str, dict[str, Any]], int]:
    """Fidelity scores of every planned task's answer, appended to fidelity.jsonl batch by batch; those
    of the same judge key and content (role, profile, prompt, answer) already in it are reused."""
    items = [
        FidelityItem(
            p.task.request.id, p.role, p.profile, p.task.prompt.text, completions[p.task.request.id]["text"]
        )
        for p in planned
    ]
    hashes = {item.id: item.content_hash() for item in items}
    key = judge.key()
    return keyed_stage(
        out / FIDELITY_FILE,
        items,
        hashes,
        key,
        "content_hash",
        judge.score,
        hook=lambda count: hook("fidelity", count) if hook else None,
        what=f"persona fidelity ({key}): %d on disk, %d to score",
        missing=f"fidelity judge {key} returned no score for {{n}} answers (e.g. {{first}})",
    )


def add_fidelity(
    benchmarks: dict[str, dict[str, Any]],
    planned: Sequence[FidelityTask],
    scores: dict[str, dict[str, Any]],
    config: RunConfig,
) -> None:
    """Each scored benchmark's `fidelity` block (mean 1-5 score, CI, in-character %, per role)."""
    rows: dict[str, list[tuple[str | None, int | None]]] = {}
    for p in planned:
        score = scores[p.task.request.id].get("score")
        rows.setdefault(p.task.spec.name, []).append((p.role, score if isinstance(score, int) else None))
    for name, scored in rows.items():
        benchmarks[name]["fidelity"] = fidelity_result(scored, config.eval.bootstrap, config.eval.seed)


# ---- stage 3: results ----


def _scored_row(
    task: Task, completion: dict[str, Any], verdict: dict[str, Any] | None, flag: dict[str, Any] | None = None
) -> ScoredRow:
    prompt = task.prompt
    incoherent = None if flag is None else bool(flag["incoherent"])
    if task.spec.metric == "rouge_l":
        if not prompt.references:
            raise ConfigError(f"{task.request.id}: a ROUGE-L prompt without a reference answer")
        return ScoredRow(
            prompt.id,
            prompt.role,
            prompt.language,
            score=rouge_l(completion["text"], prompt.references),
            incoherent=incoherent,
            text=completion["text"],
            references=tuple(prompt.references),
        )
    assert verdict is not None  # judge_missing guarantees a verdict for every judged task
    return ScoredRow(
        prompt.id,
        prompt.role,
        prompt.language,
        label=verdict["label"],
        refused=verdict["refused"],
        incoherent=incoherent,
    )


def score_benchmarks(
    tasks: Sequence[Task],
    completions: dict[str, dict[str, Any]],
    verdicts: dict[str, dict[str, Any]],
    config: RunConfig,
    flags: Mapping[str, dict[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per-benchmark results; `flags` (request id -> incoherence row) when the check ran (eval.incoherence)."""
    by_benchmark: dict[str, list[Task]] = {}
    for task in tasks:
        by_benchmark.setdefault(task.spec.name, []).append(task)
    results: dict[str, dict[str, Any]] = {}
    for name, group in by_benchmark.items():
        spec = group[0].spec
        rows = [
            _scored_row(
                t,
                completions[t.request.id],
                verdicts.get(t.request.id),
                None if flags is None else flags[t.request.id],
            )
            for t in group
        ]
        result = benchmark_result(spec.metric, rows, config.eval.bootstrap, config.eval.seed)
        header = {k: getattr(spec, k) for k in ("name", "version", "kind", "metric", "group")}
        results[name] = {**header, "source": _source_of(config, spec), **result}
    return results


def _source_of(config: RunConfig, spec: BenchmarkSpec) -> str | None:
    for entry in config.eval.benchmarks:
        name, _, source = entry.partition("=")
        if name.strip().lower() == spec.name.lower():
            return source.strip() or spec.default_source
    return spec.default_source


def _judge_record(judge: Judge) -> dict[str, str]:
    return {"name": judge.name, "version": judge.version, "key": judge.key()}


def _provenance(
    config: RunConfig,
    source: ModelSource,
    judges: Sequence[dict[str, str]],
    counts: dict[str, int],
    utility: UtilityPlan | None = None,
    defence: DefencePlan | None = None,
) -> dict[str, Any]:
    sections = ("generation", "judge", "eval", *(("defence",) if defence is not None else ()))
    return {
        **base_provenance(),
        "model": source.to_dict(),
        "backend": config.generation.backend,
        "generation": asdict(config.generation),
        **({"defence": defence.record} if defence is not None else {}),
        "judge": judges[0] if judges else None,
        **({"judges": list(judges)} if judges else {}),
        "eval": asdict(config.eval),
        "incoherence": INCOHERENCE_KEY if config.eval.incoherence else None,
        "config_hash": hash_json({k: config.to_dict()[k] for k in sections}),
        "seed": config.generation.seed,
        "counts": counts,
        **({"utility": utility.provenance()} if utility is not None else {}),
    }


def judge_all(
    tasks: Sequence[Task],
    completions: dict[str, dict[str, Any]],
    out: Path,
    judges: list[Judge],
    hook: BatchHook | None = None,
    translation: TranslationStage | None = None,
) -> tuple[dict[str, dict[str, dict[str, Any]]], int, dict[str, dict[str, Any]] | None, int]:
    """Every judge's verdicts (judge name -> item id -> verdict row), the primary judge first; how many
    were judged now; under translate-then-judge with eval.judge_on=both the primary judge's verdicts on
    the original answers (else None); and the texts translated now. Every judge reads the same
    translations (translated once, then read from translations.jsonl). Empties `judges` as it goes: a
    model judge's weights are freed before the next judge loads its own."""
    verdicts: dict[str, dict[str, dict[str, Any]]] = {}
    judged = translated_now = 0
    original: dict[str, dict[str, Any]] | None = None
    while judges:
        judge = judges.pop(0)
        if translation is None:
            verdicts[judge.name], count = judge_missing(tasks, completions, out, judge, hook)
        else:
            verdicts[judge.name], other, count, now = translation.judge(tasks, completions, out, judge, hook)
            translated_now += now
            if original is None:  # the primary judge's: only its numbers are recorded twice
                original = other
        judged += count
        del judge
    return verdicts, judged, original, translated_now


def add_judge_agreement(
    tasks: Sequence[Task],
    completions: dict[str, dict[str, Any]],
    verdicts: dict[str, dict[str, dict[str, Any]]],
    keys: dict[str, str],
    benchmarks: dict[str, dict[str, Any]],
    out: Path,
    flags: Mapping[str, dict[str, Any]] | None = None,
) -> None:
    """With several judges: each judged benchmark's judge-agreement block, and disagreements.csv (the
    items where a secondary judge decided otherwise than the primary, every judge's verdict on them).
    With one judge: no block, and a disagreements.csv left by an earlier run with several is removed."""
    path = out / DISAGREEMENTS_FILE
    if len(verdicts) < 2:
        path.unlink(missing_ok=True)
        return
    from safetune.evaluation.judge_agreement import benchmark_agreement

    names = list(verdicts)
    rows: list[dict[str, Any]] = []
    for name, result in benchmarks.items():
        group = [t for t in tasks if t.spec.name == name and t.judged]
        if not group:
            continue
        ids = [t.request.id for t in group]
        block, disagreeing = benchmark_agreement(result["metric"], ids, verdicts, keys, flags)
        result["judge_agreement"] = block
        found = {judge: set(items) for judge, items in disagreeing.items()}
        differ = {item: [judge for judge, items in found.items() if item in items] for item in ids}
        for task in group:
            item = task.request.id
            if differ[item]:
                rows.append(_disagreement_row(task, completions[item]["text"], names, verdicts, differ[item]))
    _write_disagreements(path, names, rows)


def _disagreement_row(
    task: Task,
    response: str,
    names: Sequence[str],
    verdicts: dict[str, dict[str, dict[str, Any]]],
    differ: Sequence[str],
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "benchmark": task.spec.name,
        "id": task.prompt.id,
        "language": task.prompt.language or "",
        "differs_from_primary": ",".join(differ),
        "prompt": task.prompt.text,
        "response": response,
    }
    for name in names:
        verdict = verdicts[name][task.request.id]
        refused = verdict["refused"]
        row[f"{name} label"] = verdict["label"]
        row[f"{name} refused"] = "" if refused is None else str(refused).lower()
    return row


def _write_disagreements(path: Path, names: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    columns = ["benchmark", "id", "language", "differs_from_primary", "prompt", "response"]
    columns += [f"{name} {what}" for name in names for what in ("label", "refused")]
    with atomic_open(path) as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _plan_fidelity(tasks: Sequence[Task], config: RunConfig, plan: TurnPlan | None) -> list[FidelityTask]:
    """The answers the fidelity judge scores. Playing a character (eval.turns), every judged answer,
    single-turn and at each k, is scored against the character's prompt: whether the model stays in
    character while it refuses or answers is the per-turn figure."""
    if plan is None or plan.character is None:
        return plan_fidelity(tasks, config)
    if config.fidelity.judge == "none":
        return []
    return [FidelityTask(t, plan.character.name, t.request.system) for t in tasks if t.judged]


def _turn_section(
    plan: TurnPlan,
    tasks: Sequence[Task],
    completions: dict[str, dict[str, Any]],
    verdicts: dict[str, dict[str, Any]],
    benchmarks: dict[str, dict[str, Any]],
    scores: dict[str, dict[str, Any]],
    config: RunConfig,
    flags: Mapping[str, dict[str, Any]] | None,
) -> dict[str, Any]:
    """results.json's `turns` (evaluation/turns.py: per benchmark, refusal against k)."""
    wanted = {item.task.request.id for item in plan.items if item.task.judged}
    rows = {
        t.request.id: _scored_row(
            t,
            completions[t.request.id],
            verdicts.get(t.request.id),
            None if flags is None else flags[t.request.id],
        )
        for t in tasks
        if t.request.id in wanted
    }
    fidelity = None
    if scores:
        fidelity = {
            ident: row.get("score") if isinstance(row.get("score"), int) else None
            for ident, row in scores.items()
        }
    return turn_tables(plan, rows, benchmarks, config, fidelity)


# ---- the whole run ----


def _judge_needed(tasks: Iterable[Task]) -> bool:
    return any(t.judged for t in tasks)


def evaluate(
    config: RunConfig,
    overwrite: bool = False,
    hook: BatchHook | None = None,
    make_backend: Callable[[ModelSource], Backend] | None = None,
) -> Path:
    """Run (or resume) one evaluation into `config.eval.output_dir`; returns the results.json path.

    Holds the folder's lock throughout: a second evaluation into it stops at once (busy) instead of
    generating and judging everything a second time. Under a multi-process launch the main process
    holds it, every rank generates its share, and the main process alone writes results.json.
    """
    with main_process_lock(Path(config.eval.output_dir)):
        return _evaluate(config, overwrite, hook, make_backend)


def _evaluate(
    config: RunConfig,
    overwrite: bool,
    hook: BatchHook | None,
    make_backend: Callable[[ModelSource], Backend] | None,
) -> Path:
    from safetune.evaluation.backends import backend_spec
    from safetune.evaluation.defended import build_defended_backend, plan_defence
    from safetune.evaluation.fidelity import build_fidelity_judge, record
    from safetune.evaluation.judges.registry import build_judges
    from safetune.models.loading import resolve_model

    if not config.eval.model:
        raise ConfigError("--model (eval.model) is required")
    out = Path(config.eval.output_dir)
    # Everything is checked before the folder's first file: the benchmarks, the model, the generation
    # settings and every judge (built now: API keys, model folders and labels; model judges load their
    # weights only when they first judge, after generation has freed the generation model).
    tasks = build_tasks(config)
    spec = backend_spec(config.generation)
    defence = plan_defence(config)  # a decoding defence: its settings and backend (hf only)
    # Safety at turn k (evaluation/turns.py): the character, the context conversations and every k.
    turn_plan = plan_turns(config, tasks)
    if turn_plan is not None:
        if is_multi_process():
            raise ConfigError(
                "multi-turn requests run in one process: run this eval without torchrun / accelerate launch"
            )
        tasks = turn_plan.single + [item.task for item in turn_plan.items]  # histories not yet resolved
    if is_multi_process() and not spec.shards:
        raise ConfigError(
            f"generation.backend={spec.name} runs in one process (it spreads over the GPUs itself); "
            "run this eval without torchrun / accelerate launch"
        )
    judges = build_judges(config.judge) if _judge_needed(tasks) else []
    judge_records = [_judge_record(judge) for judge in judges]
    # Translate-then-judge (eval.translate_to): the translator and its language pairs checked now too.
    from safetune.evaluation.translated import plan_translation

    translation = plan_translation(config, tasks) if judges else None
    fidelity_tasks = _plan_fidelity(tasks, config, turn_plan)
    fidelity_judge = build_fidelity_judge(config.fidelity) if fidelity_tasks else None
    source = resolve_model(config.eval.model, None)
    key = generation_key(source, config, None if defence is None else defence.record)
    check_output(out, key, overwrite)
    # lm-eval's tasks (datasets included) are loaded now: an unknown task stops the run before any file.
    # The main process alone scores utility, after the others have generated their shards.
    utility = plan_utility(config, source) if config.eval.utility and is_main_process() else None
    # The model's own history turns on disk; while one is missing the final requests are not known yet.
    filled = {} if overwrite or turn_plan is None else turns_on_disk(out)
    turns_pending = turn_plan is not None and bool(turn_plan.pending(filled))
    if turn_plan is not None and not turns_pending:
        tasks = turn_plan.tasks(filled)
    done = {} if overwrite else completions_on_disk(tasks, out)
    # A missing completion needs the generation model: loaded (and so checked) before anything is
    # written; when every completion is on disk (re-judging), none is loaded.
    build = make_backend or (
        (lambda src: spec.build(src, config.generation))
        if defence is None
        else (lambda src: build_defended_backend(src, defence, config.generation))
    )
    backend = build(source) if turns_pending or missing_requests(tasks, done) else None

    if is_main_process():
        start_output(out, key, source, overwrite)
    turns_now = 0
    if turn_plan is not None and turns_pending:
        filled, turns_now = generate_turns(turn_plan, out, filled, backend, hook)
        tasks = turn_plan.tasks(filled)
        done = completions_on_disk(tasks, out)
        fidelity_tasks = _plan_fidelity(tasks, config, turn_plan)  # their requests now hold the histories
    if is_main_process():
        write_jsonl(out / "requests.jsonl", (_request_row(t) for t in tasks))
    barrier()  # --overwrite has cleared the folder before any rank writes its shard
    completions, generated = generate_missing(tasks, out, done, backend, hook)
    del backend  # the generation model goes before a model judge loads its own
    # Judging and scoring are the main process's: the others are done once their shard is on disk.
    barrier()
    if not is_main_process():
        return out / RESULTS_FILE
    merge_completion_shards(out)  # this launch's shards, or those a killed launch left
    if is_multi_process():
        completions = completions_on_disk(tasks, out)
        generated = len(completions) - len(done)
    verdicts, judged, other, translated_now = judge_all(tasks, completions, out, judges, hook, translation)
    # After the judges: a model judge's weights are gone before the model is loaded again for lm-eval.
    utility_scores, utility_now = run_utility(utility, source, config, out, hook) if utility else ({}, 0)

    scores, scored = (
        fidelity_missing(fidelity_tasks, completions, out, fidelity_judge, hook)
        if fidelity_judge
        else ({}, 0)
    )

    flags, checked = check_missing(tasks, completions, out, hook) if config.eval.incoherence else (None, 0)

    # The primary judge (the first) makes every number; the others are compared with it.
    primary = next(iter(verdicts.values()), {})
    # The requests put at turn k are reported in their own table, not in their benchmark's numbers.
    expanded = set() if turn_plan is None else turn_plan.expanded
    benchmarks = score_benchmarks(
        [t for t in tasks if t.request.id not in expanded], completions, primary, config, flags
    )
    keys = {record["name"]: record["key"] for record in judge_records}
    add_judge_agreement(tasks, completions, verdicts, keys, benchmarks, out, flags)
    counts = {"requests": len(tasks), "generated_now": generated, "judged_now": judged}
    if utility is not None:
        counts["utility_now"] = utility_now
    provenance = _provenance(config, source, judge_records, counts, utility, defence)
    if translation is not None:
        secondary = None if other is None else score_benchmarks(tasks, completions, other, config, flags)
        translation.annotate(benchmarks, secondary)
        provenance["translation"] = translation.record(translated_now)
    if fidelity_judge is not None:
        add_fidelity(
            benchmarks, [p for p in fidelity_tasks if p.task.request.id not in expanded], scores, config
        )
        counts["fidelity_scored_now"] = scored
        provenance["fidelity"] = record(fidelity_judge, config.fidelity)
    if flags is not None:
        counts["incoherence_checked_now"] = checked
    turns_section = None
    if turn_plan is not None:
        counts["turns_generated_now"] = turns_now
        provenance["turns"] = turn_plan.record()
        turns_section = _turn_section(
            turn_plan, tasks, completions, primary, benchmarks, scores, config, flags
        )
    results = {
        "schema_version": SCHEMA_VERSION,
        "provenance": provenance,
        "benchmarks": benchmarks,
        "summary": summarise(benchmarks),
    }
    if utility is not None:
        results["utility"] = utility_section(utility, utility_scores)
    if turns_section is not None:
        results["turns"] = turns_section
    path = out / RESULTS_FILE
    # Typed, and so checked, on the way out: the file is in exactly the layout every reader loads.
    Results.from_dict(results, path).save(path)
    return path
