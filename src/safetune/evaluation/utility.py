"""Utility through lm-evaluation-harness: `safetune eval --utility mmlu,gsm8k,mgsm,m_mmlu`.

lm-eval (0.4.x) scores the very model the evaluation generates with: `models.loading.load_for_generation`
loads it (a hub id at its revision, a model folder, a full fine-tune's run folder, or a LoRA run folder's
adapter merged into its base; safetensors only, trust_remote_code off unless generation.trust_remote_code)
with generation.precision on this process's device, and lm-eval's `HFLM` wraps the loaded object
(`HFLM(pretrained=model, tokenizer=tokenizer)`). One loading path for generation and utility: the
adapter, the revision and the weight checks are resolved once, in safetune, not a second time by
lm-eval's own `peft=` / `revision=` arguments.

A `--utility` entry is an lm-eval task, group or tag name (`safetune` adds one alias: `mgsm` is lm-eval's
`mgsm_direct` tag), or a task YAML file (its folder joins lm-eval's include_path; `eval.utility_include`
adds folders). Every entry is resolved and its datasets loaded before the evaluation writes its first
file: an unknown name is one line naming it (exit 2), before any generation.

Staged like the other stages: each entry's scores are one line of `utility.jsonl` in the eval folder,
keyed by the model's fingerprint, the entry, lm-eval's version, the version and config hash of every
task it runs, the precision and the settings (limit, few-shot, chat template, seed). A re-run reuses a
line of the same key, and a changed setting or task recomputes only the entries it changes (batch size is
not in the key: it changes the speed, not what is computed).

What results.json gets (`utility_section`), per entry: lm-eval's metric values ("acc,none" is metric
`acc` under filter `none`, lm-eval's own keys and scales: fractions 0..1 for acc and exact_match) with
their stderr; for a group, lm-eval's aggregate when the group defines one, else (a tag such as
`m_mmlu`, `mgsm_direct`) the unweighted mean over its tasks, the per-language average the multilingual
papers report, with stderr sqrt(sum se_i^2) / k; and `by_language` when every task of the entry is named
`<entry>_<language code>` (mgsm_direct_bn, m_mmlu_ar, ...).
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetune.config import RunConfig
from safetune.errors import ConfigError
from safetune.models.source import ModelSource
from safetune.storage import append_jsonl, hash_json, read_keyed_jsonl

log = logging.getLogger(__name__)

UTILITY_FILE = "utility.jsonl"
INSTALL_HINT = "pip install 'safetune[utility]' (or: pip install 'lm-eval>=0.4.13,<0.5')"
# Names the issue and the papers use that lm-eval spells otherwise: MGSM's direct-answer prompts.
ALIASES: Mapping[str, str] = {"mgsm": "mgsm_direct"}
# lm-eval's default bootstrap resamples for the stderr of metrics without a closed form (not a setting:
# the stderr of acc / exact_match is closed-form; a fixed number keeps the cache key honest).
BOOTSTRAP_ITERS = 100_000
# A task's suffix that reads as a language code: "bn", "zh", "yue", "zh-cn", "pt_br".
_LANGUAGE = re.compile(r"[a-z]{2,3}(?:[-_][a-z]{2,4})?")


def lm_eval_version() -> str:
    """The installed lm-eval's version; ConfigError saying how to install it when it is missing."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"eval.utility needs lm-evaluation-harness, which is not installed: {INSTALL_HINT}"
        ) from None
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lm_eval")
    except PackageNotFoundError:
        return str(getattr(__import__("lm_eval"), "__version__", "unknown"))


# ---- planning: every entry resolved and loaded before the first file ----


@dataclass
class UtilityTask:
    """One `--utility` entry: what lm-eval loads for it and what identifies its scores."""

    name: str  # the entry as results.json names it
    lm_eval_task: str  # the task / group / tag name lm-eval knows it by
    spec: str  # what lm-eval loads: that name, or the YAML file
    built: list[Any]  # lm-eval's Task / Group objects
    tasks: dict[str, dict[str, Any]]  # leaf task -> {"version", "config_hash"}
    groups: dict[str, str]  # group -> version
    key: str = ""

    def record(self) -> dict[str, Any]:
        return {"lm_eval_task": self.lm_eval_task, "tasks": self.tasks, "groups": self.groups}


