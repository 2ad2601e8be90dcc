"""The bundled Gemini Batch API emulator in-process, for tests that drive the real google-genai SDK.

    with running_emulator(tmp_path / "emulator") as emu:
        client = emu.client()
        uploaded = client.files.upload(file=path, config=types.UploadFileConfig(mime_type="jsonl"))

Defaults suit tests: jobs go PENDING -> RUNNING -> done without delay and images are 1/16 of their size.
The server binds 127.0.0.1 on an OS-chosen port; clients ignore proxy variables from the environment.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google import genai
from google.genai import types

from promptdrop.emulator import EmulatorOptions, EmulatorServer

TEST_API_KEY = "test-key-for-the-emulator"
TEST_DEFAULTS: dict[str, Any] = {"pending_seconds": 0.0, "running_seconds": 0.0, "image_scale": 0.0625}


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
        """HttpOptions aimed at this emulator; ``retries`` > 1 retries quickly (50 ms, at most 200 ms)."""
        retry = types.HttpRetryOptions(attempts=retries, initial_delay=0.05, max_delay=0.2)
        return types.HttpOptions(
            base_url=self.url,
            api_version=api_version,
            timeout=timeout_ms,
            retry_options=retry,
            client_args={"trust_env": False},
        )

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


def wait_until_done(client: genai.Client, name: str, *, timeout: float = 60.0) -> types.BatchJob:
    """Poll ``batches.get`` until the job is done (any terminal state, EXPIRED included)."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.batches.get(name=name)
        if job.done:
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} still {job.state} after {timeout} s")
        time.sleep(0.02)


def wait_for_state(client: genai.Client, name: str, state: str, *, timeout: float = 30.0) -> types.BatchJob:
    """Poll ``batches.get`` until the job reports ``state`` (a ``JOB_STATE_*`` value)."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.batches.get(name=name)
        if job.state == state:
            return job
        if job.done or time.monotonic() > deadline:
            raise AssertionError(f"{name} is {job.state}, expected {state}")
        time.sleep(0.02)
