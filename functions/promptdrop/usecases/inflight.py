"""Lines that wait for another run paying for the same request: resolved once that run has ended.

Submission leaves a line waiting (``cache.Waiting``) when an older unfinished run has the same request in
flight. Each advance of the waiting run looks at the runs it waits for (``Run.waiting_on``); once one has
ended, its waiting lines are resolved in a round: served from the image it paid for, like a cache hit
(``cached_from`` names it), or, when it ended without one (failed, cancelled, expired), sent by this run
in new chunks of its latest attempt (its first when it has no job), their requests claimed as in flight.
A round holds at most ``ROUND_LINES`` lines (their images copied many at a time), and a call goes on to
the next round while its time lasts, so a re-dropped catalogue of 100,000 waiting lines is served over a
few invocations, none cut off by the function's time limit.

Crash safety: a round's decision is written whole (``wait_round``) before any of its jobs is created; a
round cut off after that is finished from the record (the chunks are deterministic, jobs created if
absent, copies idempotent), and the run's counters move on only after it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from promptdrop.outcomes import Outcome
from promptdrop.ports import InFlight
from promptdrop.records import Job, Run
from promptdrop.states import RUN_ACTIVE
from promptdrop.usecases import cache
from promptdrop.usecases.chunks import ChunkPlanner
from promptdrop.usecases.context import Context
from promptdrop.usecases.leases import renew
from promptdrop.usecases.submit import plan_lines
from promptdrop.usecases.workfiles import read_records, write_records

log = logging.getLogger(__name__)

# Waiting lines per round: a few seconds of copies (many at a time), so a round fits one invocation and a
# cut-off one redoes little; a call goes on to the next round while its time lasts.
ROUND_LINES = 2000


def resolve_waiting(ctx: Context, run: Run, jobs: Sequence[Job], deadline: float | None = None) -> int:
    """Resolve the waiting lines whose payer has ended, a round of at most ``ROUND_LINES`` at a time while
    the time lasts; returns how many (0: every payer still runs)."""
    total = 0
    while run.waiting:
        resolved = _resolve_round(ctx, run, jobs)
        total += resolved
        if not resolved or (deadline is not None and ctx.clock() >= deadline):
            break
        renew(ctx, run.run_id)
        current = ctx.store.get_run(run.run_id)
        if current is None:
            break
        run, jobs = current, ctx.store.list_jobs(run.run_id)
    return total


def _resolve_round(ctx: Context, run: Run, jobs: Sequence[Job]) -> int:
    """One round: decide (or take the decision a cut-off call wrote), create its jobs, count it done."""
    layout = ctx.layout(run.run_id)
    number = run.wait_rounds
    record = read_records(ctx, layout.wait_round(number))
    ended = {payer for payer in run.waiting_on if not cache.unfinished(ctx, payer)}
    if record is None and not ended:
        return 0
    resolved: set[str] = set()
    for earlier in range(number):
        resolved.update(
            item["key"] for item in read_records(ctx, layout.wait_round(earlier)) or [] if "key" in item
        )
    pending = [w for w in cache.read_waiting(ctx, layout.waiting) or [] if w.key not in resolved]
    if record is None:
        ready = [w for w in pending if w.payer.run_id in ended][:ROUND_LINES]
        record = _decide(ctx, run, jobs, ready)
        if len(record) == 1:  # nothing of theirs left: only the payers' list is stale
            payers = sorted({w.payer.run_id for w in pending})
            ctx.store.update_run(run.run_id, {"waiting_on": payers}, if_states=RUN_ACTIVE)
            return 0
    header, entries = record[0], record[1:]
    by_key = {w.key: w for w in pending}
    sent = [by_key[item["key"]] for item in entries if item.get("send") and item["key"] in by_key]
    if sent:
        planner = ChunkPlanner(ctx, run, attempt=header["attempt"], first_chunk=header["first_chunk"])
        try:
            plan_lines(ctx, run, {w.key: w.model for w in sent}, planner)
            new_jobs = planner.finish()
        except BaseException:
            planner.abort()
            raise
        _claim(ctx, run, sent)
        for job in new_jobs:
            ctx.store.create_job(job)
    done = {item["key"] for item in entries}
    still = [w for w in pending if w.key not in done]
    ctx.store.update_run(
        run.run_id,
        {
            "waiting": len(still),
            "waiting_on": sorted({w.payer.run_id for w in still}),
            "wait_rounds": number + 1,
        },
        if_states=RUN_ACTIVE,
    )
    log.info(
        "%d waiting line(s) resolved: %d served from the runs that paid, %d sent; %d still waiting",
        len(entries),
        sum("outcome" in item and item["outcome"].get("cached_from") is not None for item in entries),
        len(sent),
        len(still),
        extra={"run_id": run.run_id},
    )
    return len(entries)


def _decide(ctx: Context, run: Run, jobs: Sequence[Job], ready: list[cache.Waiting]) -> list[dict[str, Any]]:
    """The round's record, written before any of its jobs: where its chunks go, then each line served
    (its outcome) or to send; lines refused when their request is made again carry that outcome."""
    layout = ctx.layout(run.run_id)
    attempt = max((job.attempt for job in jobs), default=1)
    first_chunk = 1 + max((job.chunk for job in jobs if job.attempt == attempt), default=-1)
    header: dict[str, Any] = {"attempt": attempt, "first_chunk": first_chunk}
    split = cache.CacheSplit(ctx, run)
    entries: list[dict[str, Any]] = []
    to_send: dict[str, str] = {}
    served = split.serve_paid({w.key: w.payer.fingerprint for w in ready})
    for waiting in ready:
        if waiting.key in served:
            entries.append({"key": waiting.key, "outcome": served[waiting.key].to_json()})
        else:
            to_send[waiting.key] = waiting.model
    refused: list[Outcome] = []
    if to_send:
        planner = ChunkPlanner(ctx, run, attempt=attempt, first_chunk=first_chunk)
        try:
            refused = plan_lines(ctx, run, to_send, planner)
        finally:
            planner.abort()  # only the lines refused are wanted here; the round's chunks are written after
    refused_keys = {outcome.key for outcome in refused}
    entries += [{"key": outcome.key, "outcome": outcome.to_json()} for outcome in refused]
    entries += [{"key": key, "send": True} for key in to_send if key not in refused_keys]
    record = [header, *entries]
    if entries:
        write_records(ctx, layout.wait_round(run.wait_rounds), record)
    return record


def _claim(ctx: Context, run: Run, sent: Sequence[cache.Waiting]) -> None:
    """This run pays for them now: claimed as in flight (a third run waits for it) and listed with the
    fingerprints settle records in the cache and releases."""
    layout = ctx.layout(run.run_id)
    fingerprints = {item["key"]: item for item in read_records(ctx, layout.fingerprints) or []}
    cache.claim_many(ctx, [InFlight(w.payer.fingerprint, run.run_id, w.key) for w in sent])
    for waiting in sent:
        fingerprints[waiting.key] = {
            "key": waiting.key,
            "fingerprint": waiting.payer.fingerprint,
            "fresh": False,
        }
    write_records(ctx, layout.fingerprints, fingerprints.values())
