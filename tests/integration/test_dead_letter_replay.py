"""scripts/replay_dead_letters.py against the Pub/Sub emulator, wired the way infra/ wires dead letters.

A source subscription with a dead-letter policy (as infra/'s push subscriptions have) gives up on a message
after 5 nacked deliveries; the emulator forwards it, stamped, to the dead-letter topic, whose pull
subscription keeps it. The replay must put it back on its topic once and acknowledge it, and keep what it
cannot replay.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from google.cloud import pubsub_v1
from scripts import replay_dead_letters
from scripts.replay_dead_letters import replay

from promptdrop.testing.cloud import pull, unique_name

pytestmark = pytest.mark.integration

# The fewest delivery attempts Pub/Sub allows, so a test dead-letters a message quickly.
ATTEMPTS = 5
# The emulator holds a pull on an empty subscription for its whole timeout.
SHORT = 1.0


@dataclass
class Wiring:
    topic: str  # the source topic (inbox or requests in the deployment)
    source: str  # its subscription, with the dead-letter policy
    dead_letter_topic: str
    dead_letters: str  # the pull subscription on the dead-letter topic


@pytest.fixture
def wiring(
    project: str, publisher: pubsub_v1.PublisherClient, subscriber: pubsub_v1.SubscriberClient
) -> Wiring:
    topic = f"projects/{project}/topics/{unique_name('requests')}"
    dead_letter_topic = f"projects/{project}/topics/{unique_name('dead-letter')}"
    publisher.create_topic(name=topic)
    publisher.create_topic(name=dead_letter_topic)
    dead_letters = f"projects/{project}/subscriptions/{unique_name('dead-letter')}"
    subscriber.create_subscription(name=dead_letters, topic=dead_letter_topic, ack_deadline_seconds=60)
    source = f"projects/{project}/subscriptions/{unique_name('requests-to-message')}"
    subscriber.create_subscription(
        request={
            "name": source,
            "topic": topic,
            "ack_deadline_seconds": 10,
            "dead_letter_policy": {"dead_letter_topic": dead_letter_topic, "max_delivery_attempts": ATTEMPTS},
        }
    )
    return Wiring(topic, source, dead_letter_topic, dead_letters)


def dead_letter(subscriber: pubsub_v1.SubscriberClient, wiring: Wiring) -> None:
    """Fail every delivery of what is on the source subscription until Pub/Sub dead-letters it."""
    deadline = time.monotonic() + 30
    attempts = 0
    # The emulator forwards a message on the pull after its last failed delivery: pull until none is left.
    while time.monotonic() < deadline:
        response = subscriber.pull(subscription=wiring.source, max_messages=10, timeout=SHORT)
        ack_ids = [item.ack_id for item in response.received_messages]
        if not ack_ids and attempts >= ATTEMPTS:
            return
        if ack_ids:
            attempts += 1
            subscriber.modify_ack_deadline(
                subscription=wiring.source, ack_ids=ack_ids, ack_deadline_seconds=0
            )
    pytest.fail(f"still delivered after {attempts} failed deliveries")


def pending(subscriber: pubsub_v1.SubscriberClient, subscription: str, *, timeout: float = 3.0) -> list[Any]:
    """Messages on ``subscription`` now, released again at once (nothing is acknowledged)."""
    found: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = subscriber.pull(subscription=subscription, max_messages=10, timeout=SHORT)
        if response.received_messages:
            subscriber.modify_ack_deadline(
                subscription=subscription,
                ack_ids=[item.ack_id for item in response.received_messages],
                ack_deadline_seconds=0,
            )
        found.update({item.message.message_id: item.message for item in response.received_messages})
    return list(found.values())


def main(*argv: str) -> int:
    """The script's command line, with short pulls."""
    return replay_dead_letters.main([*argv, "--pull-timeout", str(SHORT)])


def quiet() -> Callable[[str], None]:
    lines: list[str] = []
    return lines.append


