"""The boundary parsers: Pub/Sub envelopes, request messages and Cloud Storage object events."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from promptdrop.errors import InputError
from promptdrop.events import (
    PromptMessage,
    PubsubMessage,
    StorageObject,
    parse_gs_uri,
    parse_pubsub_envelope,
    parse_request_message,
    parse_storage_notification,
    parse_storage_object,
)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# Pub/Sub envelopes


@pytest.mark.parametrize(
    ("envelope", "expected"),
    [
        (
            {
                "message": {
                    "data": b64(b'{"uri": "gs://b/o"}'),
                    "attributes": {"idempotency_key": "k1"},
                    "messageId": "123",
                    "publishTime": "2026-11-24T03:00:00Z",
                },
                "subscription": "projects/p/subscriptions/s",
            },
            PubsubMessage(b'{"uri": "gs://b/o"}', {"idempotency_key": "k1"}, "123", "2026-11-24T03:00:00Z"),
        ),
        # Eventarc repeats the ids in snake_case; a message may have no data and no attributes.
        ({"message": {"message_id": "9", "publish_time": "t"}}, PubsubMessage(b"", {}, "9", "t")),
    ],
)
def test_parse_pubsub_envelope(envelope: dict[str, Any], expected: PubsubMessage) -> None:
    """The message is unwrapped and its data decoded from base64."""
    assert parse_pubsub_envelope(envelope) == expected


@pytest.mark.parametrize(
    ("envelope", "reason"),
    [
        ({}, "no 'message'"),
        ({"message": "text"}, "no 'message'"),
        ({"message": {"data": b64(b"x")}}, "messageId"),
        ({"message": {"messageId": "1", "data": "not base64!"}}, "base64"),
        ({"message": {"messageId": "1", "data": 5}}, "base64"),
        ({"message": {"messageId": "1", "attributes": {"a": 1}}}, "attributes"),
    ],
)
def test_parse_pubsub_envelope_refuses(envelope: dict[str, Any], reason: str) -> None:
    """A malformed envelope is an InputError that says what is wrong."""
    with pytest.raises(InputError, match=reason):
        parse_pubsub_envelope(envelope)


# Request messages


@pytest.mark.parametrize(
    ("body", "attributes", "expected"),
    [
        (
            {"name": "cats", "prompts": [{"key": "a", "prompt": "a cat"}, "a dog"]},
            {},
            PromptMessage("m1", "m1", name="cats", prompts=({"key": "a", "prompt": "a cat"}, "a dog")),
        ),
        (
            {"name": "cats", "prompts": ["a cat"], "defaults": {"aspect_ratio": "16:9"}},
            {"idempotency_key": "order-42"},
            PromptMessage(
                "m1", "order-42", name="cats", prompts=("a cat",), defaults={"aspect_ratio": "16:9"}
            ),
        ),
        (
            {"name": "cats", "prompts": ["a cat"], "defaults": None},
            {"idempotency_key": ""},  # empty: fall back to the message id
            PromptMessage("m1", "m1", name="cats", prompts=("a cat",)),
        ),
        (
            {"uri": "gs://my-bucket/requests/day 1/file.jsonl"},
            {},
            PromptMessage(
                "m1",
                "m1",
                uri="gs://my-bucket/requests/day 1/file.jsonl",
                bucket="my-bucket",
                object="requests/day 1/file.jsonl",
            ),
        ),
    ],
)
def test_parse_request_message(
    body: dict[str, Any], attributes: dict[str, str], expected: PromptMessage
) -> None:
    """Inline and uri requests parse into a PromptMessage with the right claim token."""
    parsed = parse_request_message(orjson.dumps(body), attributes, "m1")
    assert parsed == expected
    assert parsed.is_inline is (expected.uri is None)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b'["a cat"]', "JSON object"),
        (b"{}", "non-empty string 'name'"),
        (b'{"name": "", "prompts": ["x"]}', "non-empty string 'name'"),
        (b'{"name": 3, "prompts": ["x"]}', "non-empty string 'name'"),
        (b'{"name": "n"}', "non-empty list 'prompts'"),
        (b'{"name": "n", "prompts": []}', "non-empty list 'prompts'"),
        (b'{"name": "n", "prompts": "a cat"}', "non-empty list 'prompts'"),
        (b'{"name": "n", "prompts": ["x"], "defaults": []}', "'defaults' must be a JSON object"),
        (b'{"name": "n", "prompt": ["x"]}', "unknown fields prompt"),
        (b'{"uri": "gs://b-1/o", "name": "n"}', "no other fields"),
        (b'{"uri": 7}', "uri must be a string"),
        (b'{"uri": "s3://bucket/o"}', "gs://BUCKET/OBJECT"),
        (b'{"uri": "gs://bucket"}', "empty"),
        (b'{"uri": "gs://bucket/"}', "empty"),
        (b'{"uri": "gs://Bad_Bucket!/o"}', "invalid bucket"),
        (b'{"uri": "gs://bucket/a/../../etc"}', "'..' segment"),
    ],
)
def test_parse_request_message_refuses(data: bytes, reason: str) -> None:
    """Bad JSON or a bad shape is an InputError with a clear reason."""
    with pytest.raises(InputError, match=reason):
        parse_request_message(data, {}, "m1")


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("gs://bucket/o.jsonl", ("bucket", "o.jsonl")),
        ("gs://my.bucket_1/a/b/c.txt", ("my.bucket_1", "a/b/c.txt")),
    ],
)
def test_parse_gs_uri(uri: str, expected: tuple[str, str]) -> None:
    """A gs:// uri splits into bucket and object name."""
    assert parse_gs_uri(uri) == expected


