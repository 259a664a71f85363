"""Generation backends: turn GenerationRequests into GenerationResults (`generation.backend`).

    hf    transformers `generate`, batched (left padding, length-sorted batches, KV cache). Any machine.
    vllm  vLLM offline engine (`pip install vllm`, a CUDA GPU); the fastest for large evaluations.
    mock  no model: a deterministic refusal or compliance per request, for tests and dry runs.

Both model backends render prompts identically: the tokenizer's own chat template through ChatRenderer
(exactly one BOS, system prompt prepended to the user turn for templates without a system role, over-long
prompts keep their last `max_prompt_tokens` tokens so the generation header survives), given to the
engine as token ids. Generation stops at the tokenizer's eos and at the template's end-of-turn token
(plus any eos ids in the model's generation_config); `finish_reason` is "stop" when one was produced,
"length" when `max_new_tokens` ran out. The request's `system` field is the system prompt (the runner
fills it from `generation.system`). A request with a `history` (multi-turn safety) is rendered as chat
messages through the same template (`request_ids`); one without renders exactly as before.

Decoding is greedy unless `do_sample` (with temperature > 0): then temperature + nucleus (top_p) sampling,
with no model-specific defaults (top_k, repetition penalty) mixed in. Each request draws from its own
random stream seeded by (seed, request id), so a sample does not depend on batch size, batch order or on
the other prompts of its batch, and a resumed run gets the same samples.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from transformers import LogitsProcessorList

from safetune import console
from safetune.config import GenerationConfig
from safetune.data.batching import length_sorted_batches, pad_batch
from safetune.data.chat import ChatRenderer
from safetune.data.records import Conversation, Message
from safetune.data.turns import ConversationSkipped, render_prompt
from safetune.decoding.sampling import gumbel_scores
from safetune.errors import ConfigError
from safetune.evaluation.items import Backend, GenerationRequest, GenerationResult
from safetune.models.loading import default_device, load_for_generation, load_tokenizer, resolve_dtype
from safetune.models.source import ModelSource

log = logging.getLogger(__name__)

MOCK_REFUSAL = "I'm sorry, but I can't help with that."
MOCK_COMPLIANCE = "Sure, here is how to do it: step 1 ..."


def request_seed(seed: int, request_id: str) -> int:
    """A 63-bit seed for one request's random stream: a stable function of (seed, request id)."""
    digest = hashlib.sha256(f"{seed}\x00{request_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def is_sampling(config: GenerationConfig) -> bool:
    """Sampling when `do_sample` with a positive temperature; temperature 0 is greedy (as in vLLM)."""
    if not 0 < config.top_p <= 1:
        raise ConfigError(f"generation.top_p must be in (0, 1], got {config.top_p}")
    if config.temperature < 0:
        raise ConfigError(f"generation.temperature must be >= 0, got {config.temperature}")
    return config.do_sample and config.temperature > 0


def make_renderer(tokenizer: Any, config: GenerationConfig) -> ChatRenderer:
    """The evaluation renderer: the model's chat template, tail truncation (keeps the header and BOS)."""
    try:
        return ChatRenderer(
            tokenizer,
            max_prompt_tokens=config.max_prompt_tokens,
            max_response_tokens=1,
            system_mode="auto",
            prompt_truncation="tail",
        )
    except ValueError as err:
        raise ConfigError(str(err)) from err


def request_ids(
    renderer: ChatRenderer, request: GenerationRequest, max_prompt_tokens: int | None
) -> list[int]:
    """The token ids a request is answered from. Single-turn: `ChatRenderer.prompt_ids`, as always.
    With a history: the conversation rendered as messages by data/turns.py's `render_prompt` (the
    greeting-first opening turn, whole turns cut from the start of the history to fit); a last user
    turn too long even alone is cut like a single-turn prompt (its tail kept)."""
    if not request.history:
        return renderer.prompt_ids(request.user, request.system)
    messages = tuple(Message(_role(request.id, role), content) for role, content in request.history)
    conversation = Conversation(request.id, (*messages, Message("user", request.user)), system=request.system)
    try:
        return render_prompt(renderer, conversation, max_tokens=max_prompt_tokens)
    except ConversationSkipped:
        return renderer.prompt_ids(request.user, request.system)


def _role(request_id: str, role: str) -> Literal["user", "assistant"]:
    if role == "user":
        return "user"
    if role == "assistant":
        return "assistant"
    raise ConfigError(
        f"request {request_id}: a history message's role must be user or assistant, got {role!r}"
    )


def stop_token_ids(
    tokenizer: Any, renderer: ChatRenderer, model_eos: int | list[int] | None = None
) -> list[int]:
    """eos, the template's end-of-turn token and the model's generation_config eos ids, deduplicated."""
    candidates: list[Any] = [tokenizer.eos_token_id]
    if renderer.end_token:
        end_id = tokenizer.convert_tokens_to_ids(renderer.end_token)
        unk_id = getattr(tokenizer, "unk_token_id", None)
        if end_id is not None and (end_id != unk_id or renderer.end_token == tokenizer.unk_token):
            candidates.append(end_id)
    candidates.extend(model_eos if isinstance(model_eos, list) else [model_eos])
    ids = [int(i) for i in candidates if isinstance(i, int)]
    if not ids:
        raise ConfigError("the tokenizer has neither an eos token nor a chat-template end-of-turn token")
    return list(dict.fromkeys(ids))


def generation_result(
    request_id: str, new_tokens: list[int], stops: set[int], tokenizer: Any
) -> GenerationResult:
    """Cut at the first end token (counted), decode without special tokens, strip."""
    end = next((i + 1 for i, token in enumerate(new_tokens) if token in stops), None)
    kept = new_tokens if end is None else new_tokens[:end]
    text = tokenizer.decode(kept, skip_special_tokens=True).strip()
    return GenerationResult(request_id, text, len(kept), "length" if end is None else "stop")


# --- hf ------------------------------------------------------------------------------------------------


class _PerRequestSampler:
    """A logits processor that turns greedy decoding into sampling with one random stream per row
    (decoding/sampling.py: Gumbel-max with each row's own generator, seeded by `request_seed`)."""

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float, device: torch.device):
        self.temperature, self.top_p = temperature, top_p
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        return gumbel_scores(scores, self.generators, self.temperature, self.top_p)


