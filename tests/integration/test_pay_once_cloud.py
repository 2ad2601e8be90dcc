"""Pay once per image on the Cloud path: the functions under functions-framework, the Firestore cache,
server-side copies in Cloud Storage (fake-gcs-server), and the Gemini emulator counting what it is sent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from promptdrop.adapters.firestore_cache import PAID_IMAGES
from promptdrop.records import Run
from promptdrop.settings import Settings
from promptdrop.states import RunState
from promptdrop.testing.emulator import RunningEmulator, running_emulator
from promptdrop.wiring import build_context
from tests.functional.conftest import pipeline_env
from tests.support.deployment import Deployment, FunctionApp
from tests.support.reference_rewrite import png, rewritten_between_hash_and_send

pytestmark = pytest.mark.integration


def jsonl(*items: Any) -> bytes:
    return b"".join(orjson.dumps(item) + b"\n" for item in items)


def requests_sent(emulator: RunningEmulator) -> int:
    """Requests in every batch the emulator was given (its own batchStats)."""
    reply = emulator.request("GET", "/v1beta/batches?pageSize=100")
    assert reply.status == 200
    operations = reply.json().get("operations", [])
    assert len(operations) < 100, "one page only"
    return sum(int(op["metadata"]["batchStats"]["requestCount"]) for op in operations)


def catalogue(count: int, *, edited: frozenset[int] = frozenset(), extra: int = 0) -> list[dict[str, Any]]:
    lines = [
        {"key": f"item-{n:02d}", "prompt": f"poster {n}" + (" at night" if n in edited else "")}
        for n in range(count)
    ]
    return lines + [{"key": f"new-{n}", "prompt": f"a new poster {n}"} for n in range(extra)]


def drop(deployment: Deployment, files: FunctionApp, poller: FunctionApp, lines: list[dict[str, Any]]) -> Run:
    """Upload the file to the inbox, deliver its notification, tick until the run ends."""
    known = {run.run_id for run in deployment.runs()}
    assert files.post(deployment.notification("inbox/posters.jsonl", jsonl(*lines))) == 200
    (run,) = [run for run in deployment.runs() if run.run_id not in known]
    return deployment.finish(poller, run.run_id)


def test_cloud_redrop_sends_only_the_changed_requests_and_copies_the_rest_in_the_bucket(
    deployment: Deployment,
) -> None:
    """50 lines, then 45 unchanged + 3 edited + 2 new: 5 requests; the 45 are server-side copies."""
    files, poller = deployment.app("on_prompt_file"), deployment.app("poll_jobs")
    first = drop(deployment, files, poller, catalogue(50))
    assert first.state is RunState.SUCCEEDED
    assert requests_sent(deployment.emulator) == 50
    paid = list(deployment.firestore.collection(PAID_IMAGES).stream())
    assert len(paid) == 50
    assert {doc.to_dict()["run_id"] for doc in paid} == {first.run_id}

    second = drop(deployment, files, poller, catalogue(48, edited=frozenset({3, 17, 41}), extra=2))
    assert second.state is RunState.SUCCEEDED
    assert requests_sent(deployment.emulator) == 55
    assert [job.request_count for job in deployment.jobs(second.run_id)] == [5]
    entries = {e["key"]: e for e in deployment.read_jsonl(second.output_folder + "manifest.jsonl")}
    cached = {key: e for key, e in entries.items() if "cached_from" in e}
    assert sorted(set(entries) - set(cached)) == ["item-03", "item-17", "item-41", "new-0", "new-1"]
    assert len(cached) == 45
    bucket = deployment.storage.bucket(deployment.bucket)
    for key, entry in cached.items():
        assert (entry["status"], entry["attempts"]) == ("succeeded", 0)
        assert entry["cached_from"] == {"run_id": first.run_id, "key": key}
        copy = bucket.get_blob(entry["image"])
        original = bucket.get_blob(f"{first.output_folder}images/{key}.png")
        assert copy is not None and original is not None
        assert copy.download_as_bytes() == original.download_as_bytes()
        # A rewrite inside the bucket keeps the original's metadata; a harvested image names its own run.
        assert copy.metadata == {"run": first.run_id, "key": key, "model": first.model}
        assert copy.content_type == "image/png"
    summary = deployment.read_json(second.output_folder + "summary.json")
    assert summary["cost"]["cached"] == 45
    assert summary["cost"]["saved_by_cache"] == pytest.approx(45 * 0.067, rel=0.01)
    # The 5 new images were recorded under their own fingerprints (one document each).
    assert len(list(deployment.firestore.collection(PAID_IMAGES).stream())) == 55


def test_cloud_deleted_cached_image_is_paid_for_again(deployment: Deployment) -> None:
    """An entry whose image was deleted in the bucket is ignored; the line is submitted and re-cached."""
    files, poller = deployment.app("on_prompt_file"), deployment.app("poll_jobs")
    first = drop(deployment, files, poller, catalogue(2))
    deployment.storage.bucket(deployment.bucket).blob(f"{first.output_folder}images/item-01.png").delete()
    second = drop(deployment, files, poller, catalogue(2))
    assert requests_sent(deployment.emulator) == 3
    entries = {e["key"]: e for e in deployment.read_jsonl(second.output_folder + "manifest.jsonl")}
    assert "cached_from" not in entries["item-01"]
    assert entries["item-00"]["cached_from"]["run_id"] == first.run_id
    # The stale document now names the second run's image; the other still the first run's.
    recorded = {
        d.to_dict()["key"]: d.to_dict() for d in deployment.firestore.collection(PAID_IMAGES).stream()
    }
    assert (recorded["item-00"]["run_id"], recorded["item-01"]["run_id"]) == (first.run_id, second.run_id)


@pytest.mark.parametrize("uploaded", [False, True], ids=["inlined", "uploaded"])
def test_cloud_storage_reference_image_rewritten_between_hash_and_read_is_sent_and_recorded_as_one_version(
    bucket_name: str, tmp_path: Path, uploaded: bool
) -> None:
    """Cloud Storage (fake-gcs-server): the reference image is read at the generation hashed; rewritten in
    between, that generation is gone, the submission tries again and sends, and records, the new one."""
    with running_emulator(tmp_path / "emulator") as emulator:
        env = pipeline_env(tmp_path / "home", emulator.url, PROMPTDROP_BUCKET=f"gs://{bucket_name}")
        if uploaded:
            env["PROMPTDROP_INLINE_IMAGE_MAX_BYTES"] = "16"
        rewritten_between_hash_and_send(build_context(Settings.from_env(env)), uploaded=uploaded)


def test_cloud_native_file_references_only_this_bucket_or_the_files_api_and_hashed_by_content(
    deployment: Deployment,
) -> None:
    """A native ``fileData.fileUri`` to another bucket or to any URL is invalid (``bad_image_ref``) and never
    sent; one to this bucket is sent with the object's bytes in its place, and the cache knows it by those
    bytes: re-dropped unchanged it is served, with the object rewritten it is paid for again."""
    files, poller = deployment.app("on_prompt_file"), deployment.app("poll_jobs")
    blob = deployment.storage.bucket(deployment.bucket).blob("refs/style.png")
    blob.upload_from_string(png((200, 10, 10)), content_type="image/png")

    def native(key: str, uri: str) -> dict[str, Any]:
        part = {"file_data": {"file_uri": uri, "mime_type": "image/png"}}
        return {"key": key, "request": {"contents": [{"parts": [{"text": "restyle"}, part]}]}}

    lines = [
        native("other-bucket", "gs://someone-elses-bucket/refs/style.png"),
        native("any-url", "https://example.com/style.png"),
        native("own-bucket", f"gs://{deployment.bucket}/refs/style.png"),
    ]
    first = drop(deployment, files, poller, lines)
    entries = {e["key"]: e for e in deployment.read_jsonl(first.output_folder + "manifest.jsonl")}
    assert {key: (e["status"], (e.get("error") or {}).get("code")) for key, e in entries.items()} == {
        "other-bucket": ("invalid", "bad_image_ref"),
        "any-url": ("invalid", "bad_image_ref"),
        "own-bucket": ("succeeded", None),
    }
    assert "someone-elses-bucket" in entries["other-bucket"]["error"]["message"]
    assert requests_sent(deployment.emulator) == 1

    again = drop(deployment, files, poller, lines)
    served = {e["key"]: e for e in deployment.read_jsonl(again.output_folder + "manifest.jsonl")}
    assert served["own-bucket"]["cached_from"] == {"run_id": first.run_id, "key": "own-bucket"}
    assert requests_sent(deployment.emulator) == 1

    blob.upload_from_string(png((10, 10, 200)), content_type="image/png")  # same URI, new content
    third = drop(deployment, files, poller, lines)
    paid = {e["key"]: e for e in deployment.read_jsonl(third.output_folder + "manifest.jsonl")}
    assert paid["own-bucket"]["status"] == "succeeded" and "cached_from" not in paid["own-bucket"]
    assert requests_sent(deployment.emulator) == 2
