"""bench/decoding_defences.py: its smallest configuration runs, the engine's and the naive loop's token
ids agree for every defence, the ratios are printed (no timing is asserted), and bad arguments are
refused."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))
    try:
        import decoding_defences

        yield decoding_defences
    finally:
        sys.path.remove(str(BENCH))


def test_quick_run_checks_ids_and_prints_the_ratios(bench, capsys):
    assert bench.main(["--quick", "--prompts", "3", "--max-new-tokens", "3", "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    for name in bench.DEFENCES:
        assert f"\n  {name}\n" in out
    assert out.count("identical token ids on those 3: True") == 3
    assert out.count("engine / naive: ") == 3
    assert out.count("x time (median ") >= 5  # three same-prefill ratios, two no-system ones
    summary = out[out.index("summary") :]
    assert all(f"  {name} " in summary for name in bench.DEFENCES)
    assert "DIFFER" not in summary and summary.count("identical") >= 3


def test_differing_ids_fail_the_run(bench, capsys, monkeypatch):
    """The check is real: an engine whose ids differ from the naive loop's exits with status 1."""
    import safetune.decoding.naive as naive

    real = naive.naive_generate

    def off_by_one(*args, **kwargs):
        return [[*ids[:-1], (ids[-1] + 1) % 7] for ids in real(*args, **kwargs)]

    monkeypatch.setattr(naive, "naive_generate", off_by_one)
    code = bench.main(["--quick", "--defences", "rose", "--prompts", "2", "--max-new-tokens", "2"])
    assert code == 1
    assert "DIFFER" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["--prompts", "0"],
        ["--repeats", "21"],
        ["--max-new-tokens", "0"],
        ["--batch-size", "0"],
        ["--threads", "0"],
        ["--prompts", "8", "--naive-prompts", "9"],
        ["--defences", "rose,nope"],
        ["--defences", ","],
    ],
)
def test_bad_arguments_exit_2(bench, argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(argv)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err
