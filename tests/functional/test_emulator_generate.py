"""The emulator's generateContent (the now lane): answered as a batch line with the same request is, through
the real google-genai SDK, with the same markers, a configurable delay and the same fault controls."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from google.genai import errors, types

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
