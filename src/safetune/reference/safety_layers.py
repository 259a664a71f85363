"""SPPFT's safety layers: where in the frozen model normal and malicious prompts part ways (Li et al.,
ICLR 2025, "Safety Layers in Aligned Large Language Models"; code listen0425/Safety-Layers).

Layer indices are 0-based decoder layers and a band's bounds are both included ([6, 12] is layers 6..12).

1. Layer vectors: each prompt, rendered with the model's chat template, runs through the frozen model once;
   a layer's vector is its output hidden state at the last prompt position (hidden_states[1..L]: the
   embeddings are left out, as in Cos_sim_analysis, whose one-token generate reads the same position).
2. Cosines over `pairs` random pairs of each type: normal-normal (N-N), malicious-malicious (M-M) and
   normal-malicious (N-M), seeds 10 / 100 / 1000 as in the authors' save_all_pairs_cos_sim.py.
3. The angle gap per layer, in degrees: angle(N-M) - angle(N-N), the angle being arccos of the mean cosine
   (`mean_cosine`: the authors' plotting code) or the mean of the per-pair arccos (`mean_angle`: the paper's
   wording).
4. The cosine band (`initial_band`): the paper reads "from the appearance of the gap to its first
   smoothing" off the plot. Our numeric rule: the first layer whose gap reaches `onset` x the largest gap
   starts the band; it ends at the first layer from there whose rise to the next layer is below `flat` x the
   largest rise from the start on (the gap stops growing), or at the last layer.
5. Refinement (`refine_band`, the paper's Section 3.4 and Safety_layers_locating/scaling.py): scale the
   weight matrices of the band's attention and MLP by alpha and count over-rejections (keyword-judged
   refusals of benign prompts, data/refusals.py) in greedy answers of `max_new_tokens`; move the upper bound
   within `radius` of the cosine band's to the count's maximum (alpha > 1; minimum for alpha < 1, the
   paper's Phi-3 run), then the lower bound with that upper bound. The weights are restored bit for bit after
   every trial (`scaled_band`).

The analysis depends only on the model, the prompts and these settings: it is cached (cache.py) and a
second run reads it. Which band a run freezes (an override, a published band, or the located one) is
`choose_band`'s; the freezing is training/sppft.py's.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor

from safetune import console
from safetune.data.batching import length_sorted_batches, pad_batch
from safetune.data.chat import ChatRenderer
from safetune.data.refusals import PHRASES_VERSION, phrase_languages, refusal_match
from safetune.errors import ConfigError
from safetune.models.loading import decoder_of, default_device
from safetune.reference.cache import CacheEntry, cache_key
from safetune.storage import hash_json

log = logging.getLogger(__name__)

# Bump when the analysis, the band rule or the key change: it is part of the cache key.
ANALYSIS_VERSION = "safety-layers-v1"
# The authors' sampling seeds per pair type (Cos_sim_analysis/save_all_pairs_cos_sim.py).
PAIR_SEEDS = {"nn": 10, "mm": 100, "nm": 1000}
INDEXING = "0-based decoder layers, both bounds included"


@dataclass(frozen=True)
class PublishedBand:
    """A band the paper reports (Table 1 / Section 3.4), 0-based and inclusive, for the model whose id
    contains `pattern` (case-insensitive) and has `num_layers` decoder layers."""

    pattern: str
    num_layers: int
    band: tuple[int, int]
    alpha: float  # the scale the paper's refinement used (< 1: over-rejection minimised)
    model: str


PUBLISHED_BANDS: tuple[PublishedBand, ...] = (
    PublishedBand("llama-3-8b-instruct", 32, (6, 12), 1.2, "Meta-Llama-3-8B-Instruct"),
    PublishedBand("llama-2-7b-chat", 32, (6, 14), 1.15, "Llama-2-7b-chat"),
    PublishedBand("gemma-2b-it", 18, (6, 11), 1.1, "gemma-2b-it"),
    PublishedBand("phi-3-mini", 32, (11, 15), 0.8, "Phi-3-mini-4k-instruct"),
)


def published_band(model_id: str, num_layers: int) -> PublishedBand | None:
    name = model_id.lower().replace("_", "-")
    for entry in PUBLISHED_BANDS:
        if entry.pattern in name and entry.num_layers == num_layers:
            return entry
    return None


@dataclass(frozen=True)
class AnalysisSettings:
    """Everything besides the model and the prompts that moves the analysis (all in the cache key)."""

    pairs: int = 500
    gap_mode: str = "mean_cosine"
    onset: float = 0.1
    flat: float = 0.2
    search: str = "full"  # cosine | full
    alpha: float = 1.1
    radius: int = 2
    max_new_tokens: int = 16
    batch_size: int = 8


# --- the math: cosines, angle gap, the band rule -------------------------------------------------------------


def sample_pairs(n_a: int, n_b: int, same: bool, count: int, seed: int) -> list[tuple[int, int]]:
    """`count` random index pairs: two distinct prompts of one set (`same`) or one of each set."""
    rng = random.Random(seed)
    if same:
        return [tuple(rng.sample(range(n_a), 2)) for _ in range(count)]  # type: ignore[misc]
    return [(rng.randrange(n_a), rng.randrange(n_b)) for _ in range(count)]


def pair_cosines(a: Tensor, b: Tensor, pairs: Sequence[tuple[int, int]]) -> Tensor:
    """[pairs, layers] cosine of a[i] and b[j] per layer; `a`, `b`: [prompts, layers, hidden]."""
    left = a[[i for i, _ in pairs]].double()
    right = b[[j for _, j in pairs]].double()
    return torch.nn.functional.cosine_similarity(left, right, dim=-1)


def _degrees(cosine: Tensor) -> Tensor:
    return torch.rad2deg(torch.arccos(cosine.clamp(-1.0, 1.0)))


def angle_gap(cos_nn: Tensor, cos_nm: Tensor, mode: str = "mean_cosine") -> Tensor:
    """Per layer, degrees: angle(N-M) - angle(N-N); `cos_*`: [pairs, layers]."""
    if mode == "mean_cosine":
        return _degrees(cos_nm.mean(0)) - _degrees(cos_nn.mean(0))
    if mode == "mean_angle":
        return _degrees(cos_nm).mean(0) - _degrees(cos_nn).mean(0)
    raise ValueError(f"unknown gap mode {mode!r}")


def initial_band(gaps: Sequence[float], onset: float, flat: float) -> tuple[tuple[int, int], str]:
    """The cosine band [first, last] of a per-layer gap curve, and how it was read (module doc, step 4)."""
    peak = max(gaps)
    if peak <= 0:
        layer = max(range(len(gaps)), key=lambda k: gaps[k])
        return (layer, layer), "no positive gap: the layer with the largest gap alone"
    first = next(k for k, g in enumerate(gaps) if g >= onset * peak)
    rises = [gaps[k + 1] - gaps[k] for k in range(first, len(gaps) - 1)]
    top = max(rises, default=0.0)
    if top <= 0:
        return (
            first,
            first,
        ), f"gap reaches {onset:g} x its maximum at layer {first} and never rises after it"
    for k, rise in zip(range(first, len(gaps) - 1), rises, strict=True):
        if rise < flat * top:
            return (first, k), (
                f"gap reaches {onset:g} x its maximum at layer {first}; its rise to layer {k + 1} is below "
                f"{flat:g} x the largest rise"
            )
    last = len(gaps) - 1
    return (first, last), f"gap reaches {onset:g} x its maximum at layer {first} and rises to the last layer"


# --- the frozen model: layer vectors, scaled weights, over-rejections ---------------------------------------


def decoder_layers(model: Any) -> Any:
    """The decoder's layer list; every layer must have `self_attn` and `mlp` (what SPPFT scales and freezes)."""
    layers = getattr(decoder_of(model), "layers", None)
    if layers is None or not all(hasattr(x, "self_attn") and hasattr(x, "mlp") for x in layers):
        raise ConfigError(
            "SPPFT needs decoder layers with self_attn and mlp modules (Llama, Qwen, Gemma, Mistral, Phi-3)"
        )
    return layers


