"""Preference-optimisation baselines of the reward-gap MPO paper, trained with TRL on `PreferencePair`s.

What each method is lives in the method registry (methods/registry.py, `recipe="trl"`); this module says how
TRL trains it: `TRL_TRAINERS` (method name -> the row layout TRL's trainer reads and a builder of that
trainer with our TrainingArguments settings), and `TrlRecipe`, the part of a `safetune train` run
(training/run.py) that renders the pairs with the model's chat template and builds the trainer. Set-up,
--resume, saving and run.json are the run's, as for every method.

How TRL sees the data. TRL 1.x tokenizes string datasets itself: `tokenizer(text)` with the tokenizer's
automatic special tokens (a second BOS after a template that already writes one, e.g. Llama-3), prompt and
completion tokenized jointly (tokens can merge across the boundary), and the tokenizer's EOS appended to each
completion (CPO/ORPO also prepend BOS whenever the tokenizer has one). We never hand TRL text to tokenize: the
dataset carries the ids of `ChatRenderer` (the prompt rendered once with the chat template, exactly one BOS
where the model expects one; each response followed by the template's end-of-turn token, no extra EOS; each
side truncated on its own, as in our SaRFT runs), and thin subclasses make TRL take those ids as they are:

* DPO family and KTO: `_prepare_dataset` passes a dataset with `prompt_ids` through (KTO still gets TRL's
  mismatched KL completions), so the collators see our ids;
* CPO/SimPO/ORPO: `tokenize_row` builds TRL's `prompt_/chosen_/rejected_` columns from our ids;
* SFT: TRL's own pre-tokenised path (`input_ids` + `labels`, prompt tokens masked with -100).

The rendered text (`prompt` = `renderer.prompt_text(user)`, `chosen`/`rejected` = response + end-of-turn
token) stays in the paired datasets for inspection; only the ids are trained on.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import random
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from transformers import Trainer, TrainerCallback, TrainingArguments

from safetune.config import RunConfig
from safetune.data.batching import IGNORE_INDEX
from safetune.data.chat import ChatRenderer
from safetune.data.languages import LanguageCheck
from safetune.data.preferences import load_preference_pairs
from safetune.data.readers import InvalidRecords
from safetune.data.records import PreferencePair
from safetune.errors import ConfigError
from safetune.methods.losses import rdpo_loss
from safetune.methods.registry import MethodSpec
from safetune.storage import hash_json
from safetune.training.common import add_callbacks, pair_counts, training_arguments
from safetune.training.recipe import Recipe, RecipeReport

log = logging.getLogger(__name__)

# How a TRL trainer reads the pairs: "sft" (prompt + chosen, prompt masked), "paired" (prompt/chosen/rejected
# ids) or "unpaired" (each pair -> one desirable and one undesirable example, KTO).
RowLayout = Literal["sft", "paired", "unpaired"]
# build(config, model, ref_model_or_None, tokenizer, train_dataset) -> a transformers Trainer
TrlBuilder = Callable[[RunConfig, Any, Any, Any, Any], Any]


@dataclass(frozen=True)
class TrlTrainer:
    """How one registered method trains through TRL: the dataset layout its trainer reads and its builder."""

    rows: RowLayout
    build: TrlBuilder


# --- datasets: ChatRenderer ids, never text for TRL to tokenize ----------------------------------------------


def preference_dataset(
    renderer: ChatRenderer, pairs: Sequence[PreferencePair], kind: RowLayout, seed: int = 0
) -> Any:
    """The `datasets.Dataset` a baseline trains on, with ChatRenderer's ids (see the module docstring).

    sft: input_ids, labels (prompt + chosen response). paired: prompt, chosen, rejected (rendered text) and
    prompt_ids, chosen_ids, rejected_ids. unpaired: prompt, completion, label, prompt_ids, completion_ids: two
    rows per pair, in a fixed order (KTO reads its data sequentially) that alternates desirable and undesirable
    rows, so every batch is balanced, with the undesirable rows offset by half the pairs (pairs shuffled once
    with `seed`), so neighbouring rows never share a prompt and KTO's KL completions (each row paired with its
    neighbour's completion) are mismatched as the method needs (from 4 pairs on).
    """
    from datasets import Dataset

    if not pairs:
        raise ConfigError("no preference pairs to train on")
    end = renderer.end_token
    if kind == "unpaired":
        return Dataset.from_list(_unpaired_rows(renderer, pairs, seed))
    rows: list[dict[str, Any]] = []
    for pair in pairs:
        if kind == "sft":
            enc = renderer.encode(pair.prompt, pair.chosen)
            rows.append({"input_ids": enc.input_ids, "labels": enc.labels})
            continue
        prompt_text = renderer.prompt_text(pair.prompt)
        prompt_ids = renderer.prompt_ids(pair.prompt)
        if kind == "paired":
            rows.append(
                {
                    "prompt": prompt_text,
                    "chosen": pair.chosen + end,
                    "rejected": pair.rejected + end,
                    "prompt_ids": prompt_ids,
                    "chosen_ids": renderer.response_ids(pair.chosen),
                    "rejected_ids": renderer.response_ids(pair.rejected),
                }
            )
        else:
            raise ValueError(f"unknown data kind {kind!r}")
    return Dataset.from_list(rows)


def _unpaired_rows(
    renderer: ChatRenderer, pairs: Sequence[PreferencePair], seed: int
) -> list[dict[str, Any]]:
    order = list(pairs)
    random.Random(seed).shuffle(order)
    half = len(order) // 2

    def row(pair: PreferencePair, label: bool) -> dict[str, Any]:
        response = pair.chosen if label else pair.rejected
        return {
            "prompt": renderer.prompt_text(pair.prompt),
            "completion": response + renderer.end_token,
            "label": label,
            "prompt_ids": renderer.prompt_ids(pair.prompt),
            "completion_ids": renderer.response_ids(response),
        }

    rows = []
    for i, pair in enumerate(order):
        rows.append(row(pair, True))
        rows.append(row(order[(i + half) % len(order)], False))
    return rows


def _cpo_row(prompt_ids: list[int], chosen_ids: list[int], rejected_ids: list[int]) -> dict[str, list[int]]:
    """The columns CPOTrainer/ORPOTrainer.tokenize_row would produce, from our ids (no BOS/EOS added)."""
    row = {"prompt_input_ids": list(prompt_ids), "prompt_attention_mask": [1] * len(prompt_ids)}
    for side, answer in (("chosen", chosen_ids), ("rejected", rejected_ids)):
        ids = list(prompt_ids) + list(answer)
        row[f"{side}_input_ids"] = ids
        row[f"{side}_attention_mask"] = [1] * len(ids)
        row[f"{side}_labels"] = [IGNORE_INDEX] * len(prompt_ids) + list(answer)
    return row


def _rotate_kl_completions(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """KTO's KL estimate pairs x_i with y_{i-1} within each batch (as TRL's own preparation does)."""
    completions = batch["completion_ids"]
    batch["KL_completion_ids"] = [completions[-1], *completions[:-1]]
    return batch


# --- TRL trainer subclasses (built lazily: importing TRL is slow and trl.experimental warns) -----------------


class _PretokenisedRowMixin:
    """CPO/ORPO: take our ids instead of tokenizing the text (which would add BOS/EOS)."""

    def tokenize_row(self, feature: dict[str, Any], model: Any = None) -> dict[str, Any]:
        if "prompt_ids" not in feature:
            return super().tokenize_row(feature, model)  # type: ignore[misc]
        return _cpo_row(feature["prompt_ids"], feature["chosen_ids"], feature["rejected_ids"])


class _PretokenisedPairsMixin:
    """DPO family: a dataset that already has prompt/chosen/rejected ids goes to the collator as it is."""

    def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
        if "prompt_ids" not in (dataset.column_names or []):
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)  # type: ignore[misc]
        return dataset.select_columns(["prompt_ids", "chosen_ids", "rejected_ids"])


class _PretokenisedUnpairedMixin:
    """KTO: our prompt/completion ids as they are, plus TRL's mismatched KL completions."""

    calculate_KL: bool

    def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
        if "prompt_ids" not in (dataset.column_names or []):
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)  # type: ignore[misc]
        dataset = dataset.select_columns(["prompt_ids", "completion_ids", "label"])
        if self.calculate_KL:
            dataset = dataset.map(
                _rotate_kl_completions, batched=True, batch_size=args.per_device_train_batch_size
            )
        return dataset


