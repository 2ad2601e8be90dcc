"""Gemini's batch webhooks on the Cloud path: ``on_batch_webhook`` under functions-framework on a real loopback
HTTP server, the Gemini emulator delivering Standard-Webhooks-signed events to it, Firestore, Pub/Sub and
fake-gcs-server behind, and the file function starting runs. Nothing here ticks the poller unless the test
says so: a run that ends did so on the push.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import orjson
import pytest

from promptdrop.records import Run
from promptdrop.states import JobPhase, RunState
from promptdrop.testing import eventarc
from promptdrop.testing.emulator import RunningEmulator, wait_until_done
from promptdrop.webhooks import Verifier, event_body
from tests.support.deployment import Deployment, FunctionApp

pytestmark = pytest.mark.integration

PROMPTS = b"a red kite\na blue boat\na green hill\n"
KEYS = ["line-1", "line-2", "line-3"]
# Distinctive, so a test can search every log line and output for it.
SECRET = "whsec_" + base64.b64encode(b"promptdrop-webhook-secret-4d1f9a").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"someone-else-entirely-7c2e").decode()
CLOUD = {"K_SERVICE": "promptdrop-functions", "PROMPTDROP_LOG_FORMAT": None}


def hooked(deployment: Deployment, **emulator_options: Any) -> tuple[FunctionApp, RunningEmulator]:
    """The webhook function served over HTTP, and an emulator (the deployment's Gemini from now on) that
    delivers every batch event to it; webhooks on for every instance built after this."""
    listener = deployment.listen()
    emulator = deployment.start_emulator(
        "hooks",
        pending_seconds=0.3,
        webhook_urls=(listener.url,),
        webhook_secret=SECRET,
        webhook_retry_seconds=0.1,
        **emulator_options,
    )
    deployment.env.update(
        PROMPTDROP_GEMINI_BASE_URL=emulator.url, PROMPTDROP_WEBHOOKS="on", PROMPTDROP_WEBHOOK_SECRET=SECRET
    )
    hook = deployment.app("on_batch_webhook")
    listener.app = hook.wsgi
    return hook, emulator


def drop(deployment: Deployment, name: str, data: bytes = PROMPTS) -> Run:
    """A prompt file dropped into the inbox and claimed by the file function."""
    assert deployment.app("on_prompt_file").post(deployment.notification(name, data)) == 200
    (run,) = [run for run in deployment.runs() if run.source.object == name]
    return run


def wait_terminal(deployment: Deployment, run_id: str, timeout: float = 30.0) -> Run:
    """Wait (no tick) for the run to end."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = deployment.store.get_run(run_id)
        assert run is not None
        if run.state.terminal:
            return run
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} did not end on the push: {deployment.store.get_run(run_id)}")


