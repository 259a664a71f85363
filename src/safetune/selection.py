"""RDS (role-adaptive data selection) and its ablation variants.

For each training example (x, y) the frozen reference model scores the response under the role's own
system prompt and under an unsafe variant of it (reference/rds.py, cached); RDS flags the examples whose
response is more likely under the unsafe prompt (l_unsafe > l_role). The two prompts are built by
data/role_prompts.py; this module turns scores into per-example flags for each variant (the variants'
registry: selection_variants.py).

Run as: safetune select --model M --data.path roles/ --data.role "Freddy Krueger" --out runs/select
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetune import __version__
from safetune.config import RunConfig
from safetune.data.chat import ChatRenderer
from safetune.data.records import Conversation, RoleExample, RoleProfile
from safetune.data.role_prompts import prompts_by_role
from safetune.errors import ConfigError, DataError
from safetune.reference.rds import Score, cached_scores
from safetune.reference.turn_rds import ConversationScores, TurnScore, cached_turn_scores
from safetune.selection_variants import VARIANTS
from safetune.storage import cache_root, output_lock, write_json, write_jsonl

log = logging.getLogger(__name__)


def read_external_flags(path: str, examples: Sequence[RoleExample]) -> list[bool]:
    """0/1 flags by id from JSONL ({"id", "flag"} per line, e.g. a selection.jsonl) or JSON {id: flag}."""
    from safetune.data.readers import json_members, read_jsonl

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
    if sel.variant in VARIANTS and VARIANTS[sel.variant].needs_scores:
        root = cache_root(config.cache_dir)
        fingerprint = model_fingerprint(config.model.name, config.model.revision, root)
        prompts = prompts_by_role(examples, profiles, sel)
        scores, key = cached_scores(
            model_loader, renderer, examples, prompts, sel.batch_size, fingerprint, root
        )
    flags = apply_variant(sel.variant, examples, scores, seed=sel.seed, flags_file=sel.flags_file)
    stats = selection_stats(examples, flags, scores, sel.variant)
    stats["model"] = config.model.name
    if scores is not None:
        stats["cache_key"] = key
    return flags, scores, stats


def run_selection(config: RunConfig, out: Path) -> dict[str, Any]:
    """`safetune select`: flag the config's training examples and write selection.jsonl and
    selection_stats.json into `out`; returns the stats."""
    from safetune.data.conversation_data import is_conversation_data, load_conversation_data
    from safetune.data.readers import InvalidRecords
    from safetune.data.sources import load_data
    from safetune.models.loading import (
        check_model_folder,
        default_device,
        load_causal_lm,
        load_tokenizer,
        resolve_dtype,
    )

    if not config.model.name:
        raise ConfigError("--model (model.name) is required")
    m = config.model
    check_model_folder(m.name)  # even when the scores come from the cache and the model stays unloaded
    tokenizer = load_tokenizer(m.name, m.revision, m.trust_remote_code)
    renderer = ChatRenderer.from_config(tokenizer, config.chat, authors_empty_system=True)
    invalid = InvalidRecords(config.data.invalid)
    if is_conversation_data(config):
        conversations, prompts = load_conversation_data(config, invalid)

        def conversation_loader() -> Any:
            log.info("loading %s to score %d conversations", m.name, len(conversations))
            model = load_causal_lm(
                m.name, m.revision, resolve_dtype(config.train.precision), m.trust_remote_code
            )
            return model.to(default_device()).eval()

        with output_lock(out):
            turn_scores, turn_flags, stats = select_turns(
                config, renderer, conversations, prompts, conversation_loader
            )
            stats["invalid_records"] = invalid.report()
            write_turn_selection(out, turn_scores, turn_flags, stats)
        return stats
    examples, role_profiles = load_data(config, invalid)

    def loader() -> Any:
        log.info("loading %s to score %d examples", m.name, len(examples))
        model = load_causal_lm(m.name, m.revision, resolve_dtype(config.train.precision), m.trust_remote_code)
        return model.to(default_device()).eval()

    # Two selections into one folder: the second stops at once (busy) instead of redoing the work.
    with output_lock(out):
        flags, scores, stats = select(config, renderer, examples, role_profiles, loader)
        stats["invalid_records"] = invalid.report()
        write_selection(out, examples, flags, scores, stats)
    return stats


# --- multi-turn conversations: one flag per assistant turn (reference/turn_rds.py) ----------------------

# Flag rates by turn position: turns 1 .. TURN_BUCKETS - 1 each, then one "TURN_BUCKETS+" bucket.
TURN_BUCKETS = 8


def turn_bucket(turn: int) -> str:
    """The report's position label of a 0-based assistant turn: "1", "2", ..., "8+"."""
    return str(turn + 1) if turn + 1 < TURN_BUCKETS else f"{TURN_BUCKETS}+"


