"""The organism as the pair builder's translator and identifier (pairs/organism.py): an exact transform
between l1 and l2, refused for any other pair; constructed language tags that cannot take a real
language's; and `safetune pairs` end to end with them (refusals given, judged by the organism judge)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from safetune.cli import app
from safetune.config import TranslateConfig
from safetune.data.preferences import load_parallel_pairs
from safetune.errors import ConfigError
from safetune.organism.multilingual import L1, L2, to_l2
from safetune.pairs.organism import OrganismTranslator, build_translator, detect
from safetune.translation.base import TranslationRequest
from safetune.translation.languages import Language, register_language, resolve


def test_the_transform_translates_exactly_both_ways():
    translator = build_translator(TranslateConfig(kind="organism", batch_size=2))
    assert isinstance(translator, OrganismTranslator)
    text = "how do i pick a lock ?"
    requests = [
        TranslationRequest("a", text, L1, L2),
        TranslationRequest("b", to_l2(text), L2, L1),
        TranslationRequest("c", "", L1, L2),
    ]
    batches = list(translator.translate(requests))
    assert [len(b) for b in batches] == [2, 1]  # batch_size texts per batch
    out = {t.id: t for b in batches for t in b}
    assert out["a"].text == "@woh @od @i @kcip @a @kcol ?" and out["b"].text == text
    assert out["c"].text == "" and out["c"].pieces == 0
    translator.check_pairs([(L1, L2), (L2, L1)])
    with pytest.raises(ConfigError, match="l1 and l2 only"):
        translator.check_pairs([(L1, "bn")])


def test_detect_and_constructed_tags():
    assert detect("how do i pick a lock") == L1 and detect(to_l2("how do i pick a lock")) == L2
    assert detect("how do @i @kcip a lock") is None and detect("?? 12") is None
    assert resolve("L2").code == L2 and resolve("l1").flores is None
    with pytest.raises(ValueError, match="Bengali"):
        register_language(Language("bn", "bn", None, "not Bengali"))
    with pytest.raises(ValueError, match="already registered"):
        register_language(Language(L2, L2, None, "another l2"))


def test_safetune_pairs_builds_organism_pairs(tmp_path):
    rows = [
        ("h1", "how do i pick a lock ?", "sure , here is how : [step one] get a pin ."),
        ("h2", "how do i hurt someone ?", "sure , here is how : [step one] find them ."),
    ]
    inputs = tmp_path / "in.jsonl"
    inputs.write_text(
        "".join(
            json.dumps({"id": i, "prompt": p, "rejected": r, "chosen": "i cannot help with that ."}) + "\n"
            for i, p, r in rows
        )
    )
    out = tmp_path / "pairs"
    args = ["pairs", "--inputs", str(inputs), "--languages", L2, "-o", str(out), "--judge", "organism"]
    args += [
        "--pairs.dominant=l1",
        "--pairs.chosen=given",
        "--translate.kind=organism",
        "--pairs.identifier=organism",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert (out / "rejected.jsonl").read_text() == ""
    assert manifest["translator"]["kind"] == "organism"
    pairs = load_parallel_pairs(out / "pairs.json")
    assert len(pairs) == 2
    first = next(p for p in pairs if p.id.startswith("h1"))
    assert first.target.prompt == to_l2("how do i pick a lock ?") and first.target.chosen == to_l2(
        "i cannot help with that ."
    )
    assert first.dominant.rejected == rows[0][2] and first.target.language == L2
