"""Plain records that flow between stages. Frozen dataclasses: cheap, hashable, JSON-friendly."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class RoleExample:
    """One role-play training example: a user input and the character's response.

    `is_harmful` carries optional 0/1 labels from the authors' per-role files (unused by RDS itself).
    """

    role: str
    input: str
    output: str
    id: str
    is_harmful: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RoleProfile:
    """A role's name and profile description (RoleBench profile style).

    `role_prompt` / `unsafe_prompt`: the exact system prompts, when the profile file gives them (the
    SaRFT authors' `prompt_v2.json`); RDS then uses them verbatim instead of building them.
    """

    name: str
    description: str
    role_prompt: str | None = None
    unsafe_prompt: str | None = None


@dataclass(frozen=True)
class PreferencePair:
    """A plain preference triple for DPO-family baselines."""

    prompt: str
    chosen: str
    rejected: str
    id: str
    language: str | None = None


@dataclass(frozen=True)
class ParallelPreferencePair:
    """The same preference triple in the dominant and in a target language (reward-gap MPO)."""

    dominant: PreferencePair
    target: PreferencePair
    id: str
    system: str | None = None


@dataclass(frozen=True)
class Prompt:
    """One evaluation prompt. `references` are the gold answers of role-play prompts (ROUGE-L takes the
    best match); `role`, `language` and `category` group results (per role / per language)."""

    id: str
    text: str
    benchmark: str
    references: tuple[str, ...] = ()
    language: str | None = None
    role: str | None = None
    category: str | None = None
    # The conversation before the prompt (multi-turn safety sets, safety at turn k): the prompt is the
    # next user turn. A user message not followed by an assistant one marks a reply the model under test
    # writes itself, turn by turn (evaluation/turns.py). Empty for single-turn prompts.
    history: tuple[Message, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if not self.history:  # single-turn rows keep the layout they had before multi-turn prompts
            del data["history"]
        return data


@dataclass(frozen=True)
class Message:
    """One message of a multi-turn conversation. `train` is the file's per-message training flag
    (axolotl's `train`, OpenAI's `weight` 0/1) when it has one, else None: the training rule decides
    (every assistant message by default). `name`: the speaker's display name where a format keeps one
    (SillyTavern, PIPPA); informational."""

    role: Literal["user", "assistant"]
    content: str
    train: bool | None = None
    name: str | None = None


@dataclass(frozen=True)
class Conversation:
    """A multi-turn role-play conversation (issue 23): the character's system prompt (its card's role
    prompt as a front-end assembles it, or the file's own system message), then user and assistant
    messages. The first message may be the character's (a greeting): rendering handles templates that
    refuse an assistant-first conversation. `role`: the character's name, when known."""

    id: str
    messages: tuple[Message, ...]
    system: str | None = None
    role: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