def apply_turn_variant(
    variant: str, scores: Sequence[ConversationScores], seed: int = 42
) -> list[list[bool]]:
    """Per-turn flags (one list per conversation, aligned with its scored turns) for a selection variant:
    the single-turn rule applied over turns (every turn is one example; `random` draws as many turns as
    RDS flags)."""
    counts = [len(s.turns) for s in scores]
    if variant == "none":
        return [[False] * n for n in counts]
    if variant == "all":
        return [[True] * n for n in counts]
    if variant == "external":
        raise ConfigError(
            "selection external on conversations reads a per-turn selection.jsonl: set selection.flags_file"
        )
    rds = [[t.rds_flag for t in s.turns] for s in scores]
    if variant == "rds":
        return rds
    if variant == "flip":
        return [[not f for f in row] for row in rds]
    if variant == "random":
        total = sum(counts)
        chosen = set(random.Random(seed).sample(range(total), sum(map(sum, rds))))
        flat = [i in chosen for i in range(total)]
        out, at = [], 0
        for n in counts:
            out.append(flat[at : at + n])
            at += n
        return out
    raise ConfigError(f"unknown selection variant {variant!r} (known: {', '.join(VARIANTS)})")


@dataclass(frozen=True)
class ExternalTurnFlags:
    """A conversation selection.jsonl read back for `conversations`: their scored turns and flags."""

    scores: tuple[ConversationScores, ...]
    flags: tuple[tuple[bool, ...], ...]


def read_external_turn_flags(path: str, conversations: Sequence[Conversation]) -> ExternalTurnFlags:
    """Per-turn scores and flags of `conversations` from a conversation selection.jsonl (rows {id, turn,
    role, l_role, l_unsafe, flag}, as `write_turn_selection` writes them). A conversation without rows is
    one the selection's rendering left out (a conversation with no scored turn): it gets none here too,
    and counts as skipped; when none of `conversations` has a row, the file is another data set's."""
    from safetune.data.readers import read_jsonl

    file = Path(path)
    if not file.exists():
        raise DataError(file, None, None, "no such file or directory")
    turns: dict[str, dict[int, tuple[TurnScore, bool]]] = {}
    for number, row in read_jsonl(file):
        if not isinstance(row, dict):
            raise DataError(file, number, None, "expected an object")
        for name in ("id", "turn", "l_role", "l_unsafe", "flag"):
            if name not in row:
                raise DataError(file, number, name, "missing (a per-turn selection.jsonl of conversations)")
        turn, flag = row["turn"], row["flag"]
        if not isinstance(turn, int) or isinstance(turn, bool) or turn < 0:
            raise DataError(file, number, "turn", f"expected a turn index >= 0, got {turn!r}")
        if flag not in (0, 1, True, False):
            raise DataError(file, number, "flag", f"expected 0 or 1, got {flag!r}")
        scored = {}
        for name in ("l_role", "l_unsafe"):
            value = row[name]
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise DataError(file, number, name, f"expected a number, got {value!r}")
            scored[name] = float(value)
        ident = str(row["id"])
        if turn in turns.setdefault(ident, {}):
            raise DataError(file, number, "turn", f"turn {turn} of conversation {ident!r} given twice")
        turns[ident][turn] = (TurnScore(turn, scored["l_role"], scored["l_unsafe"]), bool(flag))
    if conversations and not any(conv.id in turns for conv in conversations):
        raise DataError(
            file, None, "id", f"no row for any conversation of the data (first: {conversations[0].id!r})"
        )
    scores, flags = [], []
    for conv in conversations:
        found = sorted(turns.get(conv.id, {}).items())
        skipped = None if found else f"no scored turn in {file.name}"
        scores.append(ConversationScores(conv.id, conv.role or "", tuple(t for _, (t, _f) in found), skipped))
        flags.append(tuple(f for _, (_t, f) in found))
    return ExternalTurnFlags(tuple(scores), tuple(flags))


