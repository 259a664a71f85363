"""`safetune pairs`: MPO training data for any language from harmful prompts with unsafe answers.

    inputs      the harmful prompts and their unsafe (rejected) answers (pairs/inputs.py)
    generate    the model's own answer to each prompt in the dominant language (`generation`, hf or
                vllm), or the file's given `chosen` answer (pairs.chosen=given)
    judge       the judge (`judge.name`, keyword by default) must call it a refusal; the others are
                dropped as not_refusal (rejected.jsonl)
    translate   prompt, chosen and rejected into every target language, and back into the dominant one
                for the round-trip check (`translate`, --translator; translation/cache.py)
    filter      language identification of each translated field, round-trip chrF of each field, the
                judge again on the translated chosen answer (pairs/filter.py)
    write       pairs.json (the MPO release format, every target language; `safetune train --method
                mpo --data OUT/pairs.json`), rejected.jsonl, manifest.json, summary.md

Staged and resumable like `safetune eval`: answers, verdicts and translations are appended batch by batch
to completions.jsonl, judgements.jsonl and translations.jsonl, and a re-run reuses them (a kill loses at
most one batch; nothing is generated, judged or translated twice). The model is freed before the
translator loads (translation/base.py: check first, translate later), and the translator before the
judge reads the translations. The folder belongs to one model, input file, chosen source, dominant
language, generation settings and translator (pairs-run.json): another is refused in one line before
anything is written (--overwrite starts again). The judge, the target languages and the filter's
thresholds may change between runs: only what is missing is computed, and the outputs are rewritten.
Everything is checked before the folder's first file: the config, the inputs, the languages, the
translator (files and language pairs), the judge and the model.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetune.config import GenerationConfig, JudgeConfig, RunConfig
from safetune.errors import ConfigError, DataError
from safetune.evaluation.backends import backend_spec
from safetune.evaluation.items import Backend, GenerationRequest, Judge, JudgeItem
from safetune.evaluation.metrics import chrf_signature, sentence_chrf
from safetune.evaluation.stages import (
    BatchHook,
    append_completions,
    judge_pending,
    read_rows,
    response_hash,
    unanswered,
)
from safetune.launch import main_process_lock
from safetune.models.loading import resolve_model
from safetune.models.source import ModelSource
from safetune.pairs.filter import (
    NOT_REFUSAL,
    TRANSLATED_FIELDS,
    Identifier,
    identified_code,
    identifier,
    is_refusal,
    row_reasons,
)
from safetune.pairs.inputs import HarmfulInput, Loaded, inputs_hash, load_inputs
from safetune.pairs.manifest import Counts, package_versions, summary_markdown
from safetune.pairs.organism import build_translator
from safetune.provenance import base_provenance
from safetune.storage import write_json, write_jsonl
from safetune.translation.base import TranslationRequest, Translator
from safetune.translation.cache import TRANSLATIONS_FILE, translate_cached
from safetune.translation.languages import Language, resolve

log = logging.getLogger(__name__)

IDENTITY_FILE = "pairs-run.json"
INPUTS_FILE = "inputs.jsonl"
COMPLETIONS_FILE = "completions.jsonl"
JUDGEMENTS_FILE = "judgements.jsonl"
PAIRS_FILE = "pairs.json"
REJECTED_FILE = "rejected.jsonl"
MANIFEST_FILE = "manifest.json"
SUMMARY_FILE = "summary.md"
STAGE_FILES = (
    IDENTITY_FILE,
    INPUTS_FILE,
    COMPLETIONS_FILE,
    JUDGEMENTS_FILE,
    TRANSLATIONS_FILE,
    PAIRS_FILE,
    REJECTED_FILE,
    MANIFEST_FILE,
    SUMMARY_FILE,
)
# Generation settings a resumed run may change: they do not change what is generated.
_NOT_IN_GENERATION_KEY = ("batch_size", "gpu_memory_utilization")


@dataclass(frozen=True)
class PairsReport:
    out: Path
    counts: dict[str, Any]
    generated_now: int
    judged_now: int
    translated_now: int


@dataclass(frozen=True)
class Plan:
    """Everything a build needs, checked before the folder's first file."""

    loaded: Loaded
    dominant: Language
    targets: tuple[Language, ...]
    judge: Judge
    translator: Translator
    identifier: Identifier
    source: ModelSource | None  # None: chosen answers given
    identity: dict[str, Any]


