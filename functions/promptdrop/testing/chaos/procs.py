"""Child processes the chaos suite starts, SIGKILLs and restarts, and what /proc says they hold open."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

import orjson

from promptdrop.testing.cloud import http_get


class Child:
    """One command in its own process group, restartable; its output appends to one log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path, cwd: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None
        self.kills = 0
        self.unexpected_exits = 0
        self.log_offset = 0  # where this start's output begins in the log

    def wait_ready(self, marker: str, timeout: float = 20.0) -> None:
        """Until this start printed ``marker``: a SIGINT while Python still imports prints a traceback."""
        deadline = time.monotonic() + timeout
        while self.alive and time.monotonic() < deadline:
            with self.log_path.open("rb") as log:
                log.seek(self.log_offset)
                if marker.encode() in log.read():
                    return
            time.sleep(0.05)

    def start(self) -> Child:
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def pids(self) -> list[int]:
        """The process and everything it forked (its process group)."""
        return group_pids(self.pid) if self.alive else []

    def kill(self) -> None:
        """SIGKILL the whole group, at once: no handler runs, as when a machine loses power."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.kills += 1

    def check_exit(self) -> bool:
        """True (and counted) if the process ended without being told to."""
        if self.process is not None and self.process.poll() is not None:
            self.unexpected_exits += 1
            with self.log_path.open("a") as log:
                log.write(f"\n[chaos] {self.name} exited by itself with code {self.process.returncode}\n")
            return True
        return False

    def stop(self, sig: int = signal.SIGINT, grace: float = 15.0) -> None:
        """Ask the group to stop; SIGKILL what is left after ``grace`` seconds."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def group_pids(pgid: int) -> list[int]:
    """Processes whose process group is ``pgid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command name: state, ppid, pgrp, ...
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 2 and int(fields[2]) == pgid:
            found.append(int(entry))
    return found


def _socket_inodes(local_port: int) -> set[str]:
    """Inodes of the TCP sockets bound to ``local_port`` on this host (IPv4 and IPv6)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                if int(fields[1].rpartition(":")[2], 16) == local_port:
                    inodes.add(fields[9])
    return inodes


def _fd_targets(pids: Iterable[int]) -> list[str]:
    targets = []
    for pid in pids:
        folder = f"/proc/{pid}/fd"
        with contextlib.suppress(OSError):
            for fd in os.listdir(folder):
                with contextlib.suppress(OSError):
                    targets.append(os.readlink(f"{folder}/{fd}"))
    return targets


def owns_client_port(pids: Iterable[int], port: int) -> bool:
    """Whether one of ``pids`` holds the client socket whose local port is ``port``."""
    inodes = _socket_inodes(port)
    return bool(inodes) and any(
        target.startswith("socket:[") and target[8:-1] in inodes for target in _fd_targets(pids)
    )


def has_open_file_under(pids: Iterable[int], folder: Path) -> bool:
    prefix = str(folder.resolve()) + os.sep
    return any(target.startswith(prefix) for target in _fd_targets(pids))


def emulator_stats(url: str) -> dict[str, object]:
    """``GET /stats`` of the Gemini emulator (faults and stalls so far, calls stalled now)."""
    with contextlib.suppress(OSError, ValueError):
        status, body = http_get(f"{url}/stats", timeout=2.0)
        if status == 200:
            stats: dict[str, object] = orjson.loads(body)
            return stats
    return {}


def stalled_create_ports(url: str) -> list[int]:
    """Client ports of the ``create`` calls stalled in the emulator right now."""
    stalling = emulator_stats(url).get("stalling") or []
    assert isinstance(stalling, list)
    return [
        int(str(call["peer"]).rpartition(":")[2])
        for call in stalling
        if isinstance(call, dict) and call.get("route") == "create"
    ]


def wait_http(url: str, deadline: float, child: Child) -> None:
    while time.monotonic() < deadline:
        if not child.alive:
            raise RuntimeError(f"{child.name} exited while starting; see {child.log_path}")
        with contextlib.suppress(OSError):
            status, _ = http_get(url, timeout=1.0)
            if status == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{child.name} did not answer {url} in time; see {child.log_path}")


def wait_listening(port: int, deadline: float, child: Child) -> None:
    while time.monotonic() < deadline:
        if not child.alive:
            raise RuntimeError(f"{child.name} exited while starting; see {child.log_path}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{child.name} was not listening on {port} in time; see {child.log_path}")
