"""Names that come from outside (keys, object paths) and the names promptdrop makes (run ids).

A key becomes part of an object name, so anything that could escape the run's folder is refused, never
rewritten silently. The same rules guard reference-image paths and keys in a results file given to
``promptdrop extract``.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

from promptdrop.errors import UnsafeNameError

MAX_KEY_CHARS = 128
# A key's last segment becomes a file name with an extension and, while it is written, a temporary
# prefix and suffix: file systems take 255 bytes per name, so a segment gets at most 150 UTF-8 bytes.
MAX_SEGMENT_BYTES = 150
_SLUG_CHARS = re.compile(r"[^a-z0-9]+")


def check_key(key: str) -> str:
    """Return ``key`` if it is safe as a relative object name; raise UnsafeNameError saying why."""
    if not key:
        raise UnsafeNameError("key is empty")
    if len(key) > MAX_KEY_CHARS:
        raise UnsafeNameError(f"key is longer than {MAX_KEY_CHARS} characters")
    check_relative_path(key, what="key")
    if any(len(segment.encode()) > MAX_SEGMENT_BYTES for segment in key.split("/")):
        raise UnsafeNameError(
            f"a '/'-separated part of the key is longer than {MAX_SEGMENT_BYTES} bytes in UTF-8"
        )
    return key


def check_relative_path(path: str, *, what: str = "path") -> str:
    """Return ``path`` if it stays inside the folder it is joined to."""
    if not path:
        raise UnsafeNameError(f"{what} is empty")
    if path.startswith("/"):
        raise UnsafeNameError(f"{what} starts with '/'")
    if "\\" in path:
        raise UnsafeNameError(f"{what} contains a backslash")
    # Printable ASCII is the common case and cannot hold a control character: skip the per-character scan.
    if not (path.isascii() and path.isprintable()) and any(unicodedata.category(ch) == "Cc" for ch in path):
        raise UnsafeNameError(f"{what} contains a control character")
    for segment in path.split("/"):
        if segment in {"", ".", ".."}:
            raise UnsafeNameError(f"{what} has an empty, '.' or '..' segment")
    return path


def slug(text: str, *, limit: int = 40) -> str:
    """Lowercase ASCII letters, digits and single dashes; ``run`` if nothing is left."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    cleaned = _SLUG_CHARS.sub("-", ascii_text.lower()).strip("-")
    return cleaned[:limit].rstrip("-") or "run"


def claim_digest(claim_key: str) -> str:
    return hashlib.sha256(claim_key.encode()).hexdigest()


# Hex digits of the claim hash in a run id: short and readable first, longer only when that id is taken
# by another claim (two generations of one file name collide at ~1% over 10,000 uploads with 8).
RUN_ID_HASH_LENGTHS = (8, 16, 64)


def make_run_id(name: str, claim_key: str, hash_chars: int = RUN_ID_HASH_LENGTHS[0]) -> str:
    """``<slug of the file stem or message name, <= 40 chars>-<hex of sha256(claim key)>``."""
    return f"{slug(name)}-{claim_digest(claim_key)[:hash_chars]}"


def candidate_run_ids(name: str, claim_key: str) -> list[str]:
    """The ids a claim may take, in order: 8 hex digits of its hash, then 16, then the whole hash."""
    return [make_run_id(name, claim_key, length) for length in RUN_ID_HASH_LENGTHS]


def file_claim_key(bucket: str, name: str, generation: str) -> str:
    return f"file:{bucket}/{name}#{generation}"


def message_claim_key(topic_or_source: str, message_key: str) -> str:
    return f"message:{topic_or_source}/{message_key}"


# Vertex AI label values: at most 63 characters of lowercase letters, digits, '_' and '-'.
VERTEX_LABEL = "promptdrop-key"
_VERTEX_LABEL_VALUE = re.compile(r"[a-z0-9_-]{1,63}")


def vertex_label(key: str) -> str:
    """The label value that carries ``key`` through a Vertex AI batch job (which has no ``key`` field).

    A key that is a valid label value is carried as it is; any other is carried as ``h-`` and 40 hex digits
    of its SHA-256 (a valid key never starts with ``h-`` and is 42 characters of hex at once only by a
    collision the harvest would see as a repeated key). The harvest computes the same value for each key it
    sent, so no mapping file is kept.
    """
    if _VERTEX_LABEL_VALUE.fullmatch(key) and not key.startswith("h-"):
        return key
    return "h-" + hashlib.sha256(key.encode()).hexdigest()[:40]
