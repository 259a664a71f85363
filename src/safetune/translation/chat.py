"""A chat model as translator: each piece goes into a translation request in the user turn, rendered
with the model's own chat template (data/chat.py, the renderer every safetune generation uses), and
the answer is the translation.

The request (`translate.prompt`, placeholders {source}, {target}, {text}) names both languages in
English; the default is safetune's own wording (`DEFAULT_PROMPT`). Decoding is greedy by default
(`translate.num_beams` 1), stopping at the tokenizer's eos or the template's end-of-turn token; the
answer is taken as it comes, stripped of surrounding whitespace (a chatty model's "Here is the
translation:" stays in: pick a model that follows the instruction, or write a stricter prompt). Any
language of translation/languages.py is accepted: whether the model knows it is the user's call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from safetune.config import TranslateConfig
from safetune.data.batching import pad_batch
from safetune.data.chat import ChatRenderer
from safetune.errors import ConfigError
from safetune.models.loading import (
    check_model_folder,
    default_device,
    load_causal_lm,
    load_tokenizer,
    model_fingerprint,
    resolve_dtype,
)
from safetune.translation.base import TranslatorIdentity
from safetune.translation.languages import resolve

DEFAULT_PROMPT = (
    "Translate the following {source} text into {target}. Reply with the {target} translation only, "
    "with no notes or explanations.\n\n{text}"
)
_TEMPLATE_ROOM = 512  # tokens of instruction and template around a piece (the renderer's prompt limit)


class ChatTranslator(TranslatorIdentity):
    kind = "chat"

    def __init__(self, config: TranslateConfig):
        assert config.model is not None
        check_model_folder(config.model, "translation model")
        self.config, self.model_id = config, config.model
        self.tokenizer = load_tokenizer(config.model, config.revision, config.trust_remote_code)
        try:
            self.renderer = ChatRenderer(
                self.tokenizer,
                max_prompt_tokens=config.max_input_tokens + _TEMPLATE_ROOM,
                max_response_tokens=1,
                system_mode="auto",
                prompt_truncation="tail",
            )
        except ValueError as err:
            raise ConfigError(f"translate.kind=chat: {err}") from None
        self.prompt = config.prompt or DEFAULT_PROMPT
        self.num_beams = config.num_beams or 1
        self.fingerprint = model_fingerprint(config.model, config.revision)
        self._model: Any = None

    def check_pairs(self, pairs: Sequence[tuple[str, str]]) -> None:
        for source, target in pairs:
            resolve(source), resolve(target)  # both named in the table (the prompt needs their names)

    def _load(self) -> Any:
        if self._model is None:
            c = self.config
            model = load_causal_lm(self.model_id, c.revision, resolve_dtype(c.precision), c.trust_remote_code)
            self._model = model.to(c.device or default_device()).eval()
        return self._model

    def _stop_ids(self, model: Any) -> list[int]:
        ids = [self.tokenizer.eos_token_id]
        if self.renderer.end_token:
            ids.append(self.tokenizer.convert_tokens_to_ids(self.renderer.end_token))
        own = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        ids.extend(own if isinstance(own, list) else [own])
        return list(dict.fromkeys(int(i) for i in ids if isinstance(i, int)))

    @torch.inference_mode()
    def _translate_pieces(
        self, pieces: Sequence[str], source: str, target: str
    ) -> tuple[list[str], list[bool]]:
        from transformers import GenerationConfig

        model = self._load()
        names = {"source": resolve(source).name, "target": resolve(target).name}
        prompts = [self.renderer.prompt_ids(self.prompt.format(text=p, **names)) for p in pieces]
        stops = self._stop_ids(model)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else stops[0]
        # Every decoding knob explicit: the model's generation_config (sampling, penalties) is not used.
        generation = GenerationConfig(
            max_new_tokens=self.config.max_new_tokens,
            do_sample=False,
            num_beams=self.num_beams,
            repetition_penalty=1.0,
            eos_token_id=stops,
            pad_token_id=pad,
            bos_token_id=self.tokenizer.bos_token_id,
        )
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        out: list[str] = [""] * len(prompts)
        ran_out: list[bool] = [False] * len(prompts)
        for start in range(0, len(order), self.config.batch_size):
            batch = order[start : start + self.config.batch_size]
            padded = pad_batch([prompts[i] for i in batch], None, pad, side="left")
            input_ids = padded["input_ids"].to(model.device)
            output = model.generate(
                input_ids=input_ids,
                attention_mask=padded["attention_mask"].to(model.device),
                generation_config=generation,
            )
            for i, row in zip(batch, output[:, input_ids.shape[1] :].tolist(), strict=True):
                end = next((k for k, token in enumerate(row) if token in stops), None)
                ran_out[i] = end is None
                out[i] = self.tokenizer.decode(
                    row if end is None else row[:end], skip_special_tokens=True
                ).strip()
        return out, ran_out


def build(config: TranslateConfig) -> ChatTranslator:
    return ChatTranslator(config)
