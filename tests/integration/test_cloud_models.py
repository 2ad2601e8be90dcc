"""A retired model id on the Cloud path: the file function asks the API (models.get) and runs it on its replacement."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from promptdrop.states import RunState
from tests.support.deployment import Deployment

pytestmark = pytest.mark.integration


def jsonl(*items: Any) -> bytes:
    return b"".join(orjson.dumps(item) + b"\n" for item in items)


def test_retired_id_line_runs_on_its_replacement_through_the_functions(deployment: Deployment) -> None:
    """on_prompt_file + poll_jobs: a gemini-3-pro-image-preview line runs on gemini-3-pro-image, and says so."""
    files, poller = deployment.app("on_prompt_file"), deployment.app("poll_jobs")
    data = jsonl({"key": "old", "prompt": "a lighthouse at dusk", "model": "gemini-3-pro-image-preview"})
    assert files.post(deployment.notification("inbox/legacy.jsonl", data)) == 200
    run = deployment.finish(poller, deployment.only_run().run_id)
    assert run.state is RunState.SUCCEEDED
    (entry,) = deployment.read_jsonl(run.output_folder + "manifest.jsonl")
    assert (entry["status"], entry["model"], entry["requested_model"]) == (
        "succeeded",
        "gemini-3-pro-image",
        "gemini-3-pro-image-preview",
    )
    assert [job.model.removeprefix("models/") for job in deployment.batches()] == ["gemini-3-pro-image"]
    summary = deployment.read_json(run.output_folder + "summary.json")
    assert summary["model_replacements"] == [
        {"requested": "gemini-3-pro-image-preview", "model": "gemini-3-pro-image", "shutdown": "2026-06-25"}
    ]
    assert [job["model"] for job in summary["jobs"]] == ["gemini-3-pro-image"]
    record = deployment.store.get_run(run.run_id)
    assert record is not None and record.model_choices[0]["model"] == "gemini-3-pro-image"


def test_deprecated_model_runs_with_a_warning_log_line(deployment: Deployment, caplog: Any) -> None:
    """gemini-3.1-flash-image (deprecated 2026-10-06, still served) runs as asked; the Cloud log warns."""
    files, poller = deployment.app("on_prompt_file"), deployment.app("poll_jobs")
    data = jsonl({"key": "flash", "prompt": "a buoy", "model": "gemini-3.1-flash-image"})
    with caplog.at_level("WARNING"):
        assert files.post(deployment.notification("inbox/flash.jsonl", data)) == 200
        run = deployment.finish(poller, deployment.only_run().run_id)
    assert run.state is RunState.SUCCEEDED
    notice = (
        "gemini-3.1-flash-image is still served, but deprecated since 2026-10-06, shutdown announced, no date: "
        "move to gemini-nano-banana-2.1"
    )
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(notice in message for message in warnings), warnings
    summary = deployment.read_json(run.output_folder + "summary.json")
    assert summary["model_notices"] == [notice]
