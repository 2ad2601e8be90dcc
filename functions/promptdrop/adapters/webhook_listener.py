"""A small HTTP server on this machine that hands webhook deliveries to a callback (``promptdrop serve``).

It reads at most ``max_bytes + 1`` bytes of a body (a larger one is the callback's to refuse), passes the
raw body and headers on, and answers with the status and text the callback returns. Loopback by default:
the local emulator delivers here; anything else must be asked for with a host.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)

# (raw body, headers) -> (HTTP status, short text)
Handler = Callable[[bytes, Mapping[str, str]], tuple[int, str]]


class WebhookListener:
    """Serves POSTs on ``host:port`` (0: a free port) on a background thread until ``close``."""

    def __init__(self, handler: Handler, *, max_bytes: int, host: str = "127.0.0.1", port: int = 0) -> None:
        class _Request(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                except ValueError:
                    length = max_bytes + 1
                body = self.rfile.read(min(length, max_bytes + 1))
                if length > max_bytes:
                    self.close_connection = True  # the rest of the body stays unread
                try:
                    status, text = handler(body, dict(self.headers.items()))
                except Exception:  # a bug must not kill the server; the sender retries a 500
                    log.exception("webhook handler failed")
                    status, text = 500, "internal error"
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("webhook listener: %s", format % args)

        self._server = ThreadingHTTPServer((host, port), _Request)
        self._server.daemon_threads = True
        self.host = host
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="webhook-listener", daemon=True
        )

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> WebhookListener:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> WebhookListener:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
