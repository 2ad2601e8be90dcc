"""The now lane: lines that cannot wait for a batch, sent one by one with ``models.generate_content``.

Submission writes a run's now lines into now-lane jobs (chunks of at most ``now_chunk_lines``, with the same
request file and key list as a batch job's: the request a batch line would carry). ``work_now_job`` sends the
lines of one chunk that have no outcome yet, at most ``now_concurrency`` at a time, and records each answer as
soon as it comes, the way a harvest records a result line: the image written under the key's one name, then
the outcome part, then the job's checkpoint. So a kill neither loses a finished line nor sends it again.

A send whose answer never came (a timeout, a dropped connection, a kill mid-call) may still be billed, and
no synchronous API lets a client avoid that. So every send is counted in the job record *before* the call
(``Job.now_sends``), the SDK's own retries are off for this call (it would send a timed-out call again), and a
line sent ``max_attempts`` times over the run's attempts is not sent again: it fails ``no_answer``. Only a
clear refusal (429, 503: the API did not take the call) is sent again here after a pause, and not counted.
Each call's timeout is cut to the time budget left, so a chunk never runs past its function's time.

Calls are paced under Google's spend-based rate limit: before each send, its interactive price is taken from
one rolling 10-minute window in the job store (``pacing``; ``PROMPTDROP_NOW_SPEND_PER_10_MIN``, default the
tier's figure), shared by every process and function instance; a call that would pass it waits there. A 429
that comes anyway waits as its ``RetryInfo`` says (and holds this call's other sends as long), or, without
one, 1, 2, 4, 8 s. A wait that would outlast the time budget pauses the chunk: the next advance goes on.

In the cloud, ``dispatch_now_jobs`` hands each chunk over as one message on the now topic instead; the
``on_now_chunk`` function then advances the run with ``work_now`` (``lifecycle.next_step`` decides both).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Generator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import Any

import orjson

from promptdrop import pacing, results
from promptdrop.errors import TransientError
from promptdrop.outcomes import LineError, Outcome
from promptdrop.records import Job, Run
from promptdrop.settings import Settings
from promptdrop.states import JobPhase
from promptdrop.streams import content, iter_lines
from promptdrop.usecases.context import Context
from promptdrop.usecases.gallery import thumbnails_for
from promptdrop.usecases.harvest import Checkpointer, ImageWriter, store_image
from promptdrop.usecases.workfiles import iter_job_keys, iter_job_outcomes

log = logging.getLogger(__name__)

# No call is started later than this before the time budget ends: an image takes 8-12 s on the standard
# API, and the cloud's budget (480 s) leaves 60 s more before the function's limit (540 s).
CALL_MARGIN_SECONDS = 30.0
# Answers by which the API says it did not take the call (rate limit, overloaded): the line is sent again
# in this call after the pause its RetryInfo asks for (else one doubled each time), and that send is not
# counted as one it may bill.
REFUSED_HTTP_CODES = frozenset({429, 503})
REFUSED_TRIES = 5  # tries of a refused line in one call (as many as the SDK's own retries)
REFUSED_FIRST_PAUSE = 1.0  # seconds
REFUSED_MAX_PAUSE = 16.0


def _requests(ctx: Context, job: Job, answered: set[str]) -> Generator[tuple[str, dict[str, Any]]]:
    """(key, request) of the chunk's lines that have no outcome yet, in request order."""
    with ctx.blobs.open_read(job.request_object) as stream:
        for raw in iter_lines(stream):
            line = content(raw)
            if line:
                item = orjson.loads(line)
                if item["key"] not in answered:
                    yield item["key"], item["request"]


@dataclass(slots=True)
class _Line:
    key: str
    number: str  # its line in the input file: the key of Job.now_sends
    request: dict[str, Any]
    refused: int = 0  # clear refusals (429, 503) in this call


