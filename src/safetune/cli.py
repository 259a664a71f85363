"""The `safetune` command line.

Every command that takes a config accepts `--config FILE.yaml` and any number of `--section.key=value`
overrides (sections: data, chat, selection, method, train, generation, judge, eval; the top-level key:
`--cache_dir=DIR`); the named flags are shortcuts for the most used overrides. Bad input exits with
code 2 and one line naming the file, record and field. Every command takes -v/--verbose and -q/--quiet
(safetune/console.py); results go to stdout, progress and logs to stderr.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

# typer vendors its own click (typer._click): the real click's exceptions are other classes.
from typer._click.exceptions import UsageError
from typer.core import TyperGroup

from safetune.config import MAX_SEED
from safetune.errors import SafetuneError, one_line
from safetune.methods.registry import METHODS, methods_by_data_kind
from safetune.selection_variants import VARIANTS


def _usage_error(err: UsageError) -> typer.Exit:
    """A command-line mistake (unknown command, bad option value) as one `error:` line and exit code 2,
    like every other bad input, instead of typer's usage box."""
    where = err.ctx.command_path if err.ctx is not None else "safetune"
    print(f"error: {one_line(err.format_message())} (see: {where} --help)", file=sys.stderr)
    return typer.Exit(2)


class _Commands(TyperGroup):
    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().make_context(*args, **kwargs)
        except UsageError as err:
            if type(err).__name__ == "NoArgsIsHelpError":  # `safetune` alone prints the help
                raise
            raise _usage_error(err) from None

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except UsageError as err:
            raise _usage_error(err) from None


