"""The demo registry feeds `safetune demo` and `safetune organism`, and stays light enough for the help."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from safetune.cli import app
from safetune.demos.registry import DEFAULT_DEMO, DEMOS, demo_for_world


def test_demo_help_lists_every_registered_demo():
    result = CliRunner().invoke(app, ["demo", "--help"])
    assert result.exit_code == 0, result.output
    for name, spec in DEMOS.items():
        assert name in result.output and str(spec.default_out) in result.output
    assert DEFAULT_DEMO in DEMOS


def test_an_unknown_demo_is_one_error_line_and_exit_2():
    result = CliRunner().invoke(app, ["demo", "bogus"])
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "'bogus'" in errors[0] and ", ".join(DEMOS) in errors[0]


def test_each_demo_module_provides_the_interface_and_each_world_one_demo():
    for spec in DEMOS.values():
        demo = spec.load()
        assert callable(demo.run) and callable(demo.write_world)
        assert demo_for_world(spec.world) is spec


def test_the_registry_and_the_cli_import_without_torch():
    code = "import sys, safetune.cli, safetune.demos.registry; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
