"""`safetune probe`: the representation view of a model (issue 22 item 6).

For prompts with a language and a safe/unsafe label, one frozen pass takes the hidden state at the last
real prompt token (reference/lens.py: rendered as training renders, mask-aware, the final post-norm layer
by default, as LENS probes) and describes the geometry of those states per language:

- the language mean mu_t: the unweighted average of the language's class means, over the classes every
  probed language has (harmful prompts only, when some language has no benign prompts). Averaging class
  means rather than prompts keeps a language's safe/unsafe mix out of where its mean lies, so two
  languages with different mixes are compared on the same footing;
- LSAR of the language means (methods/lsar.py, rank D - 1, as LENS): the common direction's norm, the
  specific subspace's singular values and each language's shift norm |delta_t| from the dominant language;
- the euclidean distance |mu_t - mu_dom| and the cosine distance 1 - cos(mu_t, mu_dom);
- per language with both classes, the separation of safe and unsafe prompts: the distance of the class
  means over the pooled within-class spread,
      score = |mu_unsafe - mu_safe| / sqrt((SS_safe + SS_unsafe) / (n_safe + n_unsafe - 2)),
  SS_c the sum of squared distances of class c's states to their mean (a multivariate Cohen's d on the
  root-mean-square spread; how far apart a model keeps harmful and benign requests in that language);
- a 2-D PCA of every state (centred on their mean, signs fixed so a basis is reproducible).

`--compare DIR` reads another probe folder made from the same prompts (checked by data hash) as "before":
the report gives each language's shift norm, distance and separation before and after, and the PCA of
both is fitted on the union of their states, so the two panels share one basis.

Outputs in -o DIR, each written atomically after every check and the pass are done: geometry.json,
probe.md, pca.png and states.safetensors (the pooled states, which a later `--compare` reads).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from safetune.config import RunConfig
from safetune.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SAFE, UNSAFE = "safe", "unsafe"
LABELS: tuple[str, ...] = (SAFE, UNSAFE)
GEOMETRY_VERSION = "1"  # the layout of geometry.json and states.safetensors
CACHE_VERSION = "1"  # part of the probe cache key: bump when the pass or the key changes
MAX_BATCH_SIZE = 4096
MAX_LAYER = 1024  # checked against the model's own layer count once it is loaded
STATES_FILE, GEOMETRY_FILE, REPORT_FILE, PLOT_FILE = (
    "states.safetensors",
    "geometry.json",
    "probe.md",
    "pca.png",
)
_LANGUAGE_PREFIX = re.compile(r"^([A-Za-z][A-Za-z0-9_-]{0,34})=(.+)$")


@dataclass(frozen=True)
class ProbeSettings:
    """The probe's settings, range-checked when built (before any file is read or written)."""

    dominant: str = "en"
    batch_size: int = 8
    max_per_language: int | None = None  # per language and label, the first N in file order
    layer: int = -1  # -1: the final post-norm state (LENS); k >= 0: output_hidden_states[k] (0: embeddings)

    def __post_init__(self) -> None:
        if not isinstance(self.dominant, str) or not self.dominant.strip():
            raise ConfigError(f"--dominant must be a language name, got {self.dominant!r}")
        _check_int("--batch-size", self.batch_size, 1, MAX_BATCH_SIZE)
        if self.max_per_language is not None:
            _check_int("--max-per-language", self.max_per_language, 1, 10**9)
        _check_int("--layer", self.layer, -1, MAX_LAYER)


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{name} must be an integer in {low}..{high}, got {value!r}")


@dataclass(frozen=True)
class ProbePrompt:
    """One probed prompt: its language, label (safe/unsafe), text, system prompt and where it came from."""

    language: str
    label: str
    text: str
    origin: str  # "file#record id", for error messages and the duplicate count
    system: str | None = None


# ---- the prompts ----


def split_entry(entry: str) -> tuple[str | None, str]:
    """`--harmful`/`--benign` entries: `FILE`, or `LANG=FILE` (every row without its own language is
    LANG). An entry that is an existing path is always a file, even with `=` in its name."""
    match = _LANGUAGE_PREFIX.match(entry)
    if match is None or Path(entry).exists():
        return None, entry
    return match.group(1), match.group(2)


