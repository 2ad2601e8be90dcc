"""`promptdrop serve` as processes: killed mid-harvest and restarted, and two of them (or one and `run --wait`) at once."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from promptdrop.adapters.sqlite_store import SqliteJobStore
from promptdrop.records import Run
from promptdrop.settings import Settings
from promptdrop.usecases.harvest import CHECKPOINT_LINES
from tests.functional.conftest import jsonl, read_jsonl
from tests.functional.test_cli import CLI, batches, cli_env, promptdrop

LINES = 3 * CHECKPOINT_LINES  # long enough to kill the harvest after its first checkpoint
WAIT_SECONDS = 60.0


@contextmanager
def serving(env: dict[str, str], cwd: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A `promptdrop serve` process, started once it says it is serving; killed at the end if still alive."""
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [*CLI, "serve"], env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=stderr
        )
    try:
        poll_until(lambda: b"serving " in log.read_bytes() or process.poll() is not None)
        assert process.poll() is None, log.read_text()
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)


def poll_until(condition: Any, *, interval: float = 0.01) -> None:
    """Wait for ``condition()`` (a generous cap only turns a hang into a failure)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(interval)


def store(env: dict[str, str]) -> SqliteJobStore:
    return SqliteJobStore(Settings.from_env(env).sqlite_path)


def finished_runs(env: dict[str, str]) -> list[Run]:
    return [run for run in store(env).list_runs(None) if run.state.terminal]


def images_of(folder: Path) -> list[Path]:
    """The images a user sees (the bucket's own temporary files are not objects)."""
    if not folder.exists():
        return []
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".promptdrop-"))


def test_serve_killed_mid_harvest_finishes_on_restart_with_no_missing_or_duplicate_image(
    tmp_path: Path, emulator_factory: Any
) -> None:
    """SIGKILL `serve` after a harvest checkpoint; a restarted `serve` takes over the expired lease and completes."""
    emulator = emulator_factory()
    home = tmp_path / "home"
    # Short leases so the dead worker's lease expires quickly; one upload at a time so the harvest is long.
    env = cli_env(home, emulator, PROMPTDROP_UPLOAD_CONCURRENCY="1", PROMPTDROP_LEASE_SECONDS="2")
    keys = [f"k{i:04d}" for i in range(LINES)]
    prompt_file = tmp_path / "many.jsonl"
    prompt_file.write_bytes(jsonl(*({"key": key, "prompt": f"prompt {key}"} for key in keys)))
    submitted = promptdrop(env, "run", str(prompt_file), cwd=tmp_path)
    assert submitted.returncode == 0, submitted.stderr
    run_id = submitted.stdout.strip()
    folder = home / "bucket" / "outputs" / run_id
    images = folder / "images"

    with serving(env, tmp_path, tmp_path / "serve-1.log") as first:
        # Image CHECKPOINT_LINES + 1 is written only after the first checkpoint was committed.
        poll_until(lambda: len(images_of(images)) > CHECKPOINT_LINES + 10)
        first.send_signal(signal.SIGKILL)
        first.wait()
    written_before = {p.name: p.stat() for p in images_of(images)}
    assert CHECKPOINT_LINES < len(written_before) < LINES, "the harvest was not killed mid-way"
    assert list(folder.glob("_work/jobs/*/results-*.jsonl")), "no copied results at the kill"
    (job,) = store(env).list_jobs(run_id)
    assert job.harvest_part >= 1 and job.harvest_offset > 0
    checkpointed = [
        orjson.loads(raw)["key"]
        for part in sorted(folder.glob("_work/jobs/*/outcomes-*.jsonl"))
        for raw in part.read_bytes().splitlines()
    ][: job.harvest_part * CHECKPOINT_LINES]
    assert len(checkpointed) >= CHECKPOINT_LINES

    with serving(env, tmp_path, tmp_path / "serve-2.log"):
        poll_until(lambda: bool(finished_runs(env)), interval=0.1)

    (run,) = finished_runs(env)
    assert run.state.value == "SUCCEEDED"
    entries = read_jsonl(folder / "manifest.jsonl")
    assert [e["key"] for e in entries] == keys  # every key exactly once, in input order
    assert all(e["status"] == "succeeded" for e in entries)
    assert [p.name for p in images_of(images)] == [f"{key}.png" for key in keys]  # none missing, none extra
    for entry in entries:
        assert entry["image"] == f"outputs/{run_id}/images/{entry['key']}.png"
        assert (home / "bucket" / entry["image"]).stat().st_size == entry["bytes"]
    # The checkpointed part of the killed harvest was kept, not redone: those files were not written again.
    for key in checkpointed:
        before, after = written_before[f"{key}.png"], (images / f"{key}.png").stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert len(batches(emulator)) == 1
    events = read_jsonl(home / "events.jsonl")
    assert [(e["run_id"], e["state"]) for e in events] == [(run_id, "SUCCEEDED")]


def drop_into_inbox(home: Path, name: str, data: bytes) -> None:
    """Land a file in the local inbox whole: written under a temporary name, then renamed."""
    inbox = home / "bucket" / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    temporary = home / f"{name}.part"
    temporary.write_bytes(data)
    os.rename(temporary, inbox / name)


def test_two_serves_claim_one_inbox_object_once(tmp_path: Path, emulator_factory: Any) -> None:
    """Two `serve` processes watching one inbox create one run and one batch job for a dropped file."""
    emulator = emulator_factory()
    home = tmp_path / "home"
    env = cli_env(home, emulator)
    logs = [tmp_path / "serve-a.log", tmp_path / "serve-b.log"]
    with serving(env, tmp_path, logs[0]), serving(env, tmp_path, logs[1]):
        drop_into_inbox(home, "shared.jsonl", jsonl(*({"key": f"k{i}", "prompt": f"p{i}"} for i in range(5))))
        poll_until(lambda: bool(finished_runs(env)), interval=0.1)

    (run,) = store(env).list_runs(None)
    assert run.state.value == "SUCCEEDED"
    assert len(batches(emulator)) == 1
    claims = [line for log in logs for line in log.read_text().splitlines() if line.startswith("claimed ")]
    assert claims == [f"claimed {run.run_id}"]
    images = home / "bucket" / run.output_folder / "images"
    assert [p.name for p in images_of(images)] == [f"k{i}.png" for i in range(5)]


def test_serve_and_run_wait_at_once_make_one_batch_per_file(tmp_path: Path, emulator_factory: Any) -> None:
    """`run --wait` while `serve` watches the same inbox: each file is claimed once and waits to its end."""
    emulator = emulator_factory()
    home = tmp_path / "home"
    env = cli_env(home, emulator)
    runs = 2
    with serving(env, tmp_path, tmp_path / "serve.log"):
        for index in range(runs):
            prompt_file = tmp_path / f"both-{index}.jsonl"
            # Other prompts per file: the same ones would be served from the pay-once cache, not batched.
            lines = ({"key": "a", "prompt": f"one {index}"}, {"key": "b", "prompt": f"two {index}"})
            prompt_file.write_bytes(jsonl(*lines))
            done = promptdrop(env, "run", str(prompt_file), "--wait", cwd=tmp_path)
            assert done.returncode == 0, done.stderr
            assert "SUCCEEDED" in done.stdout

    assert len(store(env).list_runs(None)) == runs
    assert len(batches(emulator)) == runs
