"""SaRFT and SFT on role-play data: the Trainer (compute_loss = policy logits + methods/losses.py's
sarft_loss; no copied training loop) and the recipe that feeds it (RDS selection, encoded rows).

Multi-turn conversations (a conversation `data.format`, `data.card`, or detected) take the same Trainer:
each rendered sequence (data/turns.py) is a row with assistant-only labels (`data.train_turns`), per-turn
RDS flags (reference/turn_rds.py), and `kl_tokens` marking the tokens of its flagged trained turns, so the
KL applies there only; a row is flagged (the reference runs on it) when it holds a flagged turn."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import Trainer, TrainerCallback, TrainingArguments

from safetune.config import MethodConfig
from safetune.data.batching import pad_batch
from safetune.data.chat import ChatRenderer
from safetune.data.conversation_data import is_conversation_data, load_conversation_data
from safetune.data.readers import InvalidRecords
from safetune.data.records import Conversation, RoleExample
from safetune.data.sources import load_data
from safetune.data.turns import RenderedConversation, render_conversations, turns_fingerprint
from safetune.errors import DataError
from safetune.methods.losses import ReferenceOutputs, sarft_loss, sarft_weights
from safetune.models.loading import FrozenLmHead, decoder_of, default_device, lm_head_fn
from safetune.selection import (
    format_turn_rates,
    select,
    select_turns,
    turn_flags_by_id,
    turn_rates,
    write_selection,
    write_turn_selection,
)
from safetune.storage import hash_json
from safetune.training.common import AveragedMetrics, add_callbacks
from safetune.training.recipe import Recipe, RecipeReport

log = logging.getLogger(__name__)


def encode_conversation_rows(
    rendered: Sequence[RenderedConversation], flags: dict[str, dict[int, bool]]
) -> list[dict[str, Any]]:
    """Training rows of rendered conversations: one per token sequence that trains at least one turn.
    `kl_tokens` is 1 on the tokens of its trained turns that are flagged (`flags`: conversation id ->
    turn -> flag; a turn the selection did not score is not flagged). `conversation`: the conversation's
    id; `id`: the row's, the conversation's with `#k` (the sequence's 0-based index) when a split
    rendering gives the conversation several sequences; `index`: the row's position in the list (the
    reference cache's key)."""
    rows: list[dict[str, Any]] = []
    for conv in rendered:
        turn_flags = flags.get(conv.id, {})
        several = len(conv.sequences) > 1
        for k, seq in enumerate(conv.sequences):
            if not any(span.trainable for span in seq.spans):
                continue
            kl = [0] * len(seq.input_ids)
            for span in seq.spans:
                if span.trainable and turn_flags.get(span.turn, False):
                    kl[span.start : span.end] = [1] * (span.end - span.start)
            rows.append(
                {
                    "index": len(rows),
                    "id": f"{conv.id}#{k}" if several else conv.id,
                    "conversation": conv.id,
                    "input_ids": list(seq.input_ids),
                    "labels": list(seq.labels),
                    "kl_tokens": kl,
                    "flag": any(kl),
                }
            )
    return rows


def encode_roles(
    renderer: ChatRenderer, examples: Sequence[RoleExample], flags: Sequence[bool]
) -> list[dict[str, Any]]:
    """Training rows: the plain chat with no system prompt (the role goes into the weights). `index`: the
    row's position in the list (the reference cache's key)."""
    rows = []
    for i, (ex, flag) in enumerate(zip(examples, flags, strict=True)):
        enc = renderer.encode(ex.input, ex.output)
        rows.append({"index": i, "input_ids": enc.input_ids, "labels": enc.labels, "flag": bool(flag)})
    return rows


class RoleCollator:
    """Right-pads encoded rows and carries each row's selection flag, and its `index` as `row_index` when
    every row has one (the reference cache looks rows up by it)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Tensor]:
        batch = pad_batch([r["input_ids"] for r in rows], [r["labels"] for r in rows], self.pad_id)
        batch["flags"] = torch.tensor([bool(r["flag"]) for r in rows], dtype=torch.bool)
        if all("index" in r for r in rows):
            batch["row_index"] = torch.tensor([int(r["index"]) for r in rows], dtype=torch.long)
        if "kl_tokens" in rows[0]:  # conversations: the KL on the tokens of flagged turns only
            width = batch["input_ids"].shape[1]
            batch["kl_tokens"] = torch.tensor(
                [r["kl_tokens"] + [0] * (width - len(r["kl_tokens"])) for r in rows], dtype=torch.bool
            )
        return batch


def reference_width(inputs: dict[str, Tensor], rows: Tensor) -> int:
    """How many leading positions of the flagged `rows` the reference must run on: its outputs are read
    only where the KL is (never on padding), and a causal model's output at position t depends on
    positions <= t only, so the reference forward stops there, with the same values. Rows are right-padded
    (RoleCollator): the flagged rows' longest; with `kl_tokens` (conversations), the last position that
    predicts a flagged turn's token, so a conversation's turns after its last flagged one cost the
    reference nothing."""
    width = int(inputs["attention_mask"][rows].sum(dim=1).max())
    kl_tokens = inputs.get("kl_tokens")
    if kl_tokens is not None:
        marked = kl_tokens[rows].any(dim=0).nonzero()
        if marked.numel():  # position t predicts token t + 1: the last KL position is the last token - 1
            width = min(width, int(marked.max()))
    return max(width, 1)


class ReferenceCache:
    """The frozen reference's last hidden states at the positions SaRFT's KL reads, for every flagged row,
    computed once before training (`build`).

    The reference is frozen, so these states are the same at every step of every epoch: with the cache a
    step's reference cost is the LM head at the KL positions only, not a forward pass over the flagged
    rows. Each flagged row keeps its KL positions (those where `sarft_weights` gives a nonzero KL weight,
    the shift and `kl_tokens` included) and the states there, on the CPU, in the model's dtype; memory:
    KL positions x hidden size x dtype bytes (`nbytes`). Rows are keyed by their `index`."""

    def __init__(self, positions: dict[int, Tensor], states: dict[int, Tensor]):
        self.positions = positions
        self.states = states

    @classmethod
    @torch.no_grad()
    def build(
        cls,
        model: nn.Module,
        rows: Sequence[dict[str, Any]],
        method: MethodConfig,
        pad_id: int,
        batch_size: int,
    ) -> ReferenceCache:
        """Run `model` (the reference: the freshly loaded weights) on the flagged `rows`, `batch_size` at a
        time, shortest first (less padding), without gradients, where it is. The rows batch as the Trainer
        batches them (RoleCollator, right padding): a causal model's state at a position does not depend
        on the padding after it, so the states are those the Trainer's reference forward would give."""
        device = next(model.parameters()).device
        decoder = decoder_of(model)
        collate = RoleCollator(pad_id)
        flagged = sorted((r for r in rows if r["flag"]), key=lambda r: len(r["input_ids"]))
        positions: dict[int, Tensor] = {}
        states: dict[int, Tensor] = {}
        for start in range(0, len(flagged), batch_size):
            chunk = flagged[start : start + batch_size]
            batch = collate(chunk)
            # The KL weights of these rows with the loss's own definition, so the cache holds exactly the
            # positions the loss reads (its normalisation does not matter here, only where it is nonzero).
            _, _, kl_weight = sarft_weights(
                batch["labels"],
                batch["attention_mask"],
                batch["flags"],
                method.kl_positions,
                method.ce_normalisation,
                batch.get("kl_tokens"),
            )
            read = kl_weight != 0
            width = int(read.any(dim=0).nonzero().max()) + 1 if read.any() else 1
            hidden = decoder(
                input_ids=batch["input_ids"][:, :width].to(device),
                attention_mask=batch["attention_mask"][:, :width].to(device),
                use_cache=False,
            ).last_hidden_state
            for b, row in enumerate(chunk):
                where = read[b, :width].nonzero().squeeze(1)
                positions[int(row["index"])] = where
                states[int(row["index"])] = hidden[b, where.to(device)].cpu()
        return cls(positions, states)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.states.values())

    def report(self) -> dict[str, int]:
        """run.json's figures: rows, positions held, bytes."""
        return {
            "rows": len(self.states),
            "positions": sum(int(p.numel()) for p in self.positions.values()),
            "bytes": self.nbytes,
        }

    def outputs(
        self,
        indices: Sequence[int],
        row_index: Tensor,
        width: int,
        device: torch.device,
        head: Callable[[Tensor], Tensor],
    ) -> ReferenceOutputs:
        """ReferenceOutputs for the rows `indices` (row f of the outputs = row `indices[f]`; `row_index`
        maps batch rows to f) in the packed layout: the cached states and, per row and position of a
        batch `width` wide, the entry that holds it."""
        missing = [i for i in indices if i not in self.states]
        if missing:
            raise ValueError(f"reference cache has no entry for flagged row {missing[0]}")
        values = torch.cat([self.states[i] for i in indices]).to(device, non_blocking=True)
        position_index = torch.full((len(indices), width), -1, dtype=torch.long)
        offset = 0
        for f, i in enumerate(indices):
            where = self.positions[i]
            kept = where[where < width]
            position_index[f, kept] = torch.arange(offset, offset + kept.numel())
            offset += where.numel()
        return ReferenceOutputs(values, row_index, head, position_index.to(device))


