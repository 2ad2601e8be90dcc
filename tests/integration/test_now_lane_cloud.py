"""The now lane in the cloud: the file function hands each now chunk over to the now topic, and on_now_chunk
sends its lines. An instance cut off mid-lane (every connection to the API reset, as a killed instance's
calls end) leaves its answered lines recorded; the redelivered messages finish the rest on another
instance, and every now line ends with exactly one manifest entry and one image, written once."""

from __future__ import annotations

import threading
import time
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
from google.cloud import pubsub_v1

from promptdrop.states import JobPhase, RunState
from promptdrop.testing import eventarc
from promptdrop.testing.cloud import pull, subscribe, unique_name
from promptdrop.testing.faultproxy import FaultProxy
from tests.support.deployment import Deployment

pytestmark = pytest.mark.integration

NOW_LINES = 6
CONCURRENCY = 2


def jsonl(*items: Any) -> bytes:
    return b"".join(orjson.dumps(item) + b"\n" for item in items)


def test_now_chunks_survive_an_instance_cut_off_mid_lane(
    deployment: Deployment, publisher: pubsub_v1.PublisherClient, subscriber: pubsub_v1.SubscriberClient
) -> None:
    emulator = deployment.start_emulator("slow-now", generate_seconds=0.4, running_seconds=1.0)
    now_topic, now_subscription = _now_topic(deployment, publisher, subscriber)
    env = now_env(
        emulator.url,
        now_topic,
        PROMPTDROP_NOW_CHUNK_LINES="3",
        PROMPTDROP_NOW_CONCURRENCY=str(CONCURRENCY),
        PROMPTDROP_LEASE_SECONDS="2",
    )
    lines = [{"key": f"b{i}", "prompt": f"batch picture {i}"} for i in range(2)]
    lines += [{"key": f"n{i}", "prompt": f"urgent picture {i}", "lane": "now"} for i in range(NOW_LINES)]
    files = deployment.app("on_prompt_file", **env)
    assert files.post(deployment.notification("inbox/mixed.jsonl", jsonl(*lines))) == 200
    run = deployment.only_run()
    now_jobs = [job for job in deployment.jobs(run.run_id) if job.lane == "now"]
    # Handed over, not sent: the file function made no generate call.
    assert [job.phase for job in now_jobs] == [JobPhase.ACTIVE, JobPhase.ACTIVE]
    assert all(job.dispatched_at is not None for job in now_jobs)
    assert emulator.server.generated == 0
    messages = pull(subscriber, now_subscription, len(now_jobs))
    assert sorted(orjson.loads(m.data)["job_id"] for m in messages) == sorted(j.job_id for j in now_jobs)

    # Instance A works the first chunk through a proxy; once two answers are recorded, its connections
    # are reset, as a killed instance's are: the calls in flight lose their answers.
    host, port = urlsplit(emulator.url).hostname, urlsplit(emulator.url).port
    assert host is not None and port is not None
    with FaultProxy((host, port)) as proxy:
        doomed = deployment.app("on_now_chunk", **env, PROMPTDROP_NOW_BASE_URL=proxy.url)
        status: list[int] = []
        worker = threading.Thread(
            target=lambda: status.append(doomed.push(_push_body(messages[0]), now_topic))
        )
        worker.start()
        deadline = time.monotonic() + 30
        while len(deployment.images(run)) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        proxy.reset()
        worker.join(60)
    assert status == [503]  # Pub/Sub redelivers any non-2xx; 503 logs no traceback
    survivors = deployment.images(run)  # name -> generation
    assert 2 <= len(survivors) < NOW_LINES

    # Another instance gets both messages (the redelivery and the second chunk) and the poller the rest.
    fresh = deployment.app("on_now_chunk", **env, PROMPTDROP_NOW_BASE_URL=None)
    for message in messages:
        assert fresh.push(_push_body(message), now_topic) == 200
    poller = deployment.app("poll_jobs", **env, PROMPTDROP_NOW_BASE_URL=None)
    final = deployment.finish(poller, run.run_id)
    assert final.state is RunState.SUCCEEDED

    manifest = deployment.read_jsonl(final.output_folder + "manifest.jsonl")
    now_entries = [entry for entry in manifest if entry["lane"] == "now"]
    assert sorted(entry["key"] for entry in now_entries) == [f"n{i}" for i in range(NOW_LINES)]
    assert all(entry["status"] == "succeeded" for entry in now_entries)
    images = deployment.images(final)
    assert sorted(images) == sorted(
        f"{final.output_folder}images/{key}.png"
        for key in [f"b{i}" for i in range(2)] + [f"n{i}" for i in range(NOW_LINES)]
    )
    # Answered before the cut: written once, never sent again. Only the calls in flight were sent twice.
    assert {name: images[name] for name in survivors} == survivors
    assert NOW_LINES <= emulator.server.generated <= NOW_LINES + CONCURRENCY
    summary = deployment.read_json(final.output_folder + "summary.json")
    assert summary["lanes"] == {"now": {"lines": NOW_LINES}} and summary["cost"]["now"] > 0


