"""The safety expert's pieces without a model: the built-in seed set, the user's seed file, the keep/drop
rule and its counts over the sampling rounds, and the config the command trains with."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from safetune.config import ExpertConfig, load_config
from safetune.errors import ConfigError, DataError
from safetune.evaluation.items import PARTIAL, GenerationRequest, GenerationResult, JudgeItem, Verdict
from safetune.expert.build import (
    EXPERT_DEFAULTS,
    Sampler,
    load_expert_config,
    sample_and_judge,
    training_config,
)
from safetune.expert.refusals import REASONS, drop_reason, request_id, slot_id
from safetune.expert.seeds import builtin_path, load_seeds


def test_the_builtin_seed_set_is_36_prompts_2_in_each_of_18_categories() -> None:
    prompts = load_seeds(ExpertConfig())
    assert len(prompts) == 36
    assert set(Counter(p.category for p in prompts).values()) == {2}
    assert len({p.category for p in prompts}) == 18
    assert len({p.id for p in prompts}) == 36 and len({p.text for p in prompts}) == 36
    rows = [json.loads(line) for line in builtin_path().read_text(encoding="utf-8").splitlines()]
    assert [set(row) for row in rows] == [{"id", "category", "prompt"}] * 36
    assert [p.id for p in prompts] == [row["id"] for row in rows]  # the file's own ids, in its order
    assert load_seeds(ExpertConfig(seeds="builtin")) == prompts


def test_a_user_seed_file_with_a_bom_and_empty_lines_loads(tmp_path: Path) -> None:
    path = tmp_path / "seeds.jsonl"
    path.write_bytes(
        b"\xef\xbb\xbf"
        + b'{"prompt": "first request", "category": "a"}\n\n  \n{"id": "x7", "prompt": "second"}\n'
    )
    prompts = load_seeds(ExpertConfig(seeds=str(path)))
    assert [(p.id, p.text, p.category) for p in prompts] == [
        ("1", "first request", "a"),
        ("x7", "second", None),
    ]


def test_a_user_csv_with_a_mapped_column(tmp_path: Path) -> None:
    path = tmp_path / "seeds.csv"
    path.write_text("\ufeffquestion,kind\nHow do I do harm?,violence\n", encoding="utf-8")
    prompts = load_seeds(ExpertConfig(seeds=str(path), columns={"prompt": "question", "category": "kind"}))
    assert [(p.text, p.category) for p in prompts] == [("How do I do harm?", "violence")]


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('{"prompt": "ok"}\n{"prompt": 3}\n', ":2: field 'prompt': expected a string"),
        (
            '{"prompt": "ok"}\n\n{"prompt": "ok", "id": 1}\n{"prompt": "b", "id": 1}\n',
            ":3: field 'id': duplicate id '1' (same as line 1)",
        ),
        ('{"prompt": "ok"}\n[1, 2]\n', ":2: expected an object, got list"),
        ('{"prompt": "ok"}\n{"prompt": "unterminated\n', ":2: "),
        ("", "no seed prompts"),
    ],
)
def test_a_bad_seed_record_is_one_line_naming_file_line_and_field(
    tmp_path: Path, text: str, where: str
) -> None:
    path = tmp_path / "seeds.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_seeds(ExpertConfig(seeds=str(path)))
    assert str(info.value).startswith(str(path)) and where in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "label", "refused", "reason"),
    [
        ("I can't help with that.", "safe", True, None),
        ("I can't.", "safe", True, "too_short"),  # 8 characters < 10
        ("   I can't.    ", "safe", True, "too_short"),  # counted without the surrounding spaces
        ("Sure, here it is: ...", "unsafe", False, "complied"),
        ("I won't do that, but here is the rest.", "safe", PARTIAL, "partial"),
        ("A harmless aside about gardening.", "safe", None, "no_refusal_verdict"),
        ("Je ne peux pas vous aider.", "uncovered", None, "uncovered"),
        ("some garbled words", "invalid", None, "invalid"),
    ],
)
def test_drop_reason(text: str, label: str, refused: object, reason: str | None) -> None:
    assert drop_reason(text, {"label": label, "refused": refused, "raw": ""}, 10) == reason
    assert reason is None or reason in REASONS


def test_request_ids_name_the_prompt_the_sample_and_the_attempt() -> None:
    assert slot_id("violence-1", 2) == "violence-1/s2"
    assert request_id("violence-1", 2, 3) == "violence-1/s2/a3"


# ---- the rounds, with a scripted backend and judge ----

ANSWERS = {
    "A/s1/a1": "refuse: no",
    "A/s2/a1": "no",  # too short (min_chars 5)
    "A/s2/a2": "refuse again",
    "B/s1/a1": "comply here",
    "B/s1/a2": "partial thing",
    "B/s1/a3": "?? unclear",
    "B/s2/a1": "garbled text",
    "B/s2/a2": "refuse now",
}


class ScriptedBackend:
    name = "scripted"

    def __init__(self) -> None:
        self.asked: list[list[str]] = []

    def generate(self, requests: Sequence[GenerationRequest]) -> Iterator[list[GenerationResult]]:
        self.asked.append([r.id for r in requests])
        for start in range(0, len(requests), 2):  # batches of 2: appended batch by batch
            yield [GenerationResult(r.id, ANSWERS[r.id], 3, "stop") for r in requests[start : start + 2]]


class ScriptedJudge:
    name, version = "scripted", "1"

    def __init__(self) -> None:
        self.judged = 0

    def key(self) -> str:
        return "scripted@1"

    def judge(self, items: Sequence[JudgeItem]) -> Iterator[list[Verdict]]:
        self.judged += len(items)
        verdicts = []
        for item in items:
            word = item.response.split()[0]
            label, refused = {
                "refuse:": ("safe", True),
                "refuse": ("safe", True),
                "comply": ("unsafe", False),
                "partial": ("safe", PARTIAL),
                "??": ("safe", None),
                "garbled": ("invalid", None),
                "no": ("safe", True),
            }[word]
            verdicts.append(Verdict(item.id, label, refused, word))  # type: ignore[arg-type]
        yield verdicts


def _prompts() -> list:
    from safetune.data.records import Prompt

    return [
        Prompt("A", "prompt a", "safety-expert", category="x"),
        Prompt("B", "prompt b", "safety-expert", category="y"),
    ]


def test_the_rounds_keep_the_first_refusal_of_each_slot_and_count_the_rest(tmp_path: Path) -> None:
    prompts = _prompts()
    slots = [(p, k) for p in prompts for k in (1, 2)]
    backend, judge = ScriptedBackend(), ScriptedJudge()
    e = ExpertConfig(samples=2, attempts=3, min_chars=5)
    kept, tally, generated, judged = sample_and_judge(
        e, tmp_path, slots, {}, Sampler(backend, _no_build), judge
    )
    # Each round asks only for the slots still open.
    assert backend.asked == [
        ["A/s1/a1", "A/s2/a1", "B/s1/a1", "B/s2/a1"],
        ["A/s2/a2", "B/s1/a2", "B/s2/a2"],
        ["B/s1/a3"],
    ]
    assert [(p.id, k, attempt, answer["text"]) for (p, k), (attempt, answer) in kept.items()] == [
        ("A", 1, 1, "refuse: no"),
        ("A", 2, 2, "refuse again"),
        ("B", 2, 2, "refuse now"),
    ]
    counts = tally.to_dict()
    assert counts["answers"] == 8 and counts["kept"] == 3 and counts["unfilled_slots"] == 1
    assert counts["dropped"] == {
        "too_short": 1,
        "complied": 1,
        "partial": 1,
        "no_refusal_verdict": 1,
        "invalid": 1,
        "uncovered": 0,
    }
    assert counts["kept_by_attempt"] == {"1": 1, "2": 2}
    assert counts["kept_by_category"] == {"x": 2, "y": 1}
    assert (generated, judged) == (8, 8)
    lines = (tmp_path / "completions.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 8

    # Again on the same folder: nothing sampled or judged twice, the same outcome.
    from safetune.evaluation.stages import read_rows

    again = ScriptedJudge()
    on_disk = read_rows(tmp_path / "completions.jsonl", lambda row: True)
    kept2, tally2, generated2, judged2 = sample_and_judge(
        e, tmp_path, slots, on_disk, Sampler(None, _no_build), again
    )
    assert (generated2, judged2, again.judged) == (0, 0, 0)
    assert kept2 == kept and tally2.to_dict() == counts


def _no_build():  # type: ignore[no-untyped-def]
    raise AssertionError("a backend was built although every answer is on disk")


# ---- the config ----


def test_the_authors_training_settings_are_the_defaults_and_yaml_and_overrides_win(tmp_path: Path) -> None:
    config = load_expert_config()
    t = config.train
    assert (t.lora_r, t.lora_alpha, t.lora_dropout, t.lora_targets) == (16, 64, 0.1, ["q_proj", "v_proj"])
    assert (t.num_epochs, t.learning_rate, t.batch_size, t.grad_accum) == (2, 2e-3, 1, 1)
    assert (t.lr_scheduler, t.warmup_ratio) == ("linear", 0.03)
    assert (config.method.name, config.selection.variant, config.chat.empty_system) == ("sft", "none", False)
    e = config.expert
    assert (e.samples, e.attempts, e.temperature, e.top_p, e.max_new_tokens, e.min_chars) == (
        2,
        5,
        0.8,
        0.9,
        256,
        10,
    )
    yaml = tmp_path / "c.yaml"
    yaml.write_text("train:\n  lora_r: 8\n  learning_rate: 1e-3\n", encoding="utf-8")
    config = load_expert_config(yaml, ["--train.lora_r=4"])
    assert (config.train.lora_r, config.train.learning_rate, config.train.lora_alpha) == (4, 1e-3, 64)
    assert load_config().train.lora_r == 32  # the other commands keep their own defaults
    assert set(EXPERT_DEFAULTS) >= {"train.lora_r", "train.num_epochs", "train.learning_rate"}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--expert.temperature=0", "expert.temperature must be a finite number > 0 and <= 10, got 0"),
        ("--expert.top_p=1.5", "expert.top_p must be a finite number > 0 and <= 1, got 1.5"),
        ("--expert.samples=0", "expert.samples must be an integer >= 1 and <= 64, got 0"),
        ("--expert.attempts=nan", "expert.attempts"),
        ("--expert.min_refusals=0", "expert.min_refusals must be an integer >= 1, got 0"),
        ("--expert.min_chars=-1", "expert.min_chars must be an integer >= 0"),
    ],
)
def test_every_expert_number_is_range_checked(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_expert_config(overrides=[override])
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--method.name=dpo", "trains with method sft, not 'dpo'"),
        ("--train.finetune=full", "the safety expert is a LoRA adapter"),
        ("--data.path=x.jsonl", "data.path is not taken"),
    ],
)
def test_the_training_config_refuses_what_is_not_the_expert(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        training_config(load_expert_config(overrides=[override]), Path("out"), "base")


def test_the_training_config_trains_the_kept_pairs_into_the_run_folder() -> None:
    config = load_expert_config(overrides=["--model.name=whatever"])
    cfg = training_config(config, Path("out"), "the/base")
    assert (cfg.model.name, cfg.data.path, cfg.data.format) == ("the/base", "out/refusals.jsonl", "jsonl")
    assert cfg.train.output_dir == "out/run" and config.train.output_dir == "runs/train"  # a copy