def _earlier_sends(ctx: Context, run: Run, job: Job) -> dict[str, int]:
    """Sends of each line (by input line) in the run's earlier now-lane attempts: the bound is per line."""
    totals: dict[str, int] = {}
    if job.attempt > 1:
        for other in ctx.store.list_jobs(run.run_id):
            if other.lane == "now" and other.attempt < job.attempt:
                for number, sends in other.now_sends.items():
                    totals[number] = totals.get(number, 0) + sends
    return totals


def _refused(answer: dict[str, Any]) -> bool:
    """The API answered that it did not take the call (the error's code is the HTTP status here)."""
    error = answer.get("error")
    return isinstance(error, dict) and error.get("code") in REFUSED_HTTP_CODES


def _spend_wait(ctx: Context, model: str, request: dict[str, Any]) -> float:
    """Seconds before this call fits the spend window (0.0: its price was taken from the window now)."""
    limit = ctx.settings.now_spend_limit
    if not limit:
        return 0.0
    price = pacing.call_price(model, request)
    return ctx.store.take_spend_window(
        pacing.NOW_SPEND_KEY, price, limit, ctx.clock(), pacing.SPEND_WINDOW_SECONDS
    )


def _no_answer(line: _Line, job: Job, sends: int, settings: Settings) -> Outcome:
    message = (
        f"no answer after {sends} sends (PROMPTDROP_MAX_ATTEMPTS={settings.max_attempts}), each waiting up to "
        f"{settings.api_timeout:g} s (PROMPTDROP_API_TIMEOUT; less when the time budget left was shorter); "
        "not sent again, as the API may have billed each send"
    )
    return Outcome.failure(line.key, LineError("no_answer", message), attempt=job.attempt, model=job.model)


def _sends_used_up(outcome: Outcome, sends: int, settings: Settings) -> Outcome:
    """A retryable failure of a line that may not be sent again: final, saying why."""
    error = dict(outcome.error or {})
    error["message"] = (
        f"{error.get('message') or 'failed'} (sent {sends} times, PROMPTDROP_MAX_ATTEMPTS={settings.max_attempts}: "
        "not sent again)"
    )
    error["retryable"] = False
    return replace(outcome, error=error)


