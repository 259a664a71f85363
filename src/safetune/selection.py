"""RDS (role-adaptive data selection) and its ablation variants.

For each training example (x, y) the frozen reference model scores the response under the role's own
system prompt and under an unsafe variant of it (same profile, reverse-safety closing instruction):
    l_role   = mean_t log p_ref(y_t | p_role(R), x, y_<t)
    l_unsafe = mean_t log p_ref(y_t | p_unsafe(R), x, y_<t)
    flag     = l_unsafe > l_role
Scores depend only on (model, data, prompts, template), so they are cached on disk under a content hash
and a killed scoring run resumes from the rows already written.

Run as: safetune select --model M --data.path roles/ --data.role "Freddy Krueger" --out runs/select
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from safetune import __version__, console
from safetune.config import RunConfig, SelectionConfig
from safetune.data.batching import length_sorted_batches, pad_batch
from safetune.data.chat import ChatRenderer, EncodedExample
from safetune.data.records import RoleExample, RoleProfile
from safetune.data.sources import InvalidRecords, role_key
from safetune.errors import ConfigError, DataError
from safetune.methods.losses import sequence_logps
from safetune.storage import (
    append_jsonl,
    cache_lock,
    hash_json,
    repair_jsonl_tail,
    write_json,
    write_jsonl,
)

log = logging.getLogger(__name__)

# Bump when the scoring semantics change: it is part of the cache key.
SCORING_VERSION = "rds-scores-v1"
VARIANTS = ("rds", "none", "all", "random", "flip", "external")


@dataclass(frozen=True)
class Score:
    """Reference log-likelihood of one example's response under the two prompts."""

    id: str
    role: str
    l_role: float
    l_unsafe: float

    @property
    def margin(self) -> float:
        return self.l_unsafe - self.l_role

    @property
    def rds_flag(self) -> bool:
        return self.l_unsafe > self.l_role  # strict, no threshold (the paper)


def role_prompts(role: str, profile: RoleProfile | None, config: SelectionConfig) -> tuple[str, str]:
    """(p_role, p_unsafe) for a role.

    A profile that carries both prompts (the SaRFT authors' prompt_v2.json) gives them verbatim.
    Otherwise p_role is `role_prompt` filled in, and p_unsafe the same with the profile's closing
    style instruction replaced by `unsafe_instruction`: with `unsafe_replaces=last_sentence` (the
    authors' construction) only the last sentence (`style_sentence` when the profile ends with it),
    with `suffix` everything from `style_suffix` on (else the last sentence).
    """
    if profile is not None and profile.role_prompt and profile.unsafe_prompt:
        return profile.role_prompt, profile.unsafe_prompt
    name = profile.name if profile else role
    description = profile.description.strip() if profile else ""
    p_role = config.role_prompt.format(name=name, description=description).strip()
    unsafe_description = f"{_unsafe_body(description, config)} {config.unsafe_instruction}".strip()
    p_unsafe = config.role_prompt.format(name=name, description=unsafe_description).strip()
    return p_role, p_unsafe


def _unsafe_body(description: str, config: SelectionConfig) -> str:
    """The part of a profile description that the unsafe prompt keeps."""
    if config.unsafe_replaces == "suffix":
        if config.style_suffix and config.style_suffix in description:
            return description[: description.index(config.style_suffix)].rstrip()
    elif config.unsafe_replaces != "last_sentence":
        raise ConfigError(
            f"selection.unsafe_replaces: {config.unsafe_replaces!r} is not last_sentence or suffix"
        )
    elif config.style_sentence and description.endswith(config.style_sentence):
        return description[: len(description) - len(config.style_sentence)].rstrip()
    return _drop_last_sentence(description)


def _drop_last_sentence(text: str) -> str:
    stripped = text.rstrip()
    for end in range(len(stripped) - 2, -1, -1):
        if stripped[end] in ".!?" and stripped[end + 1] == " ":
            return stripped[: end + 1]
    return ""  # a single sentence: it is the style sentence


