"""A results file too big for one invocation: the copy goes across ticks in parts, and survives a kill.

The Gemini emulator throttles downloads and the poller has a budget of about a second, so copying the results
file into the bucket alone needs several invocations, as a multi-GB file does within 540 s in the cloud.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import orjson
import pytest

from promptdrop.states import RunState
from promptdrop.testing import eventarc
from promptdrop.testing.cloud_local import FUNCTIONS_SOURCE
from promptdrop.testing.emulator import RunningEmulator, wait_until_done
from tests.support.deployment import Deployment

pytestmark = pytest.mark.integration

LINES = 30
PART_BYTES = 64 * 1024
RATE = 250_000  # bytes per second the emulator serves downloads at


def _prompts() -> bytes:
    return b"".join(
        orjson.dumps({"key": f"sail-{n:02d}", "prompt": f"sail number {n} on a wide blue sea"}) + b"\n"
        for n in range(LINES)
    )


def _submitted(deployment: Deployment, emulator: RunningEmulator, **env: str) -> tuple[Any, Any, int]:
    """Drop the file on the throttled emulator; wait for its job to end; (run, job, results size)."""
    files = deployment.app("on_prompt_file", PROMPTDROP_GEMINI_BASE_URL=emulator.url, **env)
    assert files.post(deployment.notification("inbox/sails.jsonl", _prompts())) == 200
    run = deployment.only_run()
    (job,) = deployment.jobs(run.run_id)
    client = emulator.client()
    done = wait_until_done(client, job.batch_name)
    assert done.dest is not None and done.dest.file_name
    size = int(client.files.get(name=done.dest.file_name).size_bytes or 0)
    assert size > 8 * PART_BYTES, size
    return run, job, size


def _poller_env(emulator: RunningEmulator) -> dict[str, str]:
    return {
        "PROMPTDROP_GEMINI_BASE_URL": emulator.url,
        "PROMPTDROP_HARVEST_TIME_BUDGET": "1",
        "PROMPTDROP_RESULTS_PART_BYTES": str(PART_BYTES),
    }


def _copy_ticks(deployment: Deployment, poller: Any, job_id: str) -> tuple[list[int], float]:
    """Deliver ticks until the job's results are copied: bytes copied after each, and the slowest tick."""
    progress: list[int] = []
    slowest = 0.0
    for _ in range(60):
        started = time.monotonic()
        assert poller.post(eventarc.scheduler_tick()) == 200
        slowest = max(slowest, time.monotonic() - started)
        current = deployment.store.get_job(job_id)
        assert current is not None
        progress.append(current.results_copied)
        if current.results_copy_done:
            return progress, slowest
    raise AssertionError(f"the copy did not finish in 60 ticks: {progress}")


def _assert_complete(deployment: Deployment, run_id: str) -> None:
    run = deployment.store.get_run(run_id)
    assert run is not None and run.state is RunState.SUCCEEDED
    manifest = deployment.read_jsonl(run.output_folder + "manifest.jsonl")
    assert [entry["key"] for entry in manifest] == [f"sail-{n:02d}" for n in range(LINES)]
    assert len(deployment.images(run)) == LINES
    assert deployment.objects(run.output_folder + "_work/") == {}


def test_results_copy_spans_several_invocations_and_copies_each_byte_about_once(
    deployment: Deployment,
) -> None:
    """Each tick copies parts until its budget runs out; the next resumes with a ranged download."""
    emulator = deployment.start_emulator("slow", download_bytes_per_second=RATE, image_scale=0.5)
    run, job, size = _submitted(deployment, emulator)
    poller = deployment.app("poll_jobs", **_poller_env(emulator))
    progress, _ = _copy_ticks(deployment, poller, job.job_id)
    copy_ticks = len(progress)
    assert copy_ticks >= 3, f"the copy fit in {copy_ticks} invocation(s); the test needs a bigger file"
    assert progress == sorted(progress) and len(set(progress)) == copy_ticks  # every tick moved it on
    deployment.finish(poller, run.run_id)
    _assert_complete(deployment, run.run_id)
    downloaded = emulator.server.bytes_downloaded
    # At most one part per paused invocation is fetched twice (cut off at the budget, fetched again).
    assert size <= downloaded <= size + (copy_ticks - 1) * PART_BYTES
    print(
        f"copy: {copy_ticks} invocations, {downloaded} bytes downloaded for {size} ({downloaded / size:.3f}x)"
    )


