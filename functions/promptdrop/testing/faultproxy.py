"""A TCP proxy in front of a loopback server whose behaviour can be switched while clients use it.

Modes: ``pass_through()``; ``reset()`` (every connection, open or new, is closed with a TCP reset, as a
crashed or unreachable server looks to a client); ``delay(seconds)`` (latency before each request, or
once per connection with ``per="connection"``); ``cut_after(server_bytes)`` (the server's next bytes pass
until that many have gone to the client, then that connection is reset once, as a server or network
failing in the middle of an answer looks; ``cut_after(0, request=b"PUT ")`` loses the answer to the next
request that starts with those bytes, after the server has acted on it). A "request" is each burst of
client bytes that follows bytes from the server, which is what one HTTP/1.1 request on a kept-alive
connection looks like; gRPC multiplexes calls and control frames on one HTTP/2 connection, so delay those
``per="connection"``.

    with FaultProxy(("127.0.0.1", 4443)) as proxy:
        client = make_client(proxy.url)
        proxy.reset()      # calls now fail fast with connection errors
        proxy.pass_through()
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

_BUFFER = 256 * 1024
_BEFORE_CUT = 0.2  # seconds


@dataclass(frozen=True, slots=True)
class _Mode:
    name: Literal["pass", "reset", "delay", "cut"]
    seconds: float = 0.0
    per: Literal["request", "connection"] = "request"


def _close_with_reset(sock: socket.socket) -> None:
    # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class _Connection:
    """One client connection and its upstream connection, pumped by one thread."""

    def __init__(self, proxy: FaultProxy, client: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream: socket.socket | None = None
        self.closed = threading.Event()

    def run(self) -> None:
        try:
            mode = self.proxy.mode
            if mode.name == "delay" and mode.per == "connection":
                time.sleep(mode.seconds)
            self.upstream = socket.create_connection(self.proxy.target, timeout=10)
            self.upstream.settimeout(None)
            self._pump()
        except (OSError, ValueError):  # ValueError: select() on a socket reset() just closed
            pass
        finally:
            self.close(reset=False)
            self.proxy._forget(self)

    def _pump(self) -> None:
        assert self.upstream is not None
        client, upstream = self.client, self.upstream
        new_request = True  # the next client bytes start a request
        while not self.closed.is_set():
            readable, _, _ = select.select([client, upstream], [], [], 0.2)
            for source in readable:
                data = source.recv(_BUFFER)
                if not data:
                    return
                if source is client:
                    mode = self.proxy.mode
                    if new_request:
                        self.proxy._request_started(self, data)
                        if mode.name == "delay" and mode.per == "request":
                            time.sleep(mode.seconds)
                    new_request = False
                    upstream.sendall(data)
                else:
                    new_request = True
                    data, cut = self.proxy._server_bytes(self, data)
                    client.sendall(data)
                    if cut:
                        # Let the client read what it was sent before the reset makes its kernel drop it.
                        time.sleep(_BEFORE_CUT)
                        self.close(reset=True)
                        return

    def close(self, *, reset: bool) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        if reset:
            _close_with_reset(self.client)
        else:
            self.client.close()
        if self.upstream is not None:
            self.upstream.close()


class FaultProxy:
    """Listen on 127.0.0.1 (an OS-chosen port) and forward to ``target`` according to the current mode."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.mode = _Mode("pass")
        self.connections_accepted = 0
        self.requests_forwarded = 0
        self.cuts = 0
        self._lock = threading.Lock()
        self._cut_left = 0  # server bytes still to forward before the cut
        self._cut_request = b""  # the cut counts from the answer to a request starting with these bytes
        self._cut_on: _Connection | None = None  # the connection that request came on
        self._connections: set[_Connection] = set()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port: int = self._listener.getsockname()[1]
        self._stopping = threading.Event()
        self._acceptor = threading.Thread(
            target=self._accept_loop, name=f"faultproxy-{self.port}", daemon=True
        )

    @classmethod
    def for_address(cls, address: str) -> FaultProxy:
        """A proxy in front of ``HOST:PORT`` or ``http://HOST:PORT``."""
        host, _, port = address.removeprefix("http://").rstrip("/").rpartition(":")
        return cls((host, int(port)))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    # Modes

    def pass_through(self) -> None:
        self.mode = _Mode("pass")

    def reset(self) -> None:
        """Reset every open connection and each new one until the mode changes."""
        self.mode = _Mode("reset")
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            connection.close(reset=True)

    def delay(self, seconds: float, *, per: Literal["request", "connection"] = "request") -> None:
        self.mode = _Mode("delay", seconds, per)

    def cut_after(self, server_bytes: int, *, request: bytes = b"") -> None:
        """Forward ``server_bytes`` more bytes from the server, then reset the connection that carried the
        next ones (they are not forwarded) and pass through again. With ``request``, the count starts at the
        next request that begins with those bytes, on its connection only; without, it starts now, on
        whichever connection the server's bytes come on first."""
        with self._lock:
            self._cut_left = server_bytes
            self._cut_request = request
            self._cut_on = None
            self.mode = _Mode("cut")

    # Life cycle

    def start(self) -> FaultProxy:
        self._acceptor.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._listener.close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            connection.close(reset=False)
        if self._acceptor.is_alive():
            self._acceptor.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                readable, _, _ = select.select([self._listener], [], [], 0.2)
                if not readable:
                    continue
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections_accepted += 1
            if self.mode.name == "reset":
                _close_with_reset(client)
                continue
            connection = _Connection(self, client)
            with self._lock:
                self._connections.add(connection)
            threading.Thread(target=connection.run, name=f"faultproxy-{self.port}-conn", daemon=True).start()

    def _forget(self, connection: _Connection) -> None:
        with self._lock:
            self._connections.discard(connection)

    def _server_bytes(self, connection: _Connection, data: bytes) -> tuple[bytes, bool]:
        """What of the server's ``data`` to forward, and whether to cut the connection after it."""
        with self._lock:
            if self.mode.name != "cut" or (self._cut_request and self._cut_on is not connection):
                return data, False
            if len(data) <= self._cut_left:
                self._cut_left -= len(data)
                return data, False
            forwarded = data[: self._cut_left]
            self.mode = _Mode("pass")
            self.cuts += 1
            return forwarded, True

    def _request_started(self, connection: _Connection, data: bytes) -> None:
        with self._lock:
            self.requests_forwarded += 1
            waiting = self.mode.name == "cut" and self._cut_request and self._cut_on is None
            if waiting and data.startswith(self._cut_request):
                self._cut_on = connection
