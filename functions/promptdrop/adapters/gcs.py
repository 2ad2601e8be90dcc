"""Cloud Storage as the bucket (``BlobStore``), over google-cloud-storage.

Reads and writes stream in fixed-size chunks, so memory stays flat for objects of any size. Every library
error is translated once, in ``_storage_errors``: 429/5xx, timeouts and dropped connections become
``TransientError``; 404 ``NotFoundError``; 412 ``PreconditionFailedError``; other 4xx ``PermanentError``.
"""

from __future__ import annotations

import inspect
import io
import logging
import uuid
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from email.parser import BytesParser
from typing import Any, BinaryIO, cast
from urllib.parse import quote

import requests
from google.api_core import exceptions as api_exceptions
from google.api_core.retry import Retry
from google.auth import exceptions as auth_exceptions
from google.cloud.storage import Blob, Client
from google.cloud.storage.exceptions import DataCorruption, InvalidResponse
from google.cloud.storage.fileio import BlobWriter
from google.cloud.storage.retry import DEFAULT_RETRY
from requests.adapters import HTTPAdapter

from promptdrop.budget import ByteBudget
from promptdrop.errors import (
    NotFoundError,
    PermanentError,
    PreconditionFailedError,
    PromptdropError,
    TransientError,
)
from promptdrop.names import check_relative_path
from promptdrop.ports import COPY_BATCH, BlobInfo, CopyOrder

log = logging.getLogger(__name__)

MiB = 1024 * 1024
# Multiples of 256 KiB, as resumable uploads require; one chunk is what a stream holds in memory.
DEFAULT_CHUNK_SIZE = 8 * MiB
DEFAULT_TIMEOUT = 60.0
# Chunks an object reader fetches ahead of the one being read: every request waits tens of milliseconds
# for Cloud Storage to answer, and two in flight hide most of that wait from a sequential read.
READ_AHEAD_CHUNKS = 2
# Objects up to this size go up in one multipart request, whose body the client library builds as a copy
# of the data (google.cloud.storage.blob._MAX_MULTIPART_SIZE); larger ones go in a resumable upload that
# sends the caller's bytes as they are (tests/unit/test_private_surfaces.py checks the figure).
MULTIPART_MAX_BYTES = 8 * MiB

# google-cloud-storage 3.x reads a body in one call when asked; older releases (>= 2.18 is allowed) cannot.
_SINGLE_SHOT: dict[str, bool] = (
    {"single_shot_download": True}
    if "single_shot_download" in inspect.signature(Blob.download_to_file).parameters
    else {}
)
_TRANSIENT_STATUS = frozenset({408, 429})
_LIBRARY_ERRORS = (
    api_exceptions.GoogleAPIError,
    auth_exceptions.GoogleAuthError,
    requests.RequestException,
    InvalidResponse,
    DataCorruption,
    ConnectionError,
    TimeoutError,
)


def _status_of(exc: BaseException) -> int | None:
    if isinstance(exc, api_exceptions.GoogleAPICallError):
        return int(exc.code) if exc.code is not None else None
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def translate_storage_error(exc: BaseException, what: str) -> PromptdropError:
    """Our error for a google-cloud-storage / requests / google-auth exception about ``what``."""
    status = _status_of(exc)
    if status == 404:
        return NotFoundError(f"{what} does not exist")
    if status == 412:
        return PreconditionFailedError(f"{what} changed or already exists (precondition failed)")
    if status is not None and (status in _TRANSIENT_STATUS or status >= 500):
        return TransientError(f"Cloud Storage answered {status} for {what}")
    if isinstance(
        exc,
        api_exceptions.RetryError
        | requests.ConnectionError
        | requests.Timeout
        | auth_exceptions.TransportError
        | DataCorruption
        | ConnectionError
        | TimeoutError,
    ):
        return TransientError(f"Cloud Storage did not answer for {what}: {type(exc).__name__}")
    return PermanentError(f"Cloud Storage refused {what}: {type(exc).__name__} {status or ''}".rstrip())


