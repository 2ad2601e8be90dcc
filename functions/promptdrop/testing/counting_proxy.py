"""A TCP proxy that counts the requests through it: HTTP/1.1 request lines, or gRPC calls (the HTTP/2
HEADERS frames that open a client stream). Put in front of an emulator, it counts what a client library
asks of the service (scripts/bench_cloud_scale.py, and tests that count requests)."""

from __future__ import annotations

import select
import socket
import threading
from collections import Counter

_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class CountingProxy:
    """A TCP proxy that counts requests: HTTP/1.1 request lines, or gRPC calls (new client streams)."""

    def __init__(self, name: str, target: tuple[str, int]) -> None:
        self.name, self.target = name, target
        self.requests = 0
        self.kinds: Counter[str] = Counter()  # HTTP/1.1: "METHOD /first/path/segments"
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        threading.Thread(target=self._accept, name=f"proxy-{name}", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._pipe, args=(client,), daemon=True).start()

    def _count(self, kind: str) -> None:
        with self._lock:
            self.requests += 1
            self.kinds[kind] += 1

    def _pipe(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(self.target)
        except OSError:
            client.close()
            return
        pending = b""  # client bytes not yet parsed (HTTP/2 frames, or the start of an HTTP/1.1 burst)
        mode: str | None = None
        answered = True  # HTTP/1.1: the next client bytes start a new request
        with client, server:
            while not self._stop.is_set():
                readable, _, _ = select.select([client, server], [], [], 1.0)
                for sock in readable:
                    data = sock.recv(256 * 1024)
                    if not data:
                        return
                    other = server if sock is client else client
                    other.sendall(data)
                    if sock is server:
                        answered = True
                        continue
                    if mode is None:
                        pending += data
                        if len(pending) < len(_H2_PREFACE) and _H2_PREFACE.startswith(pending):
                            continue
                        mode = "h2" if pending.startswith(_H2_PREFACE) else "h1"
                        data, pending = pending, b""
                        if mode == "h2":
                            data = data[len(_H2_PREFACE) :]
                    if mode == "h2":
                        pending = self._frames(pending + data)
                    elif answered:
                        answered = False
                        line = data.split(b"\r\n", 1)[0].decode("latin-1")
                        method, _, rest = line.partition(" ")
                        path = rest.split(" ", 1)[0].split("?", 1)[0]
                        kind = "/".join(path.split("/")[:4]) + ("?alt=media" if "alt=media" in rest else "")
                        self._count(f"{method} {kind}")

    def _frames(self, buffer: bytes) -> bytes:
        """Count the HEADERS frames that open a client stream (one a gRPC call); keep a partial frame."""
        while len(buffer) >= 9:
            length = int.from_bytes(buffer[:3], "big")
            if len(buffer) < 9 + length:
                break
            kind, stream = buffer[3], int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF
            if kind == 1 and stream % 2 == 1:
                self._count("grpc call")
            buffer = buffer[9 + length :]
        return buffer
