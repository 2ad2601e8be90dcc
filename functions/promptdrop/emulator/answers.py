"""What the emulated model answers to one GenerateContentRequest, steered by markers in the prompt.

Markers (in any text part, system instruction included; see docs/EMULATOR.md):
``[[emulator:safety]]``, ``[[emulator:no-image]]``, ``[[emulator:block]]``, ``[[emulator:error=CODE]]``,
``[[emulator:jpeg]]`` per request, and ``[[emulator:job=expired]]`` / ``[[emulator:job=failed]]`` for the
whole job. Apart from drawing the image this module is pure.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Final

from promptdrop.emulator.images import MIME_TYPES, image_dimensions, render_image
from promptdrop.emulator.wire import camel_keys, decode_base64, encode_base64
from promptdrop.models import TEXT_MODELS, bare_model_id, model_spec
from promptdrop.rpc import rpc_status

UNKNOWN_MODEL_IMAGE_TOKENS: Final = 1290
UNKNOWN_MODEL_INPUT_IMAGE_TOKENS: Final = 560
_ERROR_MARKER = re.compile(r"\[\[emulator:error=(\d+)\]\]")
_JOB_MARKER = re.compile(r"\[\[emulator:job=(expired|failed)\]\]")
_LABEL_MARKER = re.compile(r"\[\[emulator:label=lost\]\]")


class InvalidRequest(ValueError):
    """The request cannot be answered: it becomes an INVALID_ARGUMENT (code 3) error line."""


@dataclass(frozen=True, slots=True)
class Answer:
    """Exactly one of ``response`` (a GenerateContentResponse) or ``error`` (a google.rpc.Status)."""

    response: dict[str, object] | None = None
    error: dict[str, object] | None = None


def status_error(code: int, message: str) -> dict[str, object]:
    """A google.rpc.Status-shaped error entry, with the status name beside the code."""
    return {"code": code, "message": message, "status": rpc_status(code)[0]}


def _parts(content: object) -> list[dict[str, object]]:
    if not isinstance(content, dict):
        return []
    parts = content.get("parts")
    return [part for part in parts if isinstance(part, dict)] if isinstance(parts, list) else []


def _contents(request: dict[str, object]) -> list[dict[str, object]]:
    contents = request.get("contents")
    if not isinstance(contents, list) or not contents:
        raise InvalidRequest("request.contents must be a non-empty list")
    return [content for content in contents if isinstance(content, dict)]


def prompt_texts(request: dict[str, object]) -> tuple[str, str]:
    """(the prompt drawn on the image, every text of the request where markers are looked for)."""
    prompt = [str(part["text"]) for c in _contents(request) for part in _parts(c) if "text" in part]
    system = [str(part["text"]) for part in _parts(request.get("systemInstruction")) if "text" in part]
    joined = "\n".join(prompt)
    return joined, "\n".join([*system, joined])


def job_marker(request: object) -> str | None:
    """``"expired"`` or ``"failed"`` if the request asks for that job-level outcome, else None."""
    match = _marker(request, _JOB_MARKER)
    return match.group(1) if match else None


def label_lost(request: object) -> bool:
    """The request asks its Vertex AI prediction to come back without its labels (``[[emulator:label=lost]]``)."""
    return _marker(request, _LABEL_MARKER) is not None


def _marker(request: object, pattern: re.Pattern[str]) -> re.Match[str] | None:
    if not isinstance(request, dict):
        return None
    try:
        _, texts = prompt_texts(camel_keys(request))  # type: ignore[arg-type]
    except InvalidRequest:
        return None
    return pattern.search(texts)


def _reference_images(request: dict[str, object]) -> int:
    count = 0
    for content in _contents(request):
        for part in _parts(content):
            inline = part.get("inlineData")
            if isinstance(inline, dict):
                try:
                    decode_base64(str(inline.get("data", "")))
                except ValueError as exc:
                    raise InvalidRequest(f"inlineData.data is not base64: {exc}") from exc
                count += 1
            elif isinstance(part.get("fileData"), dict):
                count += 1
    return count


@dataclass(frozen=True, slots=True)
class ImageRequest:
    """The image-related settings of one request, checked against the model table."""

    aspect_ratio: str
    image_size: str
    seed: int
    modalities: tuple[str, ...]
    image_tokens: int
    input_image_tokens: int


def image_request(request: dict[str, object], model: str) -> ImageRequest:
    """Read and check ``generationConfig``; raise InvalidRequest for what the model does not accept."""
    config = request.get("generationConfig") or {}
    if not isinstance(config, dict):
        raise InvalidRequest("generationConfig must be an object")
    image_config = config.get("imageConfig") or {}
    if not isinstance(image_config, dict):
        raise InvalidRequest("generationConfig.imageConfig must be an object")
    aspect_ratio = str(image_config.get("aspectRatio") or "1:1")
    image_size = str(image_config.get("imageSize") or "1K")
    raw_modalities = config.get("responseModalities") or ["TEXT", "IMAGE"]
    modalities = tuple(str(m).upper() for m in raw_modalities) if isinstance(raw_modalities, list) else ()
    try:
        image_dimensions(aspect_ratio, image_size)
        seed = int(config.get("seed") or 0)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(str(exc)) from exc
    spec = model_spec(model)
    if spec is None:
        return ImageRequest(
            aspect_ratio,
            image_size,
            seed,
            modalities,
            UNKNOWN_MODEL_IMAGE_TOKENS,
            UNKNOWN_MODEL_INPUT_IMAGE_TOKENS,
        )
    if aspect_ratio not in spec.aspect_ratios:
        raise InvalidRequest(f"aspect ratio {aspect_ratio} is not supported by {spec.name}")
    if image_size not in spec.image_tokens:
        raise InvalidRequest(f"image size {image_size} is not supported by {spec.name}")
    return ImageRequest(
        aspect_ratio,
        image_size,
        seed,
        modalities,
        spec.image_tokens[image_size],
        spec.input_image_tokens,
    )


def _tokens(text: str) -> int:
    return max(1, round(len(text) / 4))


def _usage(prompt_tokens: int, image_tokens: int, text_tokens: int, input_tokens: int) -> dict[str, object]:
    """usageMetadata; ``prompt_tokens`` includes the ``input_tokens`` of reference images."""
    usage: dict[str, object] = {"promptTokenCount": prompt_tokens}
    details: list[dict[str, object]] = []
    if text_tokens:
        details.append({"modality": "TEXT", "tokenCount": text_tokens})
    if image_tokens:
        details.append({"modality": "IMAGE", "tokenCount": image_tokens})
    if details:
        usage["candidatesTokenCount"] = text_tokens + image_tokens
        usage["candidatesTokensDetails"] = details
    usage["totalTokenCount"] = prompt_tokens + text_tokens + image_tokens
    prompt_details: list[dict[str, object]] = [
        {"modality": "TEXT", "tokenCount": prompt_tokens - input_tokens}
    ]
    if input_tokens:
        prompt_details.append({"modality": "IMAGE", "tokenCount": input_tokens})
    usage["promptTokensDetails"] = prompt_details
    return usage


def answer(raw_request: object, model: str, *, image_scale: float, response_id: str) -> Answer:
    """The emulated model's answer to one request (``model`` without or with ``models/``)."""
    if not isinstance(raw_request, dict):
        return Answer(error=status_error(3, "request must be a JSON object"))
    request = camel_keys(raw_request)
    assert isinstance(request, dict)
    if bare_model_id(model) in TEXT_MODELS:
        return _text_answer(request, model, response_id)
    try:
        prompt, texts = prompt_texts(request)
        settings = image_request(request, model)
        input_images = _reference_images(request)
        spec = model_spec(model)
        if spec is not None and spec.max_input_images is not None and input_images > spec.max_input_images:
            raise InvalidRequest(
                f"{spec.name} takes at most {spec.max_input_images} images per request, got {input_images}"
            )
    except InvalidRequest as exc:
        return Answer(error=status_error(3, str(exc)))
    if error := _ERROR_MARKER.search(texts):
        code = int(error.group(1))
        return Answer(error=status_error(code, f"emulated error {code} ({rpc_status(code)[0]})"))
    input_tokens = input_images * settings.input_image_tokens
    prompt_tokens = _tokens(texts) + input_tokens
    envelope: dict[str, object] = {"modelVersion": model.removeprefix("models/"), "responseId": response_id}
    if "[[emulator:block]]" in texts:
        return Answer(
            response={
                "promptFeedback": {"blockReason": "SAFETY"},
                "usageMetadata": _usage(prompt_tokens, 0, 0, input_tokens),
                **envelope,
            }
        )
    if "[[emulator:safety]]" in texts:
        candidate: dict[str, object] = {"finishReason": "IMAGE_SAFETY", "index": 0}
        usage = _usage(prompt_tokens, 0, 0, input_tokens)
        return Answer(response={"candidates": [candidate], "usageMetadata": usage, **envelope})
    parts: list[dict[str, object]] = []
    no_image = "[[emulator:no-image]]" in texts or "IMAGE" not in settings.modalities
    if no_image:
        parts.append({"text": "I could not draw this one, so here is a description instead."})
    elif "TEXT" in settings.modalities:
        parts.append({"text": f"Here is your image: {prompt[:60]}"})
    image_tokens = 0
    if not no_image:
        image_format = "JPEG" if "[[emulator:jpeg]]" in texts else "PNG"
        width, height = image_dimensions(settings.aspect_ratio, settings.image_size, image_scale)
        data = render_image(prompt, settings.seed, width, height, image_format)
        parts.append({"inlineData": {"mimeType": MIME_TYPES[image_format], "data": encode_base64(data)}})
        image_tokens = settings.image_tokens
    text_tokens = sum(_tokens(str(part["text"])) for part in parts if "text" in part)
    candidate = {"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}
    usage = _usage(prompt_tokens, image_tokens, text_tokens, input_tokens)
    return Answer(response={"candidates": [candidate], "usageMetadata": usage, **envelope})


def _text_answer(request: dict[str, object], model: str, response_id: str) -> Answer:
    """A text model's answer: text only, as Google's text models answer a batch of text requests."""
    try:
        prompt, texts = prompt_texts(request)
    except InvalidRequest as exc:
        return Answer(error=status_error(3, str(exc)))
    text = f"A reply from {bare_model_id(model)} to: {prompt[:60]}"
    candidate = {"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP", "index": 0}
    usage = _usage(_tokens(texts), 0, _tokens(text), 0)
    envelope = {"modelVersion": bare_model_id(model), "responseId": response_id}
    return Answer(response={"candidates": [candidate], "usageMetadata": usage, **envelope})


def response_id(batch_id: str, index: int) -> str:
    """A stable response id per (job, request index), shaped like the API's."""
    return hashlib.sha256(f"{batch_id}:{index}".encode()).hexdigest()[:22]