class SafetuneTrainer(AveragedMetrics):
    """transformers.Trainer with the SaRFT/SFT loss.

    Reference model: with LoRA (`ref_model=None`) the policy with its adapter disabled (no second copy);
    with full fine-tuning a frozen copy. It runs only on flagged rows, never when a micro-batch has none or
    beta is 0, and returns hidden states only: the loss applies the LM head one vocabulary chunk at a time.

    With `reference_cache` (ReferenceCache, SaRFT's default) no reference forward runs during training:
    the states come from the cache, by the batch's `row_index`, and the head is `reference_head` (full
    fine-tuning: a frozen copy of the LM head only, models/loading.py FrozenLmHead; no model copy) or,
    under LoRA (`reference_head=None`), the policy's head with its adapter disabled.
    """

    def __init__(
        self,
        *args: Any,
        method: MethodConfig,
        ref_model: nn.Module | None = None,
        reference_cache: ReferenceCache | None = None,
        reference_head: nn.Module | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.method = method
        self.reference_cache = reference_cache
        self.reference_head = (
            reference_head.to(self.args.device).requires_grad_(False) if reference_head is not None else None
        )
        # Our loss is a per-micro-batch mean (as in the authors' code): let the Trainer divide it by the
        # accumulation steps instead of expecting a num_items_in_batch-normalised loss.
        self.model_accepts_loss_kwargs = False
        self.loss_is_scaled_for_ga = False
        self.ref_model = None
        if ref_model is not None:
            ref_model.eval().requires_grad_(False)
            if self.is_deepspeed_enabled:
                from trl.models.utils import prepare_deepspeed

                self.ref_model = prepare_deepspeed(ref_model, self.accelerator)
            else:
                self.ref_model = self.accelerator.prepare_model(ref_model, evaluation_mode=True)
        self.reference_rows = 0  # rows the reference model has run on (tests and logs)
        add_callbacks(self)

    def train(self, *args: Any, **kwargs: Any) -> Any:
        output = super().train(*args, **kwargs)
        # Each rank of a data-parallel run counts its own rows: run.json reports them all.
        rows = torch.tensor(self.reference_rows, device=self.accelerator.device)
        self.reference_rows = int(self.accelerator.reduce(rows, reduction="sum").item())
        return output

    def _reference(self, model: nn.Module, inputs: dict[str, Tensor], flags: Tensor) -> ReferenceOutputs:
        rows = flags.nonzero().squeeze(1)
        if self.reference_cache is not None:
            return self._cached_reference(model, inputs, rows, flags)
        width = reference_width(inputs, rows)
        ids, mask = inputs["input_ids"][rows, :width], inputs["attention_mask"][rows, :width]
        row_index = torch.full_like(flags, -1, dtype=torch.long)
        row_index[rows] = torch.arange(rows.numel(), device=rows.device)
        self.reference_rows += rows.numel()
        if self.ref_model is not None:
            ref = self.accelerator.unwrap_model(self.ref_model)
            with torch.no_grad():
                hidden = decoder_of(ref)(
                    input_ids=ids, attention_mask=mask, use_cache=False
                ).last_hidden_state
            return ReferenceOutputs(hidden, row_index, lm_head_fn(ref))
        policy = self.accelerator.unwrap_model(model)
        with torch.no_grad(), policy.disable_adapter():
            hidden = decoder_of(policy)(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        head = lm_head_fn(policy)

        def ref_head(h: Tensor) -> Tensor:
            # An adapter on the LM head (if the user targets it) must be off for reference logits too.
            with policy.disable_adapter():
                return head(h)

        return ReferenceOutputs(hidden, row_index, ref_head)

    def _cached_reference(
        self, model: nn.Module, inputs: dict[str, Tensor], rows: Tensor, flags: Tensor
    ) -> ReferenceOutputs:
        assert self.reference_cache is not None
        if "row_index" not in inputs:
            raise ValueError("the reference cache needs each row's index (RoleCollator's row_index)")
        row_index = torch.full_like(flags, -1, dtype=torch.long)
        row_index[rows] = torch.arange(rows.numel(), device=rows.device)
        self.reference_rows += rows.numel()
        if self.reference_head is not None:
            head: Callable[[Tensor], Tensor] = self.reference_head
        else:
            policy = self.accelerator.unwrap_model(model)
            policy_head = lm_head_fn(policy)

            def head(h: Tensor) -> Tensor:
                # An adapter on the LM head (if the user targets it) must be off for reference logits too.
                with policy.disable_adapter():
                    return policy_head(h)

        indices = inputs["row_index"][rows].tolist()
        width = inputs["input_ids"].shape[1]
        return self.reference_cache.outputs(indices, row_index, width, flags.device, head)

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Tensor],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        flags = inputs["flags"]
        beta = self.method.resolved_beta()
        use_reference = beta != 0 and bool(flags.any())
        # Reference first: its activations are freed before the policy's build up.
        reference = self._reference(model, inputs, flags) if use_reference else None
        outputs = model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False
        )
        out = sarft_loss(
            outputs.logits,
            inputs["labels"],
            inputs["attention_mask"],
            flags,
            reference,
            beta=beta,
            kl_direction=self.method.kl_direction,
            kl_positions=self.method.kl_positions,
            ce_normalisation=self.method.ce_normalisation,
            chunk_elements=self.method.chunk_elements,
            # Nothing reads the logits after the loss during training: reuse them as the gradient buffer.
            inplace=model.training and not return_outputs,
            kl_tokens=inputs.get("kl_tokens"),
        )
        self.record(model.training, "role_loss", out.role.item())
        self.record(model.training, "safe_kl", out.safe.item())
        self.record(model.training, "flagged_fraction", flags.float().mean().item())
        return (out.loss, outputs) if return_outputs else out.loss


