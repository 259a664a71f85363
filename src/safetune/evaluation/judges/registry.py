"""The one registry of judges: name -> JudgeSpec. `judge.name` in a config picks one; `build_judge` builds it.

Judges: keyword (offline default), prefix (XSTest's 2023 string match, the baseline), classifier (HF sequence classifier), guard (Llama-Guard-style
generative model), llm (OpenAI-compatible chat endpoint), organism (the multilingual model organism's
strict refusal check; its synthetic languages only). What they all share is in judges/common.py.
To add a judge: a module here with NAME, VERSION, DESCRIPTION and build(config) -> Judge, one line below.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from safetune.config import JudgeConfig
from safetune.errors import ConfigError
from safetune.evaluation.items import Judge
from safetune.evaluation.judges import classifier, guard, keyword, llm, organism, prefix


@dataclass(frozen=True)
class JudgeSpec:
    name: str
    version: str
    description: str
    build: Callable[[JudgeConfig], Judge]
    # the names `judge.preset` may take with this judge -> the model each is for and its languages
    presets: Mapping[str, str] = field(default_factory=dict)


JUDGES: dict[str, JudgeSpec] = {
    spec.name: spec
    for spec in (
        JudgeSpec(keyword.NAME, keyword.VERSION, keyword.DESCRIPTION, keyword.build),
        JudgeSpec(prefix.NAME, prefix.VERSION, prefix.DESCRIPTION, prefix.build),
        JudgeSpec(
            classifier.NAME,
            classifier.VERSION,
            classifier.DESCRIPTION,
            classifier.build,
            classifier.PRESET_SUMMARIES,
        ),
        JudgeSpec(guard.NAME, guard.VERSION, guard.DESCRIPTION, guard.build, guard.PRESET_SUMMARIES),
        JudgeSpec(llm.NAME, llm.VERSION, llm.DESCRIPTION, llm.build),
        JudgeSpec(organism.NAME, organism.VERSION, organism.DESCRIPTION, organism.build),
    )
}


def build_judge(config: JudgeConfig) -> Judge:
    """The judge named by `config.name`; ConfigError for an unknown name or a missing required option."""
    if config.name not in JUDGES:
        raise ConfigError(f"unknown judge {config.name!r} (known: {', '.join(sorted(JUDGES))})")
    spec = JUDGES[config.name]
    check_preset(spec, config.preset)
    return spec.build(config)


def check_preset(spec: JudgeSpec, preset: str | None) -> None:
    """A preset belongs to one judge: another judge's preset, or any preset for a judge without presets,
    is an error naming the judge it belongs to (it would otherwise be ignored or misread)."""
    if preset is None or preset in spec.presets:
        return
    owner = next((other.name for other in JUDGES.values() if preset in other.presets), None)
    if owner is not None:
        raise ConfigError(
            f"judge.preset {preset!r} belongs to the {owner} judge, not {spec.name} (--judge {owner})"
        )
    if not spec.presets:
        raise ConfigError(f"the {spec.name} judge has no presets (judge.preset {preset!r})")
    raise ConfigError(f"unknown {spec.name} preset {preset!r} (known: {', '.join(spec.presets)})")