def check_band(band: tuple[int, int], num_layers: int, where: str) -> None:
    if band[1] >= num_layers:
        raise ConfigError(
            f"{where} {band[0]}-{band[1]}: the model has {num_layers} decoder layers (0-{num_layers - 1})"
        )


@torch.inference_mode()
def last_prompt_states(model: Any, prompts: Sequence[Sequence[int]], pad_id: int, batch_size: int) -> Tensor:
    """[prompts, layers, hidden] float32 on the CPU: each decoder layer's output at the last prompt token.
    Left-padded batches with positions from the mask, so a row's values do not depend on its padding
    beyond float rounding (the batch size is in the cache key)."""
    device = next(model.parameters()).device
    out: list[Tensor | None] = [None] * len(prompts)
    for batch in length_sorted_batches([len(p) for p in prompts], batch_size):
        padded = pad_batch([prompts[i] for i in batch], None, pad_id, side="left")
        mask = padded["attention_mask"].to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        hidden = model(
            input_ids=padded["input_ids"].to(device),
            attention_mask=mask,
            position_ids=positions,
            output_hidden_states=True,
            use_cache=False,
        ).hidden_states[1:]
        stacked = torch.stack([h[:, -1] for h in hidden], dim=1).float().cpu()
        for row, index in enumerate(batch):
            out[index] = stacked[row]
    return torch.stack([t for t in out if t is not None])


