"""Translate-then-judge (`eval.translate_to`): MultiJail's protocol of translating every non-English
answer into English before the judge reads it, as a stage between generation and judging.

Which answers: those of judged benchmarks (harmful, over-refusal) whose prompt carries a language tag
naming another language than `eval.translate_to`. English and untagged prompts are left as they are:
the judge sees them exactly as without translation (same text, same tag), so their verdicts are the
very same rows of judgements.jsonl whichever way the run judges. For a translated answer the judge
sees the prompt and the answer both translated, tagged with the target language.

Stage file: translations.jsonl (translation/cache.py), keyed by translator key, languages and text,
so a killed run resumes without translating anything twice and a re-run with another judge reuses
every completion and every translation. The verdicts on translations go to judgements.jsonl beside
the others (a verdict is keyed by judge and response hash, and the translated text hashes apart).

`eval.judge_on`: "translated" (default with translate_to) judges the translations only and they decide
the rates; "both" also judges the originals and records their rates beside (`secondary`); "original"
translates nothing. The translator is built and its language pairs checked before the run's first file
is written; its weights load after generation has freed the generation model, and go before the judge
loads its own.
"""

from __future__ import annotations

import gc
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetune.config import RunConfig
from safetune.errors import ConfigError
from safetune.evaluation.items import Judge, JudgeItem
from safetune.evaluation.stages import BatchHook, Task, item_hash, judge_pending
from safetune.translation.base import TranslationRequest, Translator
from safetune.translation.cache import TRANSLATIONS_FILE, translate_cached
from safetune.translation.languages import resolve, same_language
from safetune.translation.registry import build_translator

log = logging.getLogger(__name__)

# The fields a benchmark result gains (results.py): which verdicts its numbers come from, how many of
# its answers were translated, and the other verdicts' numbers under "both".
JUDGED_ON = ("translated", "original")


def needs_translation(task: Task, target: str) -> bool:
    language = task.prompt.language
    return task.judged and language is not None and not same_language(language, target)


