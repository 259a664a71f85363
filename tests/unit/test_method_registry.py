"""The one method registry (methods/registry.py): complete, read by the CLI, tied to the training recipes,
and importable without anything from `safetune.training`."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from safetune.cli import app
from safetune.config import RunConfig
from safetune.errors import ConfigError
from safetune.methods.registry import METHODS, get_method
from safetune.training.baselines import TRL_TRAINERS
from safetune.training.run import RECIPES, resolve_beta


def test_importing_methods_imports_no_trainer():
    code = (
        "import sys, safetune.methods.registry, safetune.methods.losses, safetune.methods.reward_gap\n"
        "print([m for m in sys.modules if m.startswith('safetune.training')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_method_has_its_recipe_and_every_trl_builder_its_method():
    assert {"sarft", "sft", "mpo", "dpo", "kto", "r-dpo"} <= set(METHODS)
    for name, spec in METHODS.items():
        assert spec.name == name and spec.summary and spec.source
        assert spec.recipe in RECIPES
        assert spec.uses_beta or spec.default_beta == 0
    trl = {name for name, spec in METHODS.items() if spec.recipe == "trl"}
    assert trl == set(TRL_TRAINERS)
    assert {spec.data_kind for spec in METHODS.values() if spec.recipe == "trl"} == {"preference"}


def test_unknown_method_names_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown method 'nope'.*sarft"):
        get_method("nope")


@pytest.mark.parametrize(
    ("method", "given", "resolved"),
    [("sarft", None, 0.1), ("sarft", 0.5, 0.5), ("mpo", None, 1.0), ("sft", 0.3, 0.0), ("orpo", None, 0.0)],
)
def test_beta_is_resolved_once_from_the_registry(method, given, resolved):
    config = RunConfig()
    config.method.name, config.method.beta = method, given
    resolve_beta(config, get_method(method))
    assert config.method.beta == resolved


def test_list_and_train_help_read_the_registry():
    runner = CliRunner()
    listed = runner.invoke(app, ["list"]).output
    assert all(f"  {name} " in listed for name in METHODS)
    helped = " ".join(runner.invoke(app, ["train", "--help"], terminal_width=400).output.split())
    assert all(name in helped for name in METHODS)
