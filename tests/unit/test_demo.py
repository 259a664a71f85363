"""The demo's plan, machine record and distribution tables (the runs themselves: tests/integration)."""

from __future__ import annotations

import torch

from safetune.demos.common import machine_line
from safetune.demos.distribution import distribution_markdown
from safetune.demos.sarft import DemoPlan
from safetune.provenance import machine_record, pinned_threads


def test_plan_pins_threads_into_the_organism():
    plan = DemoPlan.for_seed(3, threads=1)
    assert plan.threads == plan.organism.threads == 1 and plan.organism.seed == 3 and plan.raw_tests == 60
    assert DemoPlan.for_seed(3, quick=True).raw_tests == 24
    assert DemoPlan.for_seed(3).organism.key() != plan.organism.key()


def test_pinned_threads_restores_the_process_settings():
    before = torch.get_num_threads()
    with pinned_threads(before + 1):
        assert torch.get_num_threads() == before + 1 and torch.are_deterministic_algorithms_enabled()
        record = machine_record()
    assert record["threads"] == before + 1 and record["versions"]["torch"]
    assert torch.get_num_threads() == before and not torch.are_deterministic_algorithms_enabled()
    assert "1 torch thread(s)" in machine_line({**record, "threads": 1})


def _summary(refusals: list[float], holds: list[bool]) -> dict:
    rows = [{"name": "a", "refusal": r} for r in refusals]
    return {"rows": rows, "checks": [[f"claim {i}", "", ok] for i, ok in enumerate(holds)]}


def test_distribution_counts_holds_and_spreads_per_thread_count():
    runs = {
        1: [
            _summary([10.0], [True, True]),
            _summary([30.0], [True, False]),
            _summary([20.0], [False, False]),
        ],
        2: [_summary([5.0], [True, True]), _summary([7.0], [True, True])],
    }
    lines = distribution_markdown(
        runs,
        lambda r: r["name"],
        {"refusal": ("refusal %", 1)},
        {"twice": lambda rows: 2 * rows[0]["refusal"]},
    )
    assert "| claim 0 | 2/3 | 2/2 |" in lines and "| claim 1 | 1/3 | 2/2 |" in lines
    # median [min-max]: odd count takes the middle value, even count the mean of the two middle ones
    assert "| a | refusal % | 20.0 [10.0–30.0] | 6.0 [5.0–7.0] |" in lines
    assert "| twice | 40.0 [20.0–60.0] | 12.0 [10.0–14.0] |" in lines


def test_demo_judges_with_keyword_first_and_shows_the_agreement_per_model(tmp_path):
    """Issue 19's demo line: keyword makes the refusal rates (as before), the organism's strict check is
    compared with it, and every model row shows their agreement and kappa."""
    from safetune.demos.sarft import DEMO_JUDGES, _judge_agreement, eval_config, summary_markdown
    from safetune.evaluation.results import REFUSAL_RATE, BenchmarkResult, JudgeAgreement, JudgeComparison
    from safetune.organism.world import PERSONAS

    plan = DemoPlan.for_seed(0, quick=True)
    files = {"roles": tmp_path / "roles", "harmful": tmp_path / "harmful.jsonl"}
    config = eval_config(plan, tmp_path / "model", files, PERSONAS[0], tmp_path / "ev")
    assert config.judge.names == ["keyword", "organism"] == list(DEMO_JUDGES)

    compared = JudgeComparison(key="o", n=20, n_undecided=0, n_disagreements=1, agreement=95.0, kappa=0.8)
    block = JudgeAgreement(primary="keyword", compares="label", judges={"organism": compared})
    harmful = BenchmarkResult(n=20, value=95.0, metric=REFUSAL_RATE, judge_agreement=block)
    assert _judge_agreement(harmful) == {"judge_agreement": 95.0, "judge_kappa": 0.8}
    # A row of a summary.json from before the second judge: dashes, not an error.
    assert _judge_agreement(BenchmarkResult(n=20, value=95.0, metric=REFUSAL_RATE)) == {
        "judge_agreement": None,
        "judge_kappa": None,
    }
    rows = []
    for persona in PERSONAS:
        for variant, refusal, flags in (("base", 100.0, None), ("sft", 30.0, None), ("sarft", 95.0, 40.0),
                                        ("random", 60.0, 20.0)):  # fmt: skip
            row = {
                "persona": persona.name,
                "villain": persona.villain,
                "variant": variant,
                "refusal": refusal,
            }
            row |= {"rolebench_raw": 30.0, "rolebench_spe": 20.0, "rolebench_avg": 25.0, "flag_rate": flags}
            if variant != "random":  # an older row keeps working
                row |= _judge_agreement(harmful)
            rows.append(row)
    machine = {"threads": 2, "cpu": "x", "cpu_capability": "y", "python": "3", "versions": {}}
    text = summary_markdown(rows, plan, {"parameters": 1000, "config": {"steps": 10}}, machine)
    assert "| RDS flag rate % | incoherent (harmful) | keyword vs organism agreement % | κ |" in text
    assert f"| {PERSONAS[0].name} | SFT | 30.0 | 20.0 | 25.0 | 30.0 | – | – | 95.0 | 0.80 |" in text
    assert f"| {PERSONAS[0].name} | random + KL | 30.0 | 20.0 | 25.0 | 60.0 | 20.0 | – | – | – |" in text
