"""What happens next to a run: the lifecycle decided in one place (pure).

``next_step`` looks at a run and its jobs and names the one thing to do now; ``usecases.advance`` does
it, reads the records again and asks once more, until the answer is to wait. Every trigger (a file, a
message, the poller, ``serve``, ``run --wait``) goes through that one loop.

    RECEIVED --submit--> SUBMITTED --(a job ends)--> HARVESTING --settle--> SUCCEEDED | PARTIAL | FAILED
        |  \\--transient failure: backoff, submit again                       CANCELLED (on request)
        \\--unusable input, budget cap, cancel before submission --> FAILED | CANCELLED

    waiting lines (their request in flight in an older run): --resolve_waiting, once that run ended-->
        served from its image, or sent in new chunks; the run neither retries nor settles while any wait

    job: QUEUED --launch--> CREATING --create/adopt--> ACTIVE --ends--> HARVESTING --harvest--> DONE
                 (in-flight cap)   \\--refused / gave up--------------------^

    now-lane job: QUEUED --work_now (or dispatch_now, then work_now elsewhere)--> ACTIVE --every line
                  answered--> DONE                (cancelled: HARVESTING --harvest--> DONE)

Actions that may leave nothing changed (looking a create up, polling, launching under a full cap) make
one pass per call, in this order, never going back: ``done`` names the actions already taken, so the
loop always ends, and a job launched in this call is not polled before the next.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from enum import StrEnum

from promptdrop.records import Job, Run
from promptdrop.states import JobPhase, RunState


class Action(StrEnum):
    NOTHING = "nothing"  # the run has ended
    WAIT = "wait"  # nothing to do until time passes (backoff, jobs running on the API)
    SUBMIT = "submit"  # stage, validate, estimate, write the chunks: RECEIVED -> SUBMITTED
    CANCEL_UNSUBMITTED = "cancel_unsubmitted"  # cancelled while RECEIVED: every line cancelled
    CANCEL_JOBS = "cancel_jobs"  # cancel requested: queued jobs end, running batches are cancelled
    RECOVER = "recover"  # CREATING jobs: find a create that may have landed, else create (bounded)
    REFRESH = "refresh"  # ACTIVE jobs: read their state from the API
    HARVEST = "harvest"  # HARVESTING jobs: write images and outcomes, checkpointed
    LAUNCH = "launch"  # QUEUED jobs: create batches while the in-flight caps allow
    WORK_NOW = "work_now"  # now-lane jobs: send their unanswered lines with generate_content, checkpointed
    DISPATCH_NOW = "dispatch_now"  # now-lane jobs to hand over: one message per chunk to the now topic
    # Lines waiting for another run paying for the same request: served from its image, or sent by this run
    # once it has ended without one (once per call: usually every payer is still running).
    RESOLVE_WAITING = "resolve_waiting"
    RETRY = "retry"  # every job done, retryable lines left and attempts left: a new attempt (or the
    # newest attempt's creation was cut off: its missing jobs created)
    SETTLE = "settle"  # every job done: manifest, summary, event, terminal state


# Actions that need not change any record: one pass per call, in this order.
ONE_PASS = (Action.RECOVER, Action.REFRESH, Action.LAUNCH)


def _passed(action: Action, done: Collection[Action]) -> bool:
    """The pass is at or beyond ``action`` already."""
    return action in ONE_PASS and any(later in done for later in ONE_PASS[ONE_PASS.index(action) :])


@dataclass(frozen=True, slots=True)
class Step:
    action: Action
    jobs: tuple[str, ...] = ()  # the job ids the action is about, in (attempt, chunk) order

    @property
    def final(self) -> bool:
        """Nothing more to do in this call."""
        return self.action in (Action.NOTHING, Action.WAIT)


def needs_cancel(job: Job) -> bool:
    """A job a cancelled run still has to stop: queued, being sent (now lane), or created and not yet told
    to stop."""
    if job.phase is JobPhase.QUEUED:
        return True
    if job.lane == "now":
        return job.phase is JobPhase.ACTIVE
    return job.phase is JobPhase.ACTIVE and not job.state.terminal and job.error != "cancelled"


def retryable_left(jobs: Sequence[Job], max_attempts: int) -> bool:
    """The latest attempt left retryable lines and another attempt is allowed."""
    if not jobs:
        return False
    latest = max(job.attempt for job in jobs)
    return latest < max_attempts and any(job.retryable for job in jobs if job.attempt == latest)


def attempt_cut_off(jobs: Sequence[Job]) -> bool:
    """The latest attempt has fewer jobs than were planned for it: its creation stopped part-way (a store
    error, a kill), and the lines of its missing jobs would otherwise end with their previous failure."""
    if not jobs:
        return False
    latest = max(job.attempt for job in jobs)
    newest = [job for job in jobs if job.attempt == latest]
    return len(newest) < max(job.attempt_jobs for job in newest)


def _now_lane_step(
    jobs: Sequence[Job], now: float, done: Collection[Action], work_now: bool, redispatch_after: float
) -> Step | None:
    """Send the now lane's open chunks (once per call), or hand over those not handed over recently."""
    open_jobs = [job for job in jobs if job.lane == "now" and job.phase in (JobPhase.QUEUED, JobPhase.ACTIVE)]
    if work_now:
        if open_jobs and Action.WORK_NOW not in done:
            return Step(Action.WORK_NOW, tuple(job.job_id for job in open_jobs))
        return None
    due = tuple(
        job.job_id
        for job in open_jobs
        if job.dispatched_at is None or now - max(job.dispatched_at, job.updated_at) >= redispatch_after
    )
    if due and Action.DISPATCH_NOW not in done:
        return Step(Action.DISPATCH_NOW, due)
    return None


