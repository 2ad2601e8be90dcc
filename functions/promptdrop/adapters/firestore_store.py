"""Firestore as the job store (``JobStore``).

Collections ``runs`` (document id = run id) and ``jobs`` (document id = job id) hold
``model_dump(mode="json")`` of the records. Creates are ``document.create()`` (fails if the document
exists); conditional updates and leases read and write in one transaction, which Firestore retries on
contention. The queries are the ones docs/ARCHITECTURE.md lists, so the composite indexes shipped in
``infra/`` cover them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any, TypeVar

from google.api_core import exceptions as api_exceptions
from google.api_core import gapic_v1
from google.api_core.retry import Retry, if_exception_type
from google.auth import exceptions as auth_exceptions
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter
from pydantic import BaseModel

from promptdrop import pacing, spend
from promptdrop import store_rules as rules
from promptdrop.errors import (
    ConfigurationError,
    NotFoundError,
    PermanentError,
    PreconditionFailedError,
    PromptdropError,
    TransientError,
)
from promptdrop.records import Job, Run
from promptdrop.states import JobPhase, RunState

DEFAULT_DATABASE = "(default)"
RUNS = "runs"
JOBS = "jobs"
# One document counts the jobs in flight (CREATING or ACTIVE) and their tokens, changed in the transaction
# that moves a job in or out of flight: the caps are then one read of one document, never a query.
COUNTERS = "counters"
# One document per capped period (spend.py): {"runs": {run_id: {"amount", "settled"}}}.
SPEND = "spend"
IN_FLIGHT_COUNTER = "in_flight"
# The composite indexes this store's queries need (production Firestore refuses the queries without them;
# infra/main.tf creates them and tests/unit/test_infra_consistency.py checks it does):
#   runs where state in [...] order by updated_at         (list_runs: the poller's active-work query)
#   jobs where run_id == X order by attempt, chunk         (list_jobs)
# The in-flight caps read one counter document (counters/in_flight), never a query.
REQUIRED_INDEXES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (RUNS, ("state", "updated_at")),
    (JOBS, ("run_id", "attempt", "chunk")),
)

_Record = TypeVar("_Record", Run, Job)

_TRANSIENT = (
    api_exceptions.Aborted,  # contention
    api_exceptions.ServiceUnavailable,
    api_exceptions.DeadlineExceeded,
    api_exceptions.TooManyRequests,  # RESOURCE_EXHAUSTED
    api_exceptions.InternalServerError,
    api_exceptions.Cancelled,
    api_exceptions.Unknown,
    api_exceptions.RetryError,
    auth_exceptions.TransportError,
    ConnectionError,
    TimeoutError,
)


def parse_store_url(url: str) -> tuple[str | None, str]:
    """(project, database) of ``firestore``, ``firestore://PROJECT`` or ``firestore://PROJECT/DATABASE``."""
    if url == "firestore":
        return None, DEFAULT_DATABASE
    if not url.startswith("firestore://"):
        raise ConfigurationError("PROMPTDROP_STORE must be firestore or firestore://PROJECT/DATABASE")
    project, _, database = url.removeprefix("firestore://").strip("/").partition("/")
    if "/" in database:
        raise ConfigurationError("PROMPTDROP_STORE must be firestore or firestore://PROJECT/DATABASE")
    return project or None, database or DEFAULT_DATABASE


