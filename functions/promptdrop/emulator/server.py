"""The emulator's HTTP front: routes of the Gemini Files and Batch API on a threaded stdlib server.

Success is only ever HTTP 200 (the SDK raises on anything else); errors carry Google's
``{"error": {"code", "message", "status"}}`` body. The key is checked on every call except upload-session
chunks, which the SDK sends without it; it is never logged (request logs drop the query string).
"""

from __future__ import annotations

import contextlib
import fcntl
import hmac
import logging
import random
import re
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Final
from urllib.parse import parse_qs, unquote, urlsplit

import orjson

from promptdrop.api_limits import BATCH_INLINE_MAX_BYTES, FILE_MAX_BYTES, GENERATE_MAX_BYTES
from promptdrop.emulator.engine import (
    BatchRecord,
    Engine,
    model_json,
    model_not_found,
    operation_json,
    vertex_job_json,
)
from promptdrop.emulator.files import COPY_CHUNK, file_json
from promptdrop.emulator.hooks import Hooks
from promptdrop.emulator.options import EmulatorOptions
from promptdrop.emulator.wire import ApiError, camel_keys, page_size, paginate
from promptdrop.errors import ConfigurationError
from promptdrop.streams import iter_lines

logger = logging.getLogger(__name__)

# A JSON body is capped as an inline batch is (the largest the other calls need); generateContent's is larger.
MAX_JSON_BODY: Final = BATCH_INLINE_MAX_BYTES
UPLOAD_GRANULARITY: Final = 8 * 1024 * 1024
_VERSION = r"(?P<ver>v1(?:alpha|beta)?)"
_ID = r"(?P<id>[^/:]+)"
_PREFIX = r"(?P<prefix>(?:/[^/]+)*?)"

# Vertex AI's routes as the SDK builds them in vertexai mode (v1beta1 under a project and location).
_VERTEX = r"(?P<ver>v1(?:beta1)?)/(?P<parent>projects/[^/]+/locations/[^/]+)"

# (method, path pattern after an optional base path, route name). Names match options.FAULT_ROUTES; a
# Vertex AI route shares the name (and so the faults and stalls) of the Gemini API route it stands for.
ROUTES: Final = [
    ("GET", r"/health", "health"),
    ("GET", r"/stats", "stats"),
    ("POST", rf"/{_VERTEX}/batchPredictionJobs", "create"),
    ("GET", rf"/{_VERTEX}/batchPredictionJobs", "list"),
    ("GET", rf"/{_VERTEX}/batchPredictionJobs/{_ID}", "get"),
    ("POST", rf"/{_VERTEX}/batchPredictionJobs/{_ID}:cancel", "cancel"),
    ("DELETE", rf"/{_VERTEX}/batchPredictionJobs/{_ID}", "delete"),
    ("POST", rf"/{_VERTEX}/publishers/google/models/(?P<model>[^/:]+):generateContent", "generate"),
    ("POST", rf"/upload/{_VERSION}/files", "upload"),
    ("GET", rf"/download/{_VERSION}/files/{_ID}:download", "download"),
    ("GET", rf"/{_VERSION}/files/{_ID}:download", "download"),
    ("GET", rf"/{_VERSION}/files", "file_list"),
    ("GET", rf"/{_VERSION}/files/{_ID}", "file_get"),
    ("DELETE", rf"/{_VERSION}/files/{_ID}", "file_delete"),
    ("POST", rf"/{_VERSION}/models/(?P<model>[^/:]+):batchGenerateContent", "create"),
    ("POST", rf"/{_VERSION}/models/(?P<model>[^/:]+):generateContent", "generate"),
    ("GET", rf"/{_VERSION}/models", "model_list"),
    ("GET", rf"/{_VERSION}/models/(?P<model>[^/:]+)", "model_get"),
    ("GET", rf"/{_VERSION}/batches", "list"),
    ("GET", rf"/{_VERSION}/batches/{_ID}", "get"),
    ("POST", rf"/{_VERSION}/batches/{_ID}:cancel", "cancel"),
    ("DELETE", rf"/{_VERSION}/batches/{_ID}", "delete"),
    ("POST", rf"/{_VERSION}/batches/{_ID}:delete", "delete"),
    ("POST", rf"/{_VERSION}/webhooks", "webhook_create"),
    ("GET", rf"/{_VERSION}/webhooks", "webhook_list"),
    ("GET", rf"/{_VERSION}/webhooks/{_ID}", "webhook_get"),
    ("PATCH", rf"/{_VERSION}/webhooks/{_ID}", "webhook_update"),
    ("DELETE", rf"/{_VERSION}/webhooks/{_ID}", "webhook_delete"),
    ("POST", rf"/{_VERSION}/webhooks/{_ID}:rotateSigningSecret", "webhook_rotate"),
]
_COMPILED: Final = [(method, re.compile(_PREFIX + pattern), name) for method, pattern, name in ROUTES]