_DRIVER = """
import sys, functions_framework
sys.path.insert(0, sys.argv[2])
client = functions_framework.create_app("poll_jobs", source=sys.argv[1], signature_type="cloudevent").test_client()
headers, body = eval(sys.argv[3])
while True:
    client.post("/", headers=headers, data=body)
"""


def test_a_poller_killed_mid_copy_loses_nothing(deployment: Deployment) -> None:
    """SIGKILL while parts are being copied: the next poller resumes at the last whole part, nothing lost."""
    emulator = deployment.start_emulator("slow", download_bytes_per_second=RATE, image_scale=0.5)
    run, job, size = _submitted(deployment, emulator)
    env = {**os.environ, **deployment.env, **_poller_env(emulator), "PROMPTDROP_HARVEST_TIME_BUDGET": "0"}
    headers, body = eventarc.encode(eventarc.scheduler_tick(), "binary")
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _DRIVER,
            str(FUNCTIONS_SOURCE),
            str(FUNCTIONS_SOURCE.parent),
            repr((headers, body)),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            current = deployment.store.get_job(job.job_id)
            assert current is not None
            if current.results_parts >= 3:
                break
            assert child.poll() is None, child.stderr.read() if child.stderr else b""
            assert time.monotonic() < deadline, "the killed poller never copied a part"
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    killed_at = deployment.store.get_job(job.job_id)
    assert killed_at is not None and not killed_at.results_copy_done
    # Another instance takes over once the dead one's lease expires (cleared here to save the wait).
    deployment.store.release_lease(run.run_id, deployment.store.get_run(run.run_id).lease.owner or "")  # type: ignore[union-attr]
    poller = deployment.app("poll_jobs", **{**_poller_env(emulator), "PROMPTDROP_HARVEST_TIME_BUDGET": "0"})
    deployment.finish(poller, run.run_id)
    _assert_complete(deployment, run.run_id)
    finished = deployment.jobs(run.run_id)[0]
    assert finished.results_parts == -(-size // PART_BYTES)
    downloaded = emulator.server.bytes_downloaded
    assert size <= downloaded <= size + 2 * PART_BYTES  # the part cut by the kill, fetched again
    print(
        f"kill after {killed_at.results_parts} parts: {downloaded} bytes downloaded for {size} ({downloaded / size:.3f}x)"
    )


SLOW_RATE = 120_000  # bytes per second: far less than one part per invocation's budget
BUDGET = 1.0  # seconds per invocation (PROMPTDROP_HARVEST_TIME_BUDGET)


def test_a_download_slower_than_one_part_per_budget_keeps_what_each_invocation_fetched(
    deployment: Deployment,
) -> None:
    """Parts of 64 MiB at 120 kB/s with a 1 s budget: each tick stops at its deadline and keeps the bytes it
    fetched as a shorter part, so the copy moves on every tick, no tick copies the bulk of the file, and the
    file is downloaded at most 1.2 times."""
    emulator = deployment.start_emulator("slower", download_bytes_per_second=SLOW_RATE, image_scale=0.5)
    run, job, size = _submitted(deployment, emulator)
    assert size / SLOW_RATE > 4 * BUDGET, size
    env = {**_poller_env(emulator), "PROMPTDROP_RESULTS_PART_BYTES": str(64 * 1024 * 1024)}
    poller = deployment.app("poll_jobs", **env)
    progress, slowest = _copy_ticks(deployment, poller, job.job_id)
    copy_ticks = len(progress)
    assert copy_ticks >= 4 and progress == sorted(progress) and len(set(progress)) == copy_ticks
    # The copy took several ticks, none of them the whole download. Counted in bytes, not seconds: on a
    # loaded machine a tick's wall time says little (a tick ran 5.7 s of a 7.1 s download under load).
    steps = [after - before for before, after in zip([0, *progress], progress, strict=False)]
    assert max(steps) < size / 2, (steps, size)
    deployment.finish(poller, run.run_id)
    _assert_complete(deployment, run.run_id)
    finished = deployment.jobs(run.run_id)[0]
    assert finished.results_parts == copy_ticks and sum(finished.results_short_parts.values()) == size
    downloaded = emulator.server.bytes_downloaded
    assert size <= downloaded <= 1.2 * size
    print(
        f"slow copy: {copy_ticks} invocations, slowest {slowest:.2f} s, {downloaded} bytes downloaded "
        f"for {size} ({downloaded / size:.3f}x)"
    )
