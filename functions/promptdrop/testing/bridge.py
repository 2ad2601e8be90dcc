"""The part of Eventarc the emulators lack: Pub/Sub messages in, CloudEvents out to a function.

``PubsubBridge`` pulls a subscription and delivers each message as the ``messagePublished`` CloudEvent
Eventarc would send; a 2xx answer acknowledges the message, anything else leaves it to be redelivered a
little later (Eventarc's retry policy). ``Ticker`` plays Cloud Scheduler for the poller. Both run on a
thread (``start``/``stop``) or step by step (``pump``/``tick``) for tests that want no threads.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from promptdrop.testing import eventarc

log = logging.getLogger(__name__)

Deliver = Callable[[Mapping[str, Any]], int]
# How long a message a function failed on waits before Pub/Sub offers it again.
REDELIVERY_DELAY_SECONDS = 2


def _rfc3339(timestamp: Any) -> str | None:
    if timestamp is None:
        return None
    return str(timestamp.isoformat()).replace("+00:00", "Z")


class PubsubBridge:
    """Deliver the messages of ``subscription`` (on ``topic_path``) to a function as CloudEvents."""

    def __init__(
        self,
        subscriber: Any,
        subscription: str,
        topic_path: str,
        deliver: Deliver,
        *,
        template: str = "eventarc-request-inline",
        name: str = "bridge",
        redelivery_seconds: int = REDELIVERY_DELAY_SECONDS,
    ) -> None:
        self.subscriber = subscriber
        self.subscription = subscription
        self.topic_path = topic_path
        self.deliver = deliver
        self.template = template
        self.name = name
        self.redelivery_seconds = redelivery_seconds
        self.statuses: list[int] = []  # what the function answered, in delivery order
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def pump(self, max_messages: int = 10) -> int:
        """Pull once and deliver what came; the number of messages delivered."""
        # A short deadline: the emulator holds an empty pull open for most of it, which would delay stop().
        response = self.subscriber.pull(
            subscription=self.subscription, max_messages=max_messages, timeout=1.0
        )
        for item in response.received_messages:
            message = item.message
            event = eventarc.pubsub_event(
                self.template,
                bytes(message.data),
                dict(message.attributes),
                message_id=message.message_id,
                publish_time=_rfc3339(message.publish_time),
                topic_path=self.topic_path,
                subscription=self.subscription,
            )
            status = self.deliver(event)
            self.statuses.append(status)
            if 200 <= status < 300:
                self.subscriber.acknowledge(subscription=self.subscription, ack_ids=[item.ack_id])
            else:
                log.warning("%s: message %s answered %s; redelivering", self.name, message.message_id, status)
                self.subscriber.modify_ack_deadline(
                    subscription=self.subscription,
                    ack_ids=[item.ack_id],
                    ack_deadline_seconds=self.redelivery_seconds,
                )
        return len(response.received_messages)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                delivered = self.pump()
            except Exception as exc:  # the emulator going away at shutdown, a function restarting
                if self._stop.is_set():
                    return
                log.warning("%s: %s", self.name, exc)
                delivered = 0
            if not delivered:
                self._stop.wait(0.2)  # the emulator answers an empty pull at once

    def start(self) -> PubsubBridge:
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)


class Ticker:
    """Cloud Scheduler for the poller: a tick CloudEvent every ``interval`` seconds."""

    def __init__(self, deliver: Deliver, interval: float) -> None:
        self.deliver = deliver
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> int:
        return self.deliver(eventarc.scheduler_tick())

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            status = self.tick()
            if status != 200 and not self._stop.is_set():
                log.warning("tick answered %s", status)

    def start(self) -> Ticker:
        self._thread = threading.Thread(target=self._loop, name="ticker", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