def prompts_by_role(
    examples: Sequence[RoleExample], profiles: dict[str, RoleProfile], config: SelectionConfig
) -> dict[str, tuple[str, str]]:
    prompts = {}
    for role in sorted({ex.role for ex in examples}):
        profile = profiles.get(role_key(role))
        if profile is None:
            log.warning("no profile for role %r: its role prompt is only its name", role)
        prompts[role] = role_prompts(role, profile, config)
    return prompts


def cache_key(
    model_fingerprint: str,
    examples: Sequence[RoleExample],
    prompts: dict[str, tuple[str, str]],
    renderer: ChatRenderer,
    batch_size: int,
) -> str:
    """Everything the scores depend on. The batch size is part of it: padding to a batch's longest row
    changes the kernels' summation order, so scores move in the last float digits (about 1e-6) with it,
    and a flag with a margin that small could flip (docs/methods/sarft.md)."""
    data = [(ex.id, ex.role, ex.input, ex.output) for ex in examples]
    return hash_json(
        {
            "model": model_fingerprint,
            "data": hash_json(data),
            "prompts": prompts,
            "template": renderer.fingerprint(),
            "batch_size": batch_size,
            "code": SCORING_VERSION,
        }
    )


def cache_root(config: SelectionConfig) -> Path:
    if config.cache_dir:
        return Path(config.cache_dir)
    return Path(os.environ.get("SAFETUNE_CACHE", Path.home() / ".cache" / "safetune"))


def _read_scores(path: Path) -> dict[str, Score]:
    """Rows of a (possibly partial) score file; a torn last line from a kill is ignored."""
    scores: dict[str, Score] = {}
    if not path.exists():
        return scores
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                row = json.loads(line)
                scores[row["id"]] = Score(
                    row["id"], row["role"], float(row["l_role"]), float(row["l_unsafe"])
                )
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
    return scores


@torch.no_grad()
def _score_batch(model: Any, pad_id: int, encoded: list[EncodedExample]) -> list[float]:
    batch = pad_batch([e.input_ids for e in encoded], [e.labels for e in encoded], pad_id)
    device = next(model.parameters()).device
    logits = model(
        input_ids=batch["input_ids"].to(device),
        attention_mask=batch["attention_mask"].to(device),
        use_cache=False,
    ).logits
    return sequence_logps(logits, batch["labels"].to(device)).tolist()


def score_examples(
    model: Any,
    renderer: ChatRenderer,
    examples: Sequence[RoleExample],
    prompts: dict[str, tuple[str, str]],
    batch_size: int,
    partial_path: Path,
) -> list[Score]:
    """Score every example under both prompts, in length-sorted batches, appending to `partial_path`."""
    done = _read_scores(partial_path)
    todo = [ex for ex in examples if ex.id not in done]
    items: list[tuple[RoleExample, str]] = []
    encoded: list[EncodedExample] = []
    for ex in todo:
        for kind, prompt in zip(("role", "unsafe"), prompts[ex.role], strict=True):
            items.append((ex, kind))
            encoded.append(renderer.encode(ex.input, ex.output, system=prompt))
    pad_id = renderer.tokenizer.pad_token_id
    results: dict[str, dict[str, float]] = {}
    with console.progress(total=len(todo), desc="RDS scoring", unit="ex") as bar:
        for batch_idx in length_sorted_batches([len(e.input_ids) for e in encoded], batch_size):
            values = _score_batch(model, pad_id, [encoded[i] for i in batch_idx])
            finished = []
            for i, value in zip(batch_idx, values, strict=True):
                ex, kind = items[i]
                results.setdefault(ex.id, {})[kind] = value
                if len(results[ex.id]) == 2:
                    finished.append(Score(ex.id, ex.role, results[ex.id]["role"], results[ex.id]["unsafe"]))
            # Whole lines per finished example: a kill loses at most the batch in flight.
            append_jsonl(partial_path, [_score_row(s) for s in finished])
            done.update((s.id, s) for s in finished)
            bar.update(len(finished))
    return [done[ex.id] for ex in examples]


def _score_row(score: Score) -> dict[str, Any]:
    return {"id": score.id, "role": score.role, "l_role": score.l_role, "l_unsafe": score.l_unsafe}