def refresh_due(run: Run, job: Job, *, now: float, poll_every: float, wake: Collection[str]) -> bool:
    """An ACTIVE job is asked about now: every call when polling alone (``poll_every`` 0); with webhooks on,
    when a delivery named it (``wake``), when ``poll_every`` passed since the last look (the net for a lost
    delivery), and always once past its deadline or while a cancel is taking effect (no event says so)."""
    if poll_every <= 0 or job.job_id in wake or job.checked_at is None:
        return True
    if run.cancel_requested or job.error in ("deadline", "cancelled"):
        return True
    if job.deadline_at is not None and now >= job.deadline_at:
        return True
    return now >= job.checked_at + poll_every


def next_step(
    run: Run,
    jobs: Sequence[Job],
    *,
    now: float,
    max_attempts: int,
    done: Collection[Action] = frozenset(),
    work_now: bool = True,
    redispatch_after: float = 900.0,
    poll_every: float = 0.0,
    wake: Collection[str] = frozenset(),
) -> Step:
    """The one thing to do next for ``run`` with its ``jobs``; ``done``: actions already taken in this call.

    ``work_now``: this caller sends now-lane lines itself; otherwise it hands their chunks over (dispatch),
    and hands over again a chunk that made no progress for ``redispatch_after`` seconds (its message lost
    or dead-lettered, its worker killed).
    ``poll_every``: seconds between polls of a running batch job (0: every call; webhooks on: the net's
    interval); ``wake``: job ids a webhook delivery just named, polled now whatever the interval.
    """
    if run.state.terminal:
        return Step(Action.NOTHING)
    if run.state is RunState.RECEIVED:
        if run.cancel_requested:
            return Step(Action.CANCEL_UNSUBMITTED)
        if now < run.next_attempt_at or Action.SUBMIT in done:
            return Step(Action.WAIT)
        return Step(Action.SUBMIT)

    def ids(phase: JobPhase) -> tuple[str, ...]:
        return tuple(job.job_id for job in jobs if job.phase is phase and job.lane == "batch")

    by_id = {job.job_id: job for job in jobs}

    if Action.RETRY not in done and attempt_cut_off(jobs):
        return Step(Action.RETRY)  # completes the attempt (from its plan) before any of it is worked
    if run.cancel_requested and Action.CANCEL_JOBS not in done:
        to_cancel = tuple(job.job_id for job in jobs if needs_cancel(job))
        if to_cancel:
            return Step(Action.CANCEL_JOBS, to_cancel)
    # Before the launch, so the chunks of lines it sends go out in the same call. A cancelled run stops
    # waiting: its waiting lines end cancelled.
    waiting = run.waiting > 0 and not run.cancel_requested
    if waiting and Action.RESOLVE_WAITING not in done:
        return Step(Action.RESOLVE_WAITING)
    due = tuple(
        job_id
        for job_id in ids(JobPhase.ACTIVE)
        if refresh_due(run, by_id[job_id], now=now, poll_every=poll_every, wake=wake)
    )
    harvesting = tuple(job.job_id for job in jobs if job.phase is JobPhase.HARVESTING)  # both lanes
    # LAUNCH before HARVEST: a job that ended gave its quota back, so the next one is created first and the
    # API works on it while this call harvests (harvest first left the API idle for every harvest: with
    # the tier's enqueued-token quota a big file runs job after job, scripts/bench --only scale).
    candidates = (
        (Action.RECOVER, ids(JobPhase.CREATING)),
        (Action.REFRESH, due),
        (Action.LAUNCH, () if run.cancel_requested else ids(JobPhase.QUEUED)),
        (Action.HARVEST, harvesting),
    )
    for action, job_ids in candidates:
        if job_ids and not _passed(action, done):
            return Step(action, job_ids)
    # After the launch, so the batches run on the API while the now lines are sent.
    now_step = _now_lane_step(jobs, now, done, work_now, redispatch_after)
    if now_step is not None and not run.cancel_requested:
        return now_step
    if any(job.phase is not JobPhase.DONE for job in jobs) or waiting:
        return Step(Action.WAIT)  # a run with waiting lines neither retries nor settles before they resolve
    if not run.cancel_requested and retryable_left(jobs, max_attempts):
        return Step(Action.RETRY)
    return Step(Action.SETTLE)