@contextmanager
def _storage_errors(what: str) -> Iterator[None]:
    try:
        yield
    except PromptdropError:
        raise
    except _LIBRARY_ERRORS as exc:
        raise translate_storage_error(exc, what) from exc


class _ObjectReader(io.RawIOBase):
    """Ranged reads of one generation of an object, so a rewrite during the read cannot mix two versions.

    ``read_ahead`` chunks are fetched in the background while the caller works through the current one:
    each request pays the store's round trip, and a harvest reading gigabytes in sequence would otherwise
    wait for every one of them. Memory is ``(1 + read_ahead) * chunk_size``; with a ``budget`` (the process's
    byte budget) a chunk is fetched ahead only with spare bytes of it, so the read-ahead of all the runs of a
    tick together stays within the budget, and only the chunk being read is outside it.
    """

    def __init__(
        self,
        blob: Blob,
        start: int,
        size: int,
        chunk_size: int,
        call: dict[str, Any],
        read_ahead: int,
        budget: ByteBudget | None = None,
    ) -> None:
        self._blob = blob
        self._generation = blob.generation
        self._position = start
        self._size = size
        self._chunk_size = chunk_size
        self._call = call
        self._read_ahead = read_ahead
        self._budget = budget
        self._chunk = memoryview(b"")  # the fetched bytes from _chunk_start on
        self._chunk_start = 0
        # Consecutive chunks, in order: (start, fetch, bytes of the budget it holds).
        self._ahead: deque[tuple[int, Future[bytes], int]] = deque()
        self._next_fetch = start
        self._pool: ThreadPoolExecutor | None = None

    def readable(self) -> bool:
        return True

    # Seekable because the Files API upload measures a stream by seeking to its end and back.
    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}.get(whence)
        if base is None:
            raise ValueError(f"invalid whence {whence}")
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._position = base + offset
        return self._position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._position >= self._size or not len(view):
            return 0
        offset = self._position - self._chunk_start
        if not 0 <= offset < len(self._chunk):
            self._load()
            offset = 0
            if not self._chunk:  # the object ended before its recorded size
                return 0
        count = min(len(view), len(self._chunk) - offset)
        view[:count] = self._chunk[offset : offset + count]
        self._position += count
        return count

    def readall(self) -> bytes:
        # RawIOBase.readall would fetch 8 KiB per request.
        parts = []
        while chunk := self.read(self._chunk_size):
            parts.append(chunk)
        return b"".join(parts)

    def close(self) -> None:
        if self._pool is not None:
            # Fetches under way finish in the background; nobody waits for bytes no one will read.
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._drop_ahead()
        self._chunk = memoryview(b"")
        super().close()

    def _load(self) -> None:
        """Make the chunk starting at the current position the current one, and keep fetching ahead."""
        if self._ahead and self._ahead[0][0] != self._position:  # a seek elsewhere
            self._drop_ahead()
        if not self._ahead:
            self._next_fetch = self._position
            self._schedule(1, spare=False)
        start, future, held = self._ahead.popleft()
        self._return_spare(held)  # read now, not ahead: the chunk being read is the one a reader always has
        self._chunk = memoryview(b"")  # let the old chunk go before the next arrives
        self._schedule(self._read_ahead, spare=True)
        self._chunk, self._chunk_start = memoryview(future.result()), start

    def _schedule(self, depth: int, *, spare: bool) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                max(1, self._read_ahead), thread_name_prefix="promptdrop-gcs-read"
            )
        while len(self._ahead) < depth and self._next_fetch < self._size:
            start = self._next_fetch
            end = min(start + self._chunk_size, self._size)
            held = 0
            if spare and self._budget is not None:
                if not self._budget.take_spare(end - start):
                    return  # no spare memory now: this chunk is fetched when it is needed
                held = end - start
            self._ahead.append((start, self._pool.submit(self._fetch, start), held))
            self._next_fetch = end

    def _drop_ahead(self) -> None:
        for _, future, held in self._ahead:
            future.cancel()
            self._return_spare(held)
        self._ahead.clear()

    def _return_spare(self, held: int) -> None:
        if held and self._budget is not None:
            self._budget.return_spare(held)

    def _fetch(self, start: int) -> bytes:
        end = min(start + self._chunk_size, self._size) - 1
        # A Blob of its own per fetch: downloads rewrite a blob's properties from the response headers.
        blob = self._blob.bucket.blob(self._blob.name, generation=self._generation)
        with _storage_errors(f"gs://{blob.bucket.name}/{blob.name}"):
            # Checksums cover whole objects only, so ranged reads cannot verify them. One read of the body,
            # not the library's 8 KiB loop: Python-speed chunking of gigabytes starves the caller's thread.
            body = _Body()
            blob.download_to_file(body, start=start, end=end, checksum=None, **_SINGLE_SHOT, **self._call)
            return body.value()


