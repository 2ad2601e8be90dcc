"""A request's fingerprint: what the pay-once cache knows a paid image by (pure).

Two lines that would send the API the same request on the same model get the same fingerprint, however
they were written: the request is taken after parsing (defaults resolved, native snake_case renamed, the
key left out) and serialised canonically (sorted keys, no whitespace); reference images count by their
content (a SHA-256 of the bytes and the MIME type), never by their path, so a renamed image still matches
and an image changed in place does not. What does not change the image (the key, the batch priority,
``fresh``) is not part of it; a ``seed`` is part of the request, so a new seed is a new fingerprint.

Who makes the image is part of it too (``maker_identity``): the bundled emulator's placeholders are never
served to a run on the real API or on another endpoint, nor the reverse. The identity names the backend
kind and endpoint, never a key: the same request on the same endpoint is the same image whichever key or
project paid for it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

# Bumped when the canonical form changes, so old entries stop matching instead of matching wrongly.
# 2: the maker (backend and endpoint) joined the form; entries of version 1 may hold emulator placeholders.
FINGERPRINT_VERSION = 2

GEMINI_API = "gemini-api"
EMULATOR = "emulator"
VERTEX = "vertex"
_GEMINI_API_HOST = "generativelanguage.googleapis.com"
_DEFAULT_PORTS = {"https": 443, "http": 80}


def maker_identity(backend: str, base_url: str | None) -> str:
    """Who makes a line's image, as the cache tells images apart: ``"emulator"`` for any promptdrop
    emulator (placeholders, whatever port it listens on), ``"gemini-api"`` for Google's endpoint, else
    ``"gemini@<scheme://host[:port]/path>"`` for a gateway; ``"vertex"`` (or ``"vertex@<url>"``) on Vertex AI. Credentials, query and fragment of the URL are
    left out (a key may hide there); host and scheme are lowercased, a default port and trailing '/' dropped.
    """
    if backend == EMULATOR:
        return EMULATOR
    if backend == VERTEX:
        # Vertex AI's images are kept apart from the Gemini API's, and any other Vertex endpoint (the
        # bundled emulator in tests) from Google's: a placeholder is never served to a real run.
        return VERTEX if not base_url else f"{VERTEX}@{_endpoint(base_url)}"
    if not base_url:
        return GEMINI_API
    endpoint = _endpoint(base_url)
    return GEMINI_API if endpoint == f"https://{_GEMINI_API_HOST}" else f"gemini@{endpoint}"


def _endpoint(base_url: str) -> str:
    """``scheme://host[:port]/path`` of a URL, without credentials, query or fragment, normalised."""
    parts = urlsplit(base_url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError:  # not a number: keep the endpoint apart from every other
        port = None
    path = parts.path.rstrip("/")
    where = host if port is None or port == _DEFAULT_PORTS.get(scheme) else f"{host}:{port}"
    return f"{scheme}://{where}{path}"


@dataclass(frozen=True, slots=True)
class ImageDigest:
    """A reference image by content: the SHA-256 of its bytes (hex) and its MIME type."""

    sha256: str
    mime_type: str


def canonical_request(
    model: str, request: Mapping[str, Any], images: Sequence[ImageDigest] = (), *, maker: str
) -> bytes:
    """The bytes the fingerprint hashes: maker, model, request and reference images, canonically serialised."""
    return orjson.dumps(
        {
            "v": FINGERPRINT_VERSION,
            "maker": maker,
            "model": model.removeprefix("models/"),
            "request": request,
            # In order: the images are appended to the first content's parts in this order.
            "images": [{"sha256": image.sha256, "mime_type": image.mime_type} for image in images],
        },
        option=orjson.OPT_SORT_KEYS,
    )


def request_fingerprint(
    model: str, request: Mapping[str, Any], images: Sequence[ImageDigest] = (), *, maker: str
) -> str:
    """SHA-256 (hex) of the canonical form of ``request`` on ``model`` (the model actually used), made by
    ``maker`` (``maker_identity``)."""
    return hashlib.sha256(canonical_request(model, request, images, maker=maker)).hexdigest()
