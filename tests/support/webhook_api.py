"""A minimal Gemini webhooks API over HTTP, for the real google-genai SDK's ``client.webhooks`` to call.

It speaks the wire shape the SDK (3.6, ``google/genai/_gaos/webhooks.py``) sends and parses: snake_case
JSON, ``/{api_version}/webhooks`` (GET lists with ``page_size``/``page_token``, POST creates),
``DELETE /{api_version}/webhooks/{id}``, ``POST /{api_version}/webhooks/{id}:rotateSigningSecret``, the key
in ``x-goog-api-key``. A create answers the signing secret once (``new_signing_secret``), a rotation
(``secret``); a listing shows only truncated secrets, as the real API does.

Used by scripts/deploy's registration tests until the bundled emulator serves these routes (issue 13's
runtime half); then those tests can point PROMPTDROP_GEMINI_BASE_URL at the emulator instead.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

_ONE = re.compile(r"^/(?P<version>[^/]+)/webhooks/(?P<id>[^/:]+)(?P<verb>:rotateSigningSecret)?$")
_ALL = re.compile(r"^/(?P<version>[^/]+)/webhooks$")


@dataclass
class WebhookApi:
    """The project's webhooks, every call made, and every signing secret handed out."""

    api_key: str
    max_page_size: int = 50
    webhooks: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)  # (method, path without the query)
    issued: list[str] = field(default_factory=list)
    url: str = ""
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, uri: str, events: list[str], name: str = "other") -> str:
        """A webhook registered by someone else (or earlier); its id."""
        with self._lock:
            return self._create({"uri": uri, "subscribed_events": events, "name": name})["id"]

    def count(self, method: str, suffix: str = "") -> int:
        return sum(1 for m, path in self.calls if m == method and path.endswith(suffix))

    def _secret(self) -> str:
        secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        self.issued.append(secret)
        return secret

    def _create(self, body: dict[str, Any]) -> dict[str, Any]:
        webhook_id = f"wh-{next(self._ids)}"
        secret = self._secret()
        self.webhooks[webhook_id] = {
            "id": webhook_id,
            "name": body.get("name"),
            "uri": body["uri"],
            "subscribed_events": list(body["subscribed_events"]),
            "state": "enabled",
            "create_time": "2026-11-30T12:00:00Z",
            "signing_secrets": [{"truncated_secret": secret[:10] + "..."}],
        }
        return {**self.webhooks[webhook_id], "new_signing_secret": secret}

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        parts = urlsplit(target)
        with self._lock:
            self.calls.append((method, parts.path))
            if headers.get("x-goog-api-key") != self.api_key:
                return 403, {
                    "error": {"code": 403, "message": "API key not valid.", "status": "PERMISSION_DENIED"}
                }
            one, every = _ONE.match(parts.path), _ALL.match(parts.path)
            if every and method == "GET":
                query = parse_qs(parts.query)
                size = min(int(query.get("page_size", ["50"])[0]), self.max_page_size)
                start = int(query.get("page_token", ["0"])[0])
                ordered = list(self.webhooks.values())
                page: dict[str, Any] = {"webhooks": ordered[start : start + size]}
                if start + size < len(ordered):
                    page["next_page_token"] = str(start + size)
                return 200, page
            if every and method == "POST":
                request = json.loads(body)
                if not request.get("uri") or not request.get("subscribed_events"):
                    return 400, {"error": {"code": 400, "message": "uri and subscribed_events are required"}}
                return 200, self._create(request)
            if one and one["id"] not in self.webhooks:
                return 404, {"error": {"code": 404, "message": "webhook not found", "status": "NOT_FOUND"}}
            if one and method == "DELETE" and not one["verb"]:
                del self.webhooks[one["id"]]
                return 200, {}
            if one and method == "POST" and one["verb"]:
                secret = self._secret()
                self.webhooks[one["id"]]["signing_secrets"].insert(
                    0, {"truncated_secret": secret[:10] + "..."}
                )
                self.webhooks[one["id"]]["last_revocation"] = json.loads(body or b"{}").get(
                    "revocation_behavior"
                )
                return 200, {"secret": secret}
            return 404, {"error": {"code": 404, "message": f"no route {method} {parts.path}"}}


@contextmanager
def running_webhook_api(api_key: str, **options: Any) -> Iterator[WebhookApi]:
    """Serve a WebhookApi on a free loopback port (``api.url`` is the SDK's base URL) while in the block."""
    api = WebhookApi(api_key, **options)

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            headers = {name.lower(): value for name, value in self.headers.items()}
            status, payload = api.handle(self.command, self.path, headers, self.rfile.read(length))
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = do_PATCH = _answer

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    api.url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()
