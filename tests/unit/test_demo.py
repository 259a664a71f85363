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
