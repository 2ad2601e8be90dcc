"""The run lifecycle as a table: every run state against every job phase, then cancel, backoff, retry, one pass."""

from __future__ import annotations

import pytest

from promptdrop.lifecycle import Action, Step, next_step
from promptdrop.records import Job, Run, RunSource
from promptdrop.states import JobPhase, JobState, RunState

NOW = 1_700_000_000.0


def run(state: RunState, **fields: object) -> Run:
    return Run.model_validate(
        {
            "run_id": "r",
            "claim_key": "file:b/inbox/r.jsonl#1",
            "state": state,
            "source": RunSource(kind="file", object="inbox/r.jsonl", generation="1", name="r"),
            "input_object": "outputs/r/_work/input.jsonl",
            "output_folder": "outputs/r/",
            "model": "m",
            "created_at": NOW,
            "updated_at": NOW,
            **fields,
        }
    )


def job(phase: JobPhase, *, chunk: int = 0, attempt: int = 1, **fields: object) -> Job:
    return Job.model_validate(
        {
            "job_id": f"r-a{attempt}-c{chunk:04d}",
            "run_id": "r",
            "attempt": attempt,
            "chunk": chunk,
            "phase": phase,
            "model": "m",
            "request_object": "x",
            "request_count": 1,
            "request_bytes": 1,
            "estimated_tokens": 1,
            "created_at": NOW,
            "updated_at": NOW,
            **fields,
        }
    )


def step(current: Run, jobs: list[Job], done: frozenset[Action] = frozenset(), max_attempts: int = 3) -> Step:
    return next_step(current, jobs, now=NOW, max_attempts=max_attempts, done=done)


ACTIVE_STATES = [RunState.SUBMITTED, RunState.HARVESTING]
# What a submitted (or harvesting) run with one job in each phase does next; None: no jobs at all.
BY_PHASE: dict[JobPhase | None, Action] = {
    None: Action.SETTLE,  # nothing was valid: every line is accounted for at once
    JobPhase.QUEUED: Action.LAUNCH,
    JobPhase.CREATING: Action.RECOVER,
    JobPhase.ACTIVE: Action.REFRESH,
    JobPhase.HARVESTING: Action.HARVEST,
    JobPhase.DONE: Action.SETTLE,
}
TABLE = [
    *[(RunState.RECEIVED, phase, Action.SUBMIT) for phase in BY_PHASE],  # jobs of a crashed submit: again
    *[(state, phase, action) for state in ACTIVE_STATES for phase, action in BY_PHASE.items()],
    *[
        (state, phase, Action.NOTHING)
        for state in (RunState.SUCCEEDED, RunState.PARTIAL, RunState.FAILED, RunState.CANCELLED)
        for phase in BY_PHASE
    ],
]


def test_the_table_covers_every_run_state_and_job_phase() -> None:
    """Each run state meets each job phase (and no job) exactly once in the table."""
    pairs = [(state, phase) for state, phase, _ in TABLE]
    assert sorted(pairs, key=str) == sorted(
        ((state, phase) for state in RunState for phase in [None, *JobPhase]), key=str
    )


@pytest.mark.parametrize(("state", "phase", "expected"), TABLE, ids=lambda v: str(getattr(v, "value", v)))
def test_next_step_by_run_state_and_job_phase(
    state: RunState, phase: JobPhase | None, expected: Action
) -> None:
    """The one next action for a run in ``state`` with one job in ``phase``."""
    jobs = [] if phase is None else [job(phase)]
    result = step(run(state), jobs)
    assert result.action is expected
    if expected in (Action.LAUNCH, Action.RECOVER, Action.REFRESH, Action.HARVEST):
        assert result.jobs == (jobs[0].job_id,)


def test_received_run_waits_out_its_backoff() -> None:
    """A submission that failed transiently is not tried again before next_attempt_at."""
    assert step(run(RunState.RECEIVED, next_attempt_at=NOW + 1), []).action is Action.WAIT
    assert step(run(RunState.RECEIVED, next_attempt_at=NOW), []).action is Action.SUBMIT
    assert step(run(RunState.RECEIVED), [], frozenset({Action.SUBMIT})).action is Action.WAIT


@pytest.mark.parametrize(
    ("phase", "expected"),
    [
        (JobPhase.QUEUED, Action.CANCEL_JOBS),
        (JobPhase.CREATING, Action.RECOVER),  # found or given up first; then cancelled like the others
        (JobPhase.ACTIVE, Action.CANCEL_JOBS),
        (JobPhase.HARVESTING, Action.HARVEST),
        (JobPhase.DONE, Action.SETTLE),
    ],
)
def test_cancel_requested(phase: JobPhase, expected: Action) -> None:
    """A cancelled run stops its jobs first, never launches, and settles once every job is done."""
    assert step(run(RunState.SUBMITTED, cancel_requested=True), [job(phase)]).action is expected


