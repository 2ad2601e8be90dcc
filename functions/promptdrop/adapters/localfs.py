"""A local folder as the bucket: object ``a/b.png`` is the file ``<root>/a/b.png``.

Writes land whole or not at all: bytes go to a hidden temporary file in the destination folder, which is
then renamed over the object (``os.replace``) or, for create-if-absent, hard-linked to it (``os.link``
fails if the object exists, atomically, even against another process). Image data is not fsynced: an
application crash never leaves half an object, and after a power cut the worst case is a lost or empty
recent file, which the resumable, idempotent harvest writes again; fsyncing thousands of multi-megabyte
images would cost far more than that risk is worth locally.

Generations stand in for GCS's: a counter kept in ``<root>/.promptdrop-meta.db`` (SQLite) with each
object's fingerprint (size, mtime, inode), content type and metadata. Files copied in by hand get their
generation the first time they are seen, and a new one whenever their fingerprint changes. Store writes
and generation assignment happen under the database's write lock, so every process agrees on them.

Names with a segment starting ``.promptdrop-`` belong to the store (its database, temporary files): they
are refused as object names and never listed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import stat as stat_mode
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import orjson

from promptdrop.adapters.sqlite_store import (
    DEFAULT_BUSY_TIMEOUT,
    open_database,
    translate_sqlite_errors,
    write_transaction,
)
from promptdrop.errors import (
    NotFoundError,
    PermanentError,
    PreconditionFailedError,
    TransientError,
    UnsafeNameError,
)
from promptdrop.names import check_relative_path
from promptdrop.ports import BlobInfo, CopyOrder

RESERVED_PREFIX = ".promptdrop-"
META_DB_NAME = RESERVED_PREFIX + "meta.db"
_TEMP_PREFIX = RESERVED_PREFIX + "tmp-"
# Folders being deleted: moved here first (one rename), then removed; whatever is in it is garbage.
_TRASH_NAME = RESERVED_PREFIX + "trash"
_COPY_BUFFER = 1024 * 1024
_LIST_BATCH = 1000  # object records read per query while listing
_MKDIR_ATTEMPTS = 5  # a concurrent delete may prune a folder we just made; make it again

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    name TEXT PRIMARY KEY,
    generation INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    content_type TEXT,
    metadata TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS generation_counter (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO generation_counter (id, value) VALUES (1, 0)
"""

# Reading a folder, or a path through a file, means there is no such object.
_MISSING = (FileNotFoundError, NotADirectoryError, IsADirectoryError)


@dataclass(frozen=True, slots=True)
class _Fingerprint:
    """What tells a file's versions apart when someone may have replaced it behind the store's back."""

    size: int
    mtime_ns: int
    inode: int


def _fingerprint(path: Path) -> _Fingerprint | None:
    """The fingerprint of a regular file, or None if there is none at ``path``."""
    try:
        result = path.stat()
    except _MISSING:
        return None
    except OSError as exc:
        raise TransientError(f"cannot stat {path}: {exc}") from exc
    if not stat_mode.S_ISREG(result.st_mode):
        return None
    return _Fingerprint(result.st_size, result.st_mtime_ns, result.st_ino)


@contextmanager
def _write_errors(name: str) -> Iterator[None]:
    try:
        yield
    except (IsADirectoryError, NotADirectoryError, FileExistsError) as exc:
        # FileExistsError here comes from creating the parent folders where a file of that name is
        # (keys `a` and `a.png/c`): create-if-absent handles its own FileExistsError before this.
        raise PermanentError(f"object {name} collides with an object or folder of the same name") from exc
    except PermissionError as exc:
        raise PermanentError(f"cannot write object {name}: {exc}") from exc
    except OSError as exc:  # disk full, I/O error: may pass
        raise TransientError(f"cannot write object {name}: {exc}") from exc


