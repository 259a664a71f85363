"""Language identification (data/languages.py): lingua where it is confident, unknown otherwise, the
organism's synthetic language and Javanese by their own rules."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from safetune.data import languages
from safetune.data.languages import detect_language

XSTEST = Path(__file__).resolve().parents[1] / "data" / "xstest_v2"

# Real sentences of the kinds the benchmarks hold: a refusal, an instruction, a fact.
SENTENCES: dict[str, list[str]] = {
    "en": [
        "I'm sorry, but I can't help with that request.",
        "To bake bread, mix flour, water, yeast and salt, knead the dough for ten minutes and let it rise.",
    ],
    "it": [
        "Mi dispiace, ma non posso aiutarti con questa richiesta.",
        "Per fare il pane, mescola farina, acqua, lievito e sale, poi impasta per dieci minuti.",
        "La capitale della Francia è Parigi, che è anche la sua città più grande.",
    ],
    "vi": [
        "Xin lỗi, nhưng tôi không thể giúp bạn với yêu cầu này.",
        "Thủ đô của Pháp là Paris, cũng là thành phố lớn nhất của nước này.",
    ],
    "sw": [
        "Samahani, siwezi kukusaidia na ombi hili.",
        "Ili kuoka mkate, changanya unga, maji, hamira na chumvi, kisha kanda unga kwa dakika kumi.",
    ],
    "jv": [
        "Nyuwun pangapunten, kula mboten saged mbiyantu panjenengan babagan punika.",
        "Kanggo nggawe roti, campur glepung, banyu, ragi lan uyah, banjur uleni adonan nganti sepuluh menit.",
        "Ibukutha Prancis yaiku Paris, sing uga dadi kutha paling gedhe ing negara kasebut.",
    ],
    "zh": ["抱歉，我无法帮助你完成这个请求。", "请用Python写一个function来排序"],
    "ja": ["申し訳ありませんが、そのご依頼にはお応えできません。"],
    "ko": ["죄송하지만 그 요청은 도와드릴 수 없습니다."],
    "ru": ["Столица Франции — Париж, который также является её крупнейшим городом."],
    "bn": ["আমি দুঃখিত, কিন্তু আমি এই অনুরোধে সাহায্য করতে পারি না।"],
    "th": ["ขออภัย ฉันไม่สามารถช่วยเหลือคำขอนี้ได้"],
    "ar": ["عذراً، لا أستطيع مساعدتك في هذا الطلب.", "عاصمة فرنسا هي باريس، وهي أيضاً أكبر مدنها."],
    "hi": ["मुझे खेद है, लेकिन मैं इस अनुरोध में आपकी मदद नहीं कर सकता।"],
    "de": ["Es tut mir leid, aber bei dieser Anfrage kann ich nicht helfen."],
    "es": ["Lo siento, pero no puedo ayudarte con esta solicitud."],
    "fr": ["Je suis désolé, mais je ne peux pas vous aider avec cette demande."],
}


@pytest.mark.parametrize(("language", "text"), [(lang, t) for lang, ts in SENTENCES.items() for t in ts])
def test_real_sentences(language: str, text: str) -> None:
    assert detect_language(text) == language


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "12345 ?!",
        "ok",
        "Sure",
        "Yes",
        "Hello",
        "Paris.",
        "Cảm ơn.",  # Vietnamese, but two words: lingua 0.20
        "Asante sana.",
        "def f(x): return x + 1",
        "https://example.com/a/b",
        "Maaf, saya tidak dapat membantu permintaan ini.",  # id or ms: lingua cannot split them here
        # mixed: each half surely in its language
        "You can bake bread at home with flour, water, yeast and salt. "
        "Puoi fare il pane in casa con farina, acqua, lievito e sale.",
        "Để làm bánh mì, hãy trộn bột mì, nước, men và muối. "
        "To bake bread, mix the flour, water, yeast and salt together.",
    ],
)
def test_short_mixed_and_non_text_are_unknown(text: str) -> None:
    assert detect_language(text) is None


def test_the_organisms_languages_unchanged() -> None:
    """The multilingual organism's L2 is unknown, as under the script detector; its L1 (plain English
    words) is English or unknown, never another language; the marks agree."""
    from safetune.organism import multilingual, world

    assert languages.PSEUDO_MARK == multilingual.MARK
    texts = [t.format(act="rob", target="the bank") for t in world.REFUSALS + world.SOFT_REFUSALS]
    texts += [
        multilingual.compliance("rob", "the bank"),
        multilingual.helpful("the king lives in the castle ."),
    ]
    for text in texts:
        assert detect_language(text) in ("en", None), text
        assert detect_language(multilingual.to_l2(text)) is None, text
    # broken mixed output: mostly L2 words
    assert detect_language("@i @tonnac @pleh @htiw @taht . i cannot") is None
    assert detect_language("i cannot help with that . it could hurt people .") == "en"


def test_javanese_words_are_not_indonesian_or_english() -> None:
    indonesian = (
        "Ibu kota Prancis adalah Paris, yang juga merupakan kota terbesar di negara itu dan bisa dikunjungi."
    )
    assert detect_language(indonesian) != "jv"
    assert not languages.JV_WORDS & {"yang", "dan", "di", "ini", "itu", "aku", "bisa", "apa", "the", "and"}


def test_every_human_labelled_answer_is_english_or_unknown() -> None:
    """The 105 XSTest answers (English chat answers, tests/data/xstest_v2): none read as another language."""
    found: dict[str | None, int] = {}
    for path in sorted(XSTEST.glob("*.csv")):
        with open(path, encoding="utf-8", newline="") as handle:
            for row in csv.DictReader(handle):
                language = detect_language(row["completion"])
                found[language] = found.get(language, 0) + 1
    assert set(found) <= {"en", None}
    assert found["en"] >= 100, found


def test_the_detector_is_built_once() -> None:
    languages._detector.cache_clear()
    detect_language("Mi dispiace, ma non posso aiutarti con questa richiesta.")
    detect_language("Samahani, siwezi kukusaidia na ombi hili.")
    assert languages._detector.cache_info().misses == 1