class _RDPOMixin:
    """R-DPO on DPOTrainer: the same forward passes and reference handling, `rdpo_loss` in place of the sigmoid.

    |y| is the number of response tokens (the collator's completion mask), as in Park et al. (2024).
    """

    length_alpha: float = 0.0
    _NON_MODEL_KEYS = frozenset({"completion_mask", "ref_chosen_logps", "ref_rejected_logps"})

    def _sequence_logps(
        self, model: Any, model_kwargs: dict[str, Any], labels: Tensor, seq_len: int
    ) -> Tensor:
        outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)
        # Prompt-learning PEFT prepends virtual tokens; keep the positions of the real ones (as TRL does).
        return outputs.log_probs[:, -seq_len:].sum(dim=1)

    def _reference_logps(
        self, inputs: dict[str, Any], model_kwargs: dict[str, Any], labels: Tensor, seq_len: int
    ) -> tuple[Tensor, Tensor]:
        from accelerate.utils import is_peft_model
        from trl.models.utils import disable_gradient_checkpointing
        from trl.trainer.utils import use_adapter

        this: Any = self
        if this.precompute_ref_logps:
            return inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        with (
            torch.no_grad(),
            disable_gradient_checkpointing(this.model, this.args.gradient_checkpointing_kwargs),
        ):
            if this.ref_model is None and is_peft_model(this.model):
                unwrapped = this.accelerator.unwrap_model(this.model)
                adapter = "ref" if "ref" in unwrapped.peft_config else None
                with use_adapter(unwrapped, adapter_name=adapter):
                    ref_logps = self._sequence_logps(this.model, model_kwargs, labels, seq_len)
            else:
                ref_logps = self._sequence_logps(this.ref_model, model_kwargs, labels, seq_len)
        chosen, rejected = ref_logps.chunk(2, dim=0)
        return chosen, rejected

    def _compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool) -> Any:
        this: Any = self
        mode = "train" if this.model.training else "eval"
        model_kwargs = {k: v for k, v in inputs.items() if k not in self._NON_MODEL_KEYS}
        model_kwargs["use_cache"] = False
        completion_mask = inputs["completion_mask"]
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        seq_len = completion_mask.size(1) - 1
        chosen_logps, rejected_logps = self._sequence_logps(model, model_kwargs, labels, seq_len).chunk(
            2, dim=0
        )
        ref_chosen, ref_rejected = self._reference_logps(inputs, model_kwargs, labels, seq_len)
        chosen_logratios = chosen_logps - ref_chosen.to(chosen_logps.device)
        rejected_logratios = rejected_logps - ref_rejected.to(rejected_logps.device)
        chosen_lengths, rejected_lengths = completion_mask.sum(dim=1).chunk(2, dim=0)
        losses = rdpo_loss(
            chosen_logratios,
            rejected_logratios,
            chosen_lengths,
            rejected_lengths,
            this.beta,
            self.length_alpha,
        )
        loss = losses.mean()

        gather = this.accelerator.gather_for_metrics
        chosen_rewards = this.beta * chosen_logratios.detach()
        rejected_rewards = this.beta * rejected_logratios.detach()
        # The term rdpo_loss adds to the logit: positive where the chosen answer is the longer one.
        length_term = self.length_alpha * (chosen_lengths - rejected_lengths).to(chosen_rewards.dtype)
        metrics = this._metrics[mode]
        metrics["rewards/chosen"].append(gather(chosen_rewards).mean().item())
        metrics["rewards/rejected"].append(gather(rejected_rewards).mean().item())
        metrics["rewards/accuracies"].append(
            gather((chosen_rewards > rejected_rewards).float()).mean().item()
        )
        metrics["rewards/margins"].append(gather(chosen_rewards - rejected_rewards).mean().item())
        metrics["rdpo/length_term"].append(gather(length_term).mean().item())
        metrics["logps/chosen"].append(gather(chosen_logps.detach()).mean().item())
        metrics["logps/rejected"].append(gather(rejected_logps.detach()).mean().item())
        if return_outputs:
            with torch.no_grad():
                return loss, model(**model_kwargs)
        return loss