def translate_firestore_error(exc: BaseException, what: str) -> PromptdropError:
    """Our error for a google-cloud-firestore exception about ``what``."""
    if isinstance(exc, api_exceptions.NotFound):
        return NotFoundError(f"{what}: not found")
    if isinstance(exc, api_exceptions.AlreadyExists):
        return PreconditionFailedError(f"{what}: already exists")
    if isinstance(exc, _TRANSIENT):
        return TransientError(f"Firestore did not complete {what}: {type(exc).__name__}")
    if isinstance(exc, ValueError) and isinstance(exc.__cause__, api_exceptions.Aborted):
        # The transaction ran out of attempts against concurrent writers.
        return TransientError(f"Firestore contention on {what}: transaction attempts exhausted")
    if isinstance(exc, api_exceptions.InvalidArgument) and "transaction" in str(exc.message).lower():
        # "Transaction is invalid or closed": a commit retried after its connection was reset finds the
        # transaction gone. The work was not done; a new transaction can do it.
        return TransientError(f"Firestore did not complete {what}: the transaction was closed under it")
    if isinstance(exc, api_exceptions.FailedPrecondition):
        # Typically a missing composite index; the message names the index to create.
        return PermanentError(f"Firestore refused {what}: {exc.message}")
    return PermanentError(f"Firestore refused {what}: {type(exc).__name__}")


@contextmanager
def firestore_errors(what: str) -> Iterator[None]:
    try:
        yield
    except PromptdropError:
        raise
    except (
        api_exceptions.GoogleAPIError,
        auth_exceptions.GoogleAuthError,
        ConnectionError,
        TimeoutError,
    ) as exc:
        raise translate_firestore_error(exc, what) from exc
    except ValueError as exc:
        if isinstance(exc.__cause__, api_exceptions.Aborted):
            raise translate_firestore_error(exc, what) from exc
        raise


def _stream_retry(retry: Retry | object | None) -> Retry:
    """The retry a streamed query is given: ours, never (``None``), or the library's default for queries."""
    if isinstance(retry, Retry):
        return retry
    if retry is None:
        return Retry(predicate=lambda exc: False)
    return Retry(
        initial=0.1,
        maximum=60.0,
        multiplier=1.3,
        predicate=if_exception_type(
            api_exceptions.DeadlineExceeded,
            api_exceptions.InternalServerError,
            api_exceptions.ServiceUnavailable,
        ),
        timeout=60.0,  # the library's is 300 s: most of a function's 540 s
    )


# Reads of a run whose lease is being taken while it keeps changing (its own owner's writes): then give up
# for this call; the next one asks again.
LEASE_CAS_TRIES = 3


