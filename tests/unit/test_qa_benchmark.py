"""The `qa` benchmark: reference-answer files (fields, reference lists, languages, one-line errors), and
its scoring through the runner with the mock backend (ROUGE-L overall and by language, no judge, in no
average) and the report's QA column and per-language ROUGE-L table."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from data_errors import assert_data_error
from safetune.config import EvalConfig, GenerationConfig, JudgeConfig, RunConfig
from safetune.errors import DataError
from safetune.evaluation import benchmark_files
from safetune.evaluation.backends import MOCK_COMPLIANCE, MOCK_REFUSAL
from safetune.evaluation.benchmarks import BENCHMARKS, load_benchmark
from safetune.evaluation.metrics import rouge_l
from safetune.evaluation.runner import evaluate
from safetune.reports.render import render_report


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _jsonl(path: Path, rows: list[Any]) -> Path:
    return _write(path, "".join(json.dumps(row) + "\n" for row in rows))


def _error(entry: str) -> DataError:
    with pytest.raises(DataError) as info:
        load_benchmark(entry)
    return info.value


# ---- loading ----


def test_spec() -> None:
    spec = BENCHMARKS["qa"]
    assert (spec.kind, spec.metric, spec.group, spec.default_source) == ("qa", "rouge_l", None, None)


def test_jsonl_prompt_and_reference_fields_ids_and_languages(tmp_path: Path) -> None:
    rows = [
        {"question": "q1", "reference": "r1", "language": "en"},
        {"prompt": "q2", "references": ["a", "b"], "id": "x", "language": "de"},
        {"instruction": "q3", "answer": "a3", "category": "cooking"},
        {"input": "q4", "output": ["o1", "o2"], "id": 7},
        {"text": "q5", "reference": "r5", "references": ["ignored"], "language": " "},
    ]
    spec, prompts = load_benchmark(f"qa={_jsonl(tmp_path / 'qa.jsonl', rows)}")
    assert spec.name == "qa"
    assert [(p.id, p.text, p.references, p.language, p.benchmark) for p in prompts] == [
        ("1", "q1", ("r1",), "en", "qa"),
        ("x", "q2", ("a", "b"), "de", "qa"),
        ("3", "q3", ("a3",), None, "qa"),
        ("7", "q4", ("o1", "o2"), None, "qa"),
        ("5", "q5", ("r5",), None, "qa"),
    ]
    assert prompts[2].category == "cooking" and prompts[0].role is None


def test_json_list_and_csv(tmp_path: Path) -> None:
    js = _write(
        tmp_path / "qa.json",
        json.dumps(
            [{"prompt": "p1", "references": ["x", "y"]}, {"prompt": "p2", "reference": "z"}], indent=1
        ),
    )
    assert [p.references for p in load_benchmark(f"qa={js}")[1]] == [("x", "y"), ("z",)]
    table = _write(
        tmp_path / "qa.csv",
        'id,question,reference,language\nq-1,What?,"Because, really.",en\nq-2,"Why\nnot?",No.,\n',
    )
    prompts = load_benchmark(f"qa={table}")[1]
    assert [(p.id, p.text, p.references, p.language) for p in prompts] == [
        ("q-1", "What?", ("Because, really.",), "en"),
        ("q-2", "Why\nnot?", ("No.",), None),
    ]


def test_hf_dataset_test_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str]] = []

    def fake_open(source: str, split: str) -> list[dict[str, Any]]:
        calls.append((source, split))
        return [{"question": "a", "answer": "b", "language": "fr"}, {"question": "c", "answer": ["d", "e"]}]

    monkeypatch.setattr(benchmark_files, "open_hf_dataset", fake_open)
    prompts = load_benchmark("qa=owner/name")[1]
    assert [(p.id, p.references, p.language) for p in prompts] == [
        ("1", ("b",), "fr"),
        ("2", ("d", "e"), None),
    ]
    assert calls == [("owner/name", "test")]


@pytest.mark.parametrize(
    ("name", "text", "line", "field"),
    [
        ("a.jsonl", '{"prompt": "q", "reference": "r"}\n{"reference": "r"}\n', 2, "prompt"),  # no prompt
        ("b.jsonl", '{"prompt": "q", "reference": "r"}\n\n{"question": " ", "reference": "r"}\n', 3, "question"),
        ("c.jsonl", '{"prompt": "q", "reference": "r"}\n{"prompt": "q2"}\n', 2, "reference"),  # no reference
        ("d.jsonl", '{"prompt": "q", "reference": "  "}\n', 1, "reference"),  # empty reference
        ("e.jsonl", '{"prompt": "q", "references": []}\n', 1, "references"),  # empty list
        ("f.jsonl", '{"prompt": "q", "references": ["ok", ""]}\n', 1, "references[1]"),  # empty member
        ("g.jsonl", '{"prompt": "q", "answer": 3}\n', 1, "answer"),  # not text
        ("h.jsonl", '{"prompt": "q", "output": ["ok", 2]}\n', 1, "output[1]"),
        ("i.jsonl", '{"prompt": "q", "reference": "r", "language": 5}\n', 1, "language"),
        ("j.jsonl", '{"prompt": "q", "reference": "r", "id": 1}\n{"prompt": "q", "reference": "r", "id": "1"}\n', 2, "id"),
        ("k.csv", "id,question,reference\n1,What?,Yes\n2,Why?,\n", 3, "reference"),  # empty cell
        ("l.csv", "question,answer\nWhat?,Yes\n,No\n", 3, "question"),
        ("m.json", '[\n {"prompt": "q", "reference": "r"},\n {"prompt": "q2", "references": {"a": 1}}\n]', 3, "references"),
    ],
)  # fmt: skip
def test_malformed_files_name_file_line_and_field(
    tmp_path: Path, name: str, text: str, line: int, field: str
) -> None:
    file = _write(tmp_path / name, text)
    assert_data_error(_error(f"qa={file}"), file, line, field)


def test_missing_reference_lists_the_accepted_fields_and_duplicates_name_the_first_line(
    tmp_path: Path,
) -> None:
    file = _jsonl(tmp_path / "qa.jsonl", [{"prompt": "q"}])
    assert "expected one of: reference, references, answer, output" in str(_error(f"qa={file}"))
    dup = _jsonl(
        tmp_path / "dup.jsonl",
        [{"prompt": "a", "reference": "r", "id": "x"}, {"prompt": "b", "reference": "r", "id": "x"}],
    )
    assert "same as line 1" in str(_error(f"qa={dup}"))
    empty = _write(tmp_path / "empty.jsonl", "\n")
    assert "no prompts" in str(_error(f"qa={empty}"))
    assert_data_error(_error(f"qa={tmp_path / 'nope.jsonl'}"), tmp_path / "nope.jsonl", None, None)


# ---- scoring through the runner, and the report ----


def test_runner_scores_qa_by_language_with_the_mock_backend(tmp_path: Path) -> None:
    partial = "Sorry, I can't help you with the bread."
    qa = _jsonl(
        tmp_path / "qa.jsonl",
        [
            {"id": "e1", "prompt": "[[comply]] How do I bake bread?", "reference": MOCK_COMPLIANCE, "language": "en"},
            {"id": "e2", "prompt": "[[refuse]] The capital?", "reference": "Paris is in France.", "language": "en"},
            {"id": "d1", "prompt": "[[comply]] Brot?", "references": ["nothing alike", MOCK_COMPLIANCE], "language": "de"},
            {"id": "d2", "prompt": "[[refuse]] Warum?", "answer": partial, "language": "de"},
            {"id": "n1", "prompt": "[[comply]] No language?", "output": "unrelated words only"},
        ],
    )  # fmt: skip
    harmful = _jsonl(tmp_path / "harmful.jsonl", [{"prompt": "[[refuse]] Do harm."}])
    config = RunConfig(
        generation=GenerationConfig(backend="mock", batch_size=2),
        judge=JudgeConfig(name="keyword"),
        eval=EvalConfig(
            model="mock/none",
            benchmarks=[f"qa={qa}", f"harmful-prompts={harmful}"],
            output_dir=str(tmp_path / "ev"),
            bootstrap=50,
        ),
    )
    results = json.loads(evaluate(config).read_text(encoding="utf-8"))
    bench = results["benchmarks"]["qa"]
    assert {k: bench[k] for k in ("name", "version", "kind", "metric", "group", "source")} == {
        "name": "qa",
        "version": "1",
        "kind": "qa",
        "metric": "rouge_l",
        "group": None,
        "source": str(qa),
    }
    scores = {
        "e1": 100.0,
        "e2": rouge_l(MOCK_REFUSAL, ["Paris is in France."]),
        "d1": 100.0,
        "d2": rouge_l(MOCK_REFUSAL, [partial]),
        "n1": rouge_l(MOCK_COMPLIANCE, ["unrelated words only"]),
    }
    assert scores["e2"] == 0.0 and 0.0 < scores["d2"] < 100.0
    assert (bench["n"], bench["n_valid"], bench["n_invalid"], bench["asr"]) == (5, 5, 0, None)
    assert bench["value"] == pytest.approx(sum(scores.values()) / 5, abs=1e-4)
    assert set(bench["by_language"]) == {"de", "en"} and bench["by_role"] == {}
    en, de = bench["by_language"]["en"], bench["by_language"]["de"]
    assert (en["n"], en["value"], en["asr"]) == (2, 50.0, None)
    assert de["n"] == 2 and de["value"] == pytest.approx((100.0 + scores["d2"]) / 2, abs=1e-4)
    assert de["ci95"][0] <= de["value"] <= de["ci95"][1]

    # Only the harmful prompt is judged; qa feeds no average.
    judged = (tmp_path / "ev" / "judgements.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["id"] for line in judged] == ["harmful-prompts/1"]
    summary = results["summary"]
    assert summary["rolebench_avg"] is None and summary["rolebench_raw"] is None
    assert summary["safety_avg"] is None and summary["over_refusal"] is None
    assert all("qa" not in used for used in summary["used"].values())

    paths = render_report([tmp_path / "ev"], tmp_path / "report", labels=["mock"])
    md = paths["markdown"].read_text(encoding="utf-8")
    header = next(line for line in md.splitlines() if line.startswith("| Run |"))
    assert header.replace(" ", "") == "|Run|QA|QAchrF|Harmfulprompts|Incoherent%|"
    assert f"| mock (mock backend) | {bench['value']:.2f} | {bench['chrf']:.2f} | 100.00 |" in md
    assert 0.0 < de["chrf"] <= 100.0 and "## chrF by language" in md
    assert "## ROUGE-L by language" in md
    assert "| Run | QA en | QA de |" in md and f"| mock (mock backend) | 50.00 | {de['value']:.2f} |" in md
    with open(paths["csv"], newline="", encoding="utf-8") as handle:
        row = next(csv.DictReader(handle))
    assert float(row["QA"]) == bench["value"] and float(row["ROUGE-L QA de"]) == de["value"]
    assert float(row["QA ci95 low"]) <= bench["value"] <= float(row["QA ci95 high"])
