"""Batch jobs on the emulator driven by the real google-genai SDK: outputs, outcomes, lifecycle, restarts."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import pytest
from google import genai
from google.genai import errors, types
from PIL import Image

from promptdrop.emulator.answers import UNKNOWN_MODEL_IMAGE_TOKENS
from promptdrop.models import MODELS
from promptdrop.testing.emulator import (
    RunningEmulator,
    create_inline,
    running_emulator,
    upload_jsonl,
    wait_for_state,
    wait_until_done,
)

MODEL = "gemini-3-pro-image"


def request(
    prompt: str, *, ratio: str | None = None, size: str | None = None, **config: Any
) -> dict[str, Any]:
    image_config = {k: v for k, v in {"aspectRatio": ratio, "imageSize": size}.items() if v}
    generation: dict[str, Any] = {"responseModalities": ["IMAGE"], **config}
    if image_config:
        generation["imageConfig"] = image_config
    return {"contents": [{"role": "user", "parts": [{"text": prompt}]}], "generationConfig": generation}


def run_file_job(
    emu: RunningEmulator, tmp_path: Path, lines: list[dict[str, Any]], model: str = MODEL
) -> Any:
    """Upload ``lines``, run them as a file job to the end, and return (job, results by key)."""
    client = emu.client()
    uploaded = upload_jsonl(client, tmp_path / "in.jsonl", lines)
    job = client.batches.create(model=model, src=uploaded, config={"display_name": "run-1"})
    assert job.name is not None
    job = wait_until_done(client, job.name)
    results: dict[str, dict[str, Any]] = {}
    if job.dest and job.dest.file_name:
        destination = tmp_path / "results.jsonl"
        client.files.download(file=job.dest.file_name, destination=str(destination))
        for raw in destination.read_text().splitlines():
            item = json.loads(raw)
            results[item["key"]] = item
    return job, results


def image_of(response: dict[str, Any]) -> tuple[str, bytes]:
    parts = response["candidates"][0]["content"]["parts"]
    inline = [p["inlineData"] for p in parts if "inlineData" in p][-1]
    return inline["mimeType"], base64.b64decode(inline["data"], validate=True)


def raw_operation(emu: RunningEmulator, name: str | None) -> dict[str, Any]:
    reply = emu.request("GET", f"/v1beta/{name}")
    assert reply.status == 200
    return reply.json()  # type: ignore[no-any-return]


def test_file_job_writes_results_file_with_images_of_requested_shape(tmp_path: Path) -> None:
    """Every line gets a PNG of the requested ratio and size class, and usage billed from the model table."""
    lines = [
        {"key": "square", "request": request("a red square")},
        {"key": "wide", "request": request("a wide field", ratio="16:9", size="2K")},
        {"key": "tall", "request": request("a tall tower", ratio="9:16", size="4K")},
        {"key": "jpeg", "request": request("a photo [[emulator:jpeg]]", ratio="4:3")},
    ]
    with running_emulator(tmp_path / "emu") as emu:
        job, results = run_file_job(emu, tmp_path, lines)
        assert job.state == types.JobState.JOB_STATE_SUCCEEDED
        assert job.display_name == "run-1"
        assert job.dest.file_name == "files/batch-" + job.name.removeprefix("batches/")
        client = emu.client()  # kept in a variable: a collected Client closes its connection pool
        result_file = client.files.get(name=job.dest.file_name)
        assert result_file.source == types.FileSource.GENERATED
        assert result_file.download_uri
    expected = {"square": (64, 64), "wide": (128, 72), "tall": (144, 256), "jpeg": (64, 48)}
    for key, size in expected.items():
        mime_type, data = image_of(results[key]["response"])
        image = Image.open(io.BytesIO(data))
        assert image.size == size, key
        assert (mime_type, image.format) == (
            ("image/jpeg", "JPEG") if key == "jpeg" else ("image/png", "PNG")
        ), key
    usage = results["tall"]["response"]["usageMetadata"]
    assert usage["candidatesTokensDetails"] == [{"modality": "IMAGE", "tokenCount": 2000}]
    assert usage["totalTokenCount"] == usage["promptTokenCount"] + usage["candidatesTokenCount"]
    assert results["square"]["response"]["candidates"][0]["finishReason"] == "STOP"


def test_same_prompt_and_seed_give_same_bytes(tmp_path: Path) -> None:
    """Images are deterministic for (prompt, seed) and differ when the seed does."""
    lines = [
        {"key": "a", "request": request("a lighthouse", seed=7)},
        {"key": "b", "request": request("a lighthouse", seed=7)},
        {"key": "c", "request": request("a lighthouse", seed=8)},
    ]
    with running_emulator(tmp_path / "emu") as emu:
        _, results = run_file_job(emu, tmp_path, lines)
    images = {key: image_of(results[key]["response"])[1] for key in "abc"}
    assert images["a"] == images["b"]
    assert images["a"] != images["c"]


def test_per_request_outcomes_follow_prompt_markers(tmp_path: Path) -> None:
    """Safety, no-image, block and error markers give those outcomes; other lines still succeed."""
    lines: list[dict[str, Any]] = [
        {"key": "ok", "request": request("a calm lake", responseModalities=["TEXT", "IMAGE"])},
        {"key": "safety", "request": request("unsafe [[emulator:safety]]")},
        {"key": "noimage", "request": request("words only [[emulator:no-image]]")},
        {"key": "block", "request": request("blocked [[emulator:block]]")},
        {"key": "internal", "request": request("boom [[emulator:error=13]]")},
        {"key": "exhausted", "request": request("busy [[emulator:error=8]]")},
        {"key": "badratio", "request": request("odd shape", ratio="7:3")},
    ]
    with running_emulator(tmp_path / "emu") as emu:
        job, results = run_file_job(emu, tmp_path, lines)
        stats = raw_operation(emu, job.name)["metadata"]["batchStats"]
    assert stats == {"requestCount": "7", "successfulRequestCount": "4", "failedRequestCount": "3"}
    ok_parts = results["ok"]["response"]["candidates"][0]["content"]["parts"]
    assert [sorted(p) for p in ok_parts] == [["text"], ["inlineData"]]
    safety = results["safety"]["response"]["candidates"][0]
    assert safety["finishReason"] == "IMAGE_SAFETY"
    assert "content" not in safety
    no_image = results["noimage"]["response"]["candidates"][0]
    assert no_image["finishReason"] == "STOP"
    assert all("inlineData" not in part for part in no_image["content"]["parts"])
    block = results["block"]["response"]
    assert block["promptFeedback"] == {"blockReason": "SAFETY"}
    assert "candidates" not in block
    assert {k: results["internal"]["error"][k] for k in ("code", "status")} == {
        "code": 13,
        "status": "INTERNAL",
    }
    assert results["exhausted"]["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert results["badratio"]["error"]["code"] == 3


def test_unsupported_size_for_model_is_an_invalid_argument_line(tmp_path: Path) -> None:
    """gemini-3.1-flash-lite-image makes 1K only, so a 2K request fails alone with code 3."""
    lines = [
        {"key": "1k", "request": request("fine")},
        {"key": "2k", "request": request("too big", size="2K")},
    ]
    with running_emulator(tmp_path / "emu") as emu:
        _, results = run_file_job(emu, tmp_path, lines, model="gemini-3.1-flash-lite-image")
    assert "response" in results["1k"]
    usage = results["1k"]["response"]["usageMetadata"]
    expected_tokens = MODELS["gemini-3.1-flash-lite-image"].tokens_for("1K")
    assert usage["candidatesTokensDetails"] == [{"modality": "IMAGE", "tokenCount": expected_tokens}]
    assert results["2k"]["error"]["code"] == 3


def test_served_model_missing_from_the_table_bills_the_default_image_tokens(tmp_path: Path) -> None:
    """A model the table lacks but the API serves (--serve-models) still answers, with the default tokens."""
    with running_emulator(tmp_path / "emu", serve_models=("some-new-model",)) as emu:
        _, results = run_file_job(
            emu, tmp_path, [{"key": "k", "request": request("x")}], model="some-new-model"
        )
    usage = results["k"]["response"]["usageMetadata"]
    assert usage["candidatesTokensDetails"] == [
        {"modality": "IMAGE", "tokenCount": UNKNOWN_MODEL_IMAGE_TOKENS}
    ]


def test_snake_case_lines_and_url_safe_base64_are_accepted(tmp_path: Path) -> None:
    """snake_case request keys and URL-safe base64 reference images work like their camelCase twins."""
    reference = base64.urlsafe_b64encode(b"\xfb\xff\xfe\xfb\xff").decode().rstrip("=")
    snake = {
        "contents": [
            {"parts": [{"text": "restyle"}, {"inline_data": {"mime_type": "image/png", "data": reference}}]}
        ],
        "generation_config": {"response_modalities": ["IMAGE"], "image_config": {"aspect_ratio": "3:2"}},
    }
    bad = {"contents": [{"parts": [{"text": "x"}, {"inlineData": {"mimeType": "image/png", "data": "%%%"}}]}]}
    with running_emulator(tmp_path / "emu") as emu:
        _, results = run_file_job(
            emu, tmp_path, [{"key": "s", "request": snake}, {"key": "b", "request": bad}]
        )
    _, data = image_of(results["s"]["response"])
    assert Image.open(io.BytesIO(data)).size == (64, 43)
    prompt_details = results["s"]["response"]["usageMetadata"]["promptTokensDetails"]
    assert {"modality": "IMAGE", "tokenCount": 560} in prompt_details
    assert results["b"]["error"]["code"] == 3


def test_raw_operation_has_the_api_shape(tmp_path: Path) -> None:
    """Create answers PENDING with int64 stats; done answers done/endTime/output mirrored under response."""
    lines = [{"key": "k", "request": request("x")}]
    with running_emulator(tmp_path / "emu", pending_seconds=60) as emu:
        uploaded = upload_jsonl(emu.client(), tmp_path / "in.jsonl", lines)
        created = emu.request(
            "POST",
            f"/v1beta/models/{MODEL}:batchGenerateContent",
            {"batch": {"display_name": "raw", "input_config": {"file_name": uploaded}}},
        )
        assert created.status == 200
        operation = created.json()
        name = operation["name"]
        metadata = operation["metadata"]
        assert metadata["state"] == "BATCH_STATE_PENDING"
        assert metadata["batchStats"] == {"requestCount": "1", "pendingRequestCount": "1"}
        assert metadata["model"] == f"models/{MODEL}"
        assert metadata["displayName"] == "raw"
        assert metadata["inputConfig"] == {"fileName": uploaded}
        assert metadata["@type"].endswith("GenerateContentBatch")
        assert "done" not in operation
    with running_emulator(tmp_path / "emu") as emu:
        wait_until_done(emu.client(), name)
        done = raw_operation(emu, name)
    assert done["done"] is True
    assert done["metadata"]["state"] == "BATCH_STATE_SUCCEEDED"
    assert "endTime" in done["metadata"]
    output = {"responsesFile": "files/batch-" + name.removeprefix("batches/")}
    assert done["metadata"]["output"] == output
    assert done["response"] == {"@type": done["response"]["@type"], **output}
    assert done["response"]["@type"].endswith("GenerateContentBatchOutput")


def test_inline_source_job_answers_inline_with_metadata(tmp_path: Path) -> None:
    """Inline requests come back double-nested inline, in order, with their metadata and errors."""
    inline = [
        types.InlinedRequest(
            contents="a small boat",
            config=types.GenerateContentConfig(
                response_modalities=["IMAGE"], image_config=types.ImageConfig(aspect_ratio="21:9")
            ),
            metadata={"key": "boat"},
        ),
        types.InlinedRequest(contents="fail please [[emulator:error=13]]", metadata={"key": "fails"}),
    ]
    with running_emulator(tmp_path / "emu") as emu:
        client = emu.client()
        job = client.batches.create(model=MODEL, src=inline)
        assert job.name is not None
        done = wait_until_done(client, job.name)
        raw = raw_operation(emu, job.name)
    assert done.state == types.JobState.JOB_STATE_SUCCEEDED
    assert done.dest is not None and done.dest.file_name is None
    responses = done.dest.inlined_responses or []
    assert [r.metadata for r in responses] == [{"key": "boat"}, {"key": "fails"}]
    first = responses[0].response
    assert first is not None and first.candidates
    data = first.candidates[0].content.parts[-1].inline_data.data  # type: ignore[index,union-attr]
    assert data is not None
    assert Image.open(io.BytesIO(data)).size == (64, 27)
    assert responses[1].error is not None and responses[1].error.code == 13
    nested = raw["metadata"]["output"]["inlinedResponses"]["inlinedResponses"]
    assert raw["response"]["inlinedResponses"]["inlinedResponses"] == nested
    assert len(nested) == 2


def test_small_file_job_comes_back_inline_when_configured(tmp_path: Path) -> None:
    """With inline_responses_max, a small file job answers inline and a bigger one writes a file."""
    with running_emulator(tmp_path / "emu", inline_responses_max=2) as emu:
        small_job, _ = run_file_job(emu, tmp_path, [{"key": "only", "request": request("x")}])
        big_job, big_results = run_file_job(
            emu, tmp_path, [{"key": f"k{i}", "request": request("x")} for i in range(3)]
        )
    assert small_job.dest.file_name is None
    inline = small_job.dest.inlined_responses
    assert inline is not None and inline[0].metadata == {"key": "only"}
    assert big_job.dest.file_name is not None and sorted(big_results) == ["k0", "k1", "k2"]


def test_job_level_outcomes_expired_and_failed(tmp_path: Path) -> None:
    """A line asking for job=expired ends the job EXPIRED with no output; job=failed ends FAILED with an error."""
    with running_emulator(tmp_path / "emu") as emu:
        expired, _ = run_file_job(
            emu,
            tmp_path,
            [
                {"key": "a", "request": request("x")},
                {"key": "b", "request": request("[[emulator:job=expired]]")},
            ],
        )
        failed, _ = run_file_job(emu, tmp_path, [{"key": "a", "request": request("[[emulator:job=failed]]")}])
        failed_raw = raw_operation(emu, failed.name)
        expired_raw = raw_operation(emu, expired.name)
    assert expired.state == types.JobState.JOB_STATE_EXPIRED
    assert expired.dest is None
    assert "output" not in expired_raw["metadata"] and expired_raw["done"] is True
    assert failed.state == types.JobState.JOB_STATE_FAILED
    assert failed_raw["error"]["code"] == 13
    assert "output" not in failed_raw["metadata"]


def test_deleted_input_file_fails_the_job(tmp_path: Path) -> None:
    """An input file deleted before the job runs makes the job FAILED with a NOT_FOUND error."""
    with running_emulator(tmp_path / "emu", pending_seconds=60) as emu:
        client = emu.client()
        uploaded = upload_jsonl(client, tmp_path / "in.jsonl", [{"key": "k", "request": request("x")}])
        job = client.batches.create(model=MODEL, src=uploaded)
        client.files.delete(name=uploaded)
    with running_emulator(tmp_path / "emu") as emu:
        done = wait_until_done(emu.client(), job.name)
        assert done.state == types.JobState.JOB_STATE_FAILED
        assert raw_operation(emu, job.name)["error"]["code"] == 5


def test_create_refuses_missing_file_and_empty_sources(tmp_path: Path) -> None:
    """A create naming no file, a missing file or no requests is a 4xx, not a job."""
    with running_emulator(tmp_path / "emu") as emu:
        client = emu.client()
        with pytest.raises(errors.ClientError) as missing:
            client.batches.create(model=MODEL, src="files/nosuchfile")
        assert missing.value.code == 404
        both = emu.request(
            "POST",
            f"/v1beta/models/{MODEL}:batchGenerateContent",
            {"batch": {"inputConfig": {"fileName": "files/x", "requests": {"requests": []}}}},
        )
        assert both.status == 400
        assert both.json()["error"] == {
            "code": 400,
            "message": both.json()["error"]["message"],
            "status": "INVALID_ARGUMENT",
        }
        assert list(client.batches.list()) == []


def test_state_progresses_pending_running_succeeded(tmp_path: Path) -> None:
    """With delays, a job is seen PENDING, then RUNNING, then SUCCEEDED."""
    with running_emulator(tmp_path / "emu", pending_seconds=0.3, running_seconds=0.3) as emu:
        client = emu.client()
        job = client.batches.create(model=MODEL, src=[types.InlinedRequest(contents="x")])
        assert job.state == types.JobState.JOB_STATE_PENDING
        wait_for_state(client, job.name, "JOB_STATE_RUNNING")
        assert wait_until_done(client, job.name).state == types.JobState.JOB_STATE_SUCCEEDED


def test_cancel_makes_the_job_cancelled_and_leaves_finished_jobs_alone(tmp_path: Path) -> None:
    """Cancel turns a running job CANCELLED with no output; cancelling a finished job changes nothing."""
    with running_emulator(tmp_path / "emu", running_seconds=60) as emu:
        client = emu.client()
        name = create_inline(client, "x")
        wait_for_state(client, name, "JOB_STATE_RUNNING")
        client.batches.cancel(name=name)
        cancelled = client.batches.get(name=name)
    assert cancelled.state == types.JobState.JOB_STATE_CANCELLED
    assert cancelled.done and cancelled.dest is None and cancelled.end_time is not None
    with running_emulator(tmp_path / "emu") as emu:
        client = emu.client()
        assert client.batches.get(name=name).state == types.JobState.JOB_STATE_CANCELLED
        finished = create_inline(client, "y")
        wait_until_done(client, finished)
        client.batches.cancel(name=finished)
        assert client.batches.get(name=finished).state == types.JobState.JOB_STATE_SUCCEEDED


def test_batches_list_pages_and_delete_both_ways(tmp_path: Path) -> None:
    """Jobs list newest first over pages without outputs; DELETE and POST :delete both remove a job."""
    with running_emulator(tmp_path / "emu") as emu:
        client = emu.client()
        names = [create_inline(client, f"p{i}") for i in range(5)]
        for name in names:
            wait_until_done(client, name)
        pager = client.batches.list(config={"page_size": 2})
        assert len(pager.page) == 2
        assert [job.name for job in pager] == list(reversed(names))
        page = emu.request("GET", "/v1beta/batches?pageSize=2").json()
        assert "nextPageToken" in page
        assert all("output" not in op["metadata"] for op in page["operations"])
        client.batches.delete(name=names[0])
        assert emu.request("POST", f"/v1beta/{names[1]}:delete").status == 200
        with pytest.raises(errors.ClientError) as caught:
            client.batches.get(name=names[0])
        assert caught.value.code == 404
        assert [job.name for job in client.batches.list()] == list(reversed(names[2:]))


def test_job_resumes_after_restart_while_pending_or_running(tmp_path: Path) -> None:
    """Jobs left PENDING and RUNNING by a stopped emulator finish on a new emulator over the same folder."""
    lines = [{"key": "k", "request": request("after restart")}]
    with running_emulator(tmp_path / "emu", running_seconds=60) as emu:
        client = emu.client()
        running = client.batches.create(model=MODEL, src=upload_jsonl(client, tmp_path / "in.jsonl", lines))
        wait_for_state(client, running.name, "JOB_STATE_RUNNING")
        assert running.name is not None
        old_port = emu.server.port
    with running_emulator(tmp_path / "emu", pending_seconds=60, running_seconds=60) as emu:
        client = emu.client()
        pending = create_inline(client, "waiting")
        assert client.batches.get(name=running.name).state == types.JobState.JOB_STATE_RUNNING
    with running_emulator(tmp_path / "emu", port=old_port) as emu:
        client = emu.client()
        finished = wait_until_done(client, running.name)
        assert finished.state == types.JobState.JOB_STATE_SUCCEEDED
        assert finished.dest is not None and finished.dest.file_name is not None
        results = client.files.download(file=finished.dest.file_name)
        assert json.loads(results)["key"] == "k"
        assert wait_until_done(client, pending).state == types.JobState.JOB_STATE_SUCCEEDED


def test_too_many_active_jobs_is_resource_exhausted(tmp_path: Path) -> None:
    """Creating a job beyond the active-job cap is a 429 the caller can wait out."""
    with running_emulator(tmp_path / "emu", pending_seconds=60, max_active_jobs=2) as emu:
        client = emu.client()
        for _ in range(2):
            create_inline(client, "x")
        with pytest.raises(errors.ClientError) as caught:
            create_inline(client, "x")
        assert caught.value.code == 429


def test_sdk_with_default_api_version_runs_a_job(tmp_path: Path) -> None:
    """SDK 3.x defaults to v1; the whole flow works there too."""
    with running_emulator(tmp_path / "emu") as emu:
        client = genai.Client(api_key="any", http_options=emu.http_options(api_version="v1"))
        assert (
            wait_until_done(client, create_inline(client, "v1")).state == types.JobState.JOB_STATE_SUCCEEDED
        )
