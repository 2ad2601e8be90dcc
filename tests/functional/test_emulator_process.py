"""The emulator as a process: ``python -m promptdrop.emulator``, the detached launcher, and the SDK-only demo."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from promptdrop.emulator.launcher import SERVER_RECORD, ensure_emulator
from promptdrop.emulator.options import EmulatorOptions
from promptdrop.testing.emulator import running_emulator

REPO = Path(__file__).resolve().parents[2]
LOOPBACK_ENV = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _health(url: str) -> dict[str, object]:
    with _OPENER.open(f"{url}/health", timeout=5) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def _wait_gone(pid: int, timeout: float = 15.0) -> bool:
    """True once ``pid`` has exited (reaping it if this process started it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
        time.sleep(0.05)
    return False


@pytest.fixture
def launched(tmp_path: Path) -> Iterator[Path]:
    """A data folder whose detached emulator (if the test started one) is stopped afterwards."""
    data_dir = tmp_path / "emu"
    yield data_dir
    record = data_dir / SERVER_RECORD
    if record.exists():
        pid = json.loads(record.read_text())["pid"]
        os.kill(pid, signal.SIGTERM)
        assert _wait_gone(pid)


def test_module_entry_point_prints_its_url_and_stops_on_sigterm(tmp_path: Path) -> None:
    """``python -m promptdrop.emulator`` prints one serving line, answers health, and exits 0 on SIGTERM."""
    data_dir = tmp_path / "emu"
    process = subprocess.Popen(
        [sys.executable, "-m", "promptdrop.emulator", "--data-dir", str(data_dir), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=LOOPBACK_ENV,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        found = re.fullmatch(
            r"promptdrop emulator serving on (http://127\.0\.0\.1:\d+) \(data: (.+)\)\n", line
        )
        assert found, line
        assert found.group(2) == str(data_dir.resolve())
        assert _health(found.group(1))["status"] == "ok"
        assert json.loads((data_dir / SERVER_RECORD).read_text())["url"] == found.group(1)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    assert not (data_dir / SERVER_RECORD).exists()


def test_bad_flags_exit_with_usage_error(tmp_path: Path) -> None:
    """An impossible control is a usage error (exit status 2), not a crash."""
    result = subprocess.run(
        [sys.executable, "-m", "promptdrop.emulator", "--data-dir", str(tmp_path), "--fault-rate", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "fault_rate" in result.stderr


def test_ensure_emulator_starts_once_and_reuses(launched: Path) -> None:
    """The first call starts a detached emulator; the next finds it by server.json and the health check."""
    url = ensure_emulator(launched, EmulatorOptions(pending_seconds=0, running_seconds=0))
    assert _health(url)["data_dir"] == str(launched.resolve())
    pid = json.loads((launched / SERVER_RECORD).read_text())["pid"]
    assert ensure_emulator(launched) == url
    assert json.loads((launched / SERVER_RECORD).read_text())["pid"] == pid
    assert (launched / "emulator.log").exists()


def test_concurrent_launchers_share_one_emulator(launched: Path) -> None:
    """Two processes calling ensure_emulator at once get the same URL: one emulator was started."""
    code = "import sys; from pathlib import Path; from promptdrop.emulator.launcher import ensure_emulator; "
    code += "print(ensure_emulator(Path(sys.argv[1])))"
    callers = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(launched)], stdout=subprocess.PIPE, text=True, env=LOOPBACK_ENV
        )
        for _ in range(2)
    ]
    urls = {caller.communicate(timeout=60)[0].strip() for caller in callers}
    assert all(caller.returncode == 0 for caller in callers)
    assert len(urls) == 1
    assert _health(urls.pop())["status"] == "ok"


def test_launcher_passes_the_key_outside_the_command_line(launched: Path) -> None:
    """A key given to the launcher is enforced by the emulator yet absent from its command line."""
    url = ensure_emulator(launched, EmulatorOptions(api_key="launcher-secret"))
    pid = json.loads((launched / SERVER_RECORD).read_text())["pid"]
    assert b"launcher-secret" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    wrong = urllib.request.Request(f"{url}/v1beta/files", headers={"x-goog-api-key": "nope"})  # noqa: S310
    with pytest.raises(urllib.error.HTTPError) as caught:
        _OPENER.open(wrong, timeout=5)
    assert caught.value.code == 403
    right = urllib.request.Request(  # noqa: S310 - a loopback http URL
        f"{url}/v1beta/files", headers={"x-goog-api-key": "launcher-secret"}
    )
    with _OPENER.open(right, timeout=5) as response:
        assert response.status == 200
    assert b"launcher-secret" not in (launched / "emulator.log").read_bytes()


def test_sdk_only_demo_passes_against_the_emulator(tmp_path: Path) -> None:
    """scripts/sdk-only-demo.py (google.genai and stdlib only) succeeds end to end and reports IMAGE_SAFETY."""
    with running_emulator(tmp_path / "emu", image_scale=0.125) as emu:
        result = subprocess.run(
            [sys.executable, str(REPO / "scripts" / "sdk-only-demo.py"), "--base-url", emu.url],
            capture_output=True,
            text=True,
            timeout=120,
            env={**LOOPBACK_ENV, "GEMINI_API_KEY": emu.api_key},
            check=False,
        )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "blocked: finishReason IMAGE_SAFETY" in result.stdout
    assert "landscape: image/png 128x72 for 16:9 ok" in result.stdout
    assert "all checks passed" in result.stdout


def test_sdk_only_demo_imports_nothing_but_the_sdk_and_stdlib() -> None:
    """The demo's imports are google.genai and standard-library modules only."""
    source = (REPO / "scripts" / "sdk-only-demo.py").read_text()
    imported = set(re.findall(r"^(?:from|import) ([\w.]+)", source, flags=re.MULTILINE))
    outside = {name for name in imported if name.split(".")[0] not in sys.stdlib_module_names}
    assert outside <= {"google", "google.genai"}
