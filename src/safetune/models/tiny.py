"""Tiny random chat models built locally, for tests and demos that must run offline in seconds.

Each model is a small random-init Llama with a byte-level BPE tokenizer trained on a seeded corpus, plus
a chat template that mirrors the structure of a real family (ChatML/Qwen, Llama-3-Instruct, Gemma-2).
The templates are written in our own words; only the token layout copies the real ones, because that
layout (BOS handling, end-of-turn tokens, missing system role) is what chat-rendering code must handle.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast


@dataclass(frozen=True)
class TemplateStyle:
    """The special tokens and chat template of one chat-model family.

    `specials_first` mirrors where the real family keeps its special tokens: Gemma at the start of the
    vocabulary (pad=0, eos=1, bos=2), Qwen and Llama-3 after the learned tokens.
    """

    name: str
    chat_template: str
    special_tokens: tuple[str, ...]
    eos_token: str
    pad_token: str
    end_of_turn: str
    generation_header: str
    bos_token: str | None = None
    unk_token: str | None = None
    specials_first: bool = False


# ChatML as in Qwen2.5/Qwen3: no BOS anywhere, every turn closed by <|im_end|> and a newline.
_CHATML_TEMPLATE = (
    "{%- for turn in messages -%}"
    "{{ '<|im_start|>' + turn['role'] + '\\n' + turn['content'] + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

# Llama-3-Instruct: the template itself writes BOS once; contents are trimmed; turns end with <|eot_id|>.
_LLAMA3_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for turn in messages -%}"
    "{{ '<|start_header_id|>' + turn['role'] + '<|end_header_id|>\\n\\n' }}"
    "{{- turn['content'] | trim -}}"
    "{{ '<|eot_id|>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif -%}"
)

# Gemma-2: BOS from the template, no system role (it raises, as the real one does), the assistant is
# called "model", roles must alternate user/model.
_GEMMA_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{{ raise_exception('This template has no system role.') }}"
    "{%- endif -%}"
    "{%- for turn in messages -%}"
    "{%- if (turn['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Turns must alternate user, assistant, user, ...') }}"
    "{%- endif -%}"
    "{%- set speaker = 'model' if turn['role'] == 'assistant' else turn['role'] -%}"
    "{{ '<start_of_turn>' + speaker + '\\n' }}{{- turn['content'] | trim -}}{{ '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)

TEMPLATES: dict[str, TemplateStyle] = {
    "chatml": TemplateStyle(
        name="chatml",
        chat_template=_CHATML_TEMPLATE,
        special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        end_of_turn="<|im_end|>",
        generation_header="<|im_start|>assistant\n",
    ),
    "llama3": TemplateStyle(
        name="llama3",
        chat_template=_LLAMA3_TEMPLATE,
        special_tokens=(
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
            "<|finetune_right_pad_id|>",
        ),
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>",
        end_of_turn="<|eot_id|>",
        generation_header="<|start_header_id|>assistant<|end_header_id|>\n\n",
    ),
    "gemma": TemplateStyle(
        name="gemma",
        chat_template=_GEMMA_TEMPLATE,
        special_tokens=("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"),
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        end_of_turn="<end_of_turn>",
        generation_header="<start_of_turn>model\n",
        specials_first=True,
    ),
}

_SUBJECTS = (
    "the cat", "the dog", "a child", "my friend", "the teacher", "a farmer", "the doctor", "our team",
    "the old man", "a young girl", "the baker", "the driver", "a student", "the pilot", "my sister",
    "the writer", "a nurse", "the chef", "the king", "a robot", "the bird", "the fox", "my neighbour",
    "the artist", "a sailor", "the judge", "the singer", "a worker", "the captain", "the scientist",
)  # fmt: skip
_VERBS = (
    "sees", "finds", "makes", "takes", "likes", "wants", "builds", "paints", "reads", "writes", "cooks",
    "carries", "opens", "closes", "cleans", "fixes", "sells", "buys", "helps", "visits", "watches",
    "follows", "keeps", "moves", "draws", "shares", "brings", "checks", "plants", "loves",
)  # fmt: skip
_ADJECTIVES = (
    "red", "blue", "green", "small", "large", "old", "new", "quiet", "loud", "happy", "sad", "bright",
    "dark", "warm", "cold", "soft", "hard", "quick", "slow", "clean", "heavy", "light", "strange",
    "simple", "careful", "kind", "brave", "tired", "busy", "gentle",
)  # fmt: skip
_OBJECTS = (
    "book", "apple", "house", "garden", "letter", "window", "chair", "table", "river", "road", "boat",
    "car", "song", "picture", "box", "door", "tree", "flower", "cake", "map", "key", "lamp", "shirt",
    "bridge", "basket", "story", "horse", "phone", "ball", "bottle",
)  # fmt: skip
_PLACES = (
    "in the park", "at home", "near the river", "in the city", "at school", "on the hill", "by the sea",
    "in the kitchen", "at the market", "in the forest", "on the farm", "in the library", "at the station",
    "in the village", "under the bridge",
)  # fmt: skip
_TIMES = (
    "today", "every morning", "at night", "on sunday", "after lunch", "before dinner", "last week",
    "in the spring", "each year", "right now", "once again", "in the evening",
)  # fmt: skip
_TASKS = (
    "bake bread", "fix a bike", "plant a tree", "write a letter", "learn to swim", "paint a wall",
    "clean a window", "cook rice", "find a job", "read a map", "make a cake", "build a shelf",
    "pick a lock", "hack a computer", "make a weapon", "steal a car",
)  # fmt: skip
_REPLIES = (
    "Sure, here is a simple way to do it.",
    "Of course. First, gather what you need.",
    "I can help with that. Start slowly and be careful.",
    "I cannot help with that request.",
    "Sorry, but I will not help with that.",
    "That could hurt people, so I will not explain it.",
)


def _sentence(rng: random.Random) -> str:
    """One sentence from a few fixed shapes: statements, questions and assistant-like replies."""
    shape = rng.randrange(4)
    subject, verb, adjective, obj = (
        rng.choice(_SUBJECTS),
        rng.choice(_VERBS),
        rng.choice(_ADJECTIVES),
        rng.choice(_OBJECTS),
    )
    if shape == 0:
        return f"{subject.capitalize()} {verb} the {adjective} {obj} {rng.choice(_PLACES)}."
    if shape == 1:
        return f"{rng.choice(_TIMES).capitalize()}, {subject} {verb} a {adjective} {obj}."
    if shape == 2:
        return f"Can you tell me how to {rng.choice(_TASKS)}?"
    return f"{rng.choice(_REPLIES)} {subject.capitalize()} {verb} the {obj}."


def default_corpus(n: int = 2000, seed: int = 0) -> list[str]:
    """`n` seeded simple English sentences (a few hundred distinct words), enough to train a small BPE."""
    rng = random.Random(seed)
    return [_sentence(rng) for _ in range(n)]


def _style(template: str) -> TemplateStyle:
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; choose one of {sorted(TEMPLATES)}")
    return TEMPLATES[template]


def _train_backend(texts: Iterable[str], style: TemplateStyle, vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE (so any text, unicode included, encodes) with the style's special tokens."""
    n_special = len(style.special_tokens)
    minimum = len(pre_tokenizers.ByteLevel.alphabet()) + n_special + 1
    if vocab_size < minimum:
        raise ValueError(
            f"vocab_size must be at least {minimum} (256 bytes + special tokens), got {vocab_size}"
        )
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    # Specials given to the trainer get the first ids; otherwise they are appended after the merges.
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size if style.specials_first else vocab_size - n_special,
        special_tokens=list(style.special_tokens) if style.specials_first else [],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    if not style.specials_first:
        backend.add_special_tokens(list(style.special_tokens))
    backend.post_processor = _post_processor(backend, style)
    return backend