def test_cancel_before_submission_and_after_the_batch_was_told() -> None:
    """RECEIVED + cancel ends at once; an ACTIVE job already cancelled is polled, not cancelled again."""
    assert step(run(RunState.RECEIVED, cancel_requested=True), []).action is Action.CANCEL_UNSUBMITTED
    told = job(JobPhase.ACTIVE, error="cancelled")
    assert step(run(RunState.SUBMITTED, cancel_requested=True), [told]).action is Action.REFRESH
    ended = job(JobPhase.ACTIVE, state=JobState.JOB_STATE_CANCELLED)
    assert step(run(RunState.SUBMITTED, cancel_requested=True), [ended]).action is Action.REFRESH
    queued = job(JobPhase.QUEUED)
    assert step(
        run(RunState.SUBMITTED, cancel_requested=True), [queued, job(JobPhase.DONE, chunk=1)]
    ) == Step(Action.CANCEL_JOBS, (queued.job_id,))


@pytest.mark.parametrize(
    ("jobs", "max_attempts", "cancel", "expected"),
    [
        ([job(JobPhase.DONE, retryable=2)], 3, False, Action.RETRY),
        ([job(JobPhase.DONE, retryable=2)], 1, False, Action.SETTLE),  # no attempts left
        ([job(JobPhase.DONE, retryable=2)], 3, True, Action.SETTLE),  # cancelled: nothing new
        ([job(JobPhase.DONE, retryable=0)], 3, False, Action.SETTLE),
        # Only the latest attempt counts: its retryable lines were already resubmitted from attempt 1.
        ([job(JobPhase.DONE, retryable=5), job(JobPhase.DONE, attempt=2)], 3, False, Action.SETTLE),
        ([job(JobPhase.DONE), job(JobPhase.DONE, attempt=2, retryable=1)], 3, False, Action.RETRY),
        (
            [job(JobPhase.DONE, retryable=1), job(JobPhase.DONE, attempt=3, retryable=1)],
            3,
            False,
            Action.SETTLE,
        ),
        ([job(JobPhase.DONE, retryable=1), job(JobPhase.ACTIVE, chunk=1)], 3, False, Action.REFRESH),
    ],
)
def test_retry_or_settle_once_every_job_is_done(
    jobs: list[Job], max_attempts: int, cancel: bool, expected: Action
) -> None:
    """Retryable lines of the latest attempt go into a new attempt while attempts are left; else settle."""
    current = run(RunState.HARVESTING, cancel_requested=cancel)
    assert step(current, jobs, max_attempts=max_attempts).action is expected


def test_an_attempt_cut_off_part_way_is_completed_before_anything_else() -> None:
    """An attempt with fewer jobs than planned (its creation stopped after one): RETRY completes it first,
    once per call, even while its first job is queued or the run is being cancelled."""
    first = [job(JobPhase.DONE, retryable=1), job(JobPhase.DONE, chunk=1, retryable=1)]
    cut_off = [*first, job(JobPhase.QUEUED, attempt=2, attempt_jobs=2)]
    assert step(run(RunState.HARVESTING), cut_off) == Step(Action.RETRY)
    assert step(run(RunState.HARVESTING, cancel_requested=True), cut_off) == Step(Action.RETRY)
    assert step(run(RunState.HARVESTING), cut_off, done=frozenset({Action.RETRY})).action is Action.LAUNCH
    whole = [*cut_off, job(JobPhase.QUEUED, attempt=2, chunk=1, attempt_jobs=2)]
    assert step(run(RunState.HARVESTING), whole).action is Action.LAUNCH


def test_one_pass_per_call_never_goes_back() -> None:
    """Recover, refresh and launch are taken once per call, in that order; then the run waits."""
    jobs = [job(JobPhase.CREATING), job(JobPhase.ACTIVE, chunk=1), job(JobPhase.QUEUED, chunk=2)]
    current = run(RunState.SUBMITTED)
    done: set[Action] = set()
    seen = []
    while not (result := step(current, jobs, frozenset(done))).final:
        seen.append(result.action)
        done.add(result.action)
    assert seen == [Action.RECOVER, Action.REFRESH, Action.LAUNCH]
    assert result.action is Action.WAIT
    # A job launched in this call is not polled before the next call.
    assert step(current, [job(JobPhase.ACTIVE)], frozenset({Action.LAUNCH})).action is Action.WAIT


def test_harvest_is_not_limited_to_one_pass() -> None:
    """A job that ended while polling is harvested in the same call, after an earlier harvest."""
    done = frozenset({Action.REFRESH, Action.HARVEST})
    assert step(run(RunState.HARVESTING), [job(JobPhase.HARVESTING)], done).action is Action.HARVEST


