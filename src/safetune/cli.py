"""The `safetune` command line.

Every command that takes a config accepts `--config FILE.yaml` and any number of `--section.key=value`
overrides (sections: data, chat, selection, method, train, generation, judge, eval, translate, fidelity,
assess, expert, sdrrl, pairs; the top-level key: `--cache_dir=DIR`); the named flags are shortcuts for the
most used overrides. Bad input exits with code 2 and one line naming the file, record and field. Every command takes -v/--verbose and -q/--quiet
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
from safetune.demos.common import DEMO_THREADS
from safetune.demos.mpo_variants import METHOD_NAMES as MPO_DEMO_METHOD_NAMES
from safetune.demos.registry import DEFAULT_DEMO, DEMOS
from safetune.demos.variants import DEFENCE_NAMES as DEMO_DEFENCE_NAMES
from safetune.demos.variants import METHOD_NAMES as DEMO_METHOD_NAMES
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
    """Log level, warnings and progress bars for this command (safetune/console.py). The other ranks of
    a multi-process launch say only what goes wrong: the main process reports the work."""
    from safetune import console
    from safetune.launch import is_main_process

    if not is_main_process():
        verbose, quiet = False, True
    try:
        level = console.verbosity(verbose, quiet)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--verbose / --quiet") from None
    console.setup(level)


# The commands a multi-process launch (torchrun, accelerate launch) may run; the others refuse it.
MULTI_PROCESS_COMMANDS = frozenset({"train", "eval"})


def user_errors(func: F) -> F:
    """Turn SafetuneError (bad data, bad config) into one line on stderr and exit code 2; refuse a
    multi-process launch of a command that runs in one process (launch.py)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from typer._click.globals import get_current_context

        from safetune.launch import refuse_multi_process

        try:
            ctx = get_current_context(silent=True)
            name = (ctx.info_name if ctx is not None else None) or func.__name__
            if name not in MULTI_PROCESS_COMMANDS:
                refuse_multi_process(name, MULTI_PROCESS_COMMANDS)
            return func(*args, **kwargs)
        except SafetuneError as err:
            print(f"error: {one_line(str(err))}", file=sys.stderr)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _translator_shortcuts(translator: str | None) -> dict[str, Any]:
    """`--translator [KIND:]MODEL` as the translate section's model and kind (none when not given)."""
    if translator is None:
        return {}
    from safetune.translation.registry import parse_translator

    kind, translation_model = parse_translator(translator)
    return {"translate.model": translation_model, "translate.kind": kind}


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
DataOpt = Annotated[
    str | None,
    typer.Option(
        "--data",
        help="Training data: file, folder or HF dataset id; role data or conversations (--data.format "
        "messages | sharegpt | pippa | sillytavern, or auto-detected in a .json/.jsonl file).",
    ),
]
TrainCardOpt = Annotated[
    str | None,
    typer.Option(
        "--card",
        help="Character card (V1/V2/V3 JSON, or PNG with the card in a text chunk) the conversations are "
        "held with (data.card).",
    ),
]
RoleOpt = Annotated[str | None, typer.Option("--role", help="Keep only this role.")]
ProfilesOpt = Annotated[
    str | None, typer.Option("--profiles", help="JSON file: role name -> profile description.")
]
JudgeModelOpt = Annotated[
    str | None, typer.Option(help="Judge model (classifier / guard): hub id or folder.")
]
JudgePresetOpt = Annotated[
    str | None, typer.Option(help="Judge preset, e.g. longformer-action, qwen3guard (see: safetune list).")
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
    card: TrainCardOpt = None,
    variant: Annotated[
        str | None, typer.Option(help=" | ".join(VARIANTS) + " (what each does: safetune list)")
    ] = None,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Flag the risky training examples with RDS (reference-model implicit rewards), cached; on
    conversations, every assistant turn (flag rates by turn position).

    Run as: safetune select -m MODEL --data roles/ --role "Freddy Krueger" --profiles profiles.json -o runs/sel
    or:     safetune select -m MODEL --data chats.jsonl --card card.png -o runs/sel
    """
    from safetune.config import load_config
    from safetune.selection import format_turn_rates, run_selection

    _setup_console(verbose, quiet)
    shortcuts = {
        "model.name": model,
        "data.path": data,
        "data.role": role,
        "data.profiles": profiles,
        "data.card": card,
    }
    cfg = load_config(config, _overrides(ctx, shortcuts | {"selection.variant": variant}))
    stats = run_selection(cfg, out)
    unit = "assistant turns" if stats.get("unit") == "turn" else "examples"
    print(
        f"{stats['flagged']} of {stats['count']} {unit} flagged "
        f"({100 * stats['flag_rate']:.1f}%, variant {stats['variant']}) -> {out / 'selection.jsonl'}"
    )
    if stats.get("unit") == "turn":
        print(format_turn_rates(stats))


@app.command(context_settings=EXTRA)
@user_errors
def train(
    ctx: typer.Context,
    config: ConfigOpt = None,
    model: ModelOpt = None,
    data: DataOpt = None,
    role: RoleOpt = None,
    profiles: ProfilesOpt = None,
    card: TrainCardOpt = None,
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
    """Fine-tune: SaRFT / SFT on role-play data, reward-gap MPO, SDRRL or LENS (its prompts only, top layers)
    on parallel preference pairs, or a DPO-family baseline on preference pairs; LoRA or full; resumable.
    SaRFT computes the frozen reference's states at its KL positions once, before training (no reference
    forward per step; full fine-tuning keeps a frozen LM head, not a model copy);
    --method.reference_cache=false runs the reference on the flagged rows at every step instead.

    Run as: safetune train -m MODEL --data roles/ --role "Freddy Krueger" --profiles p.json --method sarft -o runs/x
    or:     safetune train -m MODEL --data chats.jsonl --card card.json --method sarft -o runs/x  (conversations:
            sarft, sft, safeinstr, sppft, safelora, lisa, seal, tokenwise-sft; --data.train_turns=last)
    or:     safetune train -m MODEL --data pairs.json --method mpo -o runs/mpo
    or:     safetune train -m MODEL --data pairs.json --method sdrrl -o runs/sdrrl  (its transfer set: --sdrrl.KEY=VALUE)
    or:     safetune train --config configs/lens_full.yaml -m MODEL --data pairs.json -o runs/lens
    """
    from safetune.config import load_config
    from safetune.launch import is_main_process
    from safetune.training.run import train as run_train

    _setup_console(verbose, quiet)
    shortcuts: dict[str, Any] = {
        "model.name": model,
        "data.path": data,
        "data.role": role,
        "data.profiles": profiles,
        "data.card": card,
        "method.name": method,
        "selection.variant": "external" if selection_file else selection,
        "selection.flags_file": selection_file,
        "train.finetune": finetune,
        "method.beta": beta,
        "train.output_dir": out,
    }
    cfg = load_config(config, _overrides(ctx, shortcuts))
    run_dir = run_train(cfg, resume=resume, overwrite=overwrite)
    if is_main_process():
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
        str | None,
        typer.Option(
            help="A judge, or several: keyword,organism (the first makes the numbers, the others are "
            "compared with it; see: safetune list). Per-judge settings: --judge.per_judge.NAME.KEY=VALUE."
        ),
    ] = None,
    judge_model: JudgeModelOpt = None,
    judge_preset: JudgePresetOpt = None,
    fidelity: Annotated[
        str | None,
        typer.Option(
            help="Persona-fidelity judge scoring whether role-play answers stay in character (1-5, beside "
            "ROUGE-L): none (default) | llm (OpenAI-compatible endpoint, --fidelity.url) | local (HF chat "
            "model). Add --fidelity.harmful=true to score refusals in character (needs --system role)."
        ),
    ] = None,
    fidelity_model: Annotated[
        str | None,
        typer.Option(
            help="Fidelity judge model: the endpoint's model name (llm) or a hub id / folder (local)."
        ),
    ] = None,
    backend: Annotated[str | None, typer.Option(help="Generation backend: hf | vllm | mock")] = None,
    defence: Annotated[
        str | None,
        typer.Option(
            help="Decoding-time defence (hf backend): rose | self-cd (an over-refusal mitigation) | "
            "safedecoding (needs --defence.expert=ADAPTER); settings as --defence.alpha=... "
            "(see: safetune list, docs/evaluation.md)."
        ),
    ] = None,
    utility: Annotated[
        str | None,
        typer.Option(
            help="Utility through lm-evaluation-harness on the same model: comma-separated lm-eval task, "
            "group or tag names or task YAML files, e.g. mmlu,gsm8k,mgsm,m_mmlu (eval.utility_limit, "
            "_fewshot, _batch_size, _chat_template, _seed, _include: docs/evaluation.md)."
        ),
    ] = None,
    system: Annotated[
        str | None, typer.Option(help='System prompt for every request; "role" = each role\'s role prompt.')
    ] = None,
    profiles: ProfilesOpt = None,
    limit: Annotated[int | None, typer.Option(help="Keep the first N prompts of each benchmark.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Generation batch size.")] = None,
    out: Annotated[
        str | None, typer.Option("--out", "-o", help="Evaluation folder (eval.output_dir).")
    ] = None,
    translate_to: Annotated[
        str | None,
        typer.Option(
            help="Translate answers to prompts tagged with another language into this one (e.g. en) "
            "before judging, as MultiJail does (eval.translate_to)."
        ),
    ] = None,
    translator: Annotated[
        str | None,
        typer.Option(
            help="[KIND:]MODEL that translates: an NLLB-200, M2M100, MADLAD-400 or Marian model, any "
            "seq2seq model, or chat:MODEL for a chat model (kind auto-detected; see: safetune list)."
        ),
    ] = None,
    judge_on: Annotated[
        str | None,
        typer.Option(
            help="translated (default with --translate-to) | original | both: which answers the judge "
            "reads; with both, the translated verdicts decide and the original ones are recorded beside."
        ),
    ] = None,
    turns: Annotated[
        str | None,
        typer.Option(
            help="Safety at turn k, in character: also put every judged benchmark's requests at these user "
            "turns of a conversation with the character, e.g. 1,3,5 (eval.turns; eval.context: your own "
            "conversations as the turns before; docs/evaluation.md)."
        ),
    ] = None,
    card: Annotated[
        str | None,
        typer.Option(help="The character card (V1/V2/V3 JSON or PNG) played with --turns (eval.card)."),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Discard this folder's previous evaluation files.")] = False,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Generate, judge and score a model on benchmarks, and its utility with lm-eval; staged and resumable
    (re-run to resume).

    Every answer is also checked for incoherence (empty, loops, symbol soup, wrong language): incoherent
    answers count as neither refusals nor attack successes (n_incoherent; --eval.incoherence=false: off).

    Run as: safetune eval -m runs/villain-sarft --benchmarks advbench=advbench.csv,overrefusal -o runs/ev
    """
    from safetune.config import load_config
    from safetune.evaluation.runner import evaluate
    from safetune.launch import is_main_process

    _setup_console(verbose, quiet)
    shortcuts: dict[str, Any] = {
        "eval.model": model,
        "eval.benchmarks": benchmarks.split(",") if benchmarks else None,
        "judge.name": judge,
        "judge.model": judge_model,
        "judge.preset": judge_preset,
        "fidelity.judge": fidelity,
        "fidelity.model": fidelity_model,
        "generation.backend": backend,
        "defence.name": defence,
        "eval.utility": utility.split(",") if utility else None,
        "generation.system": system,
        "eval.profiles": profiles,
        "eval.limit": limit,
        "generation.batch_size": batch_size,
        "eval.output_dir": out,
        "eval.translate_to": translate_to,
        "eval.judge_on": judge_on,
        "eval.turns": turns.split(",") if turns else None,
        "eval.card": card,
    }
    shortcuts.update(_translator_shortcuts(translator))
    cfg = load_config(config, _overrides(ctx, shortcuts))
    results_path = evaluate(cfg, overwrite=overwrite)
    if is_main_process():  # the other ranks of a launch generated their share; the main one scored
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
    if results.provenance.defence is not None:
        from safetune.decoding.described import describe

        # a custom prompt is shown as written: no rich markup read into its brackets
        stdout_console().print(f"defence: {describe(results.provenance.defence).text()}", markup=False)
    for name, entry in results.utility.items():
        primary = entry.primary_value()
        if primary is not None and primary.value is not None:
            stderr = "" if primary.stderr is None else f" ± {primary.stderr:.4f}"
            stdout_console().print(f"utility {name}: {entry.primary} {primary.value:.4f}{stderr}")
    for name, turn_table in results.turns.items():  # safety at turn k (evaluation/turns.py)
        cells = ", ".join(
            f"k={row.k} {'–' if row.value is None else f'{row.value:.2f}'}" for row in turn_table.by_turn
        )
        single = "" if turn_table.single_turn is None else f" (single turn {turn_table.single_turn:.2f})"
        stdout_console().print(f"{name} {turn_table.metric} by turn: {cells}{single}", markup=False)
    summary = results.summary.numbers()
    if summary:
        stdout_console().print(", ".join(f"{k} {v:.2f}" for k, v in summary.items()))
    # The persona-fidelity judge's mean score (1-5) beside the table, when it ran.
    fidelity = [
        f"{name} {'–' if b.fidelity.value is None else f'{b.fidelity.value:.2f}'} "
        f"({b.fidelity.n_valid or 0}/{b.fidelity.n} scored)"
        for name, b in results.benchmarks.items()
        if b.fidelity is not None
    ]
    if fidelity:
        stdout_console().print("persona fidelity (1-5): " + ", ".join(fidelity))
    calibration = results.summary.calibration
    if calibration is not None:
        stdout_console().print(_calibration_line(calibration))
    _print_agreement(results)


