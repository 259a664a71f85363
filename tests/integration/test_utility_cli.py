"""`safetune eval --utility` end to end through lm-evaluation-harness, offline: tiny local task YAMLs
(multiple choice, a per-language tag, generate_until) with datasets from local JSON files, on a tiny model.
Scores are checked against values computed by hand or directly with the model; the cache, a changed task,
bad entries and the report. One test: lm-eval's task index and the model load are its cost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from safetune.cli import app

runner = CliRunner()


def _jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _mc_yaml(folder: Path, task: str, data: Path, tag: str | None = None) -> Path:
    lines = [
        f"task: {task}",
        *([f"tag: {tag}"] if tag else []),
        "dataset_path: json",
        "dataset_kwargs:",
        "  data_files:",
        f"    test: {data}",
        "test_split: test",
        "output_type: multiple_choice",
        'doc_to_text: "{{q}}"',
        'doc_to_choice: "{{choices}}"',
        "doc_to_target: label",
        "metric_list:",
        "  - metric: acc",
        "    aggregation: mean",
        "    higher_is_better: true",
        "metadata:",
        "  version: 1.0",
    ]
    path = folder / f"{task}.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


MC_DOCS = [
    {"q": "The sky is", "choices": ["blue", "assistant", "green"], "label": 0},
    {"q": "Hello, who are", "choices": ["you", "the", "cat"], "label": 0},
    {"q": "I am a helpful", "choices": ["assistant", "stone"], "label": 1},
    {"q": "Please answer the", "choices": ["question", "sorry"], "label": 0},
]


@pytest.fixture(scope="module")
def tasks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tasks")
    # Every choice the same: equal loglikelihoods, lm-eval's argmax picks the first, so acc is the share of
    # label 0, whatever the model.
    same = _jsonl(
        folder / "same.jsonl",
        [{"q": f"q{i}", "choices": ["x", "x"], "label": lab} for i, lab in enumerate([0, 1, 1, 0])],
    )
    _mc_yaml(folder, "tiny_same", same)
    _mc_yaml(folder, "tiny_ll", _jsonl(folder / "ll.jsonl", MC_DOCS))
    en = _jsonl(folder / "en.jsonl", [{"q": "a", "choices": ["x", "x"], "label": 0}] * 2)
    bn = _jsonl(folder / "bn.jsonl", [{"q": "আমি", "choices": ["ক", "ক"], "label": 1}] * 2)
    _mc_yaml(folder, "tinylang_en", en, tag="tinylang")
    _mc_yaml(folder, "tinylang_bn", bn, tag="tinylang")
    gen = _jsonl(folder / "gen.jsonl", [{"q": f"Say the code {i}:", "a": "QZXJ-9917"} for i in range(3)])
    (folder / "tiny_gen.yaml").write_text(
        "\n".join(
            [
                "task: tiny_gen",
                "dataset_path: json",
                "dataset_kwargs:",
                "  data_files:",
                f"    test: {gen}",
                "test_split: test",
                "output_type: generate_until",
                'doc_to_text: "{{q}}"',
                'doc_to_target: "{{a}}"',
                "generation_kwargs:",
                "  until: ['\\n']",
                "  max_gen_toks: 4",
                "  do_sample: false",
                "metric_list:",
                "  - metric: exact_match",
                "    aggregation: mean",
                "    higher_is_better: true",
                "metadata:",
                "  version: 2.0",
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    return folder


def _direct_acc(model_dir: Path) -> float:
    """tiny_ll's accuracy computed here with the model: lm-eval's rule (the continuation's tokens are those
    of context + " " + choice after the context's; the sum of their log-probabilities; argmax)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    correct = 0
    for doc in MC_DOCS:
        context = tok(doc["q"], add_special_tokens=False)["input_ids"]
        scores = []
        for choice in doc["choices"]:
            whole = tok(doc["q"] + " " + choice, add_special_tokens=False)["input_ids"]
            continuation = whole[len(context) :]
            ids = torch.tensor([context + continuation])
            with torch.no_grad():
                logprobs = model(ids).logits.float().log_softmax(-1)[0]
            scores.append(sum(logprobs[len(context) - 1 + i, t].item() for i, t in enumerate(continuation)))
        correct += int(max(range(len(scores)), key=lambda i: (scores[i], -i)) == doc["label"])
    return correct / len(MC_DOCS)


def _eval(model: Path, out: Path, utility: str, *extra: str) -> object:
    args = ["eval", "-m", str(model), "--utility", utility, "-o", str(out), "-q", *extra]
    return runner.invoke(app, args)


def test_utility_through_lm_eval_cached_per_task_and_reported(tasks, tiny_chatml, tmp_path):
    out = tmp_path / "ev"
    utility = f"tiny_same,tinylang,tiny_ll,{tasks / 'tiny_gen.yaml'}"
    include = f"--eval.utility_include={tasks}"
    # Bad entries first: one line, exit 2, nothing written (an unknown name is looked up in lm-eval's own
    # task index too, and its closest names are offered).
    unknown = _eval(tiny_chatml, out, "tiny_same,tiny_sme", include)
    assert unknown.exit_code == 2
    assert "unknown lm-eval task 'tiny_sme'" in unknown.output and "tiny_same" in unknown.output
    missing = _eval(tiny_chatml, out, str(tasks / "nope.yaml"))
    assert missing.exit_code == 2 and "nope.yaml" in missing.output and not out.exists()

    result = _eval(tiny_chatml, out, utility, include)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "results.json").read_text(encoding="utf-8"))
    section = data["utility"]
    assert list(section) == ["tiny_same", "tinylang", "tiny_ll", "tiny_gen"]
    same = section["tiny_same"]["metrics"]["acc,none"]
    assert same["value"] == pytest.approx(0.5)
    assert same["stderr"] == pytest.approx((0.25 / 3) ** 0.5)  # sqrt(p(1-p)/(n-1))
    lang = section["tinylang"]
    assert lang["aggregate"] == "mean of tasks" and lang["n"] == 4
    assert {k: v["metrics"]["acc,none"]["value"] for k, v in lang["by_language"].items()} == {
        "bn": 0.0,
        "en": 1.0,
    }
    assert lang["metrics"]["acc,none"]["value"] == pytest.approx(0.5)
    assert section["tiny_ll"]["metrics"]["acc,none"]["value"] == pytest.approx(_direct_acc(tiny_chatml))
    assert section["tiny_gen"]["metrics"]["exact_match,none"]["value"] == 0.0  # no 4-token answer matches
    provenance = data["provenance"]["utility"]
    assert provenance["lm_eval_version"].startswith("0.4.")
    assert provenance["tasks"]["tiny_gen"]["tasks"]["tiny_gen"]["version"] == 2.0
    assert data["provenance"]["counts"]["utility_now"] == 4

    # Re-run: every score from utility.jsonl, nothing recomputed.
    assert _eval(tiny_chatml, out, utility, include).exit_code == 0
    assert json.loads((out / "results.json").read_text())["provenance"]["counts"]["utility_now"] == 0
    # A changed task recomputes only that task.
    yaml_file = tasks / "tiny_gen.yaml"
    yaml_file.write_text(yaml_file.read_text().replace("version: 2.0", "version: 2.1"))
    assert _eval(tiny_chatml, out, utility, include).exit_code == 0
    again = json.loads((out / "results.json").read_text())
    assert again["provenance"]["counts"]["utility_now"] == 1
    assert again["utility"]["tiny_same"] == section["tiny_same"]

    report = tmp_path / "report"
    assert runner.invoke(app, ["report", str(out), "-o", str(report)]).exit_code == 0
    text = (report / "report.md").read_text(encoding="utf-8")
    assert "tiny_same acc %" in text and "50.00" in text
    assert "## Utility by language" in text and "tinylang bn" in text
