"""The emulator's streamed response bodies hold no file open until they are sent (issue 10, hole 6)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from promptdrop.emulator.server import _inline_items, _stream_file


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_bodies_open_their_file_only_while_they_run(tmp_path: Path) -> None:
    """A body built but never sent opens nothing; one sent to the end closes what it opened."""
    data = tmp_path / "results.jsonl"
    data.write_bytes(b'{"a": 1}\n{"b": 2}\n')
    before = open_files()
    bodies = [
        _stream_file(data, 0, data.stat().st_size, 0.0, threading.Event(), lambda n: None),
        _inline_items(data),
    ]
    assert open_files() == before  # built, not sent: nothing open
    assert b"".join(bodies[0]) == data.read_bytes()
    assert b"".join(bodies[1]) == b'[{"a": 1},{"b": 2}]'
    assert open_files() == before