def _prompt_file(entry: str, label: str) -> list[ProbePrompt]:
    from safetune.evaluation.benchmarks import TableOptions, get_benchmark

    language, path = split_entry(entry)
    # Any prompt file the harmful-prompts benchmark reads (a qa file too: its references are ignored).
    prompts = get_benchmark("harmful-prompts").load(path, table=TableOptions.of(None, language=language))
    out = []
    for prompt in prompts:
        if prompt.language is None:
            raise DataError(
                path,
                None,
                "language",
                f"record {prompt.id!r} has no language (give the file a `language` column, or pass "
                f"LANG={path})",
            )
        out.append(ProbePrompt(prompt.language, label, prompt.text, f"{path}#{prompt.id}"))
    return out


def _pair_prompts(path: str, fmt: str) -> list[ProbePrompt]:
    from safetune.data.languages import LanguageCheck
    from safetune.data.preferences import load_parallel_pairs

    out = []
    for pair in load_parallel_pairs(path, fmt, languages=LanguageCheck()):
        for side, half in (("dominant", pair.dominant), ("target", pair.target)):
            if half.language is None:
                keys = "dominant_language" if side == "dominant" else "language"
                raise DataError(
                    path,
                    None,
                    keys,
                    f"record {pair.id!r}: the {side} prompt's language is unknown (not given, and its "
                    f"texts were not detected in one language); add `{keys}` to the record",
                )
            out.append(ProbePrompt(half.language, UNSAFE, half.prompt, f"{path}#{pair.id}", pair.system))
    return out


def load_probe_prompts(
    *,
    pairs: str | None = None,
    pairs_format: str = "auto",
    harmful: Sequence[str] = (),
    benign: Sequence[str] = (),
    max_per_language: int | None = None,
) -> list[ProbePrompt]:
    """The probed prompts: both sides of the parallel pairs' prompts and the `harmful` files' prompts are
    unsafe, the `benign` files' prompts safe. A prompt seen again in the same language and label is
    counted once (the MPO release repeats one English prompt for every target language); the same text
    with both labels in one language is an error. `max_per_language` keeps the first N per language
    and label."""
    if pairs is None and not harmful:
        raise ConfigError("nothing to probe: give --pairs or --harmful (and --benign for safe prompts)")
    found: list[ProbePrompt] = []
    if pairs is not None:
        found += _pair_prompts(pairs, pairs_format)
    for entry in harmful:
        found += _prompt_file(entry, UNSAFE)
    for entry in benign:
        found += _prompt_file(entry, SAFE)
    kept: list[ProbePrompt] = []
    first: dict[tuple[str, str], ProbePrompt] = {}
    per_group: dict[tuple[str, str], int] = {}
    duplicates = 0
    for prompt in found:
        key = (prompt.language, prompt.text)
        if key in first:
            if first[key].label != prompt.label:
                path, _, record = prompt.origin.rpartition("#")
                raise DataError(
                    path,
                    None,
                    "prompt",
                    f"record {record!r}: the same {prompt.language} prompt is {prompt.label} here and "
                    f"{first[key].label} in {first[key].origin}",
                )
            duplicates += 1
            continue
        first[key] = prompt
        group = (prompt.language, prompt.label)
        if max_per_language is not None and per_group.get(group, 0) >= max_per_language:
            continue
        per_group[group] = per_group.get(group, 0) + 1
        kept.append(prompt)
    if duplicates:
        log.info("probe: %d repeated prompt(s) counted once", duplicates)
    return kept


def _input_files(pairs: str | None, entries: Sequence[str]) -> list[str]:
    return list(dict.fromkeys([*([pairs] if pairs else []), *(split_entry(e)[1] for e in entries)]))


def file_sha256(path: str) -> str | None:
    """The content hash of an input file (None for a folder or a hub dataset id)."""
    import hashlib

    file = Path(path)
    if not file.is_file():
        return None
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_hash(prompts: Sequence[ProbePrompt]) -> str:
    """What `--compare` checks: the prompts, their order, labels, languages and system prompts."""
    from safetune.storage import hash_json

    return hash_json([[p.language, p.label, p.text, p.system] for p in prompts])


# ---- the geometry (pure functions of the states) ----


