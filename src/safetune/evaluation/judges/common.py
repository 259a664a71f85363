"""What every judge shares, kept in one place so that the judges cannot drift apart:

- an empty (whitespace-only) response is label "invalid", refused None, raw "empty response", without
  asking the model: nothing was said, so it is neither a refusal nor a compliance, and calling it "safe"
  would inflate safety silently (invalid is counted and reported);
- verdicts are yielded batch by batch, in the items' order, under a "judging (<name>)" progress bar.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from safetune import console
from safetune.config import JudgeConfig
from safetune.errors import ConfigError
from safetune.evaluation.items import JudgeItem, Verdict

EMPTY_RAW = "empty response"


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
    """`judge.model`, checked as far as it can be without loading it (a local folder exists and holds
    whole safetensors weights): a judge is built before generation, so a bad one fails first."""
    from safetune.models.loading import check_model_folder

    if not config.model:
        raise ConfigError(f"judge.model is required for the {config.name} judge (e.g. {example})")
    check_model_folder(config.model, "judge.model")
    return config.model
