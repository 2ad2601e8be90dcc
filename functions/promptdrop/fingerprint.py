"""A request's fingerprint: what the pay-once cache knows a paid image by (pure).

Two lines that would send the API the same request on the same model get the same fingerprint, however
they were written: the request is taken after parsing (defaults resolved, native snake_case renamed, the
key left out) and serialised canonically (sorted keys, no whitespace); reference images count by their
content (a SHA-256 of the bytes and the MIME type), never by their path, so a renamed image still matches
and an image changed in place does not. What does not change the image (the key, the batch priority,
``fresh``) is not part of it; a ``seed`` is part of the request, so a new seed is a new fingerprint.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

# Bumped when the canonical form changes, so old entries stop matching instead of matching wrongly.
FINGERPRINT_VERSION = 1


@dataclass(frozen=True, slots=True)
class ImageDigest:
    """A reference image by content: the SHA-256 of its bytes (hex) and its MIME type."""

    sha256: str
    mime_type: str


def canonical_request(model: str, request: Mapping[str, Any], images: Sequence[ImageDigest] = ()) -> bytes:
    """The bytes the fingerprint hashes: model, request and reference images, canonically serialised."""
    return orjson.dumps(
        {
            "v": FINGERPRINT_VERSION,
            "model": model.removeprefix("models/"),
            "request": request,
            # In order: the images are appended to the first content's parts in this order.
            "images": [{"sha256": image.sha256, "mime_type": image.mime_type} for image in images],
        },
        option=orjson.OPT_SORT_KEYS,
    )


def request_fingerprint(model: str, request: Mapping[str, Any], images: Sequence[ImageDigest] = ()) -> str:
    """SHA-256 (hex) of the canonical form of ``request`` on ``model`` (the model actually used)."""
    return hashlib.sha256(canonical_request(model, request, images)).hexdigest()
