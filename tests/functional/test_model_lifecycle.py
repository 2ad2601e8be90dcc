"""Retired, current and unknown model ids through the real CLI: the API decides, the table replaces.

The emulator serves what the real API serves (the table's ids not past their shutdown date), so the
retired preview ids a user pastes from old guides are refused at ``models.get`` exactly as Google does.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from promptdrop.emulator.launcher import SERVER_RECORD
from promptdrop.models import DEFAULT_MODEL, MODELS
from tests.functional.conftest import billed, jsonl, pipeline_env, read_jsonl
from tests.functional.test_cli import batches, cli_env, outputs, promptdrop, status_json

PRO, PRO_PREVIEW = "gemini-3-pro-image", "gemini-3-pro-image-preview"
FLASH, FLASH_PREVIEW = "gemini-3.1-flash-image", "gemini-3.1-flash-image-preview"
UNKNOWN = "gemini-9-imaginary-image"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

FIVE_MODELS = jsonl(
    {"key": "default", "prompt": "a lighthouse"},
    {"key": "pro-preview", "prompt": "a harbour", "model": PRO_PREVIEW},
    {"key": "flash-preview", "prompt": "a sailboat", "model": FLASH_PREVIEW},
    {"key": "flash", "prompt": "a buoy", "model": FLASH},
    {"key": "mystery", "prompt": "a gull", "model": UNKNOWN},
)


def _run_five(tmp_path: Path, emulator_factory: Any, **env: str) -> tuple[dict[str, Any], str, Any]:
    emulator = emulator_factory(pending_seconds=0.1, running_seconds=0.1)
    home = tmp_path / "home"
    environment = cli_env(home, emulator, **env)
    (tmp_path / "boats.jsonl").write_bytes(FIVE_MODELS)
    done = promptdrop(environment, "run", "boats.jsonl", "--wait", cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr  # PARTIAL exits 0
    run_id = done.stdout.split()[0]
    summary = json.loads((outputs(home, run_id) / "summary.json").read_bytes())
    manifest = {entry["key"]: entry for entry in read_jsonl(outputs(home, run_id) / "manifest.jsonl")}
    assert summary["state"] == "PARTIAL"
    return {"summary": summary, "manifest": manifest, "env": environment}, done.stderr, emulator


def test_retired_ids_run_on_their_replacement_and_unknown_ids_are_invalid(
    tmp_path: Path, emulator_factory: Any
) -> None:
    """Default, two retired previews and a GA id run on GA ids; an unknown id is invalid and gets no batch."""
    result, stderr, emulator = _run_five(tmp_path, emulator_factory)
    manifest, summary = result["manifest"], result["summary"]
    assert DEFAULT_MODEL == PRO
    expected = {
        "default": (PRO, None),
        "pro-preview": (PRO, PRO_PREVIEW),
        "flash-preview": (FLASH, FLASH_PREVIEW),
        "flash": (FLASH, None),
    }
    for key, (model, requested) in expected.items():
        entry = manifest[key]
        assert entry["status"] == "succeeded", entry
        assert entry["model"] == model
        assert entry.get("requested_model") == requested
        assert ("requested_model" in entry) == (requested is not None)
    mystery = manifest["mystery"]
    assert mystery["status"] == "invalid" and mystery["error"]["code"] == "unknown_model"
    assert mystery["model"] == UNKNOWN and mystery["image"] is None
    # Jobs only on GA ids, at promptdrop and at the (emulated) API; nothing was created for the unknown id.
    assert {job["model"] for job in summary["jobs"]} == {PRO, FLASH}
    assert {job.model.removeprefix("models/") for job in batches(emulator)} == {PRO, FLASH}
    assert sorted(summary["model_replacements"], key=lambda r: r["requested"]) == [
        {"requested": PRO_PREVIEW, "model": PRO, "shutdown": "2026-06-25"},
        {"requested": FLASH_PREVIEW, "model": FLASH, "shutdown": "2026-06-25"},
    ]
    # One notice per replaced id, with the replacement and the shutdown date; `status` says it again.
    for retired, replacement in ((PRO_PREVIEW, PRO), (FLASH_PREVIEW, FLASH)):
        notice = f"{retired} was shut down on 2026-06-25: its lines run on {replacement}"
        assert stderr.count(notice) >= 1, stderr
        status = promptdrop(result["env"], "status", summary["run_id"], cwd=tmp_path)
        assert status.stderr.count(notice) == 1, status.stderr
    # Cost is that of the ids the lines ran on (both are priced in the table), each at its own rates.
    batch, interactive = billed(list(manifest.values()), summary["model"])
    assert (summary["cost"]["batch"], summary["cost"]["interactive"]) == pytest.approx(
        (batch, interactive), abs=1e-6
    )


def test_refuse_policy_makes_retired_lines_invalid(tmp_path: Path, emulator_factory: Any) -> None:
    """PROMPTDROP_RETIRED_MODELS=refuse: the two retired lines are invalid (retired_model), naming the replacement."""
    result, _, emulator = _run_five(tmp_path, emulator_factory, PROMPTDROP_RETIRED_MODELS="refuse")
    manifest = result["manifest"]
    for key, replacement in (("pro-preview", PRO), ("flash-preview", FLASH)):
        entry = manifest[key]
        assert entry["status"] == "invalid" and entry["error"]["code"] == "retired_model"
        assert replacement in entry["error"]["message"]
        assert "requested_model" not in entry
    assert manifest["mystery"]["error"]["code"] == "unknown_model"
    assert [manifest[k]["status"] for k in ("default", "flash")] == ["succeeded", "succeeded"]
    assert result["summary"]["model_replacements"] == []
    assert {job.model.removeprefix("models/") for job in batches(emulator)} == {PRO, FLASH}
    # errors.jsonl carries the refused lines back, model as asked, so the user can fix and re-drop them.
    errors = {
        e["key"]: e
        for e in read_jsonl(outputs(tmp_path / "home", result["summary"]["run_id"]) / "errors.jsonl")
    }
    assert errors["pro-preview"]["model"] == PRO_PREVIEW


def test_a_model_still_served_after_its_shutdown_date_runs_as_asked_with_a_notice(
    tmp_path: Path, emulator_factory: Any
) -> None:
    """gemini-2.5-flash-image is past its announced shutdown; while the API serves it, it runs as asked."""
    emulator = emulator_factory(
        pending_seconds=0.1, running_seconds=0.1, serve_models=("gemini-2.5-flash-image",)
    )
    home = tmp_path / "home"
    env = cli_env(home, emulator)
    (tmp_path / "old.jsonl").write_bytes(
        jsonl({"key": "k", "prompt": "x", "model": "gemini-2.5-flash-image"})
    )
    done = promptdrop(env, "run", "old.jsonl", "--wait", cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.split()[0]
    [entry] = read_jsonl(outputs(home, run_id) / "manifest.jsonl")
    assert entry["status"] == "succeeded" and entry["model"] == "gemini-2.5-flash-image"
    assert "requested_model" not in entry
    assert "its announced shutdown date 2026-10-02 has passed: move to gemini-3.1-flash-image" in done.stderr


def test_dry_run_predicts_replacements_from_the_table_without_calling_the_api(
    tmp_path: Path, emulator_factory: Any
) -> None:
    """`run --dry-run` says what the run would do with retired ids, and creates nothing at the API; an id
    the table lacks is one the bundled emulator does not serve (the run would end it `unknown_model`)."""
    emulator = emulator_factory()
    env = cli_env(tmp_path / "home", emulator)
    (tmp_path / "boats.jsonl").write_bytes(FIVE_MODELS)
    done = promptdrop(env, "run", "boats.jsonl", "--dry-run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"{PRO_PREVIEW} was shut down on 2026-06-25: its lines run on {PRO}" in done.stderr
    assert f"{FLASH_PREVIEW} was shut down on 2026-06-25: its lines run on {FLASH}" in done.stderr
    assert f"{UNKNOWN} is not in promptdrop's model table" in done.stderr
    assert "line 5: unknown_model" in done.stderr
    assert "4 valid, 1 invalid" in done.stdout
    refuse = promptdrop(
        {**env, "PROMPTDROP_RETIRED_MODELS": "refuse"}, "run", "boats.jsonl", "--dry-run", cwd=tmp_path
    )
    assert "2 valid, 3 invalid" in refuse.stdout and "retired_model" in refuse.stderr
    assert batches(emulator) == []


def test_priority_reaches_the_batch_and_splits_jobs(tmp_path: Path, emulator_factory: Any) -> None:
    """A line's `priority` (or the file's default) goes to the batch; lines of two priorities get two jobs."""
    emulator = emulator_factory(pending_seconds=0.1, running_seconds=0.1)
    home = tmp_path / "home"
    env = cli_env(home, emulator, PROMPTDROP_PRIORITY="3")
    (tmp_path / "p.jsonl").write_bytes(
        jsonl(
            {"defaults": {"priority": 5}},
            {"key": "a", "prompt": "x"},
            {"key": "b", "prompt": "y", "priority": 9},
            {"key": "c", "request": {"contents": [{"parts": [{"text": "z"}]}]}, "priority": 9},
        )
    )
    done = promptdrop(env, "run", "p.jsonl", "--wait", cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    # The SDK drops `priority` from BatchJob: read the Operation as the wire has it.
    priorities = sorted(
        int(_operation(emulator, job.name)["metadata"].get("priority", "0")) for job in batches(emulator)
    )
    assert priorities == [5, 9]
    (tmp_path / "q.jsonl").write_bytes(jsonl({"key": "d", "prompt": "w"}))
    done = promptdrop(env, "run", "q.jsonl", "--wait", cwd=tmp_path, timeout=120)
    run_id = done.stdout.split()[0]
    assert [job["priority"] for job in status_json(env, tmp_path, run_id)["jobs"]] == [3]


def _operation(emulator: Any, name: str) -> dict[str, Any]:
    request = urllib.request.Request(  # noqa: S310 - the emulator on loopback, http only
        f"{emulator.url}/v1beta/{name}", headers={"x-goog-api-key": emulator.api_key}
    )
    with _OPENER.open(request, timeout=10) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


@pytest.fixture
def background_emulator_home(tmp_path: Path) -> Any:
    """A home whose CLI starts its own background emulator; it is stopped at the end if still there."""
    home = tmp_path / "home"
    yield home
    record = home / "emulator" / SERVER_RECORD
    if record.exists():
        pid = json.loads(record.read_text())["pid"]
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


def _wait_for(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_background_emulator_stops_after_its_idle_time_and_the_next_run_restarts_it(
    tmp_path: Path, background_emulator_home: Path
) -> None:
    """The emulator the CLI starts exits after PROMPTDROP_EMULATOR_IDLE without calls; `run` brings it back."""
    home = background_emulator_home
    env = {
        "PATH": os.environ.get("PATH", ""),
        "COLUMNS": "200",
        **pipeline_env(home, ""),
        # Long enough that the emulator is still up when `run --wait` returns on a loaded machine (its
        # settle makes no API call); short enough to watch it go.
        "PROMPTDROP_EMULATOR_IDLE": "8s",
    }
    del env["PROMPTDROP_GEMINI_BASE_URL"]  # the CLI finds or starts the emulator itself
    (tmp_path / "one.jsonl").write_bytes(jsonl({"key": "k", "prompt": "x"}))
    first = promptdrop(env, "run", "one.jsonl", "--wait", cwd=tmp_path, timeout=120)
    assert first.returncode == 0, first.stderr
    record = home / "emulator" / SERVER_RECORD
    pid = json.loads(record.read_text())["pid"]
    assert _alive(pid)
    assert _wait_for(lambda: not _alive(pid), timeout=30), "the background emulator outlived its idle time"
    assert not record.exists()
    second = promptdrop(env, "run", "one.jsonl", "--wait", cwd=tmp_path, timeout=120)
    assert second.returncode == 0, second.stderr
    new_pid = json.loads(record.read_text())["pid"]
    assert new_pid != pid  # a new emulator served the second run


def test_the_model_table_lists_current_ids_with_lifecycle() -> None:
    """GA ids are current; the retired previews name their replacement and the 2026-06-25 shutdown."""
    for retired, replacement in ((PRO_PREVIEW, PRO), (FLASH_PREVIEW, FLASH)):
        spec = MODELS[retired]
        assert spec.replacement == replacement and str(spec.shutdown) == "2026-06-25"
        assert MODELS[replacement].shutdown is None
    lite = MODELS["gemini-3.1-flash-lite-image"]
    assert lite.image_sizes == ("1K",) and lite.rates is None  # price not on Google's page: cost unknown