# What the Files API takes as a MIME type: a real ``type/subtype`` (RFC 6838 characters), or the bare
# ``jsonl`` / ``json`` shorthand the Batch API docs and cookbook upload with. Anything else is refused
# with 400, as Google refuses it.
_MIME_TYPE = re.compile(
    r"(?:application|audio|font|image|model|text|video)/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
    r"(?:\s*;\s*[A-Za-z0-9_.-]+=[A-Za-z0-9_.\"-]+)*"
)
_MIME_SHORTHANDS: Final = frozenset({"jsonl", "json"})


def is_real_mime_type(value: str) -> bool:
    return value in _MIME_SHORTHANDS or _MIME_TYPE.fullmatch(value) is not None


_FAULT_MESSAGES: Final = {
    429: "Resource has been exhausted (e.g. check quota).",
    500: "An internal error has occurred.",
    503: "The service is currently unavailable.",
}


def match_route(method: str, path: str) -> tuple[str, dict[str, str]] | None:
    """The route name and path parameters of a request, or None."""
    for route_method, pattern, name in _COMPILED:
        found = pattern.fullmatch(path)
        if found and route_method == method:
            return name, {k: v for k, v in found.groupdict().items() if v is not None}
    return None


class FaultInjector:
    """Answers a seeded fraction of calls with an error, or makes them sleep first; counts both by route."""

    def __init__(self, options: EmulatorOptions, stopping: threading.Event) -> None:
        self._options = options
        self._random = random.Random(options.fault_seed)  # noqa: S311 - test faults, not secrets
        self._lock = threading.Lock()
        self._stopping = stopping
        self.faults = 0
        self.stalls = 0
        self.faults_by_route: dict[str, int] = {}
        self.stalls_by_route: dict[str, int] = {}
        # Calls sleeping right now: token -> (route, client address), so a chaos harness can tell whose
        # create is stalled (and kill that client while the create is still to land).
        self._stalling: dict[int, tuple[str, str]] = {}
        self._next_token = 0

    def apply(self, route: str, peer: str = "") -> None:
        options = self._options
        stall_rate = options.stall_rate + (options.create_stall_rate if route == "create" else 0.0)
        if route not in options.fault_routes or not (options.fault_rate or stall_rate):
            return
        with self._lock:
            draw = self._random.random()
            code = self._random.choice(options.fault_codes)
            if draw < options.fault_rate:
                self.faults += 1
                self.faults_by_route[route] = self.faults_by_route.get(route, 0) + 1
            elif draw < options.fault_rate + stall_rate:
                self.stalls += 1
                self.stalls_by_route[route] = self.stalls_by_route.get(route, 0) + 1
                self._next_token += 1
                token = self._next_token
                self._stalling[token] = (route, peer)
        if draw < options.fault_rate:
            message = _FAULT_MESSAGES.get(code, "Emulated fault.")
            raise ApiError(code, f"{message} (fault injected by the emulator)")
        if draw < options.fault_rate + stall_rate:
            try:
                self._stopping.wait(options.stall_seconds)
            finally:
                with self._lock:
                    del self._stalling[token]

    def stats(self) -> dict[str, object]:
        """Faults and stalls so far by route, and the calls stalled right now (``GET /stats``)."""
        with self._lock:
            return {
                "faults": self.faults,
                "stalls": self.stalls,
                "faults_by_route": dict(self.faults_by_route),
                "stalls_by_route": dict(self.stalls_by_route),
                "stalling": [{"route": route, "peer": peer} for route, peer in self._stalling.values()],
            }


