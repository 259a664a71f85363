"""`safetune assess`: the per-role safety risk study, staged and resumable like `eval`.

    plan       everything checked before the study's first file: the model, the data and its roles,
               the profiles, the methods (role-data methods of the registry), every benchmark (the
               role-play tests for every role), the judge, the executor, and the study's identity
               against the one an existing study folder holds
    start      study.json (identity, roles) and config.yaml (the resolved config every unit reads)
    selection  one `safetune select` over every role of the data (RDS cache), shared by every unit:
               selection/selection.jsonl
    units      role x method: fine-tune through `training/run.py train` (flags from the shared
               selection), evaluate through `evaluation/runner.py evaluate`, unit.json written last;
               plus the base model: its safety evaluated once (role ""), its role-play per role
    aggregate  results.csv, summary.json, report.md and the plots (assess/report.py)

A unit whose unit.json exists is never run again; a unit killed mid-way resumes through train's own
--resume (its checkpoints, `train.save_steps`) and eval's append-only stage files.

Study folder:
    study.json, config.yaml
    selection/           selection.jsonl, selection_stats.json
    units/<role>/<method>/run/    the fine-tune (a `safetune train` run folder)
    units/<role>/<method>/eval/   its evaluation (a `safetune eval` folder)
    units/<role>/<method>/unit.json
    units/<role>/base/...          the base model's role-play (and, in character, safety) for the role
    base/eval/, base/unit.json     the base model's safety, once
    results.csv, summary.json, report.md, plots/
"""

from __future__ import annotations

import copy
import json
import logging
import os
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetune import __version__
from safetune.assess.aggregate import BASE
from safetune.assess.executors import Executor, Unit, build_executor
from safetune.assess.layout import (
    CONFIG_FILE,
    DEFENCE_PREFIX,
    SELECTION_DIR,
    STUDY_FILE,
    UNIT_FILE,
    StudyPlan,
    unit_folder,
)
from safetune.config import RunConfig, dump_config, load_config
from safetune.data.sources import role_key
from safetune.errors import ConfigError
from safetune.storage import atomic_open, hash_json, output_lock, write_json

if TYPE_CHECKING:
    from safetune.evaluation.results import JudgeAgreement

log = logging.getLogger(__name__)

STUDY_VERSION = 1
# Keys of the sections that do not change a study's results: where things are written, how they are
# batched or run, and the study's role list (a study may grow).
_NOT_IDENTITY = {
    "train": {"output_dir", "num_threads", "report_to", "logging_steps", "save_total_limit"},
    "generation": {"batch_size", "gpu_memory_utilization"},
    "eval": {"model", "output_dir", "roles"},
    "assess": {
        "roles",
        "executor",
        "ray_address",
        "gpus_per_unit",
        "cpus_per_unit",
        "ray_local_cpus",
        "ray_local_gpus",
        "ray_retries",
        "ray_worker_logs",
        "top_flagged",
        "margin_quantiles",
    },
    "selection": {"batch_size"},
    "judge": {"batch_size", "device", "max_workers"},
    "fidelity": {"batch_size", "device", "max_workers"},
}
_IDENTITY_SECTIONS = (
    "model",
    "data",
    "chat",
    "selection",
    "method",
    "train",
    "generation",
    "judge",
    "eval",
    "fidelity",
    "translate",
    "assess",
)


# ---- identity ----


