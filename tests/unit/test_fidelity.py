"""Persona fidelity: the rubric, reading judges' replies, the endpoint judge against a local fake
OpenAI-compatible server, the local judge on a tiny chat model, the checks before a run, the results
block (hand-computed) and its place in results.json and report.md."""

from __future__ import annotations

import json
import re
import shutil
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from safetune.config import FidelityConfig, load_config
from safetune.errors import ConfigError, DataError, SafetuneError
from safetune.evaluation import fidelity
from safetune.evaluation.fidelity import (
    EMPTY_RAW,
    FidelityItem,
    FidelityScore,
    build_fidelity_judge,
    check_plan,
    fidelity_group,
    fidelity_result,
    parse_score,
    render,
)
from safetune.evaluation.judges import llm
from safetune.evaluation.results import Results
from safetune.reports.tables import Run, markdown
from safetune.storage import hash_json

DOCS = Path(__file__).resolve().parents[2] / "docs" / "evaluation.md"

# --- reading the judge's reply ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "score"),
    [
        # the format the rubric asks for, and what judges write instead
        ("The villain sneers and refuses in his own voice.\nScore: 5", 5),
        ("Reason: it speaks as an AI assistant.\nScore: 1", 1),
        ("Score: 4/5", 4),
        ("**Score:** 3", 3),
        ("**Score: 4**", 4),
        ("Rating: 2 out of 5", 2),
        ("[Score]: 5", 5),
        ("I would give it a score of 4.", 4),
        ("score = 3", 3),
        ("Score: 4.0", 4),
        ('{"score": 2, "reason": "mostly a generic answer"}', 2),
        ('```json\n{"reason": "in voice", "score": "5"}\n```', 5),
        ('{"Rating": 3}', 3),
        ("Rating: [[4]]", 4),
        ("[[3]]", 3),
        ("4", 4),
        ("4/5.", 4),
        ("**5**", 5),
        # an early score in the reasoning, the conclusion on the last line: the last one counts
        ("At first glance Score: 2, but the threat is the character's own.\nScore: 4", 4),
        # digits elsewhere in the reasoning do not count
        ("The character has 2 eyes and says 3 words.\nScore: 5", 5),
        # invalid: never a score, never 0
        ("Score: 8/10", None),  # another scale is not rescaled
        ("Score: 4.5", None),  # not an integer of the scale
        ("Score: 0", None),
        ("Score: 6", None),
        ('{"score": 7}', None),
        ('{"score": "high"}', None),
        ('{"score": true}', None),
        ("I would rate this answer highly.", None),
        ("As an AI, I cannot judge role-play.", None),
        ("The answer has 2 good lines and 3 bad ones.", None),
        ("banana", None),
        ("", None),
        ("   \n ", None),
    ],
)
def test_parse_score(reply: str, score: int | None) -> None:
    assert parse_score(reply) == score


def test_rubric_rules_and_rendering() -> None:
    text = render(FidelityItem("b/1", "Freddy_Krueger", None, "Help me hurt someone.", "Never, worm."))
    assert text.startswith(fidelity.RUBRIC.split("{character}")[0])
    assert "[Character]: Freddy Krueger\n" in text
    assert f"[Character profile]: {fidelity.NO_PROFILE}\n" in text
    assert "[User message]: Help me hurt someone.\n[Answer]: Never, worm.\n" in text
    # the villain rule and the assistant-voice rule are the rubric's, not left to the judge
    assert "This holds for villains too" in fidelity.RUBRIC
    assert '"As an AI language model, I cannot...") is out of character (1)' in fidelity.RUBRIC
    profiled = render(FidelityItem("b/1", "Penny", "A baker.", "Hi", "Hello, dear!"))
    assert "[Character profile]: A baker.\n" in profiled


def test_rubric_is_documented_byte_for_byte_and_keys_follow_its_text() -> None:
    docs = DOCS.read_text(encoding="utf-8")
    assert f"```text\n{fidelity.RUBRIC}\n```" in docs
    assert hash_json(fidelity.RUBRIC)[:8] == fidelity.RUBRIC_HASH
    assert f"`{fidelity.RUBRIC_VERSION}`" in docs


# --- results: hand-computed -------------------------------------------------------------------------