def wait_deliveries_settled(emulator: RunningEmulator, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not emulator.server.webhooks_busy:
            return dict(emulator.server.stats()["webhooks"])
        time.sleep(0.05)
    raise AssertionError("webhook deliveries did not settle")


def assert_outputs(deployment: Deployment, run: Run) -> None:
    assert run.state is RunState.SUCCEEDED
    images = deployment.images(run)
    assert sorted(images) == sorted(f"{run.output_folder}images/{key}.png" for key in KEYS)
    summary = deployment.read_json(run.output_folder + "summary.json")
    assert summary["state"] == "SUCCEEDED" and summary["counts"]["succeeded"] == len(KEYS)


def signed(
    body: bytes, *, secret: str = SECRET, timestamp: float | None = None, delivery_id: str = "msg_test1"
) -> dict[str, str]:
    """Standard Webhooks headers for ``body``."""
    when = int(time.time() if timestamp is None else timestamp)
    return {
        "Content-Type": "application/json",
        "webhook-id": delivery_id,
        "webhook-timestamp": str(when),
        "webhook-signature": Verifier(secret).sign(delivery_id, when, body),
    }


def event(batch_name: str, event_type: str = "batch.succeeded") -> bytes:
    return orjson.dumps(event_body(event_type, batch_name, timestamp="2026-11-30T12:00:00Z"))


def test_a_dropped_file_ends_with_images_and_summary_on_the_push_alone(deployment: Deployment) -> None:
    """No scheduler tick at all: the emulator's signed batch.succeeded reaches the function, which reads the
    batch once, records its end and harvests it to images, manifest and summary.json."""
    _, emulator = hooked(deployment)
    run = drop(deployment, "inbox/pushed.txt")
    assert run.state is RunState.SUBMITTED
    run = wait_terminal(deployment, run.run_id)
    assert_outputs(deployment, run)
    (event_message,) = deployment.events(1)
    assert event_message["state"] == "SUCCEEDED"
    assert wait_deliveries_settled(emulator)["delivered"] == 1
    stats = emulator.server.stats()
    assert stats["calls_by_route"]["get"] == 1  # the receiver's one batches.get: nobody polled


@pytest.mark.parametrize(
    ("case", "make", "status"),
    [
        ("unsigned", lambda body: {"Content-Type": "application/json"}, 401),
        ("forged (another secret)", lambda body: signed(body, secret=OTHER_SECRET), 401),
        (
            "malformed signature",
            lambda body: {**signed(body), "webhook-signature": "v1 not-base64-and-no-comma"},
            401,
        ),
        ("stale (6 minutes old)", lambda body: signed(body, timestamp=time.time() - 360), 401),
        ("from the future (6 minutes)", lambda body: signed(body, timestamp=time.time() + 360), 401),
        ("signature of another body", lambda body: signed(body + b" "), 401),
    ],
)
def test_unsigned_forged_and_stale_deliveries_are_401_and_change_nothing(
    deployment: Deployment, case: str, make: Any, status: int
) -> None:
    """A delivery that fails verification is refused before anything is read or written."""
    hook, emulator = hooked(deployment, webhook_drop_rate=1.0)  # only the test's deliveries arrive
    run = drop(deployment, "inbox/forged.txt")
    (job,) = deployment.jobs(run.run_id)
    wait_until_done(emulator.client(), job.batch_name)
    calls_before = dict(emulator.server.stats()["calls_by_route"])
    body = event(str(job.batch_name))

    assert hook.call(body, make(body)) == status, case
    assert deployment.jobs(run.run_id) == [job]  # not even checked_at moved
    assert deployment.store.get_run(run.run_id) == deployment.store.get_run(run.run_id)
    assert deployment.images(run) == {}
    assert emulator.server.stats()["calls_by_route"] == calls_before  # no batches.get either

    # The same body, genuinely signed, finishes it.
    assert hook.call(body, signed(body)) == 200
    assert_outputs(deployment, wait_terminal(deployment, run.run_id))


@pytest.mark.parametrize(
    ("case", "body"),
    [
        ("not JSON", b"{not json"),
        ("not UTF-8", b"\xff\xfe{}"),
        ("over the 64 KiB limit", orjson.dumps({"type": "batch.succeeded", "pad": "x" * 70_000})),
        ("a JSON array", b"[1, 2]"),
        ("a batch event without an id", orjson.dumps({"type": "batch.succeeded", "data": {}})),
    ],
)
def test_bad_bodies_are_400_and_change_nothing(deployment: Deployment, case: str, body: bytes) -> None:
    hook, emulator = hooked(deployment, webhook_drop_rate=1.0)
    run = drop(deployment, "inbox/bad-body.txt")
    (job,) = deployment.jobs(run.run_id)
    wait_until_done(emulator.client(), job.batch_name)
    calls_before = dict(emulator.server.stats()["calls_by_route"])
    headers = signed(body) if case != "not UTF-8" else {**signed(b"{}"), "webhook-id": "msg_test1"}
    assert hook.call(body, headers) == 400, case
    assert deployment.jobs(run.run_id) == [job]
    assert emulator.server.stats()["calls_by_route"] == calls_before


def test_a_batch_that_is_not_ours_is_answered_2xx_and_ignored(deployment: Deployment) -> None:
    """Another project's batch (unknown here), and a batch of the same project with a display name that is
    not one of our jobs: 200 (no retry storm), nothing written."""
    hook, emulator = hooked(deployment, webhook_drop_rate=1.0)
    client = emulator.client()
    foreign = client.batches.create(
        model="gemini-3-pro-image", src=[{"contents": "a cat"}], config={"display_name": "someone-else"}
    )
    wait_until_done(client, foreign.name)
    for name in (str(foreign.name), "batches/not-a-batch-anyone-has"):
        body = event(name)
        assert hook.call(body, signed(body)) == 200
    body = orjson.dumps({"type": "interaction.completed", "data": {"id": "interactions/x"}})
    assert hook.call(body, signed(body)) == 200
    assert deployment.runs() == []
    assert deployment.objects() == {}


def test_webhooks_off_the_function_refuses_and_touches_nothing(deployment: Deployment) -> None:
    hooked(deployment, webhook_drop_rate=1.0)
    off = deployment.app("on_batch_webhook", PROMPTDROP_WEBHOOKS="off")
    run = drop(deployment, "inbox/off.txt")
    (job,) = deployment.jobs(run.run_id)
    body = event(str(job.batch_name))
    assert off.call(body, signed(body)) == 404
    assert deployment.jobs(run.run_id) == [job]


def test_duplicated_deliveries_harvest_each_job_once(deployment: Deployment) -> None:
    """Every delivery sent twice with one webhook-id, and the test replaying it a third time: one harvest
    (the results file downloaded once, byte for byte), images never rewritten."""
    hook, emulator = hooked(deployment, webhook_duplicate_rate=1.0)
    run = drop(deployment, "inbox/twice.txt")
    run = wait_terminal(deployment, run.run_id)
    stats = wait_deliveries_settled(emulator)
    assert stats["duplicated"] == 1 and stats["delivered"] == 2
    written = deployment.images(run)
    (job,) = deployment.jobs(run.run_id)
    body = event(str(job.batch_name))
    assert hook.call(body, signed(body, delivery_id="msg_replayed")) == 200
    assert hook.call(body, signed(body, delivery_id="msg_replayed")) == 200

    assert_outputs(deployment, run)
    assert deployment.images(run) == written
    assert emulator.server.stats()["calls_by_route"]["download"] == 1
    assert emulator.server.bytes_downloaded == job.results_copied
    assert len(deployment.events(2, timeout=3)) == 1


def test_dropped_and_duplicated_deliveries_still_harvest_every_job_once_the_poller_finishing_the_rest(
    deployment: Deployment,
) -> None:
    """Six files under seeded faults (about half the deliveries dropped, some duplicated): the pushes finish
    some runs, the poller at the webhook interval (scaled down to 1 s) the rest, each job harvested once."""
    _, emulator = hooked(deployment, webhook_drop_rate=0.5, webhook_duplicate_rate=0.3, fault_seed=7)
    # Other prompts per file: the same ones would be served from the pay-once cache, with no job.
    runs = [
        drop(deployment, f"inbox/mixed-{n}.txt", PROMPTS.replace(b"\n", f" {n}\n".encode())) for n in range(6)
    ]
    for run in runs:
        (job,) = deployment.jobs(run.run_id)
        wait_until_done(emulator.client(), job.batch_name)
    stats = wait_deliveries_settled(emulator)
    assert stats["dropped"] > 0 and stats["duplicated"] > 0
    pushed = {run.run_id for run in runs if deployment.store.get_run(run.run_id).state.terminal}  # type: ignore[union-attr]
    assert 0 < len(pushed) < len(runs)

    # At the default interval a tick leaves the running jobs alone (created moments ago)...
    gets = emulator.server.stats()["calls_by_route"].get("get", 0)
    assert deployment.app("poll_jobs").post(eventarc.scheduler_tick()) == 200
    assert emulator.server.stats()["calls_by_route"].get("get", 0) == gets
    # ...and with the interval scaled down to 1 s, the poller finishes what the lost pushes left.
    poller = deployment.app("poll_jobs", PROMPTDROP_WEBHOOK_POLL_SECONDS="1")
    time.sleep(1.1)
    for run in runs:
        finished = deployment.finish(poller, run.run_id)
        assert_outputs(deployment, finished)
    jobs = [job for run in runs for job in deployment.jobs(run.run_id)]
    assert all(job.phase is JobPhase.DONE for job in jobs)
    assert emulator.server.stats()["calls_by_route"]["download"] == len(jobs)  # one harvest per job
    assert emulator.server.bytes_downloaded == sum(job.results_copied for job in jobs)


def test_the_secret_never_appears_in_logs_records_or_outputs(
    deployment: Deployment, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """In cloud mode, through a pushed run and every refusal path, not one line or object carries the secret."""
    deployment.env.update(CLOUD)  # type: ignore[arg-type]
    hook, _ = hooked(deployment)
    run = wait_terminal(deployment, drop(deployment, "inbox/secret.txt").run_id)
    assert run.state is RunState.SUCCEEDED
    (job,) = deployment.jobs(run.run_id)
    body = event(str(job.batch_name))
    assert hook.call(body, signed(body, secret=OTHER_SECRET)) == 401
    assert hook.call(b"{not json", signed(b"{not json")) == 400
    # The secret pasted without its whsec_ prefix: refused (500, so deliveries wait), and not echoed.
    broken = deployment.app("on_batch_webhook", PROMPTDROP_WEBHOOK_SECRET=SECRET[6:], **CLOUD)
    assert broken.call(body, signed(body)) == 500

    printed = capsys.readouterr().out
    assert printed and SECRET not in printed and SECRET[6:] not in printed
    for record in caplog.records:
        assert SECRET[6:] not in record.getMessage()
        assert SECRET[6:] not in (record.exc_text or "")
    written = [deployment.read(name) for name in deployment.objects() if not name.endswith(".png")]
    records = [orjson.dumps(r.model_dump(mode="json")) for r in deployment.runs()]
    records += [orjson.dumps(j.model_dump(mode="json")) for j in deployment.jobs(run.run_id)]
    assert SECRET[6:].encode() not in b"\n".join(written + records)