def study_identity(
    config: RunConfig, fingerprint: str, defence: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """What a study's results are a function of, as flat `section.key` values plus the model's content
    fingerprint. Roles are not in it: `--roles` may grow a study.

    A decoding defence enters as its resolved record (`defence.name`, `defence.alpha`, the prompts byte
    for byte, the expert's fingerprint: evaluation/defended.py), not as the `defence` section: a default
    written out and left unset are one study. Without a defence no `defence.*` key is there, so studies
    made before defences existed keep their identity."""
    sections = config.to_dict()
    flat: dict[str, Any] = {}
    for name in _IDENTITY_SECTIONS:
        for key, value in sections[name].items():
            if key not in _NOT_IDENTITY.get(name, set()):
                flat[f"{name}.{key}"] = value
    flat["model.fingerprint"] = fingerprint
    for key, value in (defence or {}).items():
        flat[f"{DEFENCE_PREFIX}{key}"] = value
    return flat


def check_identity(study: Path, identity: Mapping[str, Any]) -> dict[str, Any] | None:
    """The study.json already in `study` (None for a new study); ConfigError naming the keys that differ
    when it is another study's."""
    path = study / STUDY_FILE
    if not path.exists():
        if (study / "units").exists() or (study / SELECTION_DIR).exists():
            raise ConfigError(f"{study} holds study files but no {STUDY_FILE}: use another --out")
        return None
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        old = stored["identity"]
        if not isinstance(old, dict):
            raise TypeError
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
        raise ConfigError(f"{path}: not a study file written by safetune assess") from None
    differ = sorted(
        k for k in set(old) | set(identity) if old.get(k, "<unset>") != identity.get(k, "<unset>")
    )
    name = f"{DEFENCE_PREFIX}name"
    if name in differ:
        # Another defence (or none): one item naming both, not every setting of each.
        differ = [k for k in differ if not k.startswith(DEFENCE_PREFIX)]
        differ.append(
            f"defence: the study's {old.get(name, 'none')}, this run's {identity.get(name, 'none')}"
        )
    if differ:
        shown = ", ".join(differ[:8]) + (f" and {len(differ) - 8} more" if len(differ) > 8 else "")
        raise ConfigError(f"{study} holds another study (differs in {shown}); use another --out")
    return dict(stored)


# ---- the plan: everything checked before the first file ----


def roleplay_entries(config: RunConfig) -> list[str]:
    """assess.roleplay with data.path as the source of a bare name."""
    entries = []
    for entry in config.assess.roleplay:
        name, _, source = entry.partition("=")
        entries.append(f"{name.strip()}={source.strip() or config.data.path}")
    return entries


def safety_in_character(config: RunConfig) -> bool:
    """With `generation.system=role` every prompt, harmful ones too, is answered in character: the base
    model's safety is then measured per role, not once."""
    return config.generation.system == "role"


def base_units(study: str, roles: Sequence[str], config: RunConfig) -> list[Unit]:
    units = [] if safety_in_character(config) else [Unit(study, "", BASE)]
    if config.assess.roleplay or safety_in_character(config):
        units += [Unit(study, role, BASE) for role in roles]
    return units


def executor_of(config: RunConfig) -> Executor:
    """The study's executor from the assess section (settings left unset: the executor's defaults; a
    ray setting with the sequential executor is refused)."""
    a = config.assess
    return build_executor(
        a.executor,
        address=a.ray_address,
        gpus_per_unit=a.gpus_per_unit,
        cpus_per_unit=a.cpus_per_unit,
        local_cpus=a.ray_local_cpus,
        local_gpus=a.ray_local_gpus,
        retries=a.ray_retries,
        worker_logs=a.ray_worker_logs,
    )


def plan_study(config: RunConfig, out: Path) -> StudyPlan:
    """Check everything a study needs; raises ConfigError / DataError naming what is wrong."""
    from safetune.assess.data import load_study_data
    from safetune.evaluation.judges.registry import build_judges
    from safetune.evaluation.runner import build_tasks
    from safetune.methods.registry import get_method
    from safetune.models.loading import check_model_folder, model_fingerprint
    from safetune.storage import cache_root

    a = config.assess
    if not config.model.name:
        raise ConfigError("--model (model.name) is required")
    if not config.data.path:
        raise ConfigError("--data (data.path) is required: the role data, e.g. the authors' role folders")
    if config.data.role is not None:
        raise ConfigError("data.role: a study picks its roles with --roles (assess.roles), not data.role")
    for method in a.methods:
        spec = get_method(method)
        if spec.data_kind != "role":
            raise ConfigError(f"assess.methods: {method} trains on {spec.data_kind} data, not role-play data")
    executor_of(config)
    check_model_folder(config.model.name)
    if not config.eval.benchmarks:
        raise ConfigError("no safety benchmarks (--benchmarks, eval.benchmarks: e.g. advbench=FILE)")
    data = load_study_data(config)
    if data.conversations:
        check_conversation_study(config)
    profiles = data.profiles
    data_roles: dict[str, str] = {}
    for role in data.roles:
        data_roles.setdefault(role_key(role), role)
    stored = _stored_study(out)
    wanted = list(stored["roles"]) if stored else []
    wanted += list(a.roles) if a.roles is not None else list(data_roles.values())
    roles: dict[str, str] = {}
    for role in wanted:
        key = role_key(role)
        if key not in data_roles:
            known = ", ".join(sorted(data_roles.values())[:10])
            raise ConfigError(f"assess.roles: no role {role!r} in {config.data.path} (roles: {known})")
        roles.setdefault(key, data_roles[key])
    missing = [r for r in roles.values() if role_key(r) not in profiles]
    if config.data.profiles and missing:
        log.warning("no profile for %s: role prompt = name only, and no trait scores", ", ".join(missing))
    # Every benchmark loads, the role-play tests hold every role, and the judge builds: now, not in a unit.
    # (in character, a harmful prompt is answered as one role: the safety probe takes the first)
    tasks = build_tasks(
        unit_eval_config(config, "", "", list(roles.values())[:1], safety=True, roleplay=False)
    )
    if config.assess.roleplay:
        build_tasks(unit_eval_config(config, "", "", list(roles.values()), safety=False, roleplay=True))
    if not any(t.spec.kind == "harmful" for t in tasks):
        raise ConfigError("eval.benchmarks has no harmful benchmark: a study measures refusal")
    build_judges(config.judge)  # every judge of --judge a,b, the primary first
    defence = study_defence(config)
    fingerprint = model_fingerprint(config.model.name, config.model.revision, cache_root(config.cache_dir))
    identity = study_identity(config, fingerprint, defence)
    check_identity(out, identity)
    study = str(out.resolve())
    role_list = tuple(roles.values())
    units = base_units(study, role_list, config)
    units += [Unit(study, role, method) for role in role_list for method in a.methods]
    return StudyPlan(config, out, role_list, tuple(data_roles.values()), identity, tuple(units))


def check_conversation_study(config: RunConfig) -> None:
    """What a study on conversations cannot do, refused in one line each: the role-play tests read a
    role's single-turn test file beside its training data, and in-character answers need each role's
    role prompt from data.profiles, which conversations do not have (their character is their card or
    system prompt)."""
    bare = [e for e in config.assess.roleplay if not e.partition("=")[2].strip()]
    if bare:
        raise ConfigError(
            f"assess.roleplay {bare[0]}: a bare name reads the role-play tests from --data, which holds "
            "conversations; give name=FILE or --roleplay none"
        )
    if safety_in_character(config):
        raise ConfigError(
            "generation.system=role: a study on conversations has no per-role prompts to answer in "
            "character (measure safety at turn k in character with safetune eval --turns)"
        )


def study_defence(config: RunConfig) -> dict[str, Any] | None:
    """The decoding defence every unit's evaluation runs under (`--defence`), checked as `safetune eval`
    checks it (settings, backend), and its record; None without one.

    SafeDecoding's expert must come from the study's base model: the base model's units decode with the
    expert's LoRA on that model, and every fine-tune (a LoRA on it, or a full fine-tune from it) needs an
    expert of the same base. The engine refuses another base when a unit loads its models; here it is
    refused before the study's first file instead of failing every unit."""
    from safetune.evaluation.defended import plan_defence

    plan = plan_defence(config)
    if plan is None:
        return None
    expert = plan.record.get("expert_model")
    if isinstance(expert, dict) and not same_model(str(expert.get("base")), config.model.name):
        raise ConfigError(
            f"defence.expert {plan.record.get('expert')}: the safety expert was trained on "
            f"{expert.get('base')!r}, but this study's base model is {config.model.name!r} (every unit decodes "
            "with it): train the expert on the study's model (safetune safety-expert -m MODEL)"
        )
    return dict(plan.record)


def same_model(a: str, b: str) -> bool:
    """Whether two model names are one model: the same text, or two paths to one folder."""
    if a == b:
        return True
    first, second = Path(a).expanduser(), Path(b).expanduser()
    return first.is_dir() and second.is_dir() and first.resolve() == second.resolve()


def _stored_study(out: Path) -> dict[str, Any] | None:
    path = out / STUDY_FILE
    if not path.exists():
        return None
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError(f"{path}: not a study file written by safetune assess") from None
    if not isinstance(stored, dict) or not isinstance(stored.get("roles"), list):
        raise ConfigError(f"{path}: not a study file written by safetune assess")
    return stored


# ---- the configs of a unit's stages ----


def unit_train_config(config: RunConfig, study: Path, role: str, method: str) -> RunConfig:
    """The study's config for one fine-tune: the role's data, the method, the shared selection's flags."""
    from safetune.methods.registry import get_method

    c = copy.deepcopy(config)
    c.data.role = role
    c.method.name = method
    if not get_method(method).uses_beta:
        c.method.beta = None  # the study's beta is for the methods that have one (no warning per unit)
    c.selection.variant = "external"
    c.selection.flags_file = str(study / SELECTION_DIR / "selection.jsonl")
    c.train.output_dir = str(unit_folder(study, role, method) / "run")
    return c


def unit_eval_config(
    config: RunConfig,
    model: str,
    out: str,
    roles: Sequence[str],
    *,
    safety: bool,
    roleplay: bool,
) -> RunConfig:
    """The study's eval settings (benchmarks, judge, generation passed through unchanged) for one model:
    the safety benchmarks and/or the role-play tests, of `roles`."""
    c = copy.deepcopy(config)
    c.eval.model = model
    c.eval.output_dir = out
    c.eval.benchmarks = [
        *(config.eval.benchmarks if safety else []),
        *(roleplay_entries(config) if roleplay else []),
    ]
    c.eval.roles = list(roles) or None
    if safety_in_character(config) and config.data.profiles and not c.eval.profiles:
        c.eval.profiles = config.data.profiles  # the role prompts of in-character answers
    return c


# ---- one unit (the executors' work function) ----


def run_unit(unit: Unit) -> None:
    """Run one unit to its unit.json, reading everything from the study folder (so that it can run in
    another process or on another machine). A finished unit is left as it is."""
    from safetune.evaluation.runner import evaluate

    study = Path(unit.study)
    folder = unit_folder(study, unit.role, unit.method)
    if (folder / UNIT_FILE).exists():
        return
    config = load_config(study / CONFIG_FILE)
    start = time.perf_counter()
    run_dir: Path | None = None
    if unit.method == BASE:
        model = config.model.name
        safety = unit.role == "" or safety_in_character(config)
        roleplay = unit.role != "" and bool(config.assess.roleplay)
    else:
        run_dir = _fine_tune(config, study, unit)
        model, safety, roleplay = str(run_dir), True, bool(config.assess.roleplay)
    roles = [unit.role] if unit.role else []
    ev = unit_eval_config(config, model, str(folder / "eval"), roles, safety=safety, roleplay=roleplay)
    results = evaluate(ev)
    row = unit_result(results, unit.role)
    record = {
        **row,
        "kind": "fine-tune" if run_dir else "base",
        "model": model,
        "run": None if run_dir is None else str(run_dir.relative_to(study)),
        "eval": str((folder / "eval").relative_to(study)),
        "train": None if run_dir is None else _train_summary(run_dir),
        "judge": _judge_of(results),
        "defence": _defence_of(results),  # the decoding defence this unit's answers were generated under
        "seconds": round(time.perf_counter() - start, 1),
        "worker": {"host": socket.gethostname(), "pid": os.getpid()},  # where it ran (any executor)
        "safetune_version": __version__,
    }
    write_json(folder / UNIT_FILE, record)  # last: its presence is what "finished" means


def _fine_tune(config: RunConfig, study: Path, unit: Unit) -> Path:
    from safetune.training.common import last_checkpoint
    from safetune.training.run import train

    c = unit_train_config(config, study, unit.role, unit.method)
    out = Path(c.train.output_dir)
    if (out / "run.json").exists():  # trained before the unit was killed during its evaluation
        return out
    resume = last_checkpoint(out / "checkpoints") is not None or (out / "final").exists()
    return train(c, resume=resume)


def _train_summary(run_dir: Path) -> dict[str, Any]:
    run = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    metrics = run.get("metrics", {})
    return {
        "method": run.get("method"),
        "beta": run.get("beta"),
        "global_step": metrics.get("global_step"),
        "train_loss": metrics.get("train_loss"),
        "selection": run.get("selection"),
    }


def _judge_of(results_path: Path) -> Any:
    provenance = json.loads(results_path.read_text(encoding="utf-8")).get("provenance", {})
    return provenance.get("judges", provenance.get("judge"))


def _defence_of(results_path: Path) -> Any:
    return json.loads(results_path.read_text(encoding="utf-8")).get("provenance", {}).get("defence")


def _mean(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def unit_result(results_path: Path, role: str) -> dict[str, Any]:
    """A unit's numbers from its evaluation's results.json: refusal over the harmful benchmarks, the
    role's role-play score, incoherent answers, over-refusal."""
    from safetune.evaluation.results import load

    results = load(results_path)
    refusal: dict[str, float | None] = {}
    roleplay: dict[str, float | None] = {}
    incoherent: list[int] = []
    checked = False
    over: list[float | None] = []
    agreements = []
    for name, bench in results.benchmarks.items():
        if bench.kind == "harmful":
            refusal[name] = bench.value
            if bench.n_incoherent is not None:
                checked = True
                incoherent.append(bench.n_incoherent)
            if bench.judge_agreement is not None:
                agreements.append(bench.judge_agreement)
        elif bench.kind == "overrefusal":
            over.append(bench.value)
        elif bench.kind == "roleplay":
            group = next((g for r, g in bench.by_role.items() if role_key(r) == role_key(role)), None)
            roleplay[name] = None if group is None else group.value
    return {
        "role": role,
        "refusal": _mean(refusal.values()) if refusal else None,
        "refusal_by_benchmark": refusal,
        "roleplay": _mean(roleplay.values()) if roleplay else None,
        "roleplay_by_benchmark": roleplay,
        "incoherent": sum(incoherent) if checked else None,
        "over_refusal": _mean(over) if over else None,
        **judge_agreement(agreements),
    }


def judge_agreement(blocks: Sequence[JudgeAgreement]) -> dict[str, Any]:
    """The first secondary judge against the primary one over a unit's harmful benchmarks: percent
    agreement pooled over the items both judges decided (sum of agreement x n / sum of n, which is the
    share of agreeing items), and the n-weighted mean of the benchmarks' kappas (results.json keeps no
    confusion counts to pool kappa exactly; with one harmful benchmark it is that benchmark's kappa).
    All None with one judge."""
    none: dict[str, Any] = {
        "judge_primary": None,
        "judge_secondary": None,
        "agreement_n": None,
        "agreement": None,
        "kappa": None,
    }
    first = next((b for b in blocks if b.judges), None)
    if first is None:
        return none
    secondary = next(iter(first.judges))
    found = [b.judges[secondary] for b in blocks if secondary in b.judges]
    n = sum(c.n for c in found)
    agreed = [(c.agreement, c.n) for c in found if c.agreement is not None and c.n > 0]
    kappas = [(c.kappa, c.n) for c in found if c.kappa is not None and c.n > 0]
    return {
        "judge_primary": first.primary,
        "judge_secondary": secondary,
        "agreement_n": n,
        "agreement": sum(a * k for a, k in agreed) / sum(k for _, k in agreed) if agreed else None,
        "kappa": sum(a * k for a, k in kappas) / sum(k for _, k in kappas) if kappas else None,
    }


# ---- the whole study ----


@dataclass(frozen=True)
class StudyRun:
    study: Path
    roles: tuple[str, ...]
    ran: tuple[str, ...]  # the ids of the units this call ran
    skipped: tuple[str, ...]  # finished before this call
    report: Path


def run_study(config: RunConfig, out: Path) -> StudyRun:
    """Run (or resume, or grow) the study in `out`; returns what ran and where the report is."""
    with output_lock(out):
        plan = plan_study(config, out)
        _start(plan)
        _select(plan)
        todo = [u for u in plan.units if not _finished(u, plan)]
        done = [u.id for u in plan.units if u not in todo]
        log.info("study %s: %d units finished, %d to run", out, len(done), len(todo))
        executor = executor_of(config)
        ran = []
        for unit in executor.run(todo, run_unit):
            ran.append(unit.id)
            log.info("unit %s finished (%d of %d)", unit.id, len(ran), len(todo))
        from safetune.assess.report import write_outputs

        report = write_outputs(plan)
    return StudyRun(out, plan.roles, tuple(ran), tuple(done), report)


def _finished(unit: Unit, plan: StudyPlan) -> bool:
    return (unit_folder(plan.study, unit.role, unit.method) / UNIT_FILE).exists()


def _start(plan: StudyPlan) -> None:
    """study.json and config.yaml: the identity, and the study's roles (grown when --roles adds some)."""
    c = copy.deepcopy(plan.config)
    c.assess.roles = list(plan.roles)
    if c.defence.expert:
        # Units read this file from wherever they run (a Ray worker need not share this cwd): the expert
        # as the identity records it, an absolute path.
        c.defence.expert = str(Path(c.defence.expert).expanduser().resolve())
    stored = _stored_study(plan.study)
    record = {
        "study_version": STUDY_VERSION,
        "safetune_version": __version__,
        "model": c.model.name,
        "data": c.data.path,
        "profiles": c.data.profiles,
        "methods": list(c.assess.methods),
        "roles": list(plan.roles),
        "identity_hash": hash_json(plan.identity),
        "identity": plan.identity,
        "created": stored.get("created") if stored else time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(plan.study / STUDY_FILE, record)
    with atomic_open(plan.study / CONFIG_FILE) as handle:
        handle.write(dump_config(c))


def _select(plan: StudyPlan) -> None:
    """The shared selection over every role of the data (one scoring pass, RDS-cached): redone only when
    a role of the study is missing from it (a role folder added to the data since)."""
    from safetune.selection import run_selection

    folder = plan.study / SELECTION_DIR
    stats_path = folder / "selection_stats.json"
    if stats_path.exists():
        roles = json.loads(stats_path.read_text(encoding="utf-8")).get("roles", {})
        if all(any(role_key(r) == role_key(role) for r in roles) for role in plan.roles):
            return
    c = copy.deepcopy(plan.config)
    c.data.role = None
    stats = run_selection(c, folder)
    log.info(
        "selection: %d of %d examples flagged over %d roles",
        stats["flagged"],
        stats["count"],
        len(stats["roles"]),
    )
