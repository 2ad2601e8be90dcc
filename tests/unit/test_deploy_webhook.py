"""scripts/deploy_webhook.py: one webhook for the receiver's URL, its secret stored once, through the real SDK.

The google-genai SDK's ``client.webhooks`` talks HTTP to the bundled Gemini emulator (its static-webhook API,
docs/EMULATOR.md), which accepts only the test's key. What the emulator registered is read back through the
same SDK; the secrets a webhook signs with (the API never shows them again) from the in-process emulator.
Secret Manager is the module's own seam (``SecretStore``); the gcloud path is tested end to end in
test_deploy_script.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from google import genai
from google.genai.webhooks import Webhook
from scripts import deploy_webhook
from scripts.deploy_webhook import BATCH_EVENTS, RegistrationError, register, remove, sdk_client

from promptdrop.settings import Settings
from promptdrop.testing.emulator import RunningEmulator, create_inline, running_emulator

KEY = "AIza-webhook-test-key-1c9e"
URI = "https://promptdrop-on-batch-webhook-abc-uc.a.run.app"
SIGNING = "promptdrop-webhook-signing-secret"


class Versions:
    """Secret Manager versions by secret; ``fail`` makes add_version raise."""

    def __init__(self) -> None:
        self.added: dict[str, list[str]] = {}
        self.fail = False

    def access(self, secret: str, version: str) -> str:
        return self.added[secret][int(version) - 1]

    def add_version(self, secret: str, data: str) -> None:
        if self.fail:
            raise RegistrationError("gcloud secrets versions add failed: PERMISSION_DENIED")
        self.added.setdefault(secret, []).append(data)


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[RunningEmulator]:
    with running_emulator(tmp_path / "emulator", api_key=KEY, require_key=True) as served:
        yield served


@pytest.fixture
def sdk(emulator: RunningEmulator) -> Iterator[genai.Client]:
    """The real google-genai client, built the way the script builds it, pointed at the emulator."""
    client = sdk_client(KEY, Settings(gemini_base_url=emulator.url))
    yield client
    client.close()


def registered(sdk: genai.Client) -> list[Webhook]:
    """Every webhook of the project, as the API lists them (page by page)."""
    found: list[Webhook] = []
    token: str | None = None
    while True:
        page = sdk.webhooks.list(page_size=1000, page_token=token)
        found += page.webhooks or []
        token = page.next_page_token
        if not token:
            return found


def calls(emulator: RunningEmulator, route: str) -> int:
    counted: dict[str, int] = emulator.server.stats()["calls_by_route"]  # type: ignore[assignment]
    return counted.get(route, 0)


def test_first_registration_creates_one_webhook_and_stores_its_secret(
    emulator: RunningEmulator, sdk: genai.Client
) -> None:
    store = Versions()
    outcome = register(sdk.webhooks, store, uri=URI, signing_secret=SIGNING, name="promptdrop")
    assert outcome == "created"
    (webhook,) = registered(sdk)
    assert webhook.uri == URI and sorted(webhook.subscribed_events) == sorted(BATCH_EVENTS)
    assert webhook.id is not None and webhook.new_signing_secret is None  # listed: no secret
    # The secret the API returned once is what was stored: the one the emulator signs deliveries with.
    (signing,) = emulator.server.webhook_secrets(webhook.id)
    assert store.added[SIGNING] == [signing]
    assert signing.startswith("whsec_")


def test_a_rerun_changes_nothing(emulator: RunningEmulator, sdk: genai.Client) -> None:
    """Listed first: the webhook exists, so no second create and no new secret version."""
    store = Versions()
    register(sdk.webhooks, store, uri=URI, signing_secret=SIGNING, name="promptdrop")
    again = register(sdk.webhooks, store, uri=URI, signing_secret=SIGNING, name="promptdrop")
    assert again == "unchanged"
    assert len(registered(sdk)) == 1 and calls(emulator, "webhook_create") == 1
    assert len(store.added[SIGNING]) == 1


def test_rotate_asks_for_a_new_secret_with_24_hours_of_overlap(
    emulator: RunningEmulator, sdk: genai.Client
) -> None:
    store = Versions()
    register(sdk.webhooks, store, uri=URI, signing_secret=SIGNING, name="promptdrop")
    before = datetime.now(UTC)
    outcome = register(sdk.webhooks, store, uri=URI, signing_secret=SIGNING, name="promptdrop", rotate=True)
    assert outcome == "rotated"
    (webhook,) = registered(sdk)
    assert webhook.id is not None
    # Both secrets sign for now, the new one first; the old one expires in 24 hours (not at once).
    new, old = emulator.server.webhook_secrets(webhook.id)
    assert store.added[SIGNING] == [old, new] and old != new
    assert webhook.signing_secrets is not None
    (current, previous) = webhook.signing_secrets
    assert current.expire_time is None and previous.expire_time is not None
    assert timedelta(hours=23, minutes=59) < previous.expire_time - before <= timedelta(hours=24, minutes=1)
    assert calls(emulator, "webhook_rotate") == 1 and calls(emulator, "webhook_create") == 1


def test_others_webhooks_stay_and_ours_is_found_on_a_later_page(
    emulator: RunningEmulator, sdk: genai.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Other URLs are never touched; with pages of two (the script asks for 100: four webhooks stand in for a
    hundred) and the four newer webhooks of others listed first, ours is on the third page and still found,
    so no duplicate."""
    monkeypatch.setattr(deploy_webhook, "PAGE_SIZE", 2)
    store = Versions()
    register(sdk.webhooks, store, uri=URI, signing_secret=SIGNING, name="promptdrop")
    for n in range(4):
        sdk.webhooks.create(
            subscribed_events=["batch.succeeded"], uri=f"https://someone-else-{n}.example/hook"
        )
    lists = calls(emulator, "webhook_list")
    assert register(sdk.webhooks, store, uri=URI, signing_secret=SIGNING, name="promptdrop") == "unchanged"
    assert calls(emulator, "webhook_list") - lists == 3  # three pages of two
    assert len(registered(sdk)) == 5
    assert remove(sdk.webhooks, uri=URI) == 1
    left = registered(sdk)
    assert len(left) == 4 and all(w.uri != URI for w in left)


