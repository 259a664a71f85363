"""safetune/translation: language codes against the tokenizers' own lists, splitting and rejoining,
the cache key, the --translator option, family detection, and the translators on tiny models."""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import transformers

from safetune.config import TranslateConfig, load_config
from safetune.errors import ConfigError, DataError
from safetune.evaluation.benchmark_files import LANGUAGE_CODES
from safetune.translation import segments
from safetune.translation.base import TranslationRequest
from safetune.translation.cache import cache_key, translate_cached
from safetune.translation.languages import (
    LANGUAGES,
    ZH_HANT,
    m2m100_code,
    madlad_token,
    marian_covers,
    marian_token,
    nllb_code,
    resolve,
    same_language,
)
from safetune.translation.registry import TRANSLATORS, build_translator, parse_translator
from safetune.translation.seq2seq import detect_family, marian_pair


def _fairseq_codes(module: str) -> Any:
    """A tokenizer module's FAIRSEQ_LANGUAGE_CODES, read from transformers' source (importing the M2M100
    module needs sentencepiece, which safetune does not)."""
    path = Path(transformers.__file__).parent / "models" / module
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "FAIRSEQ_LANGUAGE_CODES":
            return ast.literal_eval(node.value)
    raise AssertionError(f"no FAIRSEQ_LANGUAGE_CODES in {path}")


NLLB_CODES: list[str] = _fairseq_codes("nllb/tokenization_nllb.py")
M2M100_CODES: dict[str, list[str]] = _fairseq_codes("m2m_100/tokenization_m2m_100.py")
M2M100_VOCAB = {f"__{code}__" for code in M2M100_CODES["m2m100"]}

# ---- language codes ----


@pytest.mark.parametrize(
    ("tag", "flores"),
    [
        ("bn", "ben_Beng"),
        ("sw", "swh_Latn"),
        ("swh", "swh_Latn"),
        ("swa", "swh_Latn"),
        ("zh", "zho_Hans"),
        ("zh-CN", "zho_Hans"),
        ("zh-Hant", "zho_Hant"),
        ("zh_TW", "zho_Hant"),
        ("ZHO_HANT", "zho_Hant"),
        ("ben_Beng", "ben_Beng"),
        ("EN-us", "eng_Latn"),
        ("ar", "arb_Arab"),
        ("fa", "pes_Arab"),
        ("ms", "zsm_Latn"),
        ("fil", "tgl_Latn"),
        ("no", "nob_Latn"),
        ("jv", "jav_Latn"),
    ],
)
def test_tags_resolve_to_nllb_codes(tag, flores):
    assert resolve(tag).flores == flores


def test_every_table_code_is_an_nllb_language_token():
    codes = [lang.flores for lang in (*LANGUAGES.values(), ZH_HANT) if lang.flores is not None]
    assert set(codes) - set(NLLB_CODES) == set()
    assert len(set(codes)) == len(codes)  # one entry per language
    assert [lang.code for lang in LANGUAGES.values() if lang.flores is None] == ["br", "fy"]


def test_every_benchmark_language_maps_for_nllb_and_m2m100():
    for tag in LANGUAGE_CODES:
        language = resolve(tag)
        assert nllb_code(language, NLLB_CODES) == language.flores
        assert m2m100_code(language, M2M100_VOCAB) == tag  # M2M100 uses the ISO 639-1 code itself


def test_every_m2m100_language_is_reachable():
    reached = {m2m100_code(lang, M2M100_VOCAB) for lang in LANGUAGES.values()}
    assert set(M2M100_CODES["m2m100"]) - reached == set()
    assert m2m100_code(resolve("nso"), M2M100_VOCAB) == "ns"  # M2M100's own name for Northern Sotho
    assert m2m100_code(resolve("ast"), M2M100_VOCAB) == "ast"  # no ISO 639-1 code
    assert m2m100_code(resolve("zh-Hant"), M2M100_VOCAB) == "zh"
    assert m2m100_code(resolve("yue"), M2M100_VOCAB) is None