@dataclass
class UtilityPlan:
    tasks: list[UtilityTask]
    lm_eval_version: str
    settings: dict[str, Any]
    manager: Any = field(repr=False)

    def provenance(self) -> dict[str, Any]:
        """results.json provenance.utility: lm-eval's version, the settings, each task's version/hash."""
        return {
            "lm_eval_version": self.lm_eval_version,
            "settings": self.settings,
            "tasks": {t.name: t.record() for t in self.tasks},
        }


def utility_settings(config: RunConfig) -> dict[str, Any]:
    """The settings that change the scores (all in the cache key)."""
    ev = config.eval
    return {
        "limit": ev.utility_limit,
        "num_fewshot": ev.utility_fewshot,
        "apply_chat_template": ev.utility_chat_template,
        "seed": ev.utility_seed,
        "bootstrap_iters": BOOTSTRAP_ITERS,
        "precision": config.generation.precision,
    }


def _yaml_entry(entry: str) -> Path | None:
    """The task YAML file an entry names (None for a task name); ConfigError when it is missing."""
    path = Path(entry).expanduser()
    if path.suffix.lower() in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"eval.utility: task file {entry!r} not found (expected an lm-eval task YAML)")
        return path.resolve()
    return None


def _canonical(value: Any) -> Any:
    """A task config as plain JSON for its hash: functions by their qualified name (their repr holds a
    memory address that changes every run)."""
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if callable(value):
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', type(value).__name__)}"
    return f"<{type(value).__module__}.{type(value).__qualname__}>"


def _describe(built: Sequence[Any]) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    from lm_eval.api.group import Group

    tasks: dict[str, dict[str, Any]] = {}
    groups: dict[str, str] = {}

    def add_task(task: Any) -> None:
        version = task.VERSION
        tasks[task.task_name] = {
            "version": version if isinstance(version, int | float | str) else None,
            "config_hash": hash_json(_canonical(task.dump_config()))[:16],
        }

    for item in built:
        if isinstance(item, Group):
            groups[item.name] = str(item.version)
            for sub in item.get_all_groups():
                groups[sub.name] = str(sub.version)
            for task in item.get_all_tasks():
                add_task(task)
        else:
            add_task(item)
    return dict(sorted(tasks.items())), dict(sorted(groups.items()))


def plan_utility(config: RunConfig, source: ModelSource) -> UtilityPlan:
    """Resolve and load every `eval.utility` entry (datasets included) and key each one; ConfigError for
    an unknown task (naming it, with close names), a missing file or a task lm-eval cannot load."""
    version = lm_eval_version()
    from lm_eval.tasks import TaskManager

    entries = [e.strip() for e in config.eval.utility if e.strip()]
    if len(set(entries)) != len(entries):
        raise ConfigError(f"eval.utility lists a task twice: {', '.join(entries)}")
    files = {entry: _yaml_entry(entry) for entry in entries}
    include: list[str] = []
    for folder in config.eval.utility_include:
        if not Path(folder).expanduser().is_dir():
            raise ConfigError(f"eval.utility_include: folder {folder!r} not found")
        include.append(str(Path(folder).expanduser().resolve()))
    include += [str(path.parent) for path in files.values() if path is not None]
    # lm-eval's own task index (thousands of YAML files, seconds to scan) only when a name is not one of
    # the local folders' tasks.
    folders = list(dict.fromkeys(include)) or None
    names = [ALIASES.get(e, e) for e, path in files.items() if path is None]
    manager = TaskManager(include_path=folders, include_defaults=False) if folders else None
    if manager is None or any(name not in manager.all_tasks for name in names):
        manager = TaskManager(include_path=folders, include_defaults=True)
    settings = utility_settings(config)
    tasks: list[UtilityTask] = []
    for entry, path in files.items():
        if path is None:
            lm_name = ALIASES.get(entry, entry)
            if lm_name not in manager.all_tasks:
                close = difflib.get_close_matches(lm_name, manager.all_tasks, n=3)
                hint = f" (did you mean: {', '.join(close)}?)" if close else " (see: lm-eval --tasks list)"
                raise ConfigError(f"eval.utility: unknown lm-eval task {entry!r}{hint}")
            spec = lm_name
        else:
            from lm_eval.tasks._index import TaskIndex

            found = TaskIndex.entry_from_path(path)
            if found is None:
                raise ConfigError(f"{path}: not an lm-eval task YAML (no `task:` or `group:` key)")
            lm_name, spec = found.name, str(path)
        try:
            loaded = manager.load([spec])
        except Exception as err:  # lm-eval and datasets raise many kinds; any of them stops the run here
            raise ConfigError(f"eval.utility: cannot load lm-eval task {entry!r}: {err}") from err
        built = [*loaded.get("groups", {}).values(), *loaded["tasks"].values()]
        top = [b for b in built if getattr(b, "name", getattr(b, "task_name", None)) == lm_name] or built
        leaf_versions, group_versions = _describe(top)
        name = entry if path is None else lm_name
        task = UtilityTask(name, lm_name, spec, top, leaf_versions, group_versions)
        task.key = hash_json(
            {
                "lm_eval": version,
                "model": source.fingerprint,
                "adapter": source.adapter,
                **task.record(),
                "settings": settings,
            }
        )
        tasks.append(task)
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ConfigError(f"eval.utility: two entries name the same task ({', '.join(names)})")
    return UtilityPlan(tasks, version, settings, manager)