@pytest.mark.parametrize(
    "existing",
    [[list(BATCH_EVENTS), list(BATCH_EVENTS)], [["batch.succeeded"]]],
    ids=["duplicates", "other-events"],
)
def test_duplicates_or_other_events_are_replaced_by_one_webhook_we_hold_the_secret_of(
    emulator: RunningEmulator, sdk: genai.Client, existing: list[list[str]]
) -> None:
    for events in existing:
        sdk.webhooks.create(subscribed_events=events, uri=URI, name="promptdrop")  # type: ignore[arg-type]
    store = Versions()
    assert register(sdk.webhooks, store, uri=URI, signing_secret=SIGNING, name="promptdrop") == "created"
    (webhook,) = registered(sdk)
    assert webhook.id is not None
    assert sorted(webhook.subscribed_events) == sorted(BATCH_EVENTS)
    assert store.added[SIGNING] == emulator.server.webhook_secrets(webhook.id)


def test_a_secret_that_cannot_be_stored_takes_its_webhook_with_it(
    emulator: RunningEmulator, sdk: genai.Client
) -> None:
    """No webhook is left whose deliveries nobody could verify: a re-run creates it afresh."""
    store = Versions()
    store.fail = True
    with pytest.raises(RegistrationError, match="deleted again") as raised:
        register(sdk.webhooks, store, uri=URI, signing_secret=SIGNING, name="promptdrop")
    assert not registered(sdk)
    assert calls(emulator, "webhook_create") == 1 and calls(emulator, "webhook_delete") == 1
    assert "whsec_" not in str(raised.value)
    store.fail = False
    assert register(sdk.webhooks, store, uri=URI, signing_secret=SIGNING, name="promptdrop") == "created"


def test_a_wrong_key_is_refused_and_nothing_is_created(emulator: RunningEmulator, sdk: genai.Client) -> None:
    wrong = sdk_client("AIza-wrong", Settings(gemini_base_url=emulator.url))
    with pytest.raises(Exception, match="403"):
        register(wrong.webhooks, Versions(), uri=URI, signing_secret=SIGNING, name="promptdrop")
    wrong.close()
    assert not registered(sdk)


def test_a_webhook_disabled_after_failed_deliveries_is_re_enabled(tmp_path: Path) -> None:
    """Gemini disables a webhook whose deliveries keep failing, and pushes stop silently: a deploy re-run
    enables it again (same webhook, same secret) and says so, instead of reporting it "unchanged"."""
    dead = "http://127.0.0.1:9/hook"  # nothing listens: every delivery fails at once
    options = {
        "webhook_attempts": 1,
        "webhook_disable_after": 1,
        "pending_seconds": 0.05,
        "running_seconds": 0.05,
    }
    with running_emulator(tmp_path / "emu", api_key=KEY, require_key=True, **options) as served:
        client = sdk_client(KEY, Settings(gemini_base_url=served.url))
        store = Versions()
        assert (
            register(client.webhooks, store, uri=dead, signing_secret=SIGNING, name="promptdrop") == "created"
        )
        name = create_inline(client, "a red kite")
        deadline = time.monotonic() + 20
        while registered(client)[0].state != "disabled_due_to_failed_deliveries":
            assert time.monotonic() < deadline, registered(client)
            time.sleep(0.05)
        (before,) = registered(client)
        assert client.batches.get(name=name).done
        outcome = register(client.webhooks, store, uri=dead, signing_secret=SIGNING, name="promptdrop")
        assert outcome == "re-enabled"
        (after,) = registered(client)
        assert (after.id, after.state) == (before.id, "enabled")
        assert len(store.added[SIGNING]) == 1  # the stored secret still signs: nothing new to pin
        assert (
            register(client.webhooks, store, uri=dead, signing_secret=SIGNING, name="promptdrop")
            == "unchanged"
        )
        client.close()
