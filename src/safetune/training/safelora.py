"""SafeLoRA on a LoRA adapter on disk: as the last step of `safetune train --method safelora` (SafeLoraRecipe:
SFT as `--method sft`, then the projection of `final/`) and after the fact on any LoRA run folder
(`safetune safelora RUN -o OUT`, `project_run`). The projection math is methods/safelora.py; this module
reads the adapter and the two models' weights (one tensor at a time) and writes the results.

A projected run folder holds:
    final/          the projected adapter (safetensors) + adapter_config.json + tokenizer
    trained/        (train --method safelora only) the adapter as trained, for another projection later
    safelora.json   settings, the threshold used and per module: cosine, projected, ||B|| before and after
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer

from safetune import __version__
from safetune.config import MethodConfig, RunConfig, dump_config, load_run_config
from safetune.errors import ConfigError
from safetune.methods.registry import MethodSpec, get_method
from safetune.methods.safelora import Projection, alignment_projector, lora_modules, project_adapter
from safetune.models.loading import check_model_folder, default_device, resolve_model
from safetune.models.weights import WeightFiles
from safetune.provenance import git_commit
from safetune.storage import atomic_open, follow_umask, hash_json, output_lock, write_json
from safetune.training.common import adapted_modules
from safetune.training.recipe import RecipeReport
from safetune.training.trainer import RoleRecipe

log = logging.getLogger(__name__)

ADAPTER_FILE = "adapter_model.safetensors"
REPORT_FILE = "safelora.json"
TRAINED = "trained"  # the adapter before its projection, in a `train --method safelora` run folder
# Every projector and cosine is computed in float32 (the official code computes in the models' dtype,
# bf16 in the authors' PEFT port): rounding at 5 decimals needs more than bf16's 3 significant digits.
COMPUTE_DTYPE = torch.float32


def check_settings(method: MethodConfig, finetune: str) -> None:
    """What SafeLoRA needs before any work: a LoRA run and the unaligned model (both model folders, when
    local, must exist and hold whole safetensors)."""
    if finetune != "lora":
        raise ConfigError(
            "method safelora projects a LoRA update: use train.finetune=lora (--finetune lora), not full"
        )
    if not method.unaligned_model:
        raise ConfigError(
            "method.unaligned_model is required by safelora: the pretrained model the aligned (chat) model "
            "was aligned from, e.g. meta-llama/Llama-2-7b-hf for Llama-2-7b-chat"
        )
    check_model_folder(method.unaligned_model, "method.unaligned_model")
    if method.aligned_model:
        check_model_folder(method.aligned_model, "method.aligned_model")


def check_distinct(aligned: str, unaligned: str) -> None:
    """The aligned and unaligned models must differ (V = 0 has no direction to project onto)."""
    same = Path(aligned).expanduser().resolve() == Path(unaligned).expanduser().resolve()
    if aligned == unaligned or (Path(aligned).expanduser().is_dir() and same):
        raise ConfigError(
            f"method.unaligned_model {unaligned!r} is the aligned model itself: SafeLoRA needs the "
            "pretrained model the aligned one was aligned from"
        )


def check_shapes(
    modules: Sequence[tuple[str, tuple[int, ...]]], aligned: WeightFiles, unaligned: WeightFiles
) -> None:
    """Each adapted module's weight is in both models with the adapted model's shape (file headers only)."""
    for name, shape in modules:
        key = f"{name}.weight"
        for files in (aligned, unaligned):
            found = files.shape(key)
            if found != shape:
                raise ConfigError(
                    f"{files.what} {files.model_id!r}: {key} has shape {list(found)}, the fine-tuned "
                    f"model's is {list(shape)}: SafeLoRA needs the same architecture"
                )


def project_folder(
    adapter_dir: Path, method: MethodConfig, aligned: str, revision: str | None = None
) -> tuple[Projection, dict[str, Any]]:
    """The projection of `adapter_dir`'s adapter (read, never written) and safelora.json's content."""
    from safetensors.torch import load_file

    path = adapter_dir / ADAPTER_FILE
    if not path.is_file():
        raise ConfigError(f"{adapter_dir}: no {ADAPTER_FILE} (SafeLoRA reads safetensors adapters only)")
    check_model_folder(str(adapter_dir), "LoRA adapter")
    adapter = load_file(str(path))
    modules = lora_modules(list(adapter))
    assert method.unaligned_model  # check_settings
    aligned_files = WeightFiles(aligned, revision, "method.aligned_model")
    unaligned_files = WeightFiles(method.unaligned_model, None, "method.unaligned_model")
    shapes = [(name, (adapter[b].shape[0], adapter[a].shape[1])) for name, (a, b) in modules.items()]
    check_shapes(shapes, aligned_files, unaligned_files)

    device = default_device()  # an MLP module's C is d_out^2 (14336^2 in an 8B model): a GPU's work

    def projector_of(name: str) -> torch.Tensor:
        key = f"{name}.weight"
        try:
            return alignment_projector(
                aligned_files.tensor(key).to(device),
                unaligned_files.tensor(key).to(device),
                method.safelora_projector,
                COMPUTE_DTYPE,
            )
        except ValueError as err:
            raise ConfigError(f"{key}: {err} (method.aligned_model vs method.unaligned_model)") from None

    with torch.no_grad():
        projection = project_adapter(
            adapter,
            projector_of,
            mode=method.safelora_mode,
            k=method.safelora_k,
            threshold=method.safelora_threshold,
        )
    report = {
        "adapter": str(adapter_dir),
        "aligned_model": aligned,
        "unaligned_model": method.unaligned_model,
        "mode": method.safelora_mode,
        "k": method.safelora_k if method.safelora_mode == "number" else None,
        "threshold": projection.threshold,
        "projector": method.safelora_projector,
        "compute_dtype": str(COMPUTE_DTYPE).removeprefix("torch."),
        "adapter_dtype": sorted({str(t.dtype).removeprefix("torch.") for t in adapter.values()}),
        "cosine_decimals": 5,
        "modules_projected": sum(m.projected for m in projection.modules),
        "modules_total": len(projection.modules),
        "modules": [asdict(m) for m in projection.modules],
    }
    return projection, report


def write_adapter(source: Path, target: Path, projection: Projection, base: str | None = None) -> None:
    """`target` (created whole or not at all): `source`'s files (config, tokenizer) with the projected
    weights; `base` replaces adapter_config.json's base_model_name_or_path when given."""
    from safetensors.torch import save_file

    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    save_file(projection.weights, str(tmp / ADAPTER_FILE), metadata={"format": "pt"})
    if base is not None:
        config_path = tmp / "adapter_config.json"
        adapter_config = json.loads(config_path.read_text(encoding="utf-8"))
        adapter_config["base_model_name_or_path"] = base
        config_path.write_text(json.dumps(adapter_config, indent=2) + "\n", encoding="utf-8")
    follow_umask(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


def _summary(report: dict[str, Any]) -> str:
    return (
        f"{report['modules_projected']} of {report['modules_total']} modules projected "
        f"({report['mode']}, cosine <= {report['threshold']:g}, {report['projector']} projector)"
    )


class SafeLoraRecipe(RoleRecipe):
    """SFT on the role data (RoleRecipe with beta 0), then SafeLoRA's projection of the trained adapter:
    `trained/` keeps it as trained, `final/` becomes the projected adapter, safelora.json the report."""

    def __init__(self, config: RunConfig, spec: MethodSpec):
        super().__init__(config, spec)
        check_settings(config.method, config.train.finetune)
        if config.model.name:
            check_distinct(self.aligned, str(config.method.unaligned_model))

    @property
    def aligned(self) -> str:
        """The aligned model: the one being fine-tuned unless method.aligned_model names another copy."""
        return self.config.method.aligned_model or self.config.model.name

    def frozen_pass(self, model: Any, fingerprint: str) -> dict[str, str]:
        # Refuse unaligned/aligned weights of another architecture before training, not after it.
        revision = None if self.config.method.aligned_model else self.config.model.revision
        check_shapes(
            [(name, tuple(module.weight.shape)) for name, module in adapted_modules(model, self.config)],
            WeightFiles(self.aligned, revision, "method.aligned_model"),
            WeightFiles(str(self.config.method.unaligned_model), None, "method.unaligned_model"),
        )
        if self.conversations is not None:
            # SFT's loss with beta 0 reads no flag: conversations skip the per-turn RDS pass and train
            # every conversation row unchanged.
            self.rows = self.unselected_rows()
            self.flags = [False] * len(self.rows)
            return {}
        return super().frozen_pass(model, fingerprint)

    def write_files(self, out: Path) -> None:
        if self.conversations is None:  # single-turn rows keep SFT's selection.jsonl
            super().write_files(out)

    def after_training(self, trainer: Trainer, out: Path) -> None:
        revision = None if self.config.method.aligned_model else self.config.model.revision
        final, trained = out / "final", out / TRAINED
        projection, self.safelora = project_folder(final, self.config.method, self.aligned, revision)
        self.safelora["adapter"] = TRAINED
        # trained/ first: a crash between the two renames leaves the trained adapter in place, never lost.
        shutil.rmtree(trained, ignore_errors=True)
        shutil.copytree(final, trained)
        write_adapter(trained, final, projection)
        write_json(out / REPORT_FILE, self.safelora)
        log.info("SafeLoRA: %s", _summary(self.safelora))

    def report(self, trainer: Trainer, metrics: dict[str, Any]) -> RecipeReport:
        if self.conversations is not None:
            config = self.config
            report = RecipeReport(
                details={
                    "data": self.data_details(len(self.rows)),
                    "invalid_records": self.invalid.report(),
                },
                card_rows=[
                    f"| data | `{config.data.path}` (role: {config.data.role or 'all'}) |",
                    self.data_card_row(len(self.rows)),
                ],
            )
        else:
            report = super().report(trainer, metrics)
        s = getattr(self, "safelora", None)
        if s is None:  # a process other than the main one, which projected
            return report
        report.details["safelora"] = {k: v for k, v in s.items() if k != "modules"}
        report.metrics["safelora_modules_projected"] = s["modules_projected"]
        report.card_rows.append(f"| SafeLoRA | {_summary(s)}; unaligned model `{s['unaligned_model']}` |")
        return report


def project_run(
    run: Path,
    out: Path,
    method: MethodConfig,
    aligned: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """SafeLoRA after the fact: project the LoRA adapter of `run` (a run folder, its `final/`, or an adapter
    folder; a `train --method safelora` run's `trained/`) into the new run folder `out`; returns the
    report. `aligned` defaults to the adapter's base model (the run's model.name). `run` is only read."""
    check_settings(method, "lora")
    run, out = run.resolve(), out.resolve()
    if out == run or out.is_relative_to(run) or run.is_relative_to(out):
        raise ConfigError(
            f"-o {out}: the output must be outside the input run {run} (which is never written)"
        )
    folders = (run / TRAINED, run / "final", run)
    adapter_dir = next((d for d in folders if (d / "adapter_config.json").is_file()), None)
    if adapter_dir is None:
        raise ConfigError(
            f"{run} holds no LoRA adapter (adapter_config.json): SafeLoRA projects LoRA runs only"
        )
    source = resolve_model(str(adapter_dir))
    assert source.adapter is not None  # a folder with adapter_config.json
    adapter = Path(source.adapter)
    run_dir = run if (run / "config.yaml").is_file() else adapter.parent
    base = aligned or source.base
    check_distinct(base, str(method.unaligned_model))
    if (out / "final").exists() and not overwrite:
        raise ConfigError(f"{out} already holds a run; pass --overwrite to replace it")
    projection, report = project_folder(adapter, method, base, None if aligned else source.revision)
    config = load_run_config(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() else RunConfig()
    config.method = MethodConfig(**{**asdict(method), "name": "safelora", "aligned_model": base, "beta": 0.0})
    config.model.name, config.train.output_dir = source.base, str(out)
    with output_lock(out):
        write_adapter(adapter, out / "final", projection, base=source.base)
        write_json(out / REPORT_FILE, report)
        with atomic_open(out / "config.yaml") as handle:
            handle.write(dump_config(config))
        spec = get_method("safelora")
        write_json(
            out / "run.json",
            {
                "safetune_version": __version__,
                "git_commit": git_commit(),
                "method": spec.name,
                "source": spec.source,
                "projected_from": str(run),
                "base_model": source.base,
                "finetune": "lora",
                "config_hash": hash_json(config.to_dict()),
                "safelora": {k: v for k, v in report.items() if k != "modules"},
                "metrics": {"safelora_modules_projected": report["modules_projected"]},
            },
        )
    log.info("SafeLoRA: %s", _summary(report))
    return report
