"""The `ray` executor: each unit of a study a Ray task, on a local Ray or an existing cluster.

Ray is an optional extra (`pip install 'safetune[ray]'`): nothing here imports it at module level, so the
rest of safetune (and the sequential executor) imports and runs without it; building this executor
without Ray installed is a ConfigError that says what to install.

How a study runs on Ray:

- `address=None` starts a local Ray sized to this machine (every CPU and GPU it sees, or `local_cpus` /
  `local_gpus`) and stops it when the study ends; "auto" or "HOST:PORT" joins a running cluster (started
  with `ray start`), which is left running.
- Each unit is one task. It asks for one GPU when the cluster has GPUs and for none otherwise (then one
  CPU); `gpus_per_unit` / `cpus_per_unit` set that by hand. Ray gives a GPU task its GPU through
  CUDA_VISIBLE_DEVICES, so the unit's fine-tune sees it as cuda:0.
- Units are submitted only as far as the cluster can run them at once (re-read as each unit finishes, so
  an autoscaled cluster's new nodes are used), so a queued unit never started is simply not submitted
  after a failure, and a failing unit raises `UnitFailed` (its id and the remote error, one line) once
  the units already running have finished: their results stay on disk.
- Ctrl-C or a kill of the driver: the running tasks are cancelled (their worker processes killed) and
  a local Ray is stopped; a unit writes its result atomically last, so a killed unit has no result and
  the next `safetune assess` on the same folder runs it again, and never a finished one.
- Workers run the same safetune as the driver: the task checks a fingerprint of safetune's source
  files and refuses to run on a node whose safetune differs (install the same safetune on every node or
  share one checkout). The environment a unit needs (offline flags, caches: `PASSED_ENV`) is passed
  through; secrets (HF_TOKEN, API keys) are never put in a task's arguments or environment, which Ray
  keeps in its control store and shows on its dashboard: a node that needs one has it in its own
  environment.
- The study folder must be on a filesystem every node mounts at the same path (the work writes its
  results there); a task on a node that does not see it fails with that said.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import socket
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from safetune.assess.units import Unit, UnitFailed, Work
from safetune.config import check_number, number
from safetune.errors import ConfigError, SafetuneError, one_line

log = logging.getLogger(__name__)

# The environment a unit's work reads, passed from the driver to every task when set there: the cache
# roots (so that every node finds the organisms, reference passes and models the driver prepared on the
# shared filesystem), the offline switches, and the thread settings of the tokenizers and BLAS. Secrets
# are deliberately absent (see the module's docstring).
PASSED_ENV = (
    "SAFETUNE_CACHE",
    "HF_HOME",
    "HF_HUB_CACHE",
    "HF_DATASETS_CACHE",
    "HF_HUB_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_HUB_DISABLE_TELEMETRY",
    "TOKENIZERS_PARALLELISM",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
)

INSTALL_HINT = "pip install 'safetune[ray]'"
LOCAL_START_TRIES = 3


@dataclass(frozen=True)
class RayOptions:
    """The `--ray-*` settings of `--executor ray`; every number range-checked when built.

    address        None: start a local Ray; "auto" or "HOST:PORT": join a running cluster
    gpus_per_unit  None: 1 when the cluster has GPUs, else 0; a fraction packs units onto one GPU
    cpus_per_unit  CPUs each unit reserves (Ray's scheduling only: it does not pin threads)
    local_cpus     CPUs of a local Ray (None: all this machine has); only without `address`
    local_gpus     GPUs of a local Ray (None: all Ray detects); only without `address`
    retries        times Ray reruns a unit whose worker or node died (not one that raised)
    worker_logs    show the workers' output in this terminal (else it stays in Ray's log folder)
    """

    address: str | None = None
    gpus_per_unit: float | None = number(None, ge=0, le=64)
    cpus_per_unit: float = number(1.0, gt=0, le=1024)
    local_cpus: int | None = number(None, ge=1, le=4096)
    local_gpus: int | None = number(None, ge=0, le=1024)
    retries: int = number(0, ge=0, le=10)
    worker_logs: bool = False

    def __post_init__(self) -> None:
        for spec in fields(self):
            value = getattr(self, spec.name)
            if spec.name in ("local_cpus", "local_gpus", "retries") and not (
                value is None or (isinstance(value, int) and not isinstance(value, bool))
            ):
                raise ConfigError(f"--ray-{spec.name.replace('_', '-')} must be an integer, got {value}")
            if value is not None:
                check_number(f"--ray-{spec.name.replace('_', '-')}", spec, value)
        if self.address is not None and not self.address.strip():
            raise ConfigError(
                "--ray-address: empty (leave it unset for a local Ray, or give auto / HOST:PORT)"
            )
        if self.address is not None and (self.local_cpus is not None or self.local_gpus is not None):
            raise ConfigError(
                "--ray-local-cpus / --ray-local-gpus size a local Ray: they do not apply with --ray-address"
            )


def build(**options: Any) -> RayExecutor:
    """The registry's builder: checks the options, then that Ray is importable (nothing started yet)."""
    known = {spec.name for spec in fields(RayOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"ray executor: unknown option {unknown[0]!r} (known: {', '.join(sorted(known))})")
    executor = RayExecutor(RayOptions(**options))
    _import_ray()
    return executor


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as err:
        raise ConfigError(
            f"--executor ray needs Ray, which is not installed ({err}): {INSTALL_HINT}"
        ) from None
    return ray


@functools.cache
def source_fingerprint() -> str:
    """A hash of safetune's own source files (path and bytes): equal on driver and worker exactly when
    both import the same safetune, which a version number (unchanged across commits) would not say."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def runtime_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """The Ray runtime environment of every unit: the `PASSED_ENV` variables set in `environ`, and
    PYTHONPATH with the folder safetune is imported from when that is a source checkout (`src/`, not a
    site-packages folder, which on PYTHONPATH would shadow a node's own packages)."""
    env = {name: environ[name] for name in PASSED_ENV if name in environ}
    home = Path(__file__).resolve().parents[2]
    paths = [part for part in environ.get("PYTHONPATH", "").split(os.pathsep) if part]
    if home.name not in ("site-packages", "dist-packages") and str(home) not in paths:
        paths.insert(0, str(home))
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    return {"env_vars": env}


def capacity(totals: Mapping[str, float], request: Mapping[str, float]) -> int:
    """How many units asking for `request` (resource -> amount; zero amounts ignored) the cluster's
    `totals` hold at once."""
    fits = [
        math.floor(totals.get(name, 0.0) / amount + 1e-9) for name, amount in request.items() if amount > 0
    ]
    return min(fits) if fits else 0


# The note `run_unit` adds to a unit's exception, naming the node (Ray's error that carries the
# exception to the driver keeps the exception, not the node it came from).
HOST_NOTE = "safetune unit ran on "


def failure_line(unit: Unit, err: BaseException) -> str:
    """One line for a failed unit: its id, the node it ran on, and the remote error (the exception the
    work raised, not Ray's wrapper with its traceback; Ray's own error when the worker itself died)."""
    cause = getattr(err, "cause", None)
    shown = cause if isinstance(cause, BaseException) else err
    notes = getattr(shown, "__notes__", None) or []
    hosts = [note[len(HOST_NOTE) :] for note in notes if isinstance(note, str) and note.startswith(HOST_NOTE)]
    text = one_line(str(shown)) or "(no message)"
    at = f" on {hosts[0]}" if hosts else ""
    return f"unit {unit.id} failed{at}: {type(shown).__name__}: {text}"


def run_unit(work: Work, unit: Unit, driver_fingerprint: str) -> str:
    """The body of a unit's Ray task: checks that this node can do the unit's work as the driver would,
    then does it. Returns the node's hostname (for the log)."""
    host = socket.gethostname()
    mine = source_fingerprint()
    if mine != driver_fingerprint:
        raise ConfigError(
            f"node {host} imports safetune from {Path(__file__).resolve().parents[1]} (source {mine}), "
            f"not the driver's (source {driver_fingerprint}): install the same safetune on every node"
        )
    if not Path(unit.study).is_dir():
        raise ConfigError(
            f"node {host} does not see the study folder {unit.study}: it must be on a filesystem every "
            "node mounts at the same path"
        )
    try:
        work(unit)
    except BaseException as err:
        err.add_note(f"{HOST_NOTE}{host}")
        raise
    return host


@dataclass
class RayExecutor:
    """Units as Ray tasks; see the module's docstring."""

    options: RayOptions = field(default_factory=RayOptions)
    name: str = "ray"

    def request(self, totals: Mapping[str, float]) -> dict[str, float]:
        """What one unit asks of the cluster whose resources are `totals`."""
        gpus = self.options.gpus_per_unit
        if gpus is None:
            gpus = 1.0 if totals.get("GPU", 0.0) > 0 else 0.0
        return {"CPU": self.options.cpus_per_unit, "GPU": gpus}

    def run(self, units: Sequence[Unit], work: Work) -> Iterator[Unit]:
        if not units:
            return
        ray = _import_ray()
        started = self._connect(ray)
        pending: dict[Any, Unit] = {}
        try:
            totals = ray.cluster_resources()
            request = self.request(totals)
            room = capacity(totals, request)
            if room < 1:
                have = ", ".join(f"{k} {v:g}" for k, v in sorted(totals.items()) if k in ("CPU", "GPU"))
                raise ConfigError(
                    f"each unit asks for {request['CPU']:g} CPU and {request['GPU']:g} GPU, more than the whole "
                    f"Ray cluster has ({have or 'no CPU or GPU'}): lower assess.cpus_per_unit / "
                    "assess.gpus_per_unit"
                )
            log.info(
                "ray: %d unit(s), up to %d at once (each %g CPU, %g GPU)",
                len(units),
                room,
                request["CPU"],
                request["GPU"],
            )
            task = ray.remote(run_unit).options(
                num_cpus=request["CPU"],
                num_gpus=request["GPU"],
                max_retries=self.options.retries,
                retry_exceptions=False,
                runtime_env=runtime_env(os.environ),
            )
            fingerprint = source_fingerprint()
            # The work function goes to the object store once, not once per task.
            work_ref = ray.put(work)
            queue = list(units)
            failure: str | None = None
            while queue or pending:
                while queue and failure is None and len(pending) < room:
                    unit = queue.pop(0)
                    pending[task.remote(work_ref, unit, fingerprint)] = unit
                if not pending:
                    break
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    unit = pending.pop(ref)
                    try:
                        host = ray.get(ref)
                    except Exception as err:  # the work's own error or Ray's (worker died, OOM)
                        line = failure_line(unit, err)
                        if failure is None:
                            log.error("%s (stopping once the %d running unit(s) finish)", line, len(pending))
                            failure = line
                        else:
                            log.error("%s", line)
                    else:
                        log.debug("ray: unit %s finished on %s", unit.id, host)
                        yield unit
                if failure is None:
                    # An autoscaled cluster may have grown: use its new nodes for the units still queued.
                    room = max(room, capacity(ray.cluster_resources(), request))
            if failure is not None:
                raise UnitFailed(failure)
        finally:
            # Reached with tasks still pending only on Ctrl-C, a kill's exception or the caller closing the
            # generator: stop them (force kills their worker processes) rather than leave them running.
            for ref in pending:
                ray.cancel(ref, force=True)
            if started:
                ray.shutdown()

    def _connect(self, ray: Any) -> bool:
        """Join the cluster or start a local Ray; True when this call started (so must stop) it."""
        if ray.is_initialized():
            return False
        quiet = {
            "include_dashboard": False,
            "log_to_driver": self.options.worker_logs,
            # Ray's own INFO/WARNING lines on start (addresses, the token note) are not this study's news
            "logging_level": logging.ERROR,
            "configure_logging": True,
        }
        if self.options.address is not None:
            try:
                ray.init(address=self.options.address, **quiet)
            except ConnectionError as err:
                raise ConfigError(f"--ray-address {self.options.address}: {one_line(str(err))}") from None
            return True
        # Ray gives a new local node's raylet 30 s (fixed in its code) to register; on a machine whose
        # cores are all busy that can run out (seen on a 2-core machine at load 8), and a fresh try
        # usually gets through.
        for attempt in range(1, LOCAL_START_TRIES + 1):
            try:
                ray.init(num_cpus=self.options.local_cpus, num_gpus=self.options.local_gpus, **quiet)
                return True
            except Exception as err:
                if "timed out during startup" not in str(err):
                    raise
                ray.shutdown()  # whatever of the failed start is still running
                if attempt == LOCAL_START_TRIES:
                    raise SafetuneError(
                        f"a local Ray did not start in {LOCAL_START_TRIES} tries ({one_line(str(err))}): "
                        "this machine is too busy; try again, or start one (`ray start --head`) and pass "
                        "--ray-address auto"
                    ) from None
                log.warning(
                    "ray: the local Ray's start timed out (try %d of %d); again", attempt, LOCAL_START_TRIES
                )
        return True
