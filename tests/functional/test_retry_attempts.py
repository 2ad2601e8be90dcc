"""A retry attempt is created all or nothing: an insert that fails part-way is completed on the next advance.

The job store is the real one (SQLite here), wrapped so one create fails; the backend is the emulator over HTTP.
"""

from __future__ import annotations

import dataclasses

from promptdrop.states import RunState
from promptdrop.usecases import advance
from tests.functional.conftest import Pipeline, jsonl
from tests.functional.test_pay_once import requests_sent
from tests.support.stores import SecondRetryInsertFails

BROKEN = (
    "[[emulator:error=13]]"  # INTERNAL on every attempt: retryable, so resubmitted until the last attempt
)


def test_a_retry_attempt_cut_off_at_its_second_insert_is_completed_on_the_next_advance(
    pipeline: Pipeline,
) -> None:
    """Three retryable lines in three chunks: the second insert of attempt 2 fails; the next advances create the
    missing jobs, and every retryable line is sent a second time and ends failed after 2 attempts."""
    ctx = pipeline.context(max_attempts=2, max_requests_per_job=1)
    store = SecondRetryInsertFails(ctx.store)
    ctx = dataclasses.replace(ctx, store=store)
    lines = [{"key": "ok", "prompt": "fine"}] + [
        {"key": f"broken-{n}", "prompt": f"breaks {n} {BROKEN}"} for n in range(3)
    ]
    receipt = pipeline.drop("flaky-chunks.jsonl", jsonl(*lines), ctx)
    assert receipt.run is not None
    run_id = receipt.run.run_id
    results = [advance.advance_run(ctx, run_id) for _ in range(200)]
    run = ctx.store.get_run(run_id)
    assert run is not None and run.state.terminal, run
    assert store.failed, "the injected failure never happened"
    assert any(r.outcome == "failed" and "injected" in (r.error or "") for r in results)

    assert run.state is RunState.PARTIAL
    by_key = {entry["key"]: entry for entry in pipeline.manifest(run)}
    assert by_key["ok"]["status"] == "succeeded" and by_key["ok"]["attempts"] == 1
    for n in range(3):
        entry = by_key[f"broken-{n}"]
        assert (entry["status"], entry["attempts"], entry["error"]["code"]) == ("failed", 2, "api_error")
    jobs = ctx.store.list_jobs(run_id)
    assert [(job.attempt, job.chunk) for job in jobs if job.attempt == 2] == [(2, 0), (2, 1), (2, 2)]
    # Each broken line reached the emulator once per attempt, the good one once.
    assert requests_sent(pipeline.emulator) == 1 + 3 * 2