def test_madlad_and_marian_tokens():
    vocab = {"<2en>", "<2bn>", "<2sw>", "<2zh>", "<2ceb>"}
    assert madlad_token(resolve("swh"), vocab) == "<2sw>"
    assert madlad_token(resolve("ceb"), vocab) == "<2ceb>"
    assert madlad_token(resolve("zh-TW"), vocab) == "<2zh>"
    assert madlad_token(resolve("th"), vocab) is None
    assert marian_token(resolve("fr"), [">>fra<<", ">>deu<<"]) == ">>fra<<"
    assert marian_token(resolve("sw"), [">>swh<<"]) == ">>swh<<"
    assert marian_token(resolve("es"), [">>es<<", ">>fr<<"]) == ">>es<<"
    assert marian_token(resolve("bn"), [">>fra<<"]) is None
    assert marian_covers(resolve("zh"), "zh") and marian_covers(resolve("bn"), "mul")
    assert marian_covers(resolve("fr"), "ROMANCE") and not marian_covers(resolve("bn"), "zh")
    assert marian_covers(resolve("en"), "eng")
    assert marian_covers(resolve("ru"), "zle") and not marian_covers(resolve("ru"), "de+fr")


@pytest.mark.parametrize("tag", ["qq", "english", "", "b"])
def test_unknown_tags_are_refused(tag):
    with pytest.raises(ConfigError, match="language"):
        resolve(tag)


def test_same_language():
    assert same_language("en", "eng_Latn") and same_language("en-US", "eng")
    assert not same_language("zh", "zh-Hant") and not same_language("en", "bn")


# ---- splitting and rejoining ----


def _words(text: str) -> int:
    return len(text.split())


def test_sentences_end_at_each_script_punctuation():
    assert segments.sentences("One two. Three? Four! five") == ["One two.", "Three?", "Four!", "five"]
    assert segments.sentences("3.5 is a number. Yes") == ["3.5 is a number.", "Yes"]  # no space after 3.
    assert segments.sentences("প্রথম বাক্য। দ্বিতীয় বাক্য।") == ["প্রথম বাক্য।", "দ্বিতীয় বাক্য।"]
    assert segments.sentences("第一句。第二句！第三句") == ["第一句。", "第二句！", "第三句"]
    assert segments.sentences('He said "stop." Then left.') == ['He said "stop."', "Then left."]


def test_fit_cuts_at_spaces_then_characters():
    assert segments.fit("a b c d e f g", 3, _words) == ["a b c", "d e f", "g"]
    assert segments.fit("abcdefgh", 3, len) == ["abc", "def", "gh"]  # no space: at characters
    assert segments.fit("short", 3, _words) == ["short"]


def test_split_and_join_keep_the_layout():
    text = "First one. Second one.\n\n  - an item here\nlast"
    cut = segments.split(text, 50, _words)
    assert cut.pieces == ("First one.", "Second one.", "- an item here", "last")
    assert segments.join(cut, list(cut.pieces), "en") == text
    upper = segments.join(cut, [p.upper() for p in cut.pieces], "en")
    assert upper == "FIRST ONE. SECOND ONE.\n\n  - AN ITEM HERE\nLAST"
    assert segments.join(cut, ["甲。", "乙。", "丙", "丁"], "zh") == "甲。乙。\n\n  丙\n丁"  # no spaces
    lines = segments.split(text, 50, _words, mode="line")
    assert lines.pieces == ("First one. Second one.", "- an item here", "last")
    assert segments.split("", 5, _words).pieces == ()
    long = segments.split("w " * 7, 3, _words)
    assert long.pieces == ("w w w", "w w w", "w")
    with pytest.raises(ValueError):
        segments.join(cut, ["x"], "en")


# ---- cache key, the option, the config ----


def test_cache_key_depends_on_translator_languages_and_text():
    base = cache_key("nllb@1:a", "text", "bn", "en")
    assert cache_key("nllb@1:a", "text", "ben", "eng_Latn") == base  # the same languages
    for other in (
        cache_key("nllb@1:b", "text", "bn", "en"),
        cache_key("nllb@1:a", "text ", "bn", "en"),
        cache_key("nllb@1:a", "text", "as", "en"),
        cache_key("nllb@1:a", "text", "bn", "fr"),
    ):
        assert other != base


