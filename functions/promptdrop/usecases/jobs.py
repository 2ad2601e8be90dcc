"""A run's batch jobs on the API: launch under the in-flight caps, recover ambiguous creates, poll, cancel,
and put retryable lines into a new attempt.

``batches.create`` is not idempotent and may land after the client gave up on it, so a create is sent
once, its time recorded, and a job left CREATING is looked up by display name (its job id) without ever
creating again while the first create may still land. Every failure here ends the job one way or another:
refused for good, or given up after a bounded number of recoveries; its lines then fail with the reason,
or are retried as a new attempt.
"""

from __future__ import annotations

import logging

import orjson

from promptdrop.errors import (
    AmbiguousCreateError,
    BackendError,
    BackendPermanentError,
    NotFoundError,
    PermanentError,
    PreconditionFailedError,
    QuotaExceededError,
    TransientError,
)
from promptdrop.lifecycle import attempt_cut_off
from promptdrop.ports import BatchInfo
from promptdrop.records import Job, Run
from promptdrop.states import JobPhase, JobState
from promptdrop.streams import content, iter_lines
from promptdrop.usecases.chunks import ChunkPlanner
from promptdrop.usecases.context import Context
from promptdrop.usecases.workfiles import iter_job_keys, job_keys, load_outcomes, read_records, write_records

log = logging.getLogger(__name__)

# A job still CREATING after this many creates gives up: its lines fail (or go to the next attempt).
MAX_CREATE_RECOVERIES = 10
# A floor for upload speed from a function to the Files API, to tell whether an input fits the time left
# (a 1.9 GB input needs 95 s at this rate; measured uploads run faster).
UPLOAD_BYTES_PER_SECOND = 20 * 1024 * 1024
# A job cancelled at its deadline that still has not ended this much later (a state we do not know, a
# cancel that did not take) is given up on: no state keeps a run waiting past its jobs' deadlines.
DEADLINE_GRACE_SECONDS = 900.0


def launch_queued_jobs(ctx: Context, run: Run, jobs: list[Job], deadline: float | None = None) -> None:
    """Create batch jobs for queued chunks while the caps allow (jobs and enqueued tokens in flight, input
    bytes held by the Files API) and while the invocation has time left to upload the next input.

    The store counts what is in flight and starts one job in the same transaction, so parallel ticks
    cannot overshoot the caps.
    """
    settings = ctx.settings
    for queued in jobs:
        if queued.not_before is not None and ctx.clock() < queued.not_before:
            continue  # backing off after a 429 on its create
        if deadline is not None and ctx.clock() + queued.request_bytes / UPLOAD_BYTES_PER_SECOND > deadline:
            # An upload cut off by the function's time limit would be lost: the next tick launches it.
            log.info(
                "not enough time left to upload %d bytes; the next tick launches the job",
                queued.request_bytes,
                extra={"run_id": run.run_id, "job": queued.job_id},
            )
            return
        try:
            job = ctx.store.start_job(
                queued.job_id,
                max_jobs=settings.max_jobs_in_flight,
                max_tokens=min(
                    settings.enqueued_token_budget(queued.model),
                    ctx.enqueued_targets.get(queued.model, settings.enqueued_token_budget(queued.model)),
                ),
                max_input_bytes=settings.max_input_bytes_in_flight,
            )
        except PreconditionFailedError:
            continue  # no longer QUEUED: started or cancelled meanwhile
        if job is None:
            return  # the caps are reached; the next tick tries again
        _create(ctx, run, job)