# ---- running ----


def utility_on_disk(plan: UtilityPlan, out: Path) -> dict[str, dict[str, Any]]:
    """The rows of utility.jsonl that hold these very entries' scores (same key); the last one wins."""
    keys = {t.name: t.key for t in plan.tasks}
    return read_keyed_jsonl(out / UTILITY_FILE, "id", lambda row: keys.get(row["id"]) == row.get("key"))


def _jsonable(value: Any) -> Any:
    """lm-eval's results as plain JSON (numpy scalars to numbers, NaN to null)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


_KEPT = ("results", "groups", "group_subtasks", "versions", "n-shot", "higher_is_better", "n-samples")


def run_utility(
    plan: UtilityPlan,
    source: ModelSource,
    config: RunConfig,
    out: Path,
    hook: Callable[[str, int], None] | None = None,
    load_model: Callable[[], tuple[Any, Any]] | None = None,
) -> tuple[dict[str, dict[str, Any]], int]:
    """Every entry's row: those on disk, and the others scored now (the model loaded once, only when one
    is missing), each appended to utility.jsonl as soon as it is done."""
    done = utility_on_disk(plan, out)
    pending = [t for t in plan.tasks if t.name not in done]
    log.info("utility: %d tasks on disk, %d to score", len(done), len(pending))
    if not pending:
        return done, 0
    from lm_eval import evaluator
    from lm_eval.models.huggingface import HFLM

    if load_model is None:
        from safetune.models.loading import default_device, load_for_generation, resolve_dtype

        gen = config.generation
        model, tokenizer = load_for_generation(
            source, resolve_dtype(gen.precision), default_device(), gen.trust_remote_code
        )
    else:
        model, tokenizer = load_model()
    ev = config.eval
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=ev.utility_batch_size)
    count = 0
    for task in pending:
        log.info("utility: %s", task.name)
        # lm-eval asks git for the working folder's commit and lets git print "fatal: not a git
        # repository" to the console; safetune records its own commit in the provenance.
        with _no_git_probe(evaluator):
            result = evaluator.simple_evaluate(
                lm,
                tasks=task.built,
                num_fewshot=ev.utility_fewshot,
                limit=ev.utility_limit,
                bootstrap_iters=BOOTSTRAP_ITERS,
                log_samples=False,
                apply_chat_template=ev.utility_chat_template,
                fewshot_as_multiturn=ev.utility_chat_template,
                task_manager=plan.manager,
                random_seed=ev.utility_seed,
                numpy_random_seed=ev.utility_seed,
                torch_random_seed=ev.utility_seed,
                fewshot_random_seed=ev.utility_seed,
            )
        if result is None:  # only another rank of a distributed lm-eval gets None; this is one process
            raise ConfigError(f"lm-eval returned no results for {task.name!r}")
        row = {
            "id": task.name,
            "key": task.key,
            **task.record(),
            "lm_eval_version": plan.lm_eval_version,
            "lm_eval": _jsonable({k: result[k] for k in _KEPT if k in result}),  # type: ignore[literal-required]
        }
        append_jsonl(out / UTILITY_FILE, [row])
        done[task.name] = row
        count += 1
        if hook:
            hook("utility", count)
    return done, count


@contextlib.contextmanager
def _no_git_probe(evaluator: Any) -> Iterator[None]:
    original = evaluator.get_git_commit_hash
    evaluator.get_git_commit_hash = lambda: None
    try:
        yield
    finally:
        evaluator.get_git_commit_hash = original


# ---- results.json's utility section ----


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def metric_values(entry: Mapping[str, Any]) -> dict[str, dict[str, float | None]]:
    """lm-eval's "metric,filter" values of one task or group with their stderr, in lm-eval's order."""
    metrics: dict[str, dict[str, float | None]] = {}
    for key, value in entry.items():
        if "," not in key:
            continue
        metric, _, filter_key = key.partition(",")
        if metric.endswith("_stderr") or _number(value) is None:
            continue
        metrics[key] = {
            "value": _number(value),
            "stderr": _number(entry.get(f"{metric}_stderr,{filter_key}")),
        }
    return metrics


def _mean_metrics(entries: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float | None]]:
    """The unweighted mean over tasks of every metric all of them have; stderr sqrt(sum se^2) / k."""
    per_task = [metric_values(e) for e in entries]
    if not per_task:
        return {}
    shared = [k for k in per_task[0] if all(k in m for m in per_task[1:])]
    k = len(per_task)
    out: dict[str, dict[str, float | None]] = {}
    for key in shared:
        values = [m[key]["value"] for m in per_task]
        errors = [m[key]["stderr"] for m in per_task]
        mean = sum(v for v in values if v is not None) / k
        stderr = None
        if all(e is not None for e in errors):
            stderr = math.sqrt(sum(e * e for e in errors if e is not None)) / k
        out[key] = {"value": round(mean, 6), "stderr": None if stderr is None else round(stderr, 6)}
    return out


def _languages(prefix: str, tasks: Sequence[str]) -> dict[str, str] | None:
    """{language: task} when every task is `<prefix>_<language code>` (and there are several)."""
    found: dict[str, str] = {}
    for task in tasks:
        suffix = task[len(prefix) + 1 :] if task.startswith(prefix + "_") else ""
        if not _LANGUAGE.fullmatch(suffix):
            return None
        found[suffix] = task
    return dict(sorted(found.items())) if len(found) > 1 else None


def _effective_n(lm: Mapping[str, Any], task: str) -> int | None:
    samples = (lm.get("n-samples") or {}).get(task)
    n = samples.get("effective") if isinstance(samples, Mapping) else None
    return n if isinstance(n, int) and not isinstance(n, bool) else None


def utility_entry(row: Mapping[str, Any]) -> dict[str, Any]:
    """One entry of results.json's utility section from its utility.jsonl row."""
    lm = row.get("lm_eval") or {}
    scores = {**(lm.get("results") or {}), **(lm.get("groups") or {})}
    name = str(row["lm_eval_task"])
    tasks = sorted(row.get("tasks") or {})
    own = scores.get(name)
    own_metrics = metric_values(own) if isinstance(own, Mapping) else {}
    if own_metrics:
        metrics, aggregate = own_metrics, "lm-eval"
    else:  # a tag, or a group without an aggregate: the mean over its tasks
        metrics = _mean_metrics([scores[t] for t in tasks if isinstance(scores.get(t), Mapping)])
        aggregate = "mean of tasks" if len(tasks) > 1 else "lm-eval"
    counts = [_effective_n(lm, t) for t in tasks]
    versions = lm.get("versions") or {}
    version = versions.get(name) if name in versions else (row.get("groups") or {}).get(name)
    n_shot = (lm.get("n-shot") or {}).get(name)
    if n_shot is None and tasks:
        shots = {(lm.get("n-shot") or {}).get(t) for t in tasks}
        n_shot = shots.pop() if len(shots) == 1 else None
    by_language: dict[str, Any] = {}
    for language, task in (_languages(name, tasks) or {}).items():
        entry = scores.get(task)
        if isinstance(entry, Mapping):
            by_language[language] = {
                "task": task,
                "n": _effective_n(lm, task),
                "metrics": metric_values(entry),
            }
    return {
        "lm_eval_task": name,
        "version": None if version is None else str(version),
        "n": sum(c for c in counts if c is not None) if counts and None not in counts else None,
        "n_shot": n_shot if isinstance(n_shot, int) and not isinstance(n_shot, bool) else None,
        "aggregate": aggregate,
        "primary": next(iter(metrics), None),
        "metrics": metrics,
        "by_language": by_language,
    }


def utility_section(plan: UtilityPlan, rows: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """results.json's utility section, in the order of `eval.utility`."""
    return {t.name: utility_entry(rows[t.name]) for t in plan.tasks}