app = typer.Typer(
    cls=_Commands,
    name="safetune",
    help="Fine-tune chat LLMs without losing their safety (SaRFT, reward-gap MPO), and measure the cost.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True}
F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger("safetune")


def _setup_console(verbose: bool, quiet: bool) -> None:
    """Log level, warnings and progress bars for this command (safetune/console.py)."""
    from safetune import console

    try:
        level = console.verbosity(verbose, quiet)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--verbose / --quiet") from None
    console.setup(level)


def user_errors(func: F) -> F:
    """Turn SafetuneError (bad data, bad config) into one line on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except SafetuneError as err:
            print(f"error: {one_line(str(err))}", file=sys.stderr)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _overrides(ctx: typer.Context, shortcuts: dict[str, Any]) -> list[str]:
    """Shortcut flags first, then the raw `--section.key=value` arguments (which win)."""
    from safetune.errors import ConfigError

    items = [f"{key}={_yaml_value(value)}" for key, value in shortcuts.items() if value is not None]
    extra = list(ctx.args)
    for arg in extra:
        if not arg.startswith("--") or "=" not in arg:
            raise ConfigError(f"unexpected argument {arg!r}: overrides are written --section.key=value")
    return items + extra


def _yaml_value(value: Any) -> str:
    import json

    return json.dumps(value) if isinstance(value, str | bool | list) else str(value)


ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file.", exists=True)]
ModelOpt = Annotated[str | None, typer.Option("--model", "-m", help="Hub id or local model folder.")]
DataOpt = Annotated[str | None, typer.Option("--data", help="Training data: file, folder or HF dataset id.")]
RoleOpt = Annotated[str | None, typer.Option("--role", help="Keep only this role.")]
ProfilesOpt = Annotated[
    str | None, typer.Option("--profiles", help="JSON file: role name -> profile description.")
]
VerboseOpt = Annotated[
    bool, typer.Option("--verbose", "-v", help="Debug lines, the libraries' own messages and progress bars.")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Warnings, errors and the result only.")]


@app.command(context_settings=EXTRA)
@user_errors
def select(
    ctx: typer.Context,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for selection.jsonl and selection_stats.json.")
    ],
    config: ConfigOpt = None,
    model: ModelOpt = None,
    data: DataOpt = None,
    role: RoleOpt = None,
    profiles: ProfilesOpt = None,
    variant: Annotated[
        str | None, typer.Option(help=" | ".join(VARIANTS) + " (what each does: safetune list)")
    ] = None,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Flag the risky training examples with RDS (reference-model implicit rewards), cached.

    Run as: safetune select -m MODEL --data roles/ --role "Freddy Krueger" --profiles profiles.json -o runs/sel
    """
    from safetune.config import load_config
    from safetune.data.chat import ChatRenderer
    from safetune.data.readers import InvalidRecords
    from safetune.data.sources import load_data
    from safetune.models.loading import (
        check_model_folder,
        default_device,
        load_causal_lm,
        load_tokenizer,
        resolve_dtype,
    )
    from safetune.selection import select as run_select
    from safetune.selection import write_selection
    from safetune.storage import output_lock

    _setup_console(verbose, quiet)
    shortcuts = {"train.model": model, "data.path": data, "data.role": role, "data.profiles": profiles}
    cfg = load_config(config, _overrides(ctx, shortcuts | {"selection.variant": variant}))
    if not cfg.train.model:
        from safetune.errors import ConfigError

        raise ConfigError("--model (train.model) is required")
    t, c = cfg.train, cfg.chat
    check_model_folder(t.model)  # even when the scores come from the cache and the model stays unloaded
    tokenizer = load_tokenizer(t.model, t.revision, t.trust_remote_code)
    renderer = ChatRenderer.from_config(tokenizer, c, authors_empty_system=True)
    invalid = InvalidRecords(cfg.data.invalid)
    examples, role_profiles = load_data(cfg, invalid)

    def loader() -> Any:
        log.info("loading %s to score %d examples", t.model, len(examples))
        model_ = load_causal_lm(t.model, t.revision, resolve_dtype(t.precision), t.trust_remote_code)
        return model_.to(default_device()).eval()

    # Two selections into one folder: the second stops at once (busy) instead of redoing the work.
    with output_lock(out):
        flags, scores, stats = run_select(cfg, renderer, examples, role_profiles, loader)
        stats["invalid_records"] = invalid.report()
        write_selection(out, examples, flags, scores, stats)
    print(
        f"{stats['flagged']} of {stats['count']} examples flagged "
        f"({100 * stats['flag_rate']:.1f}%, variant {stats['variant']}) -> {out / 'selection.jsonl'}"
    )


@app.command(context_settings=EXTRA)
@user_errors
def train(
    ctx: typer.Context,
    config: ConfigOpt = None,
    model: ModelOpt = None,
    data: DataOpt = None,
    role: RoleOpt = None,
    profiles: ProfilesOpt = None,
    method: Annotated[
        str | None,
        typer.Option(
            help="; ".join(
                f"{kind} data: {' | '.join(names)}" for kind, names in methods_by_data_kind().items()
            )
            + " (what each does: safetune list)."
        ),
    ] = None,
    selection: Annotated[
        str | None, typer.Option(help=" | ".join(VARIANTS) + " (what each does: safetune list)")
    ] = None,
    selection_file: Annotated[
        str | None,
        typer.Option(help="Flags from a file (selection.jsonl of `safetune select`, or JSON {id: 0|1})."),
    ] = None,
    finetune: Annotated[str | None, typer.Option(help="lora | full")] = None,
    beta: Annotated[
        float | None, typer.Option(help="SaRFT: KL weight; MPO: target-gap scale; DPO family: their beta.")
    ] = None,
    out: Annotated[str | None, typer.Option("--out", "-o", help="Run folder (train.output_dir).")] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue from the last checkpoint in the run folder.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace a finished run in the run folder.")] = False,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Fine-tune: SaRFT / SFT on role-play data, reward-gap MPO on parallel preference pairs, or a
    DPO-family baseline on preference pairs; LoRA or full; resumable.

    Run as: safetune train -m MODEL --data roles/ --role "Freddy Krueger" --profiles p.json --method sarft -o runs/x
    or:     safetune train -m MODEL --data pairs.json --method mpo -o runs/mpo
    """
    from safetune.config import load_config
    from safetune.training.run import train as run_train

    _setup_console(verbose, quiet)
    shortcuts: dict[str, Any] = {
        "train.model": model,
        "data.path": data,
        "data.role": role,
        "data.profiles": profiles,
        "method.name": method,
        "selection.variant": "external" if selection_file else selection,
        "selection.flags_file": selection_file,
        "train.finetune": finetune,
        "method.beta": beta,
        "train.output_dir": out,
    }
    cfg = load_config(config, _overrides(ctx, shortcuts))
    run_dir = run_train(cfg, resume=resume, overwrite=overwrite)
    print(f"done: weights in {run_dir / 'final'}, model card {run_dir / 'README.md'}")


@app.command("eval", context_settings=EXTRA)
@user_errors
def eval_(
    ctx: typer.Context,
    config: ConfigOpt = None,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Hub id, model folder, or `safetune train` run folder."),
    ] = None,
    benchmarks: Annotated[
        str | None,
        typer.Option(help="Comma-separated name[=source] entries, e.g. advbench=data/advbench.csv."),
    ] = None,
    judge: Annotated[
        str | None, typer.Option(help="keyword | classifier | guard | llm | organism (see: safetune list)")
    ] = None,
    judge_model: Annotated[
        str | None, typer.Option(help="Judge model (classifier / guard): hub id or folder.")
    ] = None,
    judge_preset: Annotated[
        str | None, typer.Option(help="Judge preset, e.g. longformer-action, llama-guard.")
    ] = None,
    backend: Annotated[str | None, typer.Option(help="Generation backend: hf | vllm | mock")] = None,
    system: Annotated[
        str | None, typer.Option(help='System prompt for every request; "role" = each role\'s role prompt.')
    ] = None,
    profiles: ProfilesOpt = None,
    limit: Annotated[int | None, typer.Option(help="Keep the first N prompts of each benchmark.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Generation batch size.")] = None,
    out: Annotated[
        str | None, typer.Option("--out", "-o", help="Evaluation folder (eval.output_dir).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Discard this folder's previous evaluation files.")] = False,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Generate, judge and score a model on benchmarks; staged and resumable (re-run to resume).

    Run as: safetune eval -m runs/villain-sarft --benchmarks advbench=advbench.csv,overrefusal -o runs/ev
    """
    from safetune.config import load_config
    from safetune.evaluation.runner import evaluate

    _setup_console(verbose, quiet)
    shortcuts: dict[str, Any] = {
        "eval.model": model,
        "eval.benchmarks": benchmarks.split(",") if benchmarks else None,
        "judge.name": judge,
        "judge.model": judge_model,
        "judge.preset": judge_preset,
        "generation.backend": backend,
        "generation.system": system,
        "eval.profiles": profiles,
        "eval.limit": limit,
        "generation.batch_size": batch_size,
        "eval.output_dir": out,
    }
    cfg = load_config(config, _overrides(ctx, shortcuts))
    results_path = evaluate(cfg, overwrite=overwrite)
    _print_summary(results_path)


def _print_summary(results_path: Path) -> None:
    from rich.table import Table

    from safetune.console import stdout_console
    from safetune.evaluation.results import load

    results = load(results_path)
    table = Table(title=f"results: {results_path}")
    # "not covered": answers in a language the judge has no rule for (in no rate; docs/evaluation.md)
    for column in ("benchmark", "metric", "value", "95% CI", "n", "invalid", "not covered"):
        table.add_column(column)
    for name, bench in results.benchmarks.items():
        shown = "–" if bench.value is None else f"{bench.value:.2f}"
        interval = "–" if bench.ci95 is None else f"{bench.ci95[0]:.1f}–{bench.ci95[1]:.1f}"
        counts = (str(count or 0) for count in (bench.n, bench.n_invalid, bench.n_uncovered))
        table.add_row(name, bench.metric.name, shown, interval, *counts)
    stdout_console().print(table)
    summary = results.summary.numbers()
    if summary:
        stdout_console().print(", ".join(f"{k} {v:.2f}" for k, v in summary.items()))


@app.command()
@user_errors
def report(
    runs: Annotated[list[Path], typer.Argument(help="Evaluation folders (or results.json files).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder.")] = Path("report"),
    label: Annotated[
        list[str] | None, typer.Option("--label", help="Row label per run, in order (repeat the flag).")
    ] = None,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Render results.json files as a Markdown table (paper layout), a CSV and PNG plots.

    Run as: safetune report runs/ev-base runs/ev-sft runs/ev-sarft -o report
    """
    from safetune.reports.render import render_report

    _setup_console(verbose, quiet)
    paths = render_report(runs, out, labels=label or None)
    print((out / "report.md").read_text(encoding="utf-8"))
    log.info("wrote %s", ", ".join(str(p) for p in paths.values()))


@app.command("reward-gap", context_settings=EXTRA)
@user_errors
def reward_gap(
    ctx: typer.Context,
    data: Annotated[str, typer.Option("--data", help="Held-out parallel pairs (MPO release JSON or JSONL).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for reward_gap.json/.md and the plot.")],
    model: ModelOpt = None,
    config: ConfigOpt = None,
    results: Annotated[
        Path | None, typer.Option(help="An evaluation's results.json with per-language ASR (e.g. multijail).")
    ] = None,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Per-language reward gap (safe vs unsafe answer) of a model: the MPO paper's pilot analysis.

    Run as: safetune reward-gap -m MODEL --data heldout.json --results runs/ev/results.json -o runs/gap
    """
    from safetune.config import load_config
    from safetune.evaluation import reward_gap as diagnostic
    from safetune.storage import atomic_open, write_json

    _setup_console(verbose, quiet)
    cfg = load_config(config, _overrides(ctx, {"train.model": model}))
    if not cfg.train.model:
        from safetune.errors import ConfigError

        raise ConfigError("--model is required")
    asr = diagnostic.asr_by_language(results) if results else None
    gaps = diagnostic.measure(cfg, data)
    write_json(out / "reward_gap.json", {**gaps, "asr": asr})
    text = diagnostic.markdown(gaps, asr)
    with atomic_open(out / "reward_gap.md") as handle:
        handle.write(text)
    if asr:
        diagnostic.plot_gap_vs_asr(gaps, asr, out / "gap_vs_asr.png")
    print(text)


@app.command("tiny-model")
@user_errors
def tiny_model(
    out: Annotated[Path, typer.Argument(help="Folder to write the tokenizer and model into.")],
    text_file: Annotated[
        Path | None, typer.Option(help="Text to train the tokenizer on (one text per line).", exists=True)
    ] = None,
    template: Annotated[str, typer.Option(help="Chat template style: chatml | llama3 | gemma.")] = "chatml",
    vocab_size: Annotated[int, typer.Option(min=1, help="Tokenizer vocabulary size.")] = 512,
    hidden_size: Annotated[int, typer.Option(min=1, help="Hidden size.")] = 64,
    layers: Annotated[int, typer.Option(min=1, help="Number of decoder layers.")] = 2,
    heads: Annotated[int, typer.Option(min=1, help="Attention heads.")] = 4,
    seed: Annotated[int, typer.Option(min=0, max=MAX_SEED, help="Initialisation seed.")] = 0,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Build a tiny LLaMA-architecture chat model and BPE tokenizer locally (no download).

    Run as: safetune tiny-model runs/tiny --template llama3 --hidden-size 64 --layers 2
    """
    from safetune.models.tiny import TEMPLATES, build_tiny_model

    if template not in TEMPLATES:
        from safetune.errors import ConfigError

        raise ConfigError(f"unknown template {template!r} (known: {', '.join(TEMPLATES)})")
    _setup_console(verbose, quiet)
    texts = None
    if text_file is not None:
        texts = [line for line in text_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    try:
        path = build_tiny_model(
            out,
            texts,
            template=template,
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            num_layers=layers,
            num_heads=heads,
            seed=seed,
        )
    except ValueError as err:
        # build_tiny_model checks its sizes (vocabulary minimum, heads dividing the hidden size) with
        # ValueError before it writes anything
        from safetune.errors import ConfigError

        raise ConfigError(f"tiny-model: {err}") from None
    print(path)


@app.command("list")
def list_registered(verbose: VerboseOpt = False, quiet: QuietOpt = False) -> None:
    """List the registered methods, selection variants, benchmarks, judges and generation backends."""
    _setup_console(verbose, quiet)
    from safetune.evaluation.backends import BACKENDS
    from safetune.evaluation.benchmarks import BENCHMARKS
    from safetune.evaluation.judges.registry import JUDGES

    print("methods:")
    for spec in METHODS.values():
        print(f"  {spec.name:11s} {spec.data_kind:11s} {spec.summary}")
    print("selection variants:")
    for variant in VARIANTS.values():
        uses = "RDS scores" if variant.needs_scores else "flags file" if variant.uses_flags_file else ""
        print(f"  {variant.name:11s} {uses:11s} {variant.summary}")
    print("benchmarks:")
    for bench in BENCHMARKS.values():
        print(f"  {bench.name:24s} {bench.metric:18s} {bench.description}")
    print("judges:")
    for judge in JUDGES.values():
        print(f"  {judge.name:10s} {judge.version:8s} {judge.description}")
    print("generation backends:")
    for backend in BACKENDS.values():
        print(f"  {backend.name:6s} {backend.description}")


DEMOS = ("sarft", "mpo")


@app.command()
@user_errors
def demo(
    which: Annotated[
        str, typer.Argument(help="sarft (role-play safety, the default) or mpo (multilingual safety).")
    ] = "sarft",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output folder (default demo-out or demo-mpo).")
    ] = None,
    quick: Annotated[bool, typer.Option(help="A smaller, faster run (used by the tests).")] = False,
    seed: Annotated[
        int, typer.Option(min=0, max=MAX_SEED, help="Seed of the world, the organism and the fine-tunes.")
    ] = 0,
    beta: Annotated[
        float | None,
        typer.Option(
            help="sarft: SaRFT's KL weight (default 4); mpo: MPO's beta (default 64). See docs/demo.md."
        ),
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            help="Cache for the base organism, RDS scores and the MPO reference (default ~/.cache/safetune)."
        ),
    ] = None,
    threads: Annotated[
        int,
        typer.Option(
            min=1,
            max=256,
            help="torch CPU threads, pinned for the whole demo (float results depend on it; default 2).",
        ),
    ] = 2,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """A paper's experiment in miniature on a model organism built here (docs/demo.md).

    sarft: a tiny chat model trained from scratch to be helpful, refuse harmful requests, play personas
    and comply under an unsafe prompt; a villain and a baker persona fine-tuned with SFT, SaRFT and
    random selection; role-play and refusal evaluated; report written.

    mpo: a tiny chat model safety-aligned in language 1 only; SFT, DPO and reward-gap MPO on noisy
    parallel preference pairs; refusal, utility and reward gap per language; report written.

    Run as: safetune demo --out demo-out   |   safetune demo mpo --out demo-mpo
    """
    if which not in DEMOS:
        raise typer.BadParameter(f"{which!r}: choose one of {', '.join(DEMOS)}", param_hint="WHICH")
    if beta is not None:
        from safetune.config import MethodConfig

        MethodConfig(beta=beta)  # method.beta's range, checked before minutes of organism building
    _setup_console(verbose, quiet)
    if which == "mpo":
        from safetune.demo_mpo import run_mpo_demo

        print(
            run_mpo_demo(
                out or Path("demo-mpo"),
                quick=quick,
                seed=seed,
                beta=beta,
                cache_dir=cache_dir,
                threads=threads,
            )
        )
        return
    from safetune.demo import run_demo

    print(
        run_demo(
            out or Path("demo-out"), quick=quick, seed=seed, beta=beta, cache_dir=cache_dir, threads=threads
        )
    )


@app.command()
@user_errors
def organism(
    data: Annotated[
        Path | None, typer.Option(help="Also write the world's data files (training sets, tests) here.")
    ] = None,
    world: Annotated[
        str, typer.Option(help="roleplay (safetune demo) or multilingual (safetune demo mpo).")
    ] = "roleplay",
    seed: Annotated[int, typer.Option(min=0, max=MAX_SEED, help="Seed of the world and the organism.")] = 0,
    cache_dir: Annotated[
        Path | None, typer.Option(help="Cache for the organism (default ~/.cache/safetune).")
    ] = None,
    threads: Annotated[
        int, typer.Option(min=1, max=256, help="torch CPU threads of the build (the demo's default: 2).")
    ] = 2,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Build (or reuse) a demo's base model organism and print its folder, to use with any command.

    Run as: safetune organism --data world/ && safetune select -m "$(safetune organism)" --data world/roles ...
    """
    from safetune.organism.base import WORLD_KINDS, OrganismConfig, cached_organism
    from safetune.storage import cache_root

    if world not in WORLD_KINDS:
        raise typer.BadParameter(f"{world!r}: choose one of {', '.join(WORLD_KINDS)}", param_hint="--world")
    _setup_console(verbose, quiet)
    folder = cached_organism(OrganismConfig(seed=seed, world=world, threads=threads), cache_root(cache_dir))
    if data is not None:
        files = _write_world(world, seed, data)
        log.info("world files: %s", ", ".join(str(p) for p in files.values()))
    print(folder)


def _write_world(world: str, seed: int, data: Path) -> dict[str, Path]:
    if world == "multilingual":
        from safetune.demo_mpo import MpoDemoPlan
        from safetune.demo_mpo import write_world_files as write_multilingual
        from safetune.organism.multilingual import MultilingualWorld

        return write_multilingual(MultilingualWorld(seed), MpoDemoPlan.for_seed(seed), data)
    from safetune.demo import DemoPlan, write_world_files
    from safetune.organism.world import World

    return write_world_files(World(seed), DemoPlan.for_seed(seed), data)


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
