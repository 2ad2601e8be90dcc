"""Spend caps across runs on the Cloud path: the functions under functions-framework, the Firestore ledger,
and the Gemini emulator counting what it is sent."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from promptdrop.states import RunState
from promptdrop.testing import eventarc
from tests.integration.test_pay_once_cloud import requests_sent
from tests.support.deployment import Deployment

pytestmark = pytest.mark.integration


def _file(name: str, count: int) -> bytes:
    return b"".join(
        orjson.dumps({"key": f"{name}-{n}", "prompt": f"{name} poster {n}"}) + b"\n" for n in range(count)
    )


def _requests_sent(deployment: Deployment) -> int:
    return sum(
        int(batch.batch_stats.request_count or 0) for batch in deployment.batches() if batch.batch_stats
    )


def test_a_run_past_the_daily_cap_waits_with_the_reason_and_goes_on_when_the_cap_is_raised(
    deployment: Deployment,
) -> None:
    """Two 10-line files (about $0.67 each in batch at 1K) dropped at once under a $1 daily cap: the first
    runs, the second waits in RECEIVED naming the cap; raised to $5 it runs on the next tick; the day's
    ledger is the sum of what the two runs cost."""
    capped: dict[str, Any] = {"PROMPTDROP_MAX_SPEND_USD_PER_DAY": "1"}
    files, poller = deployment.app("on_prompt_file", **capped), deployment.app("poll_jobs", **capped)
    assert files.post(deployment.notification("inbox/spring.jsonl", _file("spring", 10))) == 200
    assert files.post(deployment.notification("inbox/autumn.jsonl", _file("autumn", 10))) == 200
    runs = {run.source.name: run for run in deployment.runs()}
    first, second = runs["spring"], runs["autumn"]
    assert first.state is RunState.SUBMITTED
    assert second.state is RunState.RECEIVED
    assert second.reason is not None and "PROMPTDROP_MAX_SPEND_USD_PER_DAY=$1.00" in second.reason
    assert "goes on by itself" in second.reason

    first = deployment.finish(poller, first.run_id)
    assert first.state is RunState.SUCCEEDED
    for _ in range(3):  # ticks: the second still does not fit beside what the first cost
        assert poller.post(eventarc.scheduler_tick()) == 200
    waiting = deployment.store.get_run(second.run_id)
    assert waiting is not None and waiting.state is RunState.RECEIVED
    assert requests_sent(deployment.emulator) == 10

    raised = deployment.app("poll_jobs", PROMPTDROP_MAX_SPEND_USD_PER_DAY="5")
    assert raised.post(eventarc.scheduler_tick()) == 200
    resumed = deployment.store.get_run(second.run_id)
    assert resumed is not None and resumed.state is RunState.SUBMITTED and resumed.reason is None
    second = deployment.finish(raised, second.run_id)
    assert second.state is RunState.SUCCEEDED
    assert requests_sent(deployment.emulator) == 20

    (day,) = {key for key in (*first.spend_periods, *second.spend_periods) if key.startswith("day-")}
    billed = [(run.cost.batch or 0.0) + (run.cost.now or 0.0) for run in (first, second)]
    assert all(cost > 0.6 for cost in billed)
    assert deployment.store.spent([day]) == {day: pytest.approx(sum(billed))}