@dataclass(frozen=True)
class Separation:
    """Safe vs unsafe states of one language: `distance` of the class means, `spread` the pooled
    within-class root-mean-square distance to the class mean, `score` = distance / spread (None when
    the spread is zero)."""

    distance: float
    spread: float
    score: float | None


@dataclass(frozen=True)
class LanguageGeometry:
    language: str
    counts: dict[str, int]  # label -> prompts
    mean_norm: float  # |mu_t|
    shift_norm: float  # |delta_t|, LSAR
    euclidean_distance: float  # |mu_t - mu_dom|
    cosine_distance: float  # 1 - cos(mu_t, mu_dom)
    separation: Separation | None  # None unless the language has both classes (and 3+ prompts)


@dataclass(frozen=True)
class Geometry:
    """The geometry of one model's states: per language (the dominant one first) and LSAR's figures."""

    dominant: str
    languages: list[LanguageGeometry]
    mean_classes: list[str]  # the classes whose means make up each language mean
    rank: int
    common_norm: float
    singular_values: list[float]

    def by_language(self) -> dict[str, LanguageGeometry]:
        return {g.language: g for g in self.languages}

    def to_dict(self) -> dict[str, Any]:
        return {
            "dominant": self.dominant,
            "language_mean_classes": self.mean_classes,  # each language mean averages these class means
            "lsar": {
                "rank": self.rank,
                "common_norm": self.common_norm,
                "singular_values": self.singular_values,
            },
            "languages": {
                g.language: {k: v for k, v in asdict(g).items() if k != "language"} for g in self.languages
            },
        }


def separation(safe: Tensor, unsafe: Tensor) -> Separation | None:
    """The separation of two classes of states ([n, d] each); None with an empty class or fewer than
    three states (no within-class spread to divide by)."""
    n_safe, n_unsafe = int(safe.shape[0]), int(unsafe.shape[0])
    if n_safe == 0 or n_unsafe == 0 or n_safe + n_unsafe < 3:
        return None
    a, b = safe.to(torch.float64), unsafe.to(torch.float64)
    mean_a, mean_b = a.mean(dim=0), b.mean(dim=0)
    within = float(((a - mean_a) ** 2).sum() + ((b - mean_b) ** 2).sum())
    spread = math.sqrt(within / (n_safe + n_unsafe - 2))
    distance = float(torch.linalg.vector_norm(mean_b - mean_a))
    return Separation(distance, spread, distance / spread if spread > 0 else None)


def language_order(rows: Sequence[tuple[str, str]], dominant: str) -> list[str]:
    """The dominant language first, then the others in order of first appearance."""
    seen = list(dict.fromkeys(language for language, _ in rows))
    if dominant not in seen:
        raise ConfigError(f"the dominant language {dominant!r} has no probe prompts (languages: {seen})")
    if len(seen) < 2:
        raise ConfigError(f"the probe needs prompts in at least 2 languages, got only {seen}")
    return [dominant, *(language for language in seen if language != dominant)]


def geometry(states: Tensor, rows: Sequence[tuple[str, str]], dominant: str) -> Geometry:
    """The geometry of `states` ([N, d]), row i being a prompt in language rows[i][0] with label
    rows[i][1]. Raises ConfigError when LSAR cannot decompose the language means."""
    from safetune.methods.lsar import lsar

    if states.shape[0] != len(rows):
        raise ValueError(f"{states.shape[0]} states for {len(rows)} rows")
    languages = language_order(rows, dominant)
    data = states.to(torch.float64)
    index: dict[tuple[str, str], list[int]] = {}
    for i, key in enumerate(rows):
        index.setdefault(key, []).append(i)

    def of(language: str, label: str) -> Tensor:
        return data[index.get((language, label), [])]

    classes = [label for label in LABELS if all((lang, label) in index for lang in languages)]
    if not classes:
        raise ConfigError(
            "no label has prompts in every language: the language means would mix different "
            "prompt kinds (give each language harmful prompts, e.g. through --pairs)"
        )
    means = torch.stack(
        [torch.stack([of(lang, c).mean(dim=0) for c in classes]).mean(dim=0) for lang in languages]
    )
    try:
        decomposition = lsar(means, 0)
    except ValueError as err:
        raise ConfigError(f"LSAR of the language means: {err}") from None
    shift_norms = decomposition.shift_norms()
    dom = means[0]
    out = []
    for k, language in enumerate(languages):
        mu = means[k]
        norms = float(torch.linalg.vector_norm(mu)) * float(torch.linalg.vector_norm(dom))
        cosine = float(mu @ dom) / norms if norms > 0 else 0.0
        out.append(
            LanguageGeometry(
                language=language,
                counts={label: len(index.get((language, label), [])) for label in LABELS},
                mean_norm=float(torch.linalg.vector_norm(mu)),
                shift_norm=float(shift_norms[k]),
                euclidean_distance=float(torch.linalg.vector_norm(mu - dom)),
                # Clamped: rounding puts 1 - cos(mu, mu) a hair below zero for the dominant language.
                cosine_distance=min(2.0, max(0.0, 1.0 - cosine)),
                separation=separation(of(language, SAFE), of(language, UNSAFE)),
            )
        )
    return Geometry(
        dominant=dominant,
        languages=out,
        mean_classes=classes,
        rank=decomposition.rank,
        common_norm=float(torch.linalg.vector_norm(decomposition.common)),
        singular_values=[float(v) for v in decomposition.singular_values],
    )


