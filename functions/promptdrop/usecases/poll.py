"""The poller: one tick moves every active run (or the runs asked for) as far as it goes now.

Runs are advanced concurrently, each through ``advance_run`` under its own lease, so overlapping ticks
(Cloud Scheduler is at least once, two `serve`s) skip each other's work, and a failure in one run is
reported for that run alone.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Final

from promptdrop.errors import TransientError
from promptdrop.logs import RUN_OVERDUE, WEBHOOK_DISABLED, metric_fields
from promptdrop.records import Job, Run
from promptdrop.settings import Settings
from promptdrop.states import RUN_ACTIVE, JobPhase
from promptdrop.usecases.advance import advance_run
from promptdrop.usecases.context import Context
from promptdrop.webhooks import BATCH_EVENTS

log = logging.getLogger(__name__)

# How long past the longest a run may take (every attempt running to its job deadline) an active run is
# reported as overdue: the alert "a run not terminal an hour after its deadline" counts these lines.
OVERDUE_GRACE_SECONDS = 3600.0


# `run --wait` ticks again after an eighth of its youngest running job's age (at least MIN_WAIT_SECONDS, at
# most its poll interval): a job of seconds (the emulator's) is seen ending within a fraction of a second
# instead of a second on average, twelve times for a 20,000-line file; one of minutes or hours (the API's)
# is polled at the interval after its first few seconds, so it costs a handful of extra reads.
WAIT_AGE_FRACTION: Final = 0.125
MIN_WAIT_SECONDS: Final = 0.25


def wait_seconds(jobs: Iterable[Job], now: float, interval: float) -> float:
    """How long `run --wait` sleeps before its next tick, given the run's jobs (pure)."""
    ages = [
        now - job.submitted_at
        for job in jobs
        if job.lane == "batch" and job.phase is JobPhase.ACTIVE and job.submitted_at is not None
    ]
    if not ages:
        return interval
    return min(interval, max(MIN_WAIT_SECONDS, min(ages) * WAIT_AGE_FRACTION))


def overdue_at(run: Run, settings: Settings) -> float:
    """When an active run is overdue: each attempt may run to its job deadline, then an hour's grace."""
    return run.created_at + settings.max_attempts * settings.job_deadline + OVERDUE_GRACE_SECONDS


@dataclass
class TickReport:
    runs_seen: int = 0
    runs_advanced: list[str] = field(default_factory=list)
    runs_skipped: list[str] = field(default_factory=list)  # leased by another worker
    runs_finished: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # "<run id>: <error>", each logged with its run id
    out_of_time: bool = False


def tick(ctx: Context, *, run_ids: Iterable[str] | None = None, deadline: float | None = None) -> TickReport:
    """Advance every active run (or just ``run_ids``). Runs are worked on concurrently, each under its lease."""
    report = TickReport()
    check_webhooks(ctx)
    if run_ids is None:
        active = ctx.store.list_runs(RUN_ACTIVE)
        _report_overdue(ctx, active)
        wanted = [run.run_id for run in active]
    else:
        wanted = with_payers(ctx, run_ids)
    report.runs_seen = len(wanted)
    if not wanted:
        return report
    workers = max(1, min(ctx.settings.tick_concurrency, len(wanted)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="promptdrop-run") as pool:
        results = list(pool.map(lambda run_id: advance_run(ctx, run_id, deadline), wanted))
    for result in results:
        if result.outcome == "skipped":
            report.runs_skipped.append(result.run_id)
        elif result.outcome == "failed":
            report.errors.append(f"{result.run_id}: {result.error}")
        elif result.outcome == "finished":
            report.runs_finished.append(result.run_id)
            report.runs_advanced.append(result.run_id)
        elif result.outcome == "advanced":
            report.runs_advanced.append(result.run_id)
    report.out_of_time = deadline is not None and ctx.clock() >= deadline
    return report


def with_payers(ctx: Context, run_ids: Iterable[str]) -> list[str]:
    """The runs asked for and the runs they wait for, and so on: a run whose lines wait ends only after
    those runs, so whoever follows it (`run --wait` with no `serve` running) moves them too."""
    wanted = list(dict.fromkeys(run_ids))
    for run_id in wanted:  # grows while it is walked: each run is read once
        run = ctx.store.get_run(run_id)
        wanted += [payer for payer in (run.waiting_on if run else []) if payer not in wanted]
    return wanted


def _report_overdue(ctx: Context, runs: Iterable[Run]) -> None:
    now = ctx.clock()
    for run in runs:
        late = now - overdue_at(run, ctx.settings)
        if late > 0:
            fields = metric_fields(RUN_OVERDUE, state=run.state.value, late_seconds=round(late))
            log.warning(
                "run still %s %.0f s past its longest life",
                run.state.value,
                late,
                extra={"run_id": run.run_id, **fields},
            )


# The project's webhooks are looked at no more often than this (per process).
WEBHOOK_CHECK_SECONDS: Final = 3600.0


def check_webhooks(ctx: Context) -> bool:
    """With webhooks on: whether the batch webhooks the API shows are still enabled, looked at most hourly.

    The API disables a webhook after repeated failed deliveries and then stops pushing, silently: while every
    batch webhook is disabled, jobs are polled every tick (the no-webhook interval) and a warning is logged
    at each look. A failed look keeps the last verdict.
    """
    health = ctx.webhook_health
    if not ctx.settings.webhooks_on:
        return True
    now = ctx.clock()
    if health.checked_at is not None and now - health.checked_at < WEBHOOK_CHECK_SECONDS:
        return health.healthy
    try:
        hooks = ctx.backend.list_webhooks()
    except TransientError as exc:
        log.info("could not look at the webhooks (%s); keeping the last verdict", exc)
        return health.healthy
    health.checked_at = now
    ours = [hook for hook in hooks if set(hook.events) & set(BATCH_EVENTS)]
    # None registered through the API (pushes configured elsewhere, e.g. the emulator's --webhook-url): we
    # cannot tell, so the pushes are trusted; only a webhook the API shows disabled is a verdict.
    health.healthy = not ours or any(hook.state == "enabled" for hook in ours)
    if not health.healthy:
        states = ", ".join(f"{hook.id}: {hook.state}" for hook in ours)
        log.warning(
            "no enabled Gemini webhook sends batch events (%s): pushes have stopped, so jobs are polled every "
            "tick until it is enabled again (scripts/deploy re-enables it)",
            states,
            extra=metric_fields(WEBHOOK_DISABLED, webhooks=states),
        )
    return health.healthy