class _Body:
    """Where a download writes: keeps the bytes it is handed (no BytesIO growing and copying 8 MiB)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        # The library rewinds only to start over (a transcoded object arrives whole).
        if offset or whence != io.SEEK_SET:
            raise io.UnsupportedOperation("a download body rewinds only to its start")
        self._parts.clear()
        return 0

    def value(self) -> bytes:
        return self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)


class _ObjectWriter(BlobWriter):  # type: ignore[misc]
    """A resumable upload that finalizes the object on ``close`` only, never after ``abandon``.

    BlobWriter's own ``close`` uploads what it buffered as the last chunk, and ``IOBase.__del__`` calls
    ``close``: a writer dropped after an error would otherwise finalize a partial object at garbage
    collection.
    """

    _abandoned = False

    def __init__(self, blob: Blob, what: str, **kwargs: Any) -> None:
        super().__init__(blob, **kwargs)
        self._what = what

    def write(self, data: Any) -> int:
        with self._upload_errors():
            return int(super().write(data))

    def close(self) -> None:
        if self._abandoned:
            return
        with self._upload_errors():
            super().close()

    @contextmanager
    def _upload_errors(self) -> Iterator[None]:
        """A 404 while the bucket exists is the upload session lost (a chunk retried after a reset whose
        answer was lost, or an expired session), not a missing object: the whole write is tried again."""
        try:
            with _storage_errors(self._what):
                yield
        except NotFoundError:
            with _storage_errors(f"the bucket of {self._what}"):
                bucket_exists = self._blob.bucket.exists()
            if not bucket_exists:
                raise
            raise TransientError(
                f"the upload session of {self._what} was lost (404); written again"
            ) from None

    def abandon(self) -> None:
        """Cancel the upload session; nothing becomes visible."""
        self._abandoned = True
        try:
            self.terminate()
        except Exception as exc:  # the session expires by itself within a week
            log.warning("could not cancel the upload of %s: %s", self._what, type(exc).__name__)


def widen_connection_pool(client: Client, connections: int) -> None:
    """Let the client keep ``connections`` connections per host (requests keeps 10 by default, and
    parallel uploads and read-ahead fetches would discard the rest and pay a new connection each time).

    ``Client._http`` (the authorized ``requests.Session``) is private, with no public way to size its pool:
    this and ``batch_statuses`` are the places that touch it; tests/unit/test_private_surfaces.py fails
    loudly if it moves.
    """
    pool = HTTPAdapter(pool_connections=connections, pool_maxsize=connections)
    for scheme in ("https://", "http://"):
        client._http.mount(scheme, pool)


class GcsBlobStore:
    """A Cloud Storage bucket. ``timeout`` and ``retry`` apply to every call (``retry=None``: no retries)."""

    def __init__(
        self,
        bucket_name: str,
        client: Client | None = None,
        *,
        upload_concurrency: int = 16,
        timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
        retry: Retry | None = DEFAULT_RETRY,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        read_ahead_budget: ByteBudget | None = None,
    ) -> None:
        self._client = client if client is not None else Client()
        self._read_ahead_budget = read_ahead_budget
        widen_connection_pool(self._client, upload_concurrency + READ_AHEAD_CHUNKS + 1)
        self._bucket = self._client.bucket(bucket_name)
        self._name = bucket_name
        self._chunk_size = chunk_size
        self._retry = retry
        self._timeout = timeout
        self._call: dict[str, Any] = {"retry": retry, "timeout": timeout}

    @property
    def url(self) -> str:
        return f"gs://{self._name}"

    def _blob(self, name: str, generation: str | None = None) -> Blob:
        pinned = None if generation is None else int(generation)
        return self._bucket.blob(check_relative_path(name, what="object name"), generation=pinned)

    def _where(self, name: str) -> str:
        return f"{self.url}/{name}"

    def stat(self, name: str) -> BlobInfo | None:
        blob = self._blob(name)
        with _storage_errors(self._where(name)):
            found = self._bucket.get_blob(blob.name, **self._call)
        return None if found is None else _info(found)

    @contextmanager
    def _open_read(self, name: str, start: int, generation: str | None) -> Iterator[BinaryIO]:
        blob = self._blob(name, generation)
        with _storage_errors(self._where(name)):
            # Pins the generation (later ranged reads ask for it) and says where the object ends; asked for
            # a generation no longer kept, it is a 404.
            blob.reload(**self._call)
        raw = _ObjectReader(
            blob,
            start,
            int(blob.size or 0),
            self._chunk_size,
            self._call,
            READ_AHEAD_CHUNKS,
            self._read_ahead_budget,
        )
        # A small buffer: large reads go straight from the fetched chunk into the caller's bytes.
        with io.BufferedReader(raw) as reader:
            yield cast(BinaryIO, reader)

    def open_read(
        self, name: str, *, start: int = 0, generation: str | None = None
    ) -> AbstractContextManager[BinaryIO]:
        return self._open_read(name, start, generation)

    def read_bytes(self, name: str, *, generation: str | None = None) -> bytes:
        blob = self._blob(name, generation)
        with _storage_errors(self._where(name)):
            return bytes(blob.download_as_bytes(**self._call))

    @contextmanager
    def _open_write(
        self, name: str, content_type: str | None, metadata: Mapping[str, str] | None
    ) -> Iterator[BinaryIO]:
        blob = self._blob(name)
        blob.metadata = dict(metadata) if metadata else None
        upload_options: dict[str, Any] = {"timeout": self._timeout}
        if content_type:
            upload_options["content_type"] = content_type
        writer = _ObjectWriter(
            blob,
            self._where(name),
            chunk_size=self._chunk_size,
            ignore_flush=True,  # wrappers such as TextIOWrapper flush; only close() may finalize
            retry=self._retry,
            **upload_options,
        )
        try:
            yield cast(BinaryIO, writer)
        except BaseException:
            writer.abandon()
            raise
        try:
            writer.close()
        except BaseException:
            writer.abandon()
            raise

    def open_write(
        self, name: str, *, content_type: str | None = None, metadata: Mapping[str, str] | None = None
    ) -> AbstractContextManager[BinaryIO]:
        return self._open_write(name, content_type, metadata)

    def write_overhead(self, size: int) -> int:
        """A multipart upload's body is a copy of the data; a resumable one sends the data itself."""
        return size if size <= MULTIPART_MAX_BYTES else 0

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
        blob = self._blob(name)
        blob.metadata = dict(metadata) if metadata else None
        # Create-only writes are safe to retry; so are plain ones here: promptdrop rewrites an object only
        # with the same bytes, so the library's default of not retrying unconditional uploads is too careful.
        options: dict[str, Any] = {**self._call, "content_type": content_type or "application/octet-stream"}
        if if_absent:
            # A retry after a lost response to our own create also answers 412: for markers and claims,
            # "someone wrote it" is then still true.
            options["if_generation_match"] = 0
        elif if_generation is not None:
            options["if_generation_match"] = int(if_generation)
        with _storage_errors(self._where(name)):
            try:
                blob.upload_from_string(data, **options)
            except api_exceptions.PreconditionFailed:
                if if_generation is not None:
                    raise PreconditionFailedError(
                        f"{self._where(name)} is not generation {if_generation}"
                    ) from None
                if not if_absent:
                    raise
                return False
        return True

    def list(self, prefix: str) -> Iterator[BlobInfo]:
        with _storage_errors(self._where(prefix + "*")):
            for blob in self._client.list_blobs(self._bucket, prefix=prefix or None, **self._call):
                yield _info(blob)

    def sweep_interrupted(self, prefix: str) -> None:
        """Nothing to sweep: an interrupted upload never becomes an object (its session expires by itself)."""

    def mark_ended(self, prefix: str, when: float) -> None:
        """``customTime`` = ``when`` on each object under ``prefix`` (infra's scratch lifecycle rule counts from
        it). Cloud Storage only lets customTime move forward: a second settle's later stamp is accepted, an
        earlier one refused (400), which changes nothing that matters, so it is ignored like a gone object."""
        stamp = datetime.fromtimestamp(when, UTC)
        with _storage_errors(self._where(prefix + "*")):
            for blob in self._client.list_blobs(self._bucket, prefix=prefix, **self._call):
                blob.custom_time = stamp
                try:
                    blob.patch(**self._call)
                except (api_exceptions.NotFound, api_exceptions.BadRequest):
                    continue

    def delete(self, name: str) -> None:
        blob = self._blob(name)
        with _storage_errors(self._where(name)):
            try:
                blob.delete(**self._call)
            except api_exceptions.NotFound:
                return

    def delete_prefix(self, prefix: str) -> None:
        # An interrupted upload never becomes an object, so the listing holds everything.
        for info in list(self.list(prefix)):
            self.delete(info.name)

    def copy(
        self, source: str, destination: str, *, if_source_generation: str | None = None, share: bool = False
    ) -> None:
        # ``share`` changes nothing here: a rewrite is server-side, no bytes pass through this process.
        # With a generation, the rewrite reads exactly that generation of the source (sourceGeneration), and
        # the precondition refuses it if the live object is another one by now: that generation or nothing.
        generation = None if if_source_generation is None else int(if_source_generation)
        source_blob = self._bucket.blob(
            check_relative_path(source, what="object name"), generation=generation
        )
        destination_blob = self._blob(destination)
        condition = {} if generation is None else {"if_source_generation_match": generation}
        with _storage_errors(f"copy of {self._where(source)} to {destination}"):
            # Rewrite rather than copyTo: a large object across storage classes takes several calls.
            token, _, _ = destination_blob.rewrite(source_blob, **condition, **self._call)
            while token is not None:
                token, _, _ = destination_blob.rewrite(source_blob, token=token, **condition, **self._call)

    def copy_many(self, orders: Sequence[CopyOrder], *, share: bool = False) -> Sequence[bool]:
        done: list[bool] = []
        for start in range(0, len(orders), COPY_BATCH):
            done += self._copy_batch(orders[start : start + COPY_BATCH])
        return done

    def _copy_batch(self, orders: Sequence[CopyOrder]) -> Sequence[bool]:
        """Up to ``COPY_BATCH`` copies in one batch request of ``objects.copy`` calls (a copy inside one bucket
        completes in its one call, which a batch needs, unlike a rewrite). An order the batch did not settle
        (a 429 or 5xx of its own, or the whole batch lost) is made again on its own, with the retries."""
        calls = [copy_call(self._name, order) for order in orders]
        try:
            statuses = batch_statuses(self._client, calls, self._timeout)
        except _LIBRARY_ERRORS as exc:
            log.info("a batch of %d copies failed (%s); each is made on its own", len(orders), exc)
            statuses = [None] * len(orders)
        done: list[bool] = []
        for order, status in zip(orders, statuses, strict=True):
            if status is not None and 200 <= status < 300:
                done.append(True)
            elif status in (404, 412):
                done.append(False)
            else:
                try:
                    self.copy(
                        order.source, order.destination, if_source_generation=order.if_source_generation
                    )
                    done.append(True)
                except (NotFoundError, PreconditionFailedError):
                    done.append(False)
        return done


