"""The pay-once cache in SQLite: one table ``paid_images`` in the job store's database file.

A row per request fingerprint holds the ``PaidImage`` as JSON. The conditional writes of ``put`` run
inside ``BEGIN IMMEDIATE`` (the database's write lock), so of two processes settling the same new line at
once exactly one entry is stored. Table ``in_flight`` holds a row per request an unfinished run is paying
for now (``InFlight``), claimed the same way. Many entries are created, or claims released, in one write
transaction (``put_many``, ``release_in_flight_many``).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import orjson

from promptdrop.adapters.sqlite_store import (
    DEFAULT_BUSY_TIMEOUT,
    open_database,
    translate_sqlite_errors,
    write_transaction,
)
from promptdrop.ports import InFlight, PaidImage

# Fingerprints per ``IN (...)`` query: well under SQLite's limit on bound parameters (999 before 3.32).
_IN_BATCH = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS paid_images (
    fingerprint TEXT PRIMARY KEY,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS in_flight (
    fingerprint TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    key TEXT NOT NULL
)
"""


class SqlitePaidImageCache:
    """``PaidImageCache`` on a SQLite file (the one ``PROMPTDROP_STORE=sqlite:///PATH`` names)."""

    def __init__(self, path: Path, *, timeout: float = DEFAULT_BUSY_TIMEOUT) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._connection = open_database(path, timeout=timeout, schema=_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._connection.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock, translate_sqlite_errors(self._path), write_transaction(self._connection) as conn:
            yield conn

    def get(self, fingerprint: str) -> PaidImage | None:
        with self._lock, translate_sqlite_errors(self._path):
            row = self._connection.execute(
                "SELECT doc FROM paid_images WHERE fingerprint = ?", (fingerprint,)
            ).fetchone()
        return None if row is None else PaidImage.from_json(orjson.loads(row[0]))

    def get_many(self, fingerprints: Iterable[str]) -> dict[str, PaidImage]:
        rows = self._select_in("SELECT fingerprint, doc FROM paid_images", fingerprints)
        return {row[0]: PaidImage.from_json(orjson.loads(row[1])) for row in rows}

    def _select_in(self, select: str, fingerprints: Iterable[str]) -> list[tuple[str, ...]]:
        """``select`` + ``WHERE fingerprint IN (...)``, ``_IN_BATCH`` fingerprints a query."""
        wanted = list(dict.fromkeys(fingerprints))
        rows: list[tuple[str, ...]] = []
        for start in range(0, len(wanted), _IN_BATCH):
            batch = wanted[start : start + _IN_BATCH]
            query = f"{select} WHERE fingerprint IN ({','.join('?' * len(batch))})"
            with self._lock, translate_sqlite_errors(self._path):
                rows += self._connection.execute(query, batch).fetchall()
        return rows

    def put(self, entry: PaidImage, *, replacing: PaidImage | None = None) -> bool:
        doc = orjson.dumps(entry.to_json()).decode()
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT doc FROM paid_images WHERE fingerprint = ?", (entry.fingerprint,)
            ).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO paid_images (fingerprint, doc) VALUES (?, ?)", (entry.fingerprint, doc)
                )
                return True
            if replacing is None or PaidImage.from_json(orjson.loads(row[0])) != replacing:
                return False
            conn.execute("UPDATE paid_images SET doc = ? WHERE fingerprint = ?", (doc, entry.fingerprint))
            return True

    def put_many(self, entries: Sequence[PaidImage]) -> list[bool]:
        if not entries:
            return []
        with self._transaction() as conn:  # one write transaction for them all
            return [
                conn.execute(
                    "INSERT OR IGNORE INTO paid_images (fingerprint, doc) VALUES (?, ?)",
                    (entry.fingerprint, orjson.dumps(entry.to_json()).decode()),
                ).rowcount
                == 1
                for entry in entries
            ]

    def in_flight(self, fingerprint: str) -> InFlight | None:
        with self._lock, translate_sqlite_errors(self._path):
            row = self._connection.execute(
                "SELECT run_id, key FROM in_flight WHERE fingerprint = ?", (fingerprint,)
            ).fetchone()
        return None if row is None else InFlight(fingerprint, row[0], row[1])

    def in_flight_many(self, fingerprints: Iterable[str]) -> dict[str, InFlight]:
        rows = self._select_in("SELECT fingerprint, run_id, key FROM in_flight", fingerprints)
        return {row[0]: InFlight(row[0], row[1], row[2]) for row in rows}

    def claim_in_flight(self, marker: InFlight, *, replacing: InFlight | None = None) -> InFlight:
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT run_id, key FROM in_flight WHERE fingerprint = ?", (marker.fingerprint,)
            ).fetchone()
            current = None if row is None else InFlight(marker.fingerprint, row[0], row[1])
            if current is not None and current != replacing:
                return current
            conn.execute(
                "INSERT OR REPLACE INTO in_flight (fingerprint, run_id, key) VALUES (?, ?, ?)",
                (marker.fingerprint, marker.run_id, marker.key),
            )
            return marker

    def claim_in_flight_many(self, markers: Sequence[InFlight]) -> list[InFlight]:
        if not markers:
            return []
        with self._transaction() as conn:  # one write transaction: the holders read are those stored
            conn.executemany(
                "INSERT OR IGNORE INTO in_flight (fingerprint, run_id, key) VALUES (?, ?, ?)",
                [(marker.fingerprint, marker.run_id, marker.key) for marker in markers],
            )
            holders: list[InFlight] = []
            for marker in markers:
                row = conn.execute(
                    "SELECT run_id, key FROM in_flight WHERE fingerprint = ?", (marker.fingerprint,)
                ).fetchone()
                holders.append(InFlight(marker.fingerprint, row[0], row[1]))
            return holders

    def release_in_flight(self, marker: InFlight) -> None:
        with self._transaction() as conn:
            conn.execute(
                "DELETE FROM in_flight WHERE fingerprint = ? AND run_id = ? AND key = ?",
                (marker.fingerprint, marker.run_id, marker.key),
            )

    def release_in_flight_many(self, markers: Sequence[InFlight]) -> None:
        if not markers:
            return
        with self._transaction() as conn:
            conn.executemany(
                "DELETE FROM in_flight WHERE fingerprint = ? AND run_id = ? AND key = ?",
                [(marker.fingerprint, marker.run_id, marker.key) for marker in markers],
            )
