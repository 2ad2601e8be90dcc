"""The Cloud path on Vertex AI batch (PROMPTDROP_BACKEND=vertex): functions-framework, Firestore, Pub/Sub and
fake-gcs-server emulators, and the bundled emulator serving Vertex AI's routes to the SDK in vertexai mode.

The chunk files in the bucket are the jobs' inputs (no upload), large reference images go as gs:// file parts,
the predictions are written by the emulator into the run's scratch through fake-gcs-server and harvested from
there (no results download), joined to lines by the key each request carries in its labels.
"""

from __future__ import annotations

import base64
import itertools
import time
from typing import Any

import orjson
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from promptdrop.adapters.vertex import EmulatorCredentials, VertexBackend
from promptdrop.errors import ConfigurationError
from promptdrop.names import VERTEX_LABEL, vertex_label
from promptdrop.states import RunState
from promptdrop.testing.emulator import RunningEmulator
from promptdrop.usecases import harvest
from promptdrop.webhooks import Verifier, event_body
from tests.support.deployment import Deployment, FunctionApp
from tests.support.reference_rewrite import png

pytestmark = pytest.mark.integration

FILES_API_ROUTES = {"upload", "download", "file_get", "file_list", "file_delete"}


def jsonl(*items: Any) -> bytes:
    return b"".join(orjson.dumps(item) + b"\n" for item in items)


def vertex_apps(
    deployment: Deployment, emulator: RunningEmulator, **env: str
) -> tuple[FunctionApp, FunctionApp]:
    """The file function and the poller, configured for Vertex AI (no API key at all) on ``emulator``."""
    settings: dict[str, str | None] = {
        "PROMPTDROP_BACKEND": "vertex",
        "GEMINI_API_KEY": None,
        "PROMPTDROP_GEMINI_BASE_URL": None,
        "PROMPTDROP_VERTEX_PROJECT": deployment.project,
        "PROMPTDROP_VERTEX_BASE_URL": emulator.url,
        **env,
    }
    return deployment.app("on_prompt_file", **settings), deployment.app("poll_jobs", **settings)


def test_vertex_run_with_reference_images_ends_whole_without_files_api_or_results_download(
    deployment: Deployment,
) -> None:
    """200 lines, each with a small (inline) and a large (gs:// file part) reference image: every image, a
    manifest and a summary; the job's output came in 3 prediction files, harvested whole where they lie."""
    emulator = deployment.start_emulator("vertex", prediction_files=3)
    small, large = png((200, 10, 10)), png((10, 200, 10)) + b"\0" * 4096  # a PNG with padding after IEND
    bucket = deployment.storage.bucket(deployment.bucket)
    bucket.blob("refs/small.png").upload_from_string(small, content_type="image/png")
    bucket.blob("refs/large.png").upload_from_string(large, content_type="image/png")
    files, poller = vertex_apps(deployment, emulator, PROMPTDROP_INLINE_IMAGE_MAX_BYTES=str(len(small) + 1))
    lines = [
        {
            "key": f"item-{i:03d}",
            "prompt": f"a product shot {i}",
            "images": ["refs/small.png", "refs/large.png"],
        }
        for i in range(200)
    ]
    assert files.post(deployment.notification("inbox/catalogue.jsonl", jsonl(*lines))) == 200
    run = deployment.only_run()
    (job,) = deployment.jobs(run.run_id)
    request = orjson.loads(deployment.read(job.request_object).splitlines()[0])["request"]
    assert request["labels"] == {VERTEX_LABEL: "item-000"}
    parts = request["contents"][0]["parts"]
    assert {
        "fileData": {"fileUri": f"gs://{deployment.bucket}/refs/large.png", "mimeType": "image/png"}
    } in parts
    assert any("inlineData" in part for part in parts)

    run = deployment.finish(poller, run.run_id)

    assert run.state is RunState.SUCCEEDED
    (job,) = deployment.jobs(run.run_id)
    assert job.file_name == f"gs://{deployment.bucket}/{job.request_object}"
    assert job.batch_name is not None and "/batchPredictionJobs/" in job.batch_name
    assert len(job.prediction_files) == 3  # the output came in three files, all harvested
    assert all("/predictions/prediction-model-" in name for name in job.prediction_files)
    manifest = deployment.read_jsonl(run.output_folder + "manifest.jsonl")
    assert sorted(entry["key"] for entry in manifest) == sorted(line["key"] for line in lines)
    assert {entry["status"] for entry in manifest} == {"succeeded"}
    images = deployment.images(run)
    assert len(images) == 200 and sorted(images) == sorted(entry["image"] for entry in manifest)
    summary = deployment.read_json(run.output_folder + "summary.json")
    assert summary["counts"] == {"lines": 200, "succeeded": 200, "failed": 0, "invalid": 0}
    stats = emulator.server.stats()
    calls: dict[str, int] = stats["calls_by_route"]  # type: ignore[assignment]
    assert FILES_API_ROUTES.isdisjoint(calls), calls  # nothing uploaded, nothing downloaded
    assert calls["create"] == 1 and calls["get"] >= 1
    assert emulator.server.bytes_downloaded == 0
    # Harvested, the prediction files are deleted (they are large); the images are the only copy kept.
    assert not any("/predictions/" in name for name in deployment.objects())


