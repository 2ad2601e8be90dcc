"""``advance_run``: the one loop every trigger calls to move a run on, under its lease.

It asks ``lifecycle.next_step`` what to do, does it, reads the records again and asks once more, until the
answer is to wait (or the time budget is spent in a harvest). Any failure while advancing one run is
logged with the run's id and reported, never raised: one bad run cannot stop a tick, `serve` or the others.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from promptdrop.errors import NotFoundError, PreconditionFailedError, TransientError
from promptdrop.lifecycle import Action, next_step
from promptdrop.ports import BatchInfo
from promptdrop.records import Run
from promptdrop.states import RunState
from promptdrop.usecases import inflight, leases, now_lane
from promptdrop.usecases import jobs as batch_jobs
from promptdrop.usecases.context import Context
from promptdrop.usecases.harvest import harvest_job
from promptdrop.usecases.settle import cancel_unsubmitted, settle_run
from promptdrop.usecases.submit import submit_or_backoff

log = logging.getLogger(__name__)

# A safety bound: every step either changes a record or is taken once per call, so far fewer are needed.
MAX_STEPS = 100

Outcome = Literal["skipped", "advanced", "finished", "failed", "missing"]


@dataclass(frozen=True, slots=True)
class Advance:
    """What one call did to one run: ``skipped`` (leased by another worker), ``failed`` (logged, tried
    again next tick), ``missing`` (no such run), else ``advanced`` or ``finished`` (terminal now)."""

    run_id: str
    outcome: Outcome
    run: Run | None = None
    error: str | None = None


def advance_run(
    ctx: Context,
    run_id: str,
    deadline: float | None = None,
    news: Mapping[str, BatchInfo] | None = None,
    *,
    work_now: bool | None = None,
) -> Advance:
    """Move one run as far as it goes now. Never raises an ordinary exception.

    ``news``: batches a webhook receiver has just read, by job id; those jobs are refreshed now, with that
    state (no second ``batches.get``), whatever the poll interval.
    ``work_now``: send the run's now-lane lines here (the default when no now topic is configured);
    False hands their chunks over to the now topic instead (the cloud's file, message and tick functions).
    """
    if work_now is None:
        work_now = ctx.now_dispatch is None
    ctx = leases.own_turn(ctx)
    try:
        if not leases.acquire(ctx, run_id):
            return Advance(run_id, "skipped")
    except NotFoundError:
        return Advance(run_id, "missing")
    except Exception as exc:
        return _failed(run_id, exc)
    try:
        run = _drive(leases.fenced(ctx), run_id, deadline, work_now, dict(news or {}))
    except NotFoundError as exc:
        # Its scratch gone under us: another worker, which took over after our lease lapsed, deleted it
        # (ending the run, or finishing the step we were in).
        taken_over = _taken_over(ctx, run_id)
        if taken_over is None:
            return _failed(run_id, exc)
        log.warning("stopped: %s; another worker took over the run", exc, extra={"run_id": run_id})
        return Advance(run_id, "finished" if taken_over.state.terminal else "skipped", taken_over)
    except Exception as exc:
        return _failed(run_id, exc)
    finally:
        try:
            leases.release(ctx, run_id)
        except Exception as exc:  # it expires by itself
            log.warning("could not give the lease back: %s", exc, extra={"run_id": run_id})
    if run is None:
        return Advance(run_id, "missing")
    return Advance(run_id, "finished" if run.state.terminal else "advanced", run)


def _taken_over(ctx: Context, run_id: str) -> Run | None:
    """The run as it is now, if it ended or another worker holds it; None when it is still ours."""
    try:
        run = ctx.store.get_run(run_id)
    except Exception:
        return None
    if run is None:
        return None
    return run if run.state.terminal or leases.taken_over(ctx, run) else None


def _failed(run_id: str, exc: Exception) -> Advance:
    if isinstance(exc, PreconditionFailedError):
        log.warning("stopped: %s (another worker took over)", exc, extra={"run_id": run_id})
    elif isinstance(exc, TransientError):
        log.warning("transient failure, will retry next tick: %s", exc, extra={"run_id": run_id})
    else:
        # A bug, a corrupt record, a full disk, a configuration problem: said loudly with the run's id,
        # then the other runs go on; this run is tried again next tick.
        log.exception("cannot advance run: %s", exc, extra={"run_id": run_id})
    return Advance(run_id, "failed", error=f"{type(exc).__name__}: {exc}")


def _harvesting(ctx: Context, run: Run) -> Run:
    """Outputs are being written: SUBMITTED -> HARVESTING (once)."""
    if run.state is not RunState.SUBMITTED:
        return run
    return ctx.store.update_run(
        run.run_id, {"state": RunState.HARVESTING.value}, if_states=[RunState.SUBMITTED]
    )


def _drive(
    ctx: Context, run_id: str, deadline: float | None, work_now: bool, news: dict[str, BatchInfo]
) -> Run | None:
    done: set[Action] = set()
    run = ctx.store.get_run(run_id)
    for _ in range(MAX_STEPS):
        if run is None:
            return None
        jobs = [] if run.state is RunState.RECEIVED else ctx.store.list_jobs(run_id)
        step = next_step(
            run,
            jobs,
            now=ctx.clock(),
            max_attempts=ctx.settings.max_attempts,
            done=done,
            work_now=work_now,
            redispatch_after=2 * ctx.settings.lease_seconds,
            # A disabled webhook pushes nothing: poll every tick until it is enabled again.
            poll_every=ctx.settings.job_poll_interval if ctx.webhook_health.healthy else 0.0,
            wake=news.keys(),
        )
        if step.final:
            return run
        leases.renew(ctx, run_id)
        done.add(step.action)
        by_id = {job.job_id: job for job in jobs}
        selected = [by_id[job_id] for job_id in step.jobs]
        match step.action:
            case Action.SUBMIT:
                submit_or_backoff(ctx, run, deadline)
            case Action.CANCEL_UNSUBMITTED:
                cancel_unsubmitted(ctx, run)
            case Action.CANCEL_JOBS:
                batch_jobs.cancel_jobs(ctx, run, selected)
            case Action.RESOLVE_WAITING:
                inflight.resolve_waiting(ctx, run, jobs, deadline)
            case Action.RECOVER:
                for job in selected:
                    batch_jobs.recover_creating(ctx, run, job)
            case Action.REFRESH:
                for job in selected:
                    batch_jobs.refresh(ctx, run, job, news.pop(job.job_id, None))
            case Action.HARVEST:
                run = _harvesting(ctx, run)
                for job in selected:
                    if not harvest_job(ctx, run, job, deadline):
                        return run  # out of time: the next tick continues from the checkpoint
            case Action.WORK_NOW:
                run = _harvesting(ctx, run)
                for job in selected:
                    if not now_lane.work_now_job(ctx, run, job, deadline):
                        return run  # out of time: the next call continues from the checkpoint
            case Action.DISPATCH_NOW:
                now_lane.dispatch_now_jobs(ctx, run, selected)
            case Action.LAUNCH:
                batch_jobs.launch_queued_jobs(ctx, run, selected, deadline)
            case Action.RETRY:
                if batch_jobs.resubmit_retryable(ctx, run, jobs):
                    done.clear()  # a new attempt: a new pass launches its jobs
                else:
                    settle_run(ctx, run)
            case Action.SETTLE:
                settle_run(ctx, run)
        run = ctx.store.get_run(run_id)
    log.warning("still moving after %d steps; continuing next tick", MAX_STEPS, extra={"run_id": run_id})
    return run