def build_pairs(
    config: RunConfig,
    overwrite: bool = False,
    hook: BatchHook | None = None,
    make_backend: Callable[[ModelSource, GenerationConfig], Backend] | None = None,
    make_judge: Callable[[JudgeConfig], Judge] | None = None,
) -> PairsReport:
    """Build (or resume) the pairs into `config.pairs.output_dir`, holding the folder's lock throughout.
    `hook(stage, done)` is called after each appended batch; `make_backend` / `make_judge` replace the
    registries' (tests)."""
    out = Path(config.pairs.output_dir)
    with main_process_lock(out):
        return _build(config, out, overwrite, hook, make_backend, make_judge)


def _one_judge(config: JudgeConfig) -> Judge:
    from safetune.evaluation.judges.registry import build_judge

    if len(config.names) != 1:
        raise ConfigError(f"pairs keeps refusals by one judge, got judge.name={config.name}")
    return build_judge(config.for_judge(config.names[0]))


def _language(where: str, tag: str) -> Language:
    try:
        return resolve(tag)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def plan(config: RunConfig, make_judge: Callable[[JudgeConfig], Judge] | None = None) -> Plan:
    """Check the whole build (no weights loaded, nothing written): one ConfigError / DataError line."""
    p = config.pairs
    if not p.inputs:
        raise ConfigError("no inputs: give the harmful-prompt file (--inputs FILE, pairs.inputs)")
    if not p.languages:
        raise ConfigError("no target languages: --languages bn,sw (pairs.languages)")
    if p.chosen == "generate" and not config.model.name:
        raise ConfigError("--model (model.name) is required: its own refusals are the chosen answers")
    dominant = _language("pairs.dominant", p.dominant)
    targets = tuple(_language("pairs.languages", tag) for tag in p.languages)
    for tag, target in zip(p.languages, targets, strict=True):
        if target.ident == dominant.ident:
            raise ConfigError(f"pairs.languages: {tag} is the dominant language ({p.dominant})")
    if len({t.ident for t in targets}) != len(targets):
        raise ConfigError(f"pairs.languages: one language named twice ({', '.join(p.languages)})")
    loaded = load_inputs(p.inputs, p.format, p.columns, p.header, config.data.invalid, p.limit)
    if p.chosen == "given":
        lacking = next((i for i in loaded.inputs if i.chosen is None), None)
        if lacking is not None:
            raise DataError(
                p.inputs, lacking.line, "chosen", "missing (pairs.chosen=given needs a chosen answer)"
            )
    found = identifier(p.identifier)
    judge = (make_judge or _one_judge)(config.judge)
    translator = build_translator(config.translate)
    # Forward, and back for the round trip (its scores are recorded even when min_chrf keeps every row).
    wanted = [(dominant.code, t.code) for t in targets] + [(t.code, dominant.code) for t in targets]
    for pair in wanted:
        try:
            translator.check_pairs([pair])
        except ConfigError as err:
            raise ConfigError(f"--translator cannot translate {pair[0]}->{pair[1]}: {err}") from None
    source = None
    if p.chosen == "generate":
        source = resolve_model(config.model.name, config.model.revision)
        backend_spec(config.generation)  # an unknown backend stops here
    generation = {
        k: v for k, v in dataclasses.asdict(config.generation).items() if k not in _NOT_IN_GENERATION_KEY
    }
    identity = {
        "model": None if source is None else source.fingerprint,
        "inputs": inputs_hash(loaded.inputs),
        "chosen": p.chosen,
        "dominant": dominant.ident,
        "generation": generation if source is not None else None,
        "translator": translator.key(),
    }
    return Plan(loaded, dominant, targets, judge, translator, found, source, identity)


