"""Chat rendering for training and scoring: prompt/response ids with the model's own chat template.

The semantics reproduce the SaRFT authors' preprocessing, so that our numbers stay comparable to theirs:
the prompt is the chat template applied to [system?, user] with the generation header, the response is
the raw answer followed by an end token (`tokenizer.eos_token` as the authors, or the template's
end-of-turn token), both are tokenized separately without automatic special tokens, and each side is
truncated on its own (by default keeping its head). Rows without a system prompt can get an empty
system turn, as the authors' `sys_prompt=""` gives them (`empty_system`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from safetune.data.batching import IGNORE_INDEX
from safetune.errors import ConfigError
from safetune.storage import hash_json

SYSTEM_MODES = ("auto", "native", "prepend")
TRUNCATIONS = ("head", "tail")
END_TOKENS = ("eos", "template")

# Encoded to check that a tokenizer knows ordinary text (a broken folder can map everything to <unk>).
_VOCAB_SAMPLE = "Hello! How are you today? The quick brown fox jumps over the lazy dog, 42 times."
MAX_UNKNOWN_SHARE = 0.5


class ChatError(ConfigError, ValueError):
    """A tokenizer or template that cannot render chats as asked: one line and exit 2 in the CLI."""


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
        raise ChatError(f"chat.{name} must be a positive integer, got {value!r}")
    return value


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ChatError(f"chat.{name} must be one of {list(choices)}, got {value!r}")
    return str(value)


def _tokenizer_name(tokenizer: Any) -> str:
    return repr(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


def check_vocabulary(tokenizer: Any) -> None:
    """Refuse a tokenizer that encodes a plain English sample mostly as its unknown token."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        return
    ids = list(tokenizer.encode(_VOCAB_SAMPLE, add_special_tokens=False))
    unknown = sum(1 for i in ids if i == unk)
    if not ids or unknown / len(ids) > MAX_UNKNOWN_SHARE:
        raise ChatError(
            f"tokenizer {_tokenizer_name(tokenizer)} encodes {unknown} of {len(ids)} tokens of a plain English "
            f"sample as its unknown token {tokenizer.unk_token!r}: its vocabulary does not fit (a broken or "
            "wrong tokenizer folder?)"
        )