@dataclass(frozen=True)
class _TrainerClasses:
    sft: Any
    dpo: Any
    rdpo: Any
    kto: Any
    cpo: Any
    orpo: Any


@functools.cache
def _trainer_classes() -> _TrainerClasses:
    from trl import DPOTrainer, KTOTrainer, SFTTrainer

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*trl.experimental.*")
        from trl.experimental.cpo import CPOTrainer
        from trl.experimental.orpo import ORPOTrainer

    dpo = type("SafetuneDPOTrainer", (_PretokenisedPairsMixin, DPOTrainer), {})
    return _TrainerClasses(
        sft=SFTTrainer,
        dpo=dpo,
        rdpo=type("SafetuneRDPOTrainer", (_RDPOMixin, dpo), {}),
        kto=type("SafetuneKTOTrainer", (_PretokenisedUnpairedMixin, KTOTrainer), {}),
        cpo=type("SafetuneCPOTrainer", (_PretokenisedRowMixin, CPOTrainer), {}),
        orpo=type("SafetuneORPOTrainer", (_PretokenisedRowMixin, ORPOTrainer), {}),
    )


# --- builders ------------------------------------------------------------------------------------------------


def _trl_args(config_cls: Any, config: RunConfig, **extra: Any) -> Any:
    """Our TrainingArguments (training/run.py) as the TRL config class, plus the method's fields.

    max_length = prompt + response limits: ChatRenderer already truncated each side, so TRL truncates nothing.
    """
    base = training_arguments(config, Path(config.train.output_dir)).to_dict()
    base["max_length"] = config.chat.max_prompt_tokens + config.chat.max_response_tokens
    base.update(extra)
    return config_cls(**base)


