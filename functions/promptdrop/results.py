"""Result lines and inline responses -> image outcomes (pure).

A results file is gigabytes of 1.5-32 MB lines, so each line is parsed once (orjson), its image decoded once,
and nothing else copies the payload: a long ``"data"`` string is lifted out of the line before the JSON parser
sees it and decoded straight from the line's bytes, so the base64 text never becomes a str beside the line. Shapes (reference/gemini-batch-api.md §4): ``{"key", "response"}`` or
``{"key", "error": google.rpc.Status}``; camelCase as the wire sends it, snake_case as an SDK dump has it
(``inline_data``, ``mime_type``, ``usage_metadata``...), where ``data`` may even be bytes already.

The image is the LAST non-thought ``inlineData`` part: Gemini 3 Pro Image may send drafts marked
``"thought": true`` before the final one. A response without an image part is a failure whatever its
``finishReason`` says.
"""

from __future__ import annotations

import binascii
from collections.abc import Mapping
from typing import Any, Final

import orjson

from promptdrop.errors import PermanentError
from promptdrop.names import VERTEX_LABEL
from promptdrop.outcomes import ImageOutcome, LineError, Usage
from promptdrop.rpc import CODES_BY_NAME, RETRYABLE_HTTP_CODES, RETRYABLE_RPC_CODES, RPC_NAMES

MIME_EXTENSIONS: Final = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
# Any other type is stored as it came, named ".bin": an unknown type is never guessed into a wrong extension.
OTHER_EXTENSION: Final = "bin"

# Finish or block reasons that mean a safety/policy refusal: final, never retried.
SAFETY_REASONS: Final = frozenset(
    {
        "SAFETY",
        "IMAGE_SAFETY",
        "PROHIBITED_CONTENT",
        "IMAGE_PROHIBITED_CONTENT",
        "BLOCKLIST",
        "SPII",
        "RECITATION",
        "IMAGE_RECITATION",
    }
)
_MAX_MESSAGE_CHARS: Final = 500
_URLSAFE_TO_STANDARD: Final = bytes.maketrans(b"-_", b"+/")


class ResultLineError(PermanentError):
    """A result line that is not a JSON object, or has neither ``response`` nor ``error``."""


def extension_for(mime_type: str) -> str:
    return MIME_EXTENSIONS.get(mime_type.lower(), OTHER_EXTENSION)


def _get(mapping: Mapping[str, Any], camel: str, snake: str) -> Any:
    value = mapping.get(camel)
    return mapping.get(snake) if value is None else value


def _as_int(value: object) -> int:
    """Token counts (int64 may come as a JSON string); anything else counts 0."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return 0


def _decode_base64(data: str | bytes | memoryview) -> bytes:
    """Standard base64 at C speed; URL-safe, unpadded or wrapped base64 on the slow path."""
    try:
        return binascii.a2b_base64(data, strict_mode=True)
    except (binascii.Error, ValueError):
        pass
    raw = data.encode("ascii") if isinstance(data, str) else bytes(data)
    cleaned = b"".join(raw.split()).translate(_URLSAFE_TO_STANDARD).rstrip(b"=")
    cleaned += b"=" * (-len(cleaned) % 4)
    return binascii.a2b_base64(cleaned, strict_mode=True)


def _sniff_mime(data: bytes) -> str | None:
    """The type from the magic bytes, for a part that did not say (or said something generic)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def usage_from(metadata: object) -> Usage | None:
    """Usage from a ``usageMetadata`` object (camelCase or snake_case); None if there is none."""
    if not isinstance(metadata, Mapping):
        return None
    image_tokens = 0
    details = _get(metadata, "candidatesTokensDetails", "candidates_tokens_details")
    for detail in details if isinstance(details, list) else ():
        if isinstance(detail, Mapping) and detail.get("modality") == "IMAGE":
            image_tokens += _as_int(_get(detail, "tokenCount", "token_count"))
    return Usage(
        prompt_tokens=_as_int(_get(metadata, "promptTokenCount", "prompt_token_count")),
        output_tokens=_as_int(_get(metadata, "candidatesTokenCount", "candidates_token_count"))
        + _as_int(_get(metadata, "thoughtsTokenCount", "thoughts_token_count")),
        image_tokens=image_tokens,
    )


