"""The poller: one tick drives every active run one step further.

Each run is worked on under its lease, so overlapping ticks (Cloud Scheduler is at least once, two
`serve`s) skip each other's work; a lease left by a crashed worker expires and is taken over.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import orjson

from promptdrop.errors import (
    AmbiguousCreateError,
    BackendPermanentError,
    PermanentError,
    PreconditionFailedError,
    TransientError,
)
from promptdrop.ports import BatchInfo
from promptdrop.records import Job, Run
from promptdrop.states import RUN_ACTIVE, JobPhase, JobState, RunState
from promptdrop.usecases import context as context_mod
from promptdrop.usecases import harvest, settle, submit
from promptdrop.usecases.context import Context

log = logging.getLogger(__name__)

IN_FLIGHT = (JobPhase.CREATING, JobPhase.ACTIVE)
# Jobs whose input file is still in the Files API (deleted once the job is harvested).
HOLDING_INPUT = (*IN_FLIGHT, JobPhase.HARVESTING)
# A floor for upload speed from a function to the Files API, to tell whether an input fits the time left
# (a 1.9 GB input needs 95 s at this rate; measured uploads run faster).
UPLOAD_BYTES_PER_SECOND = 20 * 1024 * 1024
# A job cancelled at its deadline that still has not ended this much later (a state we do not know, a
# cancel that did not take) is given up on: no state keeps a run waiting past its jobs' deadlines.
DEADLINE_GRACE_SECONDS = 900.0


@dataclass
class TickReport:
    runs_seen: int = 0
    runs_advanced: list[str] = field(default_factory=list)
    runs_skipped: list[str] = field(default_factory=list)  # leased by another worker, or backing off
    runs_finished: list[str] = field(default_factory=list)
    transient_errors: list[str] = field(default_factory=list)
    out_of_time: bool = False


def tick(ctx: Context, *, run_ids: Iterable[str] | None = None, deadline: float | None = None) -> TickReport:
    """Advance every active run (or just ``run_ids``). Runs are worked on concurrently, each under its lease."""
    report = TickReport()
    if run_ids is None:
        runs = ctx.store.list_runs(RUN_ACTIVE)
    else:
        runs = [r for r in (ctx.store.get_run(i) for i in run_ids) if r is not None and not r.state.terminal]
    report.runs_seen = len(runs)
    if not runs:
        return report
    workers = max(1, min(ctx.settings.tick_concurrency, len(runs)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="promptdrop-run") as pool:
        results = list(pool.map(lambda run: _advance_leased(ctx, run.run_id, deadline), runs))
    for run_id, outcome in zip((r.run_id for r in runs), results, strict=True):
        if outcome == "skipped":
            report.runs_skipped.append(run_id)
        elif outcome == "finished":
            report.runs_finished.append(run_id)
            report.runs_advanced.append(run_id)
        elif outcome.startswith(("transient", "error")):
            report.transient_errors.append(f"{run_id}: {outcome}")
        else:
            report.runs_advanced.append(run_id)
    report.out_of_time = deadline is not None and ctx.clock() >= deadline
    return report


def _advance_leased(ctx: Context, run_id: str, deadline: float | None) -> str:
    if not _acquire(ctx, run_id):
        return "skipped"
    try:
        run = advance_run(ctx, run_id, deadline)
        return "finished" if run is not None and run.state.terminal else "advanced"
    except TransientError as exc:
        log.warning("transient failure, will retry next tick: %s", exc, extra={"run_id": run_id})
        return f"transient: {exc}"
    except PermanentError as exc:
        # A bug or a configuration problem (e.g. the events topic is missing): said loudly, then the
        # other runs go on; this run is tried again next tick once the cause is fixed.
        log.error("cannot advance run: %s", exc, extra={"run_id": run_id})
        return f"error: {exc}"
    finally:
        ctx.store.release_lease("run", run_id, ctx.owner)


def _acquire(ctx: Context, run_id: str) -> bool:
    if ctx.store.acquire_lease("run", run_id, ctx.owner, ctx.settings.lease_seconds, ctx.clock()):
        return True
    if ctx.settings.store_is_firestore:
        return False  # many hosts: only expiry can tell that a holder is gone
    # On one machine a killed `serve` need not block its runs until the lease expires: a holder
    # process on this host that no longer exists is gone for sure.
    run = ctx.store.get_run(run_id)
    holder = run.lease.owner if run else None
    if holder is None or not context_mod.owner_is_dead_local_process(holder):
        return False
    log.info("lease holder %s is gone; taking over", holder, extra={"run_id": run_id})
    ctx.store.release_lease("run", run_id, holder)
    return ctx.store.acquire_lease("run", run_id, ctx.owner, ctx.settings.lease_seconds, ctx.clock())


def renew_lease(ctx: Context, run_id: str) -> None:
    """Extend our run lease during long work; losing it means another worker took over, so stop."""
    if not ctx.store.acquire_lease("run", run_id, ctx.owner, ctx.settings.lease_seconds, ctx.clock()):
        raise PreconditionFailedError(f"lost the lease on run {run_id}")


def advance_run(ctx: Context, run_id: str, deadline: float | None = None) -> Run | None:
    """One step for one run, under its lease: submit, launch, refresh, harvest, retry, settle."""
    run = ctx.store.get_run(run_id)
    if run is None or run.state.terminal:
        return run
    if run.state is RunState.RECEIVED:
        if run.cancel_requested:
            return settle.cancel_unsubmitted(ctx, run)
        if ctx.clock() < run.next_attempt_at:
            return run
        return submit.submit_or_backoff(ctx, run, deadline)

    jobs = ctx.store.list_jobs(run_id)
    if run.cancel_requested:
        _cancel_jobs(ctx, run, jobs)
        jobs = ctx.store.list_jobs(run_id)
    for job in jobs:
        if job.phase is JobPhase.CREATING:
            _recover_creating(ctx, run, job)
        elif job.phase is JobPhase.ACTIVE:
            _refresh(ctx, run, job)
    if not run.cancel_requested:
        launch_queued_jobs(ctx, run, deadline)

    for job in ctx.store.list_jobs(run_id):
        if job.phase is JobPhase.HARVESTING:
            if run.state is RunState.SUBMITTED:
                run = ctx.store.update_run(run_id, {"state": RunState.HARVESTING.value})
            if not harvest.harvest_job(ctx, run, job, deadline):
                return run  # out of time: the next tick continues from the checkpoint

    jobs = ctx.store.list_jobs(run_id)
    if any(job.phase is not JobPhase.DONE for job in jobs):
        return run
    if not run.cancel_requested and _resubmit_retryable(ctx, run, jobs, deadline):
        return ctx.store.get_run(run_id)
    return settle.settle_run(ctx, run)


def launch_queued_jobs(ctx: Context, run: Run, deadline: float | None = None) -> None:
    """Create batch jobs for queued chunks while the caps allow (jobs and enqueued tokens in flight, input
    bytes held by the Files API) and while the invocation has time left to upload the next input."""
    queued = [job for job in ctx.store.list_jobs(run.run_id) if job.phase is JobPhase.QUEUED]
    if not queued:
        return
    holding = ctx.store.list_jobs_in_phases(HOLDING_INPUT)
    in_flight = [job for job in holding if job.phase in IN_FLIGHT]
    count = len(in_flight)
    tokens = sum(job.estimated_tokens for job in in_flight)
    input_bytes = sum(job.request_bytes for job in holding)
    settings = ctx.settings
    for job in queued:
        if count >= settings.max_jobs_in_flight:
            break
        if count and tokens + job.estimated_tokens > settings.max_enqueued_tokens:
            break
        if input_bytes and input_bytes + job.request_bytes > settings.max_input_bytes_in_flight:
            break
        if deadline is not None and ctx.clock() + job.request_bytes / UPLOAD_BYTES_PER_SECOND > deadline:
            # An upload cut off by the function's time limit would be lost: the next tick launches it.
            log.info(
                "not enough time left to upload %d bytes; the next tick launches the job",
                job.request_bytes,
                extra={"run_id": run.run_id, "job": job.job_id},
            )
            break
        try:
            job = ctx.store.update_job(
                job.job_id, {"phase": JobPhase.CREATING.value}, if_phases=[JobPhase.QUEUED]
            )
        except PreconditionFailedError:
            continue
        _create(ctx, run, job)
        count += 1
        tokens += job.estimated_tokens
        input_bytes += job.request_bytes


def _upload_input(ctx: Context, job: Job) -> Job:
    if job.file_name is not None:
        return job
    with ctx.blobs.open_read(job.request_object) as stream:
        uploaded = ctx.backend.upload_file(stream, size=job.request_bytes, display_name=job.job_id)
    return ctx.store.update_job(job.job_id, {"file_name": uploaded.name})


def _create(ctx: Context, run: Run, job: Job) -> None:
    """Upload and create. ``batches.create`` is not idempotent: on an ambiguous failure the job stays CREATING
    and the next tick looks it up by display name before creating it again."""
    job = _upload_input(ctx, job)
    assert job.file_name is not None
    try:
        info = ctx.backend.create_batch(
            model=job.model, file_name=job.file_name, display_name=job.job_id, priority=job.priority
        )
    except AmbiguousCreateError as exc:
        log.warning(
            "create may or may not have happened (%s); will look it up",
            exc,
            extra={"run_id": run.run_id, "job": job.job_id},
        )
        return
    except TransientError as exc:
        log.warning(
            "create refused for now (%s); will retry", exc, extra={"run_id": run.run_id, "job": job.job_id}
        )
        return
    except PermanentError as exc:
        _record_job_end(ctx, run, job, None, JobState.JOB_STATE_FAILED, f"create refused: {exc}")
        return
    _adopt(ctx, run, job, info)


def _adopt(ctx: Context, run: Run, job: Job, info: BatchInfo) -> None:
    now = ctx.clock()
    ctx.store.update_job(
        job.job_id,
        {
            "phase": JobPhase.ACTIVE.value,
            "batch_name": info.name,
            "state": info.state.value,
            "submitted_at": now,
            "deadline_at": now + ctx.settings.job_deadline,
        },
    )
    log.info(
        "batch job %s created (%d requests)",
        info.name,
        job.request_count,
        extra={"run_id": run.run_id, "job": info.name},
    )


def _recover_creating(ctx: Context, run: Run, job: Job) -> None:
    """A job left CREATING by a crash or an ambiguous create: find it by display name, else create it."""
    found = ctx.backend.find_batch(job.job_id)
    if found is not None:
        log.info(
            "found batch %s by display name; not creating it again",
            found.name,
            extra={"run_id": run.run_id, "job": found.name},
        )
        _adopt(ctx, run, job, found)
        return
    _create(ctx, run, job)


def _refresh(ctx: Context, run: Run, job: Job) -> None:
    assert job.batch_name is not None
    try:
        info = ctx.backend.get_batch(job.batch_name)
    except BackendPermanentError as exc:
        # The job is gone (deleted by hand, or a key without access): its lines are retried like an expired job's.
        _record_job_end(ctx, run, job, None, JobState.JOB_STATE_FAILED, f"batch job unreadable: {exc}")
        return
    if info.done:
        _record_job_end(ctx, run, job, info, info.state, info.error)
        return
    changes: dict[str, object] = {"state": info.state.value, "stats": dict(info.stats)}
    if (
        job.error == "deadline"
        and job.deadline_at is not None
        and ctx.clock() >= job.deadline_at + DEADLINE_GRACE_SECONDS
    ):
        log.warning(
            "job still %s long after its deadline cancel; giving up on it",
            info.state.value,
            extra={"run_id": run.run_id, "job": job.batch_name},
        )
        _record_job_end(ctx, run, job, info, info.state, "deadline")
        return
    if job.deadline_at is not None and ctx.clock() >= job.deadline_at:
        log.warning(
            "job past PROMPTDROP_JOB_DEADLINE; cancelling",
            extra={"run_id": run.run_id, "job": job.batch_name},
        )
        ctx.backend.cancel_batch(job.batch_name)
        changes["error"] = "deadline"
    ctx.store.update_job(job.job_id, changes)


def _record_job_end(
    ctx: Context, run: Run, job: Job, info: BatchInfo | None, state: JobState, error: str | None
) -> None:
    """The API is done with the job: write inline responses down, then hand it to the harvest."""
    layout = ctx.layout(run.run_id)
    changes: dict[str, object] = {
        "phase": JobPhase.HARVESTING.value,
        "state": state.value,
        "ended_at": ctx.clock(),
        # Our own reasons for stopping a job (deadline, cancel) say more than the API's.
        "error": job.error if job.error in ("deadline", "cancelled") else error,
    }
    if info is not None:
        changes["stats"] = dict(info.stats)
        if info.results_file:
            changes["results_file"] = info.results_file
        elif info.inlined_responses is not None:
            # Inline answers become a results file like any other, so one harvest path serves both.
            keys = harvest.job_keys(ctx, layout, job)
            with ctx.blobs.open_write(
                layout.job_results(job.job_id), content_type="application/jsonl"
            ) as out:
                for index, item in enumerate(info.inlined_responses):
                    metadata = item.get("metadata") or {}
                    key = metadata.get("key") or (keys[index] if index < len(keys) else None)
                    line = {k: v for k, v in item.items() if k != "metadata"}
                    out.write(orjson.dumps({"key": key, **line}) + b"\n")
            changes["results_object"] = layout.job_results(job.job_id)
    ctx.store.update_job(job.job_id, changes)
    log.info(
        "batch job ended %s", state.value, extra={"run_id": run.run_id, "job": job.batch_name or job.job_id}
    )


def _cancel_jobs(ctx: Context, run: Run, jobs: list[Job]) -> None:
    for job in jobs:
        if job.phase is JobPhase.QUEUED:
            ctx.store.update_job(
                job.job_id,
                {
                    "phase": JobPhase.HARVESTING.value,
                    "state": JobState.JOB_STATE_CANCELLED.value,
                    "error": "cancelled",
                },
            )
        elif (
            job.phase is JobPhase.ACTIVE
            and job.batch_name
            and not job.state.terminal
            and job.error != "cancelled"
        ):
            try:
                ctx.backend.cancel_batch(job.batch_name)
            except BackendPermanentError as exc:
                log.warning("cancel failed: %s", exc, extra={"run_id": run.run_id, "job": job.batch_name})
            ctx.store.update_job(job.job_id, {"error": "cancelled"})


def _resubmit_retryable(ctx: Context, run: Run, jobs: list[Job], deadline: float | None) -> bool:
    """Lines that failed retryably (and have attempts left) go into new jobs of the next attempt."""
    attempt = max(job.attempt for job in jobs)
    if attempt >= ctx.settings.max_attempts:
        return False
    outcomes = settle.load_outcomes(ctx, run, jobs)
    retry_keys = {
        key for key, outcome in outcomes.items() if outcome.retryable and outcome.attempt == attempt
    }
    if not retry_keys:
        return False
    planner = submit.ChunkPlanner(ctx, run, attempt=attempt + 1, first_chunk=0)
    layout = ctx.layout(run.run_id)
    try:
        for job in jobs:
            if job.attempt != attempt:
                continue
            lines = dict(harvest.iter_job_keys(ctx, layout, job))
            with ctx.blobs.open_read(job.request_object) as stream:
                for raw in stream:
                    request_line = raw.rstrip(b"\r\n")
                    key = orjson.loads(request_line)["key"]
                    if key in retry_keys:
                        planner.add(
                            job.model,
                            key,
                            lines.get(key, 0),
                            request_line,
                            job.estimated_tokens // max(job.request_count, 1),
                            priority=job.priority,
                        )
        new_jobs = planner.finish()
    except BaseException:
        planner.abort()
        raise
    for job in new_jobs:
        ctx.store.create_job(job)
    log.info(
        "resubmitting %d retryable line(s) as attempt %d in %d job(s)",
        len(retry_keys),
        attempt + 1,
        len(new_jobs),
        extra={"run_id": run.run_id},
    )
    launch_queued_jobs(ctx, run, deadline)
    return True