def test_parse_translator():
    assert parse_translator("facebook/nllb-200-distilled-600M") == (None, "facebook/nllb-200-distilled-600M")
    assert parse_translator("chat:Qwen/Qwen2.5-7B-Instruct") == ("chat", "Qwen/Qwen2.5-7B-Instruct")
    assert parse_translator("NLLB:/models/x") == ("nllb", "/models/x")
    assert parse_translator("weird:folder") == (None, "weird:folder")  # not a kind: the whole name
    assert set(TRANSLATORS) == {"nllb", "m2m100", "madlad", "marian", "seq2seq", "chat"}


def test_config_checks():
    with pytest.raises(ConfigError, match=r"needs eval\.translate_to"):
        load_config(None, ["eval.judge_on=both"])
    with pytest.raises(ConfigError, match=r"translate\.max_input_tokens"):
        load_config(None, ["translate.max_input_tokens=4"])
    with pytest.raises(ConfigError, match=r"translate\.num_beams"):
        load_config(None, ["translate.num_beams=0"])
    with pytest.raises(ConfigError, match="unknown placeholder"):
        TranslateConfig(prompt="Translate {lang}: {text}")
    with pytest.raises(ConfigError, match="must contain"):
        TranslateConfig(prompt="Translate {source}")
    assert load_config(None, ["eval.translate_to=en"]).eval.resolved_judge_on == "translated"
    assert load_config(None, []).eval.resolved_judge_on == "original"


def test_family_detection():
    def tokenizer(*tokens: str) -> SimpleNamespace:
        return SimpleNamespace(get_vocab=lambda: dict.fromkeys(tokens, 0))

    t5 = SimpleNamespace(model_type="t5")
    assert detect_family(SimpleNamespace(model_type="m2m_100"), tokenizer("eng_Latn", "a")) == "nllb"
    assert detect_family(SimpleNamespace(model_type="m2m_100"), tokenizer("__en__")) == "m2m100"
    assert detect_family(t5, tokenizer("<2en>")) == "madlad"
    assert detect_family(SimpleNamespace(model_type="marian"), tokenizer(">>fra<<")) == "marian"
    assert detect_family(t5, tokenizer("a")) == "seq2seq"
    named = SimpleNamespace(source_lang=None, target_lang=None)
    assert marian_pair("Helsinki-NLP/opus-mt-zh-en", named) == ("zh", "en")
    assert marian_pair("/m/opus-mt-tc-big-en-ROMANCE/", named) == ("en", "ROMANCE")
    assert marian_pair("x", SimpleNamespace(source_lang="bn", target_lang="en")) == ("bn", "en")


# ---- the translators on tiny models ----


def test_nllb_translator_gives_src_code_and_forces_the_target(tiny_nllb, tmp_path):
    translator = build_translator(TranslateConfig(model=str(tiny_nllb), max_new_tokens=4, batch_size=2))
    assert translator.kind == "nllb"
    model = translator._load()  # watch what the model is given
    seen: list[tuple[list[int], int | None]] = []
    generate = model.generate

    def spy(**kwargs):
        seen.append((kwargs["input_ids"][:, 0].tolist(), kwargs["generation_config"].forced_bos_token_id))
        return generate(**kwargs)

    model.generate = spy
    requests = [
        TranslationRequest("a", "the cat sees. the dog reads.", "bn", "en"),
        TranslationRequest("b", "the cat sees.", "sw", "en"),
    ]
    rows, count = translate_cached(requests, tmp_path / "t.jsonl", translator)
    ids = translator.tokenizer.convert_tokens_to_ids
    assert count == 2 and rows["a"]["pieces"] == 2 and rows["b"]["pieces"] == 1
    # the Bengali pieces start with ben_Beng, the Swahili one with swh_Latn; English forced first
    # "the cat sees." twice: once per language pair (a piece is translated once per pair)
    assert sorted(token for first, _ in seen for token in first) == sorted(
        [ids("ben_Beng"), ids("ben_Beng"), ids("swh_Latn")]
    )
    assert {forced for _, forced in seen} == {ids("eng_Latn")}
    again, count = translate_cached(requests, tmp_path / "t.jsonl", translator)
    assert count == 0 and again == rows
    with pytest.raises(ConfigError, match="no language token zzz_Latn"):
        translator._codes(resolve("bn"), _fake())  # a language its tokenizer lacks