@contextmanager
def scaled_band(model: Any, band: tuple[int, int], alpha: float) -> Iterator[None]:
    """The weight matrices of the band's self_attn and mlp multiplied by `alpha` inside the block, restored
    bit for bit from a copy afterwards (norm and bias vectors are left alone: scaling.py scales the
    projection weights only)."""
    layers = decoder_layers(model)
    saved: list[tuple[Tensor, Tensor]] = []
    try:
        with torch.no_grad():
            for k in range(band[0], band[1] + 1):
                for module in (layers[k].self_attn, layers[k].mlp):
                    for param in module.parameters():
                        if param.ndim >= 2:
                            saved.append((param, param.detach().clone()))
                            param.mul_(alpha)
        yield
    finally:
        with torch.no_grad():
            for param, original in saved:
                param.copy_(original)


def _stop_ids(model: Any, tokenizer: Any, renderer: ChatRenderer) -> list[int]:
    ids: list[Any] = [tokenizer.eos_token_id]
    if renderer.end_token:
        ids.append(tokenizer.convert_tokens_to_ids(renderer.end_token))
    model_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.extend(model_eos if isinstance(model_eos, list) else [model_eos])
    return list(dict.fromkeys(int(i) for i in ids if isinstance(i, int)))


@torch.inference_mode()
def greedy_answers(
    model: Any,
    tokenizer: Any,
    renderer: ChatRenderer,
    prompts: Sequence[str],
    max_new_tokens: int,
    batch_size: int,
) -> list[str]:
    """Greedy answers of at most `max_new_tokens`, cut at the first end token."""
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    stops = _stop_ids(model, tokenizer, renderer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    generation = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, eos_token_id=stops, pad_token_id=pad
    )
    ids = [renderer.prompt_ids(p) for p in prompts]
    answers = [""] * len(prompts)
    for batch in length_sorted_batches([len(x) for x in ids], batch_size):
        padded = pad_batch([ids[i] for i in batch], None, pad, side="left")
        output = model.generate(
            input_ids=padded["input_ids"].to(device),
            attention_mask=padded["attention_mask"].to(device),
            generation_config=generation,
        )
        for row, index in enumerate(batch):
            new = output[row, padded["input_ids"].shape[1] :].tolist()
            end = next((i for i, t in enumerate(new) if t in stops), len(new))
            answers[index] = tokenizer.decode(new[:end], skip_special_tokens=True).strip()
    return answers


def is_refusal(answer: str) -> bool:
    """The keyword judge's rule (data/refusals.py); an answer in a language no list covers is no refusal.
    A partial refusal counts: a benign prompt answered only in part was over-rejected."""
    languages = phrase_languages(answer)
    if not answer.strip() or isinstance(languages, str):
        return False
    return refusal_match(answer, languages).kind is not None