def _drop_ref_adapter(trainer: Any) -> Any:
    """TRL copies a PEFT model's adapter into a frozen "ref" adapter when no ref_model is given. Ours is freshly
    initialised (LoRA B = 0), so the adapter-disabled base is the same reference at no extra memory, and final/
    then holds only the trained adapter."""
    from accelerate.utils import is_peft_model

    model = trainer.accelerator.unwrap_model(trainer.model)
    if is_peft_model(model) and "ref" in model.peft_config:
        model.delete_adapter("ref")
        model.set_adapter("default")
    return trainer


def _build_sft(config: RunConfig, model: Any, ref_model: Any, tokenizer: Any, dataset: Any) -> Any:
    from trl import SFTConfig

    args = _trl_args(SFTConfig, config, packing=False)
    return _trainer_classes().sft(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)


def _dpo_builder(loss_type: str) -> TrlBuilder:
    def build(config: RunConfig, model: Any, ref_model: Any, tokenizer: Any, dataset: Any) -> Any:
        from trl import DPOConfig

        m = config.method
        extra: dict[str, Any] = {"beta": m.resolved_beta(), "loss_type": [loss_type]}
        if loss_type == "robust":
            if not 0.0 <= m.label_smoothing < 0.5:
                raise ConfigError(
                    f"rdpo: method.label_smoothing (flip rate) must be in [0, 0.5), got {m.label_smoothing}"
                )
            if m.label_smoothing == 0.0:
                log.warning("rdpo with method.label_smoothing = 0 is plain DPO; set the assumed flip rate")
            extra["label_smoothing"] = m.label_smoothing
        args = _trl_args(DPOConfig, config, **extra)
        trainer = _trainer_classes().dpo(
            model=model, ref_model=ref_model, args=args, train_dataset=dataset, processing_class=tokenizer
        )
        return _drop_ref_adapter(trainer)

    return build


def _build_length_dpo(config: RunConfig, model: Any, ref_model: Any, tokenizer: Any, dataset: Any) -> Any:
    from trl import DPOConfig

    m = config.method
    if m.length_alpha == 0.0:
        log.warning("r-dpo with method.length_alpha = 0 is plain DPO; set alpha")
    args = _trl_args(DPOConfig, config, beta=m.resolved_beta(), loss_type=["sigmoid"])
    trainer = _trainer_classes().rdpo(
        model=model, ref_model=ref_model, args=args, train_dataset=dataset, processing_class=tokenizer
    )
    trainer.length_alpha = float(m.length_alpha)
    return _drop_ref_adapter(trainer)


def _build_kto(config: RunConfig, model: Any, ref_model: Any, tokenizer: Any, dataset: Any) -> Any:
    from trl import KTOConfig

    # One desirable and one undesirable example per pair: balanced, so both weights stay 1 (KTO paper Eq. 8).
    # TRL pairs each example with its neighbour's completion for the KL estimate, so the order must stay fixed;
    # `preference_dataset` shuffled the rows once with the seed instead.
    args = _trl_args(
        KTOConfig,
        config,
        beta=config.method.resolved_beta(),
        loss_type="kto",
        train_sampling_strategy="sequential",
    )
    trainer = _trainer_classes().kto(
        model=model, ref_model=ref_model, args=args, train_dataset=dataset, processing_class=tokenizer
    )
    return _drop_ref_adapter(trainer)


def _cpo_builder(simpo: bool) -> TrlBuilder:
    def build(config: RunConfig, model: Any, ref_model: Any, tokenizer: Any, dataset: Any) -> Any:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*trl.experimental.*")
            from trl.experimental.cpo import CPOConfig

        m = config.method
        if simpo:  # SimPO = CPOTrainer's length-normalised "simpo" loss with no NLL term (TRL's recipe)
            extra = {"loss_type": "simpo", "cpo_alpha": 0.0, "simpo_gamma": m.simpo_gamma}
        else:
            extra = {"loss_type": "sigmoid", "cpo_alpha": m.cpo_alpha}
        args = _trl_args(CPOConfig, config, beta=m.resolved_beta(), **extra)
        return _trainer_classes().cpo(
            model=model, args=args, train_dataset=dataset, processing_class=tokenizer
        )

    return build


