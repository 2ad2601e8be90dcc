"""The emulator's webhooks: static webhooks registered through the API, and signed deliveries of batch events.

When a job ends SUCCEEDED, FAILED or EXPIRED (no event for CANCELLED, as on the real API) every target gets
one Standard-Webhooks-signed POST: the ``--webhook-url`` targets (signed with ``--webhook-secret``) and every
webhook created with ``client.webhooks.create`` that subscribed to the event (signed with the secret its
create returned, once). ``rotate_signing_secret`` gives a webhook a new secret (returned once); with
``revoke_previous_secrets_after_h24`` (also when no behaviour is given) the old ones keep signing for 24 hours,
so a delivery carries one ``v1,`` signature per live secret. Delivery is at least once: a non-2xx answer or a timeout is retried with doubling
backoff, the same ``webhook-id`` each time, a fresh timestamp and signature per attempt. Fault controls drop,
duplicate or delay deliveries (seeded with ``--fault-seed``).

Registered webhooks persist in ``<data dir>/webhooks.json`` (secrets included: it is a test server's folder).
"""

from __future__ import annotations

import base64
import heapq
import logging
import random
import secrets
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from promptdrop.emulator.files import random_id, write_json_atomically
from promptdrop.emulator.options import EmulatorOptions
from promptdrop.emulator.wire import ApiError, paginate, rfc3339
from promptdrop.webhooks import BATCH_EVENTS, Verifier, event_body

logger = logging.getLogger(__name__)

# Batch end states -> the event the API sends (the webhooks guide of 2026-09-24 adds batch.cancelled).
EVENT_OF_STATE: Final = {
    "BATCH_STATE_SUCCEEDED": "batch.succeeded",
    "BATCH_STATE_FAILED": "batch.failed",
    "BATCH_STATE_EXPIRED": "batch.expired",
    "BATCH_STATE_CANCELLED": "batch.cancelled",
}
WEBHOOK_STATES: Final = frozenset({"enabled", "disabled", "disabled_due_to_failed_deliveries"})
KNOWN_EVENTS: Final = frozenset(
    {
        *BATCH_EVENTS,
        "interaction.cancelled",
        "interaction.requires_action",
        "interaction.completed",
        "interaction.failed",
        "video.generated",
    }
)
# Loopback targets only in tests, but never through a proxy from the environment either way.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# RotateSigningSecretRequest.revocation_behavior (google.genai.webhooks.RevocationBehavior) -> how long the
# previous secrets keep signing. Unspecified is taken as the 24-hour overlap: no delivery is left unverifiable.
REVOCATION_SECONDS: Final[dict[str | None, float]] = {
    None: 24 * 3600.0,
    "revoke_previous_secrets_after_h24": 24 * 3600.0,
    "revoke_previous_secrets_immediately": 0.0,
}


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


@dataclass(slots=True)
class SigningKey:
    """One signing secret of a webhook; ``expire_time`` set once a rotation revoked it (after 24 hours)."""

    secret: str
    expire_time: float | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"truncated_secret": self.secret[:10] + "..."}
        if self.expire_time is not None:
            body["expire_time"] = rfc3339(self.expire_time)
        return body


@dataclass(slots=True)
class Registered:
    """A static webhook created through the API; ``keys`` newest first."""

    id: str
    uri: str
    subscribed_events: list[str]
    keys: list[SigningKey]
    create_time: float
    update_time: float
    name: str | None = None
    state: str = "enabled"
    failed_deliveries: int = 0  # given up in a row; webhook_disable_after of them disable it

    @classmethod
    def from_saved(cls, item: dict[str, Any]) -> Registered:
        if "secret" in item:  # a folder written before rotation existed: one secret
            item = {**item, "keys": [{"secret": item.pop("secret")}], "update_time": item["create_time"]}
        keys = [SigningKey(**key) for key in item.pop("keys")]
        return cls(keys=keys, **item)

    def live_secrets(self, now: float) -> list[str]:
        """The secrets a delivery sent at ``now`` is signed with."""
        return [key.secret for key in self.keys if key.expire_time is None or key.expire_time > now]

    def to_json(self, *, now: float) -> dict[str, Any]:
        live = [key for key in self.keys if key.expire_time is None or key.expire_time > now]
        body: dict[str, Any] = {
            "id": self.id,
            "uri": self.uri,
            "subscribed_events": list(self.subscribed_events),
            "state": self.state,
            "create_time": rfc3339(self.create_time),
            "update_time": rfc3339(self.update_time),
            "signing_secrets": [key.to_json() for key in live],
        }
        if self.name:
            body["name"] = self.name
        return body


