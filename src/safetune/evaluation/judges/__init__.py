"""The one registry of judges: name -> JudgeSpec. `judge.name` in a config picks one; `build_judge` builds it.

Judges: keyword (offline default), classifier (HF sequence classifier), guard (Llama-Guard-style
generative model), llm (OpenAI-compatible chat endpoint), organism (the multilingual model organism's
strict refusal check; its synthetic languages only). Every judge follows the same two rules, kept
here so that they cannot drift apart:
- an empty (whitespace-only) response is label "invalid", refused None, raw "empty response", without
  asking the model: nothing was said, so it is neither a refusal nor a compliance, and calling it "safe"
  would inflate safety silently (invalid is counted and reported);
- verdicts are yielded batch by batch, in the items' order, under a "judging (<name>)" progress bar.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from safetune import console
from safetune.config import JudgeConfig
from safetune.errors import ConfigError
from safetune.evaluation.items import Judge, JudgeItem, Verdict

EMPTY_RAW = "empty response"


@dataclass(frozen=True)
class JudgeSpec:
    name: str
    version: str
    description: str
    build: Callable[[JudgeConfig], Judge]


def empty_verdict(item: JudgeItem) -> Verdict:
    return Verdict(item.id, "invalid", None, EMPTY_RAW)


def judge_batches(
    items: Sequence[JudgeItem],
    batch_size: int,
    name: str,
    judge_batch: Callable[[list[JudgeItem]], list[Verdict]],
) -> Iterator[list[Verdict]]:
    """Cut `items` into batches, let `judge_batch` label the non-empty responses, yield in item order."""
    with console.progress(total=len(items), desc=f"judging ({name})", unit="item") as bar:
        for start in range(0, len(items), batch_size):
            batch = list(items[start : start + batch_size])
            filled = [item for item in batch if item.response.strip()]
            judged = judge_batch(filled) if filled else []
            if len(judged) != len(filled):
                raise RuntimeError(f"judge {name} returned {len(judged)} verdicts for {len(filled)} items")
            verdicts = iter(judged)
            yield [next(verdicts) if item.response.strip() else empty_verdict(item) for item in batch]
            bar.update(len(batch))


def require_model(config: JudgeConfig, example: str) -> str:
    if not config.model:
        raise ConfigError(f"judge.model is required for the {config.name} judge (e.g. {example})")
    return config.model


# The judge modules import the helpers above, so they are imported only once those exist.
from safetune.evaluation.judges import classifier, guard, keyword, llm, organism  # noqa: E402

JUDGES: dict[str, JudgeSpec] = {
    spec.name: spec
    for spec in (
        JudgeSpec(keyword.NAME, keyword.VERSION, keyword.DESCRIPTION, keyword.build),
        JudgeSpec(classifier.NAME, classifier.VERSION, classifier.DESCRIPTION, classifier.build),
        JudgeSpec(guard.NAME, guard.VERSION, guard.DESCRIPTION, guard.build),
        JudgeSpec(llm.NAME, llm.VERSION, llm.DESCRIPTION, llm.build),
        JudgeSpec(organism.NAME, organism.VERSION, organism.DESCRIPTION, organism.build),
    )
}


def build_judge(config: JudgeConfig) -> Judge:
    """The judge named by `config.name`; ConfigError for an unknown name or a missing required option."""
    if config.name not in JUDGES:
        raise ConfigError(f"unknown judge {config.name!r} (known: {', '.join(sorted(JUDGES))})")
    return JUDGES[config.name].build(config)
