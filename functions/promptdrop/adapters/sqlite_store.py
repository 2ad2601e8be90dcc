"""The embedded job store: runs and jobs in one SQLite file, shared safely by threads and processes.

Each record is kept whole as JSON (``model_dump(mode="json")``) beside the few columns the queries of
``JobStore`` filter and sort on. Read-modify-write happens inside ``BEGIN IMMEDIATE``, which takes the
database's write lock up front, so conditional updates and leases are atomic across processes (two
``promptdrop serve`` may share the file). WAL mode lets readers go on while one process writes.

Threads share one connection guarded by a lock: every operation is a short transaction, so the lock is
held only for microseconds and a per-thread connection would buy nothing.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import orjson

from promptdrop import pacing, spend
from promptdrop import store_rules as rules
from promptdrop.errors import NotFoundError, PermanentError, PreconditionFailedError, TransientError
from promptdrop.records import Job, Run
from promptdrop.states import JobPhase, RunState

DEFAULT_BUSY_TIMEOUT = 30.0  # seconds a writer waits for another process's write lock


@contextmanager
def translate_sqlite_errors(path: Path) -> Iterator[None]:
    """Lock contention and I/O trouble may pass (transient); a corrupt or foreign file will not."""
    try:
        yield
    except sqlite3.OperationalError as exc:  # "database is locked", "disk I/O error", ...
        raise TransientError(f"SQLite database {path}: {exc}") from exc
    except sqlite3.DatabaseError as exc:  # "file is not a database", corruption
        raise PermanentError(f"SQLite database {path}: {exc}") from exc


def open_database(path: Path, *, timeout: float, schema: str) -> sqlite3.Connection:
    """Open (creating if needed) a WAL-mode database and apply ``schema`` (``IF NOT EXISTS`` statements).

    The connection is in autocommit mode; callers group statements with ``write_transaction``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with translate_sqlite_errors(path):
        connection = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
        try:
            _enable_wal(connection, timeout)
            # NORMAL is durable across application crashes in WAL mode; only a power cut can lose the
            # last commits, and every step of the pipeline is idempotent, so it is redone.
            connection.execute("PRAGMA synchronous=NORMAL")
            with write_transaction(connection):
                _run_script(connection, schema)
        except BaseException:
            connection.close()
            raise
    return connection


def _enable_wal(connection: sqlite3.Connection, timeout: float) -> None:
    # Processes switching a new file to WAL at the same moment may be told "database is locked" at
    # once, without the busy timeout being waited out, so retry until the timeout has passed.
    deadline = time.monotonic() + timeout
    while True:
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def _run_script(connection: sqlite3.Connection, schema: str) -> None:
    # executescript() would COMMIT first and escape the transaction; run the statements one by one.
    for statement in schema.split(";"):
        if statement.strip():
            connection.execute(statement)