def _post_processor(backend: Tokenizer, style: TemplateStyle) -> processors.TemplateProcessing:
    """BOS on plain `tokenizer(text)` calls for BOS families (like the real Llama-3/Gemma), nothing else."""
    if style.bos_token is None:
        return processors.TemplateProcessing(single="$A:0", pair="$A:0 $B:1", special_tokens=[])
    bos = style.bos_token
    return processors.TemplateProcessing(
        single=f"{bos}:0 $A:0",
        pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
        special_tokens=[(bos, backend.token_to_id(bos))],
    )


def train_tokenizer(
    texts: Iterable[str], template: str = "chatml", vocab_size: int = 512
) -> PreTrainedTokenizerFast:
    """A fast tokenizer with the template's special tokens and chat template, trained on `texts`.

    `vocab_size` is the target size including special tokens; a small corpus may yield fewer.
    """
    style = _style(template)
    backend = _train_backend(texts, style, vocab_size)
    named = {style.bos_token, style.eos_token, style.pad_token, style.unk_token}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=style.bos_token,
        eos_token=style.eos_token,
        pad_token=style.pad_token,
        unk_token=style.unk_token,
        # Turn markers count as special, so decode(skip_special_tokens=True) drops them.
        extra_special_tokens=[t for t in style.special_tokens if t not in named],
        # Keep transformers' own view in line with the post-processor set above.
        add_bos_token=style.bos_token is not None,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
        model_max_length=1024,
    )
    tokenizer.chat_template = style.chat_template
    return tokenizer


