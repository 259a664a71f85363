"""What a pair build records beside its data: the counts (per language and per reason), the manifest
(model, generation, judge, translator and its fingerprint, language identifier, chrF signature,
thresholds, package versions, counts) and the short Markdown summary."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from safetune.pairs.filter import NOT_REFUSAL, REASONS

# The packages whose versions change what a build writes (generation, translation, language ID, chrF).
PACKAGES: tuple[str, ...] = (
    "torch",
    "transformers",
    "tokenizers",
    "sacrebleu",
    "lingua-language-detector",
    "vllm",
)


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    """name -> installed version (None: not installed)."""
    found: dict[str, str | None] = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


@dataclass
class Counts:
    """Inputs, kept refusals, and per target language the rows kept and rejected by reason."""

    inputs: int = 0
    refusals_kept: int = 0
    not_refusal: int = 0
    refusals_truncated: int = 0  # kept refusals that ran out of generation.max_new_tokens
    kept: Counter[str] = field(default_factory=Counter)  # language -> rows written
    rejected: Counter[str] = field(default_factory=Counter)  # language -> rows rejected by the filter
    reasons: dict[str, Counter[str]] = field(default_factory=dict)  # language -> reason -> rows

    def add(self, language: str, reasons: Sequence[str]) -> None:
        """One translated row: kept when `reasons` is empty, else rejected, each reason counted once."""
        if not reasons:
            self.kept[language] += 1
            return
        self.rejected[language] += 1
        tally = self.reasons.setdefault(language, Counter())
        tally.update(set(reasons))

    def to_dict(self, languages: Sequence[str]) -> dict[str, Any]:
        return {
            "inputs": self.inputs,
            "refusals_kept": self.refusals_kept,
            "refusals_truncated": self.refusals_truncated,
            "dropped": {NOT_REFUSAL: self.not_refusal},
            "pairs": sum(self.kept.values()),
            "by_language": {
                code: {
                    "kept": self.kept[code],
                    "rejected": self.rejected[code],
                    "reasons": {r: self.reasons.get(code, Counter())[r] for r in REASONS if r != NOT_REFUSAL},
                }
                for code in languages
            },
        }


def summary_markdown(manifest: Mapping[str, Any]) -> str:
    """The build in a few lines: what made it, and the table of rows kept and rejected per language."""
    counts = manifest["counts"]
    model = manifest["model"]["label"] if manifest.get("model") else "(given refusals)"
    translator = manifest["translator"]
    filt = manifest["filter"]
    lines = [
        "# MPO pairs",
        "",
        f"- model: `{model}`; chosen answers: {manifest['chosen']}",
        f"- judge: `{manifest['judge']['key']}`",
        f"- translator: `{translator['kind']}:{translator['model']}` (`{translator['key']}`)",
        f"- filter: language check {filt['language_check']} ({filt['identifier']['name']}), round-trip "
        f"chrF >= {filt['min_chrf']:g}, target refusal {filt['target_refusal']}",
        f"- inputs: {counts['inputs']} prompts; the model's refusal kept for {counts['refusals_kept']}, "
        f"{counts['dropped'][NOT_REFUSAL]} dropped ({NOT_REFUSAL})",
        f"- pairs written: {counts['pairs']} (`{manifest['files']['pairs']}`)",
        "",
    ]
    by_language = counts["by_language"]
    reasons = [r for r in REASONS if r != NOT_REFUSAL]
    lines.append("| language | kept | rejected | " + " | ".join(reasons) + " |")
    lines.append("|" + " --- |" * (3 + len(reasons)))
    for code, row in by_language.items():
        cells = [code, str(row["kept"]), str(row["rejected"]), *(str(row["reasons"][r]) for r in reasons)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Rejected rows, with their reasons and scores: `{manifest['files']['rejected']}`.", ""]
    return "\n".join(lines)
