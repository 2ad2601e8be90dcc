"""scripts/deploy_webhook.py: one webhook for the receiver's URL, its secret stored once, through the real SDK.

The google-genai SDK's ``client.webhooks`` talks HTTP to tests/support/webhook_api.py (the wire shape the SDK
sends and parses). Secret Manager is the module's own seam (``SecretStore``); the gcloud path is tested
end to end in test_deploy_script.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from google import genai
from scripts.deploy_webhook import BATCH_EVENTS, RegistrationError, register, remove, sdk_client

from promptdrop.settings import Settings
from tests.support.webhook_api import WebhookApi, running_webhook_api

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
def api() -> Iterator[WebhookApi]:
    with running_webhook_api(KEY, max_page_size=2) as served:
        yield served


@pytest.fixture
def sdk(api: WebhookApi) -> Iterator[genai.Client]:
    """The real google-genai client, pointed at the webhooks API above."""
    client = sdk_client(KEY, Settings(gemini_base_url=api.url))
    yield client
    client.close()


def test_first_registration_creates_one_webhook_and_stores_its_secret(
    api: WebhookApi, sdk: genai.Client
) -> None:
    store = Versions()
    outcome = register(sdk.webhooks, store, uri=URI, signing_secret=SIGNING, name="promptdrop")
    assert outcome == "created"
    (webhook,) = api.webhooks.values()
    assert webhook["uri"] == URI and sorted(webhook["subscribed_events"]) == sorted(BATCH_EVENTS)
    # The secret the API returned once is what was stored, and it is a Standard Webhooks secret.
    assert store.added[SIGNING] == api.issued == [api.issued[0]]
    assert api.issued[0].startswith("whsec_")


def test_a_rerun_changes_nothing(api: WebhookApi, sdk: genai.Client) -> None:
    """Listed first: the webhook exists, so no second create and no new secret version."""
    store = Versions()
    register(sdk.webhooks, store, uri=URI, signing_secret=SIGNING, name="promptdrop")
    again = register(sdk.webhooks, store, uri=URI, signing_secret=SIGNING, name="promptdrop")
    assert again == "unchanged"
    assert len(api.webhooks) == 1 and api.count("POST", "/webhooks") == 1
    assert len(store.added[SIGNING]) == 1


def test_rotate_asks_for_a_new_secret_with_24_hours_of_overlap(api: WebhookApi, sdk: genai.Client) -> None:
    store = Versions()
    register(sdk.webhooks, store, uri=URI, signing_secret=SIGNING, name="promptdrop")
    outcome = register(sdk.webhooks, store, uri=URI, signing_secret=SIGNING, name="promptdrop", rotate=True)
    assert outcome == "rotated"
    (webhook,) = api.webhooks.values()
    assert webhook["last_revocation"] == "revoke_previous_secrets_after_h24"
    assert store.added[SIGNING] == api.issued and len(api.issued) == 2 and api.issued[0] != api.issued[1]


def test_others_webhooks_stay_and_ours_is_found_on_a_later_page(api: WebhookApi, sdk: genai.Client) -> None:
    """Other URLs are never touched; with pages of two, ours (the fifth) is still found, so no duplicate."""
    for n in range(4):
        api.add(f"https://someone-else-{n}.example/hook", ["batch.succeeded"])
    store = Versions()
    register(sdk.webhooks, store, uri=URI, signing_secret=SIGNING, name="promptdrop")
    assert register(sdk.webhooks, store, uri=URI, signing_secret=SIGNING, name="promptdrop") == "unchanged"
    assert len(api.webhooks) == 5
    assert remove(sdk.webhooks, uri=URI) == 1
    assert len(api.webhooks) == 4 and all(w["uri"] != URI for w in api.webhooks.values())


@pytest.mark.parametrize(
    "existing",
    [[list(BATCH_EVENTS), list(BATCH_EVENTS)], [["batch.succeeded"]]],
    ids=["duplicates", "other-events"],
)
def test_duplicates_or_other_events_are_replaced_by_one_webhook_we_hold_the_secret_of(
    api: WebhookApi, sdk: genai.Client, existing: list[list[str]]
) -> None:
    for events in existing:
        api.add(URI, events, name="promptdrop")
    store = Versions()
    assert register(sdk.webhooks, store, uri=URI, signing_secret=SIGNING, name="promptdrop") == "created"
    (webhook,) = api.webhooks.values()
    assert sorted(webhook["subscribed_events"]) == sorted(BATCH_EVENTS)
    assert store.added[SIGNING] == [api.issued[-1]]


def test_a_secret_that_cannot_be_stored_takes_its_webhook_with_it(api: WebhookApi, sdk: genai.Client) -> None:
    """No webhook is left whose deliveries nobody could verify: a re-run creates it afresh."""
    store = Versions()
    store.fail = True
    with pytest.raises(RegistrationError, match="deleted again") as raised:
        register(sdk.webhooks, store, uri=URI, signing_secret=SIGNING, name="promptdrop")
    assert not api.webhooks
    assert api.issued[0] not in str(raised.value)
    store.fail = False
    assert register(sdk.webhooks, store, uri=URI, signing_secret=SIGNING, name="promptdrop") == "created"


def test_a_wrong_key_is_refused_and_nothing_is_created(api: WebhookApi, sdk: genai.Client) -> None:
    wrong = sdk_client("AIza-wrong", Settings(gemini_base_url=api.url))
    with pytest.raises(Exception, match="403"):
        register(wrong.webhooks, Versions(), uri=URI, signing_secret=SIGNING, name="promptdrop")
    wrong.close()
    assert not api.webhooks