# Cloud Storage object events

NOTIFICATION_ATTRIBUTES = {
    "payloadFormat": "JSON_API_V1",
    "eventType": "OBJECT_FINALIZE",
    "bucketId": "prompts-bucket",
    "objectId": "inbox/cats.jsonl",
    "objectGeneration": "1795489279237827",
    "eventTime": "2026-11-24T03:01:19Z",
}
# As fake-gcs-server and GCS send it: numbers as strings.
OBJECT_RESOURCE = {
    "kind": "storage#object",
    "name": "inbox/cats.jsonl",
    "bucket": "prompts-bucket",
    "generation": "1795489279237827",
    "size": "14",
    "contentType": "application/jsonl",
}
CATS = StorageObject("prompts-bucket", "inbox/cats.jsonl", "1795489279237827", 14, "OBJECT_FINALIZE")


@pytest.mark.parametrize(
    ("attributes", "data", "expected"),
    [
        (NOTIFICATION_ATTRIBUTES, orjson.dumps(OBJECT_RESOURCE), CATS),
        (
            {**NOTIFICATION_ATTRIBUTES, "payloadFormat": "NONE"},
            b"",
            StorageObject("prompts-bucket", "inbox/cats.jsonl", "1795489279237827", None, "OBJECT_FINALIZE"),
        ),
        (
            {**NOTIFICATION_ATTRIBUTES, "eventType": "OBJECT_DELETE"},
            orjson.dumps({**OBJECT_RESOURCE, "size": 0}),
            StorageObject("prompts-bucket", "inbox/cats.jsonl", "1795489279237827", 0, "OBJECT_DELETE"),
        ),
    ],
)
def test_parse_storage_notification(attributes: dict[str, str], data: bytes, expected: StorageObject) -> None:
    """A Pub/Sub notification gives bucket, name and generation from attributes and size from the payload."""
    assert parse_storage_notification(attributes, data) == expected


@pytest.mark.parametrize(
    ("attributes", "data", "reason"),
    [
        ({**NOTIFICATION_ATTRIBUTES, "payloadFormat": "XML"}, b"", "payloadFormat"),
        ({k: v for k, v in NOTIFICATION_ATTRIBUTES.items() if k != "bucketId"}, b"", "bucketId"),
        ({k: v for k, v in NOTIFICATION_ATTRIBUTES.items() if k != "objectId"}, b"", "objectId"),
        ({k: v for k, v in NOTIFICATION_ATTRIBUTES.items() if k != "eventType"}, b"", "eventType"),
        ({**NOTIFICATION_ATTRIBUTES, "objectGeneration": "abc"}, b"", "generation"),
        (NOTIFICATION_ATTRIBUTES, b"{oops", "not valid JSON"),
        (NOTIFICATION_ATTRIBUTES, b"[1]", "object resource"),
        (NOTIFICATION_ATTRIBUTES, orjson.dumps({**OBJECT_RESOURCE, "size": "-1"}), "size"),
    ],
)
def test_parse_storage_notification_refuses(attributes: dict[str, str], data: bytes, reason: str) -> None:
    """A notification missing what identifies the object is an InputError."""
    with pytest.raises(InputError, match=reason):
        parse_storage_notification(attributes, data)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (OBJECT_RESOURCE, CATS),
        ({**OBJECT_RESOURCE, "generation": 1795489279237827, "size": 14}, CATS),  # numbers as numbers
        (
            {k: v for k, v in OBJECT_RESOURCE.items() if k != "size"},
            StorageObject("prompts-bucket", "inbox/cats.jsonl", "1795489279237827", None, "OBJECT_FINALIZE"),
        ),
    ],
)
def test_parse_storage_object(data: dict[str, Any], expected: StorageObject) -> None:
    """The direct finalized CloudEvent's object resource parses to the same event as the notification."""
    assert parse_storage_object(data) == expected


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({**OBJECT_RESOURCE, "bucket": ""}, "bucket"),
        ({k: v for k, v in OBJECT_RESOURCE.items() if k != "name"}, "name"),
        ({**OBJECT_RESOURCE, "generation": None}, "generation"),
        ({**OBJECT_RESOURCE, "generation": True}, "generation"),
        ({**OBJECT_RESOURCE, "size": "big"}, "size"),
    ],
)
def test_parse_storage_object_refuses(data: dict[str, Any], reason: str) -> None:
    """An object resource without bucket, name or a numeric generation is an InputError."""
    with pytest.raises(InputError, match=reason):
        parse_storage_object(data)
