"""The models behind a defence's streams, behind one small interface (`StreamModels`).

Three layouts, one class: each *part* is a model object with its own KV cache that computes the rows of
some stream kinds ("role", "expert").

    (a) one model computes every stream (ROSE, Self-CD: a base model, or a LoRA run merged);
    (b) one peft model holding two adapters computes both kinds in one mixed batch: each row's
        `adapter_names` entry picks its adapter ("__base__" = none), so the role row is base + role
        adapter (or the base alone) and the expert row base + expert adapter (SafeDecoding);
    (c) two model objects, each with its own cache: a fully fine-tuned role model, and the base with
        the expert merged (SafeDecoding on a full fine-tune).

`load_defended` picks the layout from what `--model` resolves to and the defence.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from safetune.decoding.registry import Defence, StreamModel
from safetune.errors import ConfigError
from safetune.models.loading import (
    check_model_folder,
    default_device,
    load_causal_lm,
    load_for_generation,
    load_tokenizer,
    resolve_model,
)
from safetune.models.source import ModelSource

log = logging.getLogger(__name__)

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed-adapter batch


def length_groups(lengths: Sequence[int]) -> list[list[int]]:
    """Row indices grouped for the prefill: longest first, a new group where a row is shorter than 3/4
    of its group's longest (so padding is under a quarter of a group), indices ascending in each.

    A prefill's cost grows with rows x width; one more group costs one more forward call, which is
    small beside a prompt's worth of tokens (ROSE's reverse rows run about 56 tokens shorter than its
    positive ones on a 300-token Llama-2 prompt, Self-CD's without rows a fifth of its with rows).
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    groups: list[list[int]] = []
    head = 0
    for i in order:
        if not groups or 4 * lengths[i] < 3 * head:
            groups.append([])
            head = lengths[i]
        groups[-1].append(i)
    return [sorted(group) for group in groups]


@dataclass
class Part:
    """A model object, the stream kinds it computes, and per kind the adapter a row runs through (None:
    the model as it is, no adapter_names given)."""

    model: Any
    kinds: tuple[StreamModel, ...]
    adapters: dict[str, str] | None = None
    cache: Any = field(default=None, repr=False)
    rows: Tensor | None = field(default=None, repr=False)  # this part's global row indices, in cache order