def refine_band(
    band: tuple[int, int], num_layers: int, alpha: float, radius: int, count: Callable[[tuple[int, int]], int]
) -> tuple[tuple[int, int], list[dict[str, Any]]]:
    """The paper's two-step boundary search around the cosine band (module doc, step 5): returns the band
    and every trial. `count(band)` is the over-rejection count with that band scaled. Ties go to the bound
    nearest the cosine band's, then to the lower one."""
    pick = max if alpha > 1 else min
    trials: list[dict[str, Any]] = []

    def best(stage: str, candidates: list[tuple[int, int]], start: int, side: int) -> tuple[int, int]:
        scored = []
        for cand in candidates:
            found = count(cand)
            trials.append({"stage": stage, "band": list(cand), "over_rejections": found})
            scored.append((found, cand))
        target = pick(found for found, _ in scored)
        return min(
            (c for found, c in scored if found == target), key=lambda c: (abs(c[side] - start), c[side])
        )

    first, last = band
    uppers = range(max(first, last - radius), min(num_layers - 1, last + radius) + 1)
    first, last = best("upper", [(first, j) for j in uppers], last, 1)
    lowers = range(max(0, first - radius), min(last, first + radius) + 1)
    first, last = best("lower", [(i, last) for i in lowers], band[0], 0)
    return (first, last), trials


# --- the cached analysis --------------------------------------------------------------------------------


def analyse(
    model: Any,
    tokenizer: Any,
    renderer: ChatRenderer,
    normal: Sequence[str],
    malicious: Sequence[str],
    over_rejection: Sequence[str],
    settings: AnalysisSettings,
    fingerprint: str,
    cache_root: Path,
) -> dict[str, Any]:
    """The per-layer evidence, the cosine band and (search "full") the refined band, from the cache when a
    run computed it before. `model` is the frozen model in eval mode; it is left exactly as it came."""
    data = hash_json(
        {"normal": list(normal), "malicious": list(malicious), "over_rejection": list(over_rejection)}
    )
    key = cache_key(
        "safety-layers",
        ANALYSIS_VERSION,
        fingerprint,
        {**asdict(settings), "template": renderer.fingerprint(), "refusals": PHRASES_VERSION},
        data,
    )
    entry = CacheEntry(cache_root, "safety-layers", key, ".json")

    def read(path: Path) -> dict[str, Any] | None:
        try:
            return dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            return None

    def write(handle: IO[bytes], value: dict[str, Any]) -> None:
        handle.write(json.dumps(value, indent=1).encode("utf-8"))

    def compute() -> dict[str, Any]:
        return _compute(model, tokenizer, renderer, normal, malicious, over_rejection, settings)

    found = entry.read_or_compute(read, compute, write)
    log.info("safety layers: cosine band %s (cache %s)", found["cosine_band"], entry.path.name)
    return found


def _compute(
    model: Any,
    tokenizer: Any,
    renderer: ChatRenderer,
    normal: Sequence[str],
    malicious: Sequence[str],
    over_rejection: Sequence[str],
    s: AnalysisSettings,
) -> dict[str, Any]:
    model = model.to(default_device())
    num_layers = len(decoder_layers(model))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with console.progress(total=2, desc="safety layers: layer vectors", unit="set") as bar:
        states_n = last_prompt_states(model, [renderer.prompt_ids(p) for p in normal], pad, s.batch_size)
        bar.update(1)
        states_m = last_prompt_states(model, [renderer.prompt_ids(p) for p in malicious], pad, s.batch_size)
        bar.update(1)
    cos = {
        "nn": pair_cosines(
            states_n, states_n, sample_pairs(len(normal), len(normal), True, s.pairs, PAIR_SEEDS["nn"])
        ),
        "mm": pair_cosines(
            states_m, states_m, sample_pairs(len(malicious), len(malicious), True, s.pairs, PAIR_SEEDS["mm"])
        ),
        "nm": pair_cosines(
            states_n, states_m, sample_pairs(len(normal), len(malicious), False, s.pairs, PAIR_SEEDS["nm"])
        ),
    }
    gaps = angle_gap(cos["nn"], cos["nm"], s.gap_mode).tolist()
    per_layer = []
    for k in range(num_layers):
        row: dict[str, Any] = {"layer": k, "gap_degrees": gaps[k]}
        for kind, values in cos.items():
            row[f"cos_{kind}_mean"] = float(values[:, k].mean())
            row[f"cos_{kind}_std"] = float(values[:, k].std()) if s.pairs > 1 else 0.0
        per_layer.append(row)
    band, rule = initial_band(gaps, s.onset, s.flat)
    result: dict[str, Any] = {
        "version": ANALYSIS_VERSION,
        "indexing": INDEXING,
        "num_layers": num_layers,
        "settings": asdict(s),
        "prompts": {
            "normal": len(normal),
            "malicious": len(malicious),
            "over_rejection": len(over_rejection),
        },
        "pair_seeds": PAIR_SEEDS,
        "layers": per_layer,
        "cosine_band": list(band),
        "cosine_rule": rule,
        "refinement": None,
    }
    if s.search == "full":
        result["refinement"] = _refinement(model, tokenizer, renderer, over_rejection, band, num_layers, s)
    return result