def test_a_dead_letter_is_republished_to_its_topic_once_and_acknowledged(
    publisher: pubsub_v1.PublisherClient, subscriber: pubsub_v1.SubscriberClient, wiring: Wiring
) -> None:
    """Replayed with its data and attributes (stamps dropped, an idempotency key added); none left behind."""
    body = b'{"name": "cats", "prompts": [{"prompt": "a cat", "key": "cat"}]}'
    publisher.publish(wiring.topic, body, origin="test").result(timeout=10)
    dead_letter(subscriber, wiring)
    (letter,) = pending(subscriber, wiring.dead_letters)
    assert letter.attributes[replay_dead_letters.SOURCE_SUBSCRIPTION] == wiring.source.rsplit("/", 1)[1]

    report = replay(subscriber, publisher, wiring.dead_letters, pull_timeout=SHORT, say=quiet())

    assert report.replayed == [(letter.message_id, wiring.topic)] and not report.kept
    (replayed,) = pull(subscriber, wiring.source, 2, timeout=5)  # waits for a second copy, finds none
    assert replayed.data == body
    assert dict(replayed.attributes) == {"origin": "test", "idempotency_key": letter.message_id}
    assert pending(subscriber, wiring.dead_letters) == [], "the dead letter was not acknowledged"


def test_a_dry_run_publishes_and_acknowledges_nothing(
    publisher: pubsub_v1.PublisherClient, subscriber: pubsub_v1.SubscriberClient, wiring: Wiring
) -> None:
    """--dry-run reports the message and its topic, and leaves it on the dead-letter subscription."""
    publisher.publish(wiring.topic, b"{}").result(timeout=10)
    dead_letter(subscriber, wiring)

    assert main("--subscription", wiring.dead_letters, "--dry-run") == 0

    assert pending(subscriber, wiring.source) == []
    assert len(pending(subscriber, wiring.dead_letters)) == 1


def test_max_bounds_how_many_are_replayed(
    publisher: pubsub_v1.PublisherClient, subscriber: pubsub_v1.SubscriberClient, wiring: Wiring
) -> None:
    """--max 2 of 3 dead letters replays two and leaves the third on the dead-letter subscription."""
    for n in range(3):
        publisher.publish(wiring.topic, f"{n}".encode()).result(timeout=10)
    dead_letter(subscriber, wiring)
    assert len(pending(subscriber, wiring.dead_letters)) == 3

    assert main("--subscription", wiring.dead_letters, "--max", "2") == 0

    assert len(pull(subscriber, wiring.source, 3, timeout=5)) == 2
    assert len(pending(subscriber, wiring.dead_letters)) == 1


def test_a_message_that_cannot_be_published_stays_a_dead_letter(
    publisher: pubsub_v1.PublisherClient, subscriber: pubsub_v1.SubscriberClient, wiring: Wiring, project: str
) -> None:
    """Unstamped, or whose topic is gone: kept on the subscription, not acknowledged, and the exit code says so."""
    publisher.publish(wiring.topic, b"orphan").result(timeout=10)
    dead_letter(subscriber, wiring)
    publisher.delete_topic(topic=wiring.topic)  # the source subscription now has no topic
    publisher.publish(wiring.dead_letter_topic, b"unstamped").result(timeout=10)

    report = replay(subscriber, publisher, wiring.dead_letters, pull_timeout=SHORT, say=quiet())
    assert report.replayed == [] and len(report.kept) == 2
    assert main("--subscription", wiring.dead_letters) == 1
    assert sorted(message.data for message in pending(subscriber, wiring.dead_letters)) == [
        b"orphan",
        b"unstamped",
    ]


class TopicVanishes:
    """The real publisher, except that the topic is deleted just before the publish: the publish fails."""

    def __init__(self, publisher: pubsub_v1.PublisherClient) -> None:
        self.publisher = publisher

    def publish(self, topic: str, data: bytes, **attributes: str) -> Any:
        self.publisher.delete_topic(topic=topic)
        return self.publisher.publish(topic, data, **attributes)


def test_a_failed_publish_leaves_the_dead_letter_unacknowledged(
    publisher: pubsub_v1.PublisherClient, subscriber: pubsub_v1.SubscriberClient, wiring: Wiring
) -> None:
    """The acknowledgement waits for the publish: when it fails, the message stays on the subscription."""
    publisher.publish(wiring.topic, b"precious").result(timeout=10)
    dead_letter(subscriber, wiring)

    report = replay(
        subscriber, TopicVanishes(publisher), wiring.dead_letters, pull_timeout=SHORT, say=quiet()
    )

    assert report.replayed == []
    ((_, reason),) = report.kept
    assert reason.startswith(f"publish to {wiring.topic} failed")
    assert [message.data for message in pending(subscriber, wiring.dead_letters)] == [b"precious"]
