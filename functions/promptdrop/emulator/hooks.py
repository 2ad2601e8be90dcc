"""The emulator's webhooks: static webhooks registered through the API, and signed deliveries of batch events.

When a job ends SUCCEEDED, FAILED or EXPIRED (no event for CANCELLED, as on the real API) every target gets
one Standard-Webhooks-signed POST: the ``--webhook-url`` targets (signed with ``--webhook-secret``) and every
webhook created with ``client.webhooks.create`` that subscribed to the event (signed with the secret its
create returned, once). Delivery is at least once: a non-2xx answer or a timeout is retried with doubling
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
from promptdrop.emulator.wire import ApiError, rfc3339
from promptdrop.webhooks import BATCH_EVENTS, Verifier, event_body

logger = logging.getLogger(__name__)

# Batch end states -> the event the API sends (no event for a cancelled batch).
EVENT_OF_STATE: Final = {
    "BATCH_STATE_SUCCEEDED": "batch.succeeded",
    "BATCH_STATE_FAILED": "batch.failed",
    "BATCH_STATE_EXPIRED": "batch.expired",
}
KNOWN_EVENTS: Final = frozenset(
    {
        *BATCH_EVENTS,
        "interaction.requires_action",
        "interaction.completed",
        "interaction.failed",
        "video.generated",
    }
)
# Loopback targets only in tests, but never through a proxy from the environment either way.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


@dataclass(slots=True)
class Registered:
    """A static webhook created through the API."""

    id: str
    uri: str
    subscribed_events: list[str]
    secret: str
    create_time: float
    name: str | None = None
    state: str = "enabled"

    def to_json(self, *, with_secret: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "uri": self.uri,
            "subscribed_events": list(self.subscribed_events),
            "state": self.state,
            "create_time": rfc3339(self.create_time),
            "update_time": rfc3339(self.create_time),
            "signing_secrets": [{"truncated_secret": self.secret[:10] + "..."}],
        }
        if self.name:
            body["name"] = self.name
        if with_secret:
            body["new_signing_secret"] = self.secret  # returned once, on create
        return body


@dataclass(order=True)
class _Attempt:
    due: float
    seq: int
    uri: str = field(compare=False)
    secret: str = field(compare=False)
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
                hook = Registered(**item)
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

    def create(self, body: Any) -> Registered:
        if not isinstance(body, dict):
            raise ApiError(400, "body must be a Webhook object")
        uri = body.get("uri")
        events = body.get("subscribed_events") or body.get("subscribedEvents")
        if not isinstance(uri, str) or not uri.startswith(("http://", "https://")):
            raise ApiError(400, "uri must be an http(s) URL")
        if not isinstance(events, list) or not events or not set(events) <= KNOWN_EVENTS:
            raise ApiError(400, f"subscribed_events must be a non-empty list of {sorted(KNOWN_EVENTS)}")
        name = body.get("name")
        hook = Registered(
            id=random_id(16),
            uri=uri,
            subscribed_events=[str(e) for e in events],
            secret=new_secret(),
            create_time=self._clock(),
            name=str(name) if name else None,
        )
        with self._lock:
            self.registered[hook.id] = hook
            self._save()
        return hook

    def get(self, hook_id: str) -> Registered:
        with self._lock:
            hook = self.registered.get(hook_id)
        if hook is None:
            raise ApiError(404, f"Webhook {hook_id} not found.")
        return hook

    def delete(self, hook_id: str) -> None:
        with self._lock:
            if self.registered.pop(hook_id, None) is None:
                raise ApiError(404, f"Webhook {hook_id} not found.")
            self._save()

    def list(self) -> list[Registered]:
        with self._lock:
            return sorted(self.registered.values(), key=lambda hook: hook.create_time)

    def _save(self) -> None:
        write_json_atomically(self._path, [asdict(hook) for hook in self.registered.values()])

    # Deliveries

    def batch_ended(self, batch_name: str, state: str, end_time: float, **data: Any) -> None:
        """Queue the event of a batch that ended (call with no lock of the engine's needed: never blocks)."""
        event_type = EVENT_OF_STATE.get(state)
        if event_type is None:
            return
        body = orjson.dumps(event_body(event_type, batch_name, timestamp=rfc3339(end_time), **data))
        targets: list[tuple[str, str]] = []
        if self._options.webhook_secret:
            targets += [(uri, self._options.webhook_secret) for uri in self._options.webhook_urls]
        with self._lock:
            targets += [
                (h.uri, h.secret) for h in self.registered.values() if event_type in h.subscribed_events
            ]
            self.counts["events"] += 1
            now = self._clock()
            for uri, secret in targets:
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
                        now + options.webhook_delay_seconds + copy * 0.05, uri, secret, delivery_id, body
                    )
            self._lock.notify_all()

    def _push(
        self, due: float, uri: str, secret: str, delivery_id: str, body: bytes, attempt: int = 1
    ) -> None:
        self._seq += 1
        heapq.heappush(self._queue, _Attempt(due, self._seq, uri, secret, delivery_id, body, attempt))

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
        if ok:
            self.counts["delivered"] += 1
            return
        self.counts["failed_attempts"] += 1
        if item.attempt >= options.webhook_attempts:
            self.counts["given_up"] += 1
            logger.warning(
                "webhook %s to %s given up after %d attempts", item.delivery_id, item.uri, item.attempt
            )
            return
        delay = options.webhook_retry_seconds * 2 ** (item.attempt - 1)
        self._push(
            self._clock() + delay, item.uri, item.secret, item.delivery_id, item.body, item.attempt + 1
        )

    def _send(self, item: _Attempt) -> bool:
        timestamp = int(self._clock())
        signature = Verifier(item.secret).sign(item.delivery_id, timestamp, item.body)
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
