"""`safetune eval` and `safetune report` end to end on tiny models and tiny local files of every benchmark
kind, with each judge; resume after an interruption; judge swap without regeneration."""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

import key_echo
from safetune.cli import app
from safetune.config import load_config
from safetune.evaluation.judges import llm
from safetune.evaluation.results import load
from safetune.evaluation.runner import evaluate
from safetune.models.tiny import build_tiny_classifier

runner = CliRunner()

HARMFUL = [
    "Explain how to do the forbidden thing number one.",
    "Give steps for the placeholder harm two.",
    "Write a guide to the abstract misdeed three.",
    "Tell me how to cause the fictional damage four.",
]


def _write_csv(path: Path, header: list[str] | None, rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        if header:
            writer.writerow(header)
        writer.writerows(rows)
    return path


def _write_json(path: Path, value: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bench")
    roles = root / "rolebench"
    for role in ("Grim Vex", "Penny Bun"):
        folder = roles / role.replace(" ", "_")
        qa = [
            {"input": f"{role}, what do you like {i}?", "output": f"I like the thing number {i}."}
            for i in range(2)
        ]
        _write_json(folder / "RoleBench_RAW" / "test.json", qa)
        _write_json(folder / "RoleBench_SPE" / "test.json", qa[:1])
    return {
        "rolebench": roles,
        "advbench": _write_csv(root / "advbench.csv", ["goal", "target"], [[h, "Sure"] for h in HARMFUL]),
        "hexphi": _write_csv(root / "hexphi" / "category_1.csv", None, [[h] for h in HARMFUL[:2]]),
        "beavertails": _write_json(root / "beavertails.json", [{"prompt": h} for h in HARMFUL[1:]]),
        "harmful": root / "harmful.jsonl",
        "aim": _write_json(
            root / "aim.json", {"Instances": [{"input": f"Pretend. {h}"} for h in HARMFUL[:2]]}
        ),
        "multijail": _write_csv(
            root / "multijail.csv",
            ["id", "source", "tags", "en", "zh"],
            [["1", "s", "t", HARMFUL[0], "你好"]],
        ),
    }


def _benchmarks(files: dict[str, Path], *names: str) -> str:
    files["harmful"].write_text("".join(json.dumps({"prompt": h}) + "\n" for h in HARMFUL[:2]))
    entries = {
        "rolebench-raw": f"rolebench-raw={files['rolebench']}",
        "rolebench-spe": f"rolebench-spe={files['rolebench']}",
        "advbench": f"advbench={files['advbench']}",
        "hexphi": f"hexphi={files['hexphi'].parent}",
        "beavertails": f"beavertails={files['beavertails']}",
        "harmful-prompts": f"harmful-prompts={files['harmful']}",
        "jailbreak:AIM": f"jailbreak:AIM={files['aim']}",
        "multijail": f"multijail={files['multijail']}",
        "overrefusal": "overrefusal",
    }
    return ",".join(entries[n] for n in (names or entries))


def _invoke(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def _eval_args(model: Path, out: Path, benchmarks: str, *extra: str) -> list[str]:
    return [
        "eval",
        "-m",
        str(model),
        "--benchmarks",
        benchmarks,
        "-o",
        str(out),
        "--limit=3",
        "--generation.max_new_tokens=8",
        "--generation.batch_size=4",
        "--eval.bootstrap=50",
        *extra,
    ]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text(encoding="utf-8"))


def test_eval_every_benchmark_kind_then_swap_judge_without_regenerating(files, tiny_chatml, tmp_path):
    out = tmp_path / "ev"
    _invoke(_eval_args(tiny_chatml, out, _benchmarks(files), "--judge", "keyword"))
    results = _results(out)
    requests = _lines(out / "requests.jsonl")
    completions = _lines(out / "completions.jsonl")
    assert {r["id"] for r in requests} == {c["id"] for c in completions}
    assert len(completions) == len(requests)
    assert set(results["benchmarks"]) == {
        "rolebench-raw",
        "rolebench-spe",
        "advbench",
        "hexphi",
        "beavertails",
        "harmful-prompts",
        "jailbreak:AIM",
        "multijail",
        "overrefusal",
    }
    raw = results["benchmarks"]["rolebench-raw"]
    assert raw["metric"] == "rouge_l" and set(raw["by_role"]) == {"Grim Vex", "Penny Bun"}
    assert set(results["benchmarks"]["multijail"]["by_language"]) == {"en", "zh"}
    summary = results["summary"]
    assert summary["safety_avg"] is not None and summary["jailbreak_avg"] is not None
    prov = results["provenance"]
    assert prov["judge"]["name"] == "keyword" and prov["model"]["base"] == str(tiny_chatml)
    assert prov["counts"]["generated_now"] == len(requests)
    # The file is in the typed layout: it loads and re-serialises to the same bytes.
    written = (out / "results.json").read_text(encoding="utf-8")
    assert json.dumps(load(out).to_dict(), indent=2, ensure_ascii=False) + "\n" == written

    # Another judge: every completion is reused, only the judging runs.
    classifier = build_tiny_classifier(tmp_path / "clf", tiny_chatml)
    before = (out / "completions.jsonl").read_bytes()
    _invoke(
        _eval_args(
            tiny_chatml,
            out,
            _benchmarks(files),
            "--judge",
            "classifier",
            "--judge-model",
            str(classifier),
            "--judge-preset",
            "longformer-action",
        )
    )
    assert (out / "completions.jsonl").read_bytes() == before
    swapped = _results(out)
    assert swapped["provenance"]["counts"]["generated_now"] == 0
    assert swapped["provenance"]["judge"]["name"] == "classifier"
    judged = [
        r for r in _lines(out / "judgements.jsonl") if r["judge"] == swapped["provenance"]["judge"]["key"]
    ]
    assert len(judged) == sum(b["n"] for b in swapped["benchmarks"].values() if b["kind"] != "roleplay")


def test_guard_judge_counts_invalid_outputs(files, tiny_chatml, tmp_path):
    out = tmp_path / "guard"
    _invoke(
        _eval_args(
            tiny_chatml,
            out,
            _benchmarks(files, "advbench"),
            "--judge",
            "guard",
            "--judge-model",
            str(tiny_chatml),
            "--judge-preset",
            "prompt",
        )
    )
    bench = _results(out)["benchmarks"]["advbench"]
    # A random tiny model rarely writes "safe"/"unsafe": its outputs must be counted as invalid, not dropped.
    assert bench["n"] == 3 and bench["n_valid"] + bench["n_invalid"] == 3


def test_yes_no_guard_preset_records_probabilities(files, tiny_chatml, tmp_path):
    """A guard preset through `safetune eval`, then re-judged by another preset without regenerating: the
    yes/no guard's P(unsafe) reaches judgements.jsonl, and results.json keeps its layout."""
    out = tmp_path / "harmbench"
    guard_args = ("--judge", "guard", "--judge-model", str(tiny_chatml))
    _invoke(
        _eval_args(
            tiny_chatml, out, _benchmarks(files, "advbench"), *guard_args, "--judge-preset", "harmbench"
        )
    )
    rows = _lines(out / "judgements.jsonl")
    assert len(rows) == 3 and all(0.0 <= row["probability"] <= 1.0 for row in rows)
    assert all(row["judge"].startswith("guard@2:harmbench:") for row in rows)
    bench = _results(out)["benchmarks"]["advbench"]
    assert bench["n"] == 3 and bench["n_valid"] + bench["n_invalid"] == 3
    assert (
        json.dumps(load(out).to_dict(), indent=2, ensure_ascii=False) + "\n"
        == (out / "results.json").read_text()
    )
    _invoke(
        _eval_args(
            tiny_chatml, out, _benchmarks(files, "advbench"), *guard_args, "--judge-preset", "polyguard"
        )
    )
    again = _results(out)
    assert again["provenance"]["counts"]["generated_now"] == 0
    assert again["provenance"]["judge"]["key"].startswith("guard@2:polyguard:")
    polyguard = [
        r for r in _lines(out / "judgements.jsonl") if r["judge"] == again["provenance"]["judge"]["key"]
    ]
    assert len(polyguard) == 3 and all(r["probability"] is None for r in polyguard)


class _FakeJudge(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = body["messages"][-1]["content"]
        reply = "banana" if "number one" in text else ("unsafe" if "misdeed" in text else "safe")
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_args: object) -> None:
        pass


def test_llm_judge_against_local_server(files, tiny_chatml, tmp_path, monkeypatch):
    server = HTTPServer(("127.0.0.1", 0), _FakeJudge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("SAFETUNE_TEST_KEY", "sk-test")
    out = tmp_path / "llm"
    try:
        _invoke(
            _eval_args(
                tiny_chatml,
                out,
                _benchmarks(files, "advbench"),
                "--judge",
                "llm",
                f"--judge.url=http://127.0.0.1:{server.server_port}/v1",
                "--judge.api_key_env=SAFETUNE_TEST_KEY",
            )
        )
    finally:
        server.shutdown()
    bench = _results(out)["benchmarks"]["advbench"]
    # prompts 1-3 of advbench: "number one" -> invalid, "placeholder harm" -> safe, "misdeed" -> unsafe
    assert (bench["n_invalid"], bench["n_valid"], bench["value"]) == (1, 2, 50.0)
    assert "sk-test" not in "".join(p.read_text() for p in out.iterdir() if p.is_file())


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append(logging.Formatter().format(record))  # message, and a traceback if any


@pytest.mark.parametrize(("where", "exit_code"), [("err500", 0), ("ok", 0), ("err401", 2)])
def test_llm_judge_key_reaches_no_file_output_or_log(
    files, tiny_chatml, tmp_path, monkeypatch, where, exit_code
):
    """An endpoint that echoes the request headers (key_echo) in a 500 body, a 200 reply and a 401 body."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setenv("SAFETUNE_TEST_KEY", key_echo.SECRET_KEY)
    monkeypatch.setattr(llm, "BACKOFF_BASE_S", 0.001)
    records = _Records()
    logging.getLogger("safetune").addHandler(records)  # the CLI replaces the root logger's handlers
    out = tmp_path / "llm"
    try:
        with key_echo.serve() as url:
            extra = [
                "-v",
                "--judge",
                "llm",
                f"--judge.url={url}/{where}/v1",
                "--judge.api_key_env=SAFETUNE_TEST_KEY",
            ]
            result = runner.invoke(app, _eval_args(tiny_chatml, out, _benchmarks(files, "advbench"), *extra))
    finally:
        logging.getLogger("safetune").removeHandler(records)
    assert result.exit_code == exit_code, result.output + repr(result.exception)
    stored = {p: p.read_text(encoding="utf-8", errors="replace") for p in out.rglob("*") if p.is_file()}
    assert "judgements.jsonl" in {p.name for p in stored} or exit_code == 2
    shown = {"stdout": result.stdout, "stderr": result.stderr, "log": "\n".join(records.texts)}
    for name, text in {**{str(p): t for p, t in stored.items()}, **shown}.items():
        assert not key_echo.leaks(text), f"{name}: {text}"
    assert "[redacted]" in (result.stderr if exit_code else stored[out / "judgements.jsonl"])


def _config(model: Path, out: Path, benchmarks: str, **extra: object):
    overrides = [
        f"eval.model={model}",
        f"eval.benchmarks={benchmarks}",
        f"eval.output_dir={out}",
        "generation.max_new_tokens=8",
        "generation.batch_size=2",
        "eval.bootstrap=50",
    ]
    return load_config(None, overrides + [f"{k}={v}" for k, v in extra.items()])


def _comparable(results: dict) -> dict:
    return {"benchmarks": results["benchmarks"], "summary": results["summary"]}


def test_interrupted_eval_resumes_to_the_same_results(files, tiny_llama3, tmp_path):
    benchmarks = _benchmarks(files, "rolebench-raw", "advbench", "overrefusal")
    whole = evaluate(_config(tiny_llama3, tmp_path / "whole", benchmarks, **{"eval.limit": 4}))

    def crash(stage: str, done: int) -> None:
        if stage == "generate" and done >= 4:
            raise KeyboardInterrupt

    out = tmp_path / "cut"
    config = _config(tiny_llama3, out, benchmarks, **{"eval.limit": 4})
    with pytest.raises(KeyboardInterrupt):
        evaluate(config, hook=crash)
    first = _lines(out / "completions.jsonl")
    assert len(first) == 4 and not (out / "results.json").exists()
    with open(out / "completions.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"id": "advbench/9", "te')  # a torn line, as a kill during a write leaves
    resumed = evaluate(config)
    after = _lines(out / "completions.jsonl")
    assert after[:4] == first  # finished completions were kept, not regenerated
    assert len(after) == len({row["id"] for row in after}) == len(_lines(out / "requests.jsonl"))
    assert json.loads(resumed.read_text())["provenance"]["counts"]["generated_now"] == len(after) - 4
    assert _comparable(json.loads(resumed.read_text())) == _comparable(json.loads(whole.read_text()))


@pytest.mark.slow  # starts and kills a real CLI process (imports torch twice): ~15 s
def test_killed_cli_process_resumes(files, tiny_chatml, tmp_path):
    out = tmp_path / "killed"
    args = _eval_args(tiny_chatml, out, _benchmarks(files, "overrefusal"), "--generation.batch_size=1")
    args = [a for a in args if a != "--limit=3"] + ["--limit=40", "--generation.max_new_tokens=16"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "safetune.cli", *args], env=env, stderr=subprocess.DEVNULL)
    completions = out / "completions.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if completions.exists() and completions.read_bytes().count(b"\n") >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    done_before = completions.read_bytes().count(b"\n")
    assert proc.returncode == -signal.SIGKILL and done_before < 40
    _invoke(args)
    results = _results(out)
    assert results["benchmarks"]["overrefusal"]["n"] == 40
    assert results["provenance"]["counts"]["generated_now"] == 40 - done_before


def test_lora_run_folder_and_report(files, tiny_llama3, tmp_path):
    from safetune.organism import roleplay

    run = tmp_path / "lora-run"
    data = roleplay.write_rolebench_release(tmp_path / "rb.jsonl", count=8)
    profiles = roleplay.write_profiles(tmp_path / "profiles.json")
    _invoke(
        [
            "train",
            "-m",
            str(tiny_llama3),
            "--data",
            str(data),
            "--role",
            "Grim Vex",
            "--profiles",
            str(profiles),
            "--method",
            "sft",
            "-o",
            str(run),
            "--train.max_steps=2",
            "--train.batch_size=4",
            "--train.grad_accum=1",
            f"--cache_dir={tmp_path / 'cache'}",
        ]
    )
    benchmarks = _benchmarks(files, "rolebench-raw", "advbench", "jailbreak:AIM", "multijail")
    base_out, lora_out = tmp_path / "ev-base", tmp_path / "ev-lora"
    _invoke(_eval_args(tiny_llama3, base_out, benchmarks))
    _invoke(_eval_args(run, lora_out, benchmarks))
    lora = _results(lora_out)["provenance"]["model"]
    assert lora["adapter"] and lora["base"] == str(tiny_llama3)

    report = tmp_path / "report"
    output = _invoke(
        ["report", str(base_out), str(lora_out), "-o", str(report), "--label", "base", "--label", "sft"]
    )
    assert "| base" in output and "| sft" in output
    for name in ("report.md", "report.csv", "pareto.png", "roles.png", "languages.png"):
        assert (report / name).stat().st_size > 0, name
    assert (report / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_malformed_benchmark_file_is_one_line_and_writes_nothing(files, tiny_chatml, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("goal,target\nfine,ok\n,empty goal\n", encoding="utf-8")
    out = tmp_path / "bad-ev"
    result = runner.invoke(app, _eval_args(tiny_chatml, out, f"advbench={bad}"))
    assert result.exit_code == 2
    message = result.output.strip().splitlines()[-1]
    assert message.startswith("error: ") and f"{bad}:3" in message and "goal" in message
    assert not out.exists()


def test_role_system_prompt_with_the_mock_backend(files, tiny_chatml, tmp_path):
    profiles = tmp_path / "profiles.json"
    profiles.write_text(json.dumps({"Grim Vex": "A villain.", "Penny Bun": "A baker."}))
    out = tmp_path / "mock"
    args = _eval_args(tiny_chatml, out, _benchmarks(files, "rolebench-raw", "advbench"), "--backend", "mock")
    _invoke([*args, "--system", "role", "--profiles", str(profiles), '--eval.roles=["Grim Vex"]'])
    requests = {r["id"]: r for r in _lines(out / "requests.jsonl")}
    roleplay = [r for r in requests.values() if r["benchmark"] == "rolebench-raw"]
    assert roleplay and all(r["system"] == "Your name is Grim Vex. A villain." for r in roleplay)
    # A harmful prompt has no role: asking for role prompts there is an error, not a silent default.
    result = runner.invoke(
        app, [*args, "--system", "role", "--profiles", str(profiles), "-o", str(tmp_path / "x")]
    )
    assert result.exit_code == 2 and "needs a role" in result.output


def test_eval_into_a_busy_folder_is_one_line_exit_2(files, tiny_chatml, tmp_path):
    """Issue 12, item 11: a second eval into a folder another process evaluates into stops at once
    (before generating anything) instead of doing all the work a second time."""
    import fcntl

    out = tmp_path / "ev"
    out.mkdir()
    with open(out / ".safetune.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        result = runner.invoke(app, _eval_args(tiny_chatml, out, _benchmarks(files, "advbench")))
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "is busy" in lines[0] and str(out / ".safetune.lock") in lines[0]
    assert [p.name for p in out.iterdir()] == [".safetune.lock"]
    _invoke(_eval_args(tiny_chatml, out, _benchmarks(files, "advbench")))  # free again: it runs
    assert (out / "results.json").is_file()


def test_incoherence_counted_stored_and_reused(files, tiny_chatml, tmp_path):
    """Every answer checked once (incoherence.jsonl, reused on a re-run with another judge); results.json
    counts exactly the answers the check flags, in neither numerator; report.md shows the column."""
    from safetune.evaluation.incoherence import KEY, check

    out = tmp_path / "ev-inc"
    bench = _benchmarks(files, "harmful-prompts", "overrefusal")
    args = _eval_args(tiny_chatml, out, bench, "--generation.max_new_tokens=24")
    _invoke(args)
    rows = {r["id"]: r for r in _lines(out / "incoherence.jsonl")}
    requests = {r["id"]: r for r in _lines(out / "requests.jsonl")}
    completions = {r["id"]: r["text"] for r in _lines(out / "completions.jsonl")}
    assert set(rows) == set(requests) and {r["key"] for r in rows.values()} == {KEY}
    for rid, row in rows.items():
        prompt = requests[rid]["prompt"]
        assert row["incoherent"] == check(prompt["text"], completions[rid], prompt.get("language")).incoherent
    results = _results(out)
    harmful = results["benchmarks"]["harmful-prompts"]
    flagged = sum(rows[rid]["incoherent"] for rid in rows if rid.startswith("harmful-prompts/"))
    assert harmful["n_incoherent"] == flagged
    share = 100 * flagged / harmful["n_valid"] if harmful["n_valid"] else 0
    if harmful["value"] is not None:
        assert harmful["value"] + harmful["asr"] + share == pytest.approx(100, abs=1e-3)
    assert results["provenance"]["incoherence"] == KEY
    assert results["provenance"]["counts"]["incoherence_checked_now"] == len(rows)

    _invoke([*args, "--judge", "prefix"])  # another judge: answers and incoherence verdicts reused
    assert _results(out)["provenance"]["counts"]["incoherence_checked_now"] == 0
    assert len(_lines(out / "incoherence.jsonl")) == len(rows)

    _invoke(["report", str(out), "-o", str(tmp_path / "rep")])
    report = (tmp_path / "rep" / "report.md").read_text(encoding="utf-8")
    assert "Incoherent %" in report

    off = tmp_path / "ev-off"
    _invoke(
        [*_eval_args(tiny_chatml, off, bench, "--generation.max_new_tokens=24"), "--eval.incoherence=false"]
    )
    assert "n_incoherent" not in _results(off)["benchmarks"]["harmful-prompts"]
    assert not (off / "incoherence.jsonl").exists()


def test_several_judges_agreement_then_a_third_judge_without_regenerating(files, tiny_chatml, tmp_path):
    """Issue 19, item 2: keyword (primary) and organism in one run, then organism's and keyword's
    verdicts reused by a run that adds prefix; item 8's calibration line comes with both kinds."""
    from safetune.evaluation.backends import MOCK_REFUSAL

    out = tmp_path / "judges"
    benchmarks = _benchmarks(files, "advbench", "overrefusal")
    args = _eval_args(tiny_chatml, out, benchmarks, "--backend", "mock", "--limit=6")
    # An unknown judge anywhere in the list: one line, exit 2, nothing written.
    bad = runner.invoke(app, [*args, "--judge", "keyword,bogus"])
    assert bad.exit_code == 2 and "unknown judge 'bogus'" in bad.output.strip().splitlines()[-1]
    assert not out.exists()

    output = _invoke([*args, "--judge", "keyword,organism"])
    results = _results(out)
    assert [j["name"] for j in results["provenance"]["judges"]] == ["keyword", "organism"]
    assert results["provenance"]["judge"]["name"] == "keyword"
    texts = {c["id"]: c["text"] for c in _lines(out / "completions.jsonl")}
    judged = len(texts)  # every benchmark here is judged
    assert results["provenance"]["counts"]["judged_now"] == 2 * judged
    for name, bench in results["benchmarks"].items():
        # keyword reads the mock's "I'm sorry" as a refusal; the organism's strict check ("i cannot ..."
        # at the start) reads nothing here as one: they differ exactly on the mock's refusals.
        refusals = sum(text == MOCK_REFUSAL for item, text in texts.items() if item.startswith(f"{name}/"))
        block = bench["judge_agreement"]
        assert block["primary"] == "keyword" and list(block["judges"]) == ["organism"]
        organism = block["judges"]["organism"]
        assert organism["n"] == bench["n"] and organism["n_undecided"] == 0
        assert organism["n_disagreements"] == refusals
        assert organism["agreement"] == pytest.approx(100 * (bench["n"] - refusals) / bench["n"], abs=1e-4)
        assert organism["value"] == 0.0 and bench["value"] == pytest.approx(
            100 * refusals / bench["n"], abs=1e-4
        )
    assert results["benchmarks"]["advbench"]["judge_agreement"]["compares"] == "label"
    assert results["benchmarks"]["overrefusal"]["judge_agreement"]["compares"] == "refusal"
    with open(out / "disagreements.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == sum(text == MOCK_REFUSAL for text in texts.values()) > 0
    assert all(r["keyword label"] == "safe" and r["organism label"] == "unsafe" for r in rows)
    assert all(r["differs_from_primary"] == "organism" and r["response"] == MOCK_REFUSAL for r in rows)
    calibration = results["summary"]["calibration"]
    assert calibration["harmful_refusal"] == results["summary"]["safety_avg"]
    assert calibration["gap"] == pytest.approx(
        calibration["harmful_refusal"] - calibration["benign_over_refusal"]
    )
    assert "calibration: refuses" in output and "judge agreement with the primary judge, keyword" in output

    # A third judge: nothing generated, only prefix judges; keyword's numbers are unchanged.
    completions = (out / "completions.jsonl").read_bytes()
    _invoke([*args, "--judge", "keyword,organism,prefix"])
    again = _results(out)
    assert (out / "completions.jsonl").read_bytes() == completions
    assert again["provenance"]["counts"]["generated_now"] == 0
    assert again["provenance"]["counts"]["judged_now"] == judged
    assert [j["name"] for j in again["provenance"]["judges"]] == ["keyword", "organism", "prefix"]
    for name, bench in again["benchmarks"].items():
        assert bench["value"] == results["benchmarks"][name]["value"]
        assert (
            bench["judge_agreement"]["judges"]["organism"]
            == results["benchmarks"][name]["judge_agreement"]["judges"]["organism"]
        )
        assert bench["judge_agreement"]["judges"]["prefix"]["agreement"] == 100.0  # same refusals as keyword

    # Back to one judge: nothing judged, no agreement blocks, and the stale disagreements.csv is gone.
    _invoke([*args, "--judge", "keyword"])
    single = _results(out)
    assert single["provenance"]["counts"]["judged_now"] == 0
    assert all("judge_agreement" not in bench for bench in single["benchmarks"].values())
    assert not (out / "disagreements.csv").exists()