def _build(
    config: RunConfig,
    out: Path,
    overwrite: bool,
    hook: BatchHook | None,
    make_backend: Callable[[ModelSource, GenerationConfig], Backend] | None,
    make_judge: Callable[[JudgeConfig], Judge] | None,
) -> PairsReport:
    p = config.pairs
    plan_ = plan(config, make_judge)
    inputs = plan_.loaded.inputs
    if not overwrite:
        _check_identity(out, plan_.identity)
    requests = [GenerationRequest(i.id, i.prompt, config.generation.system) for i in inputs]
    completions = {} if overwrite else read_rows(out / COMPLETIONS_FILE, lambda row: True)
    missing = unanswered(requests, completions)
    backend = None
    if plan_.source is not None and missing:
        # The model loads (and so is checked) before anything is written.
        backend = (make_backend or backend_spec(config.generation).build)(plan_.source, config.generation)

    out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for name in STAGE_FILES:
            (out / name).unlink(missing_ok=True)
    source_record = None if plan_.source is None else plan_.source.to_dict()
    write_json(
        out / IDENTITY_FILE, {**plan_.identity, "model_source": source_record, "inputs_source": p.inputs}
    )
    write_jsonl(out / INPUTS_FILE, (i.to_dict() for i in inputs))

    generated = 0
    if backend is not None:
        log.info("answers: %d on disk, %d to generate", len(requests) - len(missing), len(missing))
        generated = append_completions(missing, backend, out / COMPLETIONS_FILE, completions, hook)
    del backend
    gc.collect()  # the model goes before the translator loads its own weights

    chosen = {i.id: i.chosen if plan_.source is None else completions[i.id]["text"] for i in inputs}
    items = [JudgeItem(f"d/{i.id}", i.prompt, chosen[i.id] or "", plan_.dominant.code) for i in inputs]
    verdicts, judged = judge_pending(items, _hashes(items), out / JUDGEMENTS_FILE, plan_.judge, hook)
    kept = [i for i in inputs if is_refusal(verdicts[f"d/{i.id}"])]
    counts = Counts(inputs=len(inputs), refusals_kept=len(kept), not_refusal=len(inputs) - len(kept))
    if plan_.source is not None:  # refusals cut by generation.max_new_tokens are kept, and counted
        counts.refusals_truncated = sum(completions[i.id].get("finish_reason") == "length" for i in kept)
    rejected: list[dict[str, Any]] = [
        {
            "id": i.id,
            "language": plan_.dominant.code,
            "reasons": [NOT_REFUSAL],
            "line": i.line,
            "chosen": chosen[i.id],
            "verdict": _verdict(verdicts[f"d/{i.id}"]),
        }
        for i in inputs
        if not is_refusal(verdicts[f"d/{i.id}"])
    ]
    log.info("the judge (%s) calls %d of %d answers refusals", plan_.judge.name, len(kept), len(inputs))

    texts = {i.id: {"prompt": i.prompt, "chosen": chosen[i.id] or "", "rejected": i.rejected} for i in kept}
    forward, back, translated = _translate(plan_, kept, texts, out, hook)

    target_verdicts: dict[str, dict[str, Any]] = {}
    if p.target_refusal != "none" and kept:
        target_items = [
            JudgeItem(
                f"t/{t.code}/{i.id}",
                forward[(i.id, t.code, "prompt")],
                forward[(i.id, t.code, "chosen")],
                t.code,
            )
            for t in plan_.targets
            for i in kept
        ]
        target_verdicts, now = judge_pending(
            target_items, _hashes(target_items), out / JUDGEMENTS_FILE, plan_.judge, hook
        )
        judged += now

    records: list[dict[str, Any]] = []
    for target in plan_.targets:
        expected = identified_code(target)
        for item in kept:
            fields = {name: forward[(item.id, target.code, name)] for name in TRANSLATED_FIELDS}
            detected = {name: plan_.identifier.detect(text) for name, text in fields.items()}
            scores = {
                name: round(sentence_chrf(back[(item.id, target.code, name)], texts[item.id][name]), 2)
                for name in TRANSLATED_FIELDS
            }
            verdict = target_verdicts.get(f"t/{target.code}/{item.id}")
            reasons = row_reasons(
                fields, detected, expected, scores, verdict, p.language_check, p.min_chrf, p.target_refusal
            )
            counts.add(target.code, reasons)
            if reasons:
                rejected.append(
                    {
                        "id": item.id,
                        "language": target.code,
                        "reasons": reasons,
                        "line": item.line,
                        "detected": detected,
                        "chrf": scores,
                        **({"verdict": _verdict(verdict)} if verdict is not None else {}),
                    }
                )
                continue
            records.append(
                release_record(item, texts[item.id], fields, plan_.dominant, target, config.generation.system)
            )

    counts_dict = counts.to_dict([t.code for t in plan_.targets])
    manifest = _manifest(config, plan_, counts_dict)
    write_json(out / PAIRS_FILE, records)
    write_jsonl(out / REJECTED_FILE, rejected)
    write_json(out / MANIFEST_FILE, manifest)
    (out / SUMMARY_FILE).write_text(summary_markdown(manifest), encoding="utf-8")
    if not records:
        log.warning("no pair passed: %s is empty (see %s)", out / PAIRS_FILE, out / REJECTED_FILE)
    return PairsReport(out, counts_dict, generated, judged, translated)


