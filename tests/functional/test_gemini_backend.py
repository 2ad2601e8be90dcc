"""GeminiBackend driving the real google-genai SDK over a real socket against the bundled emulator."""

from __future__ import annotations

import base64
import io
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest

from promptdrop.adapters.gemini import BackendNotFoundError, GeminiBackend
from promptdrop.errors import (
    AmbiguousCreateError,
    BackendError,
    BackendPermanentError,
    BackendTransientError,
    NotFoundError,
)
from promptdrop.ports import BatchInfo
from promptdrop.settings import Settings
from promptdrop.states import JobState
from promptdrop.testing.emulator import RunningEmulator, running_emulator

MODEL = "gemini-3-pro-image"
SECRET_KEY = "AIzaSy-functional-secret-key-0123456789"


@pytest.fixture(autouse=True)
def _loopback_without_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def backends() -> Iterator[Any]:
    """Build GeminiBackends aimed at an emulator (fast retries unless told otherwise); all closed at the end."""
    built: list[GeminiBackend] = []

    def build(emu: RunningEmulator, **options: Any) -> GeminiBackend:
        options = {"initial_delay": 0.01, "max_delay": 0.05, "timeout_s": 30, **options}
        backend = GeminiBackend(options.pop("api_key", emu.api_key), base_url=emu.url, **options)
        built.append(backend)
        return backend

    yield build
    for backend in built:
        backend.close()


def request_line(key: str, prompt: str) -> dict[str, Any]:
    return {
        "key": key,
        "request": {
            "contents": [{"role": "user", "parts": [{"text": prompt}]}],
            "generationConfig": {"responseModalities": ["IMAGE"]},
        },
    }


def jsonl(*lines: dict[str, Any]) -> bytes:
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


def upload(backend: GeminiBackend, data: bytes, display_name: str = "run-input") -> str:
    return backend.upload_file(io.BytesIO(data), size=len(data), display_name=display_name).name


def submit(backend: GeminiBackend, data: bytes, display_name: str) -> BatchInfo:
    return backend.create_batch(model=MODEL, file_name=upload(backend, data), display_name=display_name)


def wait_done(backend: GeminiBackend, name: str, timeout: float = 30.0) -> BatchInfo:
    deadline = time.monotonic() + timeout
    while not (info := backend.get_batch(name)).done:
        assert time.monotonic() < deadline, f"{name} still {info.state}"
        time.sleep(0.02)
    return info


def image_data(response: dict[str, Any]) -> str:
    parts = response["candidates"][0]["content"]["parts"]
    return str([part for part in parts if "inlineData" in part][-1]["inlineData"]["data"])


