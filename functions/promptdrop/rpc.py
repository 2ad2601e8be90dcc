"""google.rpc status codes: the one table of names, HTTP statuses and which codes are worth retrying.

The harvest reads these codes in result lines; the emulator answers with them.
"""

from __future__ import annotations

from typing import Final

# google.rpc.Code -> (status name, HTTP status), as Google's JSON APIs map them.
RPC_CODES: Final[dict[int, tuple[str, int]]] = {
    1: ("CANCELLED", 499),
    2: ("UNKNOWN", 500),
    3: ("INVALID_ARGUMENT", 400),
    4: ("DEADLINE_EXCEEDED", 504),
    5: ("NOT_FOUND", 404),
    6: ("ALREADY_EXISTS", 409),
    7: ("PERMISSION_DENIED", 403),
    8: ("RESOURCE_EXHAUSTED", 429),
    9: ("FAILED_PRECONDITION", 400),
    10: ("ABORTED", 409),
    11: ("OUT_OF_RANGE", 400),
    12: ("UNIMPLEMENTED", 501),
    13: ("INTERNAL", 500),
    14: ("UNAVAILABLE", 503),
    15: ("DATA_LOSS", 500),
    16: ("UNAUTHENTICATED", 401),
}
RPC_NAMES: Final = {code: name for code, (name, _) in RPC_CODES.items()}
CODES_BY_NAME: Final = {name: code for code, name in RPC_NAMES.items()}

# Worth another attempt: DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, INTERNAL, UNAVAILABLE.
RETRYABLE_RPC_CODES: Final = frozenset(
    CODES_BY_NAME[name]
    for name in ("DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED", "INTERNAL", "UNAVAILABLE")
)
# The same failures when an error carries an HTTP status instead (inline errors may).
RETRYABLE_HTTP_CODES: Final = frozenset({408, 429, 500, 502, 503, 504})

# HTTP status -> the status name Google puts beside it in error bodies.
HTTP_STATUS_NAMES: Final[dict[int, str]] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def rpc_status(code: int) -> tuple[str, int]:
    """Status name and HTTP status of a google.rpc code (unknown codes read as ``UNKNOWN``/500)."""
    return RPC_CODES.get(code, ("UNKNOWN", 500))
