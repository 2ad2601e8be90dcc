"""The emulator refuses what Google refuses (docs/EMULATOR.md, "What Google refuses"), through the real SDK
over HTTP; and promptdrop catches the same lines first, so they end ``invalid`` alone while the others run."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import orjson
import pytest
from google.genai import errors, types

from promptdrop.api_limits import BATCH_INLINE_MAX_BYTES, FILE_MAX_BYTES
from promptdrop.errors import ConfigurationError
from promptdrop.settings import Settings
from promptdrop.states import RunState
from promptdrop.testing.emulator import running_emulator, wait_until_done
from tests.functional.conftest import Pipeline, jsonl

GA = "gemini-3-pro-image"
TEXT = {"contents": [{"role": "user", "parts": [{"text": "a kite"}]}]}
PIXEL = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()


def upload_bytes(client: Any, path: Path, data: bytes) -> str:
    path.write_bytes(data)
    uploaded = client.files.upload(file=path, config=types.UploadFileConfig(mime_type="jsonl"))
    assert uploaded.name is not None
    return uploaded.name


def test_a_file_with_lines_the_api_cannot_parse_is_refused_whole(tmp_path: Path) -> None:
    """One line with an unknown field (or not JSON) makes batchGenerateContent answer 400 for the whole file,
    one ``Error on line N`` per bad line (as in UKGovernmentBEIS/inspect_ai#3257); no job is created."""
    unknown_size = {**TEXT, "generationConfig": {"imageConfig": {"size": "2K"}}}
    flat_config = {**TEXT, "thinking_config": {"thinking_budget": 0}}
    data = (
        jsonl({"key": "good", "request": TEXT}, {"key": "size", "request": unknown_size})
        + b"{not json\n"
        + jsonl({"key": "flat", "request": flat_config}, {"key": "good-2", "request": TEXT})
    )
    with running_emulator(tmp_path / "emu") as emu:
        client = emu.client()
        name = upload_bytes(client, tmp_path / "in.jsonl", data)
        with pytest.raises(errors.ClientError) as caught:
            client.batches.create(model=GA, src=name)
        assert list(client.batches.list(config={"page_size": 10})) == []
    assert caught.value.code == 400 and caught.value.status == "INVALID_ARGUMENT"
    lines = str(caught.value.message).split("\n")
    size_column = data.split(b"\n")[1].find(b'"size"') + 1
    assert lines[0] == f"Error on line 2: invalid JSON, near column {size_column}: no such field: 'size'"
    assert lines[1].startswith("Error on line 3: invalid JSON, near column ")
    assert lines[2].startswith("Error on line 4: invalid JSON, near column ")
    assert lines[2].endswith("no such field: 'thinking_config'")
    assert len(lines) == 3


def test_an_inline_request_with_an_unknown_field_is_400_with_a_field_violation(tmp_path: Path) -> None:
    """The shape googleapis/python-genai#1451 shows: the path in snake_case, a google.rpc.BadRequest detail."""
    bad_items = [{"request": TEXT}, {"request": TEXT, "safetySettings": []}]
    config = types.CreateBatchJobConfig(
        http_options=types.HttpOptions(
            extra_body={"batch": {"inputConfig": {"requests": {"requests": bad_items}}}}
        )
    )
    with running_emulator(tmp_path / "emu") as emu:
        client = emu.client()
        with pytest.raises(errors.ClientError) as caught:
            client.batches.create(model=GA, src=[types.InlinedRequest(contents="a kite")], config=config)
        assert list(client.batches.list(config={"page_size": 10})) == []
    message = (
        'Invalid JSON payload received. Unknown name "safetySettings" at '
        "'batch.input_config.requests.requests[1]': Cannot find field."
    )
    assert caught.value.code == 400 and caught.value.message == message
    assert caught.value.details["error"]["details"] == [
        {
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [{"field": "batch.input_config.requests.requests[1]", "description": message}],
        }
    ]


def test_generate_content_with_an_unknown_field_is_400(tmp_path: Path) -> None:
    """A field the API does not know, slipped past the SDK's types through extra_body."""
    config = types.GenerateContentConfig(
        response_modalities=["IMAGE"],
        http_options=types.HttpOptions(extra_body={"generationConfig": {"imageConfig": {"size": "2K"}}}),
    )
    with running_emulator(tmp_path / "emu") as emu:
        client = emu.client()  # kept: a collected client closes its connection pool
        with pytest.raises(errors.ClientError) as caught:
            client.models.generate_content(model=GA, contents="a kite", config=config)
    assert caught.value.code == 400 and caught.value.status == "INVALID_ARGUMENT"
    assert caught.value.message == (
        "Invalid JSON payload received. Unknown name \"size\" at 'generation_config.image_config': "
        "Cannot find field."
    )


def test_every_field_the_sdk_sends_to_the_gemini_api_is_taken(tmp_path: Path) -> None:
    """The closed messages are not stricter than the SDK: a config setting the Gemini API's fields answers 200."""
    config = types.GenerateContentConfig(
        system_instruction="paint",
        temperature=0.5,
        top_p=0.9,
        top_k=40,
        candidate_count=1,
        max_output_tokens=1000,
        stop_sequences=["END"],
        seed=7,
        presence_penalty=0.1,
        frequency_penalty=0.1,
        response_modalities=["TEXT", "IMAGE"],
        safety_settings=[types.SafetySetting(category="HARM_CATEGORY_HARASSMENT", threshold="BLOCK_NONE")],
        thinking_config=types.ThinkingConfig(include_thoughts=False, thinking_level="LOW"),
        image_config=types.ImageConfig(aspect_ratio="16:9", image_size="2K"),
        labels={"team": "art"},
        service_tier="standard",
        store=False,
    )
    contents = [
        types.Part.from_text(text="a kite"),
        types.Part.from_bytes(data=b"\x89PNG", mime_type="image/png"),
    ]
    with running_emulator(tmp_path / "emu") as emu:
        client = emu.client()
        response = client.models.generate_content(model=GA, contents=contents, config=config)
    assert response.candidates and response.candidates[0].finish_reason == "STOP"


def test_promptdrop_refuses_the_unknown_field_line_alone_and_runs_the_others(pipeline: Pipeline) -> None:
    """The line Google would refuse the whole batch for is ``invalid`` with its number and reason."""
    bad = {**TEXT, "generationConfig": {"responseModalities": ["IMAGE"], "imageConfig": {"size": "2K"}}}
    data = jsonl(
        {"key": "one", "prompt": "a red kite"},
        {"key": "typo", "request": bad},
        {"key": "two", "request": {**TEXT, "generationConfig": {"responseModalities": ["IMAGE"]}}},
    )
    receipt = pipeline.drop("mixed.jsonl", data)
    assert receipt.run is not None
    run = pipeline.finish(receipt.run.run_id)
    assert run.state is RunState.PARTIAL
    entries = {entry["key"]: entry for entry in pipeline.manifest(run)}
    assert [entries[key]["status"] for key in ("one", "typo", "two")] == ["succeeded", "invalid", "succeeded"]
    assert entries["typo"]["line"] == 2
    assert entries["typo"]["error"]["code"] == "unknown_field"
    assert "generation_config.image_config" in entries["typo"]["error"]["message"]
    assert "'size'" in entries["typo"]["error"]["message"]


def test_the_emulator_refusal_is_what_promptdrop_guards_against(tmp_path: Path) -> None:
    """The same typo line sent straight to the emulator takes its good neighbour down with it."""
    bad = {**TEXT, "generationConfig": {"imageConfig": {"size": "2K"}}}
    with running_emulator(tmp_path / "emu") as emu:
        client = emu.client()
        name = upload_bytes(
            client, tmp_path / "in.jsonl", jsonl({"key": "a", "request": TEXT}, {"key": "b", "request": bad})
        )
        with pytest.raises(errors.ClientError):
            client.batches.create(model=GA, src=name)
        good = upload_bytes(client, tmp_path / "ok.jsonl", jsonl({"key": "a", "request": TEXT}))
        job = client.batches.create(model=GA, src=good)
        assert job.name is not None
        assert wait_until_done(client, job.name).state == types.JobState.JOB_STATE_SUCCEEDED


def test_more_reference_images_than_the_model_takes_fail_that_request(tmp_path: Path) -> None:
    """Beyond the documented maximum (3 on gemini-2.5-flash-image) a batch line fails alone with code 3, and
    generateContent answers 400 INVALID_ARGUMENT; at the maximum it is answered."""
    image = {"inlineData": {"mimeType": "image/png", "data": PIXEL}}

    def with_images(count: int) -> dict[str, Any]:
        return {"contents": [{"parts": [{"text": "blend"}] + [image] * count}]}

    flash = "gemini-2.5-flash-image"  # past its announced shutdown: served here as a real API may still
    lines = jsonl({"key": "three", "request": with_images(3)}, {"key": "four", "request": with_images(4)})
    with running_emulator(tmp_path / "emu", serve_models=(flash,)) as emu:
        client = emu.client()
        job = client.batches.create(model=flash, src=upload_bytes(client, tmp_path / "in.jsonl", lines))
        assert job.name is not None
        done = wait_until_done(client, job.name)
        assert done.dest is not None and done.dest.file_name is not None
        results = {
            item["key"]: item
            for item in map(orjson.loads, client.files.download(file=done.dest.file_name).splitlines())
        }
        parts = [types.Part.from_text(text="blend")] + [
            types.Part.from_bytes(data=base64.b64decode(PIXEL), mime_type="image/png")
        ] * 4
        with pytest.raises(errors.ClientError) as caught:
            client.models.generate_content(model=flash, contents=parts)
    assert "response" in results["three"]
    assert results["four"]["error"]["code"] == 3
    assert "at most 3 images" in results["four"]["error"]["message"]
    assert caught.value.code == 400 and caught.value.status == "INVALID_ARGUMENT"


def test_an_upload_over_the_files_api_limit_is_refused_before_its_bytes(tmp_path: Path) -> None:
    """2 GB per file (api_limits.FILE_MAX_BYTES): the SDK announces the size at the session start, and the
    emulator refuses there, so not a byte is sent. The file is sparse: nothing is written to disk."""
    big = tmp_path / "big.jsonl"
    with big.open("wb") as out:
        out.truncate(FILE_MAX_BYTES + 1)
    with running_emulator(tmp_path / "emu") as emu:
        client = emu.client()
        with pytest.raises(errors.ClientError) as caught:
            client.files.upload(file=big, config=types.UploadFileConfig(mime_type="jsonl"))
        sessions = list((tmp_path / "emu").rglob("*.part"))
        assert list(client.files.list()) == []
    assert caught.value.code == 400 and caught.value.status == "INVALID_ARGUMENT"
    assert f"at most {FILE_MAX_BYTES}" in str(caught.value.message)
    assert sessions == []  # no upload session was opened


def test_promptdrop_keeps_its_job_files_under_the_files_api_limit() -> None:
    """A job's input file is one Files API file: a larger PROMPTDROP_MAX_JOB_BYTES is a configuration error."""
    assert Settings.from_env({}).max_job_bytes <= FILE_MAX_BYTES
    assert (
        Settings.from_env({"PROMPTDROP_MAX_JOB_BYTES": str(FILE_MAX_BYTES)}).max_job_bytes == FILE_MAX_BYTES
    )
    with pytest.raises(ConfigurationError, match="MAX_JOB_BYTES"):
        Settings.from_env({"PROMPTDROP_MAX_JOB_BYTES": str(FILE_MAX_BYTES + 1)})


def test_request_bodies_are_capped_as_documented_20_mb_inline_batch_100_mb_generate(tmp_path: Path) -> None:
    """An inline batch body over 20 MB is refused (400); the same image in one generateContent call is
    taken, since inline data there may reach 100 MB (api_limits)."""
    blob = b"\x89PNG" + b"\0" * (16 * 1000 * 1000)  # 16 MB raw, over 21 MB in base64
    part = types.Part.from_bytes(data=blob, mime_type="image/png")
    with running_emulator(tmp_path / "emu") as emu:
        client = emu.client()
        with pytest.raises(errors.ClientError) as caught:
            client.batches.create(
                model=GA, src=[types.InlinedRequest(contents=[types.Content(parts=[part])])]
            )
        response = client.models.generate_content(
            model=GA, contents=[types.Content(role="user", parts=[types.Part.from_text(text="x"), part])]
        )
    assert caught.value.code == 400 and str(BATCH_INLINE_MAX_BYTES) in str(caught.value.message)
    assert response.candidates and response.candidates[0].finish_reason == "STOP"


@pytest.mark.parametrize(
    ("model", "image_config"),
    [
        (GA, types.ImageConfig(image_size="1k")),  # "Lowercase parameters (e.g., 1k) will be rejected"
        (GA, types.ImageConfig(image_size="512")),  # 512 is Gemini 3.1 Flash Image's only
        (GA, types.ImageConfig(aspect_ratio="4:1")),  # the extreme ratios are 3.1 Flash (Lite) Image's
        ("gemini-3.1-flash-lite-image", types.ImageConfig(image_size="2K")),  # 1K only
    ],
)
def test_image_config_values_a_model_does_not_take_are_400(
    tmp_path: Path, model: str, image_config: types.ImageConfig
) -> None:
    """imageConfig is checked per model against models.py, case-sensitively, as promptdrop's parser checks it."""
    config = types.GenerateContentConfig(response_modalities=["IMAGE"], image_config=image_config)
    with running_emulator(tmp_path / "emu") as emu:
        client = emu.client()
        with pytest.raises(errors.ClientError) as caught:
            client.models.generate_content(model=model, contents="a kite", config=config)
        ok = types.GenerateContentConfig(
            response_modalities=["IMAGE"], image_config=types.ImageConfig(image_size="1K")
        )
        assert client.models.generate_content(model=model, contents="a kite", config=ok).candidates
    assert caught.value.code == 400 and caught.value.status == "INVALID_ARGUMENT"
