"""The now lane: lines that cannot wait for a batch, sent one by one with ``models.generate_content``.

Submission writes a run's now lines into now-lane jobs (chunks of at most ``now_chunk_lines``, with the same
request file and key list as a batch job's: the request a batch line would carry). ``work_now_job`` sends the
lines of one chunk that have no outcome yet, at most ``now_concurrency`` at a time (the SDK retries 429 and
5xx), and records each answer as soon as it comes, the way a harvest records a result line: the image
written under the key's one name, then the outcome part, then the job's checkpoint. So a kill neither loses
a finished line nor sends it again. A line whose call was sent but whose answer never came (a kill mid-call,
a connection dropped after the retries) has no outcome and is sent again: the API may bill both calls,
which no synchronous API lets a client avoid (README, "The now lane").

In the cloud, ``dispatch_now_jobs`` hands each chunk over as one message on the now topic instead; the
``on_now_chunk`` function then advances the run with ``work_now`` (``lifecycle.next_step`` decides both).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Generator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import orjson

from promptdrop import results
from promptdrop.errors import TransientError
from promptdrop.records import Job, Run
from promptdrop.states import JobPhase
from promptdrop.streams import content, iter_lines
from promptdrop.usecases.context import Context
from promptdrop.usecases.gallery import thumbnails_for
from promptdrop.usecases.harvest import Checkpointer, ImageWriter, store_image
from promptdrop.usecases.workfiles import iter_job_outcomes

log = logging.getLogger(__name__)

# No call is started later than this before the time budget ends: an image takes 8-12 s on the standard
# API, and the cloud's budget (480 s) leaves 60 s more before the function's limit (540 s).
CALL_MARGIN_SECONDS = 30.0


def _requests(ctx: Context, job: Job, answered: set[str]) -> Generator[tuple[str, dict[str, Any]]]:
    """(key, request) of the chunk's lines that have no outcome yet, in request order."""
    with ctx.blobs.open_read(job.request_object) as stream:
        for raw in iter_lines(stream):
            line = content(raw)
            if line:
                item = orjson.loads(line)
                if item["key"] not in answered:
                    yield item["key"], item["request"]


def work_now_job(ctx: Context, run: Run, job: Job, deadline: float | None) -> bool:
    """Send the chunk's unanswered lines. True when every line has its outcome (the job is DONE); False
    when the time budget ran out first (the next call goes on from the checkpoint).

    Raises TransientError when a call got no answer at all, after recording every answer that came.
    """
    extra = {"run_id": run.run_id, "job": job.job_id}
    if job.phase is JobPhase.QUEUED:
        job = ctx.store.update_job(job.job_id, {"phase": JobPhase.ACTIVE.value}, if_phases=[JobPhase.QUEUED])
    layout = ctx.layout(run.run_id)
    answered = {outcome.key for outcome in iter_job_outcomes(ctx, layout, job)}
    settings = ctx.settings
    concurrency = max(1, settings.now_concurrency)
    no_answer: TransientError | None = None
    out_of_time = False
    writer = ImageWriter(ctx.blobs, 1, ctx.image_budget, after_write=thumbnails_for(ctx, layout))
    with (
        contextlib.ExitStack() as stack,
        writer,
        ThreadPoolExecutor(concurrency, thread_name_prefix="promptdrop-now") as pool,
    ):
        checkpoint = Checkpointer(ctx, run, job, writer)
        pending = stack.enter_context(contextlib.closing(_requests(ctx, job, answered)))
        calls: dict[Future[dict[str, Any]], str] = {}

        def send_next() -> None:
            nonlocal out_of_time
            # A call started now should end before the invocation's time is up.
            if deadline is not None and ctx.clock() + CALL_MARGIN_SECONDS > deadline:
                out_of_time = True
                return
            item = next(pending, None)
            if item is not None:
                key, request = item
                calls[pool.submit(ctx.backend.generate_content, model=job.model, request=request)] = key

        for _ in range(concurrency):
            send_next()
        while calls:
            finished, _ = wait(calls, return_when=FIRST_COMPLETED)
            for call in finished:
                key = calls.pop(call)
                try:
                    answer = call.result()
                except TransientError as exc:
                    log.warning("no answer for %s: %s (sent again later)", key, exc, extra=extra)
                    no_answer = no_answer or exc
                    continue
                parsed = results.outcome_from_item(answer, key)
                checkpoint.add(store_image(parsed, key, job, layout, writer, run), 0)
                # Each answer is recorded at once: a kill after this never sends the line again.
                checkpoint.commit(0)
                answered.add(key)
                if no_answer is None:
                    send_next()
        if no_answer is not None:
            raise no_answer
        if out_of_time:
            log.info("now lane paused at %d answered line(s) (time budget)", len(answered), extra=extra)
            return False
        checkpoint.commit(0, {"phase": JobPhase.DONE.value})
    log.info("now lane: %d line(s) answered", len(answered), extra=extra)
    return True


def dispatch_now_jobs(ctx: Context, run: Run, jobs: list[Job]) -> None:
    """Hand each chunk over to the now topic (one message each; at least once: a chunk that is DONE when
    its message comes is acknowledged and nothing is sent)."""
    if ctx.now_dispatch is None:
        raise TransientError("the now lane is to be handed over but no now topic is configured")
    for job in jobs:
        ctx.now_dispatch.publish({"run_id": run.run_id, "job_id": job.job_id})
        ctx.store.update_job(
            job.job_id,
            {"phase": JobPhase.ACTIVE.value, "dispatched_at": ctx.clock()},
            if_phases=[JobPhase.QUEUED, JobPhase.ACTIVE],
        )
        log.info("now chunk handed over", extra={"run_id": run.run_id, "job": job.job_id})