def test_a_now_chunk_never_answered_in_time_ends_after_max_attempts_sends_per_line(
    deployment: Deployment, publisher: pubsub_v1.PublisherClient, subscriber: pubsub_v1.SubscriberClient
) -> None:
    """The API answers after 2.5 s, each call waits 1 s: every send's answer is lost. Pub/Sub redelivers the
    chunk while it is open; each line is sent PROMPTDROP_MAX_ATTEMPTS times in all (the SDK sends each call
    once), then fails no_answer, the chunk is done and the run ends; later redeliveries send nothing."""
    emulator = deployment.start_emulator("late-now", generate_seconds=2.5)
    now_topic, now_subscription = _now_topic(deployment, publisher, subscriber)
    env = now_env(
        emulator.url,
        now_topic,
        PROMPTDROP_API_TIMEOUT="1",
        PROMPTDROP_MAX_ATTEMPTS="3",
        PROMPTDROP_NOW_CONCURRENCY="2",
    )
    lines = [{"key": f"n{i}", "prompt": f"urgent picture {i}", "lane": "now"} for i in range(2)]
    files = deployment.app("on_prompt_file", **env)
    assert files.post(deployment.notification("inbox/late.jsonl", jsonl(*lines))) == 200
    run = deployment.only_run()
    (message,) = pull(subscriber, now_subscription, 1)

    worker = deployment.app("on_now_chunk", **env)
    statuses = [worker.push(_push_body(message), now_topic) for _ in range(5)]  # the message redelivered
    # Open (503) while the lines have sends left, done (200) once each line was sent 3 times.
    assert statuses == [503, 503, 200, 200, 200]
    calls: dict[str, int] = emulator.server.stats()["calls_by_route"]  # type: ignore[assignment]
    assert calls.get("generate", 0) == 2 * 3  # no line ends no_answer with fewer than 3 sends
    final = deployment.store.get_run(run.run_id)
    assert final is not None and final.state is RunState.FAILED
    manifest = deployment.read_jsonl(final.output_folder + "manifest.jsonl")
    assert sorted(entry["key"] for entry in manifest) == ["n0", "n1"]
    for entry in manifest:
        assert (entry["status"], entry["error"]["code"], entry["error"]["retryable"]) == (
            "failed",
            "no_answer",
            False,
        )
        assert "3 sends" in entry["error"]["message"] and "1 s" in entry["error"]["message"]
    (job,) = deployment.jobs(run.run_id)
    assert job.phase is JobPhase.DONE and sorted(job.now_sends.values()) == [3, 3]
    # The poller finds nothing to send either.
    poller = deployment.app("poll_jobs", **env)
    assert poller.post(eventarc.scheduler_tick()) == 200
    assert emulator.server.stats()["calls_by_route"] == calls


def now_env(emulator_url: str, now_topic: str, **settings: str) -> dict[str, str]:
    """The functions' environment for the now lane: the emulator, the now topic, and ``settings``."""
    return {"PROMPTDROP_GEMINI_BASE_URL": emulator_url, "PROMPTDROP_NOW_TOPIC": now_topic, **settings}


def _now_topic(
    deployment: Deployment, publisher: pubsub_v1.PublisherClient, subscriber: pubsub_v1.SubscriberClient
) -> tuple[str, str]:
    """A fresh now topic and a pull subscription on it (the test pushes the pulled messages itself)."""
    topic = f"projects/{deployment.project}/topics/{unique_name('now')}"
    publisher.create_topic(name=topic)
    return topic, subscribe(subscriber, topic)


def _push_body(message: Any) -> dict[str, Any]:
    """The push subscription's body for a pulled message."""
    event = eventarc.pubsub_event(
        "eventarc-scheduler-tick", bytes(message.data), message_id=str(message.message_id)
    )
    return eventarc.push_body(event)
