"""The Ray executor on a local 2-CPU Ray (each test starts and stops one: half a minute on 2 busy cores),
against the sequential executor on the same units with the same work."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from safetune.assess.executors import Unit, UnitFailed, build_executor
from safetune.storage import hash_json, write_json

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

# The work below lives in this test module, which Ray's workers cannot import (tests/ is not a package on
# their path): ship its functions by value. A study's work is a function in safetune, shipped by name.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _work(unit: Unit) -> None:
    """A unit's work as a study's: its folder, an intermediate file, the result written atomically last.
    What it writes depends on the unit alone; where and when it ran goes to a separate file."""
    started = time.time()
    folder = Path(unit.study) / "units" / unit.role / unit.method
    folder.mkdir(parents=True, exist_ok=True)
    if unit.role == "broken":
        raise ValueError(f"no profile for role {unit.role!r}\n(see profiles.json)")
    words = [f"{unit.role}-{i}" for i in range(50 * len(unit.role))]
    (folder / "train.jsonl").write_text("".join(json.dumps({"text": w}) + "\n" for w in words))
    time.sleep(1.5 if unit.role == "slow" else 0.2)  # long enough for two units to overlap on 2 CPUs
    write_json(folder / "result.json", {"unit": unit.id, "examples": len(words), "digest": hash_json(words)})
    where = {
        "pid": os.getpid(),
        "start": started,
        "end": time.time(),
        "offline": os.environ.get("HF_HUB_OFFLINE"),
    }
    write_json(folder / "ran.json", where)


def _files(study: Path) -> dict[str, str]:
    return {
        path.relative_to(study).as_posix(): path.read_text()
        for path in sorted(study.rglob("*"))
        if path.is_file() and path.name != "ran.json"
    }


def test_ray_runs_the_same_units_to_the_same_files_as_sequential(tmp_path):
    roles = ("hero", "villain", "sage", "slow", "jester")
    studies = {name: tmp_path / name for name in ("sequential", "ray")}
    finished = {}
    for name, study in studies.items():
        study.mkdir()
        units = [Unit(str(study), role, method) for role in roles for method in ("sft", "sarft")]
        executor = build_executor(name, **({"local_cpus": 2} if name == "ray" else {}))
        finished[name] = sorted(unit.id for unit in executor.run(units, _work))
    assert (
        finished["ray"]
        == finished["sequential"]
        == sorted(f"{r}/{m}" for r in roles for m in ("sft", "sarft"))
    )
    assert _files(studies["ray"]) == _files(studies["sequential"])
    assert len(_files(studies["ray"])) == 20
    ran = [json.loads(p.read_text()) for p in sorted(studies["ray"].rglob("ran.json"))]
    assert {r["pid"] for r in ran}.isdisjoint({os.getpid()})  # in Ray's workers, not here
    assert {r["offline"] for r in ran} == {"1"}  # the driver's HF_HUB_OFFLINE reached them
    # Two CPUs, one per unit: some units overlapped, and never more than two at once.
    events = sorted([(r["start"], 1) for r in ran] + [(r["end"], -1) for r in ran])
    running = [sum(step for _, step in events[: i + 1]) for i in range(len(events))]
    assert max(running) == 2
    assert not ray.is_initialized()  # the local Ray it started is stopped


def test_a_failing_unit_raises_its_id_and_error_after_the_running_ones_finish(tmp_path):
    # Two at once: "slow" and "broken" start together; "broken" fails at once, "slow" finishes later and
    # keeps its result, and the queued units are never started.
    units = [Unit(str(tmp_path), role, "sft") for role in ("slow", "broken", "hero", "sage")]
    finished: list[str] = []
    with pytest.raises(UnitFailed) as caught:
        for unit in build_executor("ray", local_cpus=2).run(units, _work):
            finished.append(unit.id)
    message = str(caught.value)
    assert message.startswith("unit broken/sft failed on ")
    assert message.endswith(": ValueError: no profile for role 'broken' (see profiles.json)")
    assert "\n" not in message and "Traceback" not in message
    assert finished == ["slow/sft"]
    assert (tmp_path / "units" / "slow" / "sft" / "result.json").is_file()
    assert not (tmp_path / "units" / "hero").exists() and not (tmp_path / "units" / "sage").exists()
    assert not ray.is_initialized()
