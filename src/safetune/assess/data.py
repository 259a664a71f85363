"""What a study reads of its data: single-turn role examples (RoleBench, the SaRFT authors' folders) or
multi-turn conversations (a conversation `data.format`, `data.card`, or detected: data/conversation_data.py).

Conversations are studied per character: a conversation's role is its card's name, its PIPPA bot, or the
name its file gives; every unit fine-tunes on one character's conversations with the per-turn flags of the
study's shared selection. A conversation with no character name cannot be put in a role's unit, so it is
refused before the study's first file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from safetune.config import RunConfig
from safetune.data.records import RoleProfile
from safetune.errors import ConfigError


@dataclass(frozen=True)
class StudyData:
    """The data's roles (in first-seen order), the profiles the traits come from (none for
    conversations: a card is no profile of the lexicon's kind), and the texts report.md shows for a
    selection row: keyed by id (single-turn) or `id#turn` (a conversation's assistant turn)."""

    conversations: bool
    roles: tuple[str, ...]
    profiles: Mapping[str, RoleProfile]
    texts: Mapping[str, tuple[str, str]]


def row_key(row: Mapping[str, object]) -> str:
    """The key of a selection.jsonl row in StudyData.texts."""
    return f"{row['id']}#{row['turn']}" if "turn" in row else str(row["id"])


def load_study_data(config: RunConfig) -> StudyData:
    from safetune.data.conversation_data import is_conversation_data, load_conversation_data
    from safetune.data.sources import load_data

    if not is_conversation_data(config):
        examples, profiles = load_data(config)
        roles = tuple(dict.fromkeys(ex.role for ex in examples))
        return StudyData(False, roles, profiles, {ex.id: (ex.input, ex.output) for ex in examples})
    conversations, _ = load_conversation_data(config)
    unnamed = next((c for c in conversations if not c.role), None)
    if unnamed is not None:
        raise ConfigError(
            f"{config.data.path}: conversation {unnamed.id!r} has no character name, and a study's units are "
            "per character: give the conversations a card (--data.card) or names"
        )
    texts: dict[str, tuple[str, str]] = {}
    for conv in conversations:
        # a turn's input: the user message just before it ("–" for a greeting, which answers nothing)
        turn, asked = 0, "–"
        for message in conv.messages:
            if message.role == "user":
                asked = message.content
            elif message.role == "assistant":
                texts[f"{conv.id}#{turn}"] = (asked, message.content)
                turn, asked = turn + 1, "–"
    roles = tuple(dict.fromkeys(str(c.role) for c in conversations))
    return StudyData(True, roles, {}, texts)
