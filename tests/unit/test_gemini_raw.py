"""The Gemini adapter's pure parts: raw Operation JSON -> BatchInfo, and SDK errors -> our typed errors."""

from __future__ import annotations

import json
from typing import Any

import httpx2
import pydantic
import pytest
from google.genai import errors as genai_errors

from promptdrop.adapters.gemini import (
    BackendNotFoundError,
    GeminiBackend,
    batch_info_from_operation,
    translate_error,
)
from promptdrop.errors import (
    AmbiguousCreateError,
    BackendError,
    BackendPermanentError,
    BackendTransientError,
    ConfigurationError,
    NotFoundError,
    QuotaExceededError,
)
from promptdrop.ports import BatchInfo
from promptdrop.settings import Settings
from promptdrop.states import JobState

API_KEY = "AIzaSy-unit-test-secret-0123456789"

IMAGE_RESPONSE = {
    "candidates": [
        {
            "content": {
                "role": "model",
                "parts": [{"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}],
            },
            "finishReason": "STOP",
        }
    ],
    "usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": 1120},
}
# A real google.rpc.Status: object details, which the SDK's JobError (details: list[str]) cannot parse.
STATUS_WITH_OBJECT_DETAILS = {
    "code": 13,
    "message": "internal error",
    "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "BACKEND"}],
}

OPERATION_CASES: list[tuple[str, dict[str, Any], BatchInfo]] = [
    (
        "pending right after create",
        {
            "name": "batches/abc",
            "metadata": {
                "@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch",
                "name": "batches/abc",
                "model": "models/gemini-3-pro-image",
                "displayName": "run-1-c0-a1",
                "inputConfig": {"fileName": "files/in1"},
                "batchStats": {"requestCount": "5", "pendingRequestCount": "5"},
                "state": "BATCH_STATE_PENDING",
            },
        },
        BatchInfo(
            name="batches/abc",
            display_name="run-1-c0-a1",
            state=JobState.JOB_STATE_PENDING,
            model="models/gemini-3-pro-image",
            stats={"requestCount": 5, "pendingRequestCount": 5},
        ),
    ),
    (
        "succeeded with a responses file",
        {
            "name": "batches/abc",
            "metadata": {
                "displayName": "run-1-c0-a1",
                "state": "BATCH_STATE_SUCCEEDED",
                "output": {"responsesFile": "files/batch-abc"},
                "batchStats": {"requestCount": "9", "successfulRequestCount": "8", "failedRequestCount": "1"},
            },
            "done": True,
            "response": {"responsesFile": "files/batch-abc"},
        },
        BatchInfo(
            name="batches/abc",
            display_name="run-1-c0-a1",
            state=JobState.JOB_STATE_SUCCEEDED,
            results_file="files/batch-abc",
            stats={"requestCount": 9, "successfulRequestCount": 8, "failedRequestCount": 1},
        ),
    ),
    (
        "inline responses kept as wire dicts, object error details included",
        {
            "name": "batches/inl",
            "metadata": {
                "state": "BATCH_STATE_SUCCEEDED",
                "output": {
                    "inlinedResponses": {
                        "inlinedResponses": [
                            {"response": IMAGE_RESPONSE, "metadata": {"key": "a"}},
                            {"error": STATUS_WITH_OBJECT_DETAILS, "metadata": {"key": "b"}},
                        ]
                    }
                },
            },
        },
        BatchInfo(
            name="batches/inl",
            display_name=None,
            state=JobState.JOB_STATE_SUCCEEDED,
            inlined_responses=[
                {"response": IMAGE_RESPONSE, "metadata": {"key": "a"}},
                {"error": STATUS_WITH_OBJECT_DETAILS, "metadata": {"key": "b"}},
            ],
        ),
    ),
    (
        "output only under the top-level response",
        {
            "name": "batches/r",
            "metadata": {"state": "BATCH_STATE_SUCCEEDED"},
            "done": True,
            "response": {"inlinedResponses": {"inlinedResponses": [{"response": IMAGE_RESPONSE}]}},
        },
        BatchInfo(
            name="batches/r",
            display_name=None,
            state=JobState.JOB_STATE_SUCCEEDED,
            inlined_responses=[{"response": IMAGE_RESPONSE}],
        ),
    ),
    (
        "failed job: the Operation error the SDK drops",
        {
            "name": "batches/f",
            "metadata": {"state": "BATCH_STATE_FAILED", "batchStats": {"requestCount": "2"}},
            "done": True,
            "error": {"code": 3, "message": "Invalid JSONL in input file", "details": []},
        },
        BatchInfo(
            name="batches/f",
            display_name=None,
            state=JobState.JOB_STATE_FAILED,
            stats={"requestCount": 2},
            error="Invalid JSONL in input file",
        ),
    ),
    (
        "error with a code and no message",
        {"name": "batches/f", "metadata": {"state": "BATCH_STATE_FAILED"}, "error": {"code": 13}},
        BatchInfo(
            name="batches/f", display_name=None, state=JobState.JOB_STATE_FAILED, error="error code 13"
        ),
    ),
    (
        "expired: terminal, no output",
        {"name": "batches/x", "metadata": {"state": "BATCH_STATE_EXPIRED"}, "done": True},
        BatchInfo(name="batches/x", display_name=None, state=JobState.JOB_STATE_EXPIRED),
    ),
    (
        "state already in SDK spelling",
        {"name": "batches/s", "metadata": {"state": "JOB_STATE_RUNNING"}},
        BatchInfo(name="batches/s", display_name=None, state=JobState.JOB_STATE_RUNNING),
    ),
    (
        "no metadata at all",
        {"name": "batches/empty"},
        BatchInfo(name="batches/empty", display_name=None, state=JobState.JOB_STATE_UNSPECIFIED),
    ),
    (
        "name only inside metadata, unknown state, non-numeric stat ignored",
        {
            "metadata": {
                "name": "batches/m",
                "state": "BATCH_STATE_HIBERNATING",
                "batchStats": {"requestCount": "n/a"},
            }
        },
        BatchInfo(name="batches/m", display_name=None, state=JobState.JOB_STATE_UNSPECIFIED),
    ),
]


@pytest.mark.parametrize(
    ("raw", "expected"), [c[1:] for c in OPERATION_CASES], ids=[c[0] for c in OPERATION_CASES]
)
def test_batch_info_from_operation(raw: dict[str, Any], expected: BatchInfo) -> None:
    """Every field of BatchInfo comes from the wire JSON, including what the SDK drops."""
    assert batch_info_from_operation(raw) == expected


def test_terminal_states_from_the_wire_are_done() -> None:
    """SUCCEEDED, FAILED, CANCELLED and EXPIRED on the wire all end polling; PENDING and RUNNING do not."""
    done = {
        state: batch_info_from_operation({"name": "batches/a", "metadata": {"state": state}}).done
        for state in (
            "BATCH_STATE_PENDING",
            "BATCH_STATE_RUNNING",
            "BATCH_STATE_SUCCEEDED",
            "BATCH_STATE_FAILED",
            "BATCH_STATE_CANCELLED",
            "BATCH_STATE_EXPIRED",
        )
    }
    assert done == {
        "BATCH_STATE_PENDING": False,
        "BATCH_STATE_RUNNING": False,
        "BATCH_STATE_SUCCEEDED": True,
        "BATCH_STATE_FAILED": True,
        "BATCH_STATE_CANCELLED": True,
        "BATCH_STATE_EXPIRED": True,
    }


def _api_error(code: int, status: str, message: str = "server says no") -> genai_errors.APIError:
    body = {"error": {"code": code, "message": message, "status": status}}
    if 400 <= code < 500:
        return genai_errors.ClientError(code, body)
    if code >= 500:
        return genai_errors.ServerError(code, body)
    return genai_errors.APIError(code, body)


def _validation_error() -> pydantic.ValidationError:
    try:
        pydantic.TypeAdapter(int).validate_python("not a number")
    except pydantic.ValidationError as exc:
        return exc
    raise AssertionError("unreachable")


READ_TIMEOUT = httpx2.ReadTimeout("timed out")
CONNECT_ERROR = httpx2.ConnectError("[Errno 111] Connection refused")

TRANSLATION_CASES: list[tuple[str, Exception, bool, type[BackendError]]] = [
    ("400 on get", _api_error(400, "INVALID_ARGUMENT"), False, BackendPermanentError),
    ("401 on get", _api_error(401, "UNAUTHENTICATED"), False, BackendPermanentError),
    ("403 on get", _api_error(403, "PERMISSION_DENIED"), False, BackendPermanentError),
    ("404 on get", _api_error(404, "NOT_FOUND"), False, BackendNotFoundError),
    ("408 on get", _api_error(408, "DEADLINE_EXCEEDED"), False, BackendTransientError),
    ("429 on get", _api_error(429, "RESOURCE_EXHAUSTED"), False, QuotaExceededError),
    ("500 on get", _api_error(500, "INTERNAL"), False, BackendTransientError),
    ("503 on get", _api_error(503, "UNAVAILABLE"), False, BackendTransientError),
    ("read timeout on get", READ_TIMEOUT, False, BackendTransientError),
    ("connection refused on get", CONNECT_ERROR, False, BackendTransientError),
    ("unparseable body on get", genai_errors.UnknownApiResponseError("bad"), False, BackendTransientError),
    ("400 on create: refused, no job", _api_error(400, "INVALID_ARGUMENT"), True, BackendPermanentError),
    ("404 on create: unknown model", _api_error(404, "NOT_FOUND"), True, BackendNotFoundError),
    ("429 on create: refused, no job", _api_error(429, "RESOURCE_EXHAUSTED"), True, QuotaExceededError),
    ("408 on create: may exist", _api_error(408, "DEADLINE_EXCEEDED"), True, AmbiguousCreateError),
    ("500 on create: may exist", _api_error(500, "INTERNAL"), True, AmbiguousCreateError),
    ("504 on create: may exist", _api_error(504, "DEADLINE_EXCEEDED"), True, AmbiguousCreateError),
    ("non-200 success on create: may exist", _api_error(201, "CREATED"), True, AmbiguousCreateError),
    ("read timeout on create: may exist", READ_TIMEOUT, True, AmbiguousCreateError),
    ("connection error on create: may exist", CONNECT_ERROR, True, AmbiguousCreateError),
    ("unreadable 200 on create: may exist", _validation_error(), True, AmbiguousCreateError),
    (
        "non-JSON 200 on create: may exist",
        json.JSONDecodeError("Expecting value", "<html>", 0),
        True,
        AmbiguousCreateError,
    ),
    (
        "non-JSON 200 on list",
        json.JSONDecodeError("Expecting value", "<html>", 0),
        False,
        BackendTransientError,
    ),
]


@pytest.mark.parametrize(
    ("exc", "creating", "expected"),
    [c[1:] for c in TRANSLATION_CASES],
    ids=[c[0] for c in TRANSLATION_CASES],
)
def test_translate_error_classifies(exc: Exception, creating: bool, expected: type[BackendError]) -> None:
    """Each SDK failure maps to exactly the expected typed error (no broader, no narrower)."""
    error = translate_error(exc, "call", creating=creating)
    assert type(error) is expected


def test_429_on_create_is_not_ambiguous() -> None:
    """A rate-limited create was refused: retry later, no lookup by display name needed."""
    error = translate_error(_api_error(429, "RESOURCE_EXHAUSTED"), "create", creating=True)
    assert not isinstance(error, AmbiguousCreateError)
    assert isinstance(error, BackendTransientError)


def test_not_found_is_both_backend_and_not_found_error() -> None:
    """A 404 can be caught as our generic NotFoundError as well as a permanent backend error."""
    error = translate_error(_api_error(404, "NOT_FOUND"), "get batches/x")
    assert isinstance(error, BackendPermanentError)
    with pytest.raises(NotFoundError):
        raise error


def test_message_names_action_status_and_server_message() -> None:
    """The message is ours: the action, the HTTP status code and status, and the server's own message."""
    error = translate_error(_api_error(503, "UNAVAILABLE", "try again later"), "get batches/x")
    assert str(error) == "get batches/x failed: HTTP 503 UNAVAILABLE: try again later"


def test_long_server_messages_are_cut() -> None:
    """A huge server message does not flood logs and job records."""
    error = translate_error(_api_error(400, "INVALID_ARGUMENT", "x" * 10_000), "create")
    assert len(str(error)) < 700


@pytest.mark.parametrize(
    "exc",
    [
        genai_errors.ClientError(
            401,
            {
                "error": {
                    "code": 401,
                    "message": f"API key not valid: {API_KEY}",
                    "status": "UNAUTHENTICATED",
                    "details": [{"@type": "ErrorInfo", "metadata": {"key": API_KEY}}],
                }
            },
        ),
        genai_errors.ClientError(403, {"error": {"code": 403, "message": "denied", "details": [API_KEY]}}),
        httpx2.ConnectError(f"cannot reach https://gateway/?key={API_KEY}"),
    ],
    ids=["401 echoing the key", "403 with the key in details", "transport error naming the key"],
)
def test_api_key_never_in_message(exc: Exception) -> None:
    """Even when the server or the transport echoes the key, our error message does not contain it."""
    assert API_KEY in str(exc)  # the SDK's own text does carry it
    error = translate_error(exc, "get batches/x", secret=API_KEY)
    assert API_KEY not in str(error)
    assert API_KEY not in repr(error)


def test_backend_refuses_an_empty_key() -> None:
    """Without a key the Gemini API cannot work: a configuration error, not an SDK ValueError."""
    with pytest.raises(ConfigurationError):
        GeminiBackend("")


def test_from_settings_needs_a_key() -> None:
    """Settings without GEMINI_API_KEY cannot build the Gemini backend."""
    settings = Settings.from_env({}, backend="gemini")
    with pytest.raises(ConfigurationError):
        GeminiBackend.from_settings(settings)


def test_invalid_batch_name_is_refused_before_any_request() -> None:
    """A name that is not batches/ID is a permanent error (nothing is sent: the base URL is unroutable)."""
    backend = GeminiBackend(API_KEY, base_url="http://127.0.0.1:9", retry_attempts=1)
    try:
        for name in ("abc", "batches/", "batches/a/b", "files/abc", "batches/a?x=1"):
            with pytest.raises(BackendPermanentError, match="not a batch job name"):
                backend.get_batch(name)
    finally:
        backend.close()
