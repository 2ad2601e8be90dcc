"""The job store's update rules, shared by SQLite and Firestore: leases, conditions, the in-flight caps."""

from __future__ import annotations

from typing import Any

import pytest

from promptdrop.errors import PreconditionFailedError
from promptdrop.records import Job
from promptdrop.states import JobPhase
from promptdrop.store_rules import (
    InFlight,
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
    ("counted", "tokens", "size", "expected"),
    [
        (InFlight(0, 0, 0), 10**9, 10**12, True),  # the first job always fits the token and byte caps
        (InFlight(1, 5, 100), 5, 100, True),
        (InFlight(1, 5, 100), 6, 100, False),  # over the token cap
        (InFlight(2, 2, 100), 1, 100, False),  # over the job cap
        (InFlight(1, 5, 150), 1, 51, False),  # over the input bytes the Files API may hold
        (InFlight(0, 0, 150), 1, 51, False),  # inputs of jobs being harvested count too
    ],
)
def test_may_start(counted: InFlight, tokens: int, size: int, expected: bool) -> None:
    """One more job starts only under every cap, counted over every run's jobs."""
    candidate = job(tokens).model_copy(update={"request_bytes": size})
    assert may_start(counted, candidate, max_jobs=2, max_tokens=10, max_input_bytes=200) is expected


@pytest.mark.parametrize(
    ("before", "after", "change"),
    [
        (None, JobPhase.QUEUED, InFlight(0, 0, 0)),
        (None, JobPhase.ACTIVE, InFlight(1, 7, 3)),  # created in flight
        (JobPhase.QUEUED, JobPhase.CREATING, InFlight(1, 7, 3)),  # started
        (JobPhase.CREATING, JobPhase.ACTIVE, InFlight(0, 0, 0)),
        (JobPhase.ACTIVE, JobPhase.HARVESTING, InFlight(-1, -7, 0)),  # ended: its input is still held
        (JobPhase.CREATING, JobPhase.HARVESTING, InFlight(-1, -7, 0)),  # refused, or given up
        (JobPhase.HARVESTING, JobPhase.DONE, InFlight(0, 0, -3)),  # harvested: input deleted
        (JobPhase.QUEUED, JobPhase.HARVESTING, InFlight(0, 0, 3)),  # cancelled before it started
    ],
)
def test_in_flight_change(before: JobPhase | None, after: JobPhase, change: InFlight) -> None:
    """A write moves the count when a job enters or leaves flight, or the Files API stops holding its input."""
    sized = job(7).model_copy(update={"request_bytes": 3})
    old = None if before is None else sized.model_copy(update={"phase": before}).model_dump(mode="json")
    assert in_flight_change(old, sized.model_copy(update={"phase": after})) == change


def test_counter_never_goes_below_zero() -> None:
    """A counter that missed jobs started before it existed is clamped, not negative."""
    assert InFlight(1, 5, 0).plus(InFlight(-1, -7, -3)) == InFlight(0, 0, 0)
    assert InFlight.of(None).plus(InFlight(1, 7, 3)).to_json() == {"jobs": 1, "tokens": 7, "input_bytes": 3}


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
