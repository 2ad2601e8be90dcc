"""The emulator's generateContent (the now lane): answered as a batch line with the same request is, through
the real google-genai SDK, with the same markers, a configurable delay and the same fault controls."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from google.genai import errors, types

from promptdrop.adapters.gemini import GeminiBackend
from promptdrop.emulator.answers import answer
from promptdrop.emulator.wire import decode_base64
from promptdrop.testing.emulator import running_emulator

GA = "gemini-3-pro-image"
IMAGE = types.GenerateContentConfig(response_modalities=["IMAGE"])


def test_an_image_is_the_one_a_batch_line_would_get(tmp_path: Path) -> None:
    with running_emulator(tmp_path / "emu") as emu:
        client = emu.client()
        response = client.models.generate_content(model=GA, contents="a red kite", config=IMAGE)
    part = response.candidates[0].content.parts[-1]  # type: ignore[index, union-attr]
    assert part.inline_data is not None and part.inline_data.mime_type == "image/png"
    batch_answer = answer(
        {
            "contents": [{"role": "user", "parts": [{"text": "a red kite"}]}],
            "generationConfig": {"responseModalities": ["IMAGE"]},
        },
        GA,
        image_scale=emu.server.options.image_scale,
        response_id="x",
    )
    assert batch_answer.response is not None
    batch_part = batch_answer.response["candidates"][0]["content"]["parts"][-1]  # type: ignore[index]
    assert part.inline_data.data == decode_base64(batch_part["inlineData"]["data"])
    assert response.usage_metadata is not None and response.usage_metadata.prompt_token_count


def test_markers_steer_it_as_they_steer_batch_lines(tmp_path: Path) -> None:
    with running_emulator(tmp_path / "emu") as emu:
        client = emu.client()
        blocked = client.models.generate_content(model=GA, contents="x [[emulator:safety]]", config=IMAGE)
        assert blocked.candidates[0].finish_reason == types.FinishReason.IMAGE_SAFETY  # type: ignore[index]
        with pytest.raises(errors.ClientError) as caught:
            client.models.generate_content(model=GA, contents="x [[emulator:error=3]]", config=IMAGE)
        assert caught.value.code == 400 and caught.value.status == "INVALID_ARGUMENT"
        with pytest.raises(errors.ClientError) as missing:
            client.models.generate_content(model="no-such-model", contents="x", config=IMAGE)
        assert missing.value.code == 404
        assert emu.server.generated == 2


def test_a_delay_and_faults_apply_to_it(tmp_path: Path) -> None:
    with running_emulator(tmp_path / "slow", generate_seconds=0.5) as emu:
        client = emu.client()
        started = time.monotonic()
        client.models.generate_content(model=GA, contents="slow", config=IMAGE)
        assert time.monotonic() - started >= 0.5
    with running_emulator(
        tmp_path / "faulty", fault_rate=1.0, fault_codes=(503,), fault_routes=("generate",)
    ) as emu:
        client = emu.client()
        with pytest.raises(errors.ServerError) as caught:
            client.models.generate_content(model=GA, contents="x", config=IMAGE)
        assert caught.value.code == 503
        assert emu.server.faults_injected >= 1 and emu.server.generated == 0


def test_the_backend_sends_a_batch_lines_request_as_it_is(tmp_path: Path) -> None:
    """GeminiBackend.generate_content takes the REST request a batch line carries (camelCase, base64 image
    data, a system instruction) and the emulator gets the same request: its reference image is counted."""
    with running_emulator(tmp_path / "emu") as emu:
        backend = GeminiBackend("k", base_url=emu.url)
        png = answer(
            {"contents": [{"parts": [{"text": "ref"}]}]}, GA, image_scale=0.05, response_id="r"
        ).response["candidates"][0]["content"]["parts"][-1]["inlineData"]  # type: ignore[index]
        request = {
            "contents": [{"role": "user", "parts": [{"text": "a kite like this"}, {"inlineData": png}]}],
            "systemInstruction": {"parts": [{"text": "watercolour"}]},
            "generationConfig": {"responseModalities": ["IMAGE"], "imageConfig": {"aspectRatio": "16:9"}},
        }
        item = backend.generate_content(model=GA, request=request)
        usage = item["response"]["usageMetadata"]
        assert {"modality": "IMAGE", "tokenCount": 560} in usage["promptTokensDetails"]
        assert item["response"]["candidates"][0]["finishReason"] == "STOP"

        refused = backend.generate_content(model=GA, request={"contents": [{"parts": [{"nonsense": 1}]}]})
        assert refused["error"]["code"] == 3 and "cannot send this request" in refused["error"]["message"]
        failed = backend.generate_content(
            model=GA, request={"contents": [{"parts": [{"text": "[[emulator:error=3]]"}]}]}
        )
        assert failed["error"]["status"] == "INVALID_ARGUMENT" and failed["error"]["code"] == 400
        backend.close()


def test_an_answer_whose_caller_left_is_billed_and_counted_as_cut(tmp_path: Path) -> None:
    """A caller that gives up (a kill, a timeout) before the answer: the call is billed (``generated``) and
    ``GET /stats`` counts it as cut, apart from the answers delivered (the chaos suite's billing check)."""
    with running_emulator(tmp_path / "slow", generate_seconds=1.0) as emu:
        impatient = emu.client(timeout_ms=300)
        with pytest.raises(Exception):  # noqa: B017 - the SDK's timeout error, whatever its class
            impatient.models.generate_content(model=GA, contents="slow", config=IMAGE)
        patient = emu.client()
        patient.models.generate_content(model=GA, contents="patient", config=IMAGE)
        deadline = time.monotonic() + 5
        while emu.server.stats()["generated"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = emu.server.stats()
    assert stats["generated"] == 2
    assert stats["cut_by_route"] == {"generate": 1}
