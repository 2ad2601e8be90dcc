"""Gemini's batch webhooks (pure): verify a Standard Webhooks delivery, parse its body into a typed event.

A delivery is three headers (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``: space-separated
``v1,<base64 HMAC-SHA256>`` over ``"{id}.{timestamp}.{body}"``) and a thin JSON body::

    {"type": "batch.succeeded", "version": "v1", "timestamp": "2026-...Z",
     "data": {"id": "batches/abc", "output_file_uri": "files/batch-abc"}}

The body is only a hint: the receiver reads the batch's truth with ``batches.get``. The ``standardwebhooks``
library checks the signature and the 5-minute timestamp window; this module turns its exceptions (and the
library's own crashes on malformed headers) into typed errors and never puts the secret in a message.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from promptdrop.errors import ConfigurationError, InputError

# The events promptdrop subscribes to: the SDK's WebhookSubscribedEvent values for batches, and the
# batch.cancelled the webhooks guide adds (2026-09-24; the API reference and SDK do not list it yet).
BATCH_EVENTS: Final = ("batch.succeeded", "batch.failed", "batch.expired", "batch.cancelled")
SECRET_PREFIX: Final = "whsec_"  # noqa: S105 - the prefix, not a secret


class SignatureError(InputError):
    """The delivery is unsigned, forged, malformed or outside the timestamp window: answer 401."""


class BodyError(InputError):
    """The body is too large or not a JSON object: answer 400."""


@dataclass(frozen=True, slots=True)
class BatchEvent:
    """A delivery that names a batch; ``type`` is only what the sender said happened."""

    delivery_id: str  # the webhook-id header: the same for every retry of one delivery
    type: str
    batch_name: str  # "batches/<id>"
    # batch.failed carries why (the guide's error_code / error_message); for the log only.
    error_code: str | None = None
    error_message: str | None = None


class Verifier:
    """Checks deliveries against one signing secret (a rotation sends one signature per secret)."""

    def __init__(self, secret: str) -> None:
        if not secret.startswith(SECRET_PREFIX):
            raise ConfigurationError("PROMPTDROP_WEBHOOK_SECRET must start with whsec_")
        try:
            self._webhook = Webhook(secret)
        except Exception:  # binascii.Error, EmptyWebhookSecretError; `from None`: never echo the secret
            raise ConfigurationError("PROMPTDROP_WEBHOOK_SECRET is not a whsec_ + base64 secret") from None

    def verify(self, body: bytes, headers: Mapping[str, str], *, max_bytes: int) -> Any:
        """The JSON body of a genuine delivery. Raises BodyError or SignatureError, size checked first."""
        if len(body) > max_bytes:
            raise BodyError(f"body of {len(body)} bytes is over the {max_bytes}-byte limit")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise BodyError("body is not UTF-8 JSON") from None
        lowered = {name.lower(): value for name, value in headers.items()}
        try:
            self._webhook.verify(text, lowered, json_parse=False)
        except WebhookVerificationError as exc:
            raise SignatureError(f"signature refused: {exc}") from None
        except (ValueError, TypeError, IndexError):
            # The library splits and base64-decodes header values without checking them first.
            raise SignatureError("signature refused: malformed webhook-signature header") from None
        try:
            return json.loads(text)
        except ValueError:
            raise BodyError("body is not JSON") from None

    def sign(self, delivery_id: str, timestamp: float, body: bytes) -> str:
        """The ``webhook-signature`` value for a delivery (the emulator and tests send with it)."""
        return self._webhook.sign(delivery_id, datetime.fromtimestamp(timestamp, UTC), body.decode("utf-8"))


def normalize_batch_name(value: str) -> str:
    """``batches/<id>`` from either spelling the API may use in ``data.id``."""
    name = value.strip()
    bare = name.removeprefix("batches/")
    if not bare or "/" in bare or any(ch.isspace() for ch in bare):
        raise BodyError(f"not a batch id: {value[:100]!r}")
    return f"batches/{bare}"


def parse_event(payload: Any, delivery_id: str) -> BatchEvent | None:
    """The batch a delivery names, or None for an event that is not about a batch (answered 2xx, ignored)."""
    if not isinstance(payload, dict):
        raise BodyError("body is not a JSON object")
    event_type = payload.get("type")
    if not isinstance(event_type, str):
        raise BodyError("body has no 'type'")
    if not event_type.startswith("batch."):
        return None
    data = payload.get("data")
    data = data if isinstance(data, dict) else {}
    raw = data.get("id") or data.get("name") or payload.get("name")
    if not isinstance(raw, str):
        raise BodyError("a batch event without data.id")
    code, message = data.get("error_code"), data.get("error_message")
    return BatchEvent(
        delivery_id=delivery_id,
        type=event_type,
        batch_name=normalize_batch_name(raw),
        error_code=str(code)[:100] if code is not None else None,
        error_message=str(message)[:500] if message is not None else None,
    )


def event_body(event_type: str, batch_name: str, *, timestamp: str, **data: Any) -> dict[str, Any]:
    """The body the API sends for a batch event (the emulator sends exactly this)."""
    return {"type": event_type, "version": "v1", "timestamp": timestamp, "data": {"id": batch_name, **data}}
