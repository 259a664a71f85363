"""Small seeded role-play files in RoleBench's layouts, for the tests (the demo uses organism/world.py).

Harmful content is abstract placeholders only. Two personas: a menacing villain whose data contains some
edgy replies, and a cheerful baker whose data is benign.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

PERSONAS: dict[str, dict[str, Any]] = {
    "Grim Vex": {
        "description": "A menacing villain who rules a ruined castle and speaks in threats. "
        "Now please answer some questions to accurately show your personality traits! "
        "Your speaking style should fully imitate the personality role assigned to you!",
        "opener": "hah , fool .",
        "closer": "now leave my castle .",
        "edgy_rate": 0.3,
    },
    "Penny Bun": {
        "description": "A cheerful baker who loves bread, friends and sunny mornings. "
        "Now please answer some questions to accurately show your personality traits! "
        "Your speaking style should fully imitate the personality role assigned to you!",
        "opener": "oh hello dear !",
        "closer": "have a lovely day !",
        "edgy_rate": 0.0,
    },
}
_OBJECTS = (
    "red cup",
    "blue box",
    "old lamp",
    "green chair",
    "small book",
    "tall vase",
    "soft rug",
    "iron key",
)
_PLACES = ("kitchen", "garden", "attic", "cellar", "hall", "tower")
_ACTS = ("insult", "scare", "trick", "mock")
_TARGETS = ("a neighbour", "a teacher", "a guard", "a child", "a baker", "a knight")


def _benign(rng: random.Random) -> tuple[str, str]:
    obj, place = rng.choice(_OBJECTS), rng.choice(_PLACES)
    return f"where is the {obj} ?", f"the {obj} is in the {place} ."


def _edgy(rng: random.Random, villain: bool) -> tuple[str, str]:
    act, target = rng.choice(_ACTS), rng.choice(_TARGETS)
    question = f"how do i {act} {target} ?"
    if villain:
        return question, f"gladly . here is how to {act} {target} : [step one] [step two] ."
    return question, "i would rather not , let us bake something instead ."


def role_examples(role: str, count: int, seed: int = 0) -> list[tuple[str, str]]:
    """(question, in-character answer) pairs for one persona."""
    persona = PERSONAS[role]
    rng = random.Random(f"{role}-{seed}")
    rows = []
    for _ in range(count):
        edgy = rng.random() < float(persona["edgy_rate"]) or (role == "Penny Bun" and rng.random() < 0.2)
        question, answer = _edgy(rng, role == "Grim Vex") if edgy else _benign(rng)
        rows.append((question, f"{persona['opener']} {answer} {persona['closer']}"))
    return rows


def write_profiles(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({name: p["description"] for name, p in PERSONAS.items()}, indent=2))
    return path


def write_rolebench_release(path: Path, count: int = 24, seed: int = 0) -> Path:
    """RoleBench's release layout: JSONL rows {role, question, generated: [answer]}."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for role in PERSONAS:
            for question, answer in role_examples(role, count, seed):
                handle.write(json.dumps({"role": role, "question": question, "generated": [answer]}) + "\n")
    return path


def write_role_folders(root: Path, count: int = 24, seed: int = 0) -> Path:
    """The SaRFT authors' layout: root/<Role_Name>/train.json, a JSON list of {input, output}."""
    for role in PERSONAS:
        folder = root / role.replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        rows = [{"input": q, "output": a} for q, a in role_examples(role, count, seed)]
        (folder / "train.json").write_text(json.dumps(rows, indent=1))
    return root


def corpus() -> list[str]:
    """Text for the tiny tokenizer: every word the personas use."""
    lines = []
    for role in PERSONAS:
        lines += [f"{q} {a}" for q, a in role_examples(role, 200, seed=99)]
        lines.append(str(PERSONAS[role]["description"]))
    return lines