@dataclass
class TranslationStage:
    target: str  # the language tag as configured
    judge_on: str  # translated | both
    translator: Translator
    languages: dict[str, str | None] = field(default_factory=dict)  # task id -> its prompt's tag
    translations: dict[str, tuple[str, str]] = field(default_factory=dict)  # task id -> (prompt, answer)
    cut: int = 0  # translated pieces that ran out of max_new_tokens

    @property
    def target_code(self) -> str:
        return resolve(self.target).code

    # ---- the stage ----

    def translate(
        self,
        tasks: Sequence[Task],
        completions: Mapping[str, dict[str, Any]],
        out: Path,
        hook: BatchHook | None,
    ) -> tuple[dict[str, tuple[str, str]], int]:
        """(prompt, answer) translated for every task that needs it, by task id; texts translated now."""
        wanted = [t for t in tasks if needs_translation(t, self.target)]
        requests = []
        for task in wanted:
            language = task.prompt.language
            assert language is not None
            requests.append(
                TranslationRequest(f"{task.request.id}\tprompt", task.prompt.text, language, self.target)
            )
            answer = completions[task.request.id]["text"]
            requests.append(TranslationRequest(f"{task.request.id}\tanswer", answer, language, self.target))
        if not requests:
            return {}, 0
        rows, count = translate_cached(requests, out / TRANSLATIONS_FILE, self.translator, hook)
        self.translator.release()  # the translation model goes before a model judge loads its own
        gc.collect()
        self.cut = sum(row.get("cut", 0) for row in rows.values())
        if self.cut:
            log.warning(
                "%d translated pieces ran out of translate.max_new_tokens (possibly incomplete); "
                "raise it or lower translate.max_input_tokens",
                self.cut,
            )
        ids = [t.request.id for t in wanted]
        return {i: (rows[f"{i}\tprompt"]["text"], rows[f"{i}\tanswer"]["text"]) for i in ids}, count

    def judge(
        self,
        tasks: Sequence[Task],
        completions: Mapping[str, dict[str, Any]],
        out: Path,
        judge: Judge,
        hook: BatchHook | None = None,
    ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]] | None, int, int]:
        """(verdicts that decide the rates, the other verdicts or None, verdicts made now, texts translated
        now). The translated items of untouched answers are the original items, so under "both" each of
        their verdicts is judged once."""
        self.translations, translated_now = self.translate(tasks, completions, out, hook)
        judged = [t for t in tasks if t.judged]
        original = [
            JudgeItem(
                t.request.id,
                t.prompt.text,
                completions[t.request.id]["text"],
                t.prompt.language,
                t.request.history,
            )
            for t in judged
        ]
        # A translated item is the last turn alone: its history stays untranslated, and a judge reading
        # English with earlier turns in another language would see a conversation nobody had.
        translated = [
            JudgeItem(t.request.id, *self.translations[t.request.id], self.target_code)
            if t.request.id in self.translations
            else item
            for t, item in zip(judged, original, strict=True)
        ]
        path = out / "judgements.jsonl"
        count = 0
        other = None
        if self.judge_on == "both":
            other, count = judge_pending(original, _hashes(original), path, judge, hook)
        primary, now = judge_pending(translated, _hashes(translated), path, judge, hook)
        return primary, other, count + now, translated_now

    # ---- what results.json records ----

    def annotate(
        self, benchmarks: dict[str, dict[str, Any]], secondary: Mapping[str, dict[str, Any]] | None
    ) -> None:
        """Each judged benchmark's judged_on and n_translated, and under "both" the original verdicts'
        numbers as its `secondary`."""
        translated = Counter(task_id.split("/", 1)[0] for task_id in self.translations)
        for name, bench in benchmarks.items():
            if bench.get("kind") not in ("harmful", "overrefusal"):
                continue
            bench["judged_on"] = "translated"
            bench["n_translated"] = translated.get(name, 0)
            if secondary is not None:
                other = secondary[name]
                keep = (
                    "n",
                    "n_valid",
                    "n_invalid",
                    "n_uncovered",
                    "value",
                    "asr",
                    "ci95",
                    "n_partial",
                    "note",
                )
                bench["secondary"] = {
                    "judged_on": "original",
                    **{k: other[k] for k in keep if k in other},
                    "by_language": other.get("by_language", {}),
                }

    def record(self, translated_now: int) -> dict[str, Any]:
        by_language = Counter(
            tag for tag in (self.languages.get(i) for i in self.translations) if tag is not None
        )
        return {
            "to": self.target,
            "judge_on": self.judge_on,
            "translator": self.translator.record(),
            "answers_translated": len(self.translations),
            "by_language": dict(sorted(by_language.items())),
            "texts_translated_now": translated_now,
            "pieces_cut": self.cut,
        }


def _hashes(items: Sequence[JudgeItem]) -> dict[str, str]:
    return {item.id: item_hash(item) for item in items}


def plan_translation(config: RunConfig, tasks: Sequence[Task]) -> TranslationStage | None:
    """The stage when `eval.translate_to` asks for one (None otherwise), checked before anything is
    written: the target and every prompt language are known tags, the translator's files load and
    it can translate each language present into the target (one ConfigError line otherwise)."""
    target = config.eval.translate_to
    judge_on = config.eval.resolved_judge_on
    if target is None or judge_on == "original":
        return None
    try:
        resolve(target)
    except ConfigError as err:
        raise ConfigError(f"eval.translate_to: {err}") from None
    pairs: dict[str, str] = {}  # source tag -> a task id that has it (for the error line)
    for task in tasks:
        language = task.prompt.language
        if not task.judged or language is None or language in pairs:
            continue
        try:
            if not same_language(language, target):
                resolve(language)
                pairs[language] = task.request.id
        except ConfigError as err:
            raise ConfigError(f"{task.request.id}: {err}") from None
    translator = build_translator(config.translate)
    for language, task_id in pairs.items():
        try:
            translator.check_pairs([(language, target)])
        except ConfigError as err:
            raise ConfigError(f"{task_id}: cannot translate {language}->{target}: {err}") from None
    stage = TranslationStage(target, judge_on, translator, {t.request.id: t.prompt.language for t in tasks})
    log.info(
        "translate-then-judge: %s -> %s with %s (%s)",
        ", ".join(sorted(pairs)) or "no other language",
        target,
        translator.kind,
        translator.record()["model"],
    )
    return stage