def turn_selection_stats(
    scores: Sequence[ConversationScores], flags: Sequence[Sequence[bool]], variant: str
) -> dict[str, Any]:
    """selection_stats.json for conversations: counts over turns, per role and by turn position."""
    per_role: dict[str, Counter[str]] = {}
    by_turn: dict[str, Counter[str]] = {}
    margins: list[float] = []
    rds_flags = 0
    for conv, row in zip(scores, flags, strict=True):
        role = per_role.setdefault(conv.role, Counter())
        role["conversations"] += 1
        role["flagged_conversations"] += int(any(row))
        for turn, flag in zip(conv.turns, row, strict=True):
            role["count"] += 1
            role["flagged"] += int(flag)
            bucket = by_turn.setdefault(turn_bucket(turn.turn), Counter())
            bucket["count"] += 1
            bucket["flagged"] += int(flag)
            margins.append(turn.margin)
            rds_flags += turn.rds_flag
    count = sum(len(row) for row in flags)
    flagged = sum(sum(row) for row in flags)

    def rates(c: Counter[str]) -> dict[str, Any]:
        return {**c, "flag_rate": c["flagged"] / c["count"] if c["count"] else 0.0}

    order = sorted(by_turn, key=lambda b: int(b.rstrip("+")))
    return {
        "variant": variant,
        "unit": "turn",
        "count": count,
        "flagged": flagged,
        "flag_rate": flagged / count if count else 0.0,
        "conversations": len(scores),
        "flagged_conversations": sum(any(row) for row in flags),
        "skipped_conversations": sum(s.skipped is not None for s in scores),
        "roles": {role: rates(c) for role, c in sorted(per_role.items())},
        "by_turn": {bucket: rates(by_turn[bucket]) for bucket in order},
        "margin_histogram": margin_histogram(margins),
        "rds_flag_rate": rds_flags / count if count else 0.0,
        "safetune_version": __version__,
    }


def turn_flags_by_id(
    scores: Sequence[ConversationScores], flags: Sequence[Sequence[bool]]
) -> dict[str, dict[int, bool]]:
    """{conversation id: {turn: flag}}: what the trainer reads."""
    return {
        s.id: {t.turn: f for t, f in zip(s.turns, row, strict=True)}
        for s, row in zip(scores, flags, strict=True)
    }


def write_turn_selection(
    out_dir: Path,
    scores: Sequence[ConversationScores],
    flags: Sequence[Sequence[bool]],
    stats: dict[str, Any],
) -> None:
    """selection.jsonl with one row per scored turn (conversation id + turn index) and the stats."""
    rows = []
    for conv, row in zip(scores, flags, strict=True):
        for turn, flag in zip(conv.turns, row, strict=True):
            rows.append(
                {
                    "id": conv.id,
                    "turn": turn.turn,
                    "role": conv.role,
                    "l_role": turn.l_role,
                    "l_unsafe": turn.l_unsafe,
                    "margin": turn.margin,
                    "flag": int(flag),
                }
            )
    write_jsonl(out_dir / "selection.jsonl", rows)
    write_json(out_dir / "selection_stats.json", stats)


def select_turns(
    config: RunConfig,
    renderer: ChatRenderer,
    conversations: Sequence[Conversation],
    prompts: dict[str, tuple[str, str]],
    model_loader: Any,
) -> tuple[list[ConversationScores], list[list[bool]], dict[str, Any]]:
    """Per-turn scores, flags and stats for a run config's selection section. Every variant needs the
    scores here: they say which turns exist after rendering (the variants without scores compute them too,
    which costs the two passes per conversation)."""
    from safetune.models.loading import model_fingerprint

    sel = config.selection
    if sel.variant == "external" and sel.flags_file:
        # Another selection's per-turn rows (assess's shared selection): its scores and flags as they
        # are, so that no model work is redone for a subset of the conversations it scored.
        external = read_external_turn_flags(sel.flags_file, conversations)
        read = [list(row) for row in external.flags]
        stats = turn_selection_stats(external.scores, read, sel.variant)
        stats["model"] = config.model.name
        stats["flags_file"] = sel.flags_file
        return list(external.scores), read, stats
    root = cache_root(config.cache_dir)
    fingerprint = model_fingerprint(config.model.name, config.model.revision, root)
    max_tokens = config.chat.max_conversation_tokens
    scores, key = cached_turn_scores(
        model_loader, renderer, conversations, prompts, sel.batch_size, max_tokens, fingerprint, root
    )
    flags = apply_turn_variant(sel.variant, scores, seed=sel.seed)
    stats = turn_selection_stats(scores, flags, sel.variant)
    stats["model"] = config.model.name
    stats["cache_key"] = key
    return scores, flags, stats


def turn_rates(stats: dict[str, Any]) -> str:
    """Flag rates by turn position as text: "turn 1: 12% of 40, turn 2: ..."."""
    return ", ".join(
        f"turn {b}: {100 * v['flag_rate']:.0f}% of {v['count']}" for b, v in stats.get("by_turn", {}).items()
    )


def format_turn_rates(stats: dict[str, Any]) -> str:
    """One line of flag rates by turn position, for the console and the logs."""
    return "flag rate by turn position: " + turn_rates(stats)
