"""A webhook the API disabled after failed deliveries pushes nothing: the poller notices (at most hourly),
warns, and polls every tick meanwhile."""

from __future__ import annotations

import dataclasses
import logging
import time

import pytest

from promptdrop.states import RunState
from promptdrop.usecases import poll
from tests.functional.conftest import Pipeline, jsonl

DEAD = "http://127.0.0.1:9/hook"


def test_a_disabled_webhook_is_noticed_hourly_and_polling_takes_over(
    pipeline: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    ctx = pipeline.context(webhooks="on", webhook_poll_seconds=3600.0)
    registration = ctx.backend.create_webhook(DEAD, events=("batch.succeeded",), name="promptdrop")
    assert poll.check_webhooks(ctx) is True  # enabled: pushes are trusted, jobs polled hourly
    client = pipeline.emulator.client()
    client.webhooks.update(id=registration.id, update_mask="state", state="disabled_due_to_failed_deliveries")
    lists = pipeline.emulator.server.stats()["calls_by_route"]["webhook_list"]
    assert poll.check_webhooks(ctx) is True  # looked at less than an hour ago: not asked again
    assert pipeline.emulator.server.stats()["calls_by_route"]["webhook_list"] == lists
    later = dataclasses.replace(ctx, clock=lambda: time.time() + 3601)
    with caplog.at_level(logging.WARNING):
        assert poll.check_webhooks(later) is False
    assert any("disabled_due_to_failed_deliveries" in r.getMessage() for r in caplog.records)
    # Meanwhile a running job is polled every tick, so the run ends without any push.
    receipt = pipeline.drop("fruit.jsonl", jsonl({"key": "a", "prompt": "an apple"}), ctx)
    assert receipt.run is not None
    deadline = time.monotonic() + 20
    while (run := ctx.store.get_run(receipt.run.run_id)) is not None and not run.state.terminal:
        assert time.monotonic() < deadline, run
        poll.tick(ctx, run_ids=[receipt.run.run_id])
        time.sleep(0.05)
    assert run is not None and run.state is RunState.SUCCEEDED