@dataclass(slots=True)
class _Reply:
    body: bytes | Iterator[bytes] = b"{}"
    length: int | None = None
    content_type: str = "application/json; charset=UTF-8"
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 200


def _json(value: object, headers: dict[str, str] | None = None) -> _Reply:
    return _Reply(orjson.dumps(value), headers=headers or {})


_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


def _stream_file(
    path: Path, start: int, length: int, rate: float, stopping: threading.Event, count: Callable[[int], None]
) -> Iterator[bytes]:
    """``length`` bytes of ``path`` from ``start``, opened only once the body is sent, at most ``rate`` B/s."""
    began = time.monotonic()
    sent = 0
    # Throttled, the bytes go out in pieces of about 1/20 s, as from a slow link, not in 1 MiB bursts.
    piece = min(COPY_CHUNK, max(4096, int(rate / 20))) if rate else COPY_CHUNK
    with path.open("rb") as stream:
        stream.seek(start)
        while sent < length and (block := stream.read(min(piece, length - sent))):
            if rate:
                # Sleep until this block is due; a stopping server stops waiting.
                due = began + (sent + len(block)) / rate
                if stopping.wait(max(0.0, due - time.monotonic())):
                    return
            sent += len(block)
            yield block
            count(len(block))  # counted once the handler's write of it returned


def _inline_items(path: Path) -> Iterator[bytes]:
    """A JSON array of the inline result items stored one per line."""
    with path.open("rb") as stream:
        yield b"["
        for index, line in enumerate(iter_lines(stream)):
            yield (b"," if index else b"") + line.rstrip(b"\n")
        yield b"]"