class HFBackend:
    """Batched transformers generation on an already loaded model (see `build_backend` to load one).

    Requests are rendered with the model's chat template, sorted by prompt length into batches of
    `batch_size` (fewer pad tokens), left-padded with an attention mask (positions follow the mask), and
    decoded with the KV cache. Results are yielded batch by batch, longest prompts first.
    """

    name = "hf"

    def __init__(self, model: Any, tokenizer: Any, config: GenerationConfig, progress: bool = True):
        from transformers import GenerationConfig as HFGenerationConfig

        self.model, self.tokenizer, self.config, self.progress = model, tokenizer, config, progress
        self.renderer = make_renderer(tokenizer, config)
        model_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        self.stop_ids = stop_token_ids(tokenizer, self.renderer, model_eos)
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else self.stop_ids[0]
        self.sampling = is_sampling(config)
        # Every decoding knob explicit: transformers fills unset ones from the model's generation_config
        # (e.g. a repetition penalty or top_k), which would make models decode under different rules.
        self.generation_config = HFGenerationConfig(
            max_new_tokens=config.max_new_tokens,
            min_new_tokens=0,
            do_sample=False,  # sampling, when asked, is done by _PerRequestSampler on top of argmax
            num_beams=1,
            temperature=1.0,
            top_p=1.0,
            top_k=50,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            use_cache=True,
            eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id,
            bos_token_id=tokenizer.bos_token_id,
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        return request_ids(self.renderer, request, self.config.max_prompt_tokens)

    def generate(self, requests: Sequence[GenerationRequest]) -> Iterator[list[GenerationResult]]:
        prompts = [self.prompt_ids(r) for r in requests]
        batches = length_sorted_batches([len(p) for p in prompts], self.config.batch_size)
        with console.progress(
            total=len(requests), desc="generating", unit="prompt", enabled=self.progress
        ) as bar:
            for batch in batches:
                results = self._generate_batch([requests[i] for i in batch], [prompts[i] for i in batch])
                bar.update(len(batch))
                yield results

    @torch.inference_mode()
    def _generate_batch(
        self, requests: list[GenerationRequest], prompts: list[list[int]]
    ) -> list[GenerationResult]:
        device = self.device
        batch = pad_batch(prompts, None, self.pad_id, side="left")
        input_ids = batch["input_ids"].to(device)
        processors = LogitsProcessorList()
        if self.sampling:
            seeds = [request_seed(self.config.seed, r.id) for r in requests]
            processors.append(_PerRequestSampler(seeds, self.config.temperature, self.config.top_p, device))
        output = self.model.generate(
            input_ids=input_ids,
            attention_mask=batch["attention_mask"].to(device),
            generation_config=self.generation_config,
            logits_processor=processors,
        )
        new_tokens = output[:, input_ids.shape[1] :].tolist()
        stops = set(self.stop_ids)
        return [
            generation_result(r.id, row, stops, self.tokenizer)
            for r, row in zip(requests, new_tokens, strict=True)
        ]


def _build_hf(source: ModelSource, config: GenerationConfig) -> Backend:
    model, tokenizer = load_for_generation(
        source, resolve_dtype(config.precision), default_device(), config.trust_remote_code
    )
    return HFBackend(model, tokenizer, config)


# --- vllm ----------------------------------------------------------------------------------------------

_VLLM_CHUNK = 512  # requests per llm.generate call: vLLM schedules its own batches inside a chunk
_VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256)  # max_lora_rank values every vLLM >= 0.6 accepts
_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def _lora_rank(adapter: str) -> int:
    import json

    config = json.loads((Path(adapter) / "adapter_config.json").read_text(encoding="utf-8"))
    rank = max([int(config.get("r") or 8), *map(int, (config.get("rank_pattern") or {}).values())])
    return next((r for r in _VLLM_LORA_RANKS if r >= rank), rank)