def _refinement(
    model: Any,
    tokenizer: Any,
    renderer: ChatRenderer,
    prompts: Sequence[str],
    band: tuple[int, int],
    num_layers: int,
    s: AnalysisSettings,
) -> dict[str, Any]:
    def refusals() -> int:
        answers = greedy_answers(model, tokenizer, renderer, prompts, s.max_new_tokens, s.batch_size)
        return sum(is_refusal(a) for a in answers)

    def count(candidate: tuple[int, int]) -> int:
        with scaled_band(model, candidate, s.alpha):
            return refusals()

    was_training = model.training
    model.eval()
    try:
        baseline = refusals()
        total = (
            (min(num_layers - 1, band[1] + s.radius) - max(band[0], band[1] - s.radius) + 1)
            + 2 * s.radius
            + 1
        )
        log.info(
            "safety layers: refining %s with alpha %g (about %d generation rounds)",
            list(band),
            s.alpha,
            total,
        )
        refined, trials = refine_band(band, num_layers, s.alpha, s.radius, count)
    finally:
        model.train(was_training)
    return {
        "alpha": s.alpha,
        "objective": "maximise" if s.alpha > 1 else "minimise",
        "max_new_tokens": s.max_new_tokens,
        "judge": f"keyword ({PHRASES_VERSION})",
        "prompts": len(prompts),
        "unscaled_over_rejections": baseline,
        "trials": trials,
        "band": list(refined),
    }


# --- which band a run freezes --------------------------------------------------------------------------


def choose_band(
    analysis: dict[str, Any], override: tuple[int, int] | None, published: PublishedBand | None
) -> dict[str, Any]:
    """The band and where it comes from: `--method.layers` ("override"), the paper's band for this model
    ("published"), else the refined band ("located") or, without refinement, the cosine band ("cosine")."""
    located = analysis["refinement"]["band"] if analysis.get("refinement") else analysis["cosine_band"]
    if override is not None:
        return {"band": list(override), "source": "override"}
    if published is not None:
        return {
            "band": list(published.band),
            "source": "published band",
            "published": {
                "model": published.model,
                "alpha": published.alpha,
                "paper": "Li et al., ICLR 2025",
            },
        }
    return {"band": list(located), "source": "located" if analysis.get("refinement") else "cosine"}


def band_regex(band: tuple[int, int]) -> str:
    """A module-name pattern (re.fullmatch, as peft's exclude_modules reads it) for every module inside the
    band's decoder layers."""
    numbers = "|".join(str(k) for k in range(band[0], band[1] + 1))
    return rf".*\.layers\.({numbers})\..*"


def plot_gaps(evidence: dict[str, Any], file: Path) -> None:
    """PNG of the per-layer angle gap and the mean cosines, with the chosen band shaded."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    layers = [row["layer"] for row in evidence["layers"]]
    figure = Figure(figsize=(8, 4.5))
    FigureCanvasAgg(figure)
    gap_axes = figure.add_subplot(1, 2, 1)
    gap_axes.plot(layers, [row["gap_degrees"] for row in evidence["layers"]], marker="o")
    gap_axes.set(xlabel="decoder layer (0-based)", ylabel="angle gap N-M vs N-N (degrees)", title="angle gap")
    cos_axes = figure.add_subplot(1, 2, 2)
    for kind, label in (("nn", "N-N"), ("mm", "M-M"), ("nm", "N-M")):
        cos_axes.plot(layers, [row[f"cos_{kind}_mean"] for row in evidence["layers"]], label=label)
    cos_axes.set(xlabel="decoder layer (0-based)", ylabel="mean cosine", title="cosine similarity")
    cos_axes.legend()
    first, last = evidence["band"]
    for axes in (gap_axes, cos_axes):
        axes.axvspan(first - 0.5, last + 0.5, alpha=0.15, color="tab:red")
    figure.suptitle(f"safety layers {first}-{last} ({evidence['band_source']})")
    figure.tight_layout()
    figure.savefig(str(file), dpi=100)
