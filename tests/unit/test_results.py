"""Result lines and inline responses -> image outcomes: images, drafts, refusals, errors, usage."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from promptdrop.outcomes import Usage
from promptdrop.results import (
    LIFT_MIN_BYTES,
    ResultLineError,
    lift_payloads,
    outcome_from_item,
    parse_result_line,
)
from promptdrop.rpc import RETRYABLE_RPC_CODES

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
JPEG = b"\xff\xd8\xff\xe0" + bytes(range(255, -1, -1)) * 3
WEBP = b"RIFF\x10\x00\x00\x00WEBPVP8 " + b"\xfb\xff\xfe" * 50
DRAFT = b"\x89PNG\r\n\x1a\ndraft"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def image_part(data: bytes, mime: str | None = "image/png", **extra: Any) -> dict[str, Any]:
    blob: dict[str, Any] = {"data": b64(data)}
    if mime is not None:
        blob["mimeType"] = mime
    return {"inlineData": blob, **extra}


def response(parts: list[dict[str, Any]], finish: str = "STOP", **extra: Any) -> dict[str, Any]:
    return {"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": finish}], **extra}


def line(key: str | None, **item: Any) -> bytes:
    return orjson.dumps({**({"key": key} if key is not None else {}), **item})


@pytest.mark.parametrize(
    ("data", "mime", "extension"),
    [
        (PNG, "image/png", "png"),
        (JPEG, "image/jpeg", "jpg"),
        (WEBP, "image/webp", "webp"),
        (PNG, "IMAGE/PNG", "png"),
        (b"GIF89a....", "image/gif", "bin"),
    ],
    ids=["png", "jpeg", "webp", "uppercase-mime", "other-type"],
)
def test_image_part_is_decoded_exactly(data: bytes, mime: str, extension: str) -> None:
    """The image bytes come back exactly as sent, with the returned type and its file extension."""
    outcome = parse_result_line(line("k", response=response([image_part(data, mime)])))
    assert outcome.succeeded
    assert outcome.data == data
    assert (outcome.key, outcome.mime_type, outcome.extension) == ("k", mime.lower(), extension)
    assert (outcome.finish_reason, outcome.error) == ("STOP", None)


@pytest.mark.parametrize(
    ("data", "mime", "expected_mime", "extension"),
    [
        (PNG, None, "image/png", "png"),
        (JPEG, "application/octet-stream", "image/jpeg", "jpg"),
        (b"not an image", None, None, "bin"),
    ],
    ids=["png-no-mime", "jpeg-generic-mime", "unknown"],
)
def test_missing_or_generic_mime_is_sniffed(
    data: bytes, mime: str | None, expected_mime: str | None, extension: str
) -> None:
    """Without an image/* type the magic bytes decide; an unknown payload is kept as .bin."""
    outcome = parse_result_line(line("k", response=response([image_part(data, mime)])))
    assert outcome.succeeded
    assert (outcome.mime_type, outcome.extension, outcome.data) == (expected_mime, extension, data)


def test_last_non_thought_image_wins_and_text_is_joined() -> None:
    """Thought drafts are skipped, the last final image is kept, and non-thought text parts are joined."""
    parts = [
        {"text": "thinking about it", "thought": True},
        image_part(DRAFT, thought=True),
        {"text": "Here it is."},
        image_part(JPEG, "image/jpeg"),
        image_part(PNG, thoughtSignature="c2ln"),
        image_part(DRAFT, thought=True),
        {"text": "Enjoy."},
    ]
    outcome = parse_result_line(line("k", response=response(parts)))
    assert outcome.succeeded
    assert (outcome.data, outcome.mime_type) == (PNG, "image/png")
    assert outcome.text == "Here it is.\nEnjoy."


@pytest.mark.parametrize(
    "encode",
    [
        lambda d: base64.urlsafe_b64encode(d).decode(),
        lambda d: base64.urlsafe_b64encode(d).decode().rstrip("="),
        lambda d: base64.encodebytes(d).decode(),
        lambda d: base64.b64encode(d).decode().rstrip("="),
    ],
    ids=["url-safe", "url-safe-unpadded", "wrapped-lines", "unpadded"],
)
def test_other_base64_spellings_decode(encode: Any) -> None:
    """URL-safe, unpadded and line-wrapped base64 decode to the same bytes."""
    data = b"\xfb\xff\xbf" * 100 + PNG  # bytes whose base64 uses '+' and '/' (or '-' and '_')
    item = {"response": response([{"inlineData": {"mimeType": "image/png", "data": encode(data)}}])}
    outcome = parse_result_line(line("k", **item))
    assert outcome.data == data


def test_snake_case_and_decoded_bytes_from_an_sdk_dump() -> None:
    """inline_data / mime_type / usage_metadata spellings and already-decoded bytes are accepted."""
    item = {
        "response": {
            "candidates": [
                {
                    "content": {"parts": [{"inline_data": {"mime_type": "image/png", "data": PNG}}]},
                    "finish_reason": "STOP",
                }
            ],
            "usage_metadata": {
                "prompt_token_count": 10,
                "candidates_token_count": 1120,
                "candidates_tokens_details": [{"modality": "IMAGE", "token_count": 1120}],
            },
        }
    }
    outcome = outcome_from_item(item, "inline-1")
    assert outcome.succeeded
    assert (outcome.key, outcome.data, outcome.finish_reason) == ("inline-1", PNG, "STOP")
    assert outcome.usage == Usage(prompt_tokens=10, output_tokens=1120, image_tokens=1120)


FAILURES = [
    ("image-safety", response([], "IMAGE_SAFETY"), "safety", "IMAGE_SAFETY"),
    ("prohibited", response([{"text": "I can't"}], "PROHIBITED_CONTENT"), "safety", "PROHIBITED_CONTENT"),
    ("image-prohibited", response([], "IMAGE_PROHIBITED_CONTENT"), "safety", "IMAGE_PROHIBITED_CONTENT"),
    ("recitation", response([], "IMAGE_RECITATION"), "safety", "IMAGE_RECITATION"),
    ("blocklist", response([], "BLOCKLIST"), "safety", "BLOCKLIST"),
    ("spii", response([], "SPII"), "safety", "SPII"),
    ("no-image-reason", response([], "NO_IMAGE"), "no_image", "NO_IMAGE"),
    ("stop-text-only", response([{"text": "A cat."}], "STOP"), "no_image", "STOP"),
    ("only-drafts", response([image_part(DRAFT, thought=True)], "STOP"), "no_image", "STOP"),
    ("no-candidates", {"candidates": []}, "no_image", None),
    (
        "prompt-block",
        {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}},
        "blocked",
        "PROHIBITED_CONTENT",
    ),
    ("prompt-block-other", {"promptFeedback": {"blockReason": "OTHER"}}, "blocked", "OTHER"),
]


@pytest.mark.parametrize(
    ("payload", "code", "finish_reason"),
    [case[1:] for case in FAILURES],
    ids=[case[0] for case in FAILURES],
)
def test_responses_without_an_image_are_final_failures(
    payload: dict[str, Any], code: str, finish_reason: str | None
) -> None:
    """Safety refusals, prompt blocks and image-less responses fail, are not retried, and keep their reason."""
    outcome = parse_result_line(line("k", response=payload))
    assert not outcome.succeeded
    assert outcome.data is None
    assert outcome.error is not None
    assert (outcome.error.code, outcome.error.retryable) == (code, False)
    assert outcome.finish_reason == finish_reason
    if finish_reason:
        assert finish_reason in outcome.error.message


def test_text_of_a_failed_response_is_kept() -> None:
    """The model's text explains an image-less answer, so it is kept on the outcome."""
    outcome = parse_result_line(line("k", response=response([{"text": "A cat."}])))
    assert outcome.text == "A cat."


ERRORS = [
    ("internal", {"code": 13, "message": "Internal error"}, True, "rpc code 13 (INTERNAL)"),
    ("unavailable", {"code": 14, "message": "try later"}, True, "rpc code 14 (UNAVAILABLE)"),
    ("exhausted", {"code": 8, "message": "quota"}, True, "rpc code 8 (RESOURCE_EXHAUSTED)"),
    ("deadline", {"code": 4, "message": "slow"}, True, "rpc code 4"),
    ("aborted", {"code": 10}, True, "rpc code 10 (ABORTED)"),
    ("invalid", {"code": 3, "message": "bad request"}, False, "rpc code 3 (INVALID_ARGUMENT)"),
    ("permission", {"code": 7, "message": "no"}, False, "rpc code 7"),
    ("http-with-status", {"code": 429, "status": "RESOURCE_EXHAUSTED"}, True, "rpc code 8"),
    ("http-503", {"code": 503, "message": "down"}, True, "HTTP status 503"),
    ("http-400", {"code": 400, "message": "bad"}, False, "HTTP status 400"),
    ("name-only", {"code": "UNAVAILABLE"}, True, "rpc code 14"),
    ("string-number", {"code": "13"}, True, "rpc code 13"),
    ("no-code", {"message": "???"}, False, "without a code"),
]


@pytest.mark.parametrize(
    ("status", "retryable", "label"), [case[1:] for case in ERRORS], ids=[case[0] for case in ERRORS]
)
def test_error_lines_are_api_errors(status: dict[str, Any], retryable: bool, label: str) -> None:
    """An error line is api_error, retryable only for transient codes, with the code in the message."""
    outcome = parse_result_line(line("k", error={**status, "details": [{"@type": "x"}]}))
    assert not outcome.succeeded
    assert outcome.error is not None
    assert (outcome.error.code, outcome.error.retryable) == ("api_error", retryable)
    assert label in outcome.error.message
    if "message" in status:
        assert status["message"] in outcome.error.message


def test_retryable_rpc_codes_are_the_transient_ones() -> None:
    """DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, INTERNAL and UNAVAILABLE, nothing else."""
    assert frozenset({4, 8, 10, 13, 14}) == RETRYABLE_RPC_CODES


def test_long_error_messages_are_cut() -> None:
    """An error message is bounded, so a huge status cannot bloat the manifest."""
    outcome = parse_result_line(line("k", error={"code": 3, "message": "m" * 10_000}))
    assert outcome.error is not None
    assert len(outcome.error.message) < 600


def test_usage_extraction() -> None:
    """prompt_tokens, output = candidates + thoughts, image = IMAGE details; int64 strings accepted."""
    usage = {
        "promptTokenCount": 12,
        "candidatesTokenCount": "1130",
        "thoughtsTokenCount": 300,
        "totalTokenCount": 1442,
        "candidatesTokensDetails": [
            {"modality": "TEXT", "tokenCount": 10},
            {"modality": "IMAGE", "tokenCount": 1120},
        ],
    }
    outcome = parse_result_line(line("k", response=response([image_part(PNG)], usageMetadata=usage)))
    assert outcome.usage == Usage(prompt_tokens=12, output_tokens=1430, image_tokens=1120)
    assert outcome.usage.to_json() == {"prompt_tokens": 12, "output_tokens": 1430, "image_tokens": 1120}


def test_usage_is_kept_on_failures_and_none_when_absent() -> None:
    """A refusal still reports what it billed; a response without usageMetadata has usage None."""
    refused = parse_result_line(
        line("k", response=response([], "IMAGE_SAFETY", usageMetadata={"promptTokenCount": 5}))
    )
    assert refused.usage == Usage(prompt_tokens=5, output_tokens=0, image_tokens=0)
    assert parse_result_line(line("k", response=response([image_part(PNG)]))).usage is None


def test_bad_base64_is_a_failed_outcome_not_a_crash() -> None:
    """A corrupt image payload fails that line (bad_image_data) and harvest goes on."""
    item = {"response": response([{"inlineData": {"mimeType": "image/png", "data": "@@not base64@@"}}])}
    outcome = parse_result_line(line("k", **item))
    assert not outcome.succeeded
    assert outcome.error is not None
    assert outcome.error.code == "bad_image_data"


def test_key_may_be_absent() -> None:
    """A result line without a key parses with key None (the caller decides what to do with it)."""
    assert parse_result_line(line(None, response=response([image_part(PNG)]))).key is None


@pytest.mark.parametrize(
    "raw",
    [
        b"[1, 2]",
        b"{not json",
        b'{"key": "k"}',
        b'{"key": "k", "response": "text"}',
        b'{"key": 5, "response": {}}',
    ],
    ids=["array", "bad-json", "neither", "response-not-object", "key-not-string"],
)
def test_unusable_result_lines_raise(raw: bytes) -> None:
    """A line that is not a result object raises ResultLineError (a PermanentError)."""
    with pytest.raises(ResultLineError):
        parse_result_line(raw)


BIG = PNG + bytes(range(256)) * (LIFT_MIN_BYTES // 256)  # its base64 is past the lifting threshold


def test_long_payloads_are_decoded_from_the_line_without_a_copy_in_the_json() -> None:
    """Image payloads past the threshold are lifted out before parsing (the JSON the parser sees is small)
    and decode exactly; the last non-thought image still wins, pretty-printed JSON included."""
    parts = [image_part(BIG[::-1], thought=True), {"text": "Here."}, image_part(BIG)]
    for raw in (
        line("k", response=response(parts)),
        orjson.dumps({"key": "k", "response": response(parts)}, option=orjson.OPT_INDENT_2),
    ):
        shortened, lifted = lift_payloads(raw)
        assert len(lifted) == 2 and len(shortened) < 1024
        outcome = parse_result_line(raw)
        assert (outcome.data, outcome.text, outcome.mime_type) == (BIG, "Here.", "image/png")


def test_data_that_is_not_an_image_payload_stays_in_the_line() -> None:
    """A "data" inside a text, as a value, with escapes, or a line already holding the placeholder text:
    nothing is lifted there, and the line parses as it always did."""
    payload = b64(BIG)
    text = '{"data": "' + payload + '"}'
    escaped = orjson.dumps({"key": "k", "response": response([image_part(BIG)])}).replace(b"/", b"\\/")
    lines = [
        line("k", response=response([{"text": text}, image_part(PNG)])),
        line("k", response=response([{"text": "data"}, {"text": payload}, image_part(PNG)])),
        escaped,
        line("k", response=response([{"text": "promptdrop:lifted:0"}, image_part(BIG)])),
    ]
    for raw in lines:
        assert lift_payloads(raw) == (raw, {})
        assert parse_result_line(raw).succeeded
    assert parse_result_line(lines[0]).text == text
    assert parse_result_line(escaped).data == BIG
    assert parse_result_line(lines[3]).data == BIG
