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
NANO = "gemini-nano-banana-2.1"
TYPO = "gemini-3-pro-imge"
UNTABLED = "gemini-4-image-exp"  # served by the (emulated) API, missing from promptdrop's table
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

# Google today: Pro Image, Nano Banana 2.1 and a model our table lacks; 3.1 Flash Image no longer served.
SERVED_TODAY = (PRO, NANO, UNTABLED)
SIX_LINES = jsonl(
    {"key": "default", "prompt": "a lighthouse"},
    {"key": "flash", "prompt": "a buoy", "model": FLASH},
    {"key": "pro-preview", "prompt": "a harbour", "model": PRO_PREVIEW},
    {"key": "nano", "prompt": "a sailboat", "model": NANO},
    {"key": "typo", "prompt": "a gull", "model": TYPO},
    {"key": "untabled", "prompt": "a pier", "model": UNTABLED},
)


def _run(
    tmp_path: Path, emulator: Any, data: bytes = SIX_LINES, **env: str
) -> tuple[dict[str, Any], dict[str, Any], str, dict[str, str]]:
    home = tmp_path / "home"
    environment = cli_env(home, emulator, **env)
    (tmp_path / "boats.jsonl").write_bytes(data)
    done = promptdrop(environment, "run", "boats.jsonl", "--wait", cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr  # PARTIAL exits 0
    run_id = done.stdout.split()[0]
    summary = json.loads((outputs(home, run_id) / "summary.json").read_bytes())
    manifest = {entry["key"]: entry for entry in read_jsonl(outputs(home, run_id) / "manifest.jsonl")}
    return summary, manifest, done.stderr, environment


def _today(emulator_factory: Any) -> Any:
    return emulator_factory(pending_seconds=0.1, running_seconds=0.1, models=SERVED_TODAY)


def test_models_as_google_serves_them_today(tmp_path: Path, emulator_factory: Any) -> None:
    """Aliases follow, successors are offered, typos get a suggestion, a model the table lacks runs unpriced."""
    emulator = _today(emulator_factory)
    summary, manifest, stderr, env = _run(tmp_path, emulator)
    assert DEFAULT_MODEL == PRO
    assert summary["state"] == "PARTIAL"
    expected = {"default": (PRO, None), "pro-preview": (PRO, PRO_PREVIEW), "nano": (NANO, None)}
    expected["untabled"] = (UNTABLED, None)
    for key, (model, requested) in expected.items():
        entry = manifest[key]
        assert entry["status"] == "succeeded", entry
        assert (entry["model"], entry.get("requested_model")) == (model, requested)
    # Nano Banana 2.1 is priced from the table; the model the table lacks is not (cost unknown).
    priced = [manifest[key] for key in ("default", "pro-preview", "nano")]
    assert billed([manifest["nano"]], NANO)[0] > 0
    assert summary["cost"]["batch"] is None and summary["cost"]["estimate"] is None
    # The same run without the table-less line costs what its priced lines used, nano at its own rates.
    assert billed(priced, PRO)[0] > billed([manifest["nano"]], NANO)[0]
    # 3.1 Flash Image is no longer served: its successor is a different model, offered with both prices.
    flash = manifest["flash"]
    assert (flash["status"], flash["error"]["code"]) == ("invalid", "retired_model")
    assert NANO in flash["error"]["message"]
    assert "$0.0336 per 1K image in batch" in flash["error"]["message"]  # 3.1 Flash Image's
    assert "$0.0168 per 1K image in batch" in flash["error"]["message"]  # Nano Banana 2.1's
    typo = manifest["typo"]
    assert (typo["status"], typo["error"]["code"]) == ("invalid", "unknown_model")
    assert f"did you mean {PRO}?" in typo["error"]["message"]
    # Jobs only on served ids; the notices say what was decided, once per id, and `status` repeats them.
    assert {job.model.removeprefix("models/") for job in batches(emulator)} == {PRO, NANO, UNTABLED}
    assert summary["model_replacements"] == [
        {"requested": PRO_PREVIEW, "model": PRO, "shutdown": "2026-06-25"}
    ]
    assert f"{PRO_PREVIEW} was shut down on 2026-06-25: its lines run on {PRO}" in stderr
    assert any(UNTABLED in notice and "cost is unknown" in notice for notice in summary["model_notices"])
    status = promptdrop(env, "status", summary["run_id"], cwd=tmp_path)
    assert status.stderr.count(f"its lines run on {PRO}") == 1, status.stderr


def test_upgrade_runs_lines_of_a_retired_model_on_its_successor(
    tmp_path: Path, emulator_factory: Any
) -> None:
    """PROMPTDROP_RETIRED_MODELS=upgrade: the 3.1 Flash Image line succeeds on gemini-nano-banana-2.1."""
    emulator = _today(emulator_factory)
    data = jsonl({"key": "flash", "prompt": "a buoy", "model": FLASH})
    summary, manifest, stderr, _ = _run(tmp_path, emulator, data, PROMPTDROP_RETIRED_MODELS="upgrade")
    entry = manifest["flash"]
    assert (entry["status"], entry["model"], entry["requested_model"]) == ("succeeded", NANO, FLASH)
    assert summary["state"] == "SUCCEEDED"
    assert f"its lines run on {NANO}, a different model" in stderr


def test_model_map_is_the_users_choice(tmp_path: Path, emulator_factory: Any) -> None:
    """PROMPTDROP_MODEL_MAP=gemini-3.1-flash-image=gemini-nano-banana-2.1 without the upgrade policy."""
    emulator = _today(emulator_factory)
    data = jsonl({"key": "flash", "prompt": "a buoy", "model": FLASH})
    _, manifest, _, _ = _run(tmp_path, emulator, data, PROMPTDROP_MODEL_MAP=f"{FLASH}={NANO}")
    assert (manifest["flash"]["model"], manifest["flash"]["requested_model"]) == (NANO, FLASH)


def test_refuse_policy_refuses_aliases_too(tmp_path: Path, emulator_factory: Any) -> None:
    """PROMPTDROP_RETIRED_MODELS=refuse: the preview line is invalid (retired_model), naming its GA id."""
    emulator = _today(emulator_factory)
    _, manifest, _, _ = _run(tmp_path, emulator, PROMPTDROP_RETIRED_MODELS="refuse")
    entry = manifest["pro-preview"]
    assert entry["status"] == "invalid" and entry["error"]["code"] == "retired_model"
    assert PRO in entry["error"]["message"] and "requested_model" not in entry
    assert manifest["default"]["status"] == "succeeded"


def test_a_deprecated_model_still_served_runs_as_asked_with_a_notice(
    tmp_path: Path, emulator_factory: Any
) -> None:
    """3.1 Flash Image while Google still serves it: it runs, and every face says it is deprecated."""
    emulator = emulator_factory(pending_seconds=0.1, running_seconds=0.1)  # the table's current ids
    data = jsonl({"key": "k", "prompt": "x", "model": FLASH})
    summary, manifest, stderr, env = _run(tmp_path, emulator, data)
    entry = manifest["k"]
    assert entry["status"] == "succeeded" and entry["model"] == FLASH and "requested_model" not in entry
    notice = f"{FLASH} is still served, but deprecated since 2026-10-06, shutdown announced, no date: move to {NANO}"
    assert notice in stderr
    assert summary["model_notices"] == [notice]
    assert promptdrop(env, "status", summary["run_id"], cwd=tmp_path).stderr.count(notice) == 1
    dry = promptdrop(env, "run", "boats.jsonl", "--dry-run", cwd=tmp_path)
    assert notice in dry.stderr


def test_no_batch_model_is_invalid_naming_the_now_lane(tmp_path: Path, emulator_factory: Any) -> None:
    """A served model without batchGenerateContent: batch lines are invalid (no_batch), now lines run."""
    emulator = emulator_factory(
        pending_seconds=0.1, running_seconds=0.1, models=SERVED_TODAY, no_batch_models=(NANO,)
    )
    data = jsonl(
        {"key": "batch", "prompt": "a buoy", "model": NANO},
        {"key": "now", "prompt": "a boat", "model": NANO, "lane": "now"},
    )
    _summary, manifest, _, _ = _run(tmp_path, emulator, data)
    assert (manifest["batch"]["status"], manifest["batch"]["error"]["code"]) == ("invalid", "no_batch")
    assert '"lane": "now"' in manifest["batch"]["error"]["message"]
    assert manifest["now"]["status"] == "succeeded" and manifest["now"]["model"] == NANO
    assert batches(emulator) == []


def test_dry_run_asks_the_api_and_shows_how_lines_will_end(tmp_path: Path, emulator_factory: Any) -> None:
    """`run --dry-run` asks the emulator what it serves: the typo and the Flash line end as the run would."""
    emulator = _today(emulator_factory)
    env = cli_env(tmp_path / "home", emulator)
    (tmp_path / "boats.jsonl").write_bytes(SIX_LINES)
    done = promptdrop(env, "run", "boats.jsonl", "--dry-run", cwd=tmp_path)
    assert "4 valid, 2 invalid" in done.stdout, done.stdout + done.stderr
    assert "line 5: unknown_model" in done.stderr and f"did you mean {PRO}?" in done.stderr
    assert "line 2: retired_model" in done.stderr and NANO in done.stderr
    assert "predicted from promptdrop's model table" not in done.stderr
    assert batches(emulator) == []
    # Offline (nothing listens there): the table predicts, and says so.
    offline = {**env, "PROMPTDROP_GEMINI_BASE_URL": "http://127.0.0.1:9", "PROMPTDROP_API_TIMEOUT": "2"}
    guessed = promptdrop(offline, "run", "boats.jsonl", "--dry-run", cwd=tmp_path)
    assert "predicted from promptdrop's model table" in guessed.stderr, guessed.stderr


def test_models_command_lists_what_is_served_with_prices(tmp_path: Path, emulator_factory: Any) -> None:
    """`promptdrop models --json`: Nano Banana 2.1 with its batch price per 1K image, and the unknown one."""
    emulator = _today(emulator_factory)
    env = cli_env(tmp_path / "home", emulator)
    done = promptdrop(env, "models", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    listing = json.loads(done.stdout)
    rows = {row["model"]: row for row in listing["models"]}
    assert listing["source"] == "api" and set(rows) == set(SERVED_TODAY)
    nano = rows[NANO]
    assert nano["batch"] is True and nano["image_sizes"] == ["1K", "4K", "2K"]
    assert nano["price_per_image"]["1K"]["batch"] == pytest.approx(0.0168)
    assert nano["price_per_image"]["2K"]["batch"] is None  # no published token count
    assert nano["max_reference_images"] == 14 and len(nano["aspect_ratios"]) == 14
    assert rows[UNTABLED]["in_table"] is False and rows[UNTABLED]["price_per_image"] is None
    text = promptdrop(env, "models", cwd=tmp_path)
    assert NANO in text.stdout and "$0.0168" in text.stdout


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
    """Preview ids are aliases of their GA ids; 3.1 Flash Image is deprecated with a successor, no date."""
    for retired, target in ((PRO_PREVIEW, PRO), (FLASH_PREVIEW, FLASH)):
        spec = MODELS[retired]
        assert spec.alias_of == target and spec.successor is None and str(spec.shutdown) == "2026-06-25"
    flash = MODELS[FLASH]
    assert (flash.successor, str(flash.deprecated), flash.shutdown) == (NANO, "2026-10-06", None)
    assert MODELS[PRO].shutdown is None and MODELS[NANO].successor is None
    lite = MODELS["gemini-3.1-flash-lite-image"]
    assert lite.image_sizes == ("1K",) and lite.rates is None  # price not on Google's page: cost unknown
