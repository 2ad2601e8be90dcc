"""Find the emulator serving a data folder, or start one in the background that outlives the caller.

The serving emulator records itself in ``<data_dir>/server.json`` (pid, host, port, url); a health call
confirms it is alive and serves that folder. ``<data_dir>/launch.lock`` serialises launchers, so two
processes asking at once end up with one emulator.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Final

import orjson

from promptdrop.emulator.files import write_json_atomically
from promptdrop.emulator.options import API_KEY_ENV, WEBHOOK_SECRET_ENV, EmulatorOptions
from promptdrop.errors import BackendPermanentError, BackendTransientError

SERVER_RECORD: Final = "server.json"
LOG_FILE: Final = "emulator.log"
START_TIMEOUT_SECONDS: Final = 30.0
# Loopback only: never route the health check through a proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def write_server_record(data_dir: Path, *, host: str, port: int, url: str) -> None:
    """Record the emulator of this process as the one serving ``data_dir``."""
    record = {"pid": os.getpid(), "host": host, "port": port, "url": url}
    write_json_atomically(data_dir / SERVER_RECORD, record)


def remove_server_record(data_dir: Path) -> None:
    """Remove the record if it is this process's own (a newer emulator may have replaced it)."""
    path = data_dir / SERVER_RECORD
    with contextlib.suppress(FileNotFoundError, ValueError):
        if orjson.loads(path.read_bytes()).get("pid") == os.getpid():
            path.unlink()


def serving_url(data_dir: Path) -> str | None:
    """The URL of a live emulator serving ``data_dir``, or None."""
    found = serving(data_dir)
    return found[0] if found else None


def serving(data_dir: Path) -> tuple[str, int | None] | None:
    """The URL and process id of a live emulator serving ``data_dir``, or None."""
    try:
        record = orjson.loads((data_dir / SERVER_RECORD).read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None
    url = record.get("url") if isinstance(record, dict) else None
    if not isinstance(url, str) or not url.startswith("http://"):
        return None
    try:
        with _OPENER.open(f"{url}/health", timeout=2) as response:
            health = orjson.loads(response.read())
    except (OSError, ValueError):
        return None
    same_folder = Path(str(health.get("data_dir"))).resolve() == data_dir.resolve()
    if health.get("status") != "ok" or not same_folder:
        return None
    pid = record.get("pid")
    return url, pid if isinstance(pid, int) else None


def _log_tail(log: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    return ""


def ensure_emulator(data_dir: Path, options: EmulatorOptions | None = None) -> str:
    """The base URL of the emulator serving ``data_dir``, starting a detached one if none is.

    The started emulator binds 127.0.0.1 on an OS-chosen port, logs to ``<data_dir>/emulator.log``
    and keeps running after the caller exits. ``options`` only apply when a new emulator is started.
    """
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    with (data_dir / "launch.lock").open("ab") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        url = serving_url(data_dir)
        if url is not None:
            return url
        return _launch(data_dir, options or EmulatorOptions())


def _launch(data_dir: Path, options: EmulatorOptions) -> str:
    (data_dir / SERVER_RECORD).unlink(missing_ok=True)
    env = dict(os.environ)
    env.pop(API_KEY_ENV, None)
    env.pop(WEBHOOK_SECRET_ENV, None)
    if options.api_key:
        env[API_KEY_ENV] = options.api_key
    if options.webhook_secret:
        env[WEBHOOK_SECRET_ENV] = options.webhook_secret
    argv = [sys.executable, "-m", "promptdrop.emulator", "--data-dir", str(data_dir), "--port", "0"]
    log_path = data_dir / LOG_FILE
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [*argv, *options.to_argv()],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BackendPermanentError(
                f"the emulator exited with status {process.returncode}; "
                f"{log_path} ends with:\n{_log_tail(log_path)}"
            )
        url = serving_url(data_dir)
        if url is not None:
            return url
        time.sleep(0.05)
    raise BackendTransientError(
        f"the emulator did not answer within {START_TIMEOUT_SECONDS:.0f} s; see {log_path}"
    )