def test_file_job_round_trip(tmp_path: Path, backends: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Upload, create, poll to the end, stream the results to a file, and delete both files."""
    caplog.set_level(logging.DEBUG, logger="promptdrop.emulator")
    source = tmp_path / "requests.jsonl"
    source.write_bytes(jsonl(request_line("cat", "a cat"), request_line("dog", "a dog")))
    with running_emulator(tmp_path / "emu") as emu:
        backend = backends(emu)
        with source.open("rb") as stream:
            uploaded = backend.upload_file(
                stream, size=source.stat().st_size, display_name="run-1-input", mime_type="jsonl"
            )
        assert uploaded.name.startswith("files/")
        assert uploaded.uri
        created = backend.create_batch(model=MODEL, file_name=uploaded.name, display_name="run-1-c0-a1")
        assert created.name.startswith("batches/")
        assert (created.display_name, created.model) == ("run-1-c0-a1", f"models/{MODEL}")
        assert created.state in {JobState.JOB_STATE_PENDING, JobState.JOB_STATE_RUNNING}

        info = wait_done(backend, created.name)
        assert info.state == JobState.JOB_STATE_SUCCEEDED
        assert info.display_name == "run-1-c0-a1"
        assert info.stats == {"requestCount": 2, "successfulRequestCount": 2}
        assert info.error is None
        assert info.inlined_responses is None
        assert info.results_file == "files/batch-" + created.name.removeprefix("batches/")

        results = tmp_path / "results.jsonl"
        with results.open("wb") as destination:
            backend.download_file(info.results_file, destination)
        lines = [orjson.loads(line) for line in results.read_bytes().splitlines()]
        assert sorted(line["key"] for line in lines) == ["cat", "dog"]
        assert all(base64.b64decode(image_data(line["response"])) for line in lines)

        for file_name in (uploaded.name, info.results_file):
            backend.delete_file(file_name)
            backend.delete_file(file_name)  # already gone: fine
        with pytest.raises(BackendNotFoundError):
            backend.download_file(info.results_file, io.BytesIO())
    paths = [record.getMessage() for record in caplog.records]
    assert any("/v1beta/batches/" in path for path in paths), "the API version is pinned to v1beta"
    assert not any("/v1/" in path for path in paths)


def test_upload_refuses_a_size_that_does_not_match_the_stream(tmp_path: Path, backends: Any) -> None:
    """A truncated input is caught before any byte is sent."""
    with running_emulator(tmp_path / "emu") as emu:
        backend = backends(emu)
        with pytest.raises(ValueError, match="holds 3 bytes, not 4"):
            backend.upload_file(io.BytesIO(b"abc"), size=4, display_name="short")


def test_inline_results_are_raw_wire_dicts(tmp_path: Path, backends: Any) -> None:
    """An inline answer comes back as the camelCase dicts of the HTTP JSON, image data as base64 text."""
    lines = [
        request_line("ok", "a calm lake"),
        request_line("unsafe", "unsafe [[emulator:safety]]"),
        request_line("boom", "boom [[emulator:error=13]]"),
    ]
    with running_emulator(tmp_path / "emu", inline_responses_max=10) as emu:
        backend = backends(emu)
        info = wait_done(backend, submit(backend, jsonl(*lines), "inline-run").name)
    assert info.state == JobState.JOB_STATE_SUCCEEDED
    assert info.results_file is None
    assert info.stats == {"requestCount": 3, "successfulRequestCount": 2, "failedRequestCount": 1}
    assert info.inlined_responses is not None
    by_key = {item["metadata"]["key"]: item for item in info.inlined_responses}
    assert set(by_key) == {"ok", "unsafe", "boom"}
    assert base64.b64decode(image_data(by_key["ok"]["response"]), validate=True)
    assert by_key["ok"]["response"]["candidates"][0]["finishReason"] == "STOP"
    assert by_key["unsafe"]["response"]["candidates"][0]["finishReason"] == "IMAGE_SAFETY"
    assert by_key["boom"]["error"]["code"] == 13
    assert "response" not in by_key["boom"]


@pytest.mark.parametrize(
    ("marker", "state", "error"),
    [
        ("[[emulator:job=expired]]", JobState.JOB_STATE_EXPIRED, None),
        ("[[emulator:job=failed]]", JobState.JOB_STATE_FAILED, "The batch job failed"),
    ],
)
def test_jobs_that_end_without_results(
    tmp_path: Path, backends: Any, marker: str, state: JobState, error: str | None
) -> None:
    """EXPIRED and FAILED jobs are terminal, with the Operation error the SDK would have dropped."""
    with running_emulator(tmp_path / "emu") as emu:
        backend = backends(emu)
        info = wait_done(backend, submit(backend, jsonl(request_line("a", f"a tree {marker}")), "ends").name)
    assert info.state == state
    assert info.done
    assert (info.results_file, info.inlined_responses) == (None, None)
    if error is None:
        assert info.error is None
    else:
        assert info.error is not None
        assert info.error.startswith(error)


@pytest.mark.parametrize("code", [429, 503])
def test_faults_on_get_are_retried_by_the_sdk(tmp_path: Path, backends: Any, code: int) -> None:
    """With half the polls answered 429 or 503, every get_batch still succeeds through the SDK's retries."""
    options: dict[str, Any] = {
        "fault_rate": 0.5,
        "fault_codes": (code,),
        "fault_routes": ("get",),
        "fault_seed": 7,
    }
    with running_emulator(tmp_path / "emu", **options) as emu:
        backend = backends(emu, retry_attempts=12)
        name = submit(backend, jsonl(request_line("a", "a boat")), "retried").name
        infos = [backend.get_batch(name) for _ in range(10)]
        assert emu.server.faults_injected > 0
    assert {info.name for info in infos} == {name}


@pytest.mark.parametrize(("code", "status"), [(429, "RESOURCE_EXHAUSTED"), (503, "UNAVAILABLE")])
def test_faults_outlasting_the_retries_are_transient(
    tmp_path: Path, backends: Any, code: int, status: str
) -> None:
    """When every attempt fails the caller gets a BackendTransientError naming the status, after all attempts."""
    options: dict[str, Any] = {"fault_rate": 1.0, "fault_codes": (code,), "fault_routes": ("get",)}
    with running_emulator(tmp_path / "emu", **options) as emu:
        backend = backends(emu, retry_attempts=3)
        with pytest.raises(BackendTransientError, match=f"HTTP {code} {status}") as caught:
            backend.get_batch("batches/any")
        assert emu.server.faults_injected == 3
    assert not isinstance(caught.value, AmbiguousCreateError)


def test_create_with_a_500_is_ambiguous_and_sent_once(tmp_path: Path, backends: Any) -> None:
    """A 5xx on create raises AmbiguousCreateError after exactly one POST, though other calls retry."""
    options: dict[str, Any] = {"fault_rate": 1.0, "fault_codes": (500,), "fault_routes": ("create", "get")}
    with running_emulator(tmp_path / "emu", **options) as emu:
        backend = backends(emu, retry_attempts=4)
        file_name = upload(backend, jsonl(request_line("a", "a hill")))
        with pytest.raises(AmbiguousCreateError, match="HTTP 500 INTERNAL"):
            backend.create_batch(model=MODEL, file_name=file_name, display_name="once")
        assert emu.server.faults_injected == 1
        # This emulator faults before it creates anything, so the lookup rightly finds no job.
        assert backend.find_batches("once") == []
        with pytest.raises(BackendTransientError):
            backend.get_batch("batches/any")
        assert emu.server.faults_injected == 1 + 4  # the get was retried: client retries are on


def test_stalled_create_is_ambiguous_and_find_batches_recovers_the_job(tmp_path: Path, backends: Any) -> None:
    """A create that outlasts the client timeout raises AmbiguousCreateError; the job it made is found by name."""
    options: dict[str, Any] = {"stall_rate": 1.0, "stall_seconds": 1.0, "fault_routes": ("create",)}
    with running_emulator(tmp_path / "emu", **options) as emu:
        backend = backends(emu, timeout_s=0.3, retry_attempts=5)
        file_name = upload(backend, jsonl(request_line("a", "a river")))
        with pytest.raises(AmbiguousCreateError, match="Timeout"):
            backend.create_batch(model=MODEL, file_name=file_name, display_name="run-9-c0-a1")
        assert emu.server.calls_stalled == 1
        deadline = time.monotonic() + 10
        while not (matches := backend.find_batches("run-9-c0-a1")):
            assert time.monotonic() < deadline, "the stalled create never made its job"
            time.sleep(0.05)
        (found,) = matches
        assert found.name.startswith("batches/")
        assert found.display_name == "run-9-c0-a1"
        assert emu.server.calls_stalled == 1  # still one POST: nothing retried the create


def test_stalled_get_is_transient_after_the_client_timeout(tmp_path: Path, backends: Any) -> None:
    """A poll the server never answers ends as BackendTransientError once every attempt has timed out."""
    options: dict[str, Any] = {"stall_rate": 1.0, "stall_seconds": 5.0, "fault_routes": ("get",)}
    with running_emulator(tmp_path / "emu", **options) as emu:
        backend = backends(emu, timeout_s=0.2, retry_attempts=2)
        with pytest.raises(BackendTransientError, match="Timeout") as caught:
            backend.get_batch("batches/slow")
        assert emu.server.calls_stalled == 2
    assert not isinstance(caught.value, AmbiguousCreateError)


def test_find_batches_pages_and_returns_every_match_oldest_first(tmp_path: Path, backends: Any) -> None:
    """With more than a page of jobs, every job of that display name is found, oldest first; an unknown name none."""
    with running_emulator(tmp_path / "emu", pending_seconds=600, max_active_jobs=200) as emu:
        backend = backends(emu)
        file_name = upload(backend, jsonl(request_line("a", "a star")))
        older = backend.create_batch(model=MODEL, file_name=file_name, display_name="wanted")
        newer = backend.create_batch(model=MODEL, file_name=file_name, display_name="wanted")
        with ThreadPoolExecutor(8) as pool:  # 100 newer jobs push both matches onto the second page
            fillers = [
                pool.submit(
                    backend.create_batch, model=MODEL, file_name=file_name, display_name=f"filler-{i}"
                )
                for i in range(100)
            ]
        assert len({filler.result().name for filler in fillers}) == 100
        found = backend.find_batches("wanted")
        assert backend.find_batches("missing") == []
    assert older.name != newer.name
    assert [(info.name, info.state) for info in found] == [
        (older.name, JobState.JOB_STATE_PENDING),
        (newer.name, JobState.JOB_STATE_PENDING),
    ]


def test_cancel_batch(tmp_path: Path, backends: Any) -> None:
    """A cancelled pending job reads back as CANCELLED, which is terminal."""
    with running_emulator(tmp_path / "emu", pending_seconds=600) as emu:
        backend = backends(emu)
        name = submit(backend, jsonl(request_line("a", "a moon")), "cancel-me").name
        backend.cancel_batch(name)
        info = backend.get_batch(name)
    assert info.state == JobState.JOB_STATE_CANCELLED
    assert info.done


def test_missing_resources_are_not_found(tmp_path: Path, backends: Any) -> None:
    """Unknown batch jobs and files raise BackendNotFoundError, catchable as NotFoundError."""
    with running_emulator(tmp_path / "emu") as emu:
        backend = backends(emu)
        calls: list[Callable[[], object]] = [
            lambda: backend.get_batch("batches/doesnotexist"),
            lambda: backend.cancel_batch("batches/doesnotexist"),
            lambda: backend.download_file("files/doesnotexist", io.BytesIO()),
        ]
        for call in calls:
            with pytest.raises(NotFoundError):
                call()
        backend.delete_file("files/doesnotexist")


def test_api_key_never_appears_in_errors(tmp_path: Path, backends: Any) -> None:
    """Refused (403), missing (404) and timed-out calls name neither the right key nor the wrong one."""
    errors: list[BackendError] = []
    with running_emulator(tmp_path / "emu", api_key=SECRET_KEY, require_key=True) as emu:
        wrong = backends(emu, api_key=SECRET_KEY[::-1], retry_attempts=1)
        right = backends(emu, retry_attempts=1)
        refused: list[Callable[[], object]] = [
            lambda: wrong.upload_file(io.BytesIO(b"{}\n"), size=3, display_name="x"),
            lambda: wrong.create_batch(model=MODEL, file_name="files/x", display_name="x"),
            lambda: wrong.find_batches("x"),
            lambda: wrong.get_batch("batches/x"),
            lambda: wrong.cancel_batch("batches/x"),
            lambda: wrong.download_file("files/x", io.BytesIO()),
            lambda: right.get_batch("batches/missing"),
            lambda: right.download_file("files/missing", io.BytesIO()),
        ]
        for call in refused:
            with pytest.raises(BackendPermanentError) as caught:
                call()
            errors.append(caught.value)
    with running_emulator(
        tmp_path / "stall", stall_rate=1.0, stall_seconds=5.0, fault_routes=("get",)
    ) as emu:
        slow = backends(emu, api_key=SECRET_KEY, timeout_s=0.2, retry_attempts=1)
        with pytest.raises(BackendTransientError) as timed_out:
            slow.get_batch("batches/slow")
        errors.append(timed_out.value)
    assert any("HTTP 403" in str(error) for error in errors)
    assert any("HTTP 404" in str(error) for error in errors)
    for error in errors:
        for text in (str(error), repr(error)):
            assert SECRET_KEY not in text
            assert SECRET_KEY[::-1] not in text


def test_explicit_key_wins_over_google_api_key(
    tmp_path: Path, backends: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The configured key is sent even when GOOGLE_API_KEY (which the SDK prefers) names another one."""
    monkeypatch.setenv("GOOGLE_API_KEY", "some-other-project-key")
    monkeypatch.setenv("GEMINI_API_KEY", "yet-another-key")
    with running_emulator(tmp_path / "emu", api_key=SECRET_KEY, require_key=True) as emu:
        settings = Settings.from_env({"GEMINI_API_KEY": SECRET_KEY}, gemini_base_url=emu.url)
        backend = GeminiBackend.from_settings(settings)
        try:
            assert backend.find_batches("anything") == []
        finally:
            backend.close()
