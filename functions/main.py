"""Cloud Functions (2nd gen) entry points: thin adapters from CloudEvents to promptdrop's use cases.

Each function parses its event into a typed object, calls one use case, and returns normally on success
or after recording a permanent failure (bad input never becomes a retry storm). It raises only for
transient failures, which Pub/Sub redelivers with backoff (the file and request paths are fed by push
subscriptions with a dead-letter topic; see infra/main.tf).
A run whose submission failed transiently stays RECEIVED and ``poll_jobs`` retries it with backoff.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final

import flask
import functions_framework
from cloudevents.http import CloudEvent
from werkzeug.exceptions import ServiceUnavailable

from promptdrop import events, logs
from promptdrop.errors import ConfigurationError, InputError, PermanentError, TransientError
from promptdrop.events import StorageObject
from promptdrop.settings import Settings
from promptdrop.usecases import poll, receive, webhook
from promptdrop.usecases.context import Context
from promptdrop.webhooks import Verifier
from promptdrop.wiring import build_context

PUBSUB_PUBLISHED: Final = "google.cloud.pubsub.topic.v1.messagePublished"
STORAGE_FINALIZED: Final = "google.cloud.storage.object.v1.finalized"

# What each entry point accepts; the Terraform consistency test checks the triggers against this.
ACCEPTED_EVENT_TYPES: Final[dict[str, frozenset[str]]] = {
    "on_prompt_file": frozenset({PUBSUB_PUBLISHED, STORAGE_FINALIZED}),
    "on_prompt_message": frozenset({PUBSUB_PUBLISHED}),
    "poll_jobs": frozenset({PUBSUB_PUBLISHED}),
    "on_now_chunk": frozenset({PUBSUB_PUBLISHED}),
}
# HTTP entry points (no CloudEvent trigger): Gemini's webhook calls this one.
HTTP_FUNCTIONS: Final = frozenset({"on_batch_webhook"})

SETTINGS: Final = Settings.from_env()
if SETTINGS.in_cloud:
    # A real deployment refuses to start on local defaults: no silent fallback (DESIGN rule 8).
    SETTINGS.require_cloud_ready()
logs.configure("json" if SETTINGS.in_cloud else SETTINGS.log_format)
log = logging.getLogger("promptdrop.functions")

_context: Context | None = None
_verifier: Verifier | None = None


def context() -> Context:
    """Built on first use and kept while the instance is warm (clients are reused across invocations)."""
    global _context
    if _context is None:
        _context = build_context(SETTINGS)
    return _context


def verifier() -> Verifier | None:
    """The webhook signature checker (None without a secret: every delivery is refused with a 500)."""
    global _verifier
    if _verifier is None and SETTINGS.webhook_secret is not None:
        logs.register_secret(SETTINGS.webhook_secret.get_secret_value())
        _verifier = Verifier(SETTINGS.webhook_secret.get_secret_value())
    return _verifier


def _permanent(what: str, exc: PermanentError, **fields: Any) -> None:
    log.error("%s: %s (permanent; not retried)", what, exc, extra=fields)


@functions_framework.cloud_event
def on_prompt_file(event: CloudEvent) -> None:
    """A prompt file landed in the inbox (bucket notification via Pub/Sub, or the direct storage event)."""
    try:
        obj = _storage_object(event)
    except InputError as exc:
        _permanent("unreadable storage event", exc)
        return
    if obj is None:
        return
    ctx = context()
    try:
        receipt = receive.receive_file(ctx, obj)
    except TransientError as exc:
        # Expected under faults: answered 503 without a traceback (Flask logs one for an exception that
        # escapes); any non-2xx makes Pub/Sub redeliver.
        log.warning("transient failure claiming %s: %s; Pub/Sub will redeliver", obj.name, exc)
        raise ServiceUnavailable(f"transient failure claiming {obj.name}") from exc
    except PermanentError as exc:
        _permanent(f"cannot take {obj.name}", exc)
        return
    if receipt.run is None:
        log.info("ignored: %s", receipt.ignored)
    else:
        log.info(
            "run %s is %s", receipt.run.run_id, receipt.run.state.value, extra={"run_id": receipt.run.run_id}
        )


def _storage_object(event: CloudEvent) -> StorageObject | None:
    """The finalized object named by either event shape, or None when the event is not for us."""
    event_type = event["type"]
    if event_type == PUBSUB_PUBLISHED:
        message = events.parse_pubsub_envelope(event.data or {})
        parsed = events.parse_storage_notification(message.attributes, message.data)
    elif event_type == STORAGE_FINALIZED:
        parsed = events.parse_storage_object(event.data or {})
    else:
        log.warning("on_prompt_file ignores events of type %s", event_type)
        return None
    if parsed.event_type != events.OBJECT_FINALIZE:
        log.info("ignored %s of %s", parsed.event_type, parsed.name)
        return None
    if parsed.bucket != SETTINGS.bucket_name:
        log.warning(
            "ignored an object of bucket %s (this deployment serves %s)", parsed.bucket, SETTINGS.bucket_name
        )
        return None
    # The notification is filtered to the inbox, but the direct trigger is not: check the prefix here too.
    if not parsed.name.startswith(SETTINGS.inbox_prefix):
        log.info("ignored %s: outside the inbox prefix %s", parsed.name, SETTINGS.inbox_prefix)
        return None
    if parsed.size == 0:
        log.info("ignored %s: zero-byte object (uploaders create an empty object first)", parsed.name)
        return None
    return parsed


@functions_framework.cloud_event
def on_prompt_message(event: CloudEvent) -> None:
    """A request on the requests topic: inline prompts, or the ``gs://`` uri of a prompt file."""
    try:
        message = events.parse_pubsub_envelope(event.data or {})
        request = events.parse_request_message(message.data, message.attributes, message.message_id)
    except InputError as exc:
        _permanent("unusable request message", exc)
        return
    ctx = context()
    try:
        if request.is_inline:
            receipt = receive.receive_inline(
                ctx,
                receive.InlineRequest(
                    claim_token=request.claim_token,
                    name=request.name or "message",
                    prompts=request.prompts,
                    defaults=request.defaults,
                ),
            )
        else:
            receipt = _receive_uri(ctx, request)
    except TransientError as exc:
        # As on_prompt_file: a 503 without a traceback, and Pub/Sub redelivers.
        log.warning("transient failure on message %s: %s; Pub/Sub will redeliver", message.message_id, exc)
        raise ServiceUnavailable(f"transient failure on message {message.message_id}") from exc
    except PermanentError as exc:
        _permanent(f"cannot take message {message.message_id}", exc)
        return
    if receipt.run is not None:
        log.info(
            "run %s is %s", receipt.run.run_id, receipt.run.state.value, extra={"run_id": receipt.run.run_id}
        )
    else:
        log.info("ignored: %s", receipt.ignored)


