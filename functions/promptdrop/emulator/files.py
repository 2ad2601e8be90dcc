"""The emulator's Files API store: resumable upload sessions, file records and their bytes on disk.

Layout under the data folder: ``files/<id>.json`` (record) + ``files/<id>.data`` (bytes),
``uploads/<session>.json`` + ``uploads/<session>.part`` (an upload in progress). Records are written
atomically (temp + rename) and bytes are streamed, never held whole in memory.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO, Final

import orjson

from promptdrop.api_limits import FILE_MAX_BYTES
from promptdrop.emulator.wire import ApiError, int64, rfc3339

FILE_LIFETIME_SECONDS: Final = 48 * 3600
COPY_CHUNK: Final = 1024 * 1024
_ALPHABET: Final = "abcdefghijklmnopqrstuvwxyz0123456789"
_USER_FILE_ID = re.compile(r"[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?")


def random_id(length: int) -> str:
    """A lowercase alphanumeric id, like the API's ``files/p1mds9fl15bs``."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def write_json_atomically(path: Path, value: object) -> None:
    """Write JSON through a temporary name and a rename, so a crash never leaves half a record.

    No fsync: the emulator must survive its own restarts, not power loss, and tests stay fast.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    tmp.write_bytes(orjson.dumps(value))
    os.replace(tmp, path)


def remove_stale_temporaries(folder: Path) -> None:
    """Drop temporaries left by a crash mid-write (their names start with a dot and end in .tmp)."""
    for leftover in folder.glob(".*.tmp"):
        leftover.unlink(missing_ok=True)


@dataclass(slots=True)
class FileRecord:
    """One file of the Files API."""

    id: str
    mime_type: str
    size: int
    sha256: str
    create_time: float
    source: str
    display_name: str | None = None

    @property
    def name(self) -> str:
        return f"files/{self.id}"

    @property
    def expire_time(self) -> float:
        return self.create_time + FILE_LIFETIME_SECONDS

    @property
    def sort_key(self) -> str:
        return f"{int(self.create_time * 1_000_000):020d}:{self.id}"


def file_json(record: FileRecord, base_url: str) -> dict[str, object]:
    """The File resource as the API renders it (camelCase, int64 as strings, absolute URIs)."""
    created = rfc3339(record.create_time)
    body: dict[str, object] = {"name": record.name}
    if record.display_name:
        body["displayName"] = record.display_name
    body.update(
        {
            "mimeType": record.mime_type,
            "sizeBytes": int64(record.size),
            "createTime": created,
            "updateTime": created,
            "expirationTime": rfc3339(record.expire_time),
            "sha256Hash": record.sha256,
            "uri": f"{base_url}/v1beta/{record.name}",
            "state": "ACTIVE",
            "source": record.source,
        }
    )
    if record.source == "GENERATED":
        body["downloadUri"] = f"{base_url}/download/v1beta/{record.name}:download?alt=media"
    return body


def _sha256_base64(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(COPY_CHUNK):
            digest.update(block)
    # The API's sha256Hash is the base64 of the hex digest.
    return base64.b64encode(digest.hexdigest().encode("ascii")).decode("ascii")


@dataclass(slots=True)
class UploadSession:
    """A resumable upload that has started and not yet been finalized."""

    id: str
    file_id: str
    mime_type: str
    declared_size: int | None
    display_name: str | None
    create_time: float


class FileStore:
    """Files and upload sessions of one data folder; safe to use from many threads."""

    def __init__(self, data_dir: Path, clock: Callable[[], float] = time.time) -> None:
        self._files_dir = data_dir / "files"
        self._uploads_dir = data_dir / "uploads"
        self._clock = clock
        self._lock = threading.Lock()
        self._files: dict[str, FileRecord] = {}
        self._sessions: dict[str, UploadSession] = {}
        self._session_locks: dict[str, threading.Lock] = {}

    def load(self) -> None:
        """Read every record left by an earlier run of the emulator."""
        for folder in (self._files_dir, self._uploads_dir):
            folder.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(folder)
        for path in self._files_dir.glob("*.json"):
            record = FileRecord(**orjson.loads(path.read_bytes()))
            self._files[record.id] = record
        for path in self._uploads_dir.glob("*.json"):
            session = UploadSession(**orjson.loads(path.read_bytes()))
            self._sessions[session.id] = session
            self._session_locks[session.id] = threading.Lock()

    # Uploads ---------------------------------------------------------------------------------------

    def start_upload(
        self, *, mime_type: str, declared_size: int | None, display_name: str | None, name: str | None
    ) -> str:
        """Open a resumable upload session and return its id."""
        file_id = name.removeprefix("files/") if name else random_id(12)
        if not _USER_FILE_ID.fullmatch(file_id):
            raise ApiError(400, "file name must be lowercase letters, digits and dashes, at most 40")
        with self._lock:
            if file_id in self._files:
                raise ApiError(409, f"File files/{file_id} already exists.")
            session = UploadSession(
                id=secrets.token_urlsafe(18),
                file_id=file_id,
                mime_type=mime_type,
                declared_size=declared_size,
                display_name=display_name,
                create_time=self._clock(),
            )
            (self._uploads_dir / f"{session.id}.part").write_bytes(b"")
            write_json_atomically(self._uploads_dir / f"{session.id}.json", asdict(session))
            self._sessions[session.id] = session
            self._session_locks[session.id] = threading.Lock()
        return session.id

    def write_chunk(
        self, session_id: str, *, offset: int, body: BinaryIO, length: int, finalize: bool
    ) -> FileRecord | None:
        """Append one chunk read from ``body``; on ``finalize`` turn the session into a file.

        A chunk sent again (same offset, e.g. by a client retry) overwrites what was there.
        """
        with self._lock:
            session = self._sessions.get(session_id)
            session_lock = self._session_locks.get(session_id)
        if session is None or session_lock is None:
            raise ApiError(404, "No such upload session (finished, or never started).")
        part = self._uploads_dir / f"{session_id}.part"
        with session_lock:
            if session_id not in self._sessions:
                raise ApiError(404, "No such upload session (finished, or never started).")
            received = part.stat().st_size
            if offset > received:
                raise ApiError(400, f"X-Goog-Upload-Offset {offset} is past the {received} bytes received")
            if offset + length > FILE_MAX_BYTES:  # a session started without announcing its size
                raise ApiError(
                    400, f"The file is over the {FILE_MAX_BYTES} bytes the Files API takes per file."
                )
            with part.open("r+b") as out:
                out.seek(offset)
                out.truncate()
                remaining = length
                while remaining:
                    block = body.read(min(COPY_CHUNK, remaining))
                    if not block:
                        raise ApiError(400, "the request body ended before Content-Length bytes")
                    out.write(block)
                    remaining -= len(block)
            if not finalize:
                return None
            size = part.stat().st_size
            if session.declared_size is not None and size != session.declared_size:
                raise ApiError(
                    400,
                    f"received {size} bytes but X-Goog-Upload-Header-Content-Length "
                    f"announced {session.declared_size}",
                )
            record = FileRecord(
                id=session.file_id,
                mime_type=session.mime_type,
                size=size,
                sha256=_sha256_base64(part),
                create_time=self._clock(),
                source="UPLOADED",
                display_name=session.display_name,
            )
            with self._lock:
                if record.id in self._files:
                    raise ApiError(409, f"File {record.name} already exists.")
                os.replace(part, self.data_path(record.id))
                write_json_atomically(self._files_dir / f"{record.id}.json", asdict(record))
                self._files[record.id] = record
                (self._uploads_dir / f"{session_id}.json").unlink(missing_ok=True)
                del self._sessions[session_id]
                del self._session_locks[session_id]
            return record

    # Files -----------------------------------------------------------------------------------------

    def data_path(self, file_id: str) -> Path:
        return self._files_dir / f"{file_id}.data"

    def _forget_expired(self) -> None:
        """Files past their expirationTime are gone, as on the API (called with the lock held)."""
        now = self._clock()
        for record in [r for r in self._files.values() if r.expire_time <= now]:
            self._remove(record.id)

    def _remove(self, file_id: str) -> None:
        (self._files_dir / f"{file_id}.json").unlink(missing_ok=True)
        self.data_path(file_id).unlink(missing_ok=True)
        del self._files[file_id]

    def get(self, file_id: str) -> FileRecord:
        with self._lock:
            self._forget_expired()
            record = self._files.get(file_id)
        if record is None:
            raise ApiError(404, f"File files/{file_id} does not exist or has expired.")
        return record

    def list(self) -> list[FileRecord]:
        """Every live file, newest first."""
        with self._lock:
            self._forget_expired()
            return sorted(self._files.values(), key=lambda r: r.sort_key, reverse=True)

    def delete(self, file_id: str) -> None:
        with self._lock:
            if file_id not in self._files:
                raise ApiError(404, f"File files/{file_id} does not exist.")
            self._remove(file_id)

    def add_generated(self, file_id: str, source: Path, mime_type: str) -> FileRecord:
        """Move a finished results file into the store as a GENERATED file."""
        record = FileRecord(
            id=file_id,
            mime_type=mime_type,
            size=source.stat().st_size,
            sha256=_sha256_base64(source),
            create_time=self._clock(),
            source="GENERATED",
        )
        with self._lock:
            os.replace(source, self.data_path(file_id))
            write_json_atomically(self._files_dir / f"{file_id}.json", asdict(record))
            self._files[file_id] = record
        return record
