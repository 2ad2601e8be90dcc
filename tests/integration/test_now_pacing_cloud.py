"""The now lane's spend window in the cloud: two on_now_chunk instances (each with its own Firestore client,
as two function instances) sending at once share the one window document, so together they stay under the
spend per window, as Google counts the project."""

from __future__ import annotations

import threading
import time

import orjson
import pytest
from google.cloud import pubsub_v1

from promptdrop import pacing
from promptdrop.states import RunState
from promptdrop.testing.cloud import pull
from tests.integration.test_now_lane_cloud import _now_topic, _push_body, now_env
from tests.support.deployment import Deployment

pytestmark = pytest.mark.integration

WINDOW = 3.0  # seconds: the test's "10 minutes"
SLACK = 0.4  # a call reaches the emulator a little after the window let it go


def test_two_instances_pace_their_now_calls_under_one_spend_window(
    deployment: Deployment,
    publisher: pubsub_v1.PublisherClient,
    subscriber: pubsub_v1.SubscriberClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two runs of three now lines, each chunk pushed to its own instance at the same moment, $0.30 per 3 s
    (two calls of $0.134): two calls per window in all (not two per instance), and both runs end."""
    monkeypatch.setattr(pacing, "SPEND_WINDOW_SECONDS", WINDOW)
    emulator = deployment.start_emulator("paced-now")
    topic, now_subscription = _now_topic(deployment, publisher, subscriber)
    env = now_env(emulator.url, topic, PROMPTDROP_NOW_CHUNK_LINES="3", PROMPTDROP_NOW_SPEND_PER_10_MIN="0.30")
    files = deployment.app("on_prompt_file", **env)
    for name in ("a", "b"):  # two runs: one run's chunks take turns under its lease, two runs' do not
        lines = [
            {"key": f"{name}{i}", "prompt": f"urgent picture {name}{i}", "lane": "now"} for i in range(3)
        ]
        body = b"".join(orjson.dumps(line) + b"\n" for line in lines)
        assert files.post(deployment.notification(f"inbox/{name}.jsonl", body)) == 200
    messages = pull(subscriber, now_subscription, 2)
    instances = [deployment.app("on_now_chunk", **env) for _ in messages]
    statuses: dict[int, int] = {}

    def work(index: int) -> None:
        statuses[index] = instances[index].push(_push_body(messages[index]), topic)

    workers = [threading.Thread(target=work, args=(index,)) for index in range(len(messages))]
    started = time.monotonic()  # no call is let go before this: the window's first entry comes after it
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert statuses == {0: 200, 1: 200}
    arrivals = sorted(emulator.server.generate_arrivals)
    assert len(arrivals) == 6
    # The pacing is proved by when the last call arrives: 6 calls at 2 a rolling window, the first let go
    # after `started`, so the last pair cannot be let go (nor arrive) before two windows have passed
    # (unpaced, all 6 arrived within 0.14 s). Measured from `started`, not from the first arrival: on a
    # loaded machine the first pair arrived 2 s late, next to the second (arrivals 0, 0.02, 0.94, 0.96, 3.95,
    # 3.96), and a pair taken at the end of one window arrived with the next pair (1.8 s late), so no more
    # than two pairs ever arrive within one window.
    shown = [round(at - started, 2) for at in arrivals]
    assert arrivals[-1] - started >= 2 * WINDOW - SLACK, shown
    most = max(sum(start <= other < start + WINDOW - SLACK for other in arrivals) for start in arrivals)
    assert most <= 4, shown
    poller = deployment.app("poll_jobs", **env)
    for run in deployment.store.list_runs():
        assert deployment.finish(poller, run.run_id).state is RunState.SUCCEEDED
