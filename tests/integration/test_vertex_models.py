"""The model table per backend on the Cloud path (PROMPTDROP_BACKEND=vertex, the bundled emulator's Vertex AI
routes): a line Vertex AI batch does not take in the deployment's location ends ``invalid`` with its reason, a
size Google's pages leave unconfirmed runs with a notice in summary.json, and the cost is Vertex's."""

from __future__ import annotations

import pytest

from promptdrop.states import RunState
from tests.integration.test_vertex_cloud import jsonl, vertex_apps
from tests.support.deployment import Deployment

pytestmark = pytest.mark.integration


def test_vertex_in_eu_refuses_gemini_3_pro_image_and_runs_unconfirmed_sizes_with_one_notice(
    deployment: Deployment,
) -> None:
    emulator = deployment.start_emulator("vertex")
    files, poller = vertex_apps(deployment, emulator, PROMPTDROP_VERTEX_LOCATION="eu")
    lines = [
        {"key": "pro", "prompt": "a red bicycle", "model": "gemini-3-pro-image"},
        {"key": "flash", "prompt": "a blue kite", "model": "gemini-3.1-flash-image"},
        {"key": "big", "prompt": "a brass lamp", "model": "gemini-3.1-flash-image", "image_size": "2K"},
        {"key": "big2", "prompt": "a green kettle", "model": "gemini-3.1-flash-image", "image_size": "2K"},
    ]
    assert files.post(deployment.notification("inbox/eu.jsonl", jsonl(*lines))) == 200
    run = deployment.finish(poller, deployment.only_run().run_id)

    assert run.state is RunState.PARTIAL
    manifest = {entry["key"]: entry for entry in deployment.read_jsonl(run.output_folder + "manifest.jsonl")}
    assert manifest["pro"]["status"] == "invalid"
    assert manifest["pro"]["error"] == {
        "code": "location_unsupported",
        "message": "gemini-3-pro-image takes batch on Vertex AI only in location global; "
        "PROMPTDROP_VERTEX_LOCATION=eu",
        "retryable": False,
    }
    assert {manifest[key]["status"] for key in ("flash", "big", "big2")} == {"succeeded"}
    (job,) = deployment.jobs(run.run_id)
    assert job.request_count == 3  # the refused line was never sent
    summary = deployment.read_json(run.output_folder + "summary.json")
    assert summary["counts"] == {"lines": 4, "succeeded": 3, "failed": 0, "invalid": 1}
    # One notice for the model (its deprecation, then the unconfirmed size, said once for two lines).
    (notice,) = summary["model_notices"]
    assert notice.startswith("gemini-3.1-flash-image is still served, but deprecated")
    unconfirmed = (
        "gemini-3.1-flash-image: image_size 2K in Vertex AI batch is unconfirmed (Google's pages give no "
        "batch sizes; a July 2026 note says Vertex batch images came out 1K only); its lines run"
    )
    assert notice.endswith("; " + unconfirmed) and notice.count(unconfirmed) == 1
