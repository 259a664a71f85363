"""The executors' registry, the sequential executor, and the Ray executor's parts that need no Ray
running: its options, what a unit asks for, how many run at once, the environment passed to workers,
the failure line, and the checks a task makes before it works. A local Ray runs the units in
tests/integration/test_ray_executor.py (slow tier)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from safetune.assess.executors import EXECUTORS, SequentialExecutor, Unit, UnitFailed, build_executor
from safetune.assess.ray_executor import (
    HOST_NOTE,
    PASSED_ENV,
    RayExecutor,
    RayOptions,
    capacity,
    failure_line,
    run_unit,
    runtime_env,
    source_fingerprint,
)
from safetune.errors import ConfigError, SafetuneError

SRC = Path(__file__).resolve().parents[2] / "src"


def test_registry_lists_both_and_names_the_known_ones():
    assert set(EXECUTORS) == {"sequential", "ray"}
    with pytest.raises(ConfigError, match=r"unknown executor 'dask' \(known: sequential, ray\)"):
        build_executor("dask")
    assert issubclass(UnitFailed, SafetuneError)  # the CLI prints it as one line


def test_sequential_runs_in_order_and_a_failure_stops_it(tmp_path):
    done: list[str] = []

    def work(unit: Unit) -> None:
        if unit.role == "bad":
            raise ValueError("boom")
        done.append(unit.id)

    units = [Unit(str(tmp_path), role, "sft") for role in ("a", "b", "bad", "c")]
    runner = build_executor("sequential").run(units, work)
    assert [next(runner).id, next(runner).id] == ["a/sft", "b/sft"]
    with pytest.raises(ValueError, match="boom"):
        next(runner)
    assert done == ["a/sft", "b/sft"]  # c never started
    assert isinstance(build_executor("sequential"), SequentialExecutor)


def test_everything_but_the_ray_executor_itself_works_without_ray(tmp_path):
    # `ray` made unimportable (None in sys.modules: `import ray` raises ImportError), as on an install
    # without the extra.
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "from safetune.assess.executors import Unit, build_executor\n"
        "import safetune.assess.ray_executor\n"
        "from safetune.errors import ConfigError\n"
        f"out = {str(tmp_path)!r}\n"
        "def work(unit):\n"
        "    open(f'{out}/{unit.role}.txt', 'w').write(unit.id)\n"
        "print([u.id for u in build_executor('sequential').run([Unit(out, 'a', 'sft')], work)])\n"
        "try:\n"
        "    build_executor('ray')\n"
        "except ConfigError as err:\n"
        "    print(err)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == "['a/sft']"
    assert (tmp_path / "a.txt").read_text() == "a/sft"
    assert lines[1].startswith("--executor ray needs Ray, which is not installed")
    assert lines[1].endswith("pip install 'safetune[ray]'")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"gpus_per_unit": -1.0}, r"--ray-gpus-per-unit must be a finite number >= 0 and <= 64, got -1.0"),
        ({"cpus_per_unit": 0.0}, r"--ray-cpus-per-unit must be a finite number > 0 and <= 1024, got 0.0"),
        ({"local_gpus": 1.5}, r"--ray-local-gpus must be an integer, got 1.5"),
        ({"cpus_per_unit": float("nan")}, r"--ray-cpus-per-unit must be a finite number"),
        ({"local_cpus": 0}, r"--ray-local-cpus must be an integer >= 1 and <= 4096, got 0"),
        ({"retries": 11}, r"--ray-retries must be an integer >= 0 and <= 10, got 11"),
        ({"address": " "}, r"--ray-address: empty"),
        ({"address": "auto", "local_cpus": 2}, r"do not apply with --ray-address"),
    ],
)
def test_bad_options_name_the_flag(options, message):
    with pytest.raises(ConfigError, match=message):
        RayOptions(**options)


def test_unknown_option_names_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown option 'gpus' \(known: address, cpus_per_unit"):
        build_executor("ray", gpus=1)


def test_a_unit_asks_for_one_gpu_where_there_are_gpus_else_one_cpu():
    auto = RayExecutor()
    assert auto.request({"CPU": 64.0, "GPU": 8.0}) == {"CPU": 1.0, "GPU": 1.0}
    assert auto.request({"CPU": 2.0}) == {"CPU": 1.0, "GPU": 0.0}
    assert auto.request({"CPU": 2.0, "GPU": 0.0}) == {"CPU": 1.0, "GPU": 0.0}
    packed = RayExecutor(RayOptions(gpus_per_unit=0.5, cpus_per_unit=4))
    assert packed.request({"CPU": 64.0, "GPU": 8.0}) == {"CPU": 4.0, "GPU": 0.5}


def test_capacity_is_the_scarcest_resource():
    assert capacity({"CPU": 64.0, "GPU": 8.0}, {"CPU": 1.0, "GPU": 1.0}) == 8
    assert capacity({"CPU": 64.0, "GPU": 8.0}, {"CPU": 4.0, "GPU": 0.5}) == 16
    assert capacity({"CPU": 6.0, "GPU": 8.0}, {"CPU": 4.0, "GPU": 0.5}) == 1
    assert capacity({"CPU": 2.0}, {"CPU": 1.0, "GPU": 0.0}) == 2  # a zero request does not count
    assert capacity({"CPU": 0.3 * 10}, {"CPU": 0.3}) == 10  # 3.0000000000000004 / 0.3: no float loss
    assert capacity({"CPU": 2.0}, {"CPU": 1.0, "GPU": 1.0}) == 0  # no GPU at all: nothing fits


def test_workers_get_the_caches_and_offline_flags_but_no_secret():
    environ = {
        "HF_HUB_OFFLINE": "1",
        "SAFETUNE_CACHE": "/shared/cache",
        "HF_TOKEN": "hf_secret",
        "OPENAI_API_KEY": "sk-secret",
        "PATH": "/usr/bin",
        "PYTHONPATH": "/opt/extra",
    }
    env = runtime_env(environ)["env_vars"]
    assert env["HF_HUB_OFFLINE"] == "1" and env["SAFETUNE_CACHE"] == "/shared/cache"
    assert "HF_TOKEN" not in env and "OPENAI_API_KEY" not in env and "PATH" not in env
    assert not any("secret" in value for value in env.values())
    assert set(env) <= {*PASSED_ENV, "PYTHONPATH"}
    # A source checkout (these tests run from one): its src/ goes first, so workers import this safetune.
    assert env["PYTHONPATH"].split(os.pathsep) == [str(SRC), "/opt/extra"]
    assert runtime_env({"PYTHONPATH": str(SRC)})["env_vars"]["PYTHONPATH"] == str(SRC)  # not twice


class _RemoteError(Exception):
    """Stands for Ray's RayTaskError: the work's exception in `cause`, the remote traceback in str()."""

    def __init__(self, cause: BaseException):
        super().__init__("Traceback (most recent call last):\n  File ...\nValueError: boom")
        self.cause = cause


def test_failure_line_gives_the_unit_the_node_and_the_remote_error_in_one_line():
    cause = ValueError("boom\nsecond line")
    cause.add_note(f"{HOST_NOTE}node-7")
    unit = Unit("/s", "villain", "sarft")
    assert (
        failure_line(unit, _RemoteError(cause))
        == "unit villain/sarft failed on node-7: ValueError: boom second line"
    )
    # Ray's own error (the worker died, out of memory): no cause, no node note.
    died = RuntimeError("The worker died unexpectedly")
    assert failure_line(unit, died) == "unit villain/sarft failed: RuntimeError: The worker died unexpectedly"


def test_a_task_refuses_another_safetune_or_an_unseen_study_and_names_its_node(tmp_path):
    unit = Unit(str(tmp_path), "a", "sft")
    ran: list[str] = []
    with pytest.raises(
        ConfigError, match=r"imports safetune from .* not the driver's .*same safetune on every"
    ):
        run_unit(ran.append, unit, "0" * 16)
    missing = Unit(str(tmp_path / "gone"), "a", "sft")
    with pytest.raises(
        ConfigError, match=r"does not see the study folder .*gone: it must be on a filesystem"
    ):
        run_unit(ran.append, missing, source_fingerprint())
    assert ran == []

    def fails(unit: Unit) -> None:
        raise KeyError("x")

    with pytest.raises(KeyError) as caught:
        run_unit(fails, unit, source_fingerprint())
    assert any(note.startswith(HOST_NOTE) for note in caught.value.__notes__)
    assert run_unit(lambda u: ran.append(u.id), unit, source_fingerprint()) and ran == ["a/sft"]


def test_source_fingerprint_is_the_same_for_a_copy_and_changes_with_one_byte(tmp_path):
    shutil.copytree(SRC / "safetune", tmp_path / "safetune", ignore=shutil.ignore_patterns("__pycache__"))
    code = "from safetune.assess.ray_executor import source_fingerprint as f; print(f())"

    def fingerprint() -> str:
        env = {**os.environ, "PYTHONPATH": str(tmp_path)}
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    assert fingerprint() == source_fingerprint()  # another folder, the same files: the same safetune
    errors = tmp_path / "safetune" / "errors.py"
    errors.write_text(errors.read_text() + "\n")
    assert fingerprint() != source_fingerprint()


def test_flags_not_given_are_left_out_and_a_ray_flag_without_ray_is_refused():
    flags = {"address": None, "gpus_per_unit": None, "worker_logs": False}
    assert isinstance(build_executor("sequential", **flags), SequentialExecutor)
    with pytest.raises(ConfigError, match=r"--ray-address applies to --executor ray only"):
        build_executor("sequential", address="auto", worker_logs=False)


def test_the_ray_executor_keeps_its_defaults_for_flags_not_given():
    pytest.importorskip("ray")  # in the dev install; building checks that Ray imports (starts nothing)
    flags = {"address": None, "gpus_per_unit": None, "worker_logs": False, "cpus_per_unit": 2.0}
    executor = build_executor("ray", **flags)
    assert isinstance(executor, RayExecutor) and executor.options == RayOptions(cpus_per_unit=2.0)


def test_safetune_list_shows_every_executor() -> None:
    from typer.testing import CliRunner

    from safetune.assess.executors import EXECUTORS
    from safetune.cli import app

    listed = CliRunner().invoke(app, ["list"]).output
    assert "study executors" in listed
    assert all(f"  {name}" in listed for name in EXECUTORS) and len(EXECUTORS) >= 2
