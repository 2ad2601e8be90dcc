"""What the emulated model answers: image sizes per ratio and class, markers, usage, invalid requests."""

from __future__ import annotations

import base64
import io
from typing import Any

import pytest
from PIL import Image

from promptdrop.emulator.answers import answer, job_marker
from promptdrop.emulator.images import image_dimensions, render_image


@pytest.mark.parametrize(
    ("ratio", "size", "scale", "expected"),
    [
        ("1:1", "1K", 1.0, (1024, 1024)),
        ("16:9", "1K", 1.0, (1024, 576)),
        ("9:16", "2K", 1.0, (1152, 2048)),
        ("4:3", "4K", 1.0, (4096, 3072)),
        ("21:9", "512", 1.0, (512, 219)),
        ("3:2", "1K", 0.0625, (64, 43)),
        ("8:1", "1K", 0.0625, (64, 16)),
        ("1:4", "512", 0.0625, (16, 32)),
    ],
)
def test_image_dimensions(ratio: str, size: str, scale: float, expected: tuple[int, int]) -> None:
    """The size class sets the long side (scaled), the ratio the short one, never under 16 px."""
    assert image_dimensions(ratio, size, scale) == expected


@pytest.mark.parametrize(("ratio", "size"), [("16x9", "1K"), ("0:1", "1K"), ("1:1", "1k"), ("1:1", "8K")])
def test_image_dimensions_refuse_unknown_ratio_or_size(ratio: str, size: str) -> None:
    """Malformed ratios and unknown size classes (the K is upper case) are ValueErrors."""
    with pytest.raises(ValueError):
        image_dimensions(ratio, size)


@pytest.mark.parametrize(("image_format", "signature"), [("PNG", b"\x89PNG"), ("JPEG", b"\xff\xd8")])
def test_render_image_is_deterministic_and_encoded(image_format: str, signature: bytes) -> None:
    """Same prompt and seed give the same bytes of the asked format and size; another seed differs."""
    first = render_image("a fox in snow", 1, 80, 45, image_format)
    assert first == render_image("a fox in snow", 1, 80, 45, image_format)
    assert first != render_image("a fox in snow", 2, 80, 45, image_format)
    assert first.startswith(signature)
    assert Image.open(io.BytesIO(first)).size == (80, 45)


def request(text: str, **generation: Any) -> dict[str, Any]:
    return {"contents": [{"parts": [{"text": text}]}], "generationConfig": generation}


def run(raw: object, model: str = "gemini-3-pro-image") -> dict[str, Any]:
    result = answer(raw, model, image_scale=0.0625, response_id="r1")
    return {"response": result.response} if result.error is None else {"error": result.error}


def parts_of(outcome: dict[str, Any]) -> list[dict[str, Any]]:
    return outcome["response"]["candidates"][0]["content"]["parts"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("modalities", "kinds"),
    [
        (["IMAGE"], [["inlineData"]]),
        (["TEXT", "IMAGE"], [["text"], ["inlineData"]]),
        (None, [["text"], ["inlineData"]]),
        (["TEXT"], [["text"]]),
    ],
)
def test_parts_follow_response_modalities(modalities: list[str] | None, kinds: list[list[str]]) -> None:
    """An image part when IMAGE is asked for, a short text part before it when TEXT is too."""
    generation = {"responseModalities": modalities} if modalities else {}
    assert [sorted(part) for part in parts_of(run(request("x", **generation)))] == kinds


