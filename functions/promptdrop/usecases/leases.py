"""Run leases: who works on a run now, and a store that writes only while the lease is still ours.

A run (with its jobs) is worked on under its lease, so overlapping ticks, two `serve`s or a redelivered
event skip each other's work; a lease left by a crashed worker expires and is taken over. Taking the lease
is not enough: a worker stalled past its expiry must not overwrite what its successor did, so every write
made under a lease is conditional on still holding it (``FencedStore``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from promptdrop.errors import NotFoundError, PreconditionFailedError
from promptdrop.ports import JobStore
from promptdrop.records import Job, Run
from promptdrop.spend import SpendCap, SpendRefusal
from promptdrop.states import JobPhase, RunState
from promptdrop.usecases.context import Context, default_owner, owner_is_dead_local_process

log = logging.getLogger(__name__)


class FencedStore:
    """A ``JobStore`` whose writes all carry ``if_lease_owner``: they fail once the run's lease is lost."""

    def __init__(self, store: JobStore, owner: str) -> None:
        self._store = store
        self._owner = owner

    def create_run(self, run: Run) -> bool:
        return self._store.create_run(run)

    def get_run(self, run_id: str) -> Run | None:
        return self._store.get_run(run_id)

    def update_run(
        self,
        run_id: str,
        changes: Mapping[str, Any],
        *,
        if_states: Iterable[RunState] | None = None,
        if_lease_owner: str | None = None,
    ) -> Run:
        return self._store.update_run(
            run_id, changes, if_states=if_states, if_lease_owner=if_lease_owner or self._owner
        )

    def list_runs(self, states: Iterable[RunState] | None = None, limit: int = 1000) -> list[Run]:
        return self._store.list_runs(states, limit)

    def create_job(self, job: Job, *, if_lease_owner: str | None = None) -> bool:
        return self._store.create_job(job, if_lease_owner=if_lease_owner or self._owner)

    def get_job(self, job_id: str) -> Job | None:
        return self._store.get_job(job_id)

    def update_job(
        self,
        job_id: str,
        changes: Mapping[str, Any],
        *,
        if_phases: Iterable[JobPhase] | None = None,
        if_lease_owner: str | None = None,
    ) -> Job:
        return self._store.update_job(
            job_id, changes, if_phases=if_phases, if_lease_owner=if_lease_owner or self._owner
        )

    def start_job(
        self,
        job_id: str,
        *,
        max_jobs: int,
        max_tokens: int,
        max_input_bytes: int,
        if_lease_owner: str | None = None,
    ) -> Job | None:
        return self._store.start_job(
            job_id,
            max_jobs=max_jobs,
            max_tokens=max_tokens,
            max_input_bytes=max_input_bytes,
            if_lease_owner=if_lease_owner or self._owner,
        )

    def list_jobs(self, run_id: str) -> list[Job]:
        return self._store.list_jobs(run_id)

    def acquire_lease(self, run_id: str, owner: str, ttl: float, now: float) -> bool:
        return self._store.acquire_lease(run_id, owner, ttl, now)

    def release_lease(self, run_id: str, owner: str) -> None:
        self._store.release_lease(run_id, owner)

    # The spend ledger is keyed by run id (a second reservation replaces the first): nothing to fence.

    def reserve_spend(self, run_id: str, amount: float, caps: Sequence[SpendCap]) -> SpendRefusal | None:
        return self._store.reserve_spend(run_id, amount, caps)

    def settle_spend(self, run_id: str, periods: Sequence[str], amount: float) -> None:
        self._store.settle_spend(run_id, periods, amount)

    def spent(self, periods: Sequence[str]) -> dict[str, float]:
        return self._store.spent(periods)

    def take_spend_window(self, key: str, amount: float, limit: float, now: float, window: float) -> float:
        return self._store.take_spend_window(key, amount, limit, now, window)


def own_turn(ctx: Context) -> Context:
    """The context for one call that works under a lease, with an owner id of its own.

    The owner is per call, not per process: two invocations running at once in one function instance
    (overlapping ticks, a redelivered event) must not both "hold" a run's lease and work it together.
    """
    return dataclasses.replace(ctx, owner=default_owner())


def taken_over(ctx: Context, run: Run) -> bool:
    """Whether another worker took the lease of ``run`` (as just read) from us, holding it or done with it.

    Only we give our lease back, so an owner other than us, or none, means someone else had it since.
    """
    return run.lease.owner != ctx.owner


def fenced(ctx: Context) -> Context:
    """The context to work in while holding a run's lease: same ports, writes fenced by the lease."""
    return dataclasses.replace(ctx, store=FencedStore(ctx.store, ctx.owner))


def acquire(ctx: Context, run_id: str) -> bool:
    """Take the run's lease (free, expired, ours, or held by a local process that no longer exists)."""
    if ctx.settings.store_is_firestore:
        # Firestore's acquire_lease is a compare-and-set that reads the run first and refuses a lease held
        # by another worker without writing, so the workers that keep asking (overlapping ticks, webhook
        # retries) never contend on the run's document; a plain read before it would be a second document
        # read, billed, at every tick of every active run. Many hosts: only expiry tells a holder is gone.
        return ctx.store.acquire_lease(run_id, ctx.owner, ctx.settings.lease_seconds, ctx.clock())
    # A plain read first: a lease another worker holds is refused without taking SQLite's write lock.
    current = ctx.store.get_run(run_id)
    if current is None:
        raise NotFoundError(f"run {run_id} does not exist")
    held_by_other = current.lease.owner not in (None, ctx.owner) and current.lease.expires > ctx.clock()
    if held_by_other and not owner_is_dead_local_process(current.lease.owner or ""):
        return False
    if ctx.store.acquire_lease(run_id, ctx.owner, ctx.settings.lease_seconds, ctx.clock()):
        return True
    # On one machine a killed `serve` need not block its runs until the lease expires: a holder
    # process on this host that no longer exists is gone for sure.
    run = ctx.store.get_run(run_id)
    holder = run.lease.owner if run else None
    if holder is None or not owner_is_dead_local_process(holder):
        return False
    log.info("lease holder %s is gone; taking over", holder, extra={"run_id": run_id})
    ctx.store.release_lease(run_id, holder)
    return ctx.store.acquire_lease(run_id, ctx.owner, ctx.settings.lease_seconds, ctx.clock())


def renew(ctx: Context, run_id: str) -> None:
    """Extend our lease during long work; losing it means another worker took over, so stop."""
    if not ctx.store.acquire_lease(run_id, ctx.owner, ctx.settings.lease_seconds, ctx.clock()):
        raise PreconditionFailedError(f"lost the lease on run {run_id}")


def release(ctx: Context, run_id: str) -> None:
    ctx.store.release_lease(run_id, ctx.owner)
