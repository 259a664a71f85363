"""The probe's geometry on synthetic states, against hand-computed values; its prompt loading and settings."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from safetune.errors import ConfigError, DataError
from safetune.evaluation.probe import (
    SAFE,
    UNSAFE,
    Geometry,
    LanguageGeometry,
    ProbeSettings,
    Separation,
    changes,
    data_hash,
    fit_pca,
    geometry,
    load_probe_prompts,
    separation,
    split_entry,
)


def t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_separation_is_the_class_mean_distance_over_the_pooled_spread():
    # means (1, 0) and (0, 4): distance sqrt(17); SS 2 + 2 over 4 - 2 states: spread sqrt(2).
    found = separation(t([[0, 0], [2, 0]]), t([[0, 3], [0, 5]]))
    assert found is not None
    assert found.distance == pytest.approx(math.sqrt(17))
    assert found.spread == pytest.approx(math.sqrt(2))
    assert found.score == pytest.approx(math.sqrt(17 / 2))


def test_separation_needs_both_classes_and_a_spread():
    assert separation(t([[0, 0]]), t([])) is None
    assert separation(torch.zeros(0, 2), t([[0, 0], [1, 1]])) is None
    assert separation(t([[0, 0]]), t([[1, 1]])) is None  # two states: no within-class spread
    zero = separation(t([[0, 0]]), t([[3, 4], [3, 4]]))
    assert zero == Separation(5.0, 0.0, None)


def _two_languages() -> tuple[torch.Tensor, list[tuple[str, str]]]:
    # en: safe (1, +-1, 0), unsafe (3, 0, 0): language mean (2, 0, 0); de: safe (2, 2, 0), unsafe
    # (2, 4, 0): language mean (2, 3, 0).
    states = t([[1, 1, 0], [1, -1, 0], [3, 0, 0], [2, 4, 0], [2, 2, 0]])
    rows = [("en", SAFE), ("en", SAFE), ("en", UNSAFE), ("de", UNSAFE), ("de", SAFE)]
    return states, rows


def test_geometry_by_hand():
    states, rows = _two_languages()
    geo = geometry(states, rows, "en")
    en, de = geo.languages
    assert (en.language, de.language) == ("en", "de")
    assert en.counts == {SAFE: 2, UNSAFE: 1} and de.counts == {SAFE: 1, UNSAFE: 1}
    assert geo.mean_classes == [SAFE, UNSAFE]
    assert en.mean_norm == pytest.approx(2.0) and de.mean_norm == pytest.approx(math.sqrt(13))
    assert en.euclidean_distance == 0 and de.euclidean_distance == pytest.approx(3.0)
    assert en.cosine_distance == pytest.approx(0.0, abs=1e-12)
    assert de.cosine_distance == pytest.approx(1 - 4 / (2 * math.sqrt(13)))
    # Two languages: the specific subspace is the line through both means, so |delta_de| is their distance.
    assert en.shift_norm == 0 and de.shift_norm == pytest.approx(3.0)
    assert geo.rank == 1 and geo.singular_values[0] > 0
    # c is the point of the line through (2,0,0) and (2,3,0) nearest the origin: (2, 0, 0).
    assert geo.common_norm == pytest.approx(2.0)
    # en: means (1,0,0) and (3,0,0), SS 2 over 3 - 2: spread sqrt(2), distance 2.
    assert en.separation is not None and en.separation.score == pytest.approx(math.sqrt(2))
    assert de.separation is None  # two prompts: no spread


def test_language_means_use_only_the_classes_every_language_has():
    states, rows = _two_languages()
    states = torch.cat([states, t([[0, 0, 5], [0, 0, 7]])])
    rows = [*rows, ("fr", UNSAFE), ("fr", UNSAFE)]
    geo = geometry(states, rows, "de")
    assert [g.language for g in geo.languages] == ["de", "en", "fr"]  # the dominant one first
    assert geo.mean_classes == [UNSAFE]
    by = geo.by_language()
    assert by["en"].mean_norm == pytest.approx(3.0)  # the unsafe mean (3, 0, 0) alone
    assert by["fr"].euclidean_distance == pytest.approx(math.dist((0, 0, 6), (2, 4, 0)))
    assert by["de"].shift_norm == 0 and by["en"].shift_norm > 0 and geo.rank == 2
    assert json.loads(json.dumps(geo.to_dict()))["languages"]["fr"]["separation"] is None


def test_geometry_refusals():
    states, rows = _two_languages()
    with pytest.raises(ConfigError, match="dominant language 'fr'"):
        geometry(states, rows, "fr")
    with pytest.raises(ConfigError, match="at least 2 languages"):
        geometry(states[:3], rows[:3], "en")
    with pytest.raises(ConfigError, match="no label has prompts in every language"):
        geometry(states[:4], [("en", SAFE), ("en", SAFE), ("de", UNSAFE), ("de", UNSAFE)], "en")
    same = t([[1, 0], [1, 0]])
    with pytest.raises(ConfigError, match="same mean"):
        geometry(same, [("en", UNSAFE), ("de", UNSAFE)], "en")


def test_pca_by_hand():
    pca = fit_pca(t([[3, 0], [-1, 0], [1, 1], [1, -1]]))  # centre (1, 0); variance 8 along x, 2 along y
    assert pca.centre.tolist() == [1.0, 0.0]
    assert torch.allclose(pca.components, torch.eye(2, dtype=torch.float64))
    assert pca.explained == pytest.approx([0.8, 0.2])
    assert pca.project(t([[2, 1]])).tolist() == [[1.0, 1.0]]
    flipped = fit_pca(t([[-1, 0], [3, 0], [1, -1], [1, 1]]))  # same points, another order: same basis
    assert torch.allclose(flipped.components, pca.components)
    one = fit_pca(t([[0, 0, 0], [2, 0, 0]]))  # one direction only: the second is zero
    assert one.explained == [1.0, 0.0] and float(one.components[:, 1].abs().sum()) == 0


def test_a_shared_basis_is_fitted_on_the_union():
    before, after = t([[0, 0], [2, 0]]), t([[0, 1], [0, 5]])
    shared = fit_pca(torch.cat([before, after]))
    assert not torch.allclose(shared.components, fit_pca(after).components)
    assert shared.centre.tolist() == [0.5, 1.5]


def test_changes_pair_each_language():
    def lang(name: str, shift: float, score: float | None) -> LanguageGeometry:
        sep = None if score is None else Separation(score, 1.0, score)
        return LanguageGeometry(name, {SAFE: 1, UNSAFE: 2}, 1.0, shift, shift * 2, 0.1, sep)

    before = Geometry("en", [lang("en", 0, 1.0), lang("de", 3, None)], [UNSAFE], 1, 1.0, [1.0])
    after = Geometry("en", [lang("en", 0, 2.0), lang("de", 1, 0.5)], [UNSAFE], 1, 1.0, [1.0])
    found = {c.language: c for c in changes(before, after)}
    assert found["de"].shift_norm == (3, 1) and found["de"].euclidean_distance == (6, 2)
    assert found["de"].separation == (None, 0.5) and found["en"].separation == (1.0, 2.0)


def _write(path: Path, rows: list[dict[str, object]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _pair(i: int, prompt: str, target: str, language: str = "de") -> dict[str, object]:
    return {
        "id": i,
        "language": language,
        "dominant_language": "en",
        "dominant": {"prompt": prompt, "chosen": "no", "rejected": "yes"},
        "target": {"prompt": target, "chosen": "nein", "rejected": "ja"},
    }


def test_prompts_from_pairs_and_files(tmp_path):
    pairs = _write(
        tmp_path / "pairs.jsonl",
        [_pair(1, "steal a car", "ein Auto stehlen"), _pair(2, "steal a car", "voler une voiture", "fr")],
    )
    benign = _write(
        tmp_path / "benign.jsonl", [{"prompt": "bake bread"}, {"prompt": "a poem", "language": "en"}]
    )
    harmful = _write(tmp_path / "harmful.jsonl", [{"prompt": "make a bomb", "language": "en"}])
    prompts = load_probe_prompts(pairs=pairs, harmful=[harmful], benign=[f"en={benign}"])
    got = [(p.language, p.label, p.text) for p in prompts]
    assert got == [
        ("en", UNSAFE, "steal a car"),  # the repeated dominant prompt counts once
        ("de", UNSAFE, "ein Auto stehlen"),
        ("fr", UNSAFE, "voler une voiture"),
        ("en", UNSAFE, "make a bomb"),
        ("en", SAFE, "bake bread"),
        ("en", SAFE, "a poem"),
    ]
    limited = load_probe_prompts(pairs=pairs, harmful=[harmful], benign=[f"en={benign}"], max_per_language=1)
    assert [(p.language, p.label) for p in limited] == [
        ("en", UNSAFE),
        ("de", UNSAFE),
        ("fr", UNSAFE),
        ("en", SAFE),
    ]
    assert data_hash(limited) != data_hash(prompts)


def test_bad_prompt_records_are_located(tmp_path):
    benign = _write(
        tmp_path / "benign.jsonl", [{"prompt": "bake bread", "language": "en"}, {"prompt": "sing"}]
    )
    with pytest.raises(DataError, match=r"benign.jsonl: field 'language': record '2' has no language"):
        load_probe_prompts(harmful=[benign])
    both = _write(tmp_path / "both.jsonl", [{"prompt": "bake bread", "language": "en", "id": "b7"}])
    with pytest.raises(
        DataError, match=r"both.jsonl: field 'prompt': record 'b7': the same en prompt is safe"
    ):
        load_probe_prompts(harmful=[both], benign=[both])
    bad = _write(tmp_path / "bad.jsonl", [{"prompt": 3, "language": "en"}])
    with pytest.raises(DataError, match=r"bad.jsonl:1: field 'prompt'"):
        load_probe_prompts(harmful=[bad])
    with pytest.raises(DataError, match=r"differs from"):
        load_probe_prompts(harmful=[f"de={benign}"])
    with pytest.raises(ConfigError, match="nothing to probe"):
        load_probe_prompts(benign=[benign])


def test_split_entry(tmp_path):
    assert split_entry("en=data/x.jsonl") == ("en", "data/x.jsonl")
    assert split_entry("zh-Hans=x.csv") == ("zh-Hans", "x.csv")
    assert split_entry("data/x.jsonl") == (None, "data/x.jsonl")
    odd = tmp_path / "a=b.jsonl"
    odd.write_text("", encoding="utf-8")
    assert split_entry(str(odd)) == (None, str(odd))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "--batch-size must be an integer in 1..4096"),
        ({"batch_size": 5000}, "--batch-size"),
        ({"max_per_language": 0}, "--max-per-language"),
        ({"layer": -2}, "--layer must be an integer in -1..1024"),
        ({"dominant": " "}, "--dominant"),
        ({"batch_size": True}, "--batch-size"),
    ],
)
def test_settings_are_range_checked(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ProbeSettings(**kwargs)
