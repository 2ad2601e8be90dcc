"""The emulator's batch engine in-process, on an injected clock: when a job's requests are answered."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from promptdrop.emulator.engine import CANCELLED, RUNNING, SUCCEEDED, Engine
from promptdrop.emulator.options import EmulatorOptions

MODEL = "gemini-3-pro-image"
REQUESTS = 5


class Clock:
    """A clock the test moves by hand; the engine's threads re-read it at least once a second."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def engine(tmp_path: Path, clock: Clock) -> Iterator[Engine]:
    options = EmulatorOptions(pending_seconds=1.0, running_seconds=100.0, image_scale=0.0625)
    started = Engine(tmp_path, options, clock)
    started.start()
    yield started
    started.close()


def _inline_job(engine: Engine) -> str:
    items = [
        {"request": {"contents": [{"parts": [{"text": f"pear {n}"}]}]}, "metadata": {"key": f"k{n}"}}
        for n in range(REQUESTS)
    ]
    body = {"batch": {"displayName": "early", "inputConfig": {"requests": {"requests": items}}}}
    return engine.create_batch(MODEL, body).id


def _eventually(check: object, what: str) -> None:
    deadline = time.monotonic() + 30
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_running_job_is_answered_at_once_and_ends_when_its_running_time_is_up(
    engine: Engine, clock: Clock, tmp_path: Path
) -> None:
    """The worker answers while the job is RUNNING (it used to wait for the end of running_seconds and then
    answer, so every job took running_seconds plus its answering); the job still ends only when its running
    time is up, with every result."""
    job_id = _inline_job(engine)
    clock.now += 1.5  # past PENDING, 98.5 s before the running time is up
    _eventually(lambda: engine.get_batch(job_id).state == RUNNING, "the job never started running")
    answers = tmp_path / "batches" / f"{job_id}.out.tmp"
    _eventually(
        lambda: answers.is_file() and answers.read_bytes().count(b"\n") == REQUESTS,
        "the requests were not answered while the job was RUNNING",
    )
    assert engine.get_batch(job_id).state == RUNNING  # answered, yet held until its running time is up
    clock.now += 100
    _eventually(lambda: engine.get_batch(job_id).state == SUCCEEDED, "the job never ended")
    job = engine.get_batch(job_id)
    assert (job.succeeded, job.failed, job.inline_count) == (REQUESTS, 0, REQUESTS)
    assert engine.inline_results_path(job).read_bytes().count(b"\n") == REQUESTS


def test_a_job_cancelled_after_its_answers_are_ready_keeps_none(
    engine: Engine, clock: Clock, tmp_path: Path
) -> None:
    """Answered early, then cancelled before its running time is up: CANCELLED, no results kept."""
    job_id = _inline_job(engine)
    clock.now += 1.5
    _eventually(lambda: engine.get_batch(job_id).state == RUNNING, "the job never started running")
    engine.cancel_batch(job_id)
    answers = tmp_path / "batches" / f"{job_id}.out.tmp"
    _eventually(lambda: not answers.exists(), "the worker kept the answers of a cancelled job")
    clock.now += 100
    job = engine.get_batch(job_id)
    assert job.state == CANCELLED and job.inline_count is None
    assert not engine.inline_results_path(job).exists()