class StreamModels:
    """Computes the last-position logits of batched stream rows, each through its kind's model, with one
    KV cache per model object (`prefill`, `step`, `keep`), or a whole prefix without a cache
    (`full_logits`, for the naive reference loop)."""

    def __init__(self, parts: list[Part]):
        kinds = [kind for part in parts for kind in part.kinds]
        if len(kinds) != len(set(kinds)):
            raise ValueError(f"a stream kind is computed by two models: {kinds}")
        self.parts = parts
        self._part_of: dict[str, Part] = {kind: part for part in parts for kind in part.kinds}

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self._part_of)

    @property
    def device(self) -> torch.device:
        return next(self.parts[0].model.parameters()).device

    def check(self, defence: Defence) -> None:
        missing = [kind for kind in defence.kinds if kind not in self._part_of]
        if missing:
            raise ConfigError(f"defence {defence.name} needs a {missing[0]} model, and none was loaded")

    def _forward(self, part: Part, kinds: list[str], cache: Any, **inputs: Any) -> Tensor:
        extra = {} if part.adapters is None else {"adapter_names": [part.adapters[k] for k in kinds]}
        output = part.model(**inputs, cache=cache, use_cache=cache is not None, logits_to_keep=1, **extra)
        # Raw logits in fp32, before any processor: the rules combine these.
        return output.logits[:, -1].float()

    def _run(self, kinds: list[str], inputs: dict[str, Tensor], fresh: bool) -> Tensor:
        if fresh:
            for part in self.parts:
                rows = [i for i, kind in enumerate(kinds) if kind in part.kinds]
                part.rows = torch.tensor(rows, dtype=torch.long, device=self.device)
                part.cache = None
        logits: Tensor | None = None
        for part in self.parts:
            assert part.rows is not None
            if not len(part.rows):
                continue
            every = len(part.rows) == len(kinds)  # every row: no gather, no scatter
            taken = inputs if every else {k: v.index_select(0, part.rows) for k, v in inputs.items()}
            part_kinds = kinds if every else [kinds[i] for i in part.rows.tolist()]
            if fresh:
                found = self._prefill_part(part, part_kinds, taken)
            else:
                found = self._forward(part, part_kinds, part.cache, **taken)
            if every:
                return found
            if logits is None:
                logits = found.new_empty(len(kinds), found.shape[-1])
            logits[part.rows] = found
        assert logits is not None
        return logits

    def _prefill_part(self, part: Part, kinds: list[str], inputs: dict[str, Tensor]) -> Tensor:
        """A fresh cache for a part's rows, and their last-position logits.

        Rows of very different lengths (Self-CD's "with" rows carry a system prompt, its "without" rows
        none) are prefilled in groups of similar length, each padded only to its own longest row, and
        the groups' caches are then joined, left-padded with masked zeros to the batch's width: one
        batch padded to the longest row would spend most of the short rows' prefill on padding.
        """
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        mask = inputs["attention_mask"]
        groups = length_groups(mask.sum(-1).tolist())
        if len(groups) == 1:
            part.cache = DynamicCache(config=part.model.config)
            return self._forward(part, kinds, part.cache, **inputs)
        width = mask.shape[-1]
        caches, found = [], []
        for group in groups:
            index = torch.tensor(group, dtype=torch.long, device=mask.device)
            own = int(mask[index].sum(-1).max())  # the group's longest row: its rows end at `width`
            taken = {k: v.index_select(0, index)[:, width - own :] for k, v in inputs.items()}
            cache = DynamicCache(config=part.model.config)
            found.append(self._forward(part, [kinds[i] for i in group], cache, **taken))
            caches.append(cache)
        if not all(type(layer) is DynamicLayer for cache in caches for layer in cache.layers):
            # A sliding-window or other layer keeps its own bookkeeping: one padded batch instead.
            part.cache = DynamicCache(config=part.model.config)
            return self._forward(part, kinds, part.cache, **inputs)
        order = torch.tensor([i for group in groups for i in group], dtype=torch.long, device=mask.device)
        back = torch.empty_like(order)
        back[order] = torch.arange(len(order), device=mask.device)  # group order -> row order
        for layers in zip(*(cache.layers for cache in caches), strict=True):
            for name in ("keys", "values"):
                states = [getattr(layer, name) for layer in layers]
                padded = [F.pad(s, (0, 0, width - s.shape[-2], 0)) for s in states]
                setattr(layers[0], name, torch.cat(padded).index_select(0, back))
        part.cache = caches[0]
        return torch.cat(found).index_select(0, back)

    def prefill(
        self, kinds: Sequence[str], input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor
    ) -> Tensor:
        """Fresh caches for these rows (row i computed by kind `kinds[i]`); their last-position logits."""
        self._kinds = list(kinds)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        return self._run(self._kinds, inputs, fresh=True)

    def step(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor) -> Tensor:
        """One new token per row (input_ids [N, 1]; the mask covers the cache and the new token)."""
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        return self._run(self._kinds, inputs, fresh=False)

    def keep(self, rows: Tensor) -> None:
        """Keep these rows (global indices, ascending), in every cache; the rest are gone for good."""
        mapping = torch.full((len(self._kinds),), -1, dtype=torch.long, device=rows.device)
        mapping[rows] = torch.arange(len(rows), device=rows.device)
        for part in self.parts:
            assert part.rows is not None
            if not len(part.rows):
                continue
            new_index = mapping[part.rows]
            kept = (new_index >= 0).nonzero().flatten()
            if len(kept) != len(part.rows) and part.cache is not None:
                part.cache.batch_select_indices(kept)
            part.rows = new_index[kept]
        self._kinds = [self._kinds[i] for i in rows.tolist()]

    @torch.inference_mode()
    def full_logits(self, kind: str, ids: list[int]) -> Tensor:
        """The last-position logits [V] of one whole prefix through `kind`'s model, no cache."""
        part = self._part_of[kind]
        input_ids = torch.tensor([ids], device=self.device)
        mask = torch.ones_like(input_ids)
        return self._forward(part, [kind], None, input_ids=input_ids, attention_mask=mask)[0]


