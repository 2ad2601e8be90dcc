"""The whole chain on the emulators, nothing short-circuited between the user and the outputs.

Upload with the google-cloud-storage client -> fake-gcs-server's notification -> Pub/Sub emulator ->
the bridge (Eventarc's part: a messagePublished CloudEvent) -> ``on_prompt_file`` -> a batch on the Gemini
emulator -> ``poll_jobs`` ticks -> images, manifest and summary in the bucket, the run event on the
events topic. And the same for a request published to the requests topic. Then ``scripts/cloud-local``,
which runs the same chain in separate processes, with one upload, as a user would.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import pubsub_v1, storage
from PIL import Image

from promptdrop.states import RunState
from promptdrop.testing.bridge import PubsubBridge
from promptdrop.testing.cloud import subscribe, unique_name
from promptdrop.thumbnails import MAX_SIDE
from tests.integration.conftest import STORAGE_EVENTS_TOPIC
from tests.support.deployment import REPO, Deployment

pytestmark = pytest.mark.integration


def _pump_until_a_run_exists(bridge: PubsubBridge, deployment: Deployment, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not deployment.runs():
        assert time.monotonic() < deadline, (
            f"no run after {timeout} s; the function answered {bridge.statuses}"
        )
        if not bridge.pump():
            time.sleep(0.1)


def test_upload_runs_through_notification_bridge_functions_and_ticks_to_outputs(
    deployment: Deployment, subscriber: pubsub_v1.SubscriberClient
) -> None:
    """An uploaded prompt file becomes images, manifest, summary and a run event, all through the emulators."""
    topic = f"projects/{deployment.project}/topics/{STORAGE_EVENTS_TOPIC}"
    files, poller = deployment.app("on_prompt_file"), deployment.app("poll_jobs")
    bridge = PubsubBridge(
        subscriber,
        subscribe(subscriber, topic),
        topic,
        files.post,
        template="eventarc-storage-notification",
        name="inbox",
    )
    blob = deployment.storage.bucket(deployment.bucket).blob("inbox/catalogue.jsonl")
    example = (REPO / "examples" / "catalogue.jsonl").read_bytes()
    extras = (REPO / "examples" / "emulator-extras.jsonl").read_bytes()  # the emulator's marker lines
    blob.upload_from_string(example + extras, content_type="application/jsonl")

    _pump_until_a_run_exists(bridge, deployment)
    assert bridge.statuses == [200]
    run = deployment.only_run()
    assert (run.source.bucket, run.source.object) == (deployment.bucket, "inbox/catalogue.jsonl")
    assert run.source.generation == str(blob.generation)
    run = deployment.finish(poller, run.run_id)

    assert run.state is RunState.PARTIAL  # the example holds one safety block and one invalid line
    assert len(deployment.batches()) == 1
    summary = deployment.read_json(run.output_folder + "summary.json")
    assert summary["counts"] == {"lines": 13, "succeeded": 11, "failed": 1, "invalid": 1}
    manifest = deployment.read_jsonl(run.output_folder + "manifest.jsonl")
    images = deployment.images(run)
    assert sorted(images) == sorted(entry["image"] for entry in manifest if entry["status"] == "succeeded")
    assert all(deployment.read(name).startswith(b"\x89PNG") for name in images)
    # The gallery: a page served as HTML and a WebP thumbnail, made by the deployed functions, per image as large
    # as a thumbnail (here the 4K one: 256 px at the tests' 1/16 scale); a smaller image is its own thumbnail.
    bucket = deployment.storage.bucket(deployment.bucket)
    page = bucket.get_blob(run.output_folder + "index.html")
    assert page is not None and page.content_type == "text/html; charset=utf-8"
    assert page.download_as_bytes().count(b'<article class="card') == 13
    thumbs = deployment.storage.list_blobs(deployment.bucket, prefix=run.output_folder + "thumbs/")
    expected = sorted(
        (name.replace("/images/", "/thumbs/").removesuffix(".png") + ".webp", "image/webp")
        for name in images
        if max(Image.open(io.BytesIO(deployment.read(name))).size) >= MAX_SIDE
    )
    assert expected and sorted((t.name, t.content_type) for t in thumbs) == expected
    (event,) = deployment.events(1)
    assert event == {
        "schema_version": 1,
        "run_id": run.run_id,
        "state": "PARTIAL",
        "counts": summary["counts"],
        "cost": summary["cost"],
        "summary": run.output_folder + "summary.json",
    }


def test_request_published_to_the_requests_topic_runs_to_outputs(
    deployment: Deployment, publisher: pubsub_v1.PublisherClient, subscriber: pubsub_v1.SubscriberClient
) -> None:
    """A request published with the Pub/Sub client reaches on_prompt_message and ends in its outputs."""
    topic = f"projects/{deployment.project}/topics/{unique_name('requests')}"
    publisher.create_topic(name=topic)
    messages, poller = deployment.app("on_prompt_message"), deployment.app("poll_jobs")
    bridge = PubsubBridge(subscriber, subscribe(subscriber, topic), topic, messages.post, name="requests")
    body = {"name": "kites", "prompts": ["a red kite", {"key": "boat", "prompt": "a blue boat"}]}
    publisher.publish(topic, orjson.dumps(body), idempotency_key="kites-1").result(timeout=10)

    _pump_until_a_run_exists(bridge, deployment)
    run = deployment.finish(poller, deployment.only_run().run_id)

    assert run.state is RunState.SUCCEEDED
    assert sorted(deployment.images(run)) == [
        f"{run.output_folder}images/{key}.png" for key in ("boat", "line-1")
    ]
    assert [entry["key"] for entry in deployment.read_jsonl(run.output_folder + "manifest.jsonl")] == [
        "line-1",
        "boat",
    ]
    (event,) = deployment.events(1)
    assert (event["run_id"], event["state"]) == (run.run_id, "SUCCEEDED")


# scripts/cloud-local

CLOUD_LOCAL = REPO / "scripts" / "cloud-local"
MARKER = "PROMPTDROP_CLOUD_LOCAL_TEST"


def _cloud_local(*args: str) -> list[str]:
    return [str(CLOUD_LOCAL), *args]


def _cloud_local_env(marker: str) -> dict[str, str]:
    # The marker is inherited by everything the script starts, so survivors can be found afterwards.
    return {**os.environ, "PROMPTDROP_SKIP_BOOTSTRAP": "1", MARKER: marker}


def _survivors(marker: str) -> list[int]:
    """Processes still alive whose environment carries ``marker``."""
    needle = f"{MARKER}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if needle in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
    return found


def test_cloud_local_smoke_upload_gives_images_manifest_and_summary(tmp_path: Path) -> None:
    """`scripts/cloud-local --smoke`: one upload gives images, manifest and summary; nothing outlives it."""
    marker = unique_name("smoke")
    result = subprocess.run(
        _cloud_local("--smoke", "--tick", "1", "--state-dir", str(tmp_path)),
        env=_cloud_local_env(marker),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    printed = result.stdout
    start = printed.index("/summary.json:\n") + len("/summary.json:\n")
    summary = orjson.loads(printed[start : printed.index("\nimages: ")])
    assert summary["state"] == "PARTIAL"
    # The example, the emulator's marker lines and one now-lane line (through the now topic, on_now_chunk).
    assert summary["counts"] == {"lines": 14, "succeeded": 12, "failed": 1, "invalid": 1}
    assert summary["lanes"] == {"now": {"lines": 1}} and summary["cost"]["now"] > 0
    assert f"images: 12 under gs://promptdrop-local/outputs/{summary['run_id']}/images/" in printed
    assert (
        f"manifest: 14 lines in gs://promptdrop-local/outputs/{summary['run_id']}/manifest.jsonl" in printed
    )
    assert _survivors(marker) == []


def _exports(line_source: Iterator[str]) -> dict[str, str]:
    """The `export NAME=value` lines cloud-local prints, up to the line saying how to stop it."""
    exports: dict[str, str] = {}
    for line in line_source:
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").rstrip("\n").partition("=")
            exports[name] = value.strip("'")
        if "Ctrl-C stops everything" in line:
            return exports
    raise AssertionError(f"cloud-local ended before it was ready; printed {exports}")


def test_cloud_local_runs_an_upload_from_outside_and_stops_everything_on_sigterm(tmp_path: Path) -> None:
    """Started, it prints how to upload; an upload by a client of its bucket runs; SIGTERM stops it all."""
    marker = unique_name("interactive")
    process = subprocess.Popen(
        _cloud_local("--tick", "1", "--state-dir", str(tmp_path)),
        env=_cloud_local_env(marker),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        exports = _exports(iter(process.stdout.readline, ""))
        bucket_name = exports["PROMPTDROP_BUCKET"].removeprefix("gs://")
        client = storage.Client(
            project=exports["GOOGLE_CLOUD_PROJECT"],
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options={"api_endpoint": exports["STORAGE_EMULATOR_HOST"]},
        )
        bucket = client.bucket(bucket_name)
        bucket.blob("inbox/kites.txt").upload_from_string(b"a red kite\na blue boat\n")
        deadline = time.monotonic() + 120
        while not [
            b for b in client.list_blobs(bucket_name, prefix="outputs/") if b.name.endswith("summary.json")
        ]:
            assert time.monotonic() < deadline and process.poll() is None, "no summary.json from cloud-local"
            time.sleep(0.5)
        (summary_blob,) = [
            b for b in client.list_blobs(bucket_name, prefix="outputs/") if b.name.endswith("summary.json")
        ]
        folder = summary_blob.name.removesuffix("summary.json")
        assert orjson.loads(summary_blob.download_as_bytes())["state"] == "SUCCEEDED"
        assert sorted(b.name for b in client.list_blobs(bucket_name, prefix=folder + "images/")) == [
            f"{folder}images/line-1.png",
            f"{folder}images/line-2.png",
        ]
        assert len(bucket.blob(folder + "manifest.jsonl").download_as_bytes().splitlines()) == 2
    finally:
        process.send_signal(signal.SIGTERM)
        remaining = process.communicate(timeout=60)[0]
    assert process.returncode == 0, remaining[-4000:]
    assert _survivors(marker) == []
