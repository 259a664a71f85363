"""The reward-gap diagnostic (the MPO paper's pilot analysis): per language, how much more likely a model
finds the safe answer than the unsafe one, on held-out parallel pairs.

    gap(language) = mean over pairs of  lp(chosen) - lp(rejected)      (length-normalised log-probs)

for the target side of each pair, grouped by target language, plus the dominant side's gap. The paper
found the gap falls as the attack success rate rises; with an evaluation's results.json (per-language
ASR, e.g. from `multijail`) the command also plots gap against ASR per language.

Run as: safetune reward-gap -m MODEL --data heldout_pairs.json --results runs/ev/results.json -o runs/gap
"""

from __future__ import annotations

import logging
from pathlib import Path
from statistics import fmean
from typing import Any

from safetune.config import RunConfig
from safetune.errors import ConfigError, DataError
from safetune.evaluation.results import load

log = logging.getLogger(__name__)


def run_reward_gap(config: RunConfig, data: str, out: Path, results: Path | None = None) -> str:
    """`safetune reward-gap`: measure the gaps of `config.model.name` on the pairs in `data`, with the
    per-language ASR of an evaluation's `results` when given; writes reward_gap.json, reward_gap.md
    and (with `results`) gap_vs_asr.png into `out`. Returns the Markdown table."""
    from safetune.storage import atomic_open, write_json

    if not config.model.name:
        raise ConfigError("--model is required")
    asr = asr_by_language(results) if results else None
    gaps = measure(config, data)
    write_json(out / "reward_gap.json", {**gaps, "asr": asr})
    text = markdown(gaps, asr)
    with atomic_open(out / "reward_gap.md") as handle:
        handle.write(text)
    if asr:
        plot_gap_vs_asr(gaps, asr, out / "gap_vs_asr.png")
    return text


def measure(config: RunConfig, data: str, fmt: str = "auto") -> dict[str, Any]:
    """Per-language reward gaps of `config.model.name` (hub id, folder or run folder) on parallel pairs."""
    from safetune.data.languages import LanguageCheck
    from safetune.data.preferences import load_parallel_pairs
    from safetune.data.readers import InvalidRecords
    from safetune.models.loading import default_device, load_for_generation, resolve_dtype, resolve_model
    from safetune.reference.mpo import pair_gaps

    invalid, languages = InvalidRecords(config.data.invalid), LanguageCheck()
    pairs = load_parallel_pairs(data, fmt, invalid=invalid, languages=languages)
    source = resolve_model(config.model.name, config.model.revision)
    model, tokenizer = load_for_generation(source, resolve_dtype(config.train.precision), default_device())
    gaps = pair_gaps(model, tokenizer, pairs, config)  # as `train --method mpo` renders and truncates pairs
    by_language = gaps.by_language()
    return {
        "model": source.to_dict(),
        "data": data,
        "pairs": len(pairs),
        "invalid_records": invalid.report(),
        "language_disagreements": languages.report(),
        "dominant_gap": fmean(gaps.dominant),
        "languages": {lang: {"n": len(g), "gap": fmean(g)} for lang, g in sorted(by_language.items())},
    }


def asr_by_language(results_path: Path) -> dict[str, float]:
    """Per-language ASR from an evaluation's results.json (every benchmark with per-language results)."""
    values: dict[str, list[float]] = {}
    for bench in load(results_path).benchmarks.values():
        for lang, group in bench.by_language.items():
            if group.asr is not None:
                values.setdefault(lang, []).append(group.asr)
    if not values:
        raise DataError(results_path, None, "benchmarks", "no per-language ASR (evaluate multijail first)")
    return {lang: fmean(v) for lang, v in values.items()}


def plot_gap_vs_asr(gaps: dict[str, Any], asr: dict[str, float], path: Path) -> Path | None:
    """One labelled point per language present in both: reward gap (x) vs ASR (y)."""
    from matplotlib.figure import Figure

    languages = [lang for lang in gaps["languages"] if lang in asr]
    if not languages:
        log.warning("no language has both a reward gap and an ASR: no plot")
        return None
    fig = Figure(figsize=(6.4, 4.8))
    ax = fig.add_subplot()
    xs = [gaps["languages"][lang]["gap"] for lang in languages]
    ys = [asr[lang] for lang in languages]
    ax.scatter(xs, ys, s=40)
    for lang, x, y in zip(languages, xs, ys, strict=True):
        ax.annotate(lang, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=9)
    ax.set_xlabel("reward gap: lp(safe) - lp(unsafe), nats per token")
    ax.set_ylabel("attack success rate (%)")
    ax.set_title("Per-language reward gap vs ASR (lower right is safer)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    from safetune.storage import atomic_open

    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=150)
    return path


def markdown(gaps: dict[str, Any], asr: dict[str, float] | None) -> str:
    lines = [
        f"Reward gap of `{gaps['model']['label']}` on {gaps['pairs']} parallel pairs "
        f"(dominant side: {gaps['dominant_gap']:.3f} nats/token)",
        "",
        "| language | pairs | reward gap (nats/token) |" + (" ASR % |" if asr else ""),
        "|---|---:|---:|" + ("---:|" if asr else ""),
    ]
    for lang, group in gaps["languages"].items():
        cell = f" {asr[lang]:.1f} |" if asr and lang in asr else (" – |" if asr else "")
        lines.append(f"| {lang} | {group['n']} | {group['gap']:.3f} |{cell}")
    return "\n".join(lines) + "\n"