def _sort_key(hook: Registered) -> str:
    """Newest first, ties by id: a stable order for page tokens."""
    return f"{hook.create_time:017.6f}/{hook.id}"


@dataclass(order=True)
class _Attempt:
    due: float
    seq: int
    uri: str = field(compare=False)
    # A --webhook-url target is signed with --webhook-secret; a registered webhook with its secrets live at
    # the time of each attempt (a rotation between two attempts shows).
    target: str | None = field(compare=False)  # the registered webhook's id, None for a --webhook-url
    delivery_id: str = field(compare=False)
    body: bytes = field(compare=False)
    attempt: int = field(compare=False, default=1)


class Hooks:
    """Registered webhooks and the delivery queue, worked by one background thread."""

    def __init__(
        self, data_dir: Path, options: EmulatorOptions, clock: Callable[[], float] = time.time
    ) -> None:
        self._options = options
        self._clock = clock
        self._path = data_dir / "webhooks.json"
        self._lock = threading.Condition()
        self._queue: list[_Attempt] = []
        self._seq = 0
        self._random = random.Random(options.fault_seed)  # noqa: S311 - test faults, not secrets
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._in_flight = 0
        self.registered: dict[str, Registered] = {}
        self.counts = {
            "events": 0,
            "sent": 0,
            "delivered": 0,
            "failed_attempts": 0,
            "dropped": 0,
            "duplicated": 0,
            "given_up": 0,
        }
        if options.webhook_urls and not options.webhook_secret:
            raise ValueError("--webhook-url needs --webhook-secret (or its environment variable)")
        if options.webhook_secret:
            Verifier(options.webhook_secret)  # a malformed secret stops the emulator at start

    # Lifecycle

    def start(self) -> None:
        if self._path.is_file():
            for item in orjson.loads(self._path.read_bytes()):
                hook = Registered.from_saved(item)
                self.registered[hook.id] = hook
        self._thread = threading.Thread(target=self._work, name="emulator-webhooks", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stopping.set()
        with self._lock:
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def busy(self) -> bool:
        """Deliveries are still queued or being sent."""
        with self._lock:
            return bool(self._queue) or self._in_flight > 0

    # The webhooks API

    def create(self, body: Any) -> dict[str, Any]:
        """Register a webhook; its JSON with ``new_signing_secret``, which no later answer shows."""
        if not isinstance(body, dict):
            raise ApiError(400, "body must be a Webhook object")
        uri = body.get("uri")
        events = body.get("subscribed_events") or body.get("subscribedEvents")
        if not isinstance(uri, str) or not uri.startswith(("http://", "https://")):
            raise ApiError(400, "uri must be an http(s) URL")
        if not isinstance(events, list) or not events or not set(events) <= KNOWN_EVENTS:
            raise ApiError(400, f"subscribed_events must be a non-empty list of {sorted(KNOWN_EVENTS)}")
        name = body.get("name")
        now = self._clock()
        secret = new_secret()
        hook = Registered(
            id=random_id(16),
            uri=uri,
            subscribed_events=[str(e) for e in events],
            keys=[SigningKey(secret)],
            create_time=now,
            update_time=now,
            name=str(name) if name else None,
        )
        with self._lock:
            self.registered[hook.id] = hook
            self._save()
        return {**hook.to_json(now=now), "new_signing_secret": secret}  # the secret, this once

    def rotate(self, hook_id: str, body: Any) -> str:
        """A new signing secret for the webhook (returned this once); the previous ones expire as asked."""
        behavior = body.get("revocation_behavior") if isinstance(body, dict) else None
        if behavior not in REVOCATION_SECONDS:
            raise ApiError(
                400, f"revocation_behavior must be one of {sorted(filter(None, REVOCATION_SECONDS))}"
            )
        secret = new_secret()
        with self._lock:
            hook = self.registered.get(hook_id)
            if hook is None:
                raise ApiError(404, f"Webhook {hook_id} not found.")
            now = self._clock()
            expire = now + REVOCATION_SECONDS[behavior]
            previous = [
                SigningKey(key.secret, min(expire, key.expire_time or expire))
                for key in hook.keys
                if expire > now and (key.expire_time is None or key.expire_time > now)
            ]
            hook.keys = [SigningKey(secret), *previous]
            hook.update_time = now
            self._save()
        return secret

    def update(self, hook_id: str, body: Any, update_mask: str | None) -> dict[str, Any]:
        """PATCH: ``state`` (enabled again after failed deliveries, or disabled), ``uri``, ``subscribed_events``."""
        if not isinstance(body, dict):
            raise ApiError(400, "body must be a Webhook object")
        fields = (
            [f.strip() for f in update_mask.split(",")] if update_mask else [k for k in body if k != "id"]
        )
        with self._lock:
            hook = self.registered.get(hook_id)
            if hook is None:
                raise ApiError(404, f"Webhook {hook_id} not found.")
            for name in fields:
                key = {"subscribedEvents": "subscribed_events"}.get(name, name)
                value = body.get(key, body.get(name))
                if key == "state" and value in WEBHOOK_STATES:
                    hook.state = str(value)
                    hook.failed_deliveries = 0
                elif key == "uri" and isinstance(value, str) and value.startswith(("http://", "https://")):
                    hook.uri = value
                elif key == "subscribed_events" and isinstance(value, list) and set(value) <= KNOWN_EVENTS:
                    hook.subscribed_events = [str(e) for e in value]
                else:
                    raise ApiError(400, f"cannot update {name!r} to {value!r}")
            hook.update_time = self._clock()
            self._save()
            return hook.to_json(now=self._clock())

    def get(self, hook_id: str) -> dict[str, Any]:
        with self._lock:
            hook = self.registered.get(hook_id)
            if hook is None:
                raise ApiError(404, f"Webhook {hook_id} not found.")
            return hook.to_json(now=self._clock())

    def delete(self, hook_id: str) -> None:
        with self._lock:
            if self.registered.pop(hook_id, None) is None:
                raise ApiError(404, f"Webhook {hook_id} not found.")
            self._save()

    def page(self, size: int, token: str | None) -> tuple[list[dict[str, Any]], str | None]:
        """One page of the webhooks, newest first, and the token of the next page (None on the last)."""
        with self._lock:
            now = self._clock()
            hooks = sorted(self.registered.values(), key=_sort_key, reverse=True)
            page, next_token = paginate(hooks, _sort_key, size, token)
            return [hook.to_json(now=now) for hook in page], next_token

    def secrets_of(self, hook_id: str) -> list[str]:
        """Every signing secret the webhook has been given that still signs, newest first (for tests: what
        deliveries are signed with; the API itself never shows them again)."""
        with self._lock:
            return self.registered[hook_id].live_secrets(self._clock())

    def _save(self) -> None:
        write_json_atomically(self._path, [asdict(hook) for hook in self.registered.values()])

    # Deliveries

    def batch_ended(self, batch_name: str, state: str, end_time: float, **data: Any) -> None:
        """Queue the event of a batch that ended (call with no lock of the engine's needed: never blocks)."""
        event_type = EVENT_OF_STATE.get(state)
        if event_type is None:
            return
        body = orjson.dumps(event_body(event_type, batch_name, timestamp=rfc3339(end_time), **data))
        targets: list[tuple[str, str | None]] = []
        if self._options.webhook_secret:
            targets += [(uri, None) for uri in self._options.webhook_urls]
        with self._lock:
            targets += [
                (h.uri, h.id)
                for h in self.registered.values()
                if event_type in h.subscribed_events and h.state == "enabled"  # a disabled one gets nothing
            ]
            self.counts["events"] += 1
            now = self._clock()
            for uri, target in targets:
                draw = self._random.random()
                options = self._options
                if draw < options.webhook_drop_rate:
                    self.counts["dropped"] += 1
                    logger.info("webhook %s for %s dropped (fault)", event_type, batch_name)
                    continue
                delivery_id = "msg_" + random_id(24)
                copies = 2 if draw < options.webhook_drop_rate + options.webhook_duplicate_rate else 1
                self.counts["duplicated"] += copies - 1
                for copy in range(copies):
                    self._push(
                        now + options.webhook_delay_seconds + copy * 0.05, uri, target, delivery_id, body
                    )
            self._lock.notify_all()

    def _push(
        self, due: float, uri: str, target: str | None, delivery_id: str, body: bytes, attempt: int = 1
    ) -> None:
        self._seq += 1
        heapq.heappush(self._queue, _Attempt(due, self._seq, uri, target, delivery_id, body, attempt))

    def _work(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                while not self._stopping.is_set() and (not self._queue or self._queue[0].due > self._clock()):
                    wait = self._queue[0].due - self._clock() if self._queue else 1.0
                    self._lock.wait(max(0.005, min(wait, 1.0)))
                if self._stopping.is_set():
                    return
                item = heapq.heappop(self._queue)
                self._in_flight += 1
            try:
                ok = self._send(item)
            finally:
                with self._lock:
                    self._in_flight -= 1
                    self._after(item, ok)

    def _after(self, item: _Attempt, ok: bool) -> None:
        options = self._options
        hook = self.registered.get(item.target) if item.target else None
        if ok:
            self.counts["delivered"] += 1
            if hook is not None:
                hook.failed_deliveries = 0
            return
        self.counts["failed_attempts"] += 1
        if item.attempt >= options.webhook_attempts:
            self.counts["given_up"] += 1
            logger.warning(
                "webhook %s to %s given up after %d attempts", item.delivery_id, item.uri, item.attempt
            )
            if hook is not None and options.webhook_disable_after:
                hook.failed_deliveries += 1
                if hook.failed_deliveries >= options.webhook_disable_after and hook.state == "enabled":
                    # As the API does: pushes stop, silently, until the webhook is updated back to enabled.
                    hook.state = "disabled_due_to_failed_deliveries"
                    hook.update_time = self._clock()
                    self._save()
            return
        delay = options.webhook_retry_seconds * 2 ** (item.attempt - 1)
        self._push(
            self._clock() + delay, item.uri, item.target, item.delivery_id, item.body, item.attempt + 1
        )

    def _signing_secrets(self, item: _Attempt, now: float) -> list[str]:
        if item.target is None:
            return [self._options.webhook_secret] if self._options.webhook_secret else []
        with self._lock:
            hook = self.registered.get(item.target)
            return hook.live_secrets(now) if hook is not None else []

    def _send(self, item: _Attempt) -> bool:
        timestamp = int(self._clock())
        secrets_now = self._signing_secrets(item, timestamp)
        if not secrets_now:  # the webhook was deleted since the event: nobody to deliver to any more
            logger.info("webhook %s to %s not sent: its webhook was deleted", item.delivery_id, item.uri)
            return True
        # Standard Webhooks: one space-separated ``v1,`` entry per secret (several while one is rotated).
        signature = " ".join(
            Verifier(secret).sign(item.delivery_id, timestamp, item.body) for secret in secrets_now
        )
        headers = {
            "Content-Type": "application/json",
            "webhook-id": item.delivery_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature,
            "User-Agent": "promptdrop-emulator-webhooks",
        }
        with self._lock:
            self.counts["sent"] += 1
        request = urllib.request.Request(item.uri, data=item.body, headers=headers, method="POST")  # noqa: S310
        try:
            with _OPENER.open(request, timeout=self._options.webhook_timeout_seconds) as response:
                response.read()
                status: int = response.status
                return 200 <= status < 300
        except urllib.error.HTTPError as error:
            logger.info("webhook %s to %s answered %d", item.delivery_id, item.uri, error.code)
            return False
        except (OSError, ValueError) as exc:
            logger.info("webhook %s to %s failed: %s", item.delivery_id, item.uri, exc)
            return False

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {**self.counts, "queued": len(self._queue), "registered": len(self.registered)}