class LocalBlobStore:
    """``BlobStore`` on a local folder (``PROMPTDROP_BUCKET=/dir``), safe across threads and processes."""

    def __init__(self, root: Path, *, timeout: float = DEFAULT_BUSY_TIMEOUT) -> None:
        self._root = root.absolute()
        self._root.mkdir(parents=True, exist_ok=True)
        self._db_path = self._root / META_DB_NAME
        self._lock = threading.Lock()
        self._connection = open_database(self._db_path, timeout=timeout, schema=_SCHEMA)
        self._trash = self._root / _TRASH_NAME
        self._empty_trash()  # what a killed process was deleting

    @property
    def url(self) -> str:
        return str(self._root)

    @property
    def root(self) -> Path:
        return self._root

    def close(self) -> None:
        with self._lock:
            self._connection.close()

    def path_of(self, name: str) -> Path:
        """The file behind object ``name``; raises UnsafeNameError for names that would escape the root."""
        check_relative_path(name, what="object name")
        if any(segment.startswith(RESERVED_PREFIX) for segment in name.split("/")):
            raise UnsafeNameError(
                f"object name {name!r} uses the store's reserved prefix {RESERVED_PREFIX!r}"
            )
        return self._root / name

    # Reading

    def stat(self, name: str) -> BlobInfo | None:
        path = self.path_of(name)
        seen = _fingerprint(path)
        if seen is None:
            return None
        with self._lock, translate_sqlite_errors(self._db_path):
            row = self._row(self._connection, name)
        if row is not None and row.fingerprint == seen:
            return row.info(name)
        # New or changed behind our back: settle its generation under the write lock, looking again
        # there, so that processes racing on the same file agree on one generation.
        with self._transaction() as conn:
            current = _fingerprint(path)
            if current is None:
                return None
            row = self._row(conn, name)
            if row is not None and row.fingerprint == current:
                return row.info(name)
            return self._record(conn, name, current, content_type=None, metadata={})

    def open_read(self, name: str, *, start: int = 0, generation: str | None = None) -> BinaryIO:
        """Open object ``name`` positioned at byte ``start``; the file object is its own context manager.

        A folder keeps one version of a file: with ``generation``, the file opened must be that generation
        (the open handle pins the file; a rename over it later does not change what it reads), else
        NotFoundError."""
        path = self.path_of(name)
        try:
            handle = path.open("rb")
        except _MISSING as exc:
            raise NotFoundError(f"no object {name} in {self._root}") from exc
        except OSError as exc:
            raise TransientError(f"cannot read object {name}: {exc}") from exc
        if generation is not None and not self._is_generation(name, handle, generation):
            handle.close()
            raise NotFoundError(f"object {name} is no longer generation {generation}")
        if start:
            handle.seek(start)
        return handle

    def _is_generation(self, name: str, handle: BinaryIO, generation: str) -> bool:
        """Whether the open ``handle`` reads generation ``generation`` of ``name`` (and is still whole)."""
        opened = os.fstat(handle.fileno())
        info = self.stat(name)
        pinned = _Fingerprint(opened.st_size, opened.st_mtime_ns, opened.st_ino)
        return (
            info is not None and info.generation == generation and _fingerprint(self.path_of(name)) == pinned
        )

    def read_bytes(self, name: str, *, generation: str | None = None) -> bytes:
        with self.open_read(name, generation=generation) as handle:
            data = handle.read()
            # Written in place while read (by hand: the store always renames): not that generation whole.
            if generation is not None and not self._is_generation(name, handle, generation):
                raise NotFoundError(f"object {name} changed while being read")
            return data

    def list(self, prefix: str) -> Iterator[BlobInfo]:
        """Objects whose names start with ``prefix``, recursively, sorted by name."""
        if prefix:
            check_relative_path(prefix.removesuffix("/"), what="prefix")
        folder = self._root / prefix.rpartition("/")[0]
        names = _names_under(self._root, folder, prefix)
        # The records of a thousand names in one query, not one locked query per object (a 20,000-image
        # run's folder is listed at settle); an object new or changed since goes through stat.
        for start in range(0, len(names), _LIST_BATCH):
            batch = names[start : start + _LIST_BATCH]
            with self._lock, translate_sqlite_errors(self._db_path):
                rows = self._rows_between(self._connection, batch[0], batch[-1])
            for name in batch:
                row, seen = rows.get(name), _fingerprint(self._root / name)
                info = row.info(name) if row is not None and row.fingerprint == seen else self.stat(name)
                if info is not None:  # deleted since the folder was read
                    yield info

    # Writing

    @contextmanager
    def open_write(
        self, name: str, *, content_type: str | None = None, metadata: Mapping[str, str] | None = None
    ) -> Iterator[BinaryIO]:
        path = self.path_of(name)
        with self._temporary(name, path) as (temporary, handle):
            yield handle
            handle.close()
            self._publish(name, path, temporary, content_type, metadata, if_absent=False)

    def write_overhead(self, size: int) -> int:
        """The bytes go to the file as they are: no copy."""
        return 0

    def write_bytes(
        self,
        name: str,
        data: bytes,
        *,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
        if_absent: bool = False,
        if_generation: str | None = None,
    ) -> bool:
        path = self.path_of(name)
        with self._temporary(name, path) as (temporary, handle):
            with _write_errors(name):
                handle.write(data)
                handle.close()
            return self._publish(
                name,
                path,
                temporary,
                content_type,
                metadata,
                if_absent=if_absent,
                if_generation=if_generation,
            )

    def copy(
        self, source: str, destination: str, *, if_source_generation: str | None = None, share: bool = False
    ) -> None:
        """Copy bytes, content type and metadata; the copy gets a generation of its own.

        A real copy rather than a hard link, so that a file edited in place by hand changes one object only;
        with ``share`` a hard link when the filesystem allows one (a re-run served from the cache takes no
        room), a copy otherwise. With ``if_source_generation``, the bytes copied are those of that
        generation or nothing is copied.
        """
        source_path = self.path_of(source)
        path = self.path_of(destination)
        if share and self._link(source, source_path, destination, path, if_source_generation):
            return
        with self._temporary(destination, path) as (temporary, handle):
            with self.open_read(source) as reader, _write_errors(destination):
                # The open handle pins one file; the object's generation is known for the file at the path.
                opened = os.fstat(reader.fileno())
                info = self.stat(source)
                pinned = _Fingerprint(opened.st_size, opened.st_mtime_ns, opened.st_ino)
                if info is None or _fingerprint(source_path) != pinned:
                    raise PreconditionFailedError(f"object {source} changed while being copied")
                if if_source_generation is not None and info.generation != if_source_generation:
                    raise PreconditionFailedError(
                        f"object {source} is generation {info.generation}, not {if_source_generation}"
                    )
                shutil.copyfileobj(reader, handle, _COPY_BUFFER)
                handle.close()
            self._publish(destination, path, temporary, info.content_type, info.metadata, if_absent=False)

    def copy_many(self, orders: Sequence[CopyOrder], *, share: bool = False) -> Sequence[bool]:
        """One ``copy`` each: a folder has no batch call, and a hard link costs no round trip."""
        done: list[bool] = []
        for order in orders:
            try:
                self.copy(
                    order.source,
                    order.destination,
                    if_source_generation=order.if_source_generation,
                    share=share,
                )
                done.append(True)
            except (NotFoundError, PreconditionFailedError):
                done.append(False)
        return done

    def _link(
        self, source: str, source_path: Path, destination: str, path: Path, if_source_generation: str | None
    ) -> bool:
        """``copy`` as a hard link of the source's file; False when the filesystem refuses links."""
        info = self.stat(source)
        if info is None:
            raise NotFoundError(f"object {source} does not exist")
        if if_source_generation is not None and info.generation != if_source_generation:
            raise PreconditionFailedError(
                f"object {source} is generation {info.generation}, not {if_source_generation}"
            )
        temporary = path.with_name(f"{_TEMP_PREFIX}{uuid.uuid4().hex}")
        with _write_errors(destination):
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source_path, temporary)
        except FileNotFoundError as exc:
            raise NotFoundError(f"object {source} does not exist") from exc
        except OSError:  # another device, a filesystem without hard links: copy the bytes instead
            return False
        try:
            # The file linked must be the generation checked: one replaced in between is refused.
            if _fingerprint(temporary) != _fingerprint(source_path) or self.stat(source) != info:
                raise PreconditionFailedError(f"object {source} changed while being copied")
            self._publish(destination, path, temporary, info.content_type, info.metadata, if_absent=False)
        finally:
            temporary.unlink(missing_ok=True)
        return True

    def delete_prefix(self, prefix: str) -> None:
        """Every object under ``prefix``, the scratch files of interrupted writes (which ``list`` hides) too.

        A folder goes at once: moved into the store's hidden trash and its records dropped in one
        transaction, then removed. Settle deletes a run's scratch right after recording its end; one object
        at a time, a kill in between (tens of milliseconds for a run's files) left scratch behind for good,
        as a folder has no lifecycle rule to expire it. A kill now leaves at most a folder in the trash,
        which the next deletion or the next process empties.
        """
        if not prefix.endswith("/"):
            for info in list(self.list(prefix)):
                self.delete(info.name)
            return
        folder = self.path_of(prefix.removesuffix("/"))
        self._trash.mkdir(exist_ok=True)
        hidden = self._trash / uuid.uuid4().hex
        with self._transaction() as conn:
            try:
                folder.rename(hidden)
            except _MISSING:
                return
            except OSError as exc:
                raise TransientError(f"cannot delete {prefix}: {exc}") from exc
            conn.execute("DELETE FROM objects WHERE substr(name, 1, ?) = ?", [len(prefix), prefix])
        self._empty_trash()
        self._prune(folder.parent)

    def _empty_trash(self) -> None:
        # Only committed deletions are moved here, so every entry may go, whoever moved it.
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self._trash):
                shutil.rmtree(entry.path, ignore_errors=True)

    def sweep_interrupted(self, prefix: str) -> None:
        """The hidden temporary files of writes a kill interrupted under ``prefix``; objects stay."""
        self._remove_temporaries(self.path_of(prefix.removesuffix("/")))

    @staticmethod
    def _remove_temporaries(folder: Path) -> None:
        for directory, _, files in os.walk(folder):
            for file in files:
                if file.startswith(_TEMP_PREFIX):
                    Path(directory, file).unlink(missing_ok=True)

    def mark_ended(self, prefix: str, when: float) -> None:
        """Nothing to stamp: a folder has no lifecycle rule (settle deletes scratch right after)."""

    def delete(self, name: str) -> None:
        path = self.path_of(name)
        with self._transaction() as conn:
            try:
                path.unlink()
            except _MISSING:
                pass
            except OSError as exc:
                raise TransientError(f"cannot delete object {name}: {exc}") from exc
            conn.execute("DELETE FROM objects WHERE name = ?", [name])
        self._prune(path.parent)

    # Internals

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock, translate_sqlite_errors(self._db_path), write_transaction(self._connection) as conn:
            yield conn

    @contextmanager
    def _temporary(self, name: str, path: Path) -> Iterator[tuple[Path, BinaryIO]]:
        """A new hidden file beside ``path``, removed on the way out unless it was renamed into place."""
        temporary = path.with_name(f"{_TEMP_PREFIX}{uuid.uuid4().hex}")
        with _write_errors(name):
            for attempt in range(_MKDIR_ATTEMPTS):
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    handle = temporary.open("xb")
                    break
                except FileNotFoundError:
                    if attempt == _MKDIR_ATTEMPTS - 1:
                        raise
        try:
            yield temporary, handle
        finally:
            handle.close()
            temporary.unlink(missing_ok=True)

    def _publish(
        self,
        name: str,
        path: Path,
        temporary: Path,
        content_type: str | None,
        metadata: Mapping[str, str] | None,
        *,
        if_absent: bool,
        if_generation: str | None = None,
    ) -> bool:
        """Move the finished temporary file into place and give the object its new generation."""
        with self._transaction() as conn, _write_errors(name):
            if if_generation is not None:
                row, seen = self._row(conn, name), _fingerprint(path)
                live = (
                    row.generation
                    if row is not None and seen is not None and row.fingerprint == seen
                    else None
                )
                if live is None or str(live) != if_generation:
                    raise PreconditionFailedError(f"object {name} is not generation {if_generation} any more")
            if if_absent:
                try:
                    os.link(temporary, path)
                except FileExistsError:
                    return False
            else:
                os.replace(temporary, path)
            landed = _fingerprint(path)
            if landed is None:  # replaced by a folder in the meantime
                raise TransientError(f"object {name} vanished while being written")
            self._record(conn, name, landed, content_type=content_type, metadata=metadata or {})
        return True

    def _prune(self, folder: Path) -> None:
        """Remove folders left empty by a delete, up to the root (a bucket has no empty folders)."""
        while folder != self._root and folder.is_relative_to(self._root):
            try:
                folder.rmdir()
            except OSError:  # not empty, or already gone
                return
            folder = folder.parent

    @staticmethod
    def _rows_between(conn: sqlite3.Connection, first: str, last: str) -> dict[str, _Row]:
        """The records named ``first`` to ``last`` (both ends of a sorted listing under one prefix), by name."""
        rows: dict[str, _Row] = {}
        query = (
            "SELECT name, generation, size, mtime_ns, inode, content_type, metadata FROM objects"
            " WHERE name BETWEEN ? AND ?"
        )
        for name, generation, size, mtime_ns, inode, content_type, metadata in conn.execute(
            query, [first, last]
        ):
            rows[name] = _Row(
                generation, _Fingerprint(size, mtime_ns, inode), content_type, orjson.loads(metadata)
            )
        return rows

    @staticmethod
    def _row(conn: sqlite3.Connection, name: str) -> _Row | None:
        row = conn.execute(
            "SELECT generation, size, mtime_ns, inode, content_type, metadata FROM objects WHERE name = ?",
            [name],
        ).fetchone()
        if row is None:
            return None
        generation, size, mtime_ns, inode, content_type, metadata = row
        return _Row(generation, _Fingerprint(size, mtime_ns, inode), content_type, orjson.loads(metadata))

    @staticmethod
    def _record(
        conn: sqlite3.Connection,
        name: str,
        fingerprint: _Fingerprint,
        *,
        content_type: str | None,
        metadata: Mapping[str, str],
    ) -> BlobInfo:
        """Give ``name`` the next generation; the caller holds the write transaction."""
        conn.execute("UPDATE generation_counter SET value = value + 1 WHERE id = 1")
        (generation,) = conn.execute("SELECT value FROM generation_counter WHERE id = 1").fetchone()
        conn.execute(
            "INSERT INTO objects (name, generation, size, mtime_ns, inode, content_type, metadata)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET generation = excluded.generation, size = excluded.size,"
            " mtime_ns = excluded.mtime_ns, inode = excluded.inode, content_type = excluded.content_type,"
            " metadata = excluded.metadata",
            [
                name,
                generation,
                fingerprint.size,
                fingerprint.mtime_ns,
                fingerprint.inode,
                content_type,
                orjson.dumps(dict(metadata)).decode(),
            ],
        )
        return _Row(generation, fingerprint, content_type, dict(metadata)).info(name)


@dataclass(frozen=True, slots=True)
class _Row:
    generation: int
    fingerprint: _Fingerprint
    content_type: str | None
    metadata: dict[str, str]

    def info(self, name: str) -> BlobInfo:
        return BlobInfo(
            name=name,
            size=self.fingerprint.size,
            generation=str(self.generation),
            updated=self.fingerprint.mtime_ns / 1e9,
            content_type=self.content_type,
            metadata=dict(self.metadata),
        )


def _names_under(root: Path, folder: Path, prefix: str) -> list[str]:
    """Sorted object names below ``folder`` that start with ``prefix``, skipping the store's own files."""
    names: list[str] = []
    for directory, subfolders, files in os.walk(folder):
        subfolders[:] = [sub for sub in subfolders if not sub.startswith(RESERVED_PREFIX)]
        relative = Path(directory).relative_to(root).as_posix()
        base = "" if relative == "." else relative + "/"
        names.extend(
            base + file
            for file in files
            if not file.startswith(RESERVED_PREFIX) and (base + file).startswith(prefix)
        )
    return sorted(names)