class _HttpServer(ThreadingHTTPServer):
    # Handler threads are joined on close (after their sockets are shut), so stop() leaves nothing behind.
    daemon_threads = False
    block_on_close = True

    def __init__(self, address: tuple[str, int], engine: Engine, data_dir: Path, hooks: Hooks) -> None:
        super().__init__(address, _Handler)
        self.engine = engine
        self.hooks = hooks
        self.calls_by_route: dict[str, int] = {}  # answered calls by route name (GET /stats shows them)
        self.cut_by_route: dict[str, int] = {}  # calls done whose caller had gone before the answer
        self.generate_arrivals: list[float] = []  # time.monotonic() of each generateContent call's arrival
        self.data_dir = data_dir
        self.stopping = threading.Event()
        self.faults = FaultInjector(engine.options, self.stopping)
        self.last_call = time.monotonic()
        self.bytes_downloaded = 0  # file bytes sent by the download routes (tests measure copies with it)
        self._counter_lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that died (a killed worker, a timeout) is not the emulator's failure: no traceback.
        if isinstance(sys.exc_info()[1], ConnectionError):
            logger.debug("client %s went away: %s", client_address, sys.exc_info()[1])
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]

    def count_call(self, route: str) -> None:
        with self._counter_lock:
            self.calls_by_route[route] = self.calls_by_route.get(route, 0) + 1
            if route == "generate":
                self.generate_arrivals.append(time.monotonic())

    def arrivals(self) -> list[float]:
        with self._counter_lock:
            return list(self.generate_arrivals)

    def count_cut(self, route: str) -> None:
        with self._counter_lock:
            self.cut_by_route[route] = self.cut_by_route.get(route, 0) + 1

    def stats(self) -> dict[str, object]:
        with self._counter_lock:
            calls, cut = dict(self.calls_by_route), dict(self.cut_by_route)
        return {
            **self.faults.stats(),
            "calls_by_route": calls,
            # Billed: generateContent calls the engine answered; cut: those whose caller was gone by then.
            "generated": self.engine.generated,
            "cut_by_route": cut,
            "webhooks": self.hooks.stats(),
        }

    def count_download(self, size: int) -> None:
        with self._counter_lock:
            self.bytes_downloaded += size

    def track(self, connection: socket.socket, *, open_: bool) -> None:
        with self._connections_lock:
            if open_:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def close_connections(self) -> None:
        """Wake handler threads blocked on idle keep-alive connections."""
        with self._connections_lock:
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "promptdrop-emulator"
    # Idle keep-alive connections are dropped after this many seconds.
    timeout = 120
    server: _HttpServer

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, open_=True)

    def finish(self) -> None:
        self.server.track(self.connection, open_=False)
        super().finish()

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_PUT(self) -> None:
        self._handle("PUT")

    # Logging without the query string, where a ?key= would be.
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        logger.debug("%s %s -> %s", self.command, urlsplit(self.path).path, code)

    def _caller_gone(self) -> bool:
        """The client closed its connection before its answer was sent (killed, or gave up): the call was
        billed and its answer is lost."""
        sock = self.connection
        timeout = sock.gettimeout()
        try:
            sock.settimeout(0.0)
            peeked: bytes = sock.recv(1, socket.MSG_PEEK)
            return peeked == b""
        except BlockingIOError:
            return False
        except OSError:
            return True
        finally:
            with contextlib.suppress(OSError):
                sock.settimeout(timeout)

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("emulator http: %s", format % args)

    # Dispatch --------------------------------------------------------------------------------------

    def _handle(self, method: str) -> None:
        self.server.last_call = time.monotonic()
        # A request without a body (most GETs) leaves nothing unread on the connection.
        self._body_read = (
            self.headers.get("Content-Length", "0").strip() == "0" and "Transfer-Encoding" not in self.headers
        )
        url = urlsplit(self.path)
        path = unquote(url.path)
        self._query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        found = match_route(method, path)
        is_chunk = found is not None and found[0] == "upload" and "upload_id" in self._query
        try:
            if found is None:
                raise ApiError(404, f"Method or path not found: {method} {path}")
            name, params = found
            if name == "health":
                reply = _json({"status": "ok", "data_dir": str(self.server.data_dir)})
            elif name == "stats":
                reply = _json(self.server.stats())
            elif is_chunk:
                reply = self._upload_chunk(params)
            else:
                self._authenticate(vertex="parent" in params)
                self.server.count_call(name)
                self.server.faults.apply(name, "{}:{}".format(*self.client_address[:2]))
                try:
                    reply = getattr(self, f"_route_{name}")(params)
                finally:
                    if name == "generate" and self._caller_gone():
                        self.server.count_cut(name)
        except ApiError as exc:
            reply = _json(exc.body())
            if is_chunk:
                # Without this header the SDK re-sends the chunk three times, sleeping 1+2+4 s.
                reply.headers["X-Goog-Upload-Status"] = "final"
            self._send(reply, status=exc.http_status)
            return
        except Exception:
            logger.exception("emulator failed on %s %s", method, path)
            self._send(_json(ApiError(500, "Internal error in the emulator.").body()), status=500)
            return
        self._send(reply, status=reply.status)

    def _send(self, reply: _Reply, *, status: int) -> None:
        if not self._body_read:
            # An unread request body would be taken for the next request on this connection.
            self.close_connection = True
        body = reply.body
        length = len(body) if isinstance(body, bytes) else reply.length
        self.send_response(status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(length))
        for header, value in reply.headers.items():
            self.send_header(header, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        try:
            if isinstance(body, bytes):
                self.wfile.write(body)
            else:
                for block in body:
                    self.wfile.write(block)
        except (BrokenPipeError, ConnectionResetError):
            # The client stopped reading (a copy paused at its time budget, a killed worker): not our error.
            self.close_connection = True

    def _authenticate(self, *, vertex: bool = False) -> None:
        if vertex:
            # Vertex AI takes an OAuth bearer token (the service account's); the emulator takes any.
            if not (self.headers.get("Authorization") or "").startswith("Bearer "):
                raise ApiError(
                    401, "Request is missing required authentication credential.", "UNAUTHENTICATED"
                )
            return
        key = self.headers.get("x-goog-api-key") or self._query.get("key")
        if not key:
            raise ApiError(401, "Method doesn't allow unregistered callers: pass an API key.")
        expected = self.server.engine.options.api_key
        if expected and not hmac.compare_digest(key.encode(), expected.encode()):
            raise ApiError(403, "API key not valid. Please pass a valid API key.")

    def _content_length(self) -> int:
        if "Transfer-Encoding" in self.headers:
            raise ApiError(
                411, "Send a Content-Length; chunked request bodies are not supported.", "INVALID_ARGUMENT"
            )
        try:
            return int(self.headers.get("Content-Length") or 0)
        except ValueError as exc:
            raise ApiError(400, "Content-Length is not a number") from exc

    def _json_body(self, limit: int = MAX_JSON_BODY) -> object:
        length = self._content_length()
        if length > limit:
            raise ApiError(400, f"Request payload size exceeds the limit: {limit} bytes.")
        raw = self.rfile.read(length) if length else b""
        self._body_read = True
        if not raw.strip():
            return {}
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, f"Invalid JSON payload received: {exc}") from exc

    def _base_url(self, prefix: str = "") -> str:
        host = self.headers.get("Host") or "{}:{}".format(*self.server.server_address[:2])
        return f"http://{host}{prefix}"

    # Files -----------------------------------------------------------------------------------------

    def _route_upload(self, params: dict[str, str]) -> _Reply:
        body = camel_keys(self._json_body())
        command = (self.headers.get("X-Goog-Upload-Command") or "").lower()
        if command != "start":
            raise ApiError(400, "Only resumable uploads are supported: X-Goog-Upload-Command: start")
        file_info = body.get("file") if isinstance(body, dict) else None
        file_info = file_info if isinstance(file_info, dict) else {}
        mime_type = file_info.get("mimeType") or self.headers.get("X-Goog-Upload-Header-Content-Type")
        if not mime_type:
            raise ApiError(400, "The file's MIME type is missing.")
        if not is_real_mime_type(str(mime_type)):
            raise ApiError(400, f"Unsupported MIME type: {str(mime_type)[:100]}")
        declared = self.headers.get("X-Goog-Upload-Header-Content-Length") or file_info.get("sizeBytes")
        try:
            declared_size = None if declared is None else int(declared)
        except (TypeError, ValueError) as exc:
            raise ApiError(400, "X-Goog-Upload-Header-Content-Length is not a number") from exc
        if declared_size is not None and declared_size > FILE_MAX_BYTES:
            # Refused at the session start, before a byte is sent (the SDK announces the size there).
            raise ApiError(
                400,
                f"The file is {declared_size} bytes; the Files API takes at most {FILE_MAX_BYTES} per file.",
            )
        display_name = file_info.get("displayName")
        name = file_info.get("name")
        session = self.server.engine.files.start_upload(
            mime_type=str(mime_type),
            declared_size=declared_size,
            display_name=str(display_name) if display_name else None,
            name=str(name) if name else None,
        )
        upload_url = (
            f"{self._base_url(params['prefix'])}/upload/{params['ver']}/files"
            f"?upload_id={session}&upload_protocol=resumable"
        )
        return _json(
            {},
            {
                "X-Goog-Upload-URL": upload_url,
                "X-Goog-Upload-Control-URL": upload_url,
                "X-Goog-Upload-Status": "active",
                "X-Goog-Upload-Chunk-Granularity": str(UPLOAD_GRANULARITY),
            },
        )

    def _upload_chunk(self, params: dict[str, str]) -> _Reply:
        command = {
            part.strip() for part in (self.headers.get("X-Goog-Upload-Command") or "").lower().split(",")
        }
        if not command <= {"upload", "finalize"} or not command:
            raise ApiError(400, "X-Goog-Upload-Command must be 'upload', 'finalize' or 'upload, finalize'")
        try:
            offset = int(self.headers.get("X-Goog-Upload-Offset") or 0)
        except ValueError as exc:
            raise ApiError(400, "X-Goog-Upload-Offset is not a number") from exc
        record = self.server.engine.files.write_chunk(
            self._query["upload_id"],
            offset=offset,
            body=self.rfile,  # type: ignore[arg-type]
            length=self._content_length(),
            finalize="finalize" in command,
        )
        self._body_read = True
        if record is None:
            return _Reply(b"", headers={"X-Goog-Upload-Status": "active"})
        body = {"file": file_json(record, self._base_url(params["prefix"]))}
        return _json(body, {"X-Goog-Upload-Status": "final"})

    def _route_file_get(self, params: dict[str, str]) -> _Reply:
        record = self.server.engine.files.get(params["id"])
        return _json(file_json(record, self._base_url(params["prefix"])))

    def _route_file_list(self, params: dict[str, str]) -> _Reply:
        size = page_size(self._query.get("pageSize"), default=10, maximum=100)
        records = self.server.engine.files.list()
        page, token = paginate(records, lambda r: r.sort_key, size, self._query.get("pageToken"))
        body: dict[str, object] = {}
        if page:
            body["files"] = [file_json(r, self._base_url(params["prefix"])) for r in page]
        if token:
            body["nextPageToken"] = token
        return _json(body)

    def _route_file_delete(self, params: dict[str, str]) -> _Reply:
        self.server.engine.files.delete(params["id"])
        return _json({})

    def _route_download(self, params: dict[str, str]) -> _Reply:
        files = self.server.engine.files
        record = files.get(params["id"])
        path = files.data_path(record.id)
        if not path.exists():
            raise ApiError(404, f"File {record.name} does not exist.")
        mime_type = record.mime_type if "/" in record.mime_type else "application/octet-stream"
        start, end = 0, record.size - 1
        headers: dict[str, str] = {"Accept-Ranges": "bytes"}
        wanted = _RANGE.fullmatch(self.headers.get("Range", "").strip())
        if wanted:
            start = int(wanted.group(1))
            end = min(int(wanted.group(2)) if wanted.group(2) else end, record.size - 1)
            if start >= record.size or start > end:
                raise ApiError(416, f"Range not satisfiable: the file has {record.size} bytes")
            headers["Content-Range"] = f"bytes {start}-{end}/{record.size}"
        server = self.server
        body = _stream_file(
            path,
            start,
            end + 1 - start,
            server.engine.options.download_bytes_per_second,
            server.stopping,
            server.count_download,
        )
        reply = _Reply(body, length=end + 1 - start, content_type=mime_type, headers=headers)
        reply.status = 206 if wanted else 200
        return reply

    # Batches ---------------------------------------------------------------------------------------

    def _route_create(self, params: dict[str, str]) -> _Reply:
        if "parent" in params:
            return _json(
                vertex_job_json(self.server.engine.create_vertex_batch(params["parent"], self._json_body()))
            )
        job = self.server.engine.create_batch(params["model"], self._json_body(), version=params["ver"])
        return _json(operation_json(job))

    # Models ----------------------------------------------------------------------------------------

    def _route_generate(self, params: dict[str, str]) -> _Reply:
        """The standard API's one synchronous call: answered like a batch line, or its error as the status."""
        body = self._json_body(GENERATE_MAX_BYTES)
        return _json(self.server.engine.generate(params["model"], body, version=params["ver"]))

    def _route_model_get(self, params: dict[str, str]) -> _Reply:
        engine = self.server.engine
        if not engine.serves(params["model"]):
            raise model_not_found(params["model"], params["ver"], "generateContent")
        return _json(model_json(params["model"], batch=engine.serves_batch(params["model"])))

    def _route_model_list(self, params: dict[str, str]) -> _Reply:
        size = page_size(self._query.get("pageSize"), default=50, maximum=1000)
        models = sorted(self.server.engine.served_models(), reverse=True)  # paginate wants descending keys
        page, token = paginate(models, lambda m: m, size, self._query.get("pageToken"))
        engine = self.server.engine
        body: dict[str, object] = {"models": [model_json(m, batch=engine.serves_batch(m)) for m in page]}
        if token:
            body["nextPageToken"] = token
        return _json(body)

    def _route_get(self, params: dict[str, str]) -> _Reply:
        engine = self.server.engine
        if "parent" in params:
            return _json(vertex_job_json(self._vertex_job(params)))
        job = engine.get_batch(params["id"])
        if job.inline_count is None or job.state != "BATCH_STATE_SUCCEEDED":
            return _json(operation_json(job))
        # Inline results can be large (images): stream them from disk into both places they appear.
        placeholder = f"inline-{secrets.token_hex(8)}"
        pieces = orjson.dumps(operation_json(job, inline_items=placeholder)).split(
            f'"{placeholder}"'.encode()
        )
        array_length = 2 + job.inline_bytes + max(0, job.inline_count - 1)
        path = engine.inline_results_path(job)
        if not path.is_file():
            raise ApiError(404, f"Batch {job.name} not found.")

        def body() -> Iterator[bytes]:
            for index, piece in enumerate(pieces):
                yield piece
                if index < len(pieces) - 1:
                    yield from _inline_items(path)

        length = sum(map(len, pieces)) + (len(pieces) - 1) * array_length
        return _Reply(body(), length=length)

    def _route_list(self, params: dict[str, str]) -> _Reply:
        size = page_size(self._query.get("pageSize"), default=10, maximum=100)
        jobs = self.server.engine.list_batches(params.get("parent"))
        page, token = paginate(jobs, lambda j: j.sort_key, size, self._query.get("pageToken"))
        body: dict[str, object] = {}
        if page and "parent" in params:
            body["batchPredictionJobs"] = [vertex_job_json(job) for job in page]
        elif page:
            body["operations"] = [operation_json(job, listing=True) for job in page]
        if token:
            body["nextPageToken"] = token
        return _json(body)

    def _route_cancel(self, params: dict[str, str]) -> _Reply:
        self._json_body()
        if "parent" in params:
            self._vertex_job(params)
        self.server.engine.cancel_batch(params["id"])
        return _json({})

    def _route_delete(self, params: dict[str, str]) -> _Reply:
        self._json_body()
        if "parent" in params:
            job = self._vertex_job(params)
            self.server.engine.delete_batch(params["id"])
            # Vertex answers a delete with its long-running Operation, already done.
            return _json({"name": f"{job.vertex_parent}/operations/{job.id}", "done": True})
        self.server.engine.delete_batch(params["id"])
        return _json({})

    def _vertex_job(self, params: dict[str, str]) -> BatchRecord:
        """The Vertex AI job named in the path, only under its own project and location."""
        job = self.server.engine.get_batch(params["id"])
        if job.vertex_parent != params["parent"]:
            raise ApiError(
                404, f"{params['parent']}/batchPredictionJobs/{params['id']} not found.", "NOT_FOUND"
            )
        return job

    # Webhooks ----------------------------------------------------------------------------------------

    def _route_webhook_create(self, params: dict[str, str]) -> _Reply:
        return _json(self.server.hooks.create(self._json_body()))

    def _route_webhook_list(self, params: dict[str, str]) -> _Reply:
        # The webhooks API (the SDK's NextGen client) speaks snake_case, query parameters too.
        size = page_size(self._query.get("page_size"), default=50, maximum=1000)
        hooks, token = self.server.hooks.page(size, self._query.get("page_token"))
        body: dict[str, object] = {"webhooks": hooks} if hooks else {}
        if token:
            body["next_page_token"] = token
        return _json(body)

    def _route_webhook_get(self, params: dict[str, str]) -> _Reply:
        return _json(self.server.hooks.get(params["id"]))

    def _route_webhook_update(self, params: dict[str, str]) -> _Reply:
        mask = self._query.get("update_mask") or self._query.get("updateMask")
        return _json(self.server.hooks.update(params["id"], self._json_body(), mask))

    def _route_webhook_rotate(self, params: dict[str, str]) -> _Reply:
        return _json({"secret": self.server.hooks.rotate(params["id"], self._json_body())})

    def _route_webhook_delete(self, params: dict[str, str]) -> _Reply:
        self._json_body()
        self.server.hooks.delete(params["id"])
        return _json({})