def test_vertex_prediction_that_lost_its_label_fails_alone_with_a_reason(deployment: Deployment) -> None:
    """A prediction whose request came back without its labels cannot be joined to a line: that line ends
    failed saying so; the others (one key carried as a hashed label) succeed."""
    emulator = deployment.start_emulator("vertex")
    files, poller = vertex_apps(deployment, emulator, PROMPTDROP_MAX_ATTEMPTS="1")
    lines = [
        {"key": "plain", "prompt": "a red bicycle"},
        {"key": "urgent", "prompt": "a blue kite", "lane": "now"},  # generateContent on the Vertex client
        {"key": "Shelf/Big.Lamp", "prompt": "a brass lamp"},  # not a label value: carried hashed
        {"key": "lost", "prompt": "a green kettle [[emulator:label=lost]]"},
    ]
    assert vertex_label("Shelf/Big.Lamp").startswith("h-")
    assert files.post(deployment.notification("inbox/three.jsonl", jsonl(*lines))) == 200
    run = deployment.finish(poller, deployment.only_run().run_id)

    assert run.state is RunState.PARTIAL
    manifest = {entry["key"]: entry for entry in deployment.read_jsonl(run.output_folder + "manifest.jsonl")}
    assert manifest["plain"]["status"] == manifest["Shelf/Big.Lamp"]["status"] == "succeeded"
    assert manifest["urgent"]["status"] == "succeeded" and emulator.server.generated == 1
    assert manifest["lost"]["status"] == "failed"
    assert manifest["lost"]["error"]["code"] == "missing_result"
    assert VERTEX_LABEL in manifest["lost"]["error"]["message"]
    assert len(deployment.images(run)) == 3


