"""What a `--model` resolves to (see `models.loading.resolve_model`): the weights, the adapter, the
tokenizer and a content fingerprint. Kept apart from loading so that evaluation's records can name it
without pulling in torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class ModelSource:
    """A resolved `--model`: a hub id, a model folder, or a `safetune train` run folder.

    A LoRA run resolves to its base model plus the adapter folder; `tokenizer` is where the tokenizer
    (and its chat template) is read from; `fingerprint` is a content key for caches and provenance.
    """

    label: str  # what the user asked for (shown in reports)
    base: str  # hub id or folder of the (base) weights
    adapter: str | None = None  # LoRA adapter folder, applied on top of `base`
    tokenizer: str = ""  # hub id or folder; defaults to `base`
    revision: str | None = None
    fingerprint: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