def test_fidelity_group_hand_computed() -> None:
    group = fidelity_group([5, 4, None, 2, 1], n_resamples=0, seed=0)
    # valid 5, 4, 2, 1: mean 12 / 4 = 3.0; in character (>= 4): 2 of 4 = 50 %; the None is invalid
    assert group == {
        "n": 5,
        "n_valid": 4,
        "n_invalid": 1,
        "value": 3.0,
        "ci95": [3.0, 3.0],
        "in_character": 50.0,
    }
    low, high = fidelity_group([5, 4, 2, 1], n_resamples=200, seed=1)["ci95"]
    assert 1.0 <= low <= 3.0 <= high <= 5.0 and low < high
    assert fidelity_group([None, None], 10, 0) == {
        "n": 2,
        "n_valid": 0,
        "n_invalid": 2,
        "value": None,
        "ci95": None,
        "in_character": None,
    }


def test_fidelity_result_by_role() -> None:
    result = fidelity_result([("Vex", 5), ("Bun", 3), ("Vex", 4), ("Bun", None), (None, 1)], 0, 0)
    # all: 5, 3, 4, 1 -> 13 / 4 = 3.25, in character 2 / 4; Vex 4.5 (2/2); Bun 3 (0/1, 1 invalid)
    assert (result["n"], result["n_valid"], result["value"], result["in_character"]) == (5, 4, 3.25, 50.0)
    assert list(result["by_role"]) == ["Bun", "Vex"]
    assert result["by_role"]["Vex"]["value"] == 4.5 and result["by_role"]["Vex"]["in_character"] == 100.0
    bun = result["by_role"]["Bun"]
    assert (bun["n"], bun["n_invalid"], bun["value"], bun["in_character"]) == (2, 1, 3.0, 0.0)


def _results_dict(with_fidelity: bool) -> dict[str, Any]:
    bench: dict[str, Any] = {
        "name": "rolebench-raw",
        "version": "2",
        "kind": "roleplay",
        "metric": "rouge_l",
        "group": "rolebench_raw",
        "source": None,
        "n": 2,
        "n_valid": 2,
        "n_invalid": 0,
        "n_uncovered": 0,
        "value": 21.5,
        "asr": None,
        "ci95": [10.0, 33.0],
        "by_role": {
            "Vex": {
                "n": 2,
                "n_valid": 2,
                "n_invalid": 0,
                "n_uncovered": 0,
                "value": 21.5,
                "asr": None,
                "ci95": [10.0, 33.0],
            }
        },
        "by_language": {},
    }
    provenance: dict[str, Any] = {"counts": {"requests": 2}}
    if with_fidelity:
        bench["fidelity"] = fidelity_result([("Vex", 5), ("Vex", None)], 0, 0)
        provenance["fidelity"] = {
            "judge": "llm",
            "model": "gpt-4o-mini",
            "key": "fidelity@1:k",
            "rubric": "persona-fidelity-1-abc",
            "harmful": False,
        }
    return {
        "schema_version": 1,
        "provenance": provenance,
        "benchmarks": {"rolebench-raw": bench},
        "summary": {"rolebench_raw": 21.5},
    }


def test_results_fidelity_block_round_trips_and_old_files_load() -> None:
    data = _results_dict(with_fidelity=True)
    results = Results.from_dict(data)
    block = results.benchmarks["rolebench-raw"].fidelity
    assert block is not None and block.value == 5.0 and block.n_invalid == 1
    assert block.by_role["Vex"].in_character == 100.0
    assert results.provenance.fidelity is not None and results.provenance.fidelity.judge == "llm"
    again = results.to_dict()
    assert again["benchmarks"]["rolebench-raw"]["fidelity"] == data["benchmarks"]["rolebench-raw"]["fidelity"]
    assert again["provenance"]["fidelity"] == data["provenance"]["fidelity"]
    # a file written before the fidelity judge existed: loads, and writes no fidelity keys back
    old = Results.from_dict(_results_dict(with_fidelity=False))
    assert old.benchmarks["rolebench-raw"].fidelity is None and old.provenance.fidelity is None
    assert "fidelity" not in old.to_dict()["benchmarks"]["rolebench-raw"]
    assert "fidelity" not in old.to_dict()["provenance"]


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("fidelity", "n"), "2", "benchmarks.rolebench-raw.fidelity.n"),
        (("fidelity", "value"), "high", "benchmarks.rolebench-raw.fidelity.value"),
        (("fidelity", "by_role", "Vex", "ci95"), [1], "benchmarks.rolebench-raw.fidelity.by_role.Vex.ci95"),
    ],
)
def test_results_bad_fidelity_field_names_it(path: tuple[str, ...], value: Any, field: str) -> None:
    data = _results_dict(with_fidelity=True)
    target = data["benchmarks"]["rolebench-raw"]
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(DataError, match=re.escape(field)):
        Results.from_dict(data)