def cached_scores(
    model_loader: Any,
    renderer: ChatRenderer,
    examples: Sequence[RoleExample],
    profiles: dict[str, RoleProfile],
    config: SelectionConfig,
    model_fingerprint: str,
) -> tuple[list[Score], str]:
    """Scores from the cache, or computed (loading the model through `model_loader()` only then)."""
    prompts = prompts_by_role(examples, profiles, config)
    key = cache_key(model_fingerprint, examples, prompts, renderer, config.batch_size)
    folder = cache_root(config) / "rds"
    final = folder / f"{key}.jsonl"
    cached = _complete_cache(final, examples)
    if cached is not None:
        return cached, key
    # One process computes an entry; another that wants the same one waits, then reads it.
    with cache_lock(cache_root(config), f"rds-{key}"):
        cached = _complete_cache(final, examples)
        if cached is not None:
            return cached, key
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f"{key}.partial.jsonl"
        repair_jsonl_tail(partial)
        model = model_loader()
        scores_list = score_examples(model, renderer, examples, prompts, config.batch_size, partial)
        write_jsonl(final, [_score_row(s) for s in scores_list])
        partial.unlink(missing_ok=True)
    return scores_list, key


def _complete_cache(final: Path, examples: Sequence[RoleExample]) -> list[Score] | None:
    """The cached scores of every example, or None when the cache lacks any."""
    if not final.exists():
        return None
    scores = _read_scores(final)
    if not all(ex.id in scores for ex in examples):
        return None
    log.info("RDS scores from cache %s (no model work)", final)
    return [scores[ex.id] for ex in examples]


def read_external_flags(path: str, examples: Sequence[RoleExample]) -> list[bool]:
    """0/1 flags by id from JSONL ({"id", "flag"} per line, e.g. a selection.jsonl) or JSON {id: flag}."""
    from safetune.data.sources import json_members, read_jsonl

    file = Path(path)
    if not file.exists():
        raise DataError(file, None, None, "no such file or directory")
    items: list[tuple[int, str, Any]] = []
    if file.suffix == ".json":
        # member by member: each flag's own line, and a key given twice refused
        items = [(line, str(key), value) for line, key, value in json_members(file, dict)]
    else:
        for number, row in read_jsonl(file):
            if not isinstance(row, dict) or "id" not in row:
                raise DataError(file, number, "id", "missing")
            items.append((number, str(row["id"]), row.get("flag")))
    by_id: dict[str, int] = {}
    first: dict[str, int] = {}
    for number, ident, flag in items:
        if flag not in (0, 1, True, False):
            raise DataError(file, number, "flag", f"expected 0 or 1, got {flag!r}")
        if ident in first:
            # two flags for one example: which one would win is an accident of the file's order
            raise DataError(file, number, "id", f"duplicate id {ident!r} (first at line {first[ident]})")
        by_id[ident], first[ident] = int(flag), number
    missing = [ex.id for ex in examples if ex.id not in by_id]
    if missing:
        raise DataError(file, None, "id", f"no flag for example {missing[0]!r} ({len(missing)} missing)")
    return [bool(by_id[ex.id]) for ex in examples]


def apply_variant(
    variant: str,
    examples: Sequence[RoleExample],
    scores: Sequence[Score] | None,
    seed: int = 42,
    flags_file: str | None = None,
) -> list[bool]:
    """Per-example flags for a selection variant (the paper's ablations)."""
    count = len(examples)
    if variant == "none":
        return [False] * count
    if variant == "all":
        return [True] * count
    if variant == "external":
        if flags_file:
            return read_external_flags(flags_file, examples)
        if any(ex.is_harmful is None for ex in examples):
            raise ConfigError("selection external needs selection.flags_file or is_harmful in every example")
        return [bool(ex.is_harmful) for ex in examples]
    if scores is None:
        raise ConfigError(f"selection variant {variant!r} needs RDS scores")
    rds = [s.rds_flag for s in scores]
    if variant == "rds":
        return rds
    if variant == "flip":
        return [not f for f in rds]
    if variant == "random":
        chosen = set(random.Random(seed).sample(range(count), sum(rds)))
        return [i in chosen for i in range(count)]
    raise ConfigError(f"unknown selection variant {variant!r} (known: {', '.join(VARIANTS)})")


