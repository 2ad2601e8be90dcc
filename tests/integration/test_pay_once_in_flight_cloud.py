"""Pay once across unfinished runs on the Cloud path: a re-drop while the first run's batch runs waits for
it (claims in the Firestore collection ``in_flight``), through the functions under functions-framework."""

from __future__ import annotations

from typing import Any

import pytest

from promptdrop.adapters.firestore_cache import IN_FLIGHT
from promptdrop.records import Run
from promptdrop.states import RunState
from tests.integration.test_pay_once_cloud import catalogue, jsonl, requests_sent
from tests.support.deployment import Deployment, FunctionApp

pytestmark = pytest.mark.integration


def claim(deployment: Deployment, files: FunctionApp, lines: list[dict[str, Any]]) -> Run:
    """Upload the file to the inbox and deliver its notification: the run is claimed and submitted."""
    known = {run.run_id for run in deployment.runs()}
    assert files.post(deployment.notification("inbox/posters.jsonl", jsonl(*lines))) == 200
    (run,) = [run for run in deployment.runs() if run.run_id not in known]
    return run


def images(deployment: Deployment, run: Run) -> dict[str, int]:
    return deployment.images(run)


def test_cloud_edited_redrop_while_the_first_batch_runs_sends_only_the_edits(deployment: Deployment) -> None:
    """20 lines, then the file re-dropped with 2 edits before the first run ends: 22 requests in all; the
    second run's 18 unchanged lines wait and are served from the first run's images."""
    files, poller = deployment.app("on_prompt_file"), deployment.app("poll_jobs")
    first = claim(deployment, files, catalogue(20))
    second = claim(deployment, files, catalogue(20, edited=frozenset({3, 11})))
    second = deployment.store.get_run(second.run_id) or second
    assert (second.waiting, second.waiting_on) == (18, [first.run_id])
    assert len(list(deployment.firestore.collection(IN_FLIGHT).stream())) == 22
    first = deployment.finish(poller, first.run_id)
    second = deployment.finish(poller, second.run_id)
    assert (first.state, second.state) == (RunState.SUCCEEDED, RunState.SUCCEEDED)
    assert requests_sent(deployment.emulator) == 22
    assert len(images(deployment, first)) == len(images(deployment, second)) == 20
    entries = {e["key"]: e for e in deployment.read_jsonl(second.output_folder + "manifest.jsonl")}
    assert sorted(key for key, e in entries.items() if "cached_from" not in e) == ["item-03", "item-11"]
    assert all(
        e["cached_from"] == {"run_id": first.run_id, "key": key}
        for key, e in entries.items()
        if "cached_from" in e
    )
    # Every claim was released when its run settled.
    assert list(deployment.firestore.collection(IN_FLIGHT).stream()) == []


def test_cloud_cancelled_payer_leaves_the_waiting_lines_to_the_waiting_run(deployment: Deployment) -> None:
    """The first run is cancelled before its batch made anything (batches stay pending 5 s): the second
    sends the 18 lines itself."""
    slow = deployment.start_emulator("slow", pending_seconds=5.0, running_seconds=1.0)
    files = deployment.app("on_prompt_file", PROMPTDROP_GEMINI_BASE_URL=slow.url)
    poller = deployment.app("poll_jobs", PROMPTDROP_GEMINI_BASE_URL=slow.url)
    first = claim(deployment, files, catalogue(20))
    second = claim(deployment, files, catalogue(20, edited=frozenset({3, 11})))
    deployment.store.update_run(first.run_id, {"cancel_requested": True})
    first = deployment.finish(poller, first.run_id)
    assert first.state is RunState.CANCELLED and images(deployment, first) == {}
    second = deployment.finish(poller, second.run_id)
    assert second.state is RunState.SUCCEEDED
    assert len(images(deployment, second)) == 20
    manifest = deployment.read_jsonl(second.output_folder + "manifest.jsonl")
    assert not any("cached_from" in e for e in manifest)
    assert requests_sent(slow) == 20 + 2 + 18