@dataclass(frozen=True)
class Pca:
    """A 2-D PCA basis: `centre` [d], `components` [d, 2] (orthonormal columns, each with its
    largest-magnitude entry positive), `explained` the share of the variance along each."""

    centre: Tensor
    components: Tensor
    explained: list[float]

    def project(self, states: Tensor) -> Tensor:
        return (states.to(torch.float64) - self.centre) @ self.components


def fit_pca(states: Tensor) -> Pca:
    """The two leading principal directions of `states` ([N, d]); a direction the states do not span
    (N < 3, d < 2, or all states on a line) is a zero column, with zero variance."""
    data = states.to(torch.float64)
    centre = data.mean(dim=0)
    _, s, vh = torch.linalg.svd(data - centre, full_matrices=False)
    components = torch.zeros(data.shape[1], 2, dtype=torch.float64)
    # A direction without variance is arbitrary (any vector orthogonal to the others): left zero.
    k = sum(1 for j in range(min(2, int(s.shape[0]))) if float(s[j]) > 1e-12 * float(s[0]))
    components[:, :k] = vh[:k].T
    for j in range(k):  # the SVD's signs are arbitrary: fix them so a basis is reproducible
        column = components[:, j]
        if float(column[int(column.abs().argmax())]) < 0:
            components[:, j] = -column
    total = float((s**2).sum())
    explained = [float(s[j] ** 2) / total if total > 0 and j < k else 0.0 for j in range(2)]
    return Pca(centre, components, explained)


@dataclass(frozen=True)
class LanguageChange:
    """One language, before (the compared probe) and after (this one)."""

    language: str
    shift_norm: tuple[float, float]
    euclidean_distance: tuple[float, float]
    cosine_distance: tuple[float, float]
    separation: tuple[float | None, float | None]


def changes(before: Geometry, after: Geometry) -> list[LanguageChange]:
    """Per language of `after`, its figures in `before` and `after` (same prompts, so same languages)."""
    old = before.by_language()

    def score(g: LanguageGeometry) -> float | None:
        return g.separation.score if g.separation else None

    return [
        LanguageChange(
            g.language,
            (old[g.language].shift_norm, g.shift_norm),
            (old[g.language].euclidean_distance, g.euclidean_distance),
            (old[g.language].cosine_distance, g.cosine_distance),
            (score(old[g.language]), score(g)),
        )
        for g in after.languages
    ]


# ---- the pass, cached ----


