"""Replay dead letters: republish each message of the dead-letter subscription to the topic it came from.

    scripts/replay-dead-letters [--dry-run] [--max N] [--subscription projects/P/subscriptions/S]

Pub/Sub stamps a dead-lettered message with the subscription it failed on
(``CloudPubSubDeadLetterSourceSubscription`` and ``...SubscriptionProject``); that subscription's topic is
where the message goes back, with its data and its own attributes (the ``CloudPubSubDeadLetter*`` stamps
dropped). A message is acknowledged only after its publish succeeded: one whose source is unknown or
whose publish failed stays on the dead-letter subscription, released at once for the next attempt.

At least once: a publish that succeeded followed by a lost acknowledgement replays the message again.
Each replayed message therefore carries an ``idempotency_key`` attribute (the dead letter's message id,
unless it had one), so a request replayed twice starts one run; a file notification is deduplicated by
its object generation anyway.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.api_core import exceptions as google_exceptions
from google.cloud import pubsub_v1

STAMP_PREFIX = "CloudPubSubDeadLetter"
SOURCE_SUBSCRIPTION = "CloudPubSubDeadLetterSourceSubscription"
SOURCE_PROJECT = "CloudPubSubDeadLetterSourceSubscriptionProject"
DELIVERY_COUNT = "CloudPubSubDeadLetterSourceDeliveryCount"
IDEMPOTENCY_KEY = "idempotency_key"  # what promptdrop.events reads as a request's claim token
PULL_BATCH = 100
PULL_TIMEOUT = 10.0  # seconds one pull may wait for messages (an empty subscription waits this long)
PUBLISH_TIMEOUT = 60.0
# Pub/Sub may answer a pull with nothing while messages remain; this many empty answers in a row end the run.
EMPTY_PULLS_TO_STOP = 2


def source_subscription(attributes: Mapping[str, str]) -> str | None:
    """The path of the subscription a dead letter failed on, from Pub/Sub's stamps; None if unstamped."""
    name, project = attributes.get(SOURCE_SUBSCRIPTION), attributes.get(SOURCE_PROJECT)
    if not name or not project:
        return None
    return name if name.startswith("projects/") else f"projects/{project}/subscriptions/{name}"


def replayed_attributes(attributes: Mapping[str, str], dead_letter_id: str) -> dict[str, str]:
    """The message's own attributes, without Pub/Sub's dead-letter stamps, with an idempotency key."""
    kept = {key: value for key, value in attributes.items() if not key.startswith(STAMP_PREFIX)}
    kept.setdefault(IDEMPOTENCY_KEY, dead_letter_id)
    return kept


@dataclass
class Report:
    """What happened to each dead letter looked at: replayed (to which topic) or kept (why)."""

    replayed: list[tuple[str, str]] = field(default_factory=list)  # (message id, topic)
    kept: list[tuple[str, str]] = field(default_factory=list)  # (message id, reason)
    dry_run: bool = False

    @property
    def looked_at(self) -> int:
        return len(self.replayed) + len(self.kept)


class _Topics:
    """Source subscription -> its topic, looked up once each; None (with the reason) when it cannot be."""

    def __init__(self, subscriber: Any) -> None:
        self._subscriber = subscriber
        self._known: dict[str, tuple[str | None, str]] = {}

    def of(self, subscription: str) -> tuple[str | None, str]:
        if subscription not in self._known:
            try:
                topic = str(self._subscriber.get_subscription(subscription=subscription).topic)
            except google_exceptions.GoogleAPICallError as exc:
                self._known[subscription] = (None, f"cannot read {subscription}: {exc.message}")
            else:
                # A subscription outlives its topic; Pub/Sub then names the topic "_deleted-topic_".
                usable = topic.startswith("projects/")
                self._known[subscription] = (
                    (topic, "") if usable else (None, f"{subscription} has no topic any more ({topic})")
                )
        return self._known[subscription]


def replay(
    subscriber: Any,
    publisher: Any,
    subscription: str,
    *,
    max_messages: int | None = None,
    dry_run: bool = False,
    pull_timeout: float = PULL_TIMEOUT,
    say: Callable[[str], None] = print,
) -> Report:
    """Republish up to ``max_messages`` dead letters of ``subscription`` to their topics (see the module doc)."""
    report = Report(dry_run=dry_run)
    topics = _Topics(subscriber)
    seen: set[str] = set()
    held: list[str] = []  # ack ids of messages left on the subscription, released at the end
    empty_pulls = 0
    try:
        while max_messages is None or report.looked_at < max_messages:
            wanted = PULL_BATCH if max_messages is None else min(PULL_BATCH, max_messages - report.looked_at)
            received = _pull(subscriber, subscription, wanted, pull_timeout)
            # Messages we hold come back once their ack deadline passes: not new work.
            fresh = [item for item in received if item.message.message_id not in seen]
            held += [item.ack_id for item in received if item.message.message_id in seen]
            if not fresh:
                empty_pulls += 1
                if empty_pulls >= EMPTY_PULLS_TO_STOP:
                    break
                continue
            empty_pulls = 0
            _replay_batch(subscriber, publisher, subscription, fresh, topics, report, held, seen, say)
    finally:
        if held:
            # Back on the subscription now rather than at the end of the ack deadline.
            subscriber.modify_ack_deadline(subscription=subscription, ack_ids=held, ack_deadline_seconds=0)
    verb = "would replay" if dry_run else "replayed"
    say(f"{verb} {len(report.replayed)}, kept {len(report.kept)} on {subscription}")
    return report


