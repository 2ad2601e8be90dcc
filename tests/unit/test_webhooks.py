"""Webhook deliveries (pure): verification through standardwebhooks with typed errors, and event parsing."""

from __future__ import annotations

import base64
import time

import orjson
import pytest

from promptdrop.errors import ConfigurationError
from promptdrop.settings import Settings
from promptdrop.webhooks import (
    BATCH_EVENTS,
    BatchEvent,
    BodyError,
    SignatureError,
    Verifier,
    event_body,
    normalize_batch_name,
    parse_event,
)

SECRET = "whsec_" + base64.b64encode(b"unit-test-webhook-secret-5f0e").decode()
BODY = orjson.dumps(event_body("batch.succeeded", "batches/abc", timestamp="2026-11-30T12:00:00Z"))


def headers(
    body: bytes = BODY, *, secret: str = SECRET, at: float | None = None, msg: str = "msg_1"
) -> dict[str, str]:
    when = int(time.time() if at is None else at)
    return {
        "Webhook-Id": msg,
        "Webhook-Timestamp": str(when),
        "Webhook-Signature": Verifier(secret).sign(msg, when, body),
    }


def test_a_genuine_delivery_verifies_to_its_json_whatever_the_header_case() -> None:
    assert Verifier(SECRET).verify(BODY, headers(), max_bytes=65536) == orjson.loads(BODY)


def test_a_rotation_sends_several_signatures_and_one_match_is_enough() -> None:
    other = "whsec_" + base64.b64encode(b"the-old-secret-being-rotated").decode()
    mine = headers()
    theirs = headers(secret=other)
    both = {**mine, "Webhook-Signature": theirs["Webhook-Signature"] + " " + mine["Webhook-Signature"]}
    assert Verifier(SECRET).verify(BODY, both, max_bytes=65536)["type"] == "batch.succeeded"


@pytest.mark.parametrize(
    ("case", "make"),
    [
        ("no headers", lambda: {}),
        ("another secret", lambda: headers(secret="whsec_" + base64.b64encode(b"another").decode())),
        ("no comma", lambda: {**headers(), "Webhook-Signature": "v1abc"}),
        ("bad base64", lambda: {**headers(), "Webhook-Signature": "v1,###"}),
        ("timestamp not a number", lambda: {**headers(), "Webhook-Timestamp": "yesterday"}),
        ("5 min 30 s old", lambda: headers(at=time.time() - 330)),
        ("5 min 30 s ahead", lambda: headers(at=time.time() + 330)),
        ("another id", lambda: {**headers(), "Webhook-Id": "msg_2"}),
        (
            "only a v2 signature",
            lambda: {**headers(), "Webhook-Signature": "v2," + headers()["Webhook-Signature"][3:]},
        ),
    ],
)
def test_unsigned_forged_malformed_and_stale_deliveries_are_signature_errors(case: str, make: object) -> None:
    with pytest.raises(SignatureError):
        Verifier(SECRET).verify(BODY, make(), max_bytes=65536)  # type: ignore[operator]


def test_size_is_checked_before_the_signature_and_json_after_it() -> None:
    with pytest.raises(BodyError, match="limit"):
        Verifier(SECRET).verify(BODY, {}, max_bytes=len(BODY) - 1)
    with pytest.raises(BodyError, match="UTF-8"):
        Verifier(SECRET).verify(b"\xff", {}, max_bytes=100)
    with pytest.raises(SignatureError):
        Verifier(SECRET).verify(b"{not json", {}, max_bytes=100)
    with pytest.raises(BodyError, match="not JSON"):
        Verifier(SECRET).verify(b"{not json", headers(b"{not json"), max_bytes=100)


@pytest.mark.parametrize("secret", ["", "abc", SECRET[6:], "whsec_"])
def test_a_malformed_secret_is_a_configuration_error_that_does_not_echo_it(secret: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Verifier(secret)
    assert not secret[6:] or secret[6:] not in str(caught.value)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"type": "batch.succeeded", "data": {"id": "batches/abc"}}, "batches/abc"),
        ({"type": "batch.failed", "data": {"id": "abc", "error_code": 13}}, "batches/abc"),
        ({"type": "batch.expired", "data": {"name": "batches/abc"}}, "batches/abc"),
    ],
)
def test_batch_events_name_their_batch_in_either_spelling(payload: dict[str, object], expected: str) -> None:
    event = parse_event(payload, "msg_9")
    assert event is not None
    assert (event.delivery_id, event.type, event.batch_name) == ("msg_9", str(payload["type"]), expected)


def test_a_failed_batch_event_carries_its_error_fields_and_cancelled_is_a_batch_event() -> None:
    """The guide's batch.failed error_code / error_message (for the log) and its new batch.cancelled."""
    failed = parse_event(
        {"type": "batch.failed", "data": {"id": "abc", "error_code": 13, "error_message": "internal"}}, "m"
    )
    assert failed == BatchEvent("m", "batch.failed", "batches/abc", error_code="13", error_message="internal")
    cancelled = parse_event({"type": "batch.cancelled", "data": {"id": "abc"}}, "m")
    assert cancelled == BatchEvent("m", "batch.cancelled", "batches/abc")
    assert "batch.cancelled" in BATCH_EVENTS


def test_other_events_are_none_and_broken_bodies_are_body_errors() -> None:
    assert parse_event({"type": "interaction.completed", "data": {"id": "x"}}, "m") is None
    for broken in (
        [],
        {"data": {}},
        {"type": "batch.succeeded"},
        {"type": "batch.succeeded", "data": {"id": 5}},
    ):
        with pytest.raises(BodyError):
            parse_event(broken, "m")
    for bad in ("", "batches/", "batches/a/b", "a b", "../x"):
        with pytest.raises(BodyError):
            normalize_batch_name(bad)


def test_webhook_settings_default_off_and_parse_from_the_environment() -> None:
    default = Settings.from_env({})
    assert (default.webhooks_on, default.job_poll_interval, default.webhook_max_bytes) == (False, 0.0, 65536)
    on = Settings.from_env(
        {
            "PROMPTDROP_WEBHOOKS": "on",
            "PROMPTDROP_WEBHOOK_POLL_SECONDS": "30m",
            "PROMPTDROP_WEBHOOK_SECRET": SECRET,
        }
    )
    assert (on.webhooks_on, on.job_poll_interval) == (True, 1800.0)
    assert on.webhook_secret is not None and SECRET not in repr(on)
    with pytest.raises(ConfigurationError, match="PROMPTDROP_WEBHOOKS") as caught:
        Settings.from_env({"PROMPTDROP_WEBHOOKS": "maybe", "PROMPTDROP_WEBHOOK_SECRET": SECRET})
    assert SECRET not in str(caught.value)
