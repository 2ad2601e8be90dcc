"""CloudEvents shaped like the ones Eventarc delivers to the functions, and their two HTTP encodings.

The captured samples in ``events/`` next to this module (``tests/events`` links to them) are the templates: each builder here takes one and points it at
a test's own bucket, object or message, leaving the rest of the shape as captured. ``binary`` and
``structured`` give the headers and body of either CloudEvents HTTP encoding; ``post`` sends one to a
function listening on loopback (for ``scripts/cloud-local``).
"""

from __future__ import annotations

import base64
import json
import random
import urllib.error
import urllib.request
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

EVENTS_DIR = Path(__file__).resolve().parent / "events"
PUBSUB_PUBLISHED = "google.cloud.pubsub.topic.v1.messagePublished"
STORAGE_FINALIZED = "google.cloud.storage.object.v1.finalized"

Encoding = Literal["binary", "structured"]
# Loopback only: never through a proxy named in the environment.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def load(name: str) -> dict[str, Any]:
    """A captured sample from ``events/<name>.json``, as a fresh dict."""
    data: dict[str, Any] = json.loads((EVENTS_DIR / f"{name}.json").read_text())
    return data


def new_message_id() -> str:
    """A Pub/Sub-style numeric message id."""
    return str(random.randrange(10**16, 10**17))  # noqa: S311 (an id, not a secret)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def object_resource(bucket: str, name: str, generation: str, size: int) -> dict[str, Any]:
    """The captured JSON_API_V1 object resource, describing ``gs://bucket/name#generation`` instead."""
    resource = load("storage-object-finalized")["data"]
    quoted = quote(name, safe="")
    resource.update(
        bucket=bucket,
        name=name,
        generation=generation,
        size=str(size),
        id=f"{bucket}/{name}/{generation}",
        selfLink=f"https://www.googleapis.com/storage/v1/b/{bucket}/o/{quoted}",
        mediaLink=(
            f"https://storage.googleapis.com/download/storage/v1/b/{bucket}/o/{quoted}"
            f"?generation={generation}&alt=media"
        ),
    )
    return dict(resource)


def pubsub_event(
    template: str,
    data: bytes,
    attributes: Mapping[str, str] | None = None,
    *,
    message_id: str | None = None,
    publish_time: str | None = None,
    topic_path: str | None = None,
    subscription: str | None = None,
) -> dict[str, Any]:
    """A ``messagePublished`` CloudEvent in the shape of ``template`` carrying this message.

    Eventarc uses the message id as the CloudEvent id and repeats ids and times in snake_case.
    """
    event = load(template)
    message_id = message_id or new_message_id()
    publish_time = publish_time or _now()
    message: dict[str, Any] = {}
    if attributes:
        message["attributes"] = dict(attributes)
    message.update(
        data=base64.b64encode(data).decode(),
        messageId=message_id,
        message_id=message_id,
        publishTime=publish_time,
        publish_time=publish_time,
    )
    event["id"] = message_id
    event["time"] = publish_time
    event["data"]["message"] = message
    if topic_path is not None:
        event["source"] = f"//pubsub.googleapis.com/{topic_path}"
    if subscription is not None:
        event["data"]["subscription"] = subscription
    return event


def storage_notification(
    bucket: str,
    name: str,
    generation: str,
    size: int,
    *,
    event_type: str = "OBJECT_FINALIZE",
    payload: bool = True,
    message_id: str | None = None,
) -> dict[str, Any]:
    """The bucket's Pub/Sub notification for an object, delivered by Eventarc as ``messagePublished``.

    Without ``payload`` the notification is configured with ``payloadFormat=NONE``: attributes only.
    """
    captured = load("eventarc-storage-notification")["data"]["message"]["attributes"]
    attributes = {
        **captured,
        "bucketId": bucket,
        "objectId": name,
        "objectGeneration": generation,
        "eventType": event_type,
        "eventTime": _now(),
        "notificationConfig": f"projects/_/buckets/{bucket}/notificationConfigs/1",
        "payloadFormat": "JSON_API_V1" if payload else "NONE",
    }
    data = json.dumps(object_resource(bucket, name, generation, size), indent=2).encode() if payload else b""
    return pubsub_event("eventarc-storage-notification", data, attributes, message_id=message_id)


def storage_finalized(bucket: str, name: str, generation: str, size: int) -> dict[str, Any]:
    """The direct ``google.cloud.storage.object.v1.finalized`` CloudEvent for an object."""
    event = load("storage-object-finalized")
    event.update(
        id=new_message_id(),
        time=_now(),
        source=f"//storage.googleapis.com/projects/_/buckets/{bucket}",
        subject=f"objects/{name}",
        data=object_resource(bucket, name, generation, size),
    )
    return event


def request(
    body: Mapping[str, Any], attributes: Mapping[str, str] | None = None, *, message_id: str | None = None
) -> dict[str, Any]:
    """A message on the requests topic (inline prompts, or a ``uri``), as Eventarc delivers it."""
    return pubsub_event(
        "eventarc-request-inline", json.dumps(body).encode(), attributes, message_id=message_id
    )


def scheduler_tick(*, message_id: str | None = None) -> dict[str, Any]:
    """The Cloud Scheduler tick (``{"tick": true}`` on the tick topic), as Eventarc delivers it."""
    captured = load("eventarc-scheduler-tick")
    data = base64.b64decode(captured["data"]["message"]["data"])
    return pubsub_event("eventarc-scheduler-tick", data, message_id=message_id)


def binary(event: Mapping[str, Any]) -> tuple[dict[str, str], bytes]:
    """Binary content mode: context attributes as ``ce-*`` headers, the data as the JSON body."""
    headers = {
        f"ce-{name}": str(value) for name, value in event.items() if name not in {"data", "datacontenttype"}
    }
    headers["Content-Type"] = str(event.get("datacontenttype", "application/json"))
    return headers, json.dumps(event["data"]).encode()


def structured(event: Mapping[str, Any]) -> tuple[dict[str, str], bytes]:
    """Structured content mode: the whole event as one ``application/cloudevents+json`` body."""
    return {"Content-Type": "application/cloudevents+json"}, json.dumps(dict(event)).encode()


def encode(event: Mapping[str, Any], encoding: Encoding) -> tuple[dict[str, str], bytes]:
    return binary(event) if encoding == "binary" else structured(event)


def push_body(event: Mapping[str, Any]) -> dict[str, Any]:
    """The raw body a Pub/Sub push subscription POSTs for the message inside a ``messagePublished`` event."""
    message = {k: v for k, v in event["data"]["message"].items() if k not in {"message_id", "publish_time"}}
    return {"message": message, "subscription": event["data"]["subscription"]}


def post(url: str, event: Mapping[str, Any], *, encoding: Encoding = "binary", timeout: float = 600.0) -> int:
    """POST a CloudEvent to a function over HTTP; the status it answered (0 when it could not be reached)."""
    headers, body = encode(event, encoding)
    call = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310 (loopback)
    try:
        with _HTTP.open(call, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0