class FirestoreJobStore:
    """Runs and jobs in Firestore. ``timeout``/``retry`` apply to each call (``retry=None``: no retries)."""

    def __init__(
        self,
        client: firestore.Client | None = None,
        *,
        project: str | None = None,
        database: str = DEFAULT_DATABASE,
        transaction_attempts: int = 25,
        timeout: float | None = None,
        retry: Retry | object | None = gapic_v1.method.DEFAULT,
    ) -> None:
        self._client = client if client is not None else firestore.Client(project=project, database=database)
        self._runs = self._client.collection(RUNS)
        self._jobs = self._client.collection(JOBS)
        self._in_flight = self._client.collection(COUNTERS).document(IN_FLIGHT_COUNTER)
        self._spend = self._client.collection(SPEND)
        self._attempts = transaction_attempts
        # Every job start and end changes the one in-flight counter document. The runs a tick advances at
        # once (threads of this process) would each hold it in a transaction and wound one another (the
        # emulator waits ~2 s per conflict; under chaos they kept failing for minutes), so this process
        # changes it one transaction at a time; other processes still contend, and the transaction decides.
        self._counter_lock = threading.Lock()
        self._call: dict[str, Any] = {"retry": retry, "timeout": timeout}
        # A streamed query whose stream breaks asks its retry object whether to go on; given the default or
        # None, google-cloud-firestore reads a private attribute the gRPC callable lacks and raises
        # AttributeError (seen when a connection reset cut a stream), so streams always get a Retry object.
        self._stream_call: dict[str, Any] = {"retry": _stream_retry(retry), "timeout": timeout}

    @classmethod
    def from_url(cls, url: str, client: firestore.Client | None = None, **options: Any) -> FirestoreJobStore:
        """The store ``PROMPTDROP_STORE`` names (``firestore`` or ``firestore://PROJECT/DATABASE``)."""
        project, database = parse_store_url(url)
        return cls(client, project=project, database=database, **options)

    # Runs

    def create_run(self, run: Run) -> bool:
        return self._create(self._runs, run.run_id, run, f"creating run {run.run_id}")

    def get_run(self, run_id: str) -> Run | None:
        return self._get(self._runs, run_id, Run, f"reading run {run_id}")

    def update_run(
        self,
        run_id: str,
        changes: Mapping[str, Any],
        *,
        if_states: Iterable[RunState] | None = None,
        if_lease_owner: str | None = None,
    ) -> Run:
        rules.check_fields(Run, changes)
        reference = self._runs.document(run_id)

        def apply(transaction: firestore.Transaction) -> Run:
            document = self._read(reference, transaction, f"run {run_id}")
            run = rules.updated(
                Run,
                document,
                changes,
                label=f"run {run_id}",
                status_field="state",
                allowed=if_states,
                lease=document.get("lease"),
                lease_owner=if_lease_owner,
                now=time.time(),
            )
            transaction.set(reference, run.model_dump(mode="json"))
            return run

        result: Run = self._transact(apply, f"updating run {run_id}")
        return result

    def list_runs(self, states: Iterable[RunState] | None = None, limit: int = 1000) -> list[Run]:
        query: Any = self._runs
        if states is not None:
            wanted = [RunState(state).value for state in states]
            if not wanted:
                return []
            query = query.where(filter=FieldFilter("state", "in", wanted))
        return self._query(query.order_by("updated_at").limit(limit), Run, "listing runs")

    # Jobs

    def create_job(self, job: Job, *, if_lease_owner: str | None = None) -> bool:
        what = f"creating job {job.job_id}"
        change = rules.in_flight_change(None, job)
        if if_lease_owner is None and change == rules.InFlight():
            return self._create(self._jobs, job.job_id, job, what)
        reference = self._jobs.document(job.job_id)

        def create(transaction: firestore.Transaction) -> bool:
            if if_lease_owner is not None:
                self._check_run_lease(transaction, job.run_id, if_lease_owner, what)
            counter = self._counter(transaction) if change != rules.InFlight() else None
            if reference.get(transaction=transaction, **self._call).exists:
                return False
            transaction.create(reference, job.model_dump(mode="json"))
            if counter is not None:
                transaction.set(self._in_flight, counter.plus(change).to_json())
            return True

        return bool(self._transact(create, what, counter=change != rules.InFlight()))

    def get_job(self, job_id: str) -> Job | None:
        return self._get(self._jobs, job_id, Job, f"reading job {job_id}")

    def update_job(
        self,
        job_id: str,
        changes: Mapping[str, Any],
        *,
        if_phases: Iterable[JobPhase] | None = None,
        if_lease_owner: str | None = None,
    ) -> Job:
        rules.check_fields(Job, changes)
        reference = self._jobs.document(job_id)

        def apply(transaction: firestore.Transaction) -> Job:
            document = self._read(reference, transaction, f"job {job_id}")
            job = rules.updated(
                Job,
                document,
                changes,
                label=f"job {job_id}",
                status_field="phase",
                allowed=if_phases,
                lease=self._run_lease(transaction, str(document.get("run_id"))) if if_lease_owner else None,
                lease_owner=if_lease_owner,
                now=time.time(),
            )
            change = rules.in_flight_change(document, job)
            counter = self._counter(transaction) if change != rules.InFlight() else None
            transaction.set(reference, job.model_dump(mode="json"))
            if counter is not None:
                transaction.set(self._in_flight, counter.plus(change).to_json())
            return job

        # Only a phase change moves a job into or out of the in-flight counts.
        result: Job = self._transact(apply, f"updating job {job_id}", counter="phase" in changes)
        return result

    def start_job(
        self,
        job_id: str,
        *,
        max_jobs: int,
        max_tokens: int,
        max_input_bytes: int,
        if_lease_owner: str | None = None,
    ) -> Job | None:
        reference = self._jobs.document(job_id)

        def start(transaction: firestore.Transaction) -> Job | None:
            counter = self._counter(transaction)
            document = self._read(reference, transaction, f"job {job_id}")
            job = rules.updated(
                Job,
                document,
                {"phase": JobPhase.CREATING.value},
                label=f"job {job_id}",
                status_field="phase",
                allowed=[JobPhase.QUEUED],
                lease=self._run_lease(transaction, str(document.get("run_id"))) if if_lease_owner else None,
                lease_owner=if_lease_owner,
                now=time.time(),
            )
            caps = {"max_jobs": max_jobs, "max_tokens": max_tokens, "max_input_bytes": max_input_bytes}
            if not rules.may_start(counter, job, **caps):
                return None
            transaction.set(reference, job.model_dump(mode="json"))
            transaction.set(self._in_flight, counter.plus(rules.in_flight_change(document, job)).to_json())
            return job

        result: Job | None = self._transact(start, f"starting job {job_id}", counter=True)
        return result

    def list_jobs(self, run_id: str) -> list[Job]:
        query = (
            self._jobs.where(filter=FieldFilter("run_id", "==", run_id)).order_by("attempt").order_by("chunk")
        )
        # Strict: a run whose job cannot be read must not look finished (its advance fails, alone).
        with firestore_errors(f"listing jobs of run {run_id}"):
            return [Job.model_validate(snapshot.to_dict()) for snapshot in query.stream(**self._stream_call)]

    # Leases

    def acquire_lease(self, run_id: str, owner: str, ttl: float, now: float) -> bool:
        """Compare-and-set, not a transaction: read the run, then write the lease only if the run is unchanged
        since (``last_update_time``). Workers racing for a lease never wait on each other's locks; the
        losers see the precondition fail and are refused at once (a transaction per try piled up under
        contention: every overlapping tick and webhook retry held the run's document)."""
        reference = self._runs.document(run_id)
        what = f"taking the lease of run {run_id}"
        for _ in range(LEASE_CAS_TRIES):
            with firestore_errors(what):
                snapshot = reference.get(**self._call)
                if not snapshot.exists:
                    raise NotFoundError(f"run {run_id} does not exist")
                lease = rules.taken_lease((snapshot.to_dict() or {}).get("lease"), owner, ttl, now)
                if lease is None:
                    return False
                try:
                    reference.update(
                        {"lease": lease},
                        option=self._client.write_option(last_update_time=snapshot.update_time),
                        **self._call,
                    )
                except api_exceptions.FailedPrecondition:
                    continue  # the run changed since we read it: read again (another worker may hold it now)
            return True
        return False

    def release_lease(self, run_id: str, owner: str) -> None:
        reference = self._runs.document(run_id)

        def give_back(transaction: firestore.Transaction) -> None:
            snapshot = reference.get(transaction=transaction, **self._call)
            if not snapshot.exists:
                return
            lease = rules.released_lease((snapshot.to_dict() or {}).get("lease"), owner)
            if lease is not None:
                transaction.update(reference, {"lease": lease})

        self._transact(give_back, f"releasing the lease of run {run_id}")

    # Spend ledger (spend.py)

    def reserve_spend(
        self, run_id: str, amount: float, caps: Sequence[spend.SpendCap]
    ) -> spend.SpendRefusal | None:
        def reserve(transaction: firestore.Transaction) -> spend.SpendRefusal | None:
            # Every read before any write (Firestore's rule); a concurrent reservation aborts and retries us.
            ledgers = {cap.key: self._ledger(cap.key, transaction) for cap in caps}
            refused = spend.refusal(ledgers, caps, run_id, amount)
            if refused is None:
                for cap in caps:
                    line = spend.entry(amount, settled=False)
                    transaction.set(self._spend.document(cap.key), {"runs": {run_id: line}}, merge=True)
            return refused

        result: spend.SpendRefusal | None = self._transact(reserve, f"reserving spend for run {run_id}")
        return result

    def settle_spend(self, run_id: str, periods: Sequence[str], amount: float) -> None:
        line = spend.entry(amount, settled=True)
        with firestore_errors(f"settling the spend of run {run_id}"):
            for period in periods:
                self._spend.document(period).set({"runs": {run_id: line}}, merge=True, **self._call)

    def spent(self, periods: Sequence[str]) -> dict[str, float]:
        with firestore_errors("reading the spend ledger"):
            return {period: spend.total(self._ledger(period)) for period in periods}

    def take_spend_window(self, key: str, amount: float, limit: float, now: float, window: float) -> float:
        # One document (counters/<key>) read and written in a transaction: every instance paces under the
        # same window; two takes at once abort one, which retries on what the other wrote.
        document = self._client.collection(COUNTERS).document(key)

        def take(transaction: firestore.Transaction) -> float:
            snapshot = document.get(transaction=transaction, **self._call)
            stored = (snapshot.to_dict() or {}).get("entries") or [] if snapshot.exists else []
            entries = [(float(item["at"]), float(item["usd"])) for item in stored]
            kept, wait = pacing.window_take(entries, amount, limit, now, window)
            if wait == 0.0:
                transaction.set(document, {"entries": [{"at": at, "usd": usd} for at, usd in kept]})
            return wait

        result: float = self._transact(take, f"taking from the spend window {key}")
        return result

    def _ledger(self, period: str, transaction: firestore.Transaction | None = None) -> dict[str, Any]:
        snapshot = self._spend.document(period).get(transaction=transaction, **self._call)
        return dict((snapshot.to_dict() or {}).get("runs") or {}) if snapshot.exists else {}

    # Shared

    def _counter(self, transaction: firestore.Transaction) -> rules.InFlight:
        snapshot = self._in_flight.get(transaction=transaction, **self._call)
        return rules.InFlight.of(snapshot.to_dict() if snapshot.exists else None)

    def _run_lease(self, transaction: firestore.Transaction, run_id: str) -> Any:
        snapshot = self._runs.document(run_id).get(transaction=transaction, **self._call)
        return (snapshot.to_dict() or {}).get("lease") if snapshot.exists else None

    def _check_run_lease(
        self, transaction: firestore.Transaction, run_id: str, owner: str, what: str
    ) -> None:
        if not rules.lease_held(self._run_lease(transaction, run_id), owner, time.time()):
            raise PreconditionFailedError(f"{what}: the lease of run {run_id} is not held by {owner}")

    def _create(self, collection: Any, record_id: str, record: BaseModel, what: str) -> bool:
        with firestore_errors(what):
            try:
                collection.document(record_id).create(record.model_dump(mode="json"), **self._call)
            except api_exceptions.AlreadyExists:
                return False
        return True

    def _get(self, collection: Any, record_id: str, model: type[_Record], what: str) -> _Record | None:
        with firestore_errors(what):
            snapshot = collection.document(record_id).get(**self._call)
        return model.model_validate(snapshot.to_dict()) if snapshot.exists else None

    def _query(self, query: Any, model: type[_Record], what: str) -> list[_Record]:
        with firestore_errors(what):
            return rules.decoded(
                model,
                ((snapshot.id, snapshot.to_dict() or {}) for snapshot in query.stream(**self._stream_call)),
            )

    def _read(self, reference: Any, transaction: firestore.Transaction, label: str) -> dict[str, Any]:
        snapshot = reference.get(transaction=transaction, **self._call)
        if not snapshot.exists:
            raise NotFoundError(f"{label} does not exist")
        return dict(snapshot.to_dict() or {})

    def _transact(
        self, body: Callable[[firestore.Transaction], Any], what: str, *, counter: bool = False
    ) -> Any:
        """Run ``body`` in a transaction; ``counter``: it may change the in-flight counter (one at a time)."""
        with self._counter_lock if counter else nullcontext(), firestore_errors(what):
            return firestore.transactional(body)(self._client.transaction(max_attempts=self._attempts))
