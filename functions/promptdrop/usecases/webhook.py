"""A webhook delivery from Gemini: verify it, read the batch's truth, and advance the run it belongs to.

The body only says "look at batch X now". The receiver asks ``batches.get`` (the truth), maps the batch to
our job by its display name (our job id), and calls the same ``advance_run`` as the poller, handing it the
state just read, so the job's end is recorded and harvested at once. Leases and the lifecycle make that
idempotent: a duplicate delivery (same ``webhook-id``, or the same batch again) finds the job already
ended and does nothing twice. ``deliver`` maps every outcome to the HTTP status the sender acts on:
2xx done (or not ours: never retried), 400/401 refused (nothing touched), 5xx retry later.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from promptdrop.errors import BackendPermanentError, NotFoundError, TransientError
from promptdrop.records import Job
from promptdrop.states import JobPhase
from promptdrop.usecases.advance import advance_run
from promptdrop.usecases.context import Context
from promptdrop.webhooks import BatchEvent, BodyError, SignatureError, Verifier, parse_event

log = logging.getLogger(__name__)

# While another worker holds the run's lease, look again this often (within the time budget).
LEASE_RETRY_SECONDS: Final = 0.2
# Without a configured budget (locally) a delivery still gives up waiting for a busy run after this long.
DEFAULT_BUDGET_SECONDS: Final = 60.0


@dataclass(frozen=True, slots=True)
class Reply:
    """What the receiver answers: the status the sender acts on, and a short reason (never a secret)."""

    status: int
    message: str


def deliver(
    ctx: Context,
    verifier: Verifier | None,
    body: bytes,
    headers: Mapping[str, str],
    *,
    deadline: float | None = None,
) -> Reply:
    """Handle one delivery from its raw body and headers (both receivers, Cloud and local, call this)."""
    if verifier is None:
        log.error("a webhook delivery arrived but PROMPTDROP_WEBHOOK_SECRET is not set; refusing it")
        return Reply(500, "webhook secret not configured")
    try:
        payload = verifier.verify(body, headers, max_bytes=ctx.settings.webhook_max_bytes)
        event = parse_event(payload, _header(headers, "webhook-id"))
    except SignatureError as exc:
        log.warning("webhook refused: %s", exc)
        return Reply(401, str(exc))
    except BodyError as exc:
        log.warning("webhook refused: %s", exc)
        return Reply(400, str(exc))
    if event is None:
        log.info("webhook %s ignored: not a batch event", _header(headers, "webhook-id"))
        return Reply(200, "ignored: not a batch event")
    try:
        return batch_event(ctx, event, deadline=deadline)
    except TransientError as exc:
        log.warning("webhook %s: transient failure (%s); the sender retries", event.delivery_id, exc)
        return Reply(503, "transient failure; retry")


def _header(headers: Mapping[str, str], name: str) -> str:
    return next((value for key, value in headers.items() if key.lower() == name), "")


def batch_event(ctx: Context, event: BatchEvent, *, deadline: float | None = None) -> Reply:
    """Advance the run whose batch the event names. Raises TransientError when the sender should retry."""
    if event.error_code is not None or event.error_message is not None:
        log.warning(
            "webhook %s: %s says %s failed: %s %s",
            event.delivery_id,
            event.type,
            event.batch_name,
            event.error_code or "",
            event.error_message or "",
        )
    try:
        info = ctx.backend.get_batch(event.batch_name)
    except (BackendPermanentError, NotFoundError) as exc:
        # Not a batch this key can read: another project's, or deleted. Nothing to do, nothing to retry.
        log.info("webhook %s: %s is not readable (%s); ignored", event.delivery_id, event.batch_name, exc)
        return Reply(200, "ignored: batch not readable")
    job = ctx.store.get_job(info.display_name) if info.display_name else None
    if job is None or job.batch_name not in (None, info.name):
        log.info("webhook %s: %s is not one of ours; ignored", event.delivery_id, info.name)
        return Reply(200, "ignored: not our batch")
    extra = {"run_id": job.run_id, "job": info.name}
    if not info.done:
        # The push came before the API says so (or a forged-but-signed hint): the poller carries on.
        log.info(
            "webhook %s said %s, the API says %s",
            event.delivery_id,
            event.type,
            info.state.value,
            extra=extra,
        )
        return Reply(200, f"batch still {info.state.value}")
    if _end_recorded(job):
        log.info(
            "webhook %s: the job's end is recorded already (a duplicate)", event.delivery_id, extra=extra
        )
        return Reply(200, "duplicate: already recorded")
    log.info(
        "webhook %s: %s %s; advancing the run", event.delivery_id, info.name, info.state.value, extra=extra
    )
    budget = ctx.settings.harvest_time_budget or DEFAULT_BUDGET_SECONDS
    deadline = deadline if deadline is not None else ctx.clock() + budget
    while True:
        result = advance_run(ctx, job.run_id, deadline, news={job.job_id: info})
        current = ctx.store.get_job(job.job_id)
        if current is None or _end_recorded(current):
            return Reply(200, f"run {job.run_id} {result.outcome}")
        if result.outcome != "skipped" or ctx.clock() + LEASE_RETRY_SECONDS >= deadline:
            # Failed, or another worker kept the run all along: the end is not recorded yet, so retry later.
            raise TransientError(f"the end of {info.name} is not recorded yet ({result.outcome})")
        time.sleep(LEASE_RETRY_SECONDS)


def _end_recorded(job: Job) -> bool:
    return job.phase in (JobPhase.HARVESTING, JobPhase.DONE)
