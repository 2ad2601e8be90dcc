"""Events at the boundary, parsed once into small frozen objects: no raw dicts travel inward.

- a Pub/Sub push/CloudEvent envelope -> ``PubsubMessage`` (data decoded from base64);
- a request on the requests topic -> ``PromptMessage`` (inline prompts, or a ``gs://`` object to read);
- a Cloud Storage notification delivered through Pub/Sub (``JSON_API_V1``) or the direct
  ``google.cloud.storage.object.v1.finalized`` CloudEvent -> ``StorageObject``.

Everything here is pure. A malformed event raises ``InputError`` with the reason: retrying cannot fix it.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from promptdrop.errors import InputError, UnsafeNameError
from promptdrop.names import check_relative_path

OBJECT_FINALIZE = "OBJECT_FINALIZE"
_PAYLOAD_FORMATS = frozenset({"JSON_API_V1", "NONE"})
# Bucket names: 3-222 characters of lowercase letters, digits, dashes, underscores and dots.
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
_INLINE_FIELDS = frozenset({"name", "prompts", "defaults"})


@dataclass(frozen=True, slots=True)
class PubsubMessage:
    """One Pub/Sub message as a push subscription or Eventarc delivers it."""

    data: bytes
    attributes: Mapping[str, str]
    message_id: str
    publish_time: str | None = None


@dataclass(frozen=True, slots=True)
class PromptMessage:
    """A request from the requests topic: inline prompts (``name``, ``prompts``) or an object (``uri``).

    ``claim_token`` is the ``idempotency_key`` attribute, else the message id. A ``uri`` request is
    claimed later by the referenced object's generation instead.
    """

    message_id: str
    claim_token: str
    name: str | None = None
    prompts: tuple[Any, ...] = ()
    defaults: Mapping[str, Any] | None = None
    uri: str | None = None
    bucket: str | None = None
    object: str | None = None

    @property
    def is_inline(self) -> bool:
        return self.uri is None


@dataclass(frozen=True, slots=True)
class StorageObject:
    """One generation of an object in the bucket, and what happened to it: from a notification, a
    CloudEvent, a ``uri`` request or the local inbox scan (the one object type every layer passes on)."""

    bucket: str
    name: str
    generation: str
    size: int | None  # None when the notification carries no payload
    event_type: str = OBJECT_FINALIZE  # OBJECT_FINALIZE, OBJECT_DELETE, ...


def parse_pubsub_envelope(envelope: Mapping[str, Any]) -> PubsubMessage:
    """The message inside ``{"message": {...}, "subscription": ...}`` (push body or CloudEvent data)."""
    message = envelope.get("message")
    if not isinstance(message, Mapping):
        raise InputError("the Pub/Sub envelope has no 'message' object")
    message_id = message.get("messageId") or message.get("message_id")
    if not isinstance(message_id, str) or not message_id:
        raise InputError("the Pub/Sub message has no messageId")
    attributes = message.get("attributes") or {}
    if not isinstance(attributes, Mapping) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in attributes.items()
    ):
        raise InputError("the Pub/Sub message attributes are not a map of strings")
    encoded = message.get("data") or ""
    if not isinstance(encoded, str):
        raise InputError("the Pub/Sub message data is not a base64 string")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError("the Pub/Sub message data is not valid base64") from exc
    publish_time = message.get("publishTime") or message.get("publish_time")
    return PubsubMessage(
        data=data,
        attributes=dict(attributes),
        message_id=message_id,
        publish_time=publish_time if isinstance(publish_time, str) else None,
    )


@dataclass(frozen=True, slots=True)
class NowChunk:
    """A message on the now topic: one now-lane chunk of a run to send (``usecases.now_lane``)."""

    run_id: str
    job_id: str


def parse_now_chunk(data: bytes) -> NowChunk:
    """``{"run_id", "job_id"}``, as ``now_lane.dispatch_now_jobs`` publishes it."""
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InputError("a now-lane message is not JSON") from exc
    if not isinstance(body, dict):
        raise InputError("a now-lane message is not a JSON object")
    run_id, job_id = body.get("run_id"), body.get("job_id")
    if not isinstance(run_id, str) or not run_id or not isinstance(job_id, str) or not job_id:
        raise InputError("a now-lane message needs run_id and job_id strings")
    return NowChunk(run_id, job_id)


def parse_gs_uri(uri: str) -> tuple[str, str]:
    """(bucket, object name) of ``gs://BUCKET/OBJECT``."""
    if not uri.startswith("gs://"):
        raise InputError(f"uri must look like gs://BUCKET/OBJECT, got {uri[:200]!r}")
    bucket, _, name = uri.removeprefix("gs://").partition("/")
    if not _BUCKET_NAME.match(bucket):
        raise InputError(f"uri names an invalid bucket {bucket[:222]!r}")
    try:
        check_relative_path(name, what="uri object name")
    except UnsafeNameError as exc:
        raise InputError(str(exc)) from exc
    return bucket, name


