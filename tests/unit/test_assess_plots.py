"""The study's plots: files written, sized for the role count, bad input refused before any file."""

from __future__ import annotations

from pathlib import Path

import pytest
from matplotlib.image import imread

from safetune.assess.forecast import LooError, LooResult
from safetune.assess.plots import drop_bars, drop_vs_trait, forecast_vs_observed
from safetune.assess.traits import spearman
from safetune.errors import ConfigError


def _roles(n: int) -> list[str]:
    return [f"Character number {i}" for i in range(n)]


def test_scatter_and_bars_for_many_roles(tmp_path: Path) -> None:
    roles = _roles(95)
    villainy = [float(i % 17) for i in range(95)]
    drops = [float(v * 2 - 5 + (i % 7)) for i, v in enumerate(villainy)]
    rho = spearman(villainy, drops, bootstrap=200)
    scatter = drop_vs_trait(tmp_path / "scatter.png", roles, villainy, drops, "villainy", rho, method="SFT")
    bars = drop_bars(
        tmp_path / "bars.png", roles, {"SFT": drops, "SaRFT": [d / 4 for d in drops[:-1]] + [None]}
    )
    assert imread(scatter).shape[0] > 300
    tall = imread(bars).shape[0]
    few = imread(drop_bars(tmp_path / "few.png", roles[:8], {"SFT": drops[:8]})).shape[0]
    assert tall > 8 * few / 2  # 95 roles x 2 methods: every name gets its own row
    assert not list(tmp_path.glob(".*.tmp"))


def test_forecast_plot(tmp_path: Path) -> None:
    per_role = tuple(LooError(f"r{i}", float(i), float(i) + 1.0, 4.5) for i in range(10))
    loo = LooResult(1.0, 2.5, False, per_role, 0.01, 99)
    assert imread(forecast_vs_observed(tmp_path / "loo.png", loo)).shape[1] > 300


def test_bad_plot_input_writes_nothing(tmp_path: Path) -> None:
    rho = spearman([1, 2, 3], [1, 2, 3], bootstrap=0)
    with pytest.raises(ConfigError, match="3 roles, 2 trait scores, 3 drops"):
        drop_vs_trait(tmp_path / "a.png", _roles(3), [1.0, 2.0], [1.0, 2.0, 3.0], "villainy", rho)
    with pytest.raises(ConfigError, match=r"drops\[SFT\]\[1\] is not finite"):
        drop_bars(tmp_path / "b.png", _roles(2), {"SFT": [1.0, float("inf")]})
    with pytest.raises(ConfigError, match="SaRFT has 1 drops for 2 roles"):
        drop_bars(tmp_path / "b.png", _roles(2), {"SFT": [1.0, 2.0], "SaRFT": [1.0]})
    assert list(tmp_path.iterdir()) == []


def test_labels_do_not_overlap_and_roles_at_one_point_share_one() -> None:
    """Two villains at the same point get one label; neighbours whose first-choice labels would cover
    each other are moved apart (boxes measured on the rendered figure)."""
    from matplotlib.text import Annotation

    from safetune.assess.plots import _annotate, _figure

    fig = _figure(6.0, 5.0)
    ax = fig.add_subplot()
    xs, ys = [100.0, 100.0, 0.0, 1.1, 10.0, 18.3], [18.9, 18.9, 0.0, 0.0, 27.0, 32.0]
    names = ["Grim Vex", "Lady Nightshade", "Sister Mira", "Penny Bun", "Rook Marlowe", "Brakka Stone"]
    ax.scatter(xs, ys)
    _annotate(ax, range(len(xs)), xs, ys, names, None)
    notes = [c for c in ax.get_children() if isinstance(c, Annotation)]
    assert sorted(n.get_text() for n in notes) == sorted(
        ["Grim Vex, Lady Nightshade", "Sister Mira", "Penny Bun", "Rook Marlowe", "Brakka Stone"]
    )
    renderer = fig.canvas.get_renderer()
    boxes = [n.get_window_extent(renderer) for n in notes]
    assert all(b.width > 1 for b in boxes)  # real text boxes, not the empty box of an unplaced label
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert not a.overlaps(b)
