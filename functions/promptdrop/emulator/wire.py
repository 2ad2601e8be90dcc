"""Pure helpers for the emulator's wire format: key spelling, base64, timestamps, status codes, paging.

Nothing here does I/O, so each rule is tested table-driven (``tests/unit/test_emulator_wire.py``).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Final, TypeVar

from promptdrop.request_schema import UnknownField
from promptdrop.rpc import HTTP_STATUS_NAMES

T = TypeVar("T")

# Maps whose keys belong to the caller (request metadata, labels): their keys are never respelled.
OPAQUE_MAPS: Final = frozenset({"metadata", "labels"})

_SNAKE_PART = re.compile(r"_([a-z0-9])")


class ApiError(Exception):
    """An error the emulator answers with: HTTP status plus a Google-shaped body."""

    def __init__(
        self,
        http_status: int,
        message: str,
        status: str | None = None,
        details: list[dict[str, object]] | None = None,
    ) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.message = message
        self.status = status or HTTP_STATUS_NAMES.get(http_status, "UNKNOWN")
        self.details = details

    def body(self) -> dict[str, object]:
        error: dict[str, object] = {"code": self.http_status, "message": self.message, "status": self.status}
        if self.details:
            error["details"] = self.details
        return {"error": error}


BAD_REQUEST_TYPE: Final = "type.googleapis.com/google.rpc.BadRequest"
RETRY_INFO_TYPE: Final = "type.googleapis.com/google.rpc.RetryInfo"
RATE_LIMITS_URL: Final = "https://ai.google.dev/gemini-api/docs/rate-limits"


def unknown_fields_error(unknown: Sequence[UnknownField], prefix: str = "") -> ApiError:
    """The API's 400 for fields its proto JSON parser does not know (``prefix``: the path of the request).

    One sentence per field joined by newlines, and one ``google.rpc.BadRequest`` field violation each,
    as the API answers (googleapis/python-genai#1451).
    """
    located = [
        UnknownField(field.name, ".".join(part for part in (prefix, field.path) if part)) for field in unknown
    ]
    violations: list[object] = [field.field_violation() for field in located]
    return ApiError(
        400,
        "\n".join(field.api_message() for field in located),
        "INVALID_ARGUMENT",
        [{"@type": BAD_REQUEST_TYPE, "fieldViolations": violations}],
    )


def spend_limit_error(retry_seconds: float) -> ApiError:
    """The API's 429 for a spend-based rate limit: RESOURCE_EXHAUSTED with a ``google.rpc.RetryInfo``
    (``retryDelay`` a Duration in JSON, "2s"), none when ``retry_seconds`` is 0."""
    details: list[dict[str, object]] = [
        {"@type": "type.googleapis.com/google.rpc.Help", "links": [{"url": RATE_LIMITS_URL}]}
    ]
    if retry_seconds:
        details.append({"@type": RETRY_INFO_TYPE, "retryDelay": f"{retry_seconds:g}s"})
    return ApiError(
        429,
        "You exceeded your current quota (spend-based rate limit per 10 minutes); please retry later. "
        f"For more information on this error, head to: {RATE_LIMITS_URL}.",
        "RESOURCE_EXHAUSTED",
        details,
    )


def camel_case(name: str) -> str:
    """``display_name`` -> ``displayName``; camelCase and ``@type`` pass through unchanged."""
    return _SNAKE_PART.sub(lambda match: match.group(1).upper(), name)


def camel_keys(value: object) -> object:
    """Respell every dict key in camelCase, recursively, except inside caller-owned maps.

    When both spellings of one key are present the camelCase one wins, whatever the order.
    """
    if isinstance(value, list):
        return [camel_keys(item) for item in value]
    if not isinstance(value, dict):
        return value
    result: dict[str, object] = {}
    for key, item in value.items():
        name = camel_case(str(key))
        if name in result and key != name:
            continue
        result[name] = item if name in OPAQUE_MAPS else camel_keys(item)
    return result


def decode_base64(text: str) -> bytes:
    """Decode standard or URL-safe base64, padded or not; raise ValueError if it is neither."""
    compact = "".join(text.split()).translate(str.maketrans("-_", "+/"))
    compact += "=" * (-len(compact) % 4)
    try:
        return base64.b64decode(compact, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"invalid base64: {exc}") from exc


def encode_base64(data: bytes) -> str:
    """Standard base64, as the API emits."""
    return base64.b64encode(data).decode("ascii")


def rfc3339(timestamp: float) -> str:
    """RFC 3339 UTC with microseconds and a ``Z``, as the API's timestamps read."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def int64(value: int) -> str:
    """int64 fields travel as JSON strings."""
    return str(value)


def page_size(raw: str | None, *, default: int, maximum: int) -> int:
    """The ``pageSize`` query value: default when absent or 0, capped at ``maximum``."""
    if raw is None or raw == "":
        return default
    try:
        size = int(raw)
    except ValueError as exc:
        raise ApiError(400, f"pageSize must be an integer, got {raw!r}") from exc
    if size < 0:
        raise ApiError(400, "pageSize must not be negative")
    return min(size or default, maximum)


def paginate(
    items: Sequence[T], sort_key: Callable[[T], str], size: int, token: str | None
) -> tuple[list[T], str | None]:
    """One page of ``items`` (already sorted by ``sort_key`` descending) after ``token``.

    The token is the sort key of the last item of the previous page, so items created or deleted
    between two calls neither repeat nor shift the pages.
    """
    start = 0
    if token:
        try:
            after = base64.b64decode(token.encode("ascii"), altchars=b"-_", validate=True).decode("utf-8")
        except (binascii.Error, UnicodeError, ValueError) as exc:
            raise ApiError(400, "pageToken is not valid") from exc
        if not after:
            raise ApiError(400, "pageToken is not valid")
        start = next((i for i, item in enumerate(items) if sort_key(item) < after), len(items))
    page = list(items[start : start + size])
    if start + size >= len(items) or not page:
        return page, None
    return page, base64.urlsafe_b64encode(sort_key(page[-1]).encode("utf-8")).decode("ascii")
