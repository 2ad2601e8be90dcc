"""A retry attempt is created all or nothing on the Cloud path: the functions under functions-framework, the
real Firestore store (wrapped so its second create of attempt 2 fails), the Gemini emulator."""

from __future__ import annotations

import dataclasses

import orjson
import pytest

from promptdrop.states import RunState
from tests.integration.test_pay_once_cloud import requests_sent
from tests.support.deployment import Deployment
from tests.support.stores import SecondRetryInsertFails

pytestmark = pytest.mark.integration

BROKEN = (
    "[[emulator:error=13]]"  # INTERNAL on every attempt: retryable, so resubmitted until the last attempt
)


def test_a_retry_attempt_cut_off_at_its_second_insert_is_completed_by_the_next_tick(
    deployment: Deployment,
) -> None:
    limits = {"PROMPTDROP_MAX_ATTEMPTS": "2", "PROMPTDROP_MAX_REQUESTS_PER_JOB": "1"}
    files, poller = deployment.app("on_prompt_file", **limits), deployment.app("poll_jobs", **limits)
    store = SecondRetryInsertFails(poller.context.store)
    poller.module._context = dataclasses.replace(poller.context, store=store)
    lines = [{"key": "ok", "prompt": "fine"}] + [
        {"key": f"broken-{n}", "prompt": f"breaks {n} {BROKEN}"} for n in range(3)
    ]
    data = b"".join(orjson.dumps(line) + b"\n" for line in lines)
    assert files.post(deployment.notification("inbox/flaky.jsonl", data)) == 200
    run = deployment.finish(poller, deployment.only_run().run_id)
    assert store.failed, "the injected failure never happened"

    assert run.state is RunState.PARTIAL
    by_key = {e["key"]: e for e in deployment.read_jsonl(run.output_folder + "manifest.jsonl")}
    assert (by_key["ok"]["status"], by_key["ok"]["attempts"]) == ("succeeded", 1)
    for n in range(3):
        entry = by_key[f"broken-{n}"]
        assert (entry["status"], entry["attempts"], entry["error"]["code"]) == ("failed", 2, "api_error")
    jobs = deployment.jobs(run.run_id)
    assert [(job.attempt, job.chunk) for job in jobs if job.attempt == 2] == [(2, 0), (2, 1), (2, 2)]
    assert requests_sent(deployment.emulator) == 1 + 3 * 2
