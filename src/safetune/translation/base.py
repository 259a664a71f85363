"""What every translator is: the request and result records, the protocol, and the shared loop that
splits texts into pieces, translates the pieces in batches and joins them back.

    TranslationRequest(id, text, source, target) -> Translator.translate -> Translation(id, text, ...)

`source` and `target` are language tags (translation/languages.py). A translator is built (and so
checked: its files, its kind, the language codes it needs) without loading its weights; `check_pairs`
says before any work whether it can translate every (source, target) pair asked for; the weights load
at the first `translate` call, so a caller can check first and translate after its own model is gone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from safetune import console
from safetune.config import TranslateConfig
from safetune.storage import hash_json
from safetune.translation import segments
from safetune.translation.languages import resolve


@dataclass(frozen=True)
class TranslationRequest:
    id: str
    text: str
    source: str  # language tag of `text`
    target: str  # language tag to translate into


@dataclass(frozen=True)
class Translation:
    id: str
    text: str
    pieces: int  # how many pieces the text was cut into (0: an empty text, returned as is)
    cut: int  # pieces whose translation ran out of max_new_tokens (possibly incomplete)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Bump when a change in a translator or in segments.py changes what a translation comes out as.
VERSION = "tr-1"


class TranslatorIdentity:
    """What every translator kind shares: its key (kind, version, model fingerprint and every setting
    that changes a translation), its provenance record, and the batched, split translation of requests
    (translate_texts) around the kind's own `_translate_pieces`. A kind sets `kind`, `model_id`,
    `config`, `fingerprint`, `num_beams`, `prompt` and `tokenizer`."""

    kind: str
    model_id: str
    config: TranslateConfig
    fingerprint: str
    num_beams: int
    prompt: str
    tokenizer: Any
    _model: Any

    def _translate_pieces(
        self, pieces: Sequence[str], source: str, target: str
    ) -> tuple[list[str], list[bool]]:
        raise NotImplementedError  # each kind translates one batch of pieces its own way

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def translate(self, requests: Sequence[TranslationRequest]) -> Iterator[list[Translation]]:
        c = self.config
        yield from translate_texts(
            requests, self._translate_pieces, self.count_tokens, c.max_input_tokens, c.split, c.batch_size
        )

    def release(self) -> None:
        self._model = None

    def settings(self) -> dict[str, Any]:
        c = self.config
        return {
            "num_beams": self.num_beams,
            "max_input_tokens": c.max_input_tokens,
            "max_new_tokens": c.max_new_tokens,
            "split": c.split,
            "prompt": self.prompt,
            "precision": c.precision,
        }

    def key(self) -> str:
        return f"{self.kind}@{VERSION}:{hash_json([self.fingerprint, self.settings()])[:16]}"

    def record(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "version": VERSION,
            "model": self.model_id,
            "revision": self.config.revision,
            "fingerprint": self.fingerprint,
            "settings": self.settings(),
            "key": self.key(),
        }


class Translator(Protocol):
    kind: str

    def key(self) -> str:
        """Identifies everything that changes a translation (kind, model fingerprint, settings, version);
        translations made under another key are not reused."""
        ...

    def record(self) -> dict[str, Any]:
        """For provenance: kind, model, fingerprint and the settings that change translations."""
        ...

    def check_pairs(self, pairs: Sequence[tuple[str, str]]) -> None:
        """ConfigError naming the first (source, target) pair the model cannot translate."""
        ...

    def translate(self, requests: Sequence[TranslationRequest]) -> Iterator[list[Translation]]:
        """Yield translations batch by batch, one per request (any order inside a batch)."""
        ...

    def release(self) -> None:
        """Drop the loaded weights (a later `translate` loads them again)."""
        ...


# (pieces, source, target) -> (translated pieces, which of them ran out of new tokens)
PieceFunction = Callable[[Sequence[str], str, str], tuple[list[str], list[bool]]]


def translate_texts(
    requests: Sequence[TranslationRequest],
    translate_pieces: PieceFunction,
    count_tokens: segments.TokenCounter,
    max_tokens: int,
    mode: str,
    chunk: int,
    progress: bool = True,
) -> Iterator[list[Translation]]:
    """The loop every translator shares: `chunk` requests at a time (so a killed run loses at most one
    chunk), each cut into pieces (translation/segments.py); the chunk's distinct pieces are translated
    per (source, target) pair, then joined back. Empty texts come back empty, untranslated."""
    with console.progress(total=len(requests), desc="translating", unit="text", enabled=progress) as bar:
        for start in range(0, len(requests), chunk):
            part = requests[start : start + chunk]
            cuts = [segments.split(r.text, max_tokens, count_tokens, mode) for r in part]
            done: dict[tuple[str, str, str], tuple[str, bool]] = {}
            wanted: dict[tuple[str, str], dict[str, None]] = {}  # pair -> its distinct pieces, in order
            for request, cut in zip(part, cuts, strict=True):
                wanted.setdefault((request.source, request.target), {}).update(dict.fromkeys(cut.pieces))
            for (source, target), distinct in wanted.items():
                pieces = list(distinct)
                texts, ran_out = translate_pieces(pieces, source, target) if pieces else ([], [])
                for piece, text, out in zip(pieces, texts, ran_out, strict=True):
                    done[(source, target, piece)] = (text, out)
            results = []
            for request, cut in zip(part, cuts, strict=True):
                found = [done[(request.source, request.target, p)] for p in cut.pieces]
                target = resolve(request.target).code
                text = segments.join(cut, [t for t, _ in found], target) if cut.pieces else request.text
                results.append(Translation(request.id, text, len(cut.pieces), sum(o for _, o in found)))
            bar.update(len(part))
            yield results
