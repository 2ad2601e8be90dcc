"""The job store's update rules, shared by SQLite and Firestore: leases, conditions, the in-flight caps."""

from __future__ import annotations

from typing import Any

import pytest

from promptdrop.errors import PreconditionFailedError
from promptdrop.records import Job
from promptdrop.states import JobPhase
from promptdrop.store_rules import (
    counted,
    in_flight_change,
    lease_held,
    may_start,
    released_lease,
    taken_lease,
    updated,
)

T = 1000.0


@pytest.mark.parametrize(
    ("lease", "owner", "now", "taken"),
    [
        (None, "a", T, True),  # free
        ({"owner": "a", "expires": T + 1}, "a", T, True),  # ours: extended
        ({"owner": "b", "expires": T + 1}, "a", T, False),  # someone else's, live
        ({"owner": "b", "expires": T}, "a", T, True),  # someone else's, expired
    ],
)
def test_taken_lease(lease: dict[str, Any] | None, owner: str, now: float, taken: bool) -> None:
    """A lease is taken when free, expired or already ours, for ttl seconds from now."""
    result = taken_lease(lease, owner, 60, now)
    assert (result == {"owner": owner, "expires": now + 60}) if taken else result is None


def test_lease_held_and_released() -> None:
    """Held only by its owner until it expires; given back only by its owner."""
    lease = {"owner": "a", "expires": T + 1}
    assert lease_held(lease, "a", T) and not lease_held(lease, "a", T + 1) and not lease_held(lease, "b", T)
    assert released_lease(lease, "b") is None
    assert released_lease(lease, "a") == {"owner": None, "expires": 0.0}


def job(tokens: int, chunk: int = 0) -> Job:
    return Job(
        job_id=f"r-a1-c{chunk}",
        run_id="r",
        attempt=1,
        chunk=chunk,
        phase=JobPhase.ACTIVE,
        model="m",
        request_object="x",
        request_count=1,
        request_bytes=1,
        estimated_tokens=tokens,
        created_at=T,
        updated_at=T,
    )


@pytest.mark.parametrize(
    ("jobs", "tokens", "job_tokens", "max_jobs", "max_tokens", "expected"),
    [
        (0, 0, 10**9, 1, 10, True),  # the first job always fits the token cap
        (1, 5, 5, 2, 10, True),
        (1, 5, 6, 2, 10, False),  # over the token cap
        (2, 2, 1, 2, 10, False),  # over the job cap
        (0, 0, 1, 0, 10, False),  # no slot at all
    ],
)
def test_may_start(
    jobs: int, tokens: int, job_tokens: int, max_jobs: int, max_tokens: int, expected: bool
) -> None:
    """One more job starts only under both caps, counted over every job in flight."""
    assert may_start(jobs, tokens, job(job_tokens), max_jobs=max_jobs, max_tokens=max_tokens) is expected


@pytest.mark.parametrize(
    ("before", "after", "change"),
    [
        (None, JobPhase.QUEUED, (0, 0)),
        (None, JobPhase.ACTIVE, (1, 7)),  # created in flight
        (JobPhase.QUEUED, JobPhase.CREATING, (1, 7)),  # started
        (JobPhase.CREATING, JobPhase.ACTIVE, (0, 0)),
        (JobPhase.ACTIVE, JobPhase.HARVESTING, (-1, -7)),  # ended
        (JobPhase.CREATING, JobPhase.HARVESTING, (-1, -7)),  # refused, or given up
        (JobPhase.HARVESTING, JobPhase.DONE, (0, 0)),
    ],
)
def test_in_flight_change(before: JobPhase | None, after: JobPhase, change: tuple[int, int]) -> None:
    """A write moves the in-flight count only when a job enters or leaves CREATING / ACTIVE."""
    old = None if before is None else job(7).model_copy(update={"phase": before}).model_dump(mode="json")
    assert in_flight_change(old, job(7).model_copy(update={"phase": after})) == change


def test_counter_never_goes_below_zero() -> None:
    """A counter that missed jobs started before it existed is clamped, not negative."""
    assert counted({"jobs": 1, "tokens": 5}, (-1, -7)) == {"jobs": 0, "tokens": 0}
    assert counted(None, (1, 7)) == {"jobs": 1, "tokens": 7}


def test_updated_checks_state_then_lease_then_applies() -> None:
    """A conditional update refuses a wrong state or a lease not held; otherwise it stamps updated_at."""
    doc = job(1).model_dump(mode="json")
    lease = {"owner": "me", "expires": T + 10}
    common: dict[str, Any] = {"label": "job j", "status_field": "phase", "lease": lease, "now": T}
    with pytest.raises(PreconditionFailedError, match="not one of"):
        updated(Job, doc, {"error": "x"}, allowed=[JobPhase.QUEUED], lease_owner=None, **common)
    with pytest.raises(PreconditionFailedError, match="lease"):
        updated(Job, doc, {"error": "x"}, allowed=None, lease_owner="other", **common)
    with pytest.raises(ValueError, match="not fields"):
        updated(Job, doc, {"nonsense": 1}, allowed=None, lease_owner=None, **common)
    result = updated(Job, doc, {"error": "x"}, allowed=[JobPhase.ACTIVE], lease_owner="me", **common)
    assert (result.error, result.updated_at) == ("x", T)
