"""Output-folder and cache-entry locks, and file modes of written outputs (issue 12, items 10 and 11)."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from safetune.config import SelectionConfig
from safetune.data.records import RoleExample
from safetune.data.role_prompts import prompts_by_role
from safetune.errors import BusyError, ConfigError
from safetune.reference.rds import Score, _score_row, cached_scores, scores_key
from safetune.storage import LOCK_NAME, cache_lock, follow_umask, output_lock, write_jsonl


@contextmanager
def held(lock: Path) -> Iterator[None]:
    """Hold a lock file as another process would (flock locks belong to an open file)."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def test_output_lock_says_busy_when_another_process_holds_the_folder(tmp_path):
    out = tmp_path / "run"
    with held(out / LOCK_NAME), pytest.raises(BusyError, match="is busy") as err, output_lock(out):
        pytest.fail("entered a folder another process holds")
    assert str(out / LOCK_NAME) in str(err.value) and "\n" not in str(err.value)
    with output_lock(out):  # free again
        pass


def test_output_lock_is_reentrant_in_one_process_and_released_after(tmp_path):
    out = tmp_path / "run"
    with output_lock(out), output_lock(out):
        (out / "result.json").write_text("{}")
    with output_lock(out):
        pass


def test_failed_first_run_leaves_no_folder_behind(tmp_path):
    out = tmp_path / "a" / "run"
    with pytest.raises(ValueError), output_lock(out):
        (out / "checkpoints" / "empty").mkdir(parents=True)  # as the Trainer makes its output_dir
        raise ValueError("bad input found before any output")
    assert list(tmp_path.iterdir()) == []  # nor the parent it created


def test_failed_run_in_an_existing_folder_leaves_no_lock_file(tmp_path):
    with pytest.raises(ValueError), output_lock(tmp_path):
        (tmp_path / "checkpoints").mkdir()
        raise ValueError("bad input found before any output")
    assert list(tmp_path.iterdir()) == []


def test_failed_run_keeps_what_it_wrote_and_what_was_there(tmp_path):
    out = tmp_path / "a" / "run"
    with pytest.raises(ValueError), output_lock(out):
        (out / "checkpoints" / "checkpoint-1").mkdir(parents=True)
        (out / "checkpoints" / "checkpoint-1" / "model.safetensors").write_text("x")
        (out / "logs").mkdir()
        raise ValueError("diverged after a checkpoint")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "checkpoints",
        "checkpoints/checkpoint-1",
        "checkpoints/checkpoint-1/model.safetensors",
    ]
    (out / "before").mkdir()  # a folder that was not empty keeps even its empty folders
    with pytest.raises(ValueError), output_lock(out):
        raise ValueError("bad input")
    assert (out / "before").is_dir() and not (out / LOCK_NAME).exists()


def test_output_lock_on_a_file_is_a_config_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a folder"), output_lock(tmp_path / "file"):
        pass


def test_cache_lock_waits_for_the_holder(tmp_path):
    entered = []

    def second() -> None:
        with cache_lock(tmp_path, "rds-key"):
            entered.append(time.monotonic())

    with held(tmp_path / "locks" / "rds-key.lock"):
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.3)
        assert not entered  # still waiting
        released = time.monotonic()
    thread.join(5)
    assert entered and entered[0] >= released


class _Renderer:
    def fingerprint(self) -> str:
        return "template"


def test_a_second_scorer_waits_and_reads_the_entry_the_first_computed(tmp_path):
    examples = [RoleExample(id=f"e{i}", role="R", input=f"q{i}", output=f"a{i}") for i in range(3)]
    config = SelectionConfig()
    prompts = prompts_by_role(examples, {}, config)
    key = scores_key("model", examples, prompts, _Renderer(), config.batch_size)
    results: list[list[Score]] = []

    def loader() -> None:
        pytest.fail("the model was loaded although another process computed the scores")

    def second() -> None:
        results.append(
            cached_scores(loader, _Renderer(), examples, prompts, config.batch_size, "model", tmp_path)[0]
        )  # type: ignore[arg-type]

    with held(tmp_path / "locks" / f"rds-{key}.lock"):
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.3)
        # the first process finishes its entry while the second waits
        write_jsonl(
            tmp_path / "rds" / f"{key}.jsonl", [_score_row(Score(e.id, "R", -1.0, -2.0)) for e in examples]
        )
    thread.join(5)
    assert [s.id for s in results[0]] == ["e0", "e1", "e2"]


def test_rds_cache_key_depends_on_the_batch_size():
    examples = [RoleExample(id="e", role="R", input="q", output="a")]
    prompts = {"R": ("role", "unsafe")}
    assert scores_key("m", examples, prompts, _Renderer(), 8) != scores_key(
        "m", examples, prompts, _Renderer(), 16
    )  # type: ignore[arg-type]


def test_follow_umask_gives_0600_files_the_umask_mode(tmp_path):
    folder = tmp_path / "final"
    folder.mkdir()
    weights = folder / "model.safetensors"
    fd = os.open(weights, os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(fd)
    old = os.umask(0o022)
    try:
        follow_umask(folder)
    finally:
        os.umask(old)
    assert weights.stat().st_mode & 0o777 == 0o644
    assert folder.stat().st_mode & 0o777 == 0o755


def test_tiny_model_weights_follow_the_umask(tiny_llama3):
    mode = (tiny_llama3 / "model.safetensors").stat().st_mode & 0o777
    assert mode == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_mpo_reference_cache_key_depends_on_the_batch_size():
    from safetune.reference.mpo import reference_key as mpo_key

    rows = [{f"d_{k}": [1, 2] for k in ("chosen_ids", "chosen_labels", "rejected_ids", "rejected_labels")}]
    keys = {mpo_key("m", _Renderer(), rows, "mean", False, 0, size) for size in (1, 8)}  # type: ignore[arg-type]
    assert len(keys) == 2
