"""Fault injection, stalls and the API key, seen through the real google-genai SDK."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from google.genai import errors, types

from promptdrop.emulator.options import EmulatorOptions
from promptdrop.testing.emulator import create_inline, running_emulator, wait_until_done

MODEL = "gemini-3-pro-image"


@pytest.mark.parametrize("codes", [(429,), (503,), (429, 500, 503)])
def test_injected_faults_are_recovered_by_sdk_retries(tmp_path: Path, codes: tuple[int, ...]) -> None:
    """With half the calls failing, a client retrying 5 times still uploads, creates, polls and lists."""
    source = tmp_path / "in.jsonl"
    source.write_text('{"key": "k", "request": {"contents": [{"parts": [{"text": "x"}]}]}}\n')
    with running_emulator(tmp_path / "emu", fault_rate=0.5, fault_codes=codes, fault_seed=3) as emu:
        client = emu.client(retries=5)
        uploaded = client.files.upload(file=source, config=types.UploadFileConfig(mime_type="jsonl"))
        assert uploaded.name is not None
        job = client.batches.create(model=MODEL, src=uploaded.name)
        assert job.name is not None
        done = wait_until_done(client, job.name)
        assert done.state == types.JobState.JOB_STATE_SUCCEEDED
        assert [j.name for j in client.batches.list()] == [job.name]
        assert emu.server.faults_injected > 0


def test_without_retries_an_injected_fault_reaches_the_caller(tmp_path: Path) -> None:
    """Every call faulted and no retries: the SDK raises the emulator's Google-shaped 503."""
    with running_emulator(tmp_path / "emu", fault_rate=1.0, fault_codes=(503,)) as emu:
        client = emu.client()
        with pytest.raises(errors.ServerError) as caught:
            client.batches.list()
    assert caught.value.code == 503
    assert caught.value.status == "UNAVAILABLE"


def test_fault_routes_limit_which_calls_fail(tmp_path: Path) -> None:
    """Faults restricted to ``create`` leave ``list`` alone and hit every create."""
    with running_emulator(
        tmp_path / "emu", fault_rate=1.0, fault_codes=(500,), fault_routes=("create",)
    ) as emu:
        client = emu.client()
        assert list(client.batches.list()) == []
        with pytest.raises(errors.ServerError):
            create_inline(client, "x")
        assert emu.server.faults_injected == 1


def test_stalled_call_times_out_on_the_client_yet_still_creates(tmp_path: Path) -> None:
    """A stalled create outlasts a short client timeout, and the job exists afterwards (create is ambiguous)."""
    with running_emulator(
        tmp_path / "emu", stall_rate=1.0, stall_seconds=1.0, fault_routes=("create",)
    ) as emu:
        impatient = emu.client(timeout_ms=200)
        with pytest.raises(Exception) as caught:
            impatient.batches.create(
                model=MODEL, src=[types.InlinedRequest(contents="x")], config={"display_name": "slow"}
            )
        assert "timeout" in type(caught.value).__name__.lower() or "timed out" in str(caught.value).lower()
        assert emu.server.calls_stalled == 1
        patient = emu.client()
        deadline = time.monotonic() + 10
        names: list[str | None] = []
        while not names and time.monotonic() < deadline:
            names = [job.display_name for job in patient.batches.list()]
            time.sleep(0.05)
        assert names == ["slow"]


@pytest.mark.parametrize(
    ("key", "status"),
    [(None, 401), ("wrong-key", 403), ("right-key", 200)],
)
def test_key_is_required_when_configured(tmp_path: Path, key: str | None, status: int) -> None:
    """Started with a key, the emulator answers 401 without one, 403 for a wrong one, 200 for the right one."""
    with running_emulator(tmp_path / "emu", api_key="right-key", require_key=True) as emu:
        headers = {"x-goog-api-key": key} if key else {}
        reply = emu.request("GET", "/v1beta/batches", headers=headers, with_key=False)
        assert reply.status == status
        if status != 200:
            assert reply.json()["error"]["code"] == status
            assert "right-key" not in reply.body.decode()


def test_key_in_query_is_accepted_and_any_key_works_by_default(tmp_path: Path) -> None:
    """``?key=`` works like the header; without --api-key any non-empty key is accepted, none is refused."""
    with running_emulator(tmp_path / "emu") as emu:
        assert emu.request("GET", "/v1beta/files?key=whatever", with_key=False).status == 200
        assert emu.request("GET", "/v1beta/files", with_key=False).status == 401
        client = emu.client(api_key="some-other-key")
        assert list(client.files.list()) == []


def test_sdk_client_with_wrong_key_gets_permission_denied(tmp_path: Path) -> None:
    """The SDK surfaces a wrong key as a ClientError 403."""
    with running_emulator(tmp_path / "emu", api_key="right-key", require_key=True) as emu:
        client = emu.client(api_key="wrong-key")
        with pytest.raises(errors.ClientError) as caught:
            client.batches.list()
    assert caught.value.code == 403


def test_unknown_path_is_a_google_shaped_404(tmp_path: Path) -> None:
    """Unknown routes answer 404 NOT_FOUND in the API's error shape; health needs no key."""
    with running_emulator(tmp_path / "emu") as emu:
        reply = emu.request("GET", "/v1beta/nothing/here")
        assert reply.status == 404
        assert reply.json()["error"]["status"] == "NOT_FOUND"
        health = emu.request("GET", "/health", with_key=False)
        assert health.json() == {"status": "ok", "data_dir": str(emu.data_dir)}


def test_stats_count_faults_and_name_the_client_of_a_stalled_create(tmp_path: Path) -> None:
    """``GET /stats`` counts by route and lists calls stalled right now with their client's address."""
    with running_emulator(
        tmp_path / "emu", create_stall_rate=1.0, stall_seconds=1.0, fault_routes=("create",)
    ) as emu:
        client = emu.client(timeout_ms=200)
        with pytest.raises(Exception):  # noqa: B017 - the SDK's timeout error type is httpx's
            create_inline(client, "a cat")
        stalling = emu.request("GET", "/stats", with_key=False).json()
        assert stalling["stalls_by_route"] == {"create": 1}
        (call,) = stalling["stalling"]
        assert call["route"] == "create" and call["peer"].startswith("127.0.0.1:")
        time.sleep(1.2)
        stats = emu.request("GET", "/stats", with_key=False).json()
        assert stats["stalling"] == [] and stats["stalls"] == 1 and stats["faults"] == 0
        assert len(list(emu.client().batches.list())) == 1  # the stalled create landed


def test_create_stall_rate_needs_room_beside_the_other_rates() -> None:
    with pytest.raises(ValueError, match="must not exceed 1"):
        EmulatorOptions(fault_rate=0.5, stall_rate=0.3, create_stall_rate=0.3)
