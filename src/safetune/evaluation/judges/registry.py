"""The one registry of judges: name -> JudgeSpec. `judge.name` in a config picks one or several;
`build_judges` builds them (`build_judge` one).

Judges: keyword (offline default), prefix (XSTest's 2023 string match, the baseline), classifier (HF sequence classifier), guard (Llama-Guard-style
generative model), llm (OpenAI-compatible chat endpoint), organism (the multilingual model organism's
strict refusal check; its synthetic languages only). What they all share is in judges/common.py.
To add a judge: a module here with NAME, VERSION, DESCRIPTION and build(config) -> Judge, one line below.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

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


def build_judges(config: JudgeConfig) -> list[Judge]:
    """Every judge of `config.names`, the primary one first, each with its own settings
    (`config.for_judge`). ConfigError for an unknown name or a missing required option, naming the
    judge. Model judges load their weights only when they first judge.

    With several judges, a shared `preset` goes to the judge it belongs to (a preset is one judge's:
    `--judge guard,keyword --judge-preset llama-guard-3` means the guard's), and is an error when it
    belongs to none of them."""
    names = config.names
    unknown = [name for name in names if name not in JUDGES]
    if unknown:
        raise ConfigError(f"unknown judge {unknown[0]!r} (known: {', '.join(sorted(JUDGES))})")
    if len(names) == 1:
        return [build_judge(config.for_judge(names[0]))]
    shared = config.preset
    owners = [name for name in names if shared is not None and shared in JUDGES[name].presets]
    if shared is not None and not owners:
        owner = next((spec.name for spec in JUDGES.values() if shared in spec.presets), None)
        where = f"the {owner} judge's" if owner else "unknown"
        raise ConfigError(f"judge.preset {shared!r} ({where}) belongs to none of the judges {config.name}")
    judges = []
    for name in names:
        settings = config.for_judge(name)
        if shared is not None and name not in owners and "preset" not in config.per_judge.get(name, {}):
            settings = replace(settings, preset=None)
        try:
            judges.append(build_judge(settings))
        except ConfigError as err:
            raise ConfigError(f"judge {name}: {err}") from None
    return judges


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