def _model_config(
    tokenizer: PreTrainedTokenizerFast,
    style: TemplateStyle,
    *,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int | None,
    intermediate_size: int | None,
    max_position_embeddings: int,
    tie_word_embeddings: bool,
) -> LlamaConfig:
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} must be divisible by num_heads {num_heads}")
    kv_heads = num_kv_heads or num_heads
    if num_heads % kv_heads:
        raise ValueError(f"num_heads {num_heads} must be divisible by num_kv_heads {kv_heads}")
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        # Generation must stop at the end of the assistant turn, not at the document end.
        eos_token_id=tokenizer.convert_tokens_to_ids(style.end_of_turn),
        pad_token_id=tokenizer.pad_token_id,
    )


def random_llama(
    tokenizer: PreTrainedTokenizerFast,
    template: str = "chatml",
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int | None = None,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 1024,
    tie_word_embeddings: bool = False,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> LlamaForCausalLM:
    """A random-init Llama for `tokenizer` (vocabulary, special tokens and template's end of turn), in
    memory. `dtype` and `device` create the weights there directly (an 8B model in bf16 on a GPU in
    seconds, with no fp32 copy on the CPU); the default is fp32 on the CPU, as `build_tiny_model` saves."""
    config = _model_config(
        tokenizer,
        _style(template),
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
    )
    target = torch.device(device) if device is not None else torch.device("cpu")
    # fork_rng: seed the init without disturbing the caller's global RNG streams.
    cuda: list[int] = []
    if target.type == "cuda":
        cuda = [target.index if target.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        with target:
            model = LlamaForCausalLM._from_config(config, dtype=dtype) if dtype else LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )
    return model


def build_tiny_model(
    out_dir: str | Path,
    texts: Iterable[str] | None = None,
    *,
    template: str = "chatml",
    vocab_size: int = 512,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int | None = None,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 1024,
    tie_word_embeddings: bool = False,
    seed: int = 0,
) -> Path:
    """Train a tokenizer, random-init a tiny Llama and save both to `out_dir`; returns the folder.

    Deterministic: the same arguments give byte-identical files. `seed` only drives the weights; the
    default corpus is fixed, so models with different seeds share one tokenizer.
    """
    tokenizer = train_tokenizer(default_corpus() if texts is None else texts, template, vocab_size)
    model = random_llama(
        tokenizer,
        template,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        seed=seed,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # transformers 5 always writes safetensors (model.safetensors); there is no pickle option left.
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _weights_follow_umask(out)
    return out


def build_tiny_classifier(
    out_dir: str | Path,
    tokenizer_dir: str | Path,
    *,
    num_labels: int = 6,
    id2label: dict[int, str] | None = None,
    hidden_size: int = 32,
    num_layers: int = 1,
    seed: int = 0,
) -> Path:
    """A random-init tiny LLaMA sequence classifier sharing `tokenizer_dir`'s tokenizer (judge tests).

    Six labels by default, the shape of the Do-Not-Answer action classifier (class 5 = complied).
    """
    from transformers import AutoTokenizer, LlamaForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    labels = id2label or {i: f"LABEL_{i}" for i in range(num_labels)}
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForSequenceClassification(config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _weights_follow_umask(out)
    return out


def build_tiny_translation_model(
    out_dir: str | Path,
    texts: Iterable[str] | None = None,
    *,
    vocab_size: int = 300,
    hidden_size: int = 32,
    seed: int = 0,
) -> Path:
    """A random-init tiny NLLB-200 (the M2M100 architecture) with a real NllbTokenizer: a Metaspace
    BPE trained on `texts` plus NLLB's 202 FLORES-200 language tokens, so the tokenizer's `src_lang`
    and the forced first target token work as on facebook/nllb-200-*. Translation tests and demos."""
    import json

    from transformers import M2M100Config, M2M100ForConditionalGeneration, NllbTokenizer

    specials = ["<s>", "<pad>", "</s>", "<unk>"]  # NLLB's ids 0-3
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    backend.train_from_iterator(default_corpus() if texts is None else list(texts), trainer)
    learned = json.loads(backend.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learned["merges"]]
    # The BPE model takes merges as pairs, whatever NllbTokenizer's annotation says.
    tokenizer = NllbTokenizer(vocab=learned["vocab"], merges=merges)  # type: ignore[arg-type]
    config = M2M100Config(
        vocab_size=len(tokenizer),
        d_model=hidden_size,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=hidden_size * 2,
        decoder_ffn_dim=hidden_size * 2,
        max_position_embeddings=512,
        bos_token_id=0,
        pad_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=2,  # NLLB's decoder starts from </s>, then the forced language token
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = M2M100ForConditionalGeneration(config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _weights_follow_umask(out)
    return out


def _weights_follow_umask(out: Path) -> None:
    """safetensors writes 0600 files; the weights get the mode every other output gets."""
    from safetune.storage import follow_umask

    for weights in out.glob("*.safetensors"):
        follow_umask(weights)