def _build_orpo(config: RunConfig, model: Any, ref_model: Any, tokenizer: Any, dataset: Any) -> Any:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*trl.experimental.*")
        from trl.experimental.orpo import ORPOConfig

    args = _trl_args(ORPOConfig, config, beta=config.method.orpo_lambda)  # TRL's ORPO beta is lambda
    return _trainer_classes().orpo(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)


# How each registered method with `recipe="trl"` trains (a test holds the two tables to the same names).
TRL_TRAINERS: dict[str, TrlTrainer] = {
    "sft-chosen": TrlTrainer("sft", _build_sft),
    "dpo": TrlTrainer("paired", _dpo_builder("sigmoid")),
    "ipo": TrlTrainer("paired", _dpo_builder("ipo")),
    "rdpo": TrlTrainer("paired", _dpo_builder("robust")),
    "cpo": TrlTrainer("paired", _cpo_builder(simpo=False)),
    "simpo": TrlTrainer("paired", _cpo_builder(simpo=True)),
    "orpo": TrlTrainer("paired", _build_orpo),
    "kto": TrlTrainer("unpaired", _build_kto),
    "r-dpo": TrlTrainer("paired", _build_length_dpo),
}


# --- the recipe ----------------------------------------------------------------------------------------------


def _last_logs(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The last training log (loss, rewards/*, ...) without the end-of-training summary."""
    steps = [entry for entry in history if "loss" in entry]
    return dict(steps[-1]) if steps else {}


class TrlRecipe(Recipe):
    """A DPO-family baseline: plain preference pairs (or a parallel file's target side), rendered to
    ChatRenderer ids, and the method's TRL trainer. `pairs` given: trains on them instead of reading
    `data.path`. The reference is the adapter-disabled base under LoRA, a frozen copy under full
    fine-tuning (methods whose spec needs one)."""

    def __init__(self, config: RunConfig, spec: MethodSpec, pairs: list[PreferencePair] | None = None):
        super().__init__(config, spec)
        if spec.name not in TRL_TRAINERS:
            raise ConfigError(
                f"method {spec.name!r} has no TRL trainer (training/baselines.py: TRL_TRAINERS)"
            )
        self.how = TRL_TRAINERS[spec.name]
        self.given = pairs

    def load(self, tokenizer: Any) -> str:
        config = self.config
        self.invalid, self.languages = InvalidRecords(config.data.invalid), LanguageCheck()
        if self.given is not None:
            pairs = self.given
        else:
            pairs = load_preference_pairs(
                config.data.path, config.data.format, invalid=self.invalid, languages=self.languages
            )
            if config.data.max_examples:
                pairs = pairs[: config.data.max_examples]
            log.info("loaded %d preference pairs from %s", len(pairs), config.data.path)
        if not pairs:
            raise ConfigError("no preference pairs to train on")
        self.pairs = pairs
        self.renderer = ChatRenderer.from_config(tokenizer, config.chat)
        self.dataset = preference_dataset(self.renderer, pairs, self.how.rows, seed=config.train.seed)
        return hash_json([dataclasses.asdict(p) for p in pairs])

    def trainer(
        self,
        args: TrainingArguments,
        model: Any,
        ref_model: Any,
        tokenizer: Any,
        callbacks: list[TrainerCallback] | None,
    ) -> Trainer:
        if ref_model is not None:
            ref_model.requires_grad_(False).eval()
        # The TRL config classes take our TrainingArguments settings themselves (_trl_args).
        trainer = self.how.build(self.config, model, ref_model, tokenizer, self.dataset)
        add_callbacks(trainer)
        for callback in callbacks or []:
            trainer.add_callback(callback)
        return trainer

    def report(self, trainer: Trainer, metrics: dict[str, Any]) -> RecipeReport:
        config = self.config
        losses = [float(entry["loss"]) for entry in trainer.state.log_history if "loss" in entry]
        if not all(math.isfinite(x) for x in losses):
            log.warning("%s: non-finite training loss logged: %s", self.spec.name, losses)
        data = pair_counts(self.pairs)
        return RecipeReport(
            details={
                "renderer": self.renderer.fingerprint(),
                "data": data,
                "invalid_records": self.invalid.report(),
                "language_disagreements": self.languages.report(),
            },
            metrics={
                "losses": losses,
                "last_log": _last_logs(trainer.state.log_history),
                "examples": len(self.dataset),
                "pairs": len(self.pairs),
            },
            card_rows=[
                f"| data | `{config.data.path}`: {data['count']} preference pairs |",
                f"| beta | {config.method.beta} |",
            ],
        )