def _create(ctx: Context, run: Run, job: Job) -> None:
    """Upload the request file (once) and send the create (once, its time recorded first)."""
    extra = {"run_id": run.run_id, "job": job.job_id}
    try:
        job = _upload_input(ctx, job)
    except PermanentError as exc:
        _record_job_end(ctx, run, job, None, JobState.JOB_STATE_FAILED, f"upload refused: {exc}")
        return
    except TransientError as exc:
        log.warning("upload failed for now (%s); will retry", exc, extra=extra)
        return
    file_name = job.file_name
    assert file_name is not None
    job = ctx.store.update_job(job.job_id, {"create_sent_at": ctx.clock()})
    try:
        info = _send_create(ctx, run, job, file_name)
    except AmbiguousCreateError as exc:
        log.warning("create may or may not have happened (%s); will look it up", exc, extra=extra)
        return
    except QuotaExceededError as exc:
        _quota_refused(ctx, run, job, exc)
        return
    except TransientError as exc:
        # Refused before the server took it (429 and the like): nothing can land, so no waiting.
        ctx.store.update_job(job.job_id, {"create_sent_at": None})
        log.warning("create refused for now (%s); will retry", exc, extra=extra)
        return
    except PermanentError as exc:
        _record_job_end(ctx, run, job, None, JobState.JOB_STATE_FAILED, f"create refused: {exc}")
        return
    _adopt(ctx, run, job, info)


def _send_create(ctx: Context, run: Run, job: Job, file_name: str) -> BatchInfo:
    """The create call; a backend that reads the bucket is told where to write (the job's scratch)."""
    if not ctx.backend.bucket_input:
        return ctx.backend.create_batch(
            model=job.model, file_name=file_name, display_name=job.job_id, priority=job.priority
        )
    output_uri = f"{ctx.blobs.url}/{ctx.layout(run.run_id).job_predictions(job.job_id)}"
    return ctx.backend.create_batch(
        model=job.model, file_name=file_name, display_name=job.job_id, output_uri=output_uri
    )