def work_now_job(ctx: Context, run: Run, job: Job, deadline: float | None) -> bool:
    """Send the chunk's unanswered lines. True when every line has its outcome (the job is DONE); False
    when the time budget ran out first (the next call goes on from the checkpoint).

    Raises TransientError when a call got no answer at all and its line may be sent again, after recording
    every answer that came.
    """
    extra = {"run_id": run.run_id, "job": job.job_id}
    if job.phase is JobPhase.QUEUED:
        job = ctx.store.update_job(job.job_id, {"phase": JobPhase.ACTIVE.value}, if_phases=[JobPhase.QUEUED])
    layout = ctx.layout(run.run_id)
    answered = {outcome.key for outcome in iter_job_outcomes(ctx, layout, job)}
    numbers = dict(iter_job_keys(ctx, layout, job))
    settings = ctx.settings
    limit = max(1, settings.max_attempts)
    concurrency = max(1, settings.now_concurrency)
    earlier = _earlier_sends(ctx, run, job)
    sends = dict(job.now_sends)
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
        calls: dict[Future[dict[str, Any]], _Line] = {}
        # Refused lines waiting to be sent again: (monotonic time due, order, line).
        paused: list[tuple[float, int, _Line]] = []
        order = itertools.count()
        hold_until = 0.0  # monotonic: a 429's RetryInfo holds every send of this call until then

        def used(line: _Line) -> int:
            return earlier.get(line.number, 0) + sends.get(line.number, 0)

        def count(line: _Line, change: int) -> None:
            sends[line.number] = sends.get(line.number, 0) + change
            checkpoint.job = ctx.store.update_job(job.job_id, {"now_sends": sends})

        def record(outcome: Outcome) -> None:
            checkpoint.add(outcome, 0)
            # Each answer is recorded at once: a kill after this never sends the line again.
            checkpoint.commit(0)
            answered.add(outcome.key)

        def fits(after: float = 0.0) -> bool:
            """A call started ``after`` seconds from now ends before the invocation's time is up."""
            return deadline is None or ctx.clock() + after + CALL_MARGIN_SECONDS <= deadline

        def send(line: _Line) -> None:
            timeout = settings.api_timeout
            if deadline is not None:
                timeout = min(timeout, deadline - ctx.clock())
            count(line, 1)  # before the call: a send whose answer is lost still counts
            call = pool.submit(
                ctx.backend.generate_content, model=job.model, request=line.request, timeout=timeout
            )
            calls[call] = line

        def dispatch(line: _Line) -> None:
            """Send the line now, or park it until a RetryInfo's hold ends and its price fits the window."""
            nonlocal out_of_time
            held = hold_until - time.monotonic()
            wait_for = held if held > 0 else _spend_wait(ctx, job.model, line.request)
            if wait_for <= 0:
                send(line)
            elif fits(wait_for):
                log.info("now line %s waits %.1f s (spend rate, RetryInfo)", line.key, wait_for, extra=extra)
                heapq.heappush(paused, (time.monotonic() + wait_for, next(order), line))
            else:
                out_of_time = True  # the next call sends it

        def send_next() -> None:
            nonlocal out_of_time
            while True:
                if not fits():
                    out_of_time = True
                    return
                item = next(pending, None)
                if item is None:
                    return
                key, request = item
                line = _Line(key, str(numbers.get(key, key)), request)
                if used(line) < limit:
                    dispatch(line)
                    return
                # Its sends were used up by calls whose answers were lost (a kill right after them).
                record(_no_answer(line, job, used(line), settings))

        for _ in range(concurrency):
            send_next()
        while calls or paused:
            if paused and len(calls) < concurrency and paused[0][0] <= time.monotonic():
                line = heapq.heappop(paused)[2]
                if fits():
                    dispatch(line)
                else:
                    out_of_time = True  # the next call sends it
                continue
            pause = max(0.0, paused[0][0] - time.monotonic()) if paused else None
            if not calls:
                time.sleep(pause or 0.0)
                continue
            finished, _ = wait(calls, timeout=pause, return_when=FIRST_COMPLETED)
            for call in finished:
                line = calls.pop(call)
                try:
                    answer = call.result()
                except TransientError as exc:
                    if used(line) >= limit:
                        log.warning("no answer for %s: %s (not sent again)", line.key, exc, extra=extra)
                        record(_no_answer(line, job, used(line), settings))
                        if no_answer is None:
                            send_next()
                    else:
                        log.warning("no answer for %s: %s (sent again later)", line.key, exc, extra=extra)
                        no_answer = no_answer or exc
                        paused.clear()  # left for the next call, like the lines not sent yet
                    continue
                if _refused(answer):
                    count(line, -1)  # the API did not take this call: not a send it may bill
                    line.refused += 1
                    asked = pacing.retry_delay(answer["error"])
                    if asked is None:
                        wait_for = min(REFUSED_FIRST_PAUSE * 2 ** (line.refused - 1), REFUSED_MAX_PAUSE)
                    else:  # a project-wide limit: every other send of this call waits as long
                        wait_for = asked
                        hold_until = max(hold_until, time.monotonic() + asked)
                    if line.refused < REFUSED_TRIES and no_answer is None:
                        if fits(wait_for):
                            heapq.heappush(paused, (time.monotonic() + wait_for, next(order), line))
                        else:
                            out_of_time = True  # the next call sends it
                        continue
                parsed = results.outcome_from_item(answer, line.key)
                outcome = store_image(parsed, line.key, job, layout, writer, run)
                if outcome.retryable and used(line) >= limit and job.attempt < settings.max_attempts:
                    outcome = _sends_used_up(outcome, used(line), settings)
                record(outcome)
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
