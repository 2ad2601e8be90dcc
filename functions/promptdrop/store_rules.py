"""The job store's update rules, as pure functions both stores apply inside their own transaction.

SQLite and Firestore differ in how they read and write a record atomically, never in what a conditional
update, a lease or the in-flight cap means: that is decided here, once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from pydantic import ValidationError

from promptdrop.errors import PreconditionFailedError
from promptdrop.records import Job, Lease, Run
from promptdrop.states import JobPhase

log = logging.getLogger(__name__)

RecordT = TypeVar("RecordT", Run, Job)

# Jobs that hold one of the API's concurrent-batch slots.
IN_FLIGHT = (JobPhase.CREATING, JobPhase.ACTIVE)


def lease_held(lease: Mapping[str, Any] | None, owner: str, now: float) -> bool:
    """``owner`` holds this (stored) lease and it has not expired."""
    current = Lease.model_validate(lease or {})
    return current.owner == owner and current.expires > now


def taken_lease(lease: Mapping[str, Any] | None, owner: str, ttl: float, now: float) -> dict[str, Any] | None:
    """The lease to store when ``owner`` asks for it: free, expired or already its own; None if refused."""
    current = Lease.model_validate(lease or {})
    if current.owner is not None and current.owner != owner and current.expires > now:
        return None
    return Lease(owner=owner, expires=now + ttl).model_dump(mode="json")


def released_lease(lease: Mapping[str, Any] | None, owner: str) -> dict[str, Any] | None:
    """The lease to store when ``owner`` gives it back; None when it is not ``owner``'s to give."""
    if Lease.model_validate(lease or {}).owner != owner:
        return None
    return Lease().model_dump(mode="json")


def check_fields(model: type[RecordT], changes: Mapping[str, Any]) -> None:
    unknown = set(changes) - set(model.model_fields)
    if unknown:
        raise ValueError(f"not fields of {model.__name__}: {sorted(unknown)}")


def updated(
    model: type[RecordT],
    document: Mapping[str, Any],
    changes: Mapping[str, Any],
    *,
    label: str,
    status_field: str,
    allowed: Iterable[str] | None,
    lease: Mapping[str, Any] | None,
    lease_owner: str | None,
    now: float,
) -> RecordT:
    """The record after ``changes``, or PreconditionFailedError when a condition does not hold.

    ``allowed``: the states (runs) or phases (jobs) the record may be in; ``lease``: the run's stored
    lease, which ``lease_owner`` must still hold (a job is worked on under its run's lease).
    """
    check_fields(model, changes)
    status = str(document.get(status_field))
    if allowed is not None:
        wanted = {str(value) for value in allowed}
        if status not in wanted:
            raise PreconditionFailedError(f"{label} is {status}, not one of {sorted(wanted)}")
    if lease_owner is not None and not lease_held(lease, lease_owner, now):
        raise PreconditionFailedError(f"{label}: the run's lease is not held by {lease_owner}")
    merged = {**document, **changes}
    if "updated_at" not in changes:
        merged["updated_at"] = now
    return model.model_validate(merged)


def may_start(jobs: int, tokens: int, job: Job, *, max_jobs: int, max_tokens: int) -> bool:
    """Whether ``job`` fits beside ``jobs`` jobs in flight holding ``tokens`` estimated tokens (the first job
    always fits the token cap)."""
    if jobs >= max_jobs:
        return False
    return jobs == 0 or tokens + job.estimated_tokens <= max_tokens


def in_flight_change(before: Mapping[str, Any] | None, after: Job | None) -> tuple[int, int]:
    """(jobs, tokens) a write adds to the in-flight count: a job entering or leaving CREATING / ACTIVE."""
    was = before is not None and str(before.get("phase")) in IN_FLIGHT
    now = after is not None and after.phase in IN_FLIGHT
    if was == now:
        return 0, 0
    if now:
        assert after is not None
        return 1, after.estimated_tokens
    assert before is not None
    return -1, -int(before.get("estimated_tokens") or 0)


def counted(counter: Mapping[str, Any] | None, change: tuple[int, int]) -> dict[str, int]:
    """The in-flight counter after ``change``, never below zero."""
    current = counter or {}
    return {
        "jobs": max(0, int(current.get("jobs") or 0) + change[0]),
        "tokens": max(0, int(current.get("tokens") or 0) + change[1]),
    }


def decoded(model: type[RecordT], documents: Iterable[tuple[str, Mapping[str, Any]]]) -> list[RecordT]:
    """Records of a listing; one that no longer reads is logged with its id and left out, so one
    corrupt record cannot stop the work on every other."""
    records = []
    for record_id, document in documents:
        try:
            records.append(model.model_validate(document))
        except ValidationError as exc:
            log.error(
                "unreadable %s record %s skipped: %s",
                model.__name__.lower(),
                record_id,
                exc.errors()[0]["msg"] if exc.errors() else exc,
                extra={"run_id": record_id} if model is Run else {"job": record_id},
            )
    return records