class RoleRecipe(Recipe):
    """SaRFT/SFT: role-play examples, RDS selection on the freshly loaded model (selection.jsonl), and
    SafetuneTrainer. Under full fine-tuning the frozen copy exists only when the KL term can run."""

    conversations: list[Conversation] | None = None  # set when the data are conversations

    def load(self, tokenizer: Any) -> str:
        config = self.config
        self.renderer = ChatRenderer.from_config(tokenizer, config.chat, authors_empty_system=True)
        self.invalid = InvalidRecords(config.data.invalid)
        if is_conversation_data(config):
            return self._load_conversations()
        self.examples, self.profiles = load_data(config, self.invalid)
        log.info("loaded %d examples from %s", len(self.examples), config.data.path)
        return hash_json([dataclasses.asdict(ex) for ex in self.examples])

    def _load_conversations(self) -> str:
        config = self.config
        self.conversations, self.prompts = load_conversation_data(config, self.invalid)
        max_tokens = config.chat.max_conversation_tokens
        self.rendered = render_conversations(
            self.renderer, self.conversations, train_turns=config.data.train_turns, max_tokens=max_tokens
        )
        if not any(conv.trainable for conv in self.rendered.conversations):
            raise DataError(config.data.path, None, None, "no conversation has a trainable assistant turn")
        log.info("loaded %d conversations from %s", len(self.conversations), config.data.path)
        rendering = turns_fingerprint(self.renderer, config.data.train_turns, max_tokens)
        return hash_json({"conversations": [c.to_dict() for c in self.conversations], "rendering": rendering})

    def frozen_pass(self, model: Any, fingerprint: str) -> dict[str, str]:
        def scoring_model() -> Any:
            # RDS scores come from the model before fine-tuning: the freshly loaded weights.
            return model.to(default_device())

        if self.conversations is not None:
            self.turn_scores, self.turn_flags, self.stats = select_turns(
                self.config, self.renderer, self.conversations, self.prompts, scoring_model
            )
            self.rows = encode_conversation_rows(
                self.rendered.conversations, turn_flags_by_id(self.turn_scores, self.turn_flags)
            )
            self.flags = [bool(row["flag"]) for row in self.rows]
            self.stats["rendering"] = self.rendered.report()
            self.stats["rows"] = len(self.rows)
            self.stats["flagged_rows"] = sum(self.flags)
            self._cache_reference(model)
            return {"selection": hash_json(self.turn_flags)}
        self.flags, self.scores, self.stats = select(
            self.config, self.renderer, self.examples, self.profiles, scoring_model
        )
        self._cache_reference(model)
        return {"selection": hash_json([bool(f) for f in self.flags])}

    reference_cache: ReferenceCache | None = None
    reference_head: FrozenLmHead | None = None

    def uses_reference_cache(self) -> bool:
        """SaRFT's KL will run (beta != 0, a flagged row) and `method.reference_cache` is on."""
        m = self.config.method
        return bool(m.reference_cache and m.beta and self.spec.needs_reference and any(self.flags))

    def _cache_reference(self, model: Any) -> None:
        """The reference's states at the KL positions of every flagged row (ReferenceCache), from the freshly
        loaded model: under LoRA that is the base the adapter-disabled policy computes (a fresh adapter adds
        nothing). Recomputed on --resume (one forward per flagged row), so nothing is stored. Under a
        multi-process launch every rank computes it for all rows (it is read by whichever rank gets a row).
        Full fine-tuning keeps a frozen copy of the LM head only, instead of a copy of the model."""
        if not self.uses_reference_cache():
            return
        self.reference_cache = ReferenceCache.build(
            model.to(default_device()),
            self.train_rows(),
            self.config.method,
            self.renderer.tokenizer.pad_token_id,
            self.config.train.batch_size,
        )
        if self.config.train.finetune == "full":
            self.reference_head = FrozenLmHead(model)
        figures = self.reference_cache.report()
        log.info(
            "reference cache: %d flagged rows, %d KL positions, %.1f MiB",
            figures["rows"],
            figures["positions"],
            figures["bytes"] / 2**20,
        )

    def write_files(self, out: Path) -> None:
        if self.conversations is not None:
            write_turn_selection(out, self.turn_scores, self.turn_flags, self.stats)
            log.info(
                "selection %s: %d of %d turns flagged; %s",
                self.config.selection.variant,
                self.stats["flagged"],
                self.stats["count"],
                format_turn_rates(self.stats),
            )
            return
        write_selection(out, self.examples, self.flags, self.scores, self.stats)
        log.info(
            "selection %s: %d of %d rows flagged",
            self.config.selection.variant,
            sum(self.flags),
            len(self.flags),
        )

    def needs_reference_copy(self) -> bool:
        # With the reference cache, full fine-tuning needs only a frozen copy of the LM head.
        return self.config.method.beta != 0 and any(self.flags) and self.reference_cache is None

    # The role-data baselines have no RDS selection: they train on these rows, and describe them with the
    # two helpers below, whether the data are single-turn examples or conversations.
    def unselected_rows(self) -> list[dict[str, Any]]:
        """Every training row with no flag: each conversation's rendered rows (assistant-only labels on the
        `data.train_turns` turns, no turn flagged: no per-turn RDS pass is paid for flags nothing reads),
        or each single-turn example."""
        if self.conversations is not None:
            rows = encode_conversation_rows(self.rendered.conversations, {})
            # No KL anywhere: plain rows, which batch with one-turn rows (SafeInstr's, Lisa's) alike.
            return [{k: v for k, v in row.items() if k != "kl_tokens"} for row in rows]
        return encode_roles(self.renderer, self.examples, [False] * len(self.examples))

    def data_details(self, rows: int) -> dict[str, Any]:
        """run.json's `data` for a method without selection: the training rows, and for conversations the
        rendering counts (conversations, split, opening turns, dropped turns, skips) and the trained turns."""
        if self.conversations is None:
            return {"count": rows}
        return {
            "count": rows,
            "unit": "conversation row",
            "train_turns": self.config.data.train_turns,
            **self.rendered.report(),
        }

    def data_card_row(self, rows: int) -> str:
        """The model card's line on the training data for a method without selection."""
        if self.conversations is None:
            return f"| examples | {rows} |"
        return (
            f"| conversations | {len(self.conversations)} ({rows} training rows, "
            f"train turns: {self.config.data.train_turns}) |"
        )

    # The role-data baselines reuse this recipe's Trainer through these three hooks: which Trainer class,
    # which encoded rows, and which extra keyword arguments their Trainer takes.
    trainer_class: type[SafetuneTrainer] = SafetuneTrainer

    def train_rows(self) -> list[dict[str, Any]]:
        """The encoded rows the Trainer trains on (SaRFT/SFT: every example with its RDS flag)."""
        if self.conversations is not None:
            return self.rows
        return encode_roles(self.renderer, self.examples, self.flags)

    def trainer_options(self) -> dict[str, Any]:
        """Keyword arguments the recipe's Trainer class adds to SafetuneTrainer's. Default: the reference
        cache and frozen head when the frozen pass built them (SaRFT), else none."""
        if self.reference_cache is None:
            return {}
        return {"reference_cache": self.reference_cache, "reference_head": self.reference_head}

    def trainer(
        self,
        args: TrainingArguments,
        model: Any,
        ref_model: Any,
        tokenizer: Any,
        callbacks: list[TrainerCallback] | None,
    ) -> Trainer:
        return self.trainer_class(
            model=model,
            args=args,
            train_dataset=self.train_rows(),
            data_collator=RoleCollator(tokenizer.pad_token_id),
            processing_class=tokenizer,
            method=self.config.method,
            ref_model=ref_model,
            callbacks=callbacks,
            **self.trainer_options(),
        )

    def report(self, trainer: Trainer, metrics: dict[str, Any]) -> RecipeReport:
        config, stats, m = self.config, self.stats, self.config.method
        assert isinstance(trainer, SafetuneTrainer)
        selection = {k: stats[k] for k in ("variant", "count", "flagged", "flag_rate")}
        details: dict[str, Any] = {"selection": selection, "invalid_records": self.invalid.report()}
        data_row = f"| examples | {stats['count']} |"
        if self.conversations is not None:
            selection.update(unit="turn", by_turn=stats["by_turn"], flagged_rows=stats["flagged_rows"])
            details["conversations"] = {**self.rendered.report(), "rows": stats["rows"]}
            data_row = (
                f"| conversations | {len(self.conversations)} ({stats['count']} scored assistant turns, "
                f"train turns: {config.data.train_turns}) |\n| flag rate by turn position | {turn_rates(stats)} |"
            )
        figures: dict[str, Any] = {"reference_rows": trainer.reference_rows}
        if self.reference_cache is not None:
            figures.update({f"reference_cache_{k}": v for k, v in self.reference_cache.report().items()})
        return RecipeReport(
            details=details,
            metrics=figures,
            card_rows=[
                f"| data | `{config.data.path}` (role: {config.data.role or 'all'}) |",
                data_row,
                f"| selection | {config.selection.variant}: {stats['flagged']} flagged "
                f"({100 * stats['flag_rate']:.1f}%) |",
                f"| beta | {m.beta} |",
                f"| KL | {m.kl_direction}, positions {m.kl_positions}; CE normalisation {m.ce_normalisation} |",
            ],
        )
