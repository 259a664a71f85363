"""Language tags as users write them, and the codes each translation model wants.

A tag is an ISO 639-1 code (`bn`), an ISO 639-3 code (`ben`, or the individual language NLLB uses:
`swh`, `arb`, `zsm`), a BCP-47 tag with a script or region (`zh-Hant`, `zh-TW`, `pt-BR`: only the
Chinese script is kept, a region is ignored), or NLLB's FLORES-200 code itself (`ben_Beng`). Case
does not matter. `resolve` turns it into a `Language`; each model family then names it its own way:

    NLLB-200     FLORES-200 codes, e.g. ben_Beng, swh_Latn, zho_Hans (`Language.flores`)
    M2M100       `__bn__`: ISO 639-1 where the model has it, else ISO 639-3 (`__ast__`, `__ceb__`);
                 its Northern Sotho is `ns` (`m2m100_codes`)
    MADLAD-400   a `<2xx>` token before the source text naming the target: `<2bn>`, `<2sw>` (ISO 639-1,
                 else 639-3); the source language is not given (`madlad_token`)
    Marian       one model per language pair (opus-mt-SRC-TGT); a multi-target model takes a `>>xxx<<`
                 token (ISO 639-3, some models 639-1) before the source text (`marian_token`)
    chat models  the English name ("Bengali") in the translation prompt (`Language.name`)

The table covers every FLORES-200 language of NLLB that has an ISO 639-1 code, a few without one, and
M2M100's three languages NLLB lacks (Breton, Western Frisian: no FLORES code; Fulah: NLLB's Nigerian
Fulfulde); a tag outside it is a ConfigError naming it (never a guess).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from safetune.errors import ConfigError


@dataclass(frozen=True)
class Language:
    """One language: `code` (ISO 639-1, or 639-3 where it has no 639-1 code), `iso3` (ISO 639-3; the
    macrolanguage where there is one), `flores` (NLLB-200's code), `name` (English)."""

    code: str
    iso3: str
    flores: str | None  # None: not one of NLLB-200's languages
    name: str
    aliases: tuple[str, ...] = ()  # other ISO 639 codes that name it (NLLB's individual language, ...)

    @property
    def ident(self) -> str:
        """One name per language (cache keys, comparisons): the FLORES-200 code, else the code."""
        return self.flores or self.code


# (code, iso3, flores, name, aliases)
_TABLE: tuple[tuple[str, str, str | None, str, tuple[str, ...]], ...] = (
    ("af", "afr", "afr_Latn", "Afrikaans", ()),
    ("ak", "aka", "aka_Latn", "Akan", ()),
    ("am", "amh", "amh_Ethi", "Amharic", ()),
    ("ar", "ara", "arb_Arab", "Arabic", ("arb",)),
    ("as", "asm", "asm_Beng", "Assamese", ()),
    ("ay", "aym", "ayr_Latn", "Aymara", ("ayr",)),
    ("az", "aze", "azj_Latn", "Azerbaijani", ("azj",)),
    ("ba", "bak", "bak_Cyrl", "Bashkir", ()),
    ("be", "bel", "bel_Cyrl", "Belarusian", ()),
    ("bg", "bul", "bul_Cyrl", "Bulgarian", ()),
    ("bm", "bam", "bam_Latn", "Bambara", ()),
    ("bn", "ben", "ben_Beng", "Bengali", ()),
    ("br", "bre", None, "Breton", ()),
    ("bo", "bod", "bod_Tibt", "Tibetan", ("tib",)),
    ("bs", "bos", "bos_Latn", "Bosnian", ()),
    ("ca", "cat", "cat_Latn", "Catalan", ()),
    ("cs", "ces", "ces_Latn", "Czech", ("cze",)),
    ("cy", "cym", "cym_Latn", "Welsh", ("wel",)),
    ("da", "dan", "dan_Latn", "Danish", ()),
    ("de", "deu", "deu_Latn", "German", ("ger",)),
    ("dz", "dzo", "dzo_Tibt", "Dzongkha", ()),
    ("ee", "ewe", "ewe_Latn", "Ewe", ()),
    ("el", "ell", "ell_Grek", "Greek", ("gre",)),
    ("en", "eng", "eng_Latn", "English", ()),
    ("eo", "epo", "epo_Latn", "Esperanto", ()),
    ("es", "spa", "spa_Latn", "Spanish", ()),
    ("et", "est", "est_Latn", "Estonian", ("ekk",)),
    ("eu", "eus", "eus_Latn", "Basque", ("baq",)),
    ("fa", "fas", "pes_Arab", "Persian", ("pes", "per")),
    ("ff", "ful", "fuv_Latn", "Fulah", ("fuv",)),
    ("fi", "fin", "fin_Latn", "Finnish", ()),
    ("fj", "fij", "fij_Latn", "Fijian", ()),
    ("fo", "fao", "fao_Latn", "Faroese", ()),
    ("fr", "fra", "fra_Latn", "French", ("fre",)),
    ("fy", "fry", None, "Western Frisian", ()),
    ("ga", "gle", "gle_Latn", "Irish", ()),
    ("gd", "gla", "gla_Latn", "Scottish Gaelic", ()),
    ("gl", "glg", "glg_Latn", "Galician", ()),
    ("gn", "grn", "grn_Latn", "Guarani", ()),
    ("gu", "guj", "guj_Gujr", "Gujarati", ()),
    ("ha", "hau", "hau_Latn", "Hausa", ()),
    ("he", "heb", "heb_Hebr", "Hebrew", ("iw",)),
    ("hi", "hin", "hin_Deva", "Hindi", ()),
    ("hr", "hrv", "hrv_Latn", "Croatian", ()),
    ("ht", "hat", "hat_Latn", "Haitian Creole", ()),
    ("hu", "hun", "hun_Latn", "Hungarian", ()),
    ("hy", "hye", "hye_Armn", "Armenian", ("arm",)),
    ("id", "ind", "ind_Latn", "Indonesian", ("in",)),
    ("ig", "ibo", "ibo_Latn", "Igbo", ()),
    ("is", "isl", "isl_Latn", "Icelandic", ("ice",)),
    ("it", "ita", "ita_Latn", "Italian", ()),
    ("ja", "jpn", "jpn_Jpan", "Japanese", ()),
    ("jv", "jav", "jav_Latn", "Javanese", ()),
    ("ka", "kat", "kat_Geor", "Georgian", ("geo",)),
    ("kg", "kon", "kon_Latn", "Kongo", ()),
    ("ki", "kik", "kik_Latn", "Kikuyu", ()),
    ("kk", "kaz", "kaz_Cyrl", "Kazakh", ()),
    ("km", "khm", "khm_Khmr", "Khmer", ()),
    ("kn", "kan", "kan_Knda", "Kannada", ()),
    ("ko", "kor", "kor_Hang", "Korean", ()),
    ("ks", "kas", "kas_Arab", "Kashmiri", ()),
    ("ku", "kur", "kmr_Latn", "Kurdish (Kurmanji)", ("kmr",)),
    ("ky", "kir", "kir_Cyrl", "Kyrgyz", ()),
    ("lb", "ltz", "ltz_Latn", "Luxembourgish", ()),
    ("lg", "lug", "lug_Latn", "Ganda", ()),
    ("li", "lim", "lim_Latn", "Limburgish", ()),
    ("ln", "lin", "lin_Latn", "Lingala", ()),
    ("lo", "lao", "lao_Laoo", "Lao", ()),
    ("lt", "lit", "lit_Latn", "Lithuanian", ()),
    ("lv", "lav", "lvs_Latn", "Latvian", ("lvs",)),
    ("mg", "mlg", "plt_Latn", "Malagasy", ("plt",)),
    ("mi", "mri", "mri_Latn", "Maori", ("mao",)),
    ("mk", "mkd", "mkd_Cyrl", "Macedonian", ("mac",)),
    ("ml", "mal", "mal_Mlym", "Malayalam", ()),
    ("mn", "mon", "khk_Cyrl", "Mongolian", ("khk",)),
    ("mr", "mar", "mar_Deva", "Marathi", ()),
    ("ms", "msa", "zsm_Latn", "Malay", ("zsm", "may")),
    ("mt", "mlt", "mlt_Latn", "Maltese", ()),
    ("my", "mya", "mya_Mymr", "Burmese", ("bur",)),
    ("nb", "nob", "nob_Latn", "Norwegian Bokmål", ("no", "nor")),
    ("ne", "nep", "npi_Deva", "Nepali", ("npi",)),
    ("nl", "nld", "nld_Latn", "Dutch", ("dut",)),
    ("nn", "nno", "nno_Latn", "Norwegian Nynorsk", ()),
    ("ny", "nya", "nya_Latn", "Chichewa", ()),
    ("oc", "oci", "oci_Latn", "Occitan", ()),
    ("om", "orm", "gaz_Latn", "Oromo", ("gaz",)),
    ("or", "ori", "ory_Orya", "Odia", ("ory",)),
    ("pa", "pan", "pan_Guru", "Punjabi", ()),
    ("pl", "pol", "pol_Latn", "Polish", ()),
    ("ps", "pus", "pbt_Arab", "Pashto", ("pbt",)),
    ("pt", "por", "por_Latn", "Portuguese", ()),
    ("qu", "que", "quy_Latn", "Quechua", ("quy",)),
    ("rn", "run", "run_Latn", "Rundi", ()),
    ("ro", "ron", "ron_Latn", "Romanian", ("rum", "mo")),
    ("ru", "rus", "rus_Cyrl", "Russian", ()),
    ("rw", "kin", "kin_Latn", "Kinyarwanda", ()),
    ("sa", "san", "san_Deva", "Sanskrit", ()),
    ("sc", "srd", "srd_Latn", "Sardinian", ()),
    ("sd", "snd", "snd_Arab", "Sindhi", ()),
    ("sg", "sag", "sag_Latn", "Sango", ()),
    ("si", "sin", "sin_Sinh", "Sinhala", ()),
    ("sk", "slk", "slk_Latn", "Slovak", ("slo",)),
    ("sl", "slv", "slv_Latn", "Slovenian", ()),
    ("sm", "smo", "smo_Latn", "Samoan", ()),
    ("sn", "sna", "sna_Latn", "Shona", ()),
    ("so", "som", "som_Latn", "Somali", ()),
    ("sq", "sqi", "als_Latn", "Albanian", ("als", "alb")),
    ("sr", "srp", "srp_Cyrl", "Serbian", ()),
    ("ss", "ssw", "ssw_Latn", "Swati", ()),
    ("st", "sot", "sot_Latn", "Southern Sotho", ()),
    ("su", "sun", "sun_Latn", "Sundanese", ()),
    ("sv", "swe", "swe_Latn", "Swedish", ()),
    ("sw", "swa", "swh_Latn", "Swahili", ("swh",)),
    ("ta", "tam", "tam_Taml", "Tamil", ()),
    ("te", "tel", "tel_Telu", "Telugu", ()),
    ("tg", "tgk", "tgk_Cyrl", "Tajik", ()),
    ("th", "tha", "tha_Thai", "Thai", ()),
    ("ti", "tir", "tir_Ethi", "Tigrinya", ()),
    ("tk", "tuk", "tuk_Latn", "Turkmen", ()),
    ("tl", "tgl", "tgl_Latn", "Tagalog", ("fil",)),
    ("tn", "tsn", "tsn_Latn", "Tswana", ()),
    ("tr", "tur", "tur_Latn", "Turkish", ()),
    ("ts", "tso", "tso_Latn", "Tsonga", ()),
    ("tt", "tat", "tat_Cyrl", "Tatar", ()),
    ("tw", "twi", "twi_Latn", "Twi", ()),
    ("ug", "uig", "uig_Arab", "Uyghur", ()),
    ("uk", "ukr", "ukr_Cyrl", "Ukrainian", ()),
    ("ur", "urd", "urd_Arab", "Urdu", ()),
    ("uz", "uzb", "uzn_Latn", "Uzbek", ("uzn",)),
    ("vi", "vie", "vie_Latn", "Vietnamese", ()),
    ("wo", "wol", "wol_Latn", "Wolof", ()),
    ("xh", "xho", "xho_Latn", "Xhosa", ()),
    ("yi", "yid", "ydd_Hebr", "Yiddish", ("ydd", "ji")),
    ("yo", "yor", "yor_Latn", "Yoruba", ()),
    ("zh", "zho", "zho_Hans", "Chinese (Simplified)", ("cmn", "chi")),
    ("zu", "zul", "zul_Latn", "Zulu", ()),
    # without an ISO 639-1 code
    ("ast", "ast", "ast_Latn", "Asturian", ()),
    ("ceb", "ceb", "ceb_Latn", "Cebuano", ()),
    ("ckb", "ckb", "ckb_Arab", "Central Kurdish", ()),
    ("ilo", "ilo", "ilo_Latn", "Ilocano", ()),
    ("nso", "nso", "nso_Latn", "Northern Sotho", ("ns",)),
    ("war", "war", "war_Latn", "Waray", ()),
    ("yue", "yue", "yue_Hant", "Cantonese", ()),
)

LANGUAGES: dict[str, Language] = {
    code: Language(code, iso3, flores, name, aliases) for code, iso3, flores, name, aliases in _TABLE
}
# Traditional Chinese: its own FLORES code; `zh-Hant`, `zh-TW`, `zh-HK`, `zh-MO` and `zho_Hant` name it.
ZH_HANT = Language("zh-Hant", "zho", "zho_Hant", "Chinese (Traditional)")
_TRADITIONAL = {"hant", "tw", "hk", "mo"}

_BY_TAG: dict[str, Language] = {}
for _lang in LANGUAGES.values():
    for _tag in (_lang.code, _lang.iso3, *_lang.aliases):
        _BY_TAG.setdefault(_tag.lower(), _lang)
_BY_FLORES = {lang.flores.lower(): lang for lang in (*LANGUAGES.values(), ZH_HANT) if lang.flores}
_TAG = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*")


# Constructed languages (register_language): tag -> language. Empty unless a caller registers one.
_CONSTRUCTED: dict[str, Language] = {}


def register_language(language: Language) -> None:
    """Make a constructed language's tags resolve (the multilingual model organism's L1 and L2: the pair
    builder's organism translator registers them). It has no FLORES code, so no translator model takes
    it; a tag of a real language cannot be taken over."""
    for tag in (language.code, language.iso3, *language.aliases):
        key = tag.strip().lower()
        taken = _BY_TAG.get(key) or _BY_FLORES.get(key)
        if taken is not None:
            raise ValueError(f"language tag {tag!r} is {taken.name}'s; a constructed language needs its own")
        if _CONSTRUCTED.get(key, language) != language:
            raise ValueError(f"language tag {tag!r} is already registered as {_CONSTRUCTED[key].name}")
        _CONSTRUCTED[key] = language


def resolve(tag: str) -> Language:
    """The language a tag names (see the module docstring); ConfigError for a tag outside the table."""
    text = tag.strip()
    if text.lower() in _CONSTRUCTED:
        return _CONSTRUCTED[text.lower()]
    if text.lower() in _BY_FLORES:
        return _BY_FLORES[text.lower()]
    if not _TAG.fullmatch(text):
        raise ConfigError(f"language {tag!r}: not a language tag (ISO 639-1/3 like 'bn', 'swh', 'zh-Hant')")
    primary, *rest = re.split(r"[-_]", text.lower())
    language = _BY_TAG.get(primary)
    if language is None:
        raise ConfigError(
            f"language {tag!r}: not a language safetune's translators know (ISO 639-1 or 639-3 codes "
            "of the FLORES-200 languages, see safetune/translation/languages.py)"
        )
    if language.code == "zh" and _TRADITIONAL & set(rest):
        return ZH_HANT
    return language


def same_language(a: str, b: str) -> bool:
    """Whether two tags name the same language (`en`, `eng`, `en-US`, `eng_Latn` do)."""
    try:
        return resolve(a).ident == resolve(b).ident
    except ConfigError:
        return a.strip().lower() == b.strip().lower()


def nllb_code(language: Language, vocabulary: Iterable[str] | None = None) -> str | None:
    """NLLB-200's FLORES-200 code, or None when the language has none or `vocabulary` (the
    tokenizer's) does not have it."""
    if language.flores is None:
        return None
    if vocabulary is None or language.flores in set(vocabulary):
        return language.flores
    return None


def m2m100_codes(language: Language) -> tuple[str, ...]:
    """M2M100's codes for a language, most likely first: ISO 639-1, then 639-3 and the aliases (its
    tokenizer names Northern Sotho `ns`; Traditional Chinese is its `zh`)."""
    code = "zh" if language is ZH_HANT else language.code
    return tuple(dict.fromkeys((code, language.iso3, *language.aliases)))


def m2m100_code(language: Language, vocabulary: Iterable[str]) -> str | None:
    """The bare code whose `__xx__` token the tokenizer has (its `src_lang`), or None."""
    tokens = set(vocabulary)
    return next((c for c in m2m100_codes(language) if f"__{c}__" in tokens), None)


def madlad_token(language: Language, vocabulary: Iterable[str]) -> str | None:
    """MADLAD-400's target token (`<2bn>`) that the tokenizer has, or None. Traditional Chinese tries
    `<2zh_Hant>` first."""
    tokens = set(vocabulary)
    codes = ("zh_Hant", "zh") if language is ZH_HANT else (language.code, language.iso3, *language.aliases)
    return next((f"<2{c}>" for c in codes if f"<2{c}>" in tokens), None)


def marian_token(language: Language, supported: Iterable[str]) -> str | None:
    """A multi-target Marian model's `>>xxx<<` token for the language (its 639-3 code, the FLORES code's
    language part, or 639-1), or None."""
    tokens = set(supported)
    codes = (language.iso3, language.code, *language.aliases)
    if language is ZH_HANT:
        codes = ("cmn_Hant", "zho_Hant", *codes)
    return next((f">>{c}<<" for c in codes if f">>{c}<<" in tokens), None)


def marian_covers(language: Language, side: str) -> bool:
    """Whether one side of an opus-mt name (`zh`, `zho`, `mul`, `ROMANCE`, `zle`, `en+fr`) includes a
    language. A part that names no language of the table is a group (`mul`, `ROMANCE`, the ISO 639-5
    `zle`, `sla`, ...) and is taken to cover it: only a side made of single languages is checked (a
    multi-target model's `>>xxx<<` tokens are checked apart)."""
    parts = [p for p in re.split(r"[+_]", side) if p]
    names = {language.code, language.iso3, *language.aliases}
    return any(p.lower() in names or p.isupper() or p.lower() not in _BY_TAG for p in parts)