class VLLMBackend:
    """vLLM offline engine. Same prompts (token ids from ChatRenderer) and stop tokens as `hf`; per-request
    seeds when sampling. Requests go to vLLM in chunks of max(batch_size, 512): vLLM batches internally,
    and each chunk's results are yielded as soon as it is done."""

    name = "vllm"

    def __init__(self, source: ModelSource, config: GenerationConfig, vllm: Any, lora_request: Any):
        self.config, self.vllm = config, vllm
        tokenizer_id = source.tokenizer or source.base
        tokenizer_revision = source.revision if tokenizer_id == source.base else None
        self.tokenizer = load_tokenizer(tokenizer_id, tokenizer_revision, config.trust_remote_code)
        self.renderer = make_renderer(self.tokenizer, config)
        self.stop_ids = stop_token_ids(self.tokenizer, self.renderer)
        self.sampling = is_sampling(config)
        options: dict[str, Any] = {}
        if source.adapter:
            options = {"enable_lora": True, "max_lora_rank": _lora_rank(source.adapter), "max_loras": 1}
        self.llm = vllm.LLM(
            model=source.base,
            tokenizer=tokenizer_id,
            revision=source.revision,
            tokenizer_revision=tokenizer_revision,
            dtype=_DTYPE_NAMES[resolve_dtype(config.precision)],
            seed=config.seed,
            gpu_memory_utilization=config.gpu_memory_utilization,
            trust_remote_code=config.trust_remote_code,
            **options,
        )
        self.lora = lora_request("adapter", 1, source.adapter) if source.adapter else None

    def _params(self, request: GenerationRequest) -> Any:
        c = self.config
        return self.vllm.SamplingParams(
            n=1,
            max_tokens=c.max_new_tokens,
            temperature=c.temperature if self.sampling else 0.0,
            top_p=c.top_p if self.sampling else 1.0,
            seed=request_seed(c.seed, request.id) if self.sampling else None,
            stop_token_ids=self.stop_ids,
            skip_special_tokens=True,
        )

    def generate(self, requests: Sequence[GenerationRequest]) -> Iterator[list[GenerationResult]]:
        chunk = max(self.config.batch_size, _VLLM_CHUNK)
        # One bar over every chunk (vLLM's own, one per chunk, is off).
        with console.progress(total=len(requests), desc="generating", unit="prompt") as bar:
            for start in range(0, len(requests), chunk):
                part = list(requests[start : start + chunk])
                results = self._generate_chunk(part)
                bar.update(len(part))
                yield results

    def _generate_chunk(self, part: list[GenerationRequest]) -> list[GenerationResult]:
        max_tokens = self.config.max_prompt_tokens
        prompts = [{"prompt_token_ids": request_ids(self.renderer, r, max_tokens)} for r in part]
        outputs = self.llm.generate(
            prompts, sampling_params=[self._params(r) for r in part], lora_request=self.lora, use_tqdm=False
        )
        results = []
        for request, output in zip(part, outputs, strict=True):
            completion = output.outputs[0]
            finish: Literal["stop", "length"] = "stop" if completion.finish_reason == "stop" else "length"
            results.append(
                GenerationResult(request.id, completion.text.strip(), len(completion.token_ids), finish)
            )
        return results