@contextmanager
def write_transaction(connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``: holds the database's write lock from the first read."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield connection
        connection.execute("COMMIT")
    except BaseException:
        # Some errors (a full disk) end the transaction themselves; a failed COMMIT leaves it open.
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise


_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    updated_at REAL NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_state ON runs (state, updated_at);
CREATE INDEX IF NOT EXISTS runs_by_update ON runs (updated_at);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    chunk INTEGER NOT NULL,
    phase TEXT NOT NULL,
    updated_at REAL NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_run ON jobs (run_id, attempt, chunk);
CREATE INDEX IF NOT EXISTS jobs_by_phase ON jobs (phase);
CREATE TABLE IF NOT EXISTS spend (
    period TEXT NOT NULL,
    run_id TEXT NOT NULL,
    amount REAL NOT NULL,
    settled INTEGER NOT NULL,
    PRIMARY KEY (period, run_id)
);
CREATE TABLE IF NOT EXISTS rate_windows (
    key TEXT PRIMARY KEY,
    entries TEXT NOT NULL
)
"""

RecordT = TypeVar("RecordT", Run, Job)


@dataclass(frozen=True, slots=True)
class _Table(Generic[RecordT]):
    """How one record type maps to its table: the key, and the columns kept beside the JSON doc."""

    name: str
    key: str
    model: type[RecordT]
    status_field: str  # "state" or "phase": what ``if_states`` / ``if_phases`` compare

    def columns(self, record: RecordT) -> dict[str, Any]:
        if isinstance(record, Run):
            return {"run_id": record.run_id, "state": record.state.value, "updated_at": record.updated_at}
        return {
            "job_id": record.job_id,
            "run_id": record.run_id,
            "attempt": record.attempt,
            "chunk": record.chunk,
            "phase": record.phase.value,
            "updated_at": record.updated_at,
        }


_RUNS = _Table("runs", "run_id", Run, "state")
_JOBS = _Table("jobs", "job_id", Job, "phase")


def _dump(record: Run | Job) -> str:
    return orjson.dumps(record.model_dump(mode="json")).decode()


def _placeholders(count: int) -> str:
    return ", ".join("?" * count)


class SqliteJobStore:
    """``JobStore`` on a SQLite file (``PROMPTDROP_STORE=sqlite:///PATH``)."""

    def __init__(self, path: Path, *, timeout: float = DEFAULT_BUSY_TIMEOUT) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._connection = open_database(path, timeout=timeout, schema=_SCHEMA)

    @property
    def path(self) -> Path:
        return self._path

    def close(self) -> None:
        with self._lock:
            self._connection.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock, translate_sqlite_errors(self._path), write_transaction(self._connection) as conn:
            yield conn

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._lock, translate_sqlite_errors(self._path):
            yield self._connection

    # Runs

    def create_run(self, run: Run) -> bool:
        with self._transaction() as conn:
            return self._insert(conn, _RUNS, run)

    def get_run(self, run_id: str) -> Run | None:
        return self._get(_RUNS, run_id)

    def update_run(
        self,
        run_id: str,
        changes: Mapping[str, Any],
        *,
        if_states: Iterable[RunState] | None = None,
        if_lease_owner: str | None = None,
    ) -> Run:
        rules.check_fields(Run, changes)
        with self._transaction() as conn:
            doc = self._load(conn, _RUNS, run_id)
            run = rules.updated(
                Run,
                doc,
                changes,
                label=f"run {run_id}",
                status_field="state",
                allowed=if_states,
                lease=doc.get("lease"),
                lease_owner=if_lease_owner,
                now=time.time(),
            )
            self._save(conn, _RUNS, run)
        return run

    def list_runs(self, states: Iterable[RunState] | None = None, limit: int = 1000) -> list[Run]:
        if states is None:
            where, params = "", []
        else:
            wanted = [RunState(state).value for state in states]
            if not wanted:
                return []
            where, params = f"WHERE state IN ({_placeholders(len(wanted))})", wanted
        sql = f"SELECT run_id, doc FROM runs {where} ORDER BY updated_at, run_id LIMIT ?"  # noqa: S608 (placeholders only)
        with self._reading() as conn:
            rows = conn.execute(sql, [*params, limit]).fetchall()
        return rules.decoded(Run, _documents(rows))

    # Jobs

    def create_job(self, job: Job, *, if_lease_owner: str | None = None) -> bool:
        with self._transaction() as conn:
            if if_lease_owner is not None:
                self._check_run_lease(conn, job.run_id, if_lease_owner, f"creating job {job.job_id}")
            return self._insert(conn, _JOBS, job)

    def get_job(self, job_id: str) -> Job | None:
        return self._get(_JOBS, job_id)

    def update_job(
        self,
        job_id: str,
        changes: Mapping[str, Any],
        *,
        if_phases: Iterable[JobPhase] | None = None,
        if_lease_owner: str | None = None,
    ) -> Job:
        rules.check_fields(Job, changes)
        with self._transaction() as conn:
            doc = self._load(conn, _JOBS, job_id)
            job = rules.updated(
                Job,
                doc,
                changes,
                label=f"job {job_id}",
                status_field="phase",
                allowed=if_phases,
                lease=self._run_lease(conn, str(doc.get("run_id"))) if if_lease_owner else None,
                lease_owner=if_lease_owner,
                now=time.time(),
            )
            self._save(conn, _JOBS, job)
        return job

    def start_job(
        self,
        job_id: str,
        *,
        max_jobs: int,
        max_tokens: int,
        max_input_bytes: int,
        if_lease_owner: str | None = None,
    ) -> Job | None:
        # BEGIN IMMEDIATE holds the database's write lock: no other worker starts a job meanwhile.
        with self._transaction() as conn:
            doc = self._load(conn, _JOBS, job_id)
            job = rules.updated(
                Job,
                doc,
                {"phase": JobPhase.CREATING.value},
                label=f"job {job_id}",
                status_field="phase",
                allowed=[JobPhase.QUEUED],
                lease=self._run_lease(conn, str(doc.get("run_id"))) if if_lease_owner else None,
                lease_owner=if_lease_owner,
                now=time.time(),
            )
            caps = {"max_jobs": max_jobs, "max_tokens": max_tokens, "max_input_bytes": max_input_bytes}
            if not rules.may_start(self._in_flight(conn), job, **caps):
                return None
            self._save(conn, _JOBS, job)
        return job

    # Spend ledger (spend.py): one row per (period, run)

    def reserve_spend(
        self, run_id: str, amount: float, caps: Sequence[spend.SpendCap]
    ) -> spend.SpendRefusal | None:
        # BEGIN IMMEDIATE: no other process reserves between the sums read and the rows written.
        with self._transaction() as conn:
            ledgers = {cap.key: self._ledger(conn, cap.key) for cap in caps}
            refused = spend.refusal(ledgers, caps, run_id, amount)
            if refused is None:
                for cap in caps:
                    self._put_spend(conn, cap.key, run_id, spend.entry(amount, settled=False))
        return refused

    def settle_spend(self, run_id: str, periods: Sequence[str], amount: float) -> None:
        with self._transaction() as conn:
            for period in periods:
                self._put_spend(conn, period, run_id, spend.entry(amount, settled=True))

    def spent(self, periods: Sequence[str]) -> dict[str, float]:
        with self._reading() as conn:
            return {period: spend.total(self._ledger(conn, period)) for period in periods}

    def take_spend_window(self, key: str, amount: float, limit: float, now: float, window: float) -> float:
        # BEGIN IMMEDIATE: no other process takes from the window between the read and the write.
        with self._transaction() as conn:
            row = conn.execute("SELECT entries FROM rate_windows WHERE key = ?", [key]).fetchone()
            entries = [(float(at), float(usd)) for at, usd in orjson.loads(row[0])] if row else []
            kept, wait = pacing.window_take(entries, amount, limit, now, window)
            if wait == 0.0:
                conn.execute(
                    "INSERT INTO rate_windows (key, entries) VALUES (?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET entries = excluded.entries",
                    [key, orjson.dumps(kept).decode()],
                )
        return wait

    @staticmethod
    def _ledger(conn: sqlite3.Connection, period: str) -> dict[str, dict[str, Any]]:
        rows = conn.execute("SELECT run_id, amount, settled FROM spend WHERE period = ?", [period])
        return {run_id: {"amount": amount, "settled": bool(settled)} for run_id, amount, settled in rows}

    @staticmethod
    def _put_spend(conn: sqlite3.Connection, period: str, run_id: str, line: Mapping[str, Any]) -> None:
        conn.execute(
            "INSERT INTO spend (period, run_id, amount, settled) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (period, run_id) DO UPDATE SET amount = excluded.amount, settled = excluded.settled",
            [period, run_id, line["amount"], int(line["settled"])],
        )

    @staticmethod
    def _in_flight(conn: sqlite3.Connection) -> rules.InFlight:
        holding = [phase.value for phase in rules.HOLDING_INPUT]
        in_flight = [phase.value for phase in rules.IN_FLIGHT]
        flying, held = _placeholders(len(in_flight)), _placeholders(len(holding))
        sql = (  # placeholders only
            f"SELECT count(*) FILTER (WHERE phase IN ({flying})),"  # noqa: S608
            f" coalesce(sum(json_extract(doc, '$.estimated_tokens')) FILTER (WHERE phase IN ({flying})), 0),"
            f" coalesce(sum(json_extract(doc, '$.request_bytes')), 0) FROM jobs WHERE phase IN ({held})"
            # Now-lane jobs hold no batch slot and no Files API input (store_rules.in_flight_change).
            " AND coalesce(json_extract(doc, '$.lane'), 'batch') != 'now'"
        )
        row = conn.execute(sql, [*in_flight, *in_flight, *holding]).fetchone()
        return rules.InFlight(*row)

    def list_jobs(self, run_id: str) -> list[Job]:
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT doc FROM jobs WHERE run_id = ? ORDER BY attempt, chunk, job_id", [run_id]
            ).fetchall()
        # Strict: a run whose job cannot be read must not look finished (its advance fails, alone).
        return [Job.model_validate_json(doc) for (doc,) in rows]

    # Leases

    def acquire_lease(self, run_id: str, owner: str, ttl: float, now: float) -> bool:
        """Take the lease if free, expired or ours. Raises NotFoundError if the run does not exist."""
        with self._transaction() as conn:
            doc = self._load(conn, _RUNS, run_id)
            lease = rules.taken_lease(doc.get("lease"), owner, ttl, now)
            if lease is None:
                return False
            self._save_lease(conn, run_id, {**doc, "lease": lease})
        return True

    def release_lease(self, run_id: str, owner: str) -> None:
        with self._transaction() as conn:
            doc = self._find(conn, _RUNS, run_id)
            lease = None if doc is None else rules.released_lease(doc.get("lease"), owner)
            if doc is not None and lease is not None:
                self._save_lease(conn, run_id, {**doc, "lease": lease})

    # Shared by runs and jobs

    def _insert(self, conn: sqlite3.Connection, table: _Table[RecordT], record: RecordT) -> bool:
        columns = {**table.columns(record), "doc": _dump(record)}
        sql = (
            f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({_placeholders(len(columns))})"  # noqa: S608
            f" ON CONFLICT ({table.key}) DO NOTHING"
        )
        return bool(conn.execute(sql, list(columns.values())).rowcount == 1)

    def _get(self, table: _Table[RecordT], record_id: str) -> RecordT | None:
        with self._reading() as conn:
            doc = self._find(conn, table, record_id)
        return None if doc is None else table.model.model_validate(doc)

    def _run_lease(self, conn: sqlite3.Connection, run_id: str) -> Any:
        doc = self._find(conn, _RUNS, run_id)
        return None if doc is None else doc.get("lease")

    def _check_run_lease(self, conn: sqlite3.Connection, run_id: str, owner: str, what: str) -> None:
        if not rules.lease_held(self._run_lease(conn, run_id), owner, time.time()):
            raise PreconditionFailedError(f"{what}: the lease of run {run_id} is not held by {owner}")

    @staticmethod
    def _find(conn: sqlite3.Connection, table: _Table[Any], record_id: str) -> dict[str, Any] | None:
        row = conn.execute(
            f"SELECT doc FROM {table.name} WHERE {table.key} = ?",  # noqa: S608 (fixed names)
            [record_id],
        ).fetchone()
        if row is None:
            return None
        doc: dict[str, Any] = orjson.loads(row[0])
        return doc

    @classmethod
    def _load(cls, conn: sqlite3.Connection, table: _Table[Any], record_id: str) -> dict[str, Any]:
        doc = cls._find(conn, table, record_id)
        if doc is None:
            raise NotFoundError(f"no {table.name[:-1]} {record_id}")
        return doc

    @staticmethod
    def _save(conn: sqlite3.Connection, table: _Table[RecordT], record: RecordT) -> None:
        values: dict[str, Any] = {**table.columns(record), "doc": _dump(record)}
        key = values.pop(table.key)
        assignments = ", ".join(f"{column} = ?" for column in values)
        conn.execute(
            f"UPDATE {table.name} SET {assignments} WHERE {table.key} = ?",  # noqa: S608 (fixed names)
            [*values.values(), key],
        )

    @staticmethod
    def _save_lease(conn: sqlite3.Connection, run_id: str, doc: dict[str, Any]) -> None:
        # Only the lease changed, and no indexed column holds it.
        conn.execute("UPDATE runs SET doc = ? WHERE run_id = ?", [orjson.dumps(doc).decode(), run_id])


def _documents(rows: Iterable[tuple[str, str]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for record_id, doc in rows:
        yield record_id, orjson.loads(doc)
