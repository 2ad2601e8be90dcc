"""Register the deployment's Gemini batch webhook and keep its signing secret in Secret Manager.

    deploy_webhook.py register --uri URL [--rotate] --project P --key-secret S --key-version V --signing-secret S2
    deploy_webhook.py remove --uri URL --project P --key-secret S --key-version V

scripts/deploy runs this after `terraform apply` (docs/DEPLOY.md, "Webhooks"). ``register`` makes sure
exactly one static webhook of the project points at the receiver's URL, subscribed to the three batch
events. It lists first: a webhook already there is left alone (its secret is already stored), unless
``--rotate`` asks for a new signing secret. Creating one (or rotating) returns the signing secret once;
it goes straight from the API's answer into a new version of the signing secret, on gcloud's standard
input: never onto a command line, into a log, onto the terminal or into Terraform. ``remove`` deletes every
webhook pointing at the URL.

The last line on standard output says what changed, for scripts/deploy: ``created`` or ``rotated`` (a new
secret version to pin), ``unchanged``, or ``removed N``. Messages go to standard error.

The Gemini API key comes from its own secret (the version the functions read), through gcloud's output.
PROMPTDROP_GEMINI_BASE_URL points the SDK elsewhere (the tests point it at the bundled emulator).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from google import genai
from google.genai import types
from google.genai.webhooks import RevocationBehavior, Webhook, WebhookSubscribedEvent

from promptdrop.settings import Settings

# The batch events: google.genai.webhooks.WebhookSubscribedEvent's, and batch.cancelled from the webhooks
# guide (2026-09-24), which the SDK's literal does not list yet (it takes any string).
BATCH_EVENTS: tuple[WebhookSubscribedEvent, ...] = (
    "batch.succeeded",
    "batch.failed",
    "batch.expired",
    "batch.cancelled",
)
SECRET_PREFIX = "whsec_"  # noqa: S105 (the prefix every signing secret has, not a secret)
# On rotation Gemini signs with the old and the new secret for 24 hours: receivers still holding the old
# one keep verifying until the new revision has replaced them.
ROTATION: RevocationBehavior = "revoke_previous_secrets_after_h24"
PAGE_SIZE = 100
Outcome = Literal["created", "rotated", "re-enabled", "unchanged"]
ENABLED = "enabled"


class RegistrationError(Exception):
    """The webhook could not be registered as asked; the message says what state it was left in."""


class SecretStore(Protocol):
    """Secret Manager, as far as this module uses it."""

    def access(self, secret: str, version: str) -> str: ...

    def add_version(self, secret: str, data: str) -> None: ...


class WebhookApi(Protocol):
    """``client.webhooks`` of the google-genai SDK, as far as this module uses it."""

    def list(self, *, page_size: int | None = ..., page_token: str | None = ...) -> object: ...

    def create(
        self, *, subscribed_events: Iterable[WebhookSubscribedEvent], uri: str, name: str | None = ...
    ) -> Webhook: ...

    def delete(self, id: str) -> object: ...

    def update(
        self, id: str, *, update_mask: str | None = ..., state: Literal["enabled"] | None = ...
    ) -> object: ...

    def rotate_signing_secret(
        self, id: str, *, revocation_behavior: RevocationBehavior | None = ...
    ) -> object: ...


@dataclass(frozen=True)
class GcloudSecrets:
    """Secret Manager through the gcloud CLI: values only ever on its standard input and output."""

    project: str

    def access(self, secret: str, version: str) -> str:
        done = self._gcloud(["versions", "access", version, "--secret", secret], data=None)
        return done.stdout.strip()

    def add_version(self, secret: str, data: str) -> None:
        self._gcloud(["versions", "add", secret, "--data-file=-"], data=data)

    def _gcloud(self, arguments: list[str], data: str | None) -> subprocess.CompletedProcess[str]:
        command = ["gcloud", "secrets", *arguments, "--project", self.project]
        done = subprocess.run(command, input=data, capture_output=True, text=True, check=False, timeout=120)
        if done.returncode != 0:
            # gcloud's error names the secret and the reason; it never echoes its input.
            raise RegistrationError(
                f"gcloud secrets {arguments[0]} {arguments[1]} failed: {done.stderr.strip()}"
            )
        return done


def sdk_client(api_key: str, settings: Settings) -> genai.Client:
    """The real SDK (the key passed explicitly, as promptdrop.adapters.gemini does). Keep the client while
    using its ``webhooks``: a collected client closes its HTTP connection."""
    options = types.HttpOptions(base_url=settings.gemini_base_url) if settings.gemini_base_url else None
    return genai.Client(vertexai=False, api_key=api_key, http_options=options)


def listed(api: WebhookApi) -> Iterator[Webhook]:
    """Every webhook of the project, page by page."""
    token: str | None = None
    while True:
        page = api.list(page_size=PAGE_SIZE, page_token=token)
        yield from getattr(page, "webhooks", None) or []
        token = getattr(page, "next_page_token", None)
        if not token:
            return


def pointing_at(api: WebhookApi, uri: str) -> list[Webhook]:
    return [webhook for webhook in listed(api) if webhook.uri == uri]


def register(
    api: WebhookApi,
    secrets: SecretStore,
    *,
    uri: str,
    signing_secret: str,
    name: str,
    rotate: bool = False,
) -> Outcome:
    """Make one webhook point at ``uri`` with the batch events; store a secret it returns (see the module)."""
    mine = pointing_at(api, uri)
    if len(mine) == 1 and set(mine[0].subscribed_events) == set(BATCH_EVENTS) and mine[0].id:
        if mine[0].state not in (None, ENABLED):
            # Disabled (after failed deliveries, pushes stop silently): enable it again, same secret.
            api.update(mine[0].id, update_mask="state", state=ENABLED)
            print(
                f"deploy: webhook {mine[0].id} was {mine[0].state}: re-enabled, batch events go to {uri} again",
                file=sys.stderr,
            )
            if not rotate:
                return "re-enabled"
        if not rotate:
            print(f"deploy: webhook {mine[0].id} already sends batch events to {uri}", file=sys.stderr)
            return "unchanged"
        answer = api.rotate_signing_secret(mine[0].id, revocation_behavior=ROTATION)
        _store(secrets, signing_secret, getattr(answer, "secret", None), undo=None)
        print(f"deploy: rotated the signing secret of webhook {mine[0].id}", file=sys.stderr)
        return "rotated"
    # None, several (an interrupted run), or one with other events: start again with one whose secret we hold.
    for stale in mine:
        if stale.id:
            api.delete(stale.id)
            print(f"deploy: deleted webhook {stale.id} (replaced)", file=sys.stderr)
    created = api.create(subscribed_events=list(BATCH_EVENTS), uri=uri, name=name)
    _store(secrets, signing_secret, created.new_signing_secret, undo=lambda: api.delete(str(created.id)))
    print(f"deploy: registered webhook {created.id}: batch events go to {uri}", file=sys.stderr)
    return "created"


def remove(api: WebhookApi, *, uri: str) -> int:
    """Delete every webhook pointing at ``uri``; how many there were."""
    mine = pointing_at(api, uri)
    for webhook in mine:
        if webhook.id:
            api.delete(webhook.id)
            print(f"deploy: deleted webhook {webhook.id} ({uri})", file=sys.stderr)
    return len(mine)


def _store(
    secrets: SecretStore, signing_secret: str, value: str | None, undo: Callable[[], object] | None
) -> None:
    """Add ``value`` as a new version of the signing secret. A webhook whose secret could not be kept is
    deleted again (``undo``), so that a re-run creates a new one instead of leaving deliveries unverifiable."""
    try:
        if not value or not value.startswith(SECRET_PREFIX):
            raise RegistrationError("the API answered without a whsec_ signing secret")
        secrets.add_version(signing_secret, value)
    except Exception as error:
        left = "the rotation happened at Gemini: run scripts/deploy --rotate-webhook-secret again"
        if undo is not None:
            try:
                undo()
                left = "the new webhook was deleted again; scripts/deploy registers it afresh"
            except Exception:  # the original error matters more; say what is left behind
                left = "the new webhook could not be deleted: run scripts/deploy --rotate-webhook-secret"
        raise RegistrationError(f"could not store the signing secret ({error}); {left}") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["register", "remove"])
    parser.add_argument("--uri", required=True, help="the receiver's URL (terraform output webhook_url)")
    parser.add_argument("--project", required=True)
    parser.add_argument("--key-secret", required=True, help="the secret that holds the Gemini API key")
    parser.add_argument("--key-version", required=True, help="its version the functions read")
    parser.add_argument("--signing-secret", help="the secret that keeps the webhook signing secret")
    parser.add_argument("--name", default="promptdrop", help="the webhook's display name")
    parser.add_argument(
        "--rotate", action="store_true", help="give the existing webhook a new signing secret"
    )
    args = parser.parse_args(argv)
    secrets = GcloudSecrets(args.project)
    api_key = ""
    try:
        api_key = secrets.access(args.key_secret, args.key_version)
        client = sdk_client(api_key, Settings.from_env())
        api: WebhookApi = client.webhooks
        if args.action == "remove":
            print(f"removed {remove(api, uri=args.uri)}")
            return 0
        if not args.signing_secret:
            parser.error("register needs --signing-secret")
        outcome = register(
            api, secrets, uri=args.uri, signing_secret=args.signing_secret, name=args.name, rotate=args.rotate
        )
        print(outcome)
        return 0
    except RegistrationError as error:
        print(f"deploy: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # the SDK's errors (status and the API's reason), with the key cut out
        message = f"{type(error).__name__}: {error}"
        print(
            f"deploy: the Gemini webhooks API call failed: {message.replace(api_key, '<key>') if api_key else message}",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
