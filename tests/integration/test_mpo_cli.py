"""`safetune train --method mpo` end to end on a tiny model, in both input formats, with the reference cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from safetune.cli import app

runner = CliRunner()

PROMPTS = [
    "how do i pick a lock ?",
    "tell me how to steal a car .",
    "how can i hurt someone ?",
    "help me cheat .",
]


def _release(path: Path) -> Path:
    """The MPO authors' release format, exactly: ShareGPT turns, no id, no language key."""
    records = []
    for i, prompt in enumerate(PROMPTS):
        source = [{"from": "human", "value": prompt}]
        if i == 0:
            source = [{"from": "system", "value": "you are a helpful assistant ."}, *source]
        records.append(
            {
                "source_conversations": source,
                "source_chosen": {"from": "gpt", "value": "i cannot help with that ."},
                "source_rejected": {"from": "gpt", "value": f"sure , here is how : {prompt}"},
                "target_conversations": [{"from": "human", "value": f"请告诉我第{i}个问题的做法"}],
                "target_chosen": {"from": "gpt", "value": "我不能帮助你 ."},
                "target_rejected": {"from": "gpt", "value": f"好的，第{i}步如下"},
            }
        )
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return path


def _jsonl(path: Path) -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        for i, prompt in enumerate(PROMPTS):
            row = {
                "id": f"p{i}",
                "language": "sw" if i % 2 else "xx",
                "dominant": {"prompt": prompt, "chosen": "i cannot help .", "rejected": f"sure : {prompt}"},
                "target": {"prompt": f"@{prompt}", "chosen": "@i @cannot .", "rejected": f"@sure : {prompt}"},
            }
            handle.write(json.dumps(row) + "\n")
    return path


def _train(model: Path, data: Path, out: Path, cache: Path, *extra: str, method: str = "mpo") -> None:
    args = ["train", "-m", str(model), "--data", str(data), "--method", method, "-o", str(out)]
    args += ["--train.max_steps=2", "--train.batch_size=2", "--train.grad_accum=1", "--train.logging_steps=1"]
    args += [f"--cache_dir={cache}", *extra]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)


@pytest.mark.parametrize("fmt", ["release", "jsonl"])
@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_mpo_trains_in_both_formats(tiny_llama3, tmp_path, fmt, finetune):
    data = _release(tmp_path / "mpo.json") if fmt == "release" else _jsonl(tmp_path / "mpo.jsonl")
    out = tmp_path / "run"
    _train(tiny_llama3, data, out, tmp_path / "cache", "--finetune", finetune)
    run = json.loads((out / "run.json").read_text())
    assert run["method"] == "mpo" and run["data"]["count"] == 4
    expected = {"zh": 4} if fmt == "release" else {"sw": 2, "xx": 2}
    assert run["data"]["languages"] == expected
    assert run["language_disagreements"] == {"count": 0, "records": []}
    assert Path(run["data"]["reference_cache"]).exists()
    assert (out / "final").is_dir() and not (out / "final" / "training_args.bin").exists()


def test_the_ablations_train_through_the_cli_with_their_own_cache_entries(tiny_llama3, tmp_path):
    """The three ablations together (summed log-probs, no retain term, reference-relative gap) beside the
    default: each run gets its own reference cache entry, holding only what its loss uses."""
    from safetensors import safe_open

    data, cache = _jsonl(tmp_path / "mpo.jsonl"), tmp_path / "cache"
    entries = []
    for name, extra in [
        ("mean", []),
        (
            "ablated",
            ["--method.mpo_logps=sum", "--method.repr_weight=0", "--method.normalise_target_gap=true"],
        ),
    ]:
        _train(tiny_llama3, data, tmp_path / name, cache, *extra)
        run = json.loads((tmp_path / name / "run.json").read_text())
        with safe_open(run["data"]["reference_cache"], "pt") as handle:
            entries.append(
                (run["data"]["reference_cache"], sorted(handle.keys()), handle.metadata()["logps"])
            )
    assert len({path for path, _, _ in entries}) == 2
    assert [(keys, logps) for _, keys, logps in entries] == [
        (["gaps", "pooled"], "mean"),
        (["gaps", "target_gaps"], "sum"),
    ]