def _receive_uri(ctx: Context, request: events.PromptMessage) -> receive.Receipt:
    assert request.bucket is not None and request.object is not None
    if request.bucket != SETTINGS.bucket_name:
        raise InputError(f"{request.uri} is not in this deployment's bucket gs://{SETTINGS.bucket_name}")
    if request.object.startswith(SETTINGS.inbox_prefix):
        return receive.Receipt(None, False, f"{request.uri} is in the inbox, where it runs by itself")
    info = ctx.blobs.stat(request.object)
    if info is None:
        raise InputError(f"{request.uri} does not exist")
    return receive.receive_uri(ctx, StorageObject(request.bucket, request.object, info.generation, info.size))


@functions_framework.cloud_event
def on_now_chunk(event: CloudEvent) -> None:
    """A now-lane chunk on the now topic: send its lines with generate_content, each answer checkpointed.

    Raises (so Pub/Sub redelivers with backoff, then dead-letters) while the chunk is still open: its run
    was leased by another worker, or the time budget ran out. The poller hands over again a chunk that
    made no progress for a while, so a dead-lettered message does not strand its lines.
    """
    try:
        message = events.parse_pubsub_envelope(event.data or {})
        chunk = events.parse_now_chunk(message.data)
    except InputError as exc:
        _permanent("unusable now-lane message", exc)
        return
    ctx = context()
    budget = SETTINGS.harvest_time_budget
    deadline = time.time() + budget if budget > 0 else None
    if not receive.receive_now_chunk(ctx, chunk, deadline):
        # An expected wait, not an error: answered 503 without a traceback (Flask logs one for any other
        # exception), which Pub/Sub counts as a failed delivery and redelivers with backoff.
        log.info("now chunk %s is still open; Pub/Sub will redeliver", chunk.job_id)
        raise ServiceUnavailable(f"now chunk {chunk.job_id} is still open")


@functions_framework.cloud_event
def poll_jobs(event: CloudEvent) -> None:
    """The scheduler tick: advance every active run within the invocation's time budget.

    Never raises: a stale tick is worthless, so the trigger does not retry; the next tick continues.
    """
    ctx = context()
    budget = SETTINGS.harvest_time_budget
    deadline = time.time() + budget if budget > 0 else None
    try:
        report = poll.tick(ctx, deadline=deadline)
    except Exception:
        # Listing the active runs failed (each run's own failures are logged by advance_run).
        log.exception("tick failed; the next tick tries again")
        return
    log.info(
        "tick: %d active run(s), %d advanced, %d finished, %d skipped (leased), %d failed%s",
        report.runs_seen,
        len(report.runs_advanced),
        len(report.runs_finished),
        len(report.runs_skipped),
        len(report.errors),
        "; out of time, continuing next tick" if report.out_of_time else "",
    )


@functions_framework.http
def on_batch_webhook(request: flask.Request) -> tuple[str, int]:
    """Gemini's webhook: a batch ended. Verified by signature (the function is public: Google calls it),
    then the run advances at once; 401/400 refuse a delivery without touching anything, 5xx asks for a retry.
    """
    if not SETTINGS.webhooks_on:
        log.warning("a webhook delivery arrived while PROMPTDROP_WEBHOOKS=off; refused (the poller serves)")
        return "webhooks are off in this deployment", 404
    limit = SETTINGS.webhook_max_bytes
    if request.content_length is not None and request.content_length > limit:
        log.warning(
            "webhook refused: body of %d bytes is over the %d-byte limit", request.content_length, limit
        )
        return "body too large", 400
    body = request.stream.read(limit + 1)  # a chunked body is cut here, never read whole
    try:
        checker = verifier()
    except ConfigurationError as exc:
        log.error("webhook refused: %s", exc)
        return "webhook secret misconfigured", 500
    budget = SETTINGS.harvest_time_budget
    deadline = time.time() + budget if budget > 0 else None
    reply = webhook.deliver(context(), checker, body, dict(request.headers), deadline=deadline)
    return reply.message, reply.status
