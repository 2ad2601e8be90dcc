"""The pure parts of scripts/replay_dead_letters.py: where a dead letter came from, what it carries back."""

from __future__ import annotations

import pytest
from scripts.replay_dead_letters import replayed_attributes, source_subscription


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        (
            {
                "CloudPubSubDeadLetterSourceSubscription": "s",
                "CloudPubSubDeadLetterSourceSubscriptionProject": "p",
            },
            "projects/p/subscriptions/s",
        ),
        (
            {
                "CloudPubSubDeadLetterSourceSubscription": "projects/p/subscriptions/s",
                "CloudPubSubDeadLetterSourceSubscriptionProject": "p",
            },
            "projects/p/subscriptions/s",
        ),
        ({"CloudPubSubDeadLetterSourceSubscription": "s"}, None),
        ({"bucketId": "b"}, None),
    ],
    ids=["id", "path", "no-project", "unstamped"],
)
def test_source_subscription_comes_from_the_dead_letter_stamps(
    attributes: dict[str, str], expected: str | None
) -> None:
    """The stamps name the subscription (and its project); without both there is no source."""
    assert source_subscription(attributes) == expected


def test_replayed_attributes_drop_the_stamps_and_carry_an_idempotency_key() -> None:
    """The message's own attributes go back; the stamps do not; the dead letter's id becomes the key."""
    stamped = {
        "bucketId": "b",
        "CloudPubSubDeadLetterSourceDeliveryCount": "100",
        "CloudPubSubDeadLetterSourceSubscription": "s",
    }
    assert replayed_attributes(stamped, "42") == {"bucketId": "b", "idempotency_key": "42"}


def test_an_idempotency_key_the_sender_chose_is_kept() -> None:
    """A request's own idempotency_key wins: its claim token must not change on replay."""
    assert replayed_attributes({"idempotency_key": "mine"}, "42") == {"idempotency_key": "mine"}