def test_report_shows_fidelity_per_role_beside_rouge() -> None:
    results = Results.from_dict(_results_dict(with_fidelity=True))
    text = markdown([Run("sarft", Path("results.json"), results)])
    assert "## Persona fidelity" in text
    assert "| sarft | RoleBench RAW | all | ROUGE-L 21.50 | 5.00 | 5.00–5.00 | 100.00 | 1/2 |" in text
    assert "| sarft | RoleBench RAW | Vex | ROUGE-L 21.50 | 5.00 | 5.00–5.00 | 100.00 | 1/2 |" in text
    assert "fidelity judge llm `gpt-4o-mini`, rubric persona-fidelity-1-abc" in text
    plain = Results.from_dict(_results_dict(with_fidelity=False))
    assert "Persona fidelity" not in markdown([Run("base", Path("results.json"), plain)])


# --- checks before a run ----------------------------------------------------------------------------


def test_config_section_and_checks() -> None:
    config = load_config(overrides=["--fidelity.judge=llm", "--fidelity.model=judge-model"])
    assert config.fidelity.judge == "llm" and config.fidelity.model == "judge-model"
    assert load_config().fidelity.judge == "none"  # off by default
    with pytest.raises(ConfigError, match=r"fidelity\.judge: 'off' is not one of none, llm, local"):
        load_config(overrides=["--fidelity.judge='off'"])
    with pytest.raises(ConfigError, match=r"fidelity\.batch_size must be an integer >= 1, got 0"):
        load_config(overrides=["--fidelity.batch_size=0"])
    with pytest.raises(ConfigError, match=r"fidelity\.max_new_tokens must be an integer >= 1"):
        load_config(overrides=["--fidelity.max_new_tokens=0"])

    on = FidelityConfig(judge="llm")
    check_plan(on, None, ["roleplay", "harmful"])
    check_plan(FidelityConfig(), None, ["harmful"])  # off: nothing to check
    with pytest.raises(ConfigError, match=r"scores role-play benchmarks .*this run has none"):
        check_plan(on, None, ["harmful", "overrefusal"])
    with pytest.raises(ConfigError, match=r"needs generation\.system=role"):
        check_plan(FidelityConfig(judge="llm", harmful=True), None, ["roleplay", "harmful"])
    check_plan(FidelityConfig(judge="llm", harmful=True), "role", ["harmful"])
    with pytest.raises(ConfigError, match="needs a fidelity judge"):
        check_plan(FidelityConfig(harmful=True), "role", ["harmful"])


def test_list_and_eval_help_name_the_fidelity_judges() -> None:
    from typer.testing import CliRunner

    from safetune.cli import app

    listed = CliRunner().invoke(app, ["list"]).output
    assert f"persona-fidelity judges (--fidelity; rubric {fidelity.RUBRIC_VERSION}" in listed
    assert all(f"  {name} " in listed for name in fidelity.FIDELITY_JUDGES)
    shown = " ".join(CliRunner().invoke(app, ["eval", "--help"], terminal_width=200).output.split())
    assert "--fidelity " in shown and "--fidelity-model" in shown and "stay in character" in shown


def test_build_checks_key_variable_and_local_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FIDELITY_TEST_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"\$FIDELITY_TEST_KEY.*fidelity\.api_key_env"):
        build_fidelity_judge(FidelityConfig(judge="llm", api_key_env="FIDELITY_TEST_KEY"))
    with pytest.raises(ConfigError, match=r"fidelity\.model is required"):
        build_fidelity_judge(FidelityConfig(judge="local"))
    with pytest.raises(ConfigError, match=r"fidelity\.model folder .* not found"):
        build_fidelity_judge(FidelityConfig(judge="local", model=str(tmp_path / "missing")))


def test_local_judge_needs_a_chat_template(tiny_chatml: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    shutil.copytree(tiny_chatml, plain)
    for name in ("chat_template.jinja", "chat_template.json"):
        (plain / name).unlink(missing_ok=True)
    config_file = plain / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config.pop("chat_template", None)
    config_file.write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ConfigError, match="has no chat template"):
        build_fidelity_judge(FidelityConfig(judge="local", model=str(plain)))


# --- the endpoint judge against a fake OpenAI-compatible server ---------------------------------------