def _calibration_line(calibration: Any) -> str:
    def shown(value: float | None) -> str:
        return "–" if value is None else f"{value:.2f}"

    return (
        f"calibration: refuses {shown(calibration.harmful_refusal)}% of harmful prompts and "
        f"{shown(calibration.benign_over_refusal)}% of benign ones (gap {shown(calibration.gap)} points; "
        "a model that refuses everything has a gap near 0)"
    )


def _print_agreement(results: Any) -> None:
    from rich.table import Table

    from safetune.console import stdout_console

    found = [(name, b.judge_agreement) for name, b in results.benchmarks.items() if b.judge_agreement]
    if not found:
        return
    primary = found[0][1].primary
    table = Table(title=f"judge agreement with the primary judge, {primary} (its verdicts make the values)")
    for column in ("benchmark", "judge", "n", "undecided", "agreement %", "kappa", "its value"):
        table.add_column(column)
    for name, block in found:
        for judge, compared in block.judges.items():
            numbers = (compared.agreement, compared.kappa, compared.value)
            cells = ("–" if v is None else f"{v:.2f}" for v in numbers)
            table.add_row(name, judge, str(compared.n), str(compared.n_undecided or 0), *cells)
    stdout_console().print(table)


@app.command("judge", context_settings=EXTRA)
@user_errors
def judge_(
    ctx: typer.Context,
    files: Annotated[list[Path], typer.Argument(help="Completion files (JSONL, JSON or CSV).")],
    config: ConfigOpt = None,
    judge: Annotated[
        str | None, typer.Option(help="Comma-separated judges, e.g. keyword,organism (see: safetune list).")
    ] = None,
    labels: Annotated[
        str | None, typer.Option(help="The column of the human labels: measure each judge against them.")
    ] = None,
    label_map: Annotated[
        str | None,
        typer.Option(
            help="The file's label names -> compliance|refusal|partial, e.g. 2_full_refusal=refusal,..."
        ),
    ] = None,
    columns: Annotated[
        str | None,
        typer.Option(help="Our field=the file's column, e.g. response=completion,category=type."),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the verdicts and judge.json.")] = Path(
        "runs/judge"
    ),
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Judge completions made anywhere; with --labels, measure each judge against the human labels.

    Staged and resumable like eval's judge stage (re-run to resume or to add a judge). Run as:
    safetune judge tests/data/xstest_v2/*.csv --judge keyword,prefix --labels final_label
    --label-map 1_full_compliance=compliance,2_full_refusal=refusal,3_partial_refusal=partial
    --columns category=type -o runs/judge-xstest
    """
    from safetune.config import load_config
    from safetune.evaluation.completion_files import CompletionTable, load_all, parse_pairs
    from safetune.evaluation.judges.registry import build_judges
    from safetune.evaluation.judging import judge_completions

    _setup_console(verbose, quiet)
    cfg = load_config(config, _overrides(ctx, {"judge.name": judge}))
    table = CompletionTable.of(
        parse_pairs(columns, "--columns"), labels, parse_pairs(label_map, "--label-map")
    )
    # Everything is checked before the folder's first file: the files, every record, every judge.
    records = load_all(files, table)
    judges = build_judges(cfg.judge)
    path = judge_completions(records, judges, out, table, [str(f) for f in files])
    _print_judged(path)


def _print_judged(path: Path) -> None:
    import json

    from rich.table import Table

    from safetune.console import stdout_console

    console = stdout_console()
    results = json.loads(path.read_text(encoding="utf-8"))
    for name, judged in results["judges"].items():
        counts = ", ".join(f"{k} {v}" for k, v in judged["counts"].items())
        console.print(f"judge {name} ({judged['key']}): {judged['n']} responses: {counts}")
        found = judged["agreement"]
        if found is None:
            continue
        summary = Table(title=f"{name} against the human labels (refusal vs compliance; three classes)")
        for column in ("items", "n", "accuracy", "kappa", "accuracy 3", "kappa 3"):
            summary.add_column(column)
        views = [("all", found)]
        views += [(k, v) for k, v in found["by_file"].items()]
        views += [(f"category {k}", v) for k, v in found["by_category"].items()]
        for view, numbers in views:
            two, three = numbers["refusal_vs_compliance"], numbers["three_classes"]
            scores = (two["accuracy"], two["kappa"], three["accuracy"], three["kappa"])
            summary.add_row(view, str(two["n"]), *(_number(v) for v in scores))
        console.print(summary)
        three = found["three_classes"]
        confusion = Table(title=f"{name}: human (rows) x judge (columns), precision / recall")
        classes = list(three["confusion"])
        for column in ("human \\ judge", *classes, "recall"):
            confusion.add_column(column)
        for human in classes:
            cells = [str(three["confusion"][human][c]) for c in classes]
            confusion.add_row(human, *cells, _number(three["per_class"][human]["recall"]))
        confusion.add_row("precision", *(_number(three["per_class"][c]["precision"]) for c in classes), "")
        console.print(confusion)
    console.print(
        f"wrote {path}"
        + (f" and {path.parent / 'disagreements.csv'}" if results["provenance"]["labels"] else "")
    )


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


@app.command(context_settings=EXTRA)
@user_errors
def assess(
    ctx: typer.Context,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Study folder (resumed when it holds this study); with --forecast, its own folder.",
        ),
    ],
    config: ConfigOpt = None,
    model: ModelOpt = None,
    data: Annotated[
        str | None,
        typer.Option(
            help="Role data of every role: the SaRFT authors' role folders (<Role>/train.json), ...; or "
            "conversations (--data.format, --data.card as for train): one role per character, and the "
            "report adds flag rates by turn position."
        ),
    ] = None,
    profiles: Annotated[
        str | None,
        typer.Option(help="JSON: role -> profile, or the authors' prompt_v2.json ({role, safe} per role)."),
    ] = None,
    methods: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated role-data methods, one fine-tune per role each (default sft,sarft)."
        ),
    ] = None,
    roles: Annotated[
        str | None,
        typer.Option(help="Comma-separated roles (default: every role of --data); more roles grow a study."),
    ] = None,
    benchmarks: Annotated[
        str | None,
        typer.Option(help="Safety benchmarks, name[=source] comma-separated (eval.benchmarks)."),
    ] = None,
    roleplay: Annotated[
        str | None,
        typer.Option(
            help="Role-play tests, name[=source] (default rolebench-raw, read from --data); none: off."
        ),
    ] = None,
    judge: Annotated[
        str | None,
        typer.Option(
            help="The judges of every unit, comma-separated; the first is the primary (as for eval)."
        ),
    ] = None,
    defence: Annotated[
        str | None,
        typer.Option(
            help="Decoding-time defence of every unit's evaluation, the base model's too: rose | self-cd "
            "(an over-refusal mitigation) | safedecoding (--defence.expert=ADAPTER, trained on --model); "
            "settings as --defence.alpha=... (as for eval; part of the study's identity)."
        ),
    ] = None,
    executor: Annotated[str | None, typer.Option(help="sequential (default) | ray")] = None,
    ray_address: Annotated[
        str | None, typer.Option(help="ray: an existing cluster (e.g. auto); default: a local Ray.")
    ] = None,
    ray_local_cpus: Annotated[
        int | None,
        typer.Option(help="ray: the CPUs of the local Ray this command starts (default: all of them)."),
    ] = None,
    forecast: Annotated[
        Path | None,
        typer.Option(
            help="A study's forecast.json: only score the roles (RDS selection) and predict each role's "
            "drop into predictions.csv / predictions.md; no fine-tune, no eval."
        ),
    ] = None,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """The per-role safety risk study: per role x method, fine-tune (shared RDS selection) and evaluate
    (safety + role-play), plus the base model; then one row per role in results.csv, summary.json and
    report.md, and (4+ roles) forecast.json, a risk forecast fitted on the study. Resumable: re-run to
    continue; --roles with more roles grows the study (docs/assess.md).

    Run as: safetune assess -m MODEL --data roles/ --profiles prompt_v2.json --benchmarks advbench=a.csv -o study

    Forecast only (the scoring pass, minutes instead of GPU-days):
    safetune assess --forecast study/forecast.json -m MODEL --data roles/ --profiles prompt_v2.json -o risk
    """
    from safetune.assess.study import run_study
    from safetune.config import load_config
    from safetune.errors import ConfigError

    _setup_console(verbose, quiet)
    shortcuts: dict[str, Any] = {
        "model.name": model,
        "data.path": data,
        "data.profiles": profiles,
        "assess.methods": methods.split(",") if methods else None,
        "assess.roles": roles.split(",") if roles else None,
        "eval.benchmarks": benchmarks.split(",") if benchmarks else None,
        "assess.roleplay": ([] if roleplay.strip() == "none" else roleplay.split(",")) if roleplay else None,
        "judge.name": judge,
        "defence.name": defence,
        "assess.executor": executor,
        "assess.ray_address": ray_address,
        "assess.ray_local_cpus": ray_local_cpus,
    }
    cfg = load_config(config, _overrides(ctx, shortcuts))
    if forecast is not None:
        from safetune.assess.predict import run_forecast

        if cfg.defence.name.strip().lower() != "none":
            raise ConfigError("--defence applies to a study's evaluations; --forecast evaluates nothing")

        done = run_forecast(cfg, forecast, out)
        known = sum(p.predicted is not None for p in done.predictions)
        print(f"{len(done.predictions)} roles: {known} forecast -> {done.report}")
        return
    run = run_study(cfg, out)
    print(
        f"{len(run.roles)} roles: {len(run.ran)} units run now, {len(run.skipped)} finished before "
        f"-> {run.report}"
    )


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
    from safetune.evaluation.reward_gap import run_reward_gap

    _setup_console(verbose, quiet)
    cfg = load_config(config, _overrides(ctx, {"model.name": model}))
    text = run_reward_gap(cfg, data, out, results)
    print(text)


@app.command("probe", context_settings=EXTRA)
@user_errors
def probe(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for geometry.json, probe.md, pca.png.")],
    model: ModelOpt = None,
    config: ConfigOpt = None,
    pairs: Annotated[
        str | None,
        typer.Option(help="Parallel pairs (MPO release JSON or our JSONL): both sides' prompts, as unsafe."),
    ] = None,
    pairs_format: Annotated[str, typer.Option(help="auto | mpo-release | jsonl.")] = "auto",
    harmful: Annotated[
        list[str] | None,
        typer.Option(
            help="Unsafe prompts: a prompt file (harmful-prompts/qa formats), FILE or LANG=FILE; repeat."
        ),
    ] = None,
    benign: Annotated[
        list[str] | None, typer.Option(help="Safe prompts, the same formats as --harmful; repeat.")
    ] = None,
    dominant: Annotated[
        str, typer.Option(help="The dominant language (shifts and distances from it).")
    ] = "en",
    batch_size: Annotated[int, typer.Option(help="Prompts per forward pass (1..4096).")] = 8,
    max_per_language: Annotated[
        int | None, typer.Option(help="Keep the first N prompts per language and label.")
    ] = None,
    layer: Annotated[
        int,
        typer.Option(
            help="-1: the final post-norm state (LENS); k >= 0: output_hidden_states entry k (0: the embeddings)."
        ),
    ] = -1,
    compare: Annotated[
        Path | None,
        typer.Option(help="An earlier probe folder on the same prompts (e.g. the base model): before/after."),
    ] = None,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Per-language geometry of a model's last-prompt-token states: LSAR's common direction and
    language-specific subspace, each language's shift and distance from the dominant one, the safe/unsafe
    separation per language and a 2-D PCA plot; with --compare, the change from an earlier probe.

    Prompts are rendered with the config's chat section, as training renders them.

    Run as: safetune probe -m runs/mpo --pairs pairs.jsonl --benign en=benign_en.jsonl --compare runs/probe-base -o runs/probe-mpo
    """
    from safetune.config import load_config
    from safetune.evaluation.probe import ProbeSettings, run_probe

    _setup_console(verbose, quiet)
    settings = ProbeSettings(dominant, batch_size, max_per_language, layer)
    cfg = load_config(config, _overrides(ctx, {"model.name": model}))
    result = run_probe(
        cfg,
        out,
        pairs=pairs,
        pairs_format=pairs_format,
        harmful=harmful or (),
        benign=benign or (),
        settings=settings,
        compare=compare,
    )
    print(result.report)
    log.info("wrote %s", ", ".join(str(p) for p in result.files))


@app.command("safelora", context_settings=EXTRA)
@user_errors
def safelora(
    ctx: typer.Context,
    run: Annotated[
        Path, typer.Argument(help="A LoRA run folder (or its final/, or an adapter folder); only read.")
    ],
    unaligned: Annotated[
        str, typer.Option(help="The pretrained model the aligned model was aligned from (hub id or folder).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="The new run folder for the projected adapter.")],
    aligned: Annotated[
        str | None,
        typer.Option(help="The aligned (chat) model; default: the run's base model (model.name)."),
    ] = None,
    mode: Annotated[str | None, typer.Option(help="number (default) | threshold")] = None,
    k: Annotated[
        int | None, typer.Option(help="number mode: project the k lowest cosines (default 10).")
    ] = None,
    threshold: Annotated[
        float | None, typer.Option(help="threshold mode: project where cosine <= this (default 0.5).")
    ] = None,
    projector: Annotated[
        str | None, typer.Option(help="official (V V^T / ||V||_F, default) | exact (V (V^T V)^+ V^T)")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a run already in the output folder.")] = False,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """SafeLoRA after the fact: project an existing LoRA run's adapter onto the alignment subspace into a
    new run folder (the input is never written). Options as `--method.safelora_*=value` work too.

    Run as: safetune safelora runs/villain-sft --unaligned meta-llama/Llama-2-7b-hf -o runs/villain-safelora
    """
    from safetune.config import load_config
    from safetune.training.safelora import project_run

    _setup_console(verbose, quiet)
    shortcuts: dict[str, Any] = {
        "method.unaligned_model": unaligned,
        "method.safelora_mode": mode,
        "method.safelora_k": k,
        "method.safelora_threshold": threshold,
        "method.safelora_projector": projector,
    }
    cfg = load_config(None, _overrides(ctx, shortcuts))
    report = project_run(run, out, cfg.method, aligned=aligned, overwrite=overwrite)
    print(
        f"{report['modules_projected']} of {report['modules_total']} modules projected "
        f"(cosine <= {report['threshold']:g}) -> {out / 'final'}, report {out / 'safelora.json'}"
    )


@app.command("safety-expert", context_settings=EXTRA)
@user_errors
def safety_expert(
    ctx: typer.Context,
    out: Annotated[
        str | None, typer.Option("--out", "-o", help="The expert's folder (its run folder is OUT/run).")
    ] = None,
    config: ConfigOpt = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model", "-m", help="The original model (hub id or folder): the expert is trained on it."
        ),
    ] = None,
    seeds: Annotated[
        str | None,
        typer.Option(
            help="Harmful seed prompts: any prompt file eval reads (.json/.jsonl/.csv; prompt, id, category; "
            "--expert.columns.prompt=COL maps a column). Default: the built-in 36 prompts over 18 categories."
        ),
    ] = None,
    judge: Annotated[
        str | None,
        typer.Option(help="The judge that keeps the refusals (default keyword; see: safetune list)."),
    ] = None,
    judge_model: JudgeModelOpt = None,
    judge_preset: JudgePresetOpt = None,
    system: Annotated[
        str | None,
        typer.Option(help="System prompt while sampling (default: none; training rows have none)."),
    ] = None,
    backend: Annotated[
        str | None, typer.Option(help="Generation backend: hf (default) | vllm | mock")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Discard this folder's answers, verdicts and expert, and start again.")
    ] = False,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Build SafeDecoding's safety expert: sample the model's own answers to harmful seed prompts (2 per
    prompt, T 0.8, top-p 0.9, up to 5 tries each), keep those the judge calls refusals, and train a LoRA
    expert on them (r 16, alpha 64, dropout 0.1, q/v, 2 epochs, lr 2e-3, batch 1); staged and resumable.

    Settings: --expert.KEY=VALUE (samples, attempts, temperature, top_p, max_new_tokens, min_chars,
    min_refusals), --train.KEY=VALUE for the training (docs/methods/safety-expert.md).

    Run as: safetune safety-expert -m meta-llama/Llama-3.1-8B-Instruct -o runs/expert
    then:   safetune eval -m runs/villain-sft --defence safedecoding --defence.expert=runs/expert/run ...
    """
    from safetune.expert.build import build_expert, load_expert_config

    _setup_console(verbose, quiet)
    shortcuts: dict[str, Any] = {
        "expert.output_dir": out,
        "model.name": model,
        "expert.seeds": seeds,
        "judge.name": judge,
        "judge.model": judge_model,
        "judge.preset": judge_preset,
        "expert.system": system,
        "generation.backend": backend,
    }
    cfg = load_expert_config(config, _overrides(ctx, shortcuts))
    report = build_expert(cfg, overwrite=overwrite)
    t = report.tally
    dropped = ", ".join(f"{reason} {n}" for reason, n in t.dropped.most_common() if n) or "none"
    print(
        f"{t.kept} refusals kept of {report.slots} sought ({report.prompts} prompts; {t.answers} answers "
        f"judged, dropped: {dropped}; {report.generated_now} sampled now)"
    )
    state = "trained" if report.trained_now else "already trained"
    print(f"expert {state}: adapter in {report.run / 'final'}, counts in {report.out / 'manifest.json'}")


@app.command("pairs", context_settings=EXTRA)
@user_errors
def pairs(
    ctx: typer.Context,
    inputs: Annotated[
        str | None,
        typer.Option(
            help="Harmful prompts with unsafe answers: PKU-SafeRLHF records, AdvBench goal/target CSV, or "
            "any .json/.jsonl/.csv with prompt and rejected (--pairs.columns.FIELD=COLUMN maps others)."
        ),
    ] = None,
    languages: Annotated[
        str | None, typer.Option(help="Target languages, comma-separated tags (e.g. bn,sw,th).")
    ] = None,
    out: Annotated[
        str | None, typer.Option("--out", "-o", help="The pairs folder (pairs.output_dir).")
    ] = None,
    config: ConfigOpt = None,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="The model whose own refusals are the chosen answers."),
    ] = None,
    translator: Annotated[
        str | None,
        typer.Option(
            help="[KIND:]MODEL that translates: an NLLB-200, M2M100, MADLAD-400 or Marian model, any "
            "seq2seq model, or chat:MODEL (kind auto-detected; see: safetune list)."
        ),
    ] = None,
    chosen: Annotated[
        str | None,
        typer.Option(
            help="generate (default: the model's own refusal) | given (the file's chosen column, "
            "judged by the same rule)."
        ),
    ] = None,
    judge: Annotated[
        str | None,
        typer.Option(help="The judge that keeps the refusals (default keyword; see: safetune list)."),
    ] = None,
    judge_model: JudgeModelOpt = None,
    judge_preset: JudgePresetOpt = None,
    backend: Annotated[str | None, typer.Option(help="Generation backend: hf (default) | vllm")] = None,
    limit: Annotated[int | None, typer.Option(help="Use the first N input records.")] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Discard this folder's answers, verdicts and translations, and start again.")
    ] = False,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Build MPO training pairs for any language: the model's own refusal to each harmful prompt (kept
    when the judge calls it one), prompt, refusal and unsafe answer translated into each target language,
    a quality filter (language identification, round-trip chrF, refusal still detected), written in the
    MPO authors' release format; staged and resumable (re-run to resume).

    Settings: --pairs.KEY=VALUE (format, columns, header, dominant, language_check, min_chrf,
    target_refusal), --generation.*, --judge.*, --translate.* (docs/data.md, "Building MPO pairs").

    Run as: safetune pairs -m meta-llama/Llama-3.1-8B-Instruct --inputs pku.jsonl --languages bn,sw
            --translator facebook/nllb-200-distilled-600M -o runs/pairs
    then:   safetune train -m meta-llama/Llama-3.1-8B-Instruct --method mpo --data runs/pairs/pairs.json
    """
    from safetune.config import load_config
    from safetune.pairs.build import build_pairs

    _setup_console(verbose, quiet)
    shortcuts: dict[str, Any] = {
        "pairs.inputs": inputs,
        "pairs.languages": languages.split(",") if languages else None,
        "pairs.output_dir": out,
        "model.name": model,
        "pairs.chosen": chosen,
        "judge.name": judge,
        "judge.model": judge_model,
        "judge.preset": judge_preset,
        "generation.backend": backend,
        "pairs.limit": limit,
    }
    shortcuts.update(_translator_shortcuts(translator))
    cfg = load_config(config, _overrides(ctx, shortcuts))
    report = build_pairs(cfg, overwrite=overwrite)
    c = report.counts
    per = ", ".join(
        f"{code} {row['kept']} (rejected {row['rejected']})" for code, row in c["by_language"].items()
    )
    print(
        f"{c['pairs']} pairs from {c['inputs']} prompts ({c['refusals_kept']} refusals kept, "
        f"{c['dropped']['not_refusal']} not refusals): {per}"
    )
    print(
        f"-> {report.out / 'pairs.json'} (rejected rows: rejected.jsonl; manifest.json, summary.md); "
        f"now: {report.generated_now} generated, {report.judged_now} judged, {report.translated_now} translated"
    )


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
    """List the registered methods, selection variants, benchmarks, judges, generation backends and
    decoding defences."""
    _setup_console(verbose, quiet)
    from safetune.evaluation.backends import BACKENDS
    from safetune.evaluation.benchmarks import BENCHMARKS
    from safetune.evaluation.fidelity import FIDELITY_JUDGES, RUBRIC_VERSION
    from safetune.evaluation.judges.registry import JUDGES
    from safetune.translation.registry import TRANSLATORS

    print("methods:")
    for spec in METHODS.values():
        print(f"  {spec.name:14s} {spec.data_kind:11s} {spec.summary}")
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
        # --judge-preset values: the model each preset is for and the languages it covers
        for preset, summary in judge.presets.items():
            print(f"    preset {preset:24s} {summary}")
    print(f"persona-fidelity judges (--fidelity; rubric {RUBRIC_VERSION}, 1-5, role-play answers):")
    for name, what in FIDELITY_JUDGES.items():
        print(f"  {name:10s} {what}")
    print("generation backends:")
    for backend in BACKENDS.values():
        print(f"  {backend.name:6s} {backend.description}")
    from safetune.decoding.registry import DEFENCES

    print("decoding defences (safetune eval --defence NAME; hf backend):")
    for defence in DEFENCES.values():
        defaults = ", ".join(f"{k} {v}" for k, v in defence.defaults.items())
        print(f"  {defence.name:13s} {defence.purpose:24s} {defence.summary} ({defaults})")
    print("translators (--translator [KIND:]MODEL; auto-detected from the model's files):")
    for kind in TRANSLATORS.values():
        print(f"  {kind.name:8s} {kind.summary} (e.g. {kind.example})")
    from safetune.assess.executors import EXECUTORS

    print("study executors (safetune assess --executor):")
    for executor in EXECUTORS.values():
        print(f"  {executor.name:10s} {executor.description}")


def _demo_names() -> str:
    """The registry's demos for the help: "sarft (role-play safety, the default) or mpo (...)"."""
    return " or ".join(
        f"{spec.name} ({spec.summary}{', the default' if spec.name == DEFAULT_DEMO else ''})"
        for spec in DEMOS.values()
    )


@app.command()
@user_errors
def demo(
    which: Annotated[str, typer.Argument(help=f"{_demo_names()}.")] = DEFAULT_DEMO,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Output folder (default "
            + " or ".join(str(spec.default_out) for spec in DEMOS.values())
            + ").",
        ),
    ] = None,
    quick: Annotated[bool, typer.Option(help="A smaller, faster run (used by the tests).")] = False,
    seed: Annotated[
        int, typer.Option(min=0, max=MAX_SEED, help="Seed of the world, the organism and the fine-tunes.")
    ] = 0,
    beta: Annotated[
        float | None,
        typer.Option(
            help="sarft, assess, multiturn: SaRFT's KL weight (default 4); mpo: MPO's beta (default 64). "
            "See docs/demo.md."
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
    ] = DEMO_THREADS,
    methods: Annotated[
        str | None,
        typer.Option(
            help="sarft: add safety-preserving baselines as variants, each at its documented default "
            "(NAME) or its tuned setting (NAME:tuned), comma-separated, or 'all' (every one at both): "
            f"{', '.join(DEMO_METHOD_NAMES)}; and the decoding defences on the SFT fine-tunes: "
            f"{', '.join(DEMO_DEFENCE_NAMES)} (in 'all'). mpo: the DPO family, the cross-lingual "
            f"baselines and MPO's ablations on the same pairs: {', '.join(MPO_DEMO_METHOD_NAMES)}, or 'all'. "
            "Slower: see docs/demo.md."
        ),
    ] = None,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """A paper's experiment in miniature on a model organism built here (docs/demo.md).

    sarft: a tiny chat model trained from scratch to be helpful, refuse harmful requests, play personas
    and comply under an unsafe prompt; a villain and a baker persona fine-tuned with SFT, SaRFT and
    random selection (with --methods, also the safety-preserving baselines, each at its default and
    one tuned setting, and the SFT fine-tunes decoded with ROSE, Self-CD or SafeDecoding); role-play and
    refusal evaluated; report written.

    mpo: a tiny chat model safety-aligned in language 1 only; SFT, DPO and reward-gap MPO on noisy
    parallel preference pairs; refusal, utility and reward gap per language; report written.

    assess: the per-role safety study (`safetune assess`'s code) on the organism's eight-persona cast,
    each fine-tuned with SFT and SaRFT: the drop ordered by edginess, SaRFT's drop per persona, the
    risk forecast's leave-one-out error; the study's report written.

    multiturn: a tiny chat model trained on conversations, its personas as V2 character cards; the
    villain fine-tuned on its chats (edgy turns late) with SFT and per-turn SaRFT; refusal and
    over-refusal at user turn k in character, where the per-turn flags land; report written.

    Run as: safetune demo --out demo-out   |   safetune demo mpo --out demo-mpo   |   safetune demo assess
    |   safetune demo multiturn   |   safetune demo --methods safeinstr,lisa:tuned   |   safetune demo --methods all
    """
    from safetune.demos.registry import run_demo

    if which not in DEMOS:
        raise typer.BadParameter(f"{which!r}: choose one of {', '.join(DEMOS)}", param_hint="WHICH")
    _setup_console(verbose, quiet)
    print(
        run_demo(
            which,
            out,
            quick=quick,
            seed=seed,
            beta=beta,
            cache_dir=cache_dir,
            threads=threads,
            methods=methods,
        )
    )


@app.command()
@user_errors
def organism(
    data: Annotated[
        Path | None, typer.Option(help="Also write the world's data files (training sets, tests) here.")
    ] = None,
    world: Annotated[
        str,
        typer.Option(
            help=" or ".join(f"{spec.world} (safetune demo {spec.name})" for spec in DEMOS.values()) + "."
        ),
    ] = DEMOS[DEFAULT_DEMO].world,
    seed: Annotated[int, typer.Option(min=0, max=MAX_SEED, help="Seed of the world and the organism.")] = 0,
    cache_dir: Annotated[
        Path | None, typer.Option(help="Cache for the organism (default ~/.cache/safetune).")
    ] = None,
    threads: Annotated[
        int, typer.Option(min=1, max=256, help="torch CPU threads of the build (the demo's default: 2).")
    ] = DEMO_THREADS,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Build (or reuse) a demo's base model organism and print its folder, to use with any command.

    Run as: safetune organism --data world/ && safetune select -m "$(safetune organism)" --data world/roles ...
    """
    from safetune.demos.registry import demo_organism

    worlds = [spec.world for spec in DEMOS.values()]
    if world not in worlds:
        raise typer.BadParameter(f"{world!r}: choose one of {', '.join(worlds)}", param_hint="--world")
    _setup_console(verbose, quiet)
    folder, files = demo_organism(world, seed, data, cache_dir, threads)
    if files:
        log.info("world files: %s", ", ".join(str(p) for p in files.values()))
    print(folder)


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