# The now lane


def now_job(phase: JobPhase, *, chunk: int = 1, **fields: object) -> Job:
    return job(phase, chunk=chunk, lane="now", **fields)


@pytest.mark.parametrize("phase", [JobPhase.QUEUED, JobPhase.ACTIVE])
def test_open_now_chunks_are_sent_after_the_batches_are_launched(phase: JobPhase) -> None:
    jobs = [job(JobPhase.QUEUED), now_job(phase)]
    assert step(run(RunState.SUBMITTED), jobs) == Step(Action.LAUNCH, ("r-a1-c0000",))
    after_launch = frozenset({Action.LAUNCH})
    assert step(run(RunState.SUBMITTED), jobs, after_launch) == Step(Action.WORK_NOW, ("r-a1-c0001",))
    # Once per call: a chunk paused by the time budget waits for the next call.
    assert step(run(RunState.SUBMITTED), jobs, after_launch | {Action.WORK_NOW}).action is Action.WAIT


def test_now_chunks_are_never_launched_polled_or_counted_as_batches() -> None:
    jobs = [now_job(JobPhase.ACTIVE)]
    passed = frozenset({Action.WORK_NOW})
    assert step(run(RunState.HARVESTING), jobs, passed).action is Action.WAIT
    done = [now_job(JobPhase.DONE), job(JobPhase.DONE)]
    assert step(run(RunState.HARVESTING), done).action is Action.SETTLE


def test_a_caller_that_hands_chunks_over_dispatches_queued_and_stale_ones_only() -> None:
    def hand_over(jobs: list[Job]) -> Step:
        return next_step(
            run(RunState.SUBMITTED), jobs, now=NOW, max_attempts=3, work_now=False, redispatch_after=600
        )

    assert hand_over([now_job(JobPhase.QUEUED)]) == Step(Action.DISPATCH_NOW, ("r-a1-c0001",))
    recent = now_job(JobPhase.ACTIVE, dispatched_at=NOW - 60, updated_at=NOW - 60)
    assert hand_over([recent]).action is Action.WAIT
    stale = now_job(JobPhase.ACTIVE, dispatched_at=NOW - 601, updated_at=NOW - 601)
    assert hand_over([stale]) == Step(Action.DISPATCH_NOW, ("r-a1-c0001",))
    progressing = now_job(JobPhase.ACTIVE, dispatched_at=NOW - 900, updated_at=NOW - 10)
    assert hand_over([progressing]).action is Action.WAIT


def test_a_cancelled_run_stops_its_open_now_chunks() -> None:
    jobs = [now_job(JobPhase.ACTIVE), now_job(JobPhase.DONE, chunk=2)]
    assert step(run(RunState.HARVESTING, cancel_requested=True), jobs) == Step(
        Action.CANCEL_JOBS, ("r-a1-c0001",)
    )


# Webhooks on: a running job is polled at the net's interval, or at once when a delivery names it

POLL_EVERY = 1800.0
ACTIVE_JOB = "r-a1-c0000"


@pytest.mark.parametrize(
    ("case", "run_fields", "job_fields", "poll_every", "wake", "expected"),
    [
        ("polling alone: every call", {}, {"checked_at": NOW - 1}, 0.0, (), Action.REFRESH),
        ("webhooks on, looked at just now", {}, {"checked_at": NOW - 1}, POLL_EVERY, (), Action.WAIT),
        (
            "webhooks on, one second short",
            {},
            {"checked_at": NOW - POLL_EVERY + 1},
            POLL_EVERY,
            (),
            Action.WAIT,
        ),
        (
            "webhooks on, the interval passed",
            {},
            {"checked_at": NOW - POLL_EVERY},
            POLL_EVERY,
            (),
            Action.REFRESH,
        ),
        ("webhooks on, never looked at", {}, {"checked_at": None}, POLL_EVERY, (), Action.REFRESH),
        ("a delivery named it", {}, {"checked_at": NOW - 1}, POLL_EVERY, (ACTIVE_JOB,), Action.REFRESH),
        ("a delivery named another job", {}, {"checked_at": NOW - 1}, POLL_EVERY, ("other",), Action.WAIT),
        (
            "past its deadline",
            {},
            {"checked_at": NOW - 1, "deadline_at": NOW},
            POLL_EVERY,
            (),
            Action.REFRESH,
        ),
        (
            "cancelled at its deadline, waiting for it to end",
            {},
            {"checked_at": NOW - 1, "error": "deadline"},
            POLL_EVERY,
            (),
            Action.REFRESH,
        ),
        (
            "cancel requested (no event for a cancelled batch)",
            {"cancel_requested": True},
            {"checked_at": NOW - 1, "error": "cancelled"},
            POLL_EVERY,
            (),
            Action.REFRESH,
        ),
    ],
)
def test_webhooks_back_the_polling_of_running_jobs_off(
    case: str,
    run_fields: dict[str, object],
    job_fields: dict[str, object],
    poll_every: float,
    wake: tuple[str, ...],
    expected: Action,
) -> None:
    """With webhooks on, a running job is asked about only when a delivery names it, when the net's interval
    has passed, or when its deadline (or a cancel) needs it; polling alone asks every call."""
    current = run(RunState.SUBMITTED, **run_fields)
    jobs = [job(JobPhase.ACTIVE, **job_fields)]
    got = next_step(current, jobs, now=NOW, max_attempts=3, poll_every=poll_every, wake=wake)
    assert got.action is expected, case
    if expected is Action.REFRESH:
        assert got.jobs == (ACTIVE_JOB,)


