"""The ``JobStore`` contract, as a mixin every adapter's test class inherits.

Subclass it in a ``Test...`` class and override the ``job_store`` fixture with a fresh, empty store. Only
the Protocol's methods are used here, so SQLite and Firestore must pass the same tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import pytest

from promptdrop import spend
from promptdrop.errors import NotFoundError, PreconditionFailedError, TransientError
from promptdrop.ports import JobStore
from promptdrop.records import Counts, Job, Lease, Run, RunSource
from promptdrop.states import JobPhase, JobState, RunState

Kind = Literal["run", "job"]
T0 = 1_700_000_000.0  # a fixed past instant, so ordering tests do not depend on the clock


def make_run(
    run_id: str = "cats-0123abcd", *, state: RunState = RunState.RECEIVED, updated_at: float = T0
) -> Run:
    """A plausible run record."""
    return Run(
        run_id=run_id,
        claim_key=f"file:bucket/inbox/{run_id}.jsonl#1",
        state=state,
        source=RunSource(
            kind="file", bucket="bucket", object=f"inbox/{run_id}.jsonl", generation="1", name=run_id
        ),
        input_object=f"outputs/{run_id}/input.jsonl",
        output_folder=f"outputs/{run_id}/",
        model="gemini-3-pro-image",
        created_at=T0,
        updated_at=updated_at,
        counts=Counts(lines=3, valid=2, invalid=1),
    )


def make_job(
    run_id: str = "cats-0123abcd",
    *,
    attempt: int = 1,
    chunk: int = 0,
    phase: JobPhase = JobPhase.QUEUED,
    updated_at: float = T0,
) -> Job:
    """A plausible job record named as promptdrop names them."""
    return Job(
        job_id=f"{run_id}-a{attempt}-c{chunk}",
        run_id=run_id,
        attempt=attempt,
        chunk=chunk,
        phase=phase,
        model="gemini-3-pro-image",
        request_object=f"outputs/{run_id}/_work/requests-a{attempt}-c{chunk}.jsonl",
        request_count=2,
        request_bytes=512,
        estimated_tokens=2240,
        created_at=T0,
        updated_at=updated_at,
    )


class JobStoreContract:
    @pytest.fixture
    def job_store(self) -> JobStore:
        raise NotImplementedError("subclasses provide a fresh, empty store")

    @pytest.fixture
    def run(self, job_store: JobStore) -> Run:
        """A run already in the store."""
        record = make_run()
        assert job_store.create_run(record)
        return record

    @pytest.fixture
    def job(self, job_store: JobStore) -> Job:
        """A job already in the store."""
        record = make_job()
        assert job_store.create_job(record)
        return record

    @staticmethod
    def _create(job_store: JobStore, kind: Kind) -> str:
        """A record to update under the lease of run "leased-run": that run, or one of its jobs."""
        assert job_store.create_run(make_run("leased-run"))
        if kind == "run":
            return "leased-run"
        job = make_job("leased-run")
        assert job_store.create_job(job)
        return job.job_id

    @staticmethod
    def _lease(job_store: JobStore, run_id: str) -> Lease:
        record = job_store.get_run(run_id)
        assert record is not None
        return record.lease

    @staticmethod
    def _update(job_store: JobStore, kind: Kind, record_id: str, owner: str) -> Run | Job:
        if kind == "run":
            return job_store.update_run(record_id, {"reason": "x"}, if_lease_owner=owner)
        return job_store.update_job(record_id, {"error": "x"}, if_lease_owner=owner)

    # Create and get

    def test_run_round_trip(self, job_store: JobStore, run: Run) -> None:
        """A created run reads back equal, with its enums as enums."""
        stored = job_store.get_run(run.run_id)
        assert stored == run
        assert stored is not None and stored.state is RunState.RECEIVED

    def test_job_round_trip(self, job_store: JobStore, job: Job) -> None:
        """A created job reads back equal."""
        stored = job_store.get_job(job.job_id)
        assert stored == job
        assert stored is not None and stored.phase is JobPhase.QUEUED

    def test_get_missing_is_none(self, job_store: JobStore) -> None:
        """Unknown ids read as None."""
        assert job_store.get_run("nope") is None
        assert job_store.get_job("nope") is None

    def test_create_run_twice_keeps_the_first(self, job_store: JobStore, run: Run) -> None:
        """A second create with the same id returns False and changes nothing (a redelivered event)."""
        assert job_store.create_run(make_run(run.run_id, state=RunState.FAILED)) is False
        assert job_store.get_run(run.run_id) == run

    def test_create_job_twice_keeps_the_first(self, job_store: JobStore, job: Job) -> None:
        """A second create_job with the same id returns False and changes nothing."""
        assert job_store.create_job(make_job(phase=JobPhase.DONE)) is False
        assert job_store.get_job(job.job_id) == job

    # Updates

    def test_update_run_sets_fields_and_updated_at(self, job_store: JobStore, run: Run) -> None:
        """update_run sets the given top-level fields, bumps updated_at and returns the new record."""
        before = time.time()
        changes: dict[str, Any] = {
            "state": RunState.SUBMITTED.value,
            "counts": Counts(lines=3, valid=3).model_dump(mode="json"),
            "reason": None,
            "submit_attempts": 1,
        }
        updated = job_store.update_run(run.run_id, changes)
        assert updated.state is RunState.SUBMITTED
        assert updated.counts == Counts(lines=3, valid=3)
        assert updated.submit_attempts == 1
        assert updated.updated_at >= before
        assert (updated.model, updated.created_at) == (run.model, run.created_at)
        assert job_store.get_run(run.run_id) == updated

    def test_update_keeps_an_explicit_updated_at(self, job_store: JobStore, run: Run, job: Job) -> None:
        """A change that sets updated_at itself wins over the store's clock."""
        assert job_store.update_run(run.run_id, {"updated_at": T0 + 5}).updated_at == T0 + 5
        assert job_store.update_job(job.job_id, {"updated_at": T0 + 7}).updated_at == T0 + 7

    def test_update_job_sets_fields(self, job_store: JobStore, job: Job) -> None:
        """update_job sets fields, including the job state, and returns the stored record."""
        changes = {
            "phase": JobPhase.ACTIVE.value,
            "state": JobState.JOB_STATE_RUNNING.value,
            "batch_name": "batches/123",
            "stats": {"requestCount": 2},
        }
        updated = job_store.update_job(job.job_id, changes)
        assert (updated.phase, updated.state, updated.batch_name, updated.stats) == (
            JobPhase.ACTIVE,
            JobState.JOB_STATE_RUNNING,
            "batches/123",
            {"requestCount": 2},
        )
        assert job_store.get_job(job.job_id) == updated

    def test_update_missing_raises_not_found(self, job_store: JobStore) -> None:
        """Updating a record that does not exist raises NotFoundError and creates nothing."""
        with pytest.raises(NotFoundError):
            job_store.update_run("ghost", {"reason": "x"})
        with pytest.raises(NotFoundError):
            job_store.update_job("ghost", {"error": "x"})
        assert job_store.get_run("ghost") is None
        assert job_store.get_job("ghost") is None

    @pytest.mark.parametrize(
        ("if_states", "allowed"),
        [
            ([RunState.RECEIVED], True),
            ([RunState.SUBMITTED, RunState.RECEIVED], True),
            ([RunState.SUBMITTED, RunState.HARVESTING], False),
            ([], False),
        ],
    )
    def test_update_run_if_states(
        self, job_store: JobStore, run: Run, if_states: list[RunState], allowed: bool
    ) -> None:
        """A conditional update applies only when the run's state is one of if_states."""
        changes = {"state": RunState.CANCELLED.value}
        if allowed:
            assert job_store.update_run(run.run_id, changes, if_states=if_states).state is RunState.CANCELLED
        else:
            with pytest.raises(PreconditionFailedError):
                job_store.update_run(run.run_id, changes, if_states=if_states)
            assert job_store.get_run(run.run_id) == run

    @pytest.mark.parametrize(
        ("if_phases", "allowed"),
        [([JobPhase.QUEUED], True), ([JobPhase.ACTIVE, JobPhase.HARVESTING], False)],
    )
    def test_update_job_if_phases(
        self, job_store: JobStore, job: Job, if_phases: list[JobPhase], allowed: bool
    ) -> None:
        """A conditional job update applies only when the job's phase is one of if_phases."""
        changes = {"phase": JobPhase.CREATING.value}
        if allowed:
            assert job_store.update_job(job.job_id, changes, if_phases=if_phases).phase is JobPhase.CREATING
        else:
            with pytest.raises(PreconditionFailedError):
                job_store.update_job(job.job_id, changes, if_phases=if_phases)
            assert job_store.get_job(job.job_id) == job

    # Leases and writes fenced by them (a job is worked on under its run's lease)

    @pytest.mark.parametrize("kind", ["run", "job"])
    def test_update_if_lease_owner(self, job_store: JobStore, kind: Kind) -> None:
        """Only the holder of the run's live lease may update the run or its jobs under if_lease_owner."""
        record_id = self._create(job_store, kind)
        with pytest.raises(PreconditionFailedError):  # nobody holds it
            self._update(job_store, kind, record_id, "me")
        assert job_store.acquire_lease("leased-run", "me", 300, time.time())
        with pytest.raises(PreconditionFailedError):
            self._update(job_store, kind, record_id, "someone-else")
        assert self._update(job_store, kind, record_id, "me").updated_at > T0
        assert self._lease(job_store, "leased-run").owner == "me"

    @pytest.mark.parametrize("kind", ["run", "job"])
    def test_update_under_expired_lease_fails(self, job_store: JobStore, kind: Kind) -> None:
        """A lease past its expiry no longer entitles its owner to update."""
        record_id = self._create(job_store, kind)
        assert job_store.acquire_lease("leased-run", "me", 10, time.time() - 100)
        with pytest.raises(PreconditionFailedError):
            self._update(job_store, kind, record_id, "me")

    def test_create_job_if_lease_owner(self, job_store: JobStore) -> None:
        """A job is created under if_lease_owner only while that owner holds its run's live lease."""
        assert job_store.create_run(make_run("leased-run"))
        with pytest.raises(PreconditionFailedError):
            job_store.create_job(make_job("leased-run"), if_lease_owner="me")
        assert job_store.get_job(make_job("leased-run").job_id) is None
        assert job_store.acquire_lease("leased-run", "me", 300, time.time())
        assert job_store.create_job(make_job("leased-run"), if_lease_owner="me")
        assert not job_store.create_job(make_job("leased-run"), if_lease_owner="me")

    def test_lease_is_exclusive_until_it_expires(self, job_store: JobStore) -> None:
        """A live lease keeps others out; once expired, another owner takes it over."""
        assert job_store.create_run(make_run("leased-run"))
        assert job_store.acquire_lease("leased-run", "a", 60, T0) is True
        assert job_store.acquire_lease("leased-run", "b", 60, T0 + 59) is False
        assert self._lease(job_store, "leased-run") == Lease(owner="a", expires=T0 + 60)
        assert job_store.acquire_lease("leased-run", "b", 60, T0 + 60) is True
        assert self._lease(job_store, "leased-run") == Lease(owner="b", expires=T0 + 120)

    def test_own_lease_is_extended(self, job_store: JobStore) -> None:
        """Acquiring a lease one already holds extends it."""
        assert job_store.create_run(make_run("leased-run"))
        assert job_store.acquire_lease("leased-run", "a", 60, T0)
        assert job_store.acquire_lease("leased-run", "a", 60, T0 + 30)
        assert self._lease(job_store, "leased-run") == Lease(owner="a", expires=T0 + 90)

    def test_release_only_by_owner(self, job_store: JobStore) -> None:
        """release_lease by someone else does nothing; by the owner it frees the lease for others."""
        assert job_store.create_run(make_run("leased-run"))
        assert job_store.acquire_lease("leased-run", "a", 60, T0)
        job_store.release_lease("leased-run", "b")
        assert self._lease(job_store, "leased-run").owner == "a"
        job_store.release_lease("leased-run", "a")
        assert self._lease(job_store, "leased-run").owner is None
        assert job_store.acquire_lease("leased-run", "b", 60, T0 + 1)

    def test_leases_do_not_touch_updated_at(self, job_store: JobStore) -> None:
        """Taking and giving back a lease leaves updated_at alone, so the active-work order follows progress."""
        assert job_store.create_run(make_run("leased-run"))
        job_store.acquire_lease("leased-run", "a", 60, time.time())
        job_store.release_lease("leased-run", "a")
        record = job_store.get_run("leased-run")
        assert record is not None and record.updated_at == T0

    def test_releasing_a_missing_record_is_fine(self, job_store: JobStore) -> None:
        """Giving back a lease on a run that does not exist is a no-op."""
        job_store.release_lease("ghost", "a")

    # Starting jobs under the in-flight caps

    def test_start_job_counts_jobs_in_flight_across_runs(self, job_store: JobStore) -> None:
        """QUEUED -> CREATING while fewer than max_jobs jobs of any run are CREATING or ACTIVE; else None."""
        for job in (
            make_job("run-a", chunk=0, phase=JobPhase.ACTIVE),
            make_job("run-a", chunk=1, phase=JobPhase.DONE),
            make_job("run-b", chunk=0, phase=JobPhase.CREATING),
            make_job("run-b", chunk=1),
            make_job("run-b", chunk=2),
        ):
            assert job_store.create_job(job)
        assert (
            job_store.start_job("run-b-a1-c1", max_jobs=2, max_tokens=10**9, max_input_bytes=10**12) is None
        )
        assert job_store.get_job("run-b-a1-c1") is not None
        assert job_store.get_job("run-b-a1-c1").phase is JobPhase.QUEUED  # type: ignore[union-attr]
        started = job_store.start_job("run-b-a1-c1", max_jobs=3, max_tokens=10**9, max_input_bytes=10**12)
        assert started is not None and started.phase is JobPhase.CREATING
        assert (
            job_store.start_job("run-b-a1-c2", max_jobs=3, max_tokens=10**9, max_input_bytes=10**12) is None
        )
        with pytest.raises(PreconditionFailedError):  # no longer QUEUED
            job_store.start_job("run-b-a1-c1", max_jobs=10, max_tokens=10**9, max_input_bytes=10**12)

    def test_start_job_keeps_the_token_cap_but_always_starts_a_first_job(self, job_store: JobStore) -> None:
        """A job whose tokens would pass max_tokens waits, unless nothing is in flight at all."""
        for chunk in (0, 1):
            assert job_store.create_job(make_job("run-a", chunk=chunk))  # 2240 tokens each
        first = job_store.start_job("run-a-a1-c0", max_jobs=10, max_tokens=1000, max_input_bytes=10**12)
        assert first is not None and first.phase is JobPhase.CREATING
        assert (
            job_store.start_job("run-a-a1-c1", max_jobs=10, max_tokens=4000, max_input_bytes=10**12) is None
        )
        assert (
            job_store.start_job("run-a-a1-c1", max_jobs=10, max_tokens=4480, max_input_bytes=10**12)
            is not None
        )

    def test_start_job_is_fenced_by_the_run_lease(self, job_store: JobStore) -> None:
        """Under if_lease_owner a job starts only while that owner holds its run's lease."""
        assert job_store.create_run(make_run("leased-run"))
        assert job_store.create_job(make_job("leased-run"))
        job_id = make_job("leased-run").job_id
        with pytest.raises(PreconditionFailedError):
            job_store.start_job(
                job_id, max_jobs=5, max_tokens=10**9, max_input_bytes=10**12, if_lease_owner="me"
            )
        assert job_store.acquire_lease("leased-run", "me", 300, time.time())
        assert (
            job_store.start_job(
                job_id, max_jobs=5, max_tokens=10**9, max_input_bytes=10**12, if_lease_owner="me"
            )
            is not None
        )

    @pytest.fixture
    def separate_stores(self) -> Callable[[int], list[JobStore]]:
        """Stores on the same data with their own connections, as separate processes have."""
        raise NotImplementedError("subclasses provide independent stores")

    def _start_all(self, stores: list[JobStore], cap: int) -> tuple[list[Job | None], int]:
        """Start one queued job per store entry, all at once, under a cap of ``cap`` jobs in flight.
        Returns what each start gave and how many times contention refused one for now."""
        job_ids = []
        refusals: list[int] = []
        for chunk in range(len(stores)):
            job = make_job(f"run-{chunk}", chunk=chunk)
            assert stores[0].create_job(job)
            job_ids.append(job.job_id)

        def start(index: int) -> Job | None:
            # Contention may refuse a start for now (TransientError): the next tick asks again.
            for attempt in range(50):
                try:
                    return stores[index].start_job(
                        job_ids[index], max_jobs=cap, max_tokens=10**9, max_input_bytes=10**12
                    )
                except TransientError:
                    refusals.append(index)
                    time.sleep(0.01 * (attempt % 10))
            raise AssertionError(f"{job_ids[index]} was refused 50 times")

        with ThreadPoolExecutor(len(stores)) as pool:
            started = list(pool.map(start, range(len(stores))))
        creating = [job_id for job_id in job_ids if stores[0].get_job(job_id).phase is JobPhase.CREATING]  # type: ignore[union-attr]
        assert len(creating) == sum(job is not None for job in started)
        return started, len(refusals)

    def test_parallel_starts_in_separate_processes_never_pass_the_cap(
        self, separate_stores: Callable[[int], list[JobStore]]
    ) -> None:
        """Three workers, each with its own connection, starting three queued jobs at once under a cap of two:
        exactly two start.

        Three, not more: the Firestore emulator resolves each lock conflict by waiting about 2 s, so the
        wait grows steeply with workers (4 workers timed out a slower CI machine at 300 s).
        """
        started, _ = self._start_all(separate_stores(3), cap=2)
        assert sum(job is not None for job in started) == 2

    def test_parallel_starts_in_one_process_never_pass_the_cap(self, job_store: JobStore) -> None:
        """The runs of one tick (threads sharing the process's store) starting jobs at once: exactly the cap,
        and none refused for contention (the process takes its turns; on Firestore they wounded each other's
        transactions on the counter document: 30 s for these six starts on the emulator, 0.7 s in turns)."""
        started, refusals = self._start_all([job_store] * 6, cap=4)
        assert sum(job is not None for job in started) == 4
        assert refusals == 0

    # Spend ledger

    def test_spend_reservations_count_until_settled_and_count_once_per_run(self, job_store: JobStore) -> None:
        """A reservation counts in each capped period; reserving again replaces it; settle replaces it by
        the billed cost; a reservation that would pass a cap changes nothing and names the cap."""
        caps = spend.caps_at(T0, per_day=1.0, per_month=5.0)
        day, month = spend.period_keys_of(caps)
        assert job_store.reserve_spend("run-a", 0.6, caps) is None
        assert job_store.reserve_spend("run-a", 0.7, caps) is None  # redone: replaces, never adds
        assert job_store.spent([day, month]) == {day: pytest.approx(0.7), month: pytest.approx(0.7)}
        refused = job_store.reserve_spend("run-b", 0.4, caps)
        assert refused is not None and refused.cap.period == "day"
        assert refused.spent == pytest.approx(0.7) and refused.amount == pytest.approx(0.4)
        assert job_store.spent([day]) == {day: pytest.approx(0.7)}  # nothing reserved for run-b
        job_store.settle_spend("run-a", [day, month], 0.25)
        assert job_store.spent([day, month]) == {day: pytest.approx(0.25), month: pytest.approx(0.25)}
        assert job_store.reserve_spend("run-b", 0.4, caps) is None
        assert job_store.spent([day, "day-1999-01-01"]) == {day: pytest.approx(0.65), "day-1999-01-01": 0.0}

    def test_parallel_reservations_in_separate_processes_never_pass_a_spend_cap(
        self, separate_stores: Callable[[int], list[JobStore]]
    ) -> None:
        """Three workers with their own connections reserve $0.40 each at once under a $1 daily cap:
        exactly two get it, and the ledger holds their two reservations."""
        stores = separate_stores(3)
        caps = spend.caps_at(T0, per_day=1.0, per_month=None)

        def reserve(index: int) -> spend.SpendRefusal | None:
            for attempt in range(50):
                try:
                    return stores[index].reserve_spend(f"run-{index}", 0.4, caps)
                except TransientError:  # contention: the next tick asks again
                    time.sleep(0.01 * (attempt % 10))
            raise AssertionError(f"run-{index} was refused 50 times")

        with ThreadPoolExecutor(len(stores)) as pool:
            refusals = list(pool.map(reserve, range(len(stores))))
        assert sum(refused is None for refused in refusals) == 2
        assert stores[0].spent(spend.period_keys_of(caps)) == {caps[0].key: pytest.approx(0.8)}

    # The now lane's spend window

    def test_the_spend_window_takes_what_fits_and_says_when_the_rest_will(self, job_store: JobStore) -> None:
        """Under $0.30 per 600 s: two $0.134 calls are taken, a third waits until the first leaves the
        window (and taking nothing meanwhile); past that, it is taken; another key is its own window."""
        take = job_store.take_spend_window
        assert take("now_spend", 0.134, 0.30, T0, 600.0) == 0.0
        assert take("now_spend", 0.134, 0.30, T0 + 10, 600.0) == 0.0
        assert take("now_spend", 0.134, 0.30, T0 + 20, 600.0) == pytest.approx(580.0)
        assert take("now_spend", 0.134, 0.30, T0 + 30, 600.0) == pytest.approx(
            570.0
        )  # the refusal took nothing
        assert take("other", 0.134, 0.30, T0 + 30, 600.0) == 0.0
        assert take("now_spend", 0.134, 0.30, T0 + 600.5, 600.0) == 0.0
        assert take("now_spend", 0.134, 0.30, T0 + 601, 600.0) == pytest.approx(9.0)

    def test_parallel_takes_in_separate_processes_never_pass_the_spend_window(
        self, separate_stores: Callable[[int], list[JobStore]]
    ) -> None:
        """Three workers with their own connections take $0.134 each at once from a $0.30 window: exactly
        two are let go, the third is told to wait."""
        stores = separate_stores(3)

        def take(index: int) -> float:
            for attempt in range(50):
                try:
                    return stores[index].take_spend_window("now_spend", 0.134, 0.30, T0, 600.0)
                except TransientError:  # contention: asked again
                    time.sleep(0.01 * (attempt % 10))
            raise AssertionError(f"worker {index} was refused 50 times")

        with ThreadPoolExecutor(len(stores)) as pool:
            waits = list(pool.map(take, range(len(stores))))
        assert sorted(waits)[:2] == [0.0, 0.0] and sorted(waits)[2] == pytest.approx(600.0)

    # Queries

    def test_list_runs_oldest_update_first_and_filtered(self, job_store: JobStore) -> None:
        """list_runs filters by state and orders by updated_at, oldest first, up to the limit."""
        runs = [
            make_run("r-newest", state=RunState.SUBMITTED, updated_at=T0 + 30),
            make_run("r-oldest", state=RunState.RECEIVED, updated_at=T0 + 10),
            make_run("r-done", state=RunState.SUCCEEDED, updated_at=T0),
            make_run("r-middle", state=RunState.HARVESTING, updated_at=T0 + 20),
        ]
        for run in runs:
            assert job_store.create_run(run)
        active = [RunState.RECEIVED, RunState.SUBMITTED, RunState.HARVESTING]

        def ids(found: list[Run]) -> list[str]:
            return [run.run_id for run in found]

        assert ids(job_store.list_runs(active)) == ["r-oldest", "r-middle", "r-newest"]
        assert ids(job_store.list_runs(active, limit=2)) == ["r-oldest", "r-middle"]
        assert ids(job_store.list_runs()) == ["r-done", "r-oldest", "r-middle", "r-newest"]
        assert ids(job_store.list_runs([RunState.CANCELLED])) == []
        job_store.update_run("r-oldest", {"submit_attempts": 1})  # now the most recently updated
        assert ids(job_store.list_runs(active)) == ["r-middle", "r-newest", "r-oldest"]

    def test_list_jobs_by_attempt_then_chunk(self, job_store: JobStore) -> None:
        """A run's jobs come ordered by (attempt, chunk), other runs' jobs left out."""
        order = [(2, 0), (1, 10), (1, 2), (2, 1), (1, 0)]
        for attempt, chunk in order:
            assert job_store.create_job(make_job("run-a", attempt=attempt, chunk=chunk))
        assert job_store.create_job(make_job("run-b"))
        found = [(job.attempt, job.chunk) for job in job_store.list_jobs("run-a")]
        assert found == sorted(order)
        assert job_store.list_jobs("run-none") == []