def _build_vllm(source: ModelSource, config: GenerationConfig) -> Backend:
    try:
        import vllm
        from vllm.lora.request import LoRARequest
    except ImportError as err:
        raise ConfigError(
            "generation.backend=vllm needs vLLM, which is not installed: pip install vllm "
            "(Linux + CUDA GPU), or use generation.backend=hf"
        ) from err
    return VLLMBackend(source, config, vllm, LoRARequest)


# --- mock ----------------------------------------------------------------------------------------------


class MockBackend:
    """No model. Each request gets MOCK_REFUSAL or MOCK_COMPLIANCE: the one its user text asks for with
    "[[refuse]]" / "[[comply]]", else a stable hash of (seed, request id) picks (about half each).
    Deterministic across runs, processes and batch sizes; batches of `batch_size`."""

    name = "mock"

    def __init__(self, config: GenerationConfig):
        self.config = config

    def answer(self, request: GenerationRequest) -> str:
        if "[[refuse]]" in request.user:
            return MOCK_REFUSAL
        if "[[comply]]" in request.user:
            return MOCK_COMPLIANCE
        return MOCK_REFUSAL if request_seed(self.config.seed, request.id) % 2 == 0 else MOCK_COMPLIANCE

    def generate(self, requests: Sequence[GenerationRequest]) -> Iterator[list[GenerationResult]]:
        size = self.config.batch_size
        for start in range(0, len(requests), size):
            batch = []
            for request in requests[start : start + size]:
                text = self.answer(request)
                batch.append(GenerationResult(request.id, text, len(text.split()), "stop"))
            yield batch


# --- registry ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackendSpec:
    """A generation backend: `shards` when each process of a multi-process launch can load its own copy
    on its own device and answer its share of the requests (vLLM spreads one engine over the GPUs
    itself: one process)."""

    name: str
    description: str
    build: Callable[[ModelSource, GenerationConfig], Backend]
    shards: bool = True


BACKENDS: dict[str, BackendSpec] = {
    spec.name: spec
    for spec in (
        BackendSpec("hf", "transformers generate, batched with left padding (any machine)", _build_hf),
        BackendSpec("vllm", "vLLM offline engine (pip install vllm; CUDA GPU)", _build_vllm, shards=False),
        BackendSpec(
            "mock", "no model: deterministic refusal/compliance, for tests", lambda _s, c: MockBackend(c)
        ),
    )
}


def backend_spec(config: GenerationConfig) -> BackendSpec:
    """The backend named by `config.backend`, its sampling settings checked; loads nothing (ConfigError
    for an unknown name or bad settings)."""
    spec = BACKENDS.get(config.backend)
    if spec is None:
        raise ConfigError(
            f"generation.backend: unknown backend {config.backend!r} (known: {', '.join(BACKENDS)})"
        )
    is_sampling(config)
    return spec


def build_backend(source: ModelSource, config: GenerationConfig) -> Backend:
    """The backend named by `config.backend`, loaded for `source` (ConfigError for an unknown name)."""
    return backend_spec(config).build(source, config)  # bad settings fail before a model is loaded