def _quota_refused(ctx: Context, run: Run, job: Job, exc: QuotaExceededError) -> None:
    """A 429 on create although we were under our own enqueued-token count: the API's real room is smaller
    (other work of the project, python-genai #1901). Aim lower for this model (what the API holds of this
    run now, else half the aim), put the job back in the queue and try it again after a backoff."""
    budget = ctx.settings.enqueued_token_budget(job.model)
    aim = ctx.enqueued_targets.get(job.model, budget)
    held = sum(
        other.estimated_tokens
        for other in ctx.store.list_jobs(run.run_id)
        if other.job_id != job.job_id
        and other.model == job.model
        and other.lane == "batch"
        and other.phase in (JobPhase.CREATING, JobPhase.ACTIVE)
    )
    lowered = max(1, min(aim, held) if held else aim // 2)
    ctx.enqueued_targets[job.model] = lowered
    delay = ctx.settings.submit_retry_base * 2 ** min(job.quota_refusals, 6)
    ctx.store.update_job(
        job.job_id,
        {
            "phase": JobPhase.QUEUED.value,
            "create_sent_at": None,
            "not_before": ctx.clock() + delay,
            "quota_refusals": job.quota_refusals + 1,
        },
        if_phases=[JobPhase.CREATING],
    )
    log.warning(
        "create refused with 429 while under our enqueued-token count (%s); aiming at %d enqueued tokens "
        "for %s from now (was %d), job back in the queue for %.1f s",
        exc,
        lowered,
        job.model,
        aim,
        delay,
        extra={"run_id": run.run_id, "job": job.job_id},
    )


def _upload_input(ctx: Context, job: Job) -> Job:
    if job.file_name is not None:
        return job
    if ctx.backend.bucket_input:  # the chunk in the bucket is the job's input: nothing to upload
        return ctx.store.update_job(job.job_id, {"file_name": f"{ctx.blobs.url}/{job.request_object}"})
    with ctx.blobs.open_read(job.request_object) as stream:
        uploaded = ctx.backend.upload_file(stream, size=job.request_bytes, display_name=job.job_id)
    return ctx.store.update_job(job.job_id, {"file_name": uploaded.name})


def _adopt(ctx: Context, run: Run, job: Job, info: BatchInfo, duplicates: list[str] | None = None) -> None:
    now = ctx.clock()
    changes: dict[str, object] = {
        "phase": JobPhase.ACTIVE.value,
        "batch_name": info.name,
        "state": info.state.value,
        "submitted_at": now,
        "deadline_at": now + ctx.settings.job_deadline,
        "checked_at": now,
    }
    if duplicates:
        changes["duplicates"] = [*job.duplicates, *duplicates]
    ctx.store.update_job(job.job_id, changes, if_phases=[JobPhase.CREATING])
    log.info(
        "batch job %s created (%d requests)",
        info.name,
        job.request_count,
        extra={"run_id": run.run_id, "job": info.name},
    )


def recover_creating(ctx: Context, run: Run, job: Job) -> None:
    """A job left CREATING by a crash or an ambiguous create: adopt what landed, else create again when
    the first create can no longer land, and give up after ``MAX_CREATE_RECOVERIES``."""
    extra = {"run_id": run.run_id, "job": job.job_id}
    # Sent, or uploaded and then interrupted before we could record sending (a record from before
    # create_sent_at existed, too): look it up. A job whose upload never finished was never created.
    maybe_sent = job.create_sent_at is not None or (job.file_name is not None and job.recoveries == 0)
    if maybe_sent:
        found = ctx.backend.find_batches(job.job_id)
        if found:
            _adopt_found(ctx, run, job, found)
            return
    sent_at = job.create_sent_at
    # Not sent again until it could no longer land: the client's timeout plus a margin for the server.
    if sent_at is not None and ctx.clock() < sent_at + ctx.settings.api_timeout + ctx.settings.create_margin:
        log.info("create sent, not found yet; waiting before creating again", extra=extra)
        return
    if job.recoveries >= MAX_CREATE_RECOVERIES:
        reason = f"gave up creating the batch job after {job.recoveries + 1} attempts"
        _record_job_end(ctx, run, job, None, JobState.JOB_STATE_FAILED, reason)
        return
    job = ctx.store.update_job(job.job_id, {"recoveries": job.recoveries + 1, "create_sent_at": None})
    _create(ctx, run, job)


def _adopt_found(ctx: Context, run: Run, job: Job, found: list[BatchInfo]) -> None:
    """Adopt one batch of those with our display name; cancel the others (a create that landed late)."""
    # The first created that is not already failed: it is the one most likely to have work done.
    keep = next((info for info in found if info.state is not JobState.JOB_STATE_FAILED), found[0])
    extra = {"run_id": run.run_id, "job": keep.name}
    others = [info.name for info in found if info.name != keep.name]
    for name in others:
        try:
            ctx.backend.cancel_batch(name)
        except BackendError as exc:
            log.warning("could not cancel duplicate batch %s: %s", name, exc, extra=extra)
    if others:
        log.warning(
            "%d duplicate batch(es) with one display name cancelled: %s", len(others), others, extra=extra
        )
    log.info("found batch %s by display name; not creating it again", keep.name, extra=extra)
    _adopt(ctx, run, job, keep, others)


def refresh(ctx: Context, run: Run, job: Job, info: BatchInfo | None = None) -> None:
    """Read an ACTIVE job's state (``info``: already read by the caller, a webhook receiver); an ended job
    goes to the harvest, one past its deadline is cancelled."""
    assert job.batch_name is not None
    checked_at = ctx.clock()
    if info is None:
        try:
            info = ctx.backend.get_batch(job.batch_name)
        except BackendPermanentError as exc:
            # The job is gone (deleted by hand, or a key without access): its lines are retried like an expired job's.
            _record_job_end(ctx, run, job, None, JobState.JOB_STATE_FAILED, f"batch job unreadable: {exc}")
            return
    if info.done:
        _record_job_end(ctx, run, job, info, info.state, info.error)
        return
    changes: dict[str, object] = {
        "state": info.state.value,
        "stats": dict(info.stats),
        "checked_at": checked_at,
    }
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
    """The API is done with the job (or we are): write inline responses down, then hand it to the harvest."""
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
        elif info.results_dir is not None:
            changes.update(_predictions(ctx, info.results_dir))
        elif info.inlined_responses is not None:
            # Inline answers become a results file like any other, so one harvest path serves both.
            keys = job_keys(ctx, layout, job)
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


def _predictions(ctx: Context, results_dir: str) -> dict[str, object]:
    """The prediction files a Vertex AI job wrote (read where they are: no copy), in name order."""
    prefix = results_dir.removeprefix(ctx.blobs.url + "/").rstrip("/") + "/"
    found = sorted(
        (info.name, info.size)
        for info in ctx.blobs.list(prefix)
        if info.name.rsplit("/", 1)[-1].startswith("predictions") and info.name.endswith(".jsonl")
    )
    return {
        "prediction_files": [name for name, _ in found],
        "prediction_sizes": [size for _, size in found],
        "results_copy_done": True,  # nothing to copy: the harvest reads them in place
    }


def cancel_jobs(ctx: Context, run: Run, jobs: list[Job]) -> None:
    """Queued jobs and now-lane chunks end at once; running batches are cancelled on the API and polled
    until they end."""
    for job in jobs:
        # A now-lane chunk being sent stops like a queued one: lines answered keep their outcomes.
        if job.phase is JobPhase.QUEUED or job.lane == "now":
            ctx.store.update_job(
                job.job_id,
                {
                    "phase": JobPhase.HARVESTING.value,
                    "state": JobState.JOB_STATE_CANCELLED.value,
                    "error": "cancelled",
                },
                if_phases=[job.phase],
            )
        elif job.phase is JobPhase.ACTIVE and job.batch_name:
            try:
                ctx.backend.cancel_batch(job.batch_name)
            except BackendPermanentError as exc:
                log.warning("cancel failed: %s", exc, extra={"run_id": run.run_id, "job": job.batch_name})
            ctx.store.update_job(job.job_id, {"error": "cancelled"})


def resubmit_retryable(ctx: Context, run: Run, jobs: list[Job]) -> int:
    """Lines of the latest attempt that failed retryably go into new queued jobs of the next attempt; or,
    when the latest attempt's creation was cut off (``attempt_cut_off``), its missing jobs are created.

    The next attempt's jobs are written down as a whole (its plan, in scratch) before the first is created,
    and each carries the attempt's job count: a failure or a kill between two creates leaves an attempt the
    lifecycle sees as incomplete, and the next advance completes it from the plan (creates are
    create-if-absent). Returns how many lines were put into new jobs.
    """
    attempt = max(job.attempt for job in jobs)
    layout = ctx.layout(run.run_id)
    if attempt_cut_off(jobs):
        records = read_records(ctx, layout.attempt_plan(attempt))
        if records is None:
            raise NotFoundError(f"the plan of attempt {attempt} is gone: {layout.attempt_plan(attempt)}")
        return _create_attempt(ctx, run, [Job.model_validate(record) for record in records])
    outcomes = load_outcomes(ctx, run, jobs)
    retry_keys = {
        key for key, outcome in outcomes.items() if outcome.retryable and outcome.attempt == attempt
    }
    if not retry_keys:
        return 0
    planner = ChunkPlanner(ctx, run, attempt=attempt + 1, first_chunk=0)
    try:
        for job in jobs:
            if job.attempt != attempt:
                continue
            lines = dict(iter_job_keys(ctx, layout, job))
            with ctx.blobs.open_read(job.request_object) as stream:
                for raw in iter_lines(stream):
                    request_line = content(raw)
                    if not request_line:
                        continue
                    key = orjson.loads(request_line)["key"]
                    if key in retry_keys:
                        planner.add(
                            job.model,
                            key,
                            lines.get(key, 0),
                            request_line,
                            job.estimated_tokens // max(job.request_count, 1),
                            priority=job.priority,
                            lane=job.lane,
                        )
        planned = planner.finish()
    except BaseException:
        planner.abort()
        raise
    new_jobs = [job.model_copy(update={"attempt_jobs": len(planned)}) for job in planned]
    write_records(ctx, layout.attempt_plan(attempt + 1), [job.model_dump(mode="json") for job in new_jobs])
    return _create_attempt(ctx, run, new_jobs)


def _create_attempt(ctx: Context, run: Run, new_jobs: list[Job]) -> int:
    """Create an attempt's planned jobs, those already there kept as they are."""
    created = sum(ctx.store.create_job(job) for job in new_jobs)
    lines = sum(job.request_count for job in new_jobs)
    log.info(
        "resubmitting %d retryable line(s) as attempt %d in %d job(s) (%d created now)",
        lines,
        new_jobs[0].attempt,
        len(new_jobs),
        created,
        extra={"run_id": run.run_id},
    )
    return lines
