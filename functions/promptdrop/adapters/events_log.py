"""The local twin of the events topic: one JSON line per finished run, appended to a file."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson


class EventsLog:
    """``Notifier`` that appends to ``path`` (a lock keeps lines whole when several processes write)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def publish(self, event: Mapping[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = orjson.dumps(dict(event)) + b"\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, line)
        finally:
            os.close(fd)