def probe_states(
    config: RunConfig, source: Any, prompts: Sequence[ProbePrompt], settings: ProbeSettings
) -> tuple[Tensor, dict[str, Any]]:
    """The last-prompt-token states of `prompts` ([N, d] float32) on the model `source` (a resolved
    ModelSource), rendered with the run config's `chat` section as training renders; cached under the
    cache root by model, template, layer, batch size and token ids. Also the rendering's provenance."""
    from safetune.data.chat import ChatRenderer
    from safetune.models.loading import default_device, load_for_generation, resolve_dtype
    from safetune.reference.cache import CacheEntry, cache_key
    from safetune.reference.lens import encode_prompts, prompt_states
    from safetune.storage import cache_root, hash_json

    dtype = resolve_dtype(config.train.precision)
    model, tokenizer = load_for_generation(source, dtype, default_device())
    layers = int(getattr(model.config, "num_hidden_layers", 0) or 0)
    if settings.layer > layers:
        raise ConfigError(
            f"--layer must be in -1..{layers} for this model ({layers} layers), got {settings.layer}"
        )
    try:
        renderer = ChatRenderer.from_config(tokenizer, config.chat)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        raise ConfigError("the tokenizer has no pad token")
    rows = [encode_prompts(renderer, [p.text], p.system)[0] for p in prompts]
    rendering = {
        "template": renderer.fingerprint(),
        "layer": settings.layer,
        "position": "last real prompt token",
        "batch_size": settings.batch_size,
        "precision": str(dtype).removeprefix("torch."),  # resolved: "auto" differs by machine
        "max_prompt_tokens": renderer.max_prompt_tokens,
        "truncated_prompts": sum(len(r) >= renderer.max_prompt_tokens for r in rows),
    }
    key_settings = {k: rendering[k] for k in ("template", "layer", "batch_size", "precision")} | {
        "pad_id": pad_id
    }
    key = cache_key("probe", CACHE_VERSION, source.fingerprint, key_settings, hash_json(rows))
    entry = CacheEntry(cache_root(config.cache_dir), "probe", key, ".safetensors")

    def read(path: Path) -> Tensor | None:
        return _read_states(path)[0] if path.exists() else None

    def compute() -> Tensor:
        return prompt_states(
            model,
            rows,
            pad_id=pad_id,
            layer=settings.layer,
            batch_size=settings.batch_size,
            desc="probe pass",
        )["last"]

    def write(handle: Any, states: Tensor) -> None:
        from safetensors.torch import save

        handle.write(save({"states": states.contiguous()}, {"model": source.fingerprint}))

    states = entry.read_or_compute(read, compute, write)
    return states, rendering