def test_vertex_harvest_cut_by_its_time_budget_resumes_across_prediction_files_writing_each_image_once(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each tick harvests one checkpoint (3 lines) of predictions spread over 3 files (4, 4 and 2 lines) and
    stops; the next resumes at its byte offset, across file boundaries; no image is written twice."""
    monkeypatch.setattr(harvest, "CHECKPOINT_LINES", 3)
    emulator = deployment.start_emulator("vertex", prediction_files=3)
    files, _ = vertex_apps(deployment, emulator)
    keys = [f"kite-{n:02d}" for n in range(10)]
    prompts = jsonl(*({"key": key, "prompt": f"kite number {key}"} for key in keys))
    assert files.post(deployment.notification("inbox/many.jsonl", prompts)) == 200
    run = deployment.only_run()
    (job,) = deployment.jobs(run.run_id)
    assert job.batch_name is not None
    vertex = VertexBackend(deployment.project, base_url=emulator.url)
    deadline = time.monotonic() + 30
    while not vertex.get_batch(job.batch_name).done:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    _, poller = vertex_apps(deployment, emulator, PROMPTDROP_HARVEST_TIME_BUDGET="0.001")

    snapshots, current = deployment.image_snapshots(poller, run)
    assert [len(images) for images in snapshots] == [3, 6, 9, 10]
    for earlier, later in itertools.pairwise(snapshots):
        assert {name: later[name] for name in earlier} == earlier  # same generation: not rewritten
    assert current is not None and current.state is RunState.SUCCEEDED
    (job,) = deployment.jobs(run.run_id)
    assert len(job.prediction_files) == 3
    manifest = deployment.read_jsonl(run.output_folder + "manifest.jsonl")
    assert [entry["key"] for entry in manifest] == keys


def test_sdk_in_vertex_mode_creates_lists_cancels_and_deletes_batch_prediction_jobs_on_the_emulator(
    deployment: Deployment,
) -> None:
    """google-genai with vertexai=True and anonymous credentials, pointed at the emulator: every batch route
    it uses (create, get, list, cancel, delete), the job reading its input from fake-gcs-server."""
    emulator = deployment.start_emulator("vertex", pending_seconds=60.0)
    deployment.upload("in/requests.jsonl", jsonl({"request": {"contents": [{"parts": [{"text": "a cat"}]}]}}))
    client = genai.Client(
        vertexai=True,
        project=deployment.project,
        location="global",
        credentials=EmulatorCredentials(),
        http_options=types.HttpOptions(base_url=emulator.url),
    )
    job = client.batches.create(
        model="gemini-3-pro-image",
        src=f"gs://{deployment.bucket}/in/requests.jsonl",
        config=types.CreateBatchJobConfig(dest=f"gs://{deployment.bucket}/out", display_name="sdk-check"),
    )
    assert job.name and job.name.startswith(
        f"projects/{deployment.project}/locations/global/batchPredictionJobs/"
    )
    assert job.state == types.JobState.JOB_STATE_PENDING
    assert [listed.name for listed in client.batches.list(config={"page_size": 10})] == [job.name]
    client.batches.cancel(name=job.name)
    assert client.batches.get(name=job.name).state == types.JobState.JOB_STATE_CANCELLED
    client.batches.delete(name=job.name)
    with pytest.raises(genai_errors.ClientError) as gone:
        client.batches.get(name=job.name)
    assert gone.value.code == 404
    calls: dict[str, int] = emulator.server.stats()["calls_by_route"]  # type: ignore[assignment]
    assert calls == {"create": 1, "list": 1, "cancel": 1, "get": 2, "delete": 1}


def test_vertex_deployment_is_polling_only_its_webhook_function_refuses_even_a_signed_delivery(
    deployment: Deployment,
) -> None:
    """Vertex AI batch sends no webhooks: a signed delivery naming a running Vertex job is refused (404) with
    nothing read or written, the poller finishes the run, and webhooks on with this backend refuse to load."""
    emulator = deployment.start_emulator("vertex", pending_seconds=0.3)
    secret = "whsec_" + base64.b64encode(b"vertex-never-pushes-0a1b2c3d").decode()
    files, poller = vertex_apps(deployment, emulator, PROMPTDROP_WEBHOOK_SECRET=secret)
    hook = deployment.app("on_batch_webhook")
    assert files.post(deployment.notification("inbox/polled.txt", b"a red kite\na blue boat\n")) == 200
    run = deployment.only_run()
    (job,) = deployment.jobs(run.run_id)
    calls_before = dict(emulator.server.stats()["calls_by_route"])
    body = orjson.dumps(event_body("batch.succeeded", str(job.batch_name), timestamp="2026-12-07T12:00:00Z"))
    when = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "webhook-id": "msg_vertex1",
        "webhook-timestamp": str(when),
        "webhook-signature": Verifier(secret).sign("msg_vertex1", when, body),
    }

    assert hook.call(body, headers) == 404
    assert deployment.jobs(run.run_id) == [job]
    assert emulator.server.stats()["calls_by_route"] == calls_before  # not even a batches.get
    assert deployment.finish(poller, run.run_id).state is RunState.SUCCEEDED
    with pytest.raises(ConfigurationError, match="Vertex AI batch sends no webhooks"):
        vertex_apps(deployment, emulator, PROMPTDROP_WEBHOOKS="on", PROMPTDROP_WEBHOOK_SECRET=secret)
