"""What the functions write to stdout is JSON lines for Cloud Logging, and never the API key.

One test drives a whole run and the error paths a key can leak through (a 403 from a Gemini that wants
another key, 503s on batch creation, Firestore unreachable), in cloud mode (``K_SERVICE`` set), then
reads every line the functions printed and every output, error and record they wrote.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest
from google.cloud import firestore

from promptdrop.adapters.firestore_store import FirestoreJobStore
from promptdrop.states import RunState
from promptdrop.testing import eventarc
from promptdrop.testing.faultproxy import FaultProxy
from tests.support.deployment import API_KEY, Deployment

pytestmark = pytest.mark.integration

PROMPTS = b"a red kite\na blue boat\n"
# In a deployment Cloud Run sets K_SERVICE: logs are JSON whatever PROMPTDROP_LOG_FORMAT says.
CLOUD = {"K_SERVICE": "promptdrop-functions", "PROMPTDROP_LOG_FORMAT": None}


def _drive_the_error_paths(deployment: Deployment) -> None:
    """A 403 (wrong key), 503s on every create, and an unreachable Firestore; each answered as designed."""
    strict = deployment.start_emulator("strict", api_key="the-emulators-own-key", require_key=True)
    refused = deployment.app("on_prompt_file", PROMPTDROP_GEMINI_BASE_URL=strict.url, **CLOUD)
    assert refused.post(deployment.notification("inbox/refused.txt", PROMPTS)) == 200
    refused_poller = deployment.app("poll_jobs", PROMPTDROP_GEMINI_BASE_URL=strict.url, **CLOUD)
    assert refused_poller.post(eventarc.scheduler_tick()) == 200

    flaky = deployment.start_emulator("flaky", fault_rate=1.0, fault_routes=("create",), fault_codes=(503,))
    failing = deployment.app("on_prompt_file", PROMPTDROP_GEMINI_BASE_URL=flaky.url, **CLOUD)
    assert failing.post(deployment.notification("inbox/flaky.txt", PROMPTS)) == 200

    unreachable = deployment.app("on_prompt_file", **CLOUD)
    with FaultProxy.for_address(deployment.cloud.endpoints.firestore_host) as proxy:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("FIRESTORE_EMULATOR_HOST", proxy.address)
            client = firestore.Client(project=deployment.project)
        unreachable.context.store = FirestoreJobStore(client, retry=None, timeout=2.0)
        proxy.reset()
        assert unreachable.post(deployment.notification("inbox/unreachable.txt", PROMPTS)) == 503


def _everything_written(deployment: Deployment) -> bytes:
    """Every object in the bucket and every run and job record, as bytes to search."""
    parts = [deployment.read(name) for name in deployment.objects() if not name.endswith(".png")]
    for run in deployment.runs():
        parts.append(orjson.dumps(run.model_dump(mode="json")))
        parts.extend(orjson.dumps(job.model_dump(mode="json")) for job in deployment.jobs(run.run_id))
    return b"\n".join(parts)


def test_function_logs_are_json_lines_with_run_and_job_and_never_the_key(
    deployment: Deployment, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Every stdout line is a JSON entry with severity; run and batch lines carry run_id and job; no key."""
    files, poller = deployment.app("on_prompt_file", **CLOUD), deployment.app("poll_jobs", **CLOUD)
    assert files.post(deployment.notification("inbox/good.txt", PROMPTS)) == 200
    good = deployment.finish(poller, deployment.only_run().run_id)
    assert good.state is RunState.SUCCEEDED
    _drive_the_error_paths(deployment)

    printed = capsys.readouterr().out
    entries: list[dict[str, Any]] = [orjson.loads(line) for line in printed.splitlines()]
    assert entries and all(entry["severity"] in {"DEBUG", "INFO", "WARNING", "ERROR"} for entry in entries)
    run_ids = {run.run_id for run in deployment.runs()}
    assert len(run_ids) == 3  # good, refused, flaky: the unreachable one was never claimed
    # The Gemini emulator runs in this process too; its lines are not the functions'.
    functions_entries = [entry for entry in entries if not entry["logger"].startswith("promptdrop.emulator")]
    for entry in functions_entries:
        named = [run_id for run_id in run_ids if run_id in entry["message"]]
        if named:
            assert entry.get("run_id") == named[0], entry
        batch = re.search(r"batches/[a-z0-9]+", entry["message"])
        if batch:
            assert entry.get("job") == batch.group(0), entry
    assert {entry.get("run_id") for entry in functions_entries} >= run_ids
    assert any(str(entry.get("job", "")).startswith("batches/") for entry in functions_entries)
    severities = {entry["severity"] for entry in functions_entries}
    assert {"WARNING", "ERROR"} <= severities  # the error paths were logged
    # A transient failure (Firestore unreachable) names its cause in the message, with no traceback.
    transient = [e for e in functions_entries if "transient failure claiming" in e["message"]]
    assert transient and all("exception" not in entry for entry in transient)

    assert API_KEY not in printed
    # Not even before the formatter's redaction, the last line of defence:
    for record in caplog.records:
        assert API_KEY not in record.getMessage()
        assert API_KEY not in (record.exc_text or "")
    assert API_KEY.encode() not in _everything_written(deployment)