def _read_states(path: Path) -> tuple[Tensor, dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.get_tensor("states"), dict(handle.metadata() or {})
    except Exception as err:  # a foreign or damaged file: say which
        raise DataError(path, None, "states", f"not a probe states file ({err})") from None


# ---- the command ----


@dataclass
class ProbeResult:
    """What `run_probe` computed and wrote."""

    geometry: Geometry
    pca: Pca
    report: str
    files: list[Path] = field(default_factory=list)
    changes: list[LanguageChange] | None = None


@dataclass(frozen=True)
class _Before:
    folder: Path
    label: str
    states: Tensor
    rows: list[tuple[str, str]]


def _read_before(folder: Path, expected_hash: str, layer: int) -> _Before:
    """The compared probe folder, refused unless it holds the same prompts (by data hash) at the same
    layer (states of two layers differ in scale and meaning, not by what training changed)."""
    doc_path, states_path = folder / GEOMETRY_FILE, folder / STATES_FILE
    for path in (doc_path, states_path):
        if not path.is_file():
            raise DataError(path, None, None, "missing: --compare takes a folder written by safetune probe")
    try:
        doc = json.loads(doc_path.read_text(encoding="utf-8"))
        digest, label = doc["data"]["hash"], doc["model"]["label"]
        rows = [(str(lang), str(lab)) for lang, lab in doc["data"]["rows"]]
        their_layer = doc["rendering"]["layer"]
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(doc_path, None, "data", f"not a probe geometry.json ({err!r})") from None
    if digest != expected_hash:
        raise DataError(
            doc_path,
            None,
            "data.hash",
            "the compared probe used other prompts (or another order, labels or limit); "
            "run both probes on the same files and options",
        )
    if their_layer != layer:
        raise DataError(
            doc_path,
            None,
            "rendering.layer",
            f"the compared probe read layer {their_layer}, this one {layer}",
        )
    states, _ = _read_states(states_path)
    if states.dim() != 2 or states.shape[0] != len(rows):
        raise DataError(
            states_path, None, "states", f"shape {tuple(states.shape)} does not match {len(rows)} rows"
        )
    return _Before(folder, str(label), states, rows)


def run_probe(
    config: RunConfig,
    out: Path,
    *,
    pairs: str | None = None,
    pairs_format: str = "auto",
    harmful: Sequence[str] = (),
    benign: Sequence[str] = (),
    settings: ProbeSettings | None = None,
    compare: Path | None = None,
) -> ProbeResult:
    """`safetune probe`: the geometry of `config.model.name` (hub id, model folder, LoRA or full run
    folder, loaded as `safetune eval` loads it) on the prompts; writes geometry.json, probe.md, pca.png
    and states.safetensors into `out` once everything is checked and computed."""
    from safetune.models.loading import resolve_model
    from safetune.provenance import base_provenance
    from safetune.storage import atomic_open, write_json

    settings = settings or ProbeSettings()
    if not config.model.name:
        raise ConfigError("--model is required")
    prompts = load_probe_prompts(
        pairs=pairs,
        pairs_format=pairs_format,
        harmful=harmful,
        benign=benign,
        max_per_language=settings.max_per_language,
    )
    rows = [(p.language, p.label) for p in prompts]
    language_order(rows, settings.dominant)  # refuse a missing dominant language before loading a model
    digest = data_hash(prompts)
    before = _read_before(compare, digest, settings.layer) if compare is not None else None
    source = resolve_model(config.model.name, config.model.revision)
    states, rendering = probe_states(config, source, prompts, settings)
    after_geometry = geometry(states, rows, settings.dominant)
    result_changes = None
    if before is not None:
        if before.states.shape[1] != states.shape[1]:
            raise ConfigError(
                f"--compare: {before.folder} has {before.states.shape[1]}-dimensional states, this model "
                f"{states.shape[1]}: a shared PCA basis needs one hidden size"
            )
        before_geometry = geometry(before.states, before.rows, settings.dominant)
        result_changes = changes(before_geometry, after_geometry)
        pca = fit_pca(torch.cat([before.states, states]))
    else:
        pca = fit_pca(states)
    doc = {
        "version": GEOMETRY_VERSION,
        "provenance": base_provenance(),
        "model": source.to_dict(),
        "rendering": rendering,
        "data": {
            "hash": digest,
            "files": {path: file_sha256(path) for path in _input_files(pairs, [*harmful, *benign])},
            "pairs": pairs,
            "harmful": list(harmful),
            "benign": list(benign),
            "max_per_language": settings.max_per_language,
            "prompts": len(prompts),
            "rows": [list(r) for r in rows],
        },
        **after_geometry.to_dict(),
        "pca": {"basis": "shared with --compare" if before else "this probe", "explained": pca.explained},
        "compare": None
        if before is None
        else {
            "folder": str(before.folder),
            "model": before.label,
            "languages": {
                c.language: {k: list(v) for k, v in asdict(c).items() if k != "language"}
                for c in result_changes or []
            },
        },
    }
    report = markdown(source.label, after_geometry, pca, rendering, len(prompts), before, result_changes)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_open(out / STATES_FILE, "wb") as handle:
        from safetensors.torch import save

        handle.write(
            save({"states": states.contiguous()}, {"data_hash": digest, "model": source.fingerprint})
        )
    plot_pca(
        pca,
        [(source.label, states, rows)]
        if before is None
        else [(before.label, before.states, before.rows), (source.label, states, rows)],
        after_geometry,
        out / PLOT_FILE,
        layer=settings.layer,
    )
    with atomic_open(out / REPORT_FILE) as handle:
        handle.write(report)
    write_json(out / GEOMETRY_FILE, doc)  # last: a folder with geometry.json is a complete probe
    files = [out / name for name in (GEOMETRY_FILE, REPORT_FILE, PLOT_FILE, STATES_FILE)]
    return ProbeResult(after_geometry, pca, report, files, result_changes)


# ---- the report and the plot ----


def _num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _change(pair: tuple[float | None, float | None]) -> str:
    a, b = pair
    delta = f" ({b - a:+.3f})" if a is not None and b is not None else ""
    return f"{_num(a)} → {_num(b)}{delta}"


def markdown(
    label: str,
    geo: Geometry,
    pca: Pca,
    rendering: Mapping[str, Any],
    count: int,
    before: _Before | None,
    result_changes: Sequence[LanguageChange] | None,
) -> str:
    layer = "final (post-norm)" if rendering["layer"] == -1 else f"hidden_states[{rendering['layer']}]"
    lines = [
        f"# Representation probe of `{label}`",
        "",
        f"{count} prompts; state: layer {layer}, last real prompt token; dominant language "
        f"`{geo.dominant}`; language mean = average of the {'/'.join(geo.mean_classes)} class mean(s).",
        "",
        "| language | safe | unsafe | mean norm | shift norm (LSAR) | distance to dominant | cosine distance | "
        "safe/unsafe separation |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for g in geo.languages:
        sep = g.separation
        cell = "–" if sep is None else f"{_num(sep.score)} ({_num(sep.distance)} / {_num(sep.spread)})"
        lines.append(
            f"| {g.language} | {g.counts[SAFE]} | {g.counts[UNSAFE]} | {_num(g.mean_norm)} | {_num(g.shift_norm)} | "
            f"{_num(g.euclidean_distance)} | {_num(g.cosine_distance, 4)} | {cell} |"
        )
    singular = ", ".join(_num(v) for v in geo.singular_values)
    lines += [
        "",
        f"LSAR (rank {geo.rank}): common direction norm {_num(geo.common_norm)}; singular values of the "
        f"language-specific subspace: {singular}. Separation: distance of the class means / pooled "
        "within-class spread.",
    ]
    if before is not None and result_changes is not None:
        lines += [
            "",
            f"## Before (`{before.label}`) → after (`{label}`), same prompts",
            "",
            "| language | shift norm | distance to dominant | cosine distance | separation |",
            "|---|---|---|---|---|",
        ]
        for c in result_changes:
            lines.append(
                f"| {c.language} | {_change(c.shift_norm)} | {_change(c.euclidean_distance)} | "
                f"{_change(c.cosine_distance)} | {_change(c.separation)} |"
            )
    basis = "fitted on both probes' states (one basis)" if before else "fitted on these states"
    lines += [
        "",
        f"![PCA of the states]({PLOT_FILE})",
        "",
        f"PCA {basis}: PC1 {100 * pca.explained[0]:.1f}%, PC2 {100 * pca.explained[1]:.1f}% of the variance.",
    ]
    return "\n".join(lines) + "\n"


def plot_pca(
    pca: Pca,
    panels: Sequence[tuple[str, Tensor, Sequence[tuple[str, str]]]],
    geo: Geometry,
    path: Path,
    *,
    layer: int,
) -> Path:
    """One scatter panel per (title, states, rows), all in the basis `pca` and on the same axes: one colour
    per language (the dominant one first), a circle per safe prompt, a cross per unsafe one."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    from safetune.storage import atomic_open

    languages = [g.language for g in geo.languages]
    colours = {lang: f"C{k % 10}" for k, lang in enumerate(languages)}
    markers = {SAFE: "o", UNSAFE: "x"}
    fig = Figure(figsize=(6.0 * len(panels) + 1.6, 5.2), dpi=150)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), sharex=True, sharey=True, squeeze=False)[0]
    roles = ["before: ", "after: "] if len(panels) == 2 else [""] * len(panels)
    for ax, role, (title, states, rows) in zip(axes, roles, panels, strict=True):
        points = pca.project(states).numpy()
        for lang in languages:
            for label in LABELS:
                picked = [i for i, row in enumerate(rows) if row == (lang, label)]
                if picked:
                    ax.scatter(
                        points[picked, 0],
                        points[picked, 1],
                        s=22,
                        c=colours[lang],
                        marker=markers[label],
                        alpha=0.75,
                    )
        ax.set_title(role + (title if len(title) <= 48 else f"…{title[-47:]}"), fontsize=10)
        ax.set_xlabel(f"PC1 ({100 * pca.explained[0]:.1f}%)")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel(f"PC2 ({100 * pca.explained[1]:.1f}%)")
    handles = [
        Line2D([], [], color=colours[lang], marker="s", linestyle="", label=lang) for lang in languages
    ]
    handles += [
        Line2D([], [], color="0.3", marker=markers[label], linestyle="", label=f"{label} prompt")
        for label in LABELS
    ]
    fig.legend(handles=handles, loc="center right", fontsize=9, frameon=False)
    where = "final layer" if layer == -1 else f"hidden_states[{layer}]"
    fig.suptitle(f"Last-prompt-token states ({where}), PCA" + (": before → after" if len(panels) > 1 else ""))
    fig.tight_layout(rect=(0, 0, 1 - 1.4 / (6.0 * len(panels) + 1.6), 1))
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=150)
    return path
