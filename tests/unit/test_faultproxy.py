"""The fault proxy's cut: exactly the bytes it promised pass, then a reset, then it passes through again."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator

import pytest

from promptdrop.testing.faultproxy import FaultProxy

ANSWER = bytes(range(100))  # what the server sends for every request


class _Answering(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while self.request.recv(1024):
            self.request.sendall(ANSWER)


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Answering)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with FaultProxy(server.server_address) as running:  # type: ignore[arg-type]
            yield running
    finally:
        server.shutdown()
        server.server_close()


def _ask(connection: socket.socket, request: bytes) -> tuple[bytes, bool]:
    """Send a request; the answer's bytes, and whether the connection was reset before all of it came."""
    connection.sendall(request)
    received = b""
    try:
        while len(received) < len(ANSWER):
            data = connection.recv(1024)
            if not data:
                return received, False
            received += data
    except ConnectionResetError:
        return received, True
    return received, False


def test_cut_after_forwards_that_many_bytes_then_resets_once(proxy: FaultProxy) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as first:
        assert _ask(first, b"GET one") == (ANSWER, False)
        proxy.cut_after(130)  # the rest of the next answer and 30 bytes of the one after
        assert _ask(first, b"GET two") == (ANSWER, False)
        assert _ask(first, b"GET three") == (ANSWER[:30], True)
    assert proxy.cuts == 1
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as second:
        assert _ask(second, b"GET four") == (ANSWER, False)  # passing through again


def test_cut_after_a_request_loses_only_the_answer_to_that_request(proxy: FaultProxy) -> None:
    with (
        socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as other,
        socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as target,
    ):
        proxy.cut_after(0, request=b"PUT ")
        assert _ask(other, b"GET on another connection") == (ANSWER, False)
        assert _ask(target, b"GET first") == (ANSWER, False)
        assert _ask(target, b"PUT /upload/") == (b"", True)
        assert _ask(other, b"GET after the cut") == (ANSWER, False)
    assert proxy.cuts == 1