@pytest.mark.parametrize(
    ("model", "size", "image_tokens"),
    [
        ("gemini-3-pro-image", "1K", 1120),
        ("models/gemini-3-pro-image", "4K", 2000),
        ("gemini-3.1-flash-image", "512", 747),
        ("gemini-2.5-flash-image", None, 1290),
        ("not-in-the-table", "2K", 1290),
    ],
)
def test_usage_bills_image_tokens_from_the_model_table(
    model: str, size: str | None, image_tokens: int
) -> None:
    """candidatesTokensDetails IMAGE comes from the shared model table (1290 for an unknown model)."""
    generation: dict[str, Any] = {"responseModalities": ["IMAGE"]}
    if size:
        generation["imageConfig"] = {"imageSize": size}
    usage = run(request("twelve chars", **generation), model)["response"]["usageMetadata"]
    assert usage["candidatesTokensDetails"] == [{"modality": "IMAGE", "tokenCount": image_tokens}]
    assert usage["promptTokenCount"] == 3
    assert usage["totalTokenCount"] == 3 + image_tokens


@pytest.mark.parametrize(
    ("text", "check"),
    [
        ("x [[emulator:safety]]", lambda o: o["response"]["candidates"] == [{"finishReason": "IMAGE_SAFETY", "index": 0}]),
        ("x [[emulator:block]]", lambda o: o["response"]["promptFeedback"] == {"blockReason": "SAFETY"}
         and "candidates" not in o["response"]),
        ("x [[emulator:no-image]]", lambda o: [sorted(p) for p in parts_of(o)] == [["text"]]
         and o["response"]["candidates"][0]["finishReason"] == "STOP"),
        ("x [[emulator:error=13]]", lambda o: (o["error"]["code"], o["error"]["status"]) == (13, "INTERNAL")),
        ("x [[emulator:error=8]]", lambda o: o["error"]["status"] == "RESOURCE_EXHAUSTED"),
        ("x [[emulator:error=3]]", lambda o: o["error"]["status"] == "INVALID_ARGUMENT"),
        ("x [[emulator:jpeg]]", lambda o: parts_of(o)[-1]["inlineData"]["mimeType"] == "image/jpeg"),
        ("plain", lambda o: parts_of(o)[-1]["inlineData"]["mimeType"] == "image/png"),
    ],
)  # fmt: skip
def test_markers_choose_the_outcome(text: str, check: Any) -> None:
    """Each per-request marker gives its outcome; without one the answer is a PNG."""
    assert check(run(request(text, responseModalities=["IMAGE"])))


def test_marker_in_system_instruction_counts() -> None:
    """Markers are looked for in every text part, the system instruction included."""
    raw = {**request("x"), "system_instruction": {"parts": [{"text": "[[emulator:block]]"}]}}
    assert "promptFeedback" in run(raw)["response"]


def test_image_data_is_standard_base64_of_the_asked_shape() -> None:
    """inlineData.data is standard base64 of an image with the requested ratio."""
    raw = request("x", responseModalities=["IMAGE"], imageConfig={"aspectRatio": "9:16"})
    data = base64.b64decode(parts_of(run(raw))[0]["inlineData"]["data"], validate=True)
    assert Image.open(io.BytesIO(data)).size == (36, 64)


@pytest.mark.parametrize(
    "raw",
    [
        "not an object",
        {"contents": []},
        {
            "contents": [{"parts": [{"text": "x"}]}],
            "generationConfig": {"imageConfig": {"aspectRatio": "5:7"}},
        },
        {"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"imageConfig": {"imageSize": "3K"}}},
        {"contents": [{"parts": [{"text": "x"}, {"inlineData": {"data": "***"}}]}]},
        {"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"seed": "many"}},
    ],
)
def test_invalid_requests_are_code_3(raw: object) -> None:
    """Requests the model cannot take become INVALID_ARGUMENT error entries."""
    assert run(raw)["error"]["code"] == 3


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (request("[[emulator:job=expired]]"), "expired"),
        ({"contents": [{"parts": [{"text": "[[emulator:job=failed]]"}]}]}, "failed"),
        (request("nothing special"), None),
        ("not a request", None),
        ({"contents": []}, None),
    ],
)
def test_job_marker(raw: object, expected: str | None) -> None:
    """Job-level markers are found in a request's texts; anything else asks for nothing."""
    assert job_marker(raw) == expected