def copy_call(bucket: str, order: CopyOrder) -> str:
    """The ``objects.copy`` call of ``order`` as a batch part's request line."""
    source = quote(check_relative_path(order.source, what="object name"), safe="")
    destination = quote(check_relative_path(order.destination, what="object name"), safe="")
    target = (
        f"/storage/v1/b/{quote(bucket, safe='')}/o/{source}/copyTo/b/{quote(bucket, safe='')}/o/{destination}"
    )
    if order.if_source_generation is not None:
        generation = int(order.if_source_generation)
        target += f"?sourceGeneration={generation}&ifSourceGenerationMatch={generation}"
    return f"POST {target} HTTP/1.1"


def batch_statuses(
    client: Client, calls: Sequence[str], timeout: float | tuple[float, float]
) -> list[int | None]:
    """Send ``calls`` (request lines without a body, at most ``COPY_BATCH``) as one JSON API batch request;
    the HTTP status of each, in order (None: no answer for it).

    Built here rather than with the library's ``Client.batch``: its parts carry no ``Content-ID``, which the
    API documents and fake-gcs-server requires to answer a part, and it cannot return a copy's status. It
    goes through ``Client._http`` (the authorized session), the private attribute ``widen_connection_pool``
    already relies on (tests/unit/test_private_surfaces.py).
    """
    boundary = f"batch_{uuid.uuid4().hex}"
    parts = [
        f"--{boundary}\r\nContent-Type: application/http\r\nContent-ID: <call-{index}>\r\n\r\n"
        f"{call}\r\nContent-Length: 0\r\n\r\n\r\n"  # the part ends with a blank line
        for index, call in enumerate(calls)
    ]
    body = ("".join(parts) + f"--{boundary}--\r\n").encode()
    response = client._http.request(
        "POST",
        f"{client.api_endpoint}/batch/storage/v1",
        data=body,
        headers={"Content-Type": f"multipart/mixed; boundary={boundary}"},
        timeout=timeout,
    )
    response.raise_for_status()
    return _part_statuses(response.headers.get("Content-Type", ""), response.content, len(calls))


def _part_statuses(content_type: str, content: bytes, count: int) -> list[int | None]:
    """Each part's HTTP status by its ``Content-ID`` (``<response-call-N>``)."""
    message = BytesParser().parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + content)
    statuses: list[int | None] = [None] * count
    for part in message.walk():
        if part is message:
            continue
        content_id = str(part.get("Content-ID", "")).strip("<>")
        _, _, number = content_id.rpartition("call-")
        payload = part.get_payload(decode=False)
        if not number.isdigit() or int(number) >= count or not isinstance(payload, str):
            continue
        status_line = payload.lstrip().split("\n", 1)[0].split()
        if len(status_line) >= 2 and status_line[1].isdigit():
            statuses[int(number)] = int(status_line[1])
    return statuses


def _info(blob: Blob) -> BlobInfo:
    return BlobInfo(
        name=blob.name,
        size=int(blob.size or 0),
        generation=str(blob.generation),
        updated=blob.updated.timestamp() if blob.updated is not None else 0.0,
        content_type=blob.content_type,
        metadata=dict(blob.metadata or {}),
    )