def _fake():
    from safetune.translation.languages import Language

    return Language("zz", "zzz", "zzz_Latn", "Nowhere")


def test_wrong_kind_is_refused(tiny_nllb, tiny_chatml):
    with pytest.raises(ConfigError, match="looks like a nllb model"):
        build_translator(TranslateConfig(model=str(tiny_nllb), kind="m2m100"))
    with pytest.raises(ConfigError, match="encoder-decoder"):
        build_translator(TranslateConfig(model=str(tiny_nllb), kind="chat"))
    with pytest.raises(ConfigError, match="not an encoder-decoder"):
        build_translator(TranslateConfig(model=str(tiny_chatml), kind="nllb"))
    with pytest.raises(ConfigError, match=r"unknown translate\.kind"):
        build_translator(TranslateConfig(model=str(tiny_chatml), kind="google"))
    with pytest.raises(ConfigError, match="not found"):
        build_translator(TranslateConfig(model=str(Path("/nowhere/model"))))


def test_chat_translator_asks_in_the_model_template(tiny_chatml, tmp_path):
    translator = build_translator(TranslateConfig(model=str(tiny_chatml), max_new_tokens=3))
    assert translator.kind == "chat" and translator.num_beams == 1
    text = translator.renderer.prompt_text(
        translator.prompt.format(source="Swahili", target="English", text="x")
    )
    assert text.startswith("<|im_start|>user\nTranslate the following Swahili text into English.")
    rows, count = translate_cached(
        [TranslationRequest("a", "Habari. Asante.", "sw", "en")], tmp_path / "t.jsonl", translator
    )
    assert count == 1 and rows["a"]["pieces"] == 2 and isinstance(rows["a"]["text"], str)
    other = build_translator(TranslateConfig(model=str(tiny_chatml), prompt="To {target}: {text}"))
    assert other.key() != translator.key()


# ---- results.json ----


def test_results_keep_the_translated_and_original_verdicts():
    from safetune.evaluation.results import Results

    group = {"n": 2, "n_valid": 2, "n_invalid": 0, "n_uncovered": 0, "value": 50.0, "asr": 50.0, "ci95": None}
    bench = {
        "name": "multijail",
        "version": "1",
        "kind": "harmful",
        "metric": "refusal_rate",
        "group": "multilingual",
        "source": None,
        **group,
        "judged_on": "translated",
        "n_translated": 1,
        "by_role": {},
        "by_language": {"bn": group},
        "secondary": {"judged_on": "original", **{**group, "value": 0.0, "asr": 100.0}, "by_language": {}},
    }
    data = {
        "schema_version": 1,
        "provenance": {"counts": {"requests": 2}, "translation": {"to": "en", "judge_on": "both"}},
        "benchmarks": {"multijail": bench},
        "summary": {},
    }
    results = Results.from_dict(data)
    typed = results.benchmarks["multijail"]
    assert typed.judged_on == "translated" and typed.n_translated == 1
    assert (
        typed.secondary is not None
        and typed.secondary.value == 0.0
        and typed.secondary.judged_on == "original"
    )
    assert results.provenance.translation == {"to": "en", "judge_on": "both"}
    again = results.to_dict()
    assert again["benchmarks"]["multijail"] == bench
    assert again["provenance"]["translation"] == {"to": "en", "judge_on": "both"}
    plain = Results.from_dict({**data, "provenance": {}, "benchmarks": {}}).to_dict()
    assert "translation" not in plain["provenance"]  # files without translation keep their layout
    with pytest.raises(DataError, match=r"secondary\.value"):
        Results.from_dict(
            {**data, "benchmarks": {"multijail": {**bench, "secondary": {"n": 1, "value": "x"}}}}
        )


def test_list_shows_the_translator_kinds():
    from typer.testing import CliRunner

    from safetune.cli import app

    result = CliRunner().invoke(app, ["list"])
    assert result.exit_code == 0
    shown = result.output.split("translators", 1)[1]
    for kind in TRANSLATORS.values():
        assert kind.name in shown and kind.example in shown
