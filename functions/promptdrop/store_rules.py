"""The job store's update rules, as pure functions both stores apply inside their own transaction.

SQLite and Firestore differ in how they read and write a record atomically, never in what a conditional
update, a lease or the in-flight cap means: that is decided here, once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import ValidationError

from promptdrop.errors import PreconditionFailedError
from promptdrop.records import Job, Lease, Run
from promptdrop.states import JobPhase

log = logging.getLogger(__name__)

RecordT = TypeVar("RecordT", Run, Job)

# Jobs that hold one of the API's concurrent-batch slots, and those whose input is still in the Files API.
IN_FLIGHT = (JobPhase.CREATING, JobPhase.ACTIVE)
HOLDING_INPUT = (*IN_FLIGHT, JobPhase.HARVESTING)


@dataclass(frozen=True, slots=True)
class InFlight:
    """What the in-flight caps count: jobs in flight, their estimated tokens, and input bytes held."""

    jobs: int = 0
    tokens: int = 0
    input_bytes: int = 0

    @classmethod
    def of(cls, document: Mapping[str, Any] | None) -> InFlight:
        current = document or {}
        return cls(*(int(current.get(name) or 0) for name in ("jobs", "tokens", "input_bytes")))

    def to_json(self) -> dict[str, int]:
        return {"jobs": self.jobs, "tokens": self.tokens, "input_bytes": self.input_bytes}

    def plus(self, change: InFlight) -> InFlight:
        """After ``change``, never below zero (a counter may have missed jobs started before it existed)."""
        return InFlight(
            max(0, self.jobs + change.jobs),
            max(0, self.tokens + change.tokens),
            max(0, self.input_bytes + change.input_bytes),
        )


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


def may_start(counted: InFlight, job: Job, *, max_jobs: int, max_tokens: int, max_input_bytes: int) -> bool:
    """Whether ``job`` fits beside what is in flight (a first job always fits the token and byte caps)."""
    if counted.jobs >= max_jobs:
        return False
    if counted.jobs and counted.tokens + job.estimated_tokens > max_tokens:
        return False
    return not counted.input_bytes or counted.input_bytes + job.request_bytes <= max_input_bytes


def _phase(record: Mapping[str, Any] | Job | None) -> str | None:
    """The phase the caps count: none for a now-lane job, which holds no batch slot and no Files API input."""
    if record is None:
        return None
    if isinstance(record, Job):
        return None if record.lane == "now" else record.phase.value
    return None if record.get("lane") == "now" else str(record.get("phase"))


def in_flight_change(before: Mapping[str, Any] | None, after: Job | None) -> InFlight:
    """What a write adds to the count: a job entering or leaving flight, or the Files API holding its input."""
    was, now = _phase(before), _phase(after)
    slots = int(now in IN_FLIGHT) - int(was in IN_FLIGHT)
    holding = int(now in HOLDING_INPUT) - int(was in HOLDING_INPUT)
    source: Mapping[str, Any] = after.model_dump() if after is not None else (before or {})
    return InFlight(
        jobs=slots,
        tokens=slots * int(source.get("estimated_tokens") or 0),
        input_bytes=holding * int(source.get("request_bytes") or 0),
    )


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