def test_only_the_due_jobs_are_refreshed_and_the_others_still_harvest() -> None:
    """Of two running jobs only the one due is polled; a harvest waiting beside them is not held up."""
    jobs = [
        job(JobPhase.ACTIVE, chunk=0, checked_at=NOW - 1),
        job(JobPhase.ACTIVE, chunk=1, checked_at=NOW - POLL_EVERY - 1),
        job(JobPhase.HARVESTING, chunk=2),
    ]
    current = run(RunState.HARVESTING)
    first = next_step(current, jobs, now=NOW, max_attempts=3, poll_every=POLL_EVERY)
    assert first == Step(Action.REFRESH, ("r-a1-c0001",))
    second = next_step(
        current, jobs, now=NOW, max_attempts=3, poll_every=POLL_EVERY, done=frozenset({Action.REFRESH})
    )
    assert second == Step(Action.HARVEST, ("r-a1-c0002",))


# A run with lines waiting for another run that has their requests in flight: after the resolve pass
# (once per call) it behaves as its jobs say, except that it neither retries nor settles.
WAITING_AFTER_RESOLVE: dict[JobPhase | None, Action] = {
    None: Action.WAIT,  # every line waits: no job, nothing to settle yet
    JobPhase.QUEUED: Action.LAUNCH,
    JobPhase.CREATING: Action.RECOVER,
    JobPhase.ACTIVE: Action.REFRESH,
    JobPhase.HARVESTING: Action.HARVEST,
    JobPhase.DONE: Action.WAIT,
}


@pytest.mark.parametrize("state", ACTIVE_STATES)
@pytest.mark.parametrize(("phase", "expected"), WAITING_AFTER_RESOLVE.items(), ids=str)
def test_waiting_lines_are_resolved_first_and_hold_the_settle(
    state: RunState, phase: JobPhase | None, expected: Action
) -> None:
    """Waiting lines: resolve_waiting once per call, before the launch; then no settle while any wait."""
    jobs = [] if phase is None else [job(phase)]
    waiting = run(state, waiting=3, waiting_on=["older-run"])
    assert step(waiting, jobs).action is Action.RESOLVE_WAITING
    assert step(waiting, jobs, frozenset({Action.RESOLVE_WAITING})).action is expected


def test_waiting_lines_hold_a_retry_too_and_a_cancel_stops_the_waiting() -> None:
    """Retryable lines wait with the run (the lines it sends join the latest attempt, retried together);
    a cancelled run does not resolve its waiting lines and settles once its jobs are done."""
    failed = job(JobPhase.DONE, retryable=2)
    resolved = frozenset({Action.RESOLVE_WAITING})
    assert step(run(RunState.HARVESTING, waiting=1), [failed], resolved).action is Action.WAIT
    assert step(run(RunState.HARVESTING, waiting=0), [failed], resolved).action is Action.RETRY
    cancelled = run(RunState.SUBMITTED, waiting=5, cancel_requested=True)
    assert step(cancelled, []).action is Action.SETTLE
    assert step(cancelled, [job(JobPhase.QUEUED)]).action is Action.CANCEL_JOBS


def test_a_queued_job_is_launched_before_a_finished_one_is_harvested() -> None:
    """The quota a job gave back when it ended is used at once: the next job is created first, so the API
    works on it while the call harvests (scripts/bench --only scale: harvest first made a big file's jobs
    run one after another with the CLI's harvests in between)."""
    jobs = [job(JobPhase.HARVESTING, chunk=0), job(JobPhase.QUEUED, chunk=1)]
    current = run(RunState.HARVESTING)
    first = next_step(current, jobs, now=NOW, max_attempts=3)
    assert first == Step(Action.LAUNCH, ("r-a1-c0001",))
    second = next_step(current, jobs, now=NOW, max_attempts=3, done=frozenset({Action.LAUNCH}))
    assert second == Step(Action.HARVEST, ("r-a1-c0000",))