# ---- loading ----


def expert_source(expert: str) -> ModelSource:
    """The safety expert a `defence.expert` names: a LoRA adapter folder, or a run folder holding one."""
    source = resolve_model(expert)
    if not source.adapter:
        raise ConfigError(f"defence.expert {expert!r} is not a LoRA adapter (no adapter_config.json)")
    return source


def _same_model(a: str, b: str) -> bool:
    return a == b or (Path(a).is_dir() and Path(b).is_dir() and Path(a).resolve() == Path(b).resolve())


def load_defended(
    source: ModelSource,
    defence: Defence,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
) -> tuple[StreamModels, Any]:
    """(models, tokenizer) for a defence on `source` (a hub id, model folder, LoRA or full run folder).

    Without an expert: layout (a), LoRA merged. With one (SafeDecoding): the expert must have been
    trained on the role model's base (a LoRA role) or on the model itself (a base model): layout (b),
    one peft model with both adapters; a full fine-tune trained from the expert's base: layout (c).
    """
    device = default_device() if device is None else device
    if not defence.uses_expert:
        model, tokenizer = load_for_generation(source, dtype, device, trust_remote_code)
        return StreamModels([Part(model, ("role",))]), tokenizer
    from peft import PeftModel

    expert = expert_source(str(defence.settings["expert"]))
    check_model_folder(str(expert.adapter), "LoRA adapter")
    trained_from = _run_base(source)
    if source.adapter and not _same_model(source.base, expert.base):
        raise ConfigError(
            f"the safety expert {expert.adapter} was trained on {expert.base!r}, but {source.label!r} is a "
            f"LoRA on {source.base!r}: train the expert on the role model's base"
        )
    if source.adapter or _same_model(source.base, expert.base):
        base = load_causal_lm(source.base, source.revision, dtype, trust_remote_code, device)
        role = None
        try:
            if source.adapter:
                model = PeftModel.from_pretrained(base, source.adapter, adapter_name="role")
                model.load_adapter(str(expert.adapter), adapter_name="expert")
                role = "role"
            else:
                model = PeftModel.from_pretrained(base, str(expert.adapter), adapter_name="expert")
        except (OSError, ValueError, RuntimeError) as err:
            raise ConfigError(f"cannot attach the LoRA adapters to {source.base!r}: {err}") from err
        model.eval()
        adapters = {"role": role or BASE_ADAPTER, "expert": "expert"}
        models = StreamModels([Part(model, ("role", "expert"), adapters)])
    else:
        if trained_from is not None and not _same_model(trained_from, expert.base):
            raise ConfigError(
                f"the safety expert {expert.adapter} was trained on {expert.base!r}, but {source.label!r} "
                f"was fine-tuned from {trained_from!r}: train the expert on that model"
            )
        role_model, tokenizer = load_for_generation(source, dtype, device, trust_remote_code)
        expert_model, expert_tokenizer = load_for_generation(expert, dtype, device, trust_remote_code)
        # Probabilities of two models compare token by token only over one vocabulary.
        if tokenizer.get_vocab() != expert_tokenizer.get_vocab():
            raise ConfigError(
                f"the safety expert {expert.adapter} (base {expert.base!r}) has another vocabulary than "
                f"{source.label!r}: train the expert on the role model's base"
            )
        models = StreamModels([Part(role_model, ("role",)), Part(expert_model, ("expert",))])
        return models, tokenizer
    tokenizer_id = source.tokenizer or source.base
    revision = source.revision if tokenizer_id == source.base else None
    return models, load_tokenizer(tokenizer_id, revision, trust_remote_code)


def _run_base(source: ModelSource) -> str | None:
    """The model a full fine-tune's run folder says it trained from (config.yaml), where known."""
    from safetune.config import load_run_config

    run = Path(source.label).expanduser()
    if not (run / "config.yaml").is_file():
        return None
    try:
        name = load_run_config(run / "config.yaml").model.name
    except ConfigError:
        return None
    if not name:
        return None
    # As `safetune train` read it: a folder from where it ran (the cwd), else a hub id.
    found = Path(name).expanduser()
    return str(found.resolve()) if found.is_dir() else name