class ChatRenderer:
    """Turns (system, user, response) into token ids the way the SaRFT authors did.

    Args:
        tokenizer: any Hugging Face tokenizer with a chat template (and a vocabulary that knows plain
            text: one that encodes a sample mostly as its unknown token is refused).
        max_prompt_tokens / max_response_tokens: per-side token limits (the authors truncate each side
            on its own, never the joined sequence).
        system_mode: "native" sends a system message; "prepend" writes `system + " " + user` into the
            user turn, for templates without a system role (Gemma-2); "auto" probes the template once.
        prompt_truncation: "head" keeps the first `max_prompt_tokens` prompt tokens (the authors'
            choice: an over-long prompt loses its generation header); "tail" keeps the last ones
            (keeps the header, and BOS stays first).
        empty_system: render rows without a system prompt with an empty one, as the SaRFT authors'
            `sys_prompt=""`: an empty system turn ("native"), which also stops templates such as
            Qwen2.5's from inserting their default system prompt, or `" " + user` ("prepend").
            False: no system turn at all (the template's own default applies).
        end_token: what follows each response: "eos" = `tokenizer.eos_token` (both the SaRFT and the
            MPO authors; `<eos>` for Gemma-2), "template" = the template's end-of-turn token
            (`<end_of_turn>` for Gemma-2; the same token for Llama-3-Instruct and Qwen2.5-Instruct).

    The constructor's defaults (no empty system turn, template end token) are the plain rendering
    used by generation and the demo organisms; `from_config` applies the `chat` section, whose
    defaults are the authors'.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        max_prompt_tokens: int = 512,
        max_response_tokens: int = 128,
        system_mode: str = "auto",
        prompt_truncation: str = "head",
        empty_system: bool = False,
        end_token: str = "template",
    ):
        self.max_prompt_tokens = _check_limit("max_prompt_tokens", max_prompt_tokens)
        self.max_response_tokens = _check_limit("max_response_tokens", max_response_tokens)
        self.requested_system_mode = _check_choice("system_mode", system_mode, SYSTEM_MODES)
        self.prompt_truncation = _check_choice("prompt_truncation", prompt_truncation, TRUNCATIONS)
        self.end_token_choice = _check_choice("end_token", end_token, END_TOKENS)
        self.empty_system = bool(empty_system)
        if not getattr(tokenizer, "chat_template", None):
            raise ChatError(
                f"tokenizer {_tokenizer_name(tokenizer)} has no chat template (chat_template); "
                "safetune renders chats with it: use a chat/instruct model's tokenizer"
            )
        check_vocabulary(tokenizer)
        self.tokenizer = tokenizer
        self.system_mode = self._resolve_system_mode(self.requested_system_mode)
        self.template_end_token = self._detect_end_token()
        eos = str(tokenizer.eos_token or "")
        if self.end_token_choice == "eos" and not eos:
            raise ChatError(
                f"chat.end_token=eos, but tokenizer {_tokenizer_name(tokenizer)} has no eos_token"
            )
        self.end_token = eos if self.end_token_choice == "eos" else self.template_end_token
        self._bos_id: int | None = tokenizer.bos_token_id
        # The model expects BOS when the tokenizer's default encoding starts with it (Llama-3, Gemma).
        default_ids = tokenizer("a")["input_ids"]
        self._wants_bos = self._bos_id is not None and default_ids[:1] == [self._bos_id]

    @classmethod
    def from_config(
        cls, tokenizer: PreTrainedTokenizerBase, chat: Any, *, authors_empty_system: bool = False
    ) -> ChatRenderer:
        """From a `config.ChatConfig` (the `chat` section of a run config). `chat.empty_system` unset
        (None) takes `authors_empty_system`: what the method's authors rendered (True for SaRFT)."""
        empty_system = getattr(chat, "empty_system", None)
        return cls(
            tokenizer,
            chat.max_prompt_tokens,
            chat.max_response_tokens,
            chat.system_mode,
            chat.prompt_truncation,
            empty_system=authors_empty_system if empty_system is None else empty_system,
            end_token=getattr(chat, "end_token", "eos"),
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
            raise ChatError(
                f"chat.system_mode=native, but the chat template of {_tokenizer_name(self.tokenizer)} rejects "
                "or drops system messages; use chat.system_mode=prepend (or auto)"
            )
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
        """[system?, user]. An empty or None system means no system prompt, or with `empty_system` an
        empty one (as the authors: an empty system turn, or `"" + " " + user` when prepending)."""
        if not system:
            if not self.empty_system:
                return [{"role": "user", "content": user}]
            system = ""
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

    def chat_text(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        """The chat template applied to any message list (multi-turn rendering, data/turns.py)."""
        return self._render(messages, add_generation_prompt)

    def text_ids(self, text: str) -> list[int]:
        """Token ids of rendered chat text, with exactly one BOS where the model expects it; untruncated."""
        return self._fix_bos(self._encode(text))

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

    def encode_continuation(
        self, user: str, prefix: str, rest: str, system: str | None = None
    ) -> EncodedExample:
        """Prompt + the response `prefix + rest`, learning only `rest`: the assistant turn starts with a
        given `prefix` the model continues (SDRRL's completion data). The response is tokenized whole,
        as at generation time; the masked part is the longest run of its first tokens that tokenizing
        `prefix` alone also gives, so a token merged across the boundary is learned, never hidden."""
        prompt = self.prompt_ids(user, system)
        answer = self.response_ids(prefix + rest)
        alone = self._encode(prefix)
        given = 0
        while given < min(len(alone), len(answer)) and alone[given] == answer[given]:
            given += 1
        return EncodedExample(
            input_ids=prompt + answer,
            labels=[IGNORE_INDEX] * (len(prompt) + given) + answer[given:],
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
                "empty_system": self.empty_system,
                "max_prompt_tokens": self.max_prompt_tokens,
                "max_response_tokens": self.max_response_tokens,
                "prompt_truncation": self.prompt_truncation,
                "system_mode": [self.requested_system_mode, self.system_mode],
            }
        )
