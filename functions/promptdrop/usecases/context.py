"""What every use case needs: the settings and the ports, built once by ``promptdrop.wiring``."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from promptdrop.layout import RunLayout
from promptdrop.ports import BatchBackend, BlobStore, JobStore, Notifier
from promptdrop.settings import Settings


def default_owner() -> str:
    """A lease owner id unique to this process: ``<host>-<pid>-<random>``."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def owner_is_dead_local_process(owner: str) -> bool:
    """True when ``owner`` names a process of this host that no longer runs (a killed `serve`)."""
    parts = owner.rsplit("-", 2)
    if len(parts) != 3 or not parts[1].isdigit() or parts[0] != socket.gethostname():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class ByteBudget:
    """Bytes of images a process may hold queued or in flight, shared by every run a tick advances.

    ``acquire`` waits while the budget is spent; one image larger than the whole budget still goes, alone,
    so nothing can wait for ever. Each run's own thread holds at most one more decoded image and its
    result line beside this (see docs/PERFORMANCE.md for the measured totals).
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.used = 0
        self.peak = 0
        self._cond = threading.Condition()

    def acquire(self, size: int) -> None:
        with self._cond:
            while self.used and self.used + size > self.limit:
                self._cond.wait()
            self.used += size
            self.peak = max(self.peak, self.used)

    def release(self, size: int) -> None:
        with self._cond:
            self.used -= size
            self._cond.notify_all()


@dataclass
class Context:
    settings: Settings
    blobs: BlobStore
    store: JobStore
    notifier: Notifier
    # Built on first use: `status` and `--dry-run` never start an emulator or need an API key.
    backend_factory: Callable[[], BatchBackend]
    clock: Callable[[], float] = time.time
    owner: str = field(default_factory=default_owner)
    _backend: BatchBackend | None = None
    image_budget: ByteBudget = field(init=False)

    def __post_init__(self) -> None:
        self.image_budget = ByteBudget(self.settings.harvest_memory_budget)

    @property
    def backend(self) -> BatchBackend:
        if self._backend is None:
            self._backend = self.backend_factory()
        return self._backend

    def layout(self, run_id: str) -> RunLayout:
        return RunLayout.of(self.settings.output_prefix, run_id)
