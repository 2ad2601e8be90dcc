"""Scratch expires from its run's end: settle stamps customTime on the run's _work/ objects (infra's rule)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from google.cloud import storage

from promptdrop.adapters.gcs import GcsBlobStore
from promptdrop.states import RunState
from tests.support.deployment import Deployment

pytestmark = pytest.mark.integration


def test_mark_ended_stamps_custom_time_on_every_object_under_the_prefix(
    bucket_name: str, storage_client: storage.Client
) -> None:
    store = GcsBlobStore(bucket_name, storage_client)
    for name in ("outputs/r/_work/a.jsonl", "outputs/r/_work/jobs/j/keys.jsonl", "outputs/r/manifest.jsonl"):
        store.write_bytes(name, b"x")
    ended = 1_790_000_000.0
    store.mark_ended("outputs/r/_work/", ended)
    stamped = {b.name: b.custom_time for b in storage_client.list_blobs(bucket_name)}
    when = datetime.fromtimestamp(ended, UTC)
    assert stamped == {
        "outputs/r/_work/a.jsonl": when,
        "outputs/r/_work/jobs/j/keys.jsonl": when,
        "outputs/r/manifest.jsonl": None,  # outputs are not scratch: never stamped
    }
    store.mark_ended("outputs/r/_work/", ended - 10)  # a second settle: no error, whatever the store does


def test_settle_stamps_scratch_before_it_records_the_end(deployment: Deployment) -> None:
    """The run's end is recorded only after its scratch carries that end (a crash between leaves it stamped)."""
    files, poller = deployment.app("on_prompt_file"), deployment.app("poll_jobs")
    assert files.post(deployment.notification("inbox/stamp.txt", b"a red kite\n")) == 200
    run = deployment.only_run()
    ctx = poller.context
    seen: list[tuple[str, str | None]] = []
    original = ctx.blobs.mark_ended

    def spy(prefix: str, when: float) -> None:
        current = deployment.store.get_run(run.run_id)
        seen.append((prefix, current.state.value if current else None))
        original(prefix, when)

    ctx.blobs.mark_ended = spy  # type: ignore[method-assign]
    finished = deployment.finish(poller, run.run_id)
    assert finished.state is RunState.SUCCEEDED
    ((prefix, state),) = seen
    assert prefix == run.output_folder + "_work/" and state in {"SUBMITTED", "HARVESTING"}  # not yet ended
    assert deployment.objects(run.output_folder + "_work/") == {}
