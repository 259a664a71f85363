"""The append-only cache of finished translations (`translations.jsonl`), shared by every caller.

A row is one translated text, keyed by `cache_key`: the translator's key (kind, model fingerprint,
settings, version), the source and target languages (by `Language.ident`, so `bn` and `ben` are one
language) and the text itself. A text met again (the same answer twice, a re-run, a resumed run
after a kill, an evaluation re-judged with another judge) is read back, not translated again; a torn
last line (a kill mid-write) is cut on the next read. Rows of other translators stay in the file,
unused, so switching back reuses them.

    {"key": "...", "translator": "<translator key>", "source": "bn", "target": "en",
     "original": "<the text>", "text": "<its translation>", "pieces": 3, "cut": 0}
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from safetune.errors import ConfigError
from safetune.storage import append_jsonl, hash_json, read_keyed_jsonl
from safetune.translation.base import TranslationRequest, Translator
from safetune.translation.languages import resolve

log = logging.getLogger(__name__)

TRANSLATIONS_FILE = "translations.jsonl"


def cache_key(translator_key: str, text: str, source: str, target: str) -> str:
    """What a translation depends on: the translator, the two languages and the text."""
    return hash_json([translator_key, resolve(source).ident, resolve(target).ident, text])[:24]


def read_cache(path: Path, translator_key: str, wanted: set[str] | None = None) -> dict[str, dict[str, Any]]:
    """The rows of one translator in a cache file by key (`wanted`: only these keys)."""
    return read_keyed_jsonl(
        path,
        "key",
        lambda row: (
            row.get("translator") == translator_key
            and isinstance(row.get("text"), str)
            and (wanted is None or row["key"] in wanted)
        ),
    )


def translate_cached(
    requests: Sequence[TranslationRequest],
    path: Path,
    translator: Translator,
    hook: Callable[[str, int], None] | None = None,
) -> tuple[dict[str, dict[str, Any]], int]:
    """A cache row for every request (by request id), translating only the texts not in `path` yet;
    each batch is appended as it is done. Returns (rows by request id, texts translated now)."""
    translator_key = translator.key()
    keys = {r.id: cache_key(translator_key, r.text, r.source, r.target) for r in requests}
    done = read_cache(path, translator_key, set(keys.values()))
    missing: dict[str, TranslationRequest] = {}
    for request in requests:
        key = keys[request.id]
        if key not in done and key not in missing:  # one translation per distinct text
            missing[key] = TranslationRequest(key, request.text, request.source, request.target)
    log.info("translations (%s): %d on disk, %d to translate", translator_key, len(done), len(missing))
    count = 0
    for batch in translator.translate(list(missing.values())) if missing else ():
        rows: list[dict[str, Any]] = []
        for result in batch:
            asked = missing[result.id]
            rows.append(
                {
                    "key": result.id,
                    "translator": translator_key,
                    "source": asked.source,
                    "target": asked.target,
                    "original": asked.text,
                    "text": result.text,
                    "pieces": result.pieces,
                    "cut": result.cut,
                }
            )
        append_jsonl(path, rows)
        done.update((row["key"], row) for row in rows)
        count += len(rows)
        if hook:
            hook("translate", count)
    lost = [rid for rid, key in keys.items() if key not in done]
    if lost:
        raise ConfigError(
            f"translator {translator_key} returned no translation for {len(lost)} texts (e.g. {lost[0]})"
        )
    return {rid: done[key] for rid, key in keys.items()}, count