def _failure(
    key: str | None,
    code: str,
    message: str,
    *,
    retryable: bool = False,
    finish_reason: str | None = None,
    text: str | None = None,
    usage: Usage | None = None,
) -> ImageOutcome:
    return ImageOutcome(
        key=key,
        succeeded=False,
        data=None,
        mime_type=None,
        extension=None,
        finish_reason=finish_reason,
        text=text,
        usage=usage,
        error=LineError(code, message, retryable),
    )


def _status_code(status: Mapping[str, Any]) -> int | None:
    """The google.rpc code of a Status; REST errors also name it in ``status`` next to an HTTP ``code``."""
    name = status.get("status")
    if isinstance(name, str) and name.upper() in CODES_BY_NAME:
        return CODES_BY_NAME[name.upper()]
    code = status.get("code")
    if isinstance(code, str):
        return int(code) if code.isdigit() else CODES_BY_NAME.get(code.upper())
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def _error_outcome(key: str | None, status: object) -> ImageOutcome:
    """An ``error`` item (a google.rpc.Status) -> api_error, retryable for transient codes only."""
    code = _status_code(status) if isinstance(status, Mapping) else None
    message = str(status.get("message") or "") if isinstance(status, Mapping) else str(status)
    if code in RPC_NAMES:
        label = f"rpc code {code} ({RPC_NAMES[code]})"
        retryable = code in RETRYABLE_RPC_CODES
    elif code is not None:
        label = f"HTTP status {code}"
        retryable = code in RETRYABLE_HTTP_CODES
    else:
        label = "error without a code"
        retryable = False
    if len(message) > _MAX_MESSAGE_CHARS:
        message = message[:_MAX_MESSAGE_CHARS] + "…"
    return _failure(key, "api_error", f"{label}: {message}" if message else label, retryable=retryable)


def outcome_from_item(
    item: Mapping[str, Any], key: str | None, lifted: Mapping[str, memoryview] | None = None
) -> ImageOutcome:
    """One result (a results-file line or an inline response) -> its outcome; shared by both job outputs.

    ``lifted``: payloads taken out of the line before parsing, by the placeholder left in their place."""
    error = item.get("error")
    if error is not None:
        return _error_outcome(key, error)
    response = item.get("response")
    if not isinstance(response, Mapping):
        raise ResultLineError("a result has neither a response object nor an error")
    usage = usage_from(_get(response, "usageMetadata", "usage_metadata"))
    candidates = response.get("candidates")
    candidate = candidates[0] if isinstance(candidates, list) and candidates else None
    if not isinstance(candidate, Mapping):
        feedback = _get(response, "promptFeedback", "prompt_feedback")
        block = _get(feedback, "blockReason", "block_reason") if isinstance(feedback, Mapping) else None
        if block:
            return _failure(
                key, "blocked", f"the prompt was blocked ({block})", finish_reason=str(block), usage=usage
            )
        return _failure(key, "no_image", "the response has no candidates", usage=usage)

    finish = _get(candidate, "finishReason", "finish_reason")
    finish_reason = str(finish) if finish is not None else None
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, Mapping) else None
    image: Mapping[str, Any] | None = None
    texts: list[str] = []
    for part in parts if isinstance(parts, list) else ():
        if not isinstance(part, Mapping) or part.get("thought") is True:
            continue
        blob = _get(part, "inlineData", "inline_data")
        if isinstance(blob, Mapping):
            image = blob
        text = part.get("text")
        if isinstance(text, str):
            texts.append(text)
    text_out = "\n".join(texts) if texts else None

    if image is None:
        if finish_reason in SAFETY_REASONS:
            return _failure(
                key,
                "safety",
                f"no image: refused for safety ({finish_reason})",
                finish_reason=finish_reason,
                text=text_out,
                usage=usage,
            )
        return _failure(
            key,
            "no_image",
            f"the model returned no image (finishReason {finish_reason})",
            finish_reason=finish_reason,
            text=text_out,
            usage=usage,
        )

    payload = image.get("data")
    try:
        if not isinstance(payload, str | bytes):
            raise ValueError("no data")
        if lifted and isinstance(payload, str) and payload in lifted:
            data = _decode_base64(lifted[payload])
        else:
            # An SDK dump holds the bytes already decoded; the wire holds base64 text.
            data = payload if isinstance(payload, bytes) else _decode_base64(payload)
    except (binascii.Error, ValueError):
        return _failure(
            key,
            "bad_image_data",
            "the image part's data is not base64",
            finish_reason=finish_reason,
            text=text_out,
            usage=usage,
        )
    declared = _get(image, "mimeType", "mime_type")
    if isinstance(declared, str) and declared.lower().startswith("image/"):
        mime_type: str | None = declared.lower()
    else:
        mime_type = _sniff_mime(data)
    return ImageOutcome(
        key=key,
        succeeded=True,
        data=data,
        mime_type=mime_type,
        extension=extension_for(mime_type) if mime_type else OTHER_EXTENSION,
        finish_reason=finish_reason,
        text=text_out,
        usage=usage,
        error=None,
    )


