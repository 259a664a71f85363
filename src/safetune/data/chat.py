"""Chat rendering for training and scoring: prompt/response ids with the model's own chat template.

The semantics reproduce the SaRFT authors' preprocessing, so that our numbers stay comparable to theirs:
the prompt is the chat template applied to [system?, user] with the generation header, the response is
the raw answer followed by the template's end-of-turn token, both are tokenized separately without
automatic special tokens, and each side is truncated on its own (by default keeping its head).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from safetune.methods.losses import IGNORE_INDEX
from safetune.storage import hash_json

SYSTEM_MODES = ("auto", "native", "prepend")
TRUNCATIONS = ("head", "tail")

# Unlikely strings used to probe a template: they must survive rendering untouched.
_SYSTEM_PROBE = "XQZSYSTEMPROBE"
_RESPONSE_PROBE = "XQZMARK"


@dataclass(frozen=True)
class EncodedExample:
    """One training example: prompt + response ids, with the prompt masked out of the loss."""

    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX on every prompt token, the response ids elsewhere
    prompt_len: int


def _check_limit(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return str(value)


class ChatRenderer:
    """Turns (system, user, response) into token ids the way the SaRFT authors did.

    Args:
        tokenizer: any Hugging Face tokenizer with a chat template.
        max_prompt_tokens / max_response_tokens: per-side token limits (the authors truncate each side
            on its own, never the joined sequence).
        system_mode: "native" sends a system message; "prepend" writes `system + " " + user` into the
            user turn, for templates without a system role (Gemma-2); "auto" probes the template once.
        prompt_truncation: "head" keeps the first `max_prompt_tokens` prompt tokens (the authors'
            choice: an over-long prompt loses its generation header); "tail" keeps the last ones
            (keeps the header, and BOS stays first).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        max_prompt_tokens: int = 512,
        max_response_tokens: int = 128,
        system_mode: str = "auto",
        prompt_truncation: str = "head",
    ):
        self.max_prompt_tokens = _check_limit("max_prompt_tokens", max_prompt_tokens)
        self.max_response_tokens = _check_limit("max_response_tokens", max_response_tokens)
        self.requested_system_mode = _check_choice("system_mode", system_mode, SYSTEM_MODES)
        self.prompt_truncation = _check_choice("prompt_truncation", prompt_truncation, TRUNCATIONS)
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat_template; "
                "ChatRenderer needs a chat model's tokenizer"
            )
        self.tokenizer = tokenizer
        self.system_mode = self._resolve_system_mode(self.requested_system_mode)
        self.end_token = self._detect_end_token()
        self._bos_id: int | None = tokenizer.bos_token_id
        # The model expects BOS when the tokenizer's default encoding starts with it (Llama-3, Gemma).
        default_ids = tokenizer("a")["input_ids"]
        self._wants_bos = self._bos_id is not None and default_ids[:1] == [self._bos_id]

    @classmethod
    def from_config(cls, tokenizer: PreTrainedTokenizerBase, chat: Any) -> ChatRenderer:
        """From a `config.ChatConfig` (the `chat` section of a run config)."""
        return cls(
            tokenizer,
            chat.max_prompt_tokens,
            chat.max_response_tokens,
            chat.system_mode,
            chat.prompt_truncation,
        )

    @property
    def supports_system(self) -> bool:
        """Whether system prompts go in a native system turn (else they are prepended to the user turn)."""
        return self.system_mode == "native"

    # --- probing the template -------------------------------------------------------------------

    def _render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        text: Any = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
        if not isinstance(text, str):
            raise TypeError(f"apply_chat_template(tokenize=False) returned {type(text).__name__}, not str")
        return text

    def _template_has_system(self) -> bool:
        """True if the template accepts a system turn and keeps its text (Gemma-2's raises)."""
        messages = [{"role": "system", "content": _SYSTEM_PROBE}, {"role": "user", "content": "u"}]
        try:
            return _SYSTEM_PROBE in self._render(messages, add_generation_prompt=True)
        except Exception:  # jinja's TemplateError from raise_exception, or anything a template throws
            return False

    def _resolve_system_mode(self, requested: str) -> str:
        if requested == "prepend":
            return "prepend"
        has_system = self._template_has_system()
        if requested == "native" and not has_system:
            raise ValueError("system_mode='native' but this chat template rejects or drops system messages")
        return "native" if has_system else "prepend"

    def _detect_end_token(self) -> str:
        """The first special token the template writes after an assistant turn's text.

        Llama-3 -> <|eot_id|>, ChatML -> <|im_end|>, Gemma -> <end_of_turn>; falls back to eos_token.
        """
        messages = [{"role": "user", "content": "u"}, {"role": "assistant", "content": _RESPONSE_PROBE}]
        fallback = str(self.tokenizer.eos_token or "")
        try:
            text = self._render(messages, add_generation_prompt=False)
        except Exception:
            return fallback
        after = text.partition(_RESPONSE_PROBE)[2]
        specials = set(self.tokenizer.all_special_tokens) | set(self.tokenizer.get_added_vocab())
        found = [(after.find(tok), -len(tok), tok) for tok in specials if tok and tok in after]
        # Earliest match wins; on a tie the longest token (a token may be a prefix of another).
        return min(found)[2] if found else fallback

    # --- rendering --------------------------------------------------------------------------------

    def _messages(self, user: str, system: str | None) -> list[dict[str, str]]:
        """[system?, user]; an empty or None system means no system prompt at all."""
        if not system:
            return [{"role": "user", "content": user}]
        if self.system_mode == "prepend":
            # The authors join with a single space for templates without a system role.
            return [{"role": "user", "content": system + " " + user}]
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    def prompt_text(self, user: str, system: str | None = None) -> str:
        """The chat template applied to [system?, user], ending with the assistant generation header."""
        return self._render(self._messages(user, system), add_generation_prompt=True)

    def _encode(self, text: str) -> list[int]:
        # No automatic specials: the template already writes BOS where the model needs it.
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def _fix_bos(self, ids: list[int]) -> list[int]:
        """Exactly one BOS for models that expect one, and never a doubled BOS."""
        bos = self._bos_id
        if bos is None:
            return ids
        if self._wants_bos and ids[:1] != [bos]:
            ids = [bos, *ids]
        while ids[:2] == [bos, bos]:
            ids = ids[1:]
        return ids

    def _truncate_prompt(self, ids: list[int]) -> list[int]:
        limit = self.max_prompt_tokens
        if len(ids) <= limit:
            return ids
        if self.prompt_truncation == "head":
            return ids[:limit]
        if self._bos_id is not None and ids[:1] == [self._bos_id]:
            # Tail keeps the generation header, but BOS must stay the first token.
            return [ids[0], *ids[len(ids) - (limit - 1) :]] if limit > 1 else ids[:1]
        return ids[len(ids) - limit :]

    def prompt_ids(self, user: str, system: str | None = None) -> list[int]:
        """Token ids of `prompt_text`, with exactly one BOS where the model expects it, truncated."""
        return self._truncate_prompt(self._fix_bos(self._encode(self.prompt_text(user, system))))

    def response_ids(self, response: str) -> list[int]:
        """Token ids of `response + end_token`, keeping the first `max_response_tokens`.

        Head truncation cuts the end token from over-long responses, as in the authors' runs.
        """
        return self._encode(response + self.end_token)[: self.max_response_tokens]

    def encode(self, user: str, response: str, system: str | None = None) -> EncodedExample:
        """Prompt + response ids; labels ignore the prompt so only the response is learned."""
        prompt = self.prompt_ids(user, system)
        answer = self.response_ids(response)
        return EncodedExample(
            input_ids=prompt + answer,
            labels=[IGNORE_INDEX] * len(prompt) + answer,
            prompt_len=len(prompt),
        )

    def fingerprint(self) -> str:
        """sha256 of everything that changes the ids (template, specials, limits, modes), for cache keys."""
        tok = self.tokenizer
        specials = {token: tok.convert_tokens_to_ids(token) for token in sorted(tok.all_special_tokens)}
        return hash_json(
            {
                "chat_template": tok.chat_template,
                "special_tokens": specials,
                "bos_token": tok.bos_token,
                "eos_token": tok.eos_token,
                "wants_bos": self._wants_bos,
                "end_token": self.end_token,
                "max_prompt_tokens": self.max_prompt_tokens,
                "max_response_tokens": self.max_response_tokens,
                "prompt_truncation": self.prompt_truncation,
                "system_mode": [self.requested_system_mode, self.system_mode],
            }
        )
