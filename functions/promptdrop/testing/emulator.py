"""The bundled Gemini Batch API emulator in-process, for tests that drive the real google-genai SDK.

    with running_emulator(tmp_path / "emulator") as emu:
        client = emu.client()
        uploaded = client.files.upload(file=path, config=types.UploadFileConfig(mime_type="jsonl"))

Defaults suit tests: jobs go PENDING -> RUNNING -> done without delay and images are 1/16 of their size.
The server binds 127.0.0.1 on an OS-chosen port; clients ignore proxy variables from the environment.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google import genai
from google.genai import types

from promptdrop.emulator.options import EmulatorOptions
from promptdrop.emulator.server import EmulatorServer

TEST_API_KEY = "test-key-for-the-emulator"
TEST_DEFAULTS: dict[str, Any] = {"pending_seconds": 0.0, "running_seconds": 0.0, "image_scale": 0.0625}
# Loopback only: never through a proxy named in the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _lower(headers: Any) -> dict[str, str]:
    return {name.lower(): value for name, value in headers}


@dataclass(frozen=True)
class RawReply:
    """What the emulator answered to a hand-made HTTP call."""

    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class RunningEmulator:
    """A started emulator: its URL, the key clients should send, and the server itself."""

    server: EmulatorServer
    api_key: str

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def data_dir(self) -> Path:
        return self.server.data_dir

    def http_options(
        self, *, retries: int = 1, timeout_ms: int | None = 30_000, api_version: str = "v1beta"
    ) -> types.HttpOptions:
        """HttpOptions aimed at this emulator; ``retries`` > 1 retries fast (50 ms doubling to 200 ms)."""
        retry = types.HttpRetryOptions(attempts=retries, initial_delay=0.05, max_delay=0.2, jitter=0.05)
        return types.HttpOptions(
            base_url=self.url,
            api_version=api_version,
            timeout=timeout_ms,
            retry_options=retry,
            client_args={"trust_env": False},
        )

    def request(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        headers: dict[str, str] | None = None,
        with_key: bool = True,
    ) -> RawReply:
        """Call the emulator by hand (``path`` after the host, e.g. ``/v1beta/batches/x``), as raw JSON."""
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        if with_key:
            all_headers.setdefault("x-goog-api-key", self.api_key)
        data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
        # The URL is our own loopback http address.
        call = urllib.request.Request(self.url + path, data=data, headers=all_headers, method=method)  # noqa: S310
        try:
            with _OPENER.open(call, timeout=30) as response:
                return RawReply(response.status, _lower(response.headers.items()), response.read())
        except urllib.error.HTTPError as error:
            return RawReply(error.code, _lower(error.headers.items()), error.read())

    def client(
        self,
        retries: int = 1,
        *,
        timeout_ms: int | None = 30_000,
        api_version: str = "v1beta",
        api_key: str | None = None,
    ) -> genai.Client:
        """A real ``genai.Client`` talking to this emulator."""
        options = self.http_options(retries=retries, timeout_ms=timeout_ms, api_version=api_version)
        return genai.Client(api_key=api_key or self.api_key, http_options=options)


@contextmanager
def running_emulator(
    data_dir: Path, *, api_key: str = TEST_API_KEY, require_key: bool = False, port: int = 0, **options: Any
) -> Iterator[RunningEmulator]:
    """Serve ``data_dir`` for the duration of the block; ``options`` are EmulatorOptions fields.

    With ``require_key`` the emulator accepts only ``api_key``; otherwise any non-empty key.
    """
    settings = EmulatorOptions(**{**TEST_DEFAULTS, **options, "api_key": api_key if require_key else None})
    server = EmulatorServer(data_dir, settings, port=port).start()
    try:
        yield RunningEmulator(server=server, api_key=api_key)
    finally:
        server.stop()


def upload_jsonl(client: genai.Client, path: Path, lines: list[dict[str, Any]]) -> str:
    """Write ``lines`` as JSONL to ``path``, upload it (``mime_type="jsonl"``) and return the file name."""
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    uploaded = client.files.upload(file=path, config=types.UploadFileConfig(mime_type="jsonl"))
    assert uploaded.name is not None
    return uploaded.name


def create_inline(client: genai.Client, *prompts: str, model: str = "gemini-3-pro-image") -> str:
    """Create an inline-source batch of one text prompt per request and return the job name."""
    source = [types.InlinedRequest(contents=prompt) for prompt in prompts]
    job = client.batches.create(model=model, src=source)
    assert job.name is not None
    return job.name


def wait_until_done(client: genai.Client, name: str | None, *, timeout: float = 60.0) -> types.BatchJob:
    """Poll ``batches.get`` until the job is done (any terminal state, EXPIRED included)."""
    assert name is not None
    deadline = time.monotonic() + timeout
    while True:
        job = client.batches.get(name=name)
        if job.done:
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} still {job.state} after {timeout} s")
        time.sleep(0.02)


def wait_for_state(
    client: genai.Client, name: str | None, state: str, *, timeout: float = 30.0
) -> types.BatchJob:
    """Poll ``batches.get`` until the job reports ``state`` (a ``JOB_STATE_*`` value)."""
    assert name is not None
    deadline = time.monotonic() + timeout
    while True:
        job = client.batches.get(name=name)
        if job.state == state:
            return job
        if job.done or time.monotonic() > deadline:
            raise AssertionError(f"{name} is {job.state}, expected {state}")
        time.sleep(0.02)