def _pull(subscriber: Any, subscription: str, wanted: int, timeout: float) -> list[Any]:
    try:
        response = subscriber.pull(subscription=subscription, max_messages=wanted, timeout=timeout)
    except google_exceptions.DeadlineExceeded:
        return []
    return list(response.received_messages)


def _replay_batch(
    subscriber: Any,
    publisher: Any,
    subscription: str,
    batch: list[Any],
    topics: _Topics,
    report: Report,
    held: list[str],
    seen: set[str],
    say: Callable[[str], None],
) -> None:
    publishing: list[tuple[Any, str, Any]] = []
    for item in batch:
        message = item.message
        seen.add(message.message_id)
        attributes = dict(message.attributes)
        source = source_subscription(attributes)
        topic, reason = topics.of(source) if source else (None, "no dead-letter stamp names its subscription")
        if topic is None:
            report.kept.append((message.message_id, reason))
            held.append(item.ack_id)
            say(f"kept {message.message_id}: {reason}")
            continue
        if report.dry_run:
            report.replayed.append((message.message_id, topic))
            held.append(item.ack_id)
            count = attributes.get(DELIVERY_COUNT, "?")
            say(
                f"would replay {message.message_id} to {topic} ({len(message.data)} bytes, {count} deliveries)"
            )
            continue
        try:
            future = publisher.publish(
                topic, message.data, **replayed_attributes(attributes, message.message_id)
            )
        except (google_exceptions.GoogleAPICallError, ValueError) as exc:
            _keep(report, held, item, f"publish to {topic} failed: {exc}", say)
            continue
        publishing.append((item, topic, future))

    acknowledged: list[str] = []
    for item, topic, future in publishing:
        try:
            future.result(timeout=PUBLISH_TIMEOUT)
        except Exception as exc:  # any failure of this publish keeps the message, and is reported
            _keep(report, held, item, f"publish to {topic} failed: {exc}", say)
            continue
        acknowledged.append(item.ack_id)
        report.replayed.append((item.message.message_id, topic))
        say(f"replayed {item.message.message_id} to {topic}")
    if acknowledged:
        subscriber.acknowledge(subscription=subscription, ack_ids=acknowledged)


def _keep(report: Report, held: list[str], item: Any, reason: str, say: Callable[[str], None]) -> None:
    report.kept.append((item.message.message_id, reason))
    held.append(item.ack_id)
    say(f"kept {item.message.message_id}: {reason}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="replay-dead-letters",
        description="Republish the dead letters of a pull subscription to the topics they came from; "
        "each is acknowledged only after its publish succeeded.",
    )
    parser.add_argument(
        "--subscription",
        required=True,
        help="projects/P/subscriptions/S (scripts/replay-dead-letters reads it from terraform output)",
    )
    parser.add_argument("--max", type=int, default=None, metavar="N", help="look at N messages at most")
    parser.add_argument(
        "--dry-run", action="store_true", help="say what would be replayed; publish and acknowledge nothing"
    )
    parser.add_argument(
        "--pull-timeout",
        type=float,
        default=PULL_TIMEOUT,
        metavar="SECONDS",
        help=f"how long one pull waits on an empty subscription (default {PULL_TIMEOUT:g})",
    )
    args = parser.parse_args(argv)
    if args.max is not None and args.max < 1:
        parser.error("--max must be at least 1")
    if not args.subscription.startswith("projects/") or "/subscriptions/" not in args.subscription:
        parser.error("--subscription must be a path: projects/P/subscriptions/S")

    subscriber = pubsub_v1.SubscriberClient()
    publisher = pubsub_v1.PublisherClient()
    try:
        report = replay(
            subscriber,
            publisher,
            args.subscription,
            max_messages=args.max,
            dry_run=args.dry_run,
            pull_timeout=args.pull_timeout,
        )
    finally:
        subscriber.close()
    # A message kept in a real run needs attention; it is still on the subscription.
    return 1 if report.kept and not args.dry_run else 0


if __name__ == "__main__":
    sys.exit(main())