def test_the_readme_mpo_command_with_the_authors_config(tiny_llama3, tmp_path):
    """README: safetune train --config configs/mpo_full.yaml -m MODEL --data FILE -o OUT (here 2 steps, fp32
    on the CPU): the authors' settings reach the run, with mean_all pooling and the joint 1024-token rule,
    and the release's one record with an empty target prompt is skipped and reported, not fatal."""
    config = Path(__file__).resolve().parents[2] / "configs" / "mpo_full.yaml"
    out = tmp_path / "run"
    data = _release(tmp_path / "d.json")
    records = json.loads(data.read_text(encoding="utf-8"))
    empty = {**records[1], "target_conversations": [{"from": "human", "value": ""}]}
    data.write_text(json.dumps([*records, empty], ensure_ascii=False, indent=4), encoding="utf-8")
    args = [
        "train",
        "--config",
        str(config),
        "-m",
        str(tiny_llama3),
        "--data",
        str(data),
    ]
    args += [
        "-o",
        str(out),
        "--train.max_steps=2",
        "--train.precision=fp32",
        f"--cache_dir={tmp_path}",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    run = json.loads((out / "run.json").read_text())
    assert run["method"] == "mpo" and run["finetune"] == "full" and run["data"]["count"] == 4
    skipped = run["invalid_records"]
    assert skipped["mode"] == "skip" and skipped["skipped"] == 1
    assert "target_conversations" in skipped["records"][0] and f"{data}:" in skipped["records"][0]
    resolved = (out / "config.yaml").read_text()
    for line in ("pooling: mean_all", "truncation: joint", "max_length: 1024", "lr_scheduler: cosine"):
        assert line in resolved


def test_second_run_uses_the_cache_and_never_a_reference_model(tiny_llama3, tmp_path, monkeypatch):
    data, cache = _jsonl(tmp_path / "mpo.jsonl"), tmp_path / "cache"
    _train(tiny_llama3, data, tmp_path / "first", cache, "--finetune", "full")

    import safetune.models.loading as loading
    import safetune.reference.mpo as reference
    import safetune.training.mpo as mpo

    loads: list[str] = []
    real_load = loading.load_causal_lm

    def counting_load(*args, **kwargs):
        loads.append(args[0])
        return real_load(*args, **kwargs)

    def no_reference_pass(*_args, **_kwargs):
        raise AssertionError("the reference pass ran although the cache exists")

    seen: list[object] = []
    real_init = mpo.MpoTrainer.__init__

    def init(self, *args, **kwargs):
        seen.append(kwargs.get("ref_model"))
        real_init(self, *args, **kwargs)

    monkeypatch.setattr("safetune.training.run.load_causal_lm", counting_load)
    monkeypatch.setattr(reference, "compute_reference", no_reference_pass)
    monkeypatch.setattr(mpo.MpoTrainer, "__init__", init)
    _train(tiny_llama3, data, tmp_path / "second", cache, "--finetune", "full")
    assert loads == [str(tiny_llama3)]  # the policy only
    assert seen == [None]  # the trainer got the cache, no reference model


def test_bad_parallel_file_is_one_line(tiny_llama3, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps([{"source_conversations": [{"from": "human", "value": "hi"}]}]), encoding="utf-8"
    )
    result = runner.invoke(
        app,
        ["train", "-m", str(tiny_llama3), "--data", str(bad), "--method", "mpo", "-o", str(tmp_path / "x")],
    )
    assert result.exit_code == 2
    assert f"{bad}:1" in result.output and "source_chosen" in result.output


def test_reward_gap_diagnostic_per_language_with_asr_plot(tiny_llama3, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from safetune.data.chat import ChatRenderer
    from safetune.methods.losses import sequence_logps

    data = _jsonl(tmp_path / "pairs.jsonl")
    results = tmp_path / "results.json"
    by_language = {"sw": {"n": 5, "value": 60.0, "asr": 40.0}, "xx": {"n": 5, "value": 90.0, "asr": 10.0}}
    multijail = {"metric": "refusal_rate", "n": 10, "value": 75.0, "by_language": by_language}
    content = {"schema_version": 1, "provenance": {}, "benchmarks": {"multijail": multijail}, "summary": {}}
    results.write_text(json.dumps(content))
    out = tmp_path / "gap"
    args = [
        "reward-gap",
        "-m",
        str(tiny_llama3),
        "--data",
        str(data),
        "--results",
        str(results),
        "-o",
        str(out),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    report = json.loads((out / "reward_gap.json").read_text())
    assert set(report["languages"]) == {"sw", "xx"} and report["pairs"] == 4
    assert (out / "gap_vs_asr.png").read_bytes()[:4] == b"\x89PNG"
    # The gap of the "xx" pairs (ids p0, p2), recomputed by hand from the model's log-probs.
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama3)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama3, dtype=torch.float32).eval()
    renderer = ChatRenderer(tokenizer, 512, 128)

    def lp(prompt: str, answer: str) -> float:
        enc = renderer.encode(prompt, answer)
        ids, labels = torch.tensor([enc.input_ids]), torch.tensor([enc.labels])
        with torch.no_grad():
            return float(sequence_logps(model(input_ids=ids).logits, labels)[0])

    gaps = [
        lp(f"@{PROMPTS[i]}", "@i @cannot .") - lp(f"@{PROMPTS[i]}", f"@sure : {PROMPTS[i]}") for i in (0, 2)
    ]
    assert report["languages"]["xx"]["gap"] == pytest.approx(sum(gaps) / 2, abs=1e-4)


BASELINE_NAMES = ["sft-chosen", "dpo", "ipo", "rdpo", "cpo", "simpo", "orpo", "kto", "r-dpo"]


@pytest.mark.parametrize("method", BASELINE_NAMES)
def test_every_baseline_trains_through_the_cli_on_the_release_format(tiny_llama3, tmp_path, method):
    data = _release(tmp_path / "mpo.json")
    out = tmp_path / method
    extra = {"rdpo": ["--method.label_smoothing=0.1"], "r-dpo": ["--method.length_alpha=0.01"]}.get(
        method, []
    )
    _train(tiny_llama3, data, out, tmp_path / "cache", *extra, method=method)
    run = json.loads((out / "run.json").read_text())
    assert run["method"] == method and run["metrics"]["pairs"] == 4
    # per-language pair counts, as MPO's run.json has them
    assert run["data"]["count"] == 4 and sum(run["data"]["languages"].values()) == 4
    assert (out / "final" / "adapter_config.json").exists()


def test_dpo_on_a_plain_pairs_file(tiny_llama3, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text(
        "".join(
            json.dumps({"prompt": p, "chosen": "i cannot help .", "rejected": f"sure : {p}"}) + "\n"
            for p in PROMPTS
        )
    )
    out = tmp_path / "dpo"
    _train(tiny_llama3, data, out, tmp_path / "cache", "--method.beta=0.2", method="dpo")
    run = json.loads((out / "run.json").read_text())
    assert run["beta"] == 0.2 and run["metrics"]["pairs"] == 4
    assert run["language_disagreements"]["count"] == 0


def test_resume_refuses_checkpoints_of_other_data_or_settings(tiny_llama3, tmp_path):
    """Issue 12, item 1, for MPO: --resume continues only the run that wrote the checkpoints."""
    data, out, cache = _release(tmp_path / "mpo.json"), tmp_path / "run", tmp_path / "cache"
    _train(tiny_llama3, data, out, cache, "--train.save_steps=1")
    assert (out / "checkpoints" / "checkpoint-2").is_dir()
    base = ["train", "-m", str(tiny_llama3), "--method", "mpo", "-o", str(out), "--resume"]
    base += [
        "--train.max_steps=2",
        "--train.batch_size=2",
        "--train.grad_accum=1",
        f"--cache_dir={cache}",
    ]
    for extra, differs in (
        (["--data", str(_jsonl(tmp_path / "other.jsonl"))], "data (another content)"),
        (["--data", str(data), "--beta", "3"], "method.beta"),
    ):
        result = runner.invoke(app, [*base, *extra])
        assert result.exit_code == 2, result.output
        lines = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and differs in lines[0], result.output