def needs_scores(variant: str) -> bool:
    return variant in ("rds", "flip", "random")


def margin_histogram(margins: Sequence[float], bins: int = 20) -> dict[str, list[float]]:
    if not margins:
        return {"edges": [], "counts": []}
    low, high = min(margins), max(margins)
    if high == low:
        high = low + 1e-6
    edges = [low + (high - low) * i / bins for i in range(bins + 1)]
    counts = [0.0] * bins
    for m in margins:
        counts[min(int((m - low) / (high - low) * bins), bins - 1)] += 1
    return {"edges": edges, "counts": counts}


def selection_stats(
    examples: Sequence[RoleExample], flags: Sequence[bool], scores: Sequence[Score] | None, variant: str
) -> dict[str, Any]:
    per_role: dict[str, Counter[str]] = {}
    for ex, flag in zip(examples, flags, strict=True):
        per_role.setdefault(ex.role, Counter())["count"] += 1
        per_role[ex.role]["flagged"] += int(flag)
    stats: dict[str, Any] = {
        "variant": variant,
        "count": len(examples),
        "flagged": sum(flags),
        "flag_rate": sum(flags) / len(examples) if examples else 0.0,
        "roles": {
            role: {"count": c["count"], "flagged": c["flagged"], "flag_rate": c["flagged"] / c["count"]}
            for role, c in sorted(per_role.items())
        },
        "safetune_version": __version__,
    }
    if scores is not None:
        stats["margin_histogram"] = margin_histogram([s.margin for s in scores])
        stats["rds_flag_rate"] = sum(s.rds_flag for s in scores) / len(scores) if scores else 0.0
    return stats


def write_selection(
    out_dir: Path,
    examples: Sequence[RoleExample],
    flags: Sequence[bool],
    scores: Sequence[Score] | None,
    stats: dict[str, Any],
) -> None:
    rows = []
    for i, (ex, flag) in enumerate(zip(examples, flags, strict=True)):
        row: dict[str, Any] = {"id": ex.id, "role": ex.role}
        if scores is not None:
            s = scores[i]
            row.update(l_role=s.l_role, l_unsafe=s.l_unsafe, margin=s.margin)
        row["flag"] = int(flag)
        rows.append(row)
    write_jsonl(out_dir / "selection.jsonl", rows)
    write_json(out_dir / "selection_stats.json", stats)


def load_data(
    config: RunConfig, invalid: InvalidRecords | None = None
) -> tuple[list[RoleExample], dict[str, RoleProfile]]:
    """The training examples and role profiles named by a run config. Bad records follow
    `data.invalid`; pass an `InvalidRecords` to get the skipped ones back (for run.json)."""
    from safetune.data.sources import load_profiles, load_role_examples

    data = config.data
    if not data.path:
        raise ConfigError("data.path is required (a file, folder or HF dataset id)")
    examples = load_role_examples(
        data.path,
        format=data.format,
        role=data.role,
        columns=data.columns,
        split=data.split,
        answers=data.answers,
        invalid=invalid if invalid is not None else InvalidRecords(data.invalid),
    )
    if data.max_examples is not None:
        examples = examples[: data.max_examples]
    profiles = load_profiles(data.profiles) if data.profiles else {}
    return examples, profiles


def select(
    config: RunConfig,
    renderer: ChatRenderer,
    examples: Sequence[RoleExample],
    profiles: dict[str, RoleProfile],
    model_loader: Any,
) -> tuple[list[bool], list[Score] | None, dict[str, Any]]:
    """Flags, scores (when the variant uses them) and stats for a run config's selection section."""
    from safetune.models.loading import model_fingerprint

    sel = config.selection
    scores: list[Score] | None = None
    if needs_scores(sel.variant):
        fingerprint = model_fingerprint(config.train.model, config.train.revision, cache_root(sel))
        scores, key = cached_scores(model_loader, renderer, examples, profiles, sel, fingerprint)
    flags = apply_variant(sel.variant, examples, scores, seed=sel.seed, flags_file=sel.flags_file)
    stats = selection_stats(examples, flags, scores, sel.variant)
    stats["model"] = config.train.model
    if scores is not None:
        stats["cache_key"] = key
    return flags, scores, stats