def parse_request_message(data: bytes, attributes: Mapping[str, str], message_id: str) -> PromptMessage:
    """A request message: ``{"name", "prompts", "defaults"?}`` or ``{"uri": "gs://..."}``."""
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InputError(f"the request message is not valid JSON ({exc})") from exc
    if not isinstance(body, dict):
        raise InputError("the request message must be a JSON object")
    claim_token = attributes.get("idempotency_key") or message_id
    if "uri" in body:
        extra = sorted(set(body) - {"uri"})
        if extra:
            raise InputError(f"a uri request takes no other fields (found {', '.join(extra)})")
        uri = body["uri"]
        if not isinstance(uri, str):
            raise InputError("uri must be a string")
        bucket, name = parse_gs_uri(uri)
        return PromptMessage(message_id, claim_token, uri=uri, bucket=bucket, object=name)

    unknown = sorted(set(body) - _INLINE_FIELDS)
    if unknown:
        raise InputError(
            f"unknown fields {', '.join(unknown)}: a request has name, prompts and defaults, or uri"
        )
    run_name, prompts, defaults = body.get("name"), body.get("prompts"), body.get("defaults")
    if not isinstance(run_name, str) or not run_name.strip():
        raise InputError("an inline request needs a non-empty string 'name'")
    if not isinstance(prompts, list) or not prompts:
        raise InputError("an inline request needs a non-empty list 'prompts'")
    if defaults is not None and not isinstance(defaults, dict):
        raise InputError("'defaults' must be a JSON object")
    return PromptMessage(message_id, claim_token, name=run_name, prompts=tuple(prompts), defaults=defaults)


def _generation(value: object, where: str) -> str:
    text = str(value) if isinstance(value, str | int) and not isinstance(value, bool) else ""
    if not text.isdigit():
        raise InputError(f"{where} has no valid object generation")
    return text


def _size(value: object) -> int | None:
    if value is None:
        return None
    text = str(value) if isinstance(value, str | int) and not isinstance(value, bool) else ""
    if not text.isdigit():
        raise InputError("the object resource has an invalid size")
    return int(text)


def _required_string(source: Mapping[str, Any], key: str, where: str) -> str:
    value = source.get(key)
    if not isinstance(value, str) or not value:
        raise InputError(f"{where} has no {key}")
    return value


def parse_storage_notification(attributes: Mapping[str, str], data: bytes) -> StorageObject:
    """A Cloud Storage Pub/Sub notification (attributes ``bucketId``, ``objectId``, ``objectGeneration``...)."""
    where = "the storage notification"
    payload_format = attributes.get("payloadFormat", "NONE")
    if payload_format not in _PAYLOAD_FORMATS:
        raise InputError(f"{where} has an unknown payloadFormat {payload_format[:50]!r}")
    bucket = _required_string(attributes, "bucketId", where)
    name = _required_string(attributes, "objectId", where)
    event_type = _required_string(attributes, "eventType", where)
    generation = _generation(attributes.get("objectGeneration"), where)
    size = None
    if payload_format == "JSON_API_V1" and data:
        try:
            resource = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise InputError(f"{where} payload is not valid JSON ({exc})") from exc
        if not isinstance(resource, dict):
            raise InputError(f"{where} payload is not an object resource")
        size = _size(resource.get("size"))
    return StorageObject(bucket, name, generation, size, event_type)


def parse_storage_object(data: Mapping[str, Any], event_type: str = OBJECT_FINALIZE) -> StorageObject:
    """The object resource of a direct ``google.cloud.storage.object.v1.*`` CloudEvent."""
    where = "the storage event"
    bucket = _required_string(data, "bucket", where)
    name = _required_string(data, "name", where)
    generation = _generation(data.get("generation"), where)
    return StorageObject(bucket, name, generation, _size(data.get("size")), event_type)
