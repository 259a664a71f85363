"""The two system prompts RDS scores each example under (docs/methods/sarft.md): the role's own prompt,
p_role, and its unsafe variant, p_unsafe (same profile, the closing style instruction replaced by a
reverse-safety one). The model organism builds its personas' prompts with the same function, so RDS
scores it under exactly the prompts it was made to know."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from safetune.config import SelectionConfig
from safetune.data.records import RoleExample, RoleProfile
from safetune.data.sources import role_key
from safetune.errors import ConfigError

log = logging.getLogger(__name__)


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