def _batch_data(job: BatchRecord) -> dict[str, object]:
    """The ``data`` fields of a batch event beside ``id``."""
    if job.responses_file:
        return {"output_file_uri": job.responses_file}
    if job.error:
        return {"error_code": job.error.get("code"), "error_message": job.error.get("message")}
    return {}


class EmulatorServer:
    """The emulator serving one data folder on a background thread.

    Only one emulator may serve a folder at a time (an exclusive lock on ``serve.lock``).
    """

    def __init__(
        self,
        data_dir: Path,
        options: EmulatorOptions | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.options = options or EmulatorOptions()
        self._address = (host, port)
        self._clock = clock
        self._httpd: _HttpServer | None = None
        self._engine: Engine | None = None
        self._hooks: Hooks | None = None
        self._thread: threading.Thread | None = None
        self._lock_file: IO[bytes] | None = None
        self._port: int | None = None

    def start(self) -> EmulatorServer:
        """Load the data folder, bind and serve in the background; returns once it accepts calls."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lock_file = (self.data_dir / "serve.lock").open("ab")
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            lock_file.close()
            raise ConfigurationError(f"another emulator is already serving {self.data_dir}") from exc
        self._lock_file = lock_file
        try:
            hooks = Hooks(self.data_dir, self.options, *([self._clock] if self._clock else []))
            hooks.start()
            self._hooks = hooks
            engine = Engine(self.data_dir, self.options, *([self._clock] if self._clock else []))
            engine.on_end = lambda job: hooks.batch_ended(
                job.name, job.state, job.end_time or 0.0, **_batch_data(job)
            )
            engine.start()
            self._engine = engine
            self._httpd = _HttpServer(self._address, engine, self.data_dir, hooks)
        except BaseException:
            self.stop()
            raise
        self._port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, name="emulator-http", daemon=True
        )
        self._thread.start()
        return self

    @property
    def port(self) -> int:
        """The bound port (still known after stop(), so a restart can reuse it)."""
        if self._port is None:
            raise RuntimeError("the emulator has not been started")
        return self._port

    @property
    def url(self) -> str:
        host = self._address[0]
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        return f"http://{host}:{self.port}"

    @property
    def idle_for(self) -> float:
        """Seconds since the last call; 0 while a job is unfinished (it still needs the emulator)."""
        if self._httpd is None or self._engine is None or self._engine.busy:
            return 0.0
        if self._hooks is not None and self._hooks.busy:
            return 0.0
        return time.monotonic() - self._httpd.last_call

    @property
    def bytes_downloaded(self) -> int:
        """File bytes sent by the download routes since start."""
        return self._httpd.bytes_downloaded if self._httpd else 0

    def stats(self) -> dict[str, object]:
        """What ``GET /stats`` answers: faults, calls by route, webhook deliveries."""
        return self._httpd.stats() if self._httpd else {}

    def webhook_secrets(self, webhook_id: str) -> list[str]:
        """The secrets a registered webhook's deliveries are signed with now, newest first. For tests: the
        API returns each only once (``webhooks.create``, ``rotate_signing_secret``)."""
        if self._hooks is None:
            raise RuntimeError("the emulator is not running")
        return self._hooks.secrets_of(webhook_id)

    @property
    def webhooks_busy(self) -> bool:
        """Webhook deliveries are queued or being sent."""
        return self._hooks.busy if self._hooks else False

    @property
    def generated(self) -> int:
        """generateContent calls answered since start (the now lane's calls)."""
        return self._engine.generated if self._engine is not None else 0

    @property
    def generate_arrivals(self) -> list[float]:
        """When each generateContent call arrived (``time.monotonic()``, refused ones too): tests see pacing."""
        if self._httpd is None:
            return []
        return self._httpd.arrivals()

    @property
    def faults_injected(self) -> int:
        return self._httpd.faults.faults if self._httpd else 0

    @property
    def calls_stalled(self) -> int:
        return self._httpd.faults.stalls if self._httpd else 0

    def stop(self) -> None:
        """Stop serving; unfinished jobs stay on disk and resume when an emulator serves the folder again."""
        if self._httpd is not None:
            self._httpd.stopping.set()
            if self._thread is not None:
                self._httpd.shutdown()
            self._httpd.close_connections()
            self._httpd.server_close()
            self._httpd = None
        if self._engine is not None:
            self._engine.close()
            self._engine = None
        if self._hooks is not None:
            self._hooks.close()
            self._hooks = None
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