def _translate(
    plan_: Plan,
    kept: Sequence[HarmfulInput],
    texts: dict[str, dict[str, str]],
    out: Path,
    hook: BatchHook | None,
) -> tuple[dict[tuple[str, str, str], str], dict[tuple[str, str, str], str], int]:
    """(forward translations, back-translations into the dominant language, texts translated now), each
    keyed by (input id, target code, field). The translator is released after."""
    path = out / TRANSLATIONS_FILE
    dominant = plan_.dominant.code
    requests = [
        TranslationRequest(f"{i.id}\t{t.code}\t{name}", texts[i.id][name], dominant, t.code)
        for t in plan_.targets
        for i in kept
        for name in TRANSLATED_FIELDS
    ]
    rows, count = translate_cached(requests, path, plan_.translator, hook) if requests else ({}, 0)
    forward: dict[tuple[str, str, str], str] = {}
    for rid, row in rows.items():
        ident, code, name = rid.rsplit("\t", 2)
        forward[(ident, code, name)] = row["text"]
    back: dict[tuple[str, str, str], str] = {}
    if requests:
        backward = [
            TranslationRequest(r.id, rows[r.id]["text"], r.target, dominant)
            for r in requests
            if rows[r.id]["text"]
        ]
        back_rows, now = translate_cached(backward, path, plan_.translator, hook) if backward else ({}, 0)
        count += now
        back = {key: back_rows.get("\t".join(key), {}).get("text", "") for key in forward}
    plan_.translator.release()
    gc.collect()
    cut = sum(row.get("cut", 0) for row in rows.values())
    if cut:
        log.warning(
            "%d translated pieces ran out of translate.max_new_tokens (possibly incomplete); raise it", cut
        )
    return forward, back, count


def release_record(
    item: HarmfulInput,
    source: dict[str, str],
    target: dict[str, str],
    dominant: Language,
    language: Language,
    system: str | None,
) -> dict[str, Any]:
    """One pair in the MPO authors' release format (data/preferences.py "mpo-release"): ShareGPT turns,
    the id made unique across languages ("<input id>/<language>")."""

    def conversation(prompt: str) -> list[dict[str, str]]:
        turns = [{"from": "system", "value": system}] if system else []
        return [*turns, {"from": "human", "value": prompt}]

    return {
        "id": f"{item.id}/{language.code}",
        "language": language.code,
        "source_language": dominant.code,
        "source_conversations": conversation(source["prompt"]),
        "source_chosen": {"from": "gpt", "value": source["chosen"]},
        "source_rejected": {"from": "gpt", "value": source["rejected"]},
        "target_conversations": conversation(target["prompt"]),
        "target_chosen": {"from": "gpt", "value": target["chosen"]},
        "target_rejected": {"from": "gpt", "value": target["rejected"]},
    }


def _hashes(items: Sequence[JudgeItem]) -> dict[str, str]:
    return {i.id: response_hash(i.response, i.language) for i in items}


def _verdict(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row.get(k) for k in ("label", "refused", "raw")}


def _check_identity(out: Path, identity: dict[str, Any]) -> None:
    """Refuse a folder that holds the pairs of another model, input file, chosen source, dominant
    language, generation settings or translator."""
    path = out / IDENTITY_FILE
    if not path.exists():
        if any((out / name).exists() for name in STAGE_FILES[1:]):
            raise ConfigError(f"{out} holds files of another kind (no {IDENTITY_FILE}); use another --out")
        return
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read {path}: {err}") from None
    differs = [key for key in identity if stored.get(key) != identity[key]]
    if differs:
        raise ConfigError(
            f"{out} holds pairs made with another {', '.join(differs)} (inputs {stored.get('inputs_source')!r}); "
            "use another --out or pass --overwrite"
        )


def _chrf_signature() -> str:
    """sacrebleu's chrF signature; it names the number of references only once a score was computed,
    so a build that scored nothing (no refusal kept) scores one sentence pair first."""
    sentence_chrf("-", "-")
    return chrf_signature()


def _manifest(config: RunConfig, plan_: Plan, counts: dict[str, Any]) -> dict[str, Any]:
    p = config.pairs
    judge = plan_.judge
    return {
        **base_provenance(),
        "model": None if plan_.source is None else plan_.source.to_dict(),
        "chosen": p.chosen,
        "generation": plan_.identity["generation"],
        "backend": config.generation.backend if plan_.source is not None else None,
        "inputs": {
            "source": p.inputs,
            "format": plan_.loaded.format,
            "hash": plan_.identity["inputs"],
            **plan_.loaded.counts(),
            "invalid": plan_.loaded.invalid.report(),
            "no_unsafe_response_lines": plan_.loaded.no_unsafe,
        },
        "dominant_language": plan_.dominant.code,
        "languages": [t.code for t in plan_.targets],
        "judge": {"name": judge.name, "version": judge.version, "key": judge.key()},
        "translator": plan_.translator.record(),
        "filter": {
            "language_check": p.language_check,
            "identifier": {"name": plan_.identifier.name, "version": plan_.identifier.version},
            "min_chrf": p.min_chrf,
            "chrf": _chrf_signature(),
            "target_refusal": p.target_refusal,
        },
        "packages": package_versions(),
        "counts": counts,
        "files": {"pairs": PAIRS_FILE, "rejected": REJECTED_FILE, "summary": SUMMARY_FILE},
    }