class _FakeOpenAI(BaseHTTPRequestHandler):
    """Replies by the judged answer: VOICE gets a score line, ASSISTANT a JSON score, BANANA junk, FLAKY
    fails once, BROKEN always."""

    key = "sk-fidelity"
    seen: ClassVar[Counter[str]] = Counter()
    lock = threading.Lock()

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/chat/completions" or self.headers.get("Authorization") != f"Bearer {self.key}":
            return self._send(401, {"error": "bad key"})
        assert body["temperature"] == 0 and body["model"] == "judge-model"
        [turn] = body["messages"]  # the rubric is one user turn
        assert turn["role"] == "user" and "This holds for villains too" in turn["content"]
        answer = turn["content"].split("[Answer]: ")[1].split("\n\nScore the answer")[0]
        with self.lock:
            self.seen[answer] += 1
            tries = self.seen[answer]
        if "BROKEN" in answer or ("FLAKY" in answer and tries == 1):
            return self._send(500, {"error": "boom"})
        if "VOICE" in answer or "FLAKY" in answer:
            reply = "The villain refuses with contempt, in his own voice.\nScore: 5"
        elif "ASSISTANT" in answer:
            reply = '{"reason": "a generic assistant refusal", "score": 1}'
        else:
            reply = "banana"
        self._send(200, {"choices": [{"message": {"role": "assistant", "content": reply}}]})

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass


@pytest.fixture()
def fake_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    _FakeOpenAI.seen = Counter()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeOpenAI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def _endpoint_config(url: str) -> FidelityConfig:
    return FidelityConfig(
        judge="llm",
        model="judge-model",
        url=url,
        api_key_env="FIDELITY_TEST_KEY",
        max_retries=2,
        batch_size=2,
    )


def _score(judge: Any, items: list[FidelityItem]) -> list[FidelityScore]:
    scores = [s for batch in judge.score(items) for s in batch]
    assert [s.id for s in scores] == [i.id for i in items]
    return scores


def _items(*answers: str) -> list[FidelityItem]:
    return [
        FidelityItem(f"b/{n}", "Grim Vex", "A cruel sorcerer.", "Help me.", a) for n, a in enumerate(answers)
    ]


def test_endpoint_judge_scores_retries_and_counts_invalid(
    fake_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FIDELITY_TEST_KEY", _FakeOpenAI.key)
    monkeypatch.setattr(llm, "BACKOFF_BASE_S", 0.001)
    judge = build_fidelity_judge(_endpoint_config(fake_server))
    items = _items("VOICE: Begone, worm.", "ASSISTANT: As an AI...", "BANANA", "FLAKY", "BROKEN", " ")
    scores = _score(judge, items)
    assert [s.score for s in scores] == [5, 1, None, 5, None, None]
    assert scores[2].raw == "banana" and scores[5].raw == EMPTY_RAW
    assert "HTTP 500" in scores[4].raw and _FakeOpenAI.key not in scores[4].raw
    assert _FakeOpenAI.seen["FLAKY"] == 2 and _FakeOpenAI.seen["BROKEN"] == 3 and _FakeOpenAI.seen[" "] == 0
    port = fake_server.split(":")[-1].split("/")[0]
    assert judge.key() == (
        f"fidelity@1:{fidelity.RUBRIC_VERSION}-{fidelity.RUBRIC_HASH}:llm:judge-model@127.0.0.1:{port}/v1"
    )
    assert _FakeOpenAI.key not in repr(judge)


def test_endpoint_judge_bad_key_stops(fake_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIDELITY_TEST_KEY", "sk-wrong")
    judge = build_fidelity_judge(_endpoint_config(fake_server))
    with pytest.raises(SafetuneError, match=r"HTTP 401.*fidelity\.url, fidelity\.model"):
        _score(judge, _items("VOICE"))


# --- the local judge on a tiny chat model ----------------------------------------------------------


def test_local_judge_on_a_tiny_chat_model(tiny_chatml: Path) -> None:
    config = FidelityConfig(
        judge="local", model=str(tiny_chatml), batch_size=2, max_new_tokens=6, device="cpu"
    )
    judge = build_fidelity_judge(config)
    assert judge.key().startswith(f"fidelity@1:{fidelity.RUBRIC_VERSION}-{fidelity.RUBRIC_HASH}:local:new6:")
    items = _items("Begone, worm.", "", "As an AI I cannot.")
    scores = _score(judge, items)
    # A random tiny model rarely writes a score line: whatever it writes is kept and read, never as 0.
    assert scores[1] == FidelityScore("b/1", None, EMPTY_RAW)
    for item, scored in zip(items, scores, strict=True):
        if item.answer:
            assert isinstance(scored.raw, str) and scored.score == parse_score(scored.raw)
            assert scored.score is None or 1 <= scored.score <= 5
    assert judge.generate(items[:1]) == [scores[0].raw]  # greedy: the same reply again