# A "data" string at least this long is lifted out of its line before parsing (an image; shorter ones are
# not worth it). Its placeholder holds a ':' that base64 never does, and is used only if the line has none.
LIFT_MIN_BYTES: Final = 64 * 1024
_PLACEHOLDER: Final = "promptdrop:lifted:"
_SPACE: Final = frozenset(b" \t\r\n")


def lift_payloads(raw: bytes) -> tuple[bytes, dict[str, memoryview]]:
    """``raw`` with each long ``"data": "..."`` value replaced by a short placeholder, and the values as views
    of ``raw`` by placeholder. A value is lifted only where ``"data"`` is an object key (after ``{`` or ``,``:
    a quote inside a string is always escaped) and holds no escape; otherwise the line stays as it is."""
    if _PLACEHOLDER.encode() in raw:
        return raw, {}
    spans: list[tuple[int, int]] = []
    position = 0
    while (at := raw.find(b'"data"', position)) >= 0:
        position = at + 6
        before = at - 1
        while before >= 0 and raw[before] in _SPACE:
            before -= 1
        after = _skip_space(raw, position)
        if before < 0 or raw[before] not in b"{," or raw[after : after + 1] != b":":
            continue
        start = _skip_space(raw, after + 1)
        if raw[start : start + 1] != b'"':
            continue
        end = raw.find(b'"', start + 1)
        if end < 0:
            break
        position = end + 1
        if end - start - 1 >= LIFT_MIN_BYTES and raw.find(b"\\", start + 1, end) < 0:
            spans.append((start + 1, end))
    if not spans:
        return raw, {}
    view = memoryview(raw)
    pieces: list[bytes | memoryview] = []
    lifted: dict[str, memoryview] = {}
    last = 0
    for number, (start, end) in enumerate(spans):
        name = f"{_PLACEHOLDER}{number}"
        pieces += [view[last:start], name.encode()]
        lifted[name] = view[start:end]
        last = end
    pieces.append(view[last:])
    return b"".join(pieces), lifted


def _skip_space(raw: bytes, position: int) -> int:
    while position < len(raw) and raw[position] in _SPACE:
        position += 1
    return position


def parse_result_line(raw: bytes) -> ImageOutcome:
    """One line of a results file: ``{"key", "response"}`` or ``{"key", "error"}`` (key may be absent)."""
    shortened, lifted = lift_payloads(raw)
    try:
        item = orjson.loads(shortened)
    except orjson.JSONDecodeError as exc:
        raise ResultLineError(f"a result line is not valid JSON: {exc}") from exc
    if not isinstance(item, dict):
        raise ResultLineError("a result line is not a JSON object")
    key = item.get("key")
    if key is None and isinstance(item.get("request"), Mapping):
        key, item = _vertex_prediction(item)
    if key is not None and not isinstance(key, str):
        raise ResultLineError("a result line's key is not a string")
    return outcome_from_item(item, key, lifted)


def _vertex_prediction(item: Mapping[str, Any]) -> tuple[object, Mapping[str, Any]]:
    """A Vertex AI prediction line ``{status, processed_time, request, response?}``: the label its request
    carries the key in (``names.vertex_label``, or None), and the line as a results line. A failed request
    has no response and says why in ``status`` (text, with the google.rpc.Status JSON when there is one)."""
    labels = item["request"].get("labels")
    label = labels.get(VERTEX_LABEL) if isinstance(labels, Mapping) else None
    status = item.get("status")
    if "response" in item or "error" in item or not status:
        return label, item
    error: object = str(status)
    start = error.find("{") if isinstance(error, str) else -1
    if start >= 0:
        try:
            parsed = orjson.loads(str(status)[start:])
        except orjson.JSONDecodeError:
            parsed = None
        if isinstance(parsed, Mapping) and isinstance(parsed.get("error"), Mapping):
            error = parsed["error"]
    return label, {**item, "error": error}
