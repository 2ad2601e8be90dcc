"""How long `run --wait` sleeps between ticks: sooner while a job is young, the poll interval once it is old."""

from __future__ import annotations

import pytest

from promptdrop.states import JobPhase
from promptdrop.usecases.poll import MIN_WAIT_SECONDS, wait_seconds
from tests.unit.test_lifecycle import NOW, job


@pytest.mark.parametrize(
    ("age", "expected"),
    [
        (0.5, MIN_WAIT_SECONDS),  # just created: checked again within a quarter second
        (4.0, 0.5),  # an emulator job about to end: an eighth of its age
        (16.0, 2.0),
        (3600.0, 2.0),  # an API job of an hour: the poll interval, as before
    ],
)
def test_a_young_running_job_is_checked_sooner(age: float, expected: float) -> None:
    """The emulator's jobs of a few seconds are seen ending within a fraction of a second, not at the next 2 s
    tick (a second lost on average, twelve times in a 20,000-line run); long jobs cost no extra reads."""
    jobs = [job(JobPhase.ACTIVE, submitted_at=NOW - age)]
    assert wait_seconds(jobs, NOW, 2.0) == pytest.approx(expected)


def test_the_youngest_running_job_sets_the_pace_and_other_phases_do_not() -> None:
    """Only batch jobs the API is running count; with none, the poll interval (or a smaller one) stands."""
    old, young = (
        job(JobPhase.ACTIVE, submitted_at=NOW - 600),
        job(JobPhase.ACTIVE, chunk=1, submitted_at=NOW - 4),
    )
    assert wait_seconds([old, young], NOW, 2.0) == pytest.approx(0.5)
    waiting = [job(JobPhase.QUEUED), job(JobPhase.DONE, chunk=1, submitted_at=NOW - 1)]
    assert wait_seconds(waiting, NOW, 2.0) == 2.0
    now_lane = job(JobPhase.ACTIVE, lane="now", submitted_at=NOW - 1)
    assert wait_seconds([now_lane], NOW, 2.0) == 2.0
    assert wait_seconds([young], NOW, 0.2) == 0.2  # the tests' 0.2 s interval is never lengthened
