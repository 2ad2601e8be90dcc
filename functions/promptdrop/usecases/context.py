"""What every use case needs: the settings and the ports, built once by ``promptdrop.wiring``."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from promptdrop.budget import ByteBudget
from promptdrop.layout import RunLayout
from promptdrop.ports import BatchBackend, BlobStore, JobStore, Notifier, PaidImageCache
from promptdrop.settings import Settings

T = TypeVar("T")


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


class Lazy(Generic[T]):
    """A value built on first use, once, however many threads ask at the same moment."""

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._value: T | None = None
        self._lock = threading.Lock()

    def get(self) -> T:
        value = self._value
        if value is None:
            with self._lock:
                if self._value is None:
                    self._value = self._factory()
                value = self._value
        return value

    def set(self, value: T) -> None:
        with self._lock:
            self._value = value


@dataclass
class WebhookHealth:
    """What the last look at the project's webhooks found (shared by every copy of a context)."""

    checked_at: float | None = None
    healthy: bool = True  # until a look says otherwise


@dataclass
class Context:
    settings: Settings
    blobs: BlobStore
    store: JobStore
    notifier: Notifier
    paid_images: PaidImageCache  # the pay-once cache, beside the job store
    # Built on first use: `status` and `--dry-run` never start an emulator or need an API key.
    backend_factory: Callable[[], BatchBackend]
    clock: Callable[[], float] = time.time
    owner: str = field(default_factory=default_owner)
    # Shared by the copies ``replace`` makes (a context working under a lease): one backend and one memory
    # budget serve every run of the process (the blob store's read-ahead draws on the same budget).
    backend_holder: Lazy[BatchBackend] | None = None
    image_budget: ByteBudget | None = None
    # Where the now lane's chunks are published (one message each) to be worked by another function;
    # None: whoever advances a run sends its now lines itself.
    now_dispatch: Notifier | None = None
    # Enqueued tokens per model this process aims for after the API refused a create with 429 while we were
    # under our own count (lowered, never raised: a fresh process starts from the tier's quota again).
    enqueued_targets: dict[str, int] = field(default_factory=dict)
    # With webhooks on: whether the project still has an enabled batch webhook, asked at most hourly.
    webhook_health: WebhookHealth = field(default_factory=WebhookHealth)

    def __post_init__(self) -> None:
        if self.backend_holder is None:
            self.backend_holder = Lazy(lambda: self.backend_factory())
        if self.image_budget is None:
            self.image_budget = ByteBudget(self.settings.harvest_memory_budget)

    @property
    def backend(self) -> BatchBackend:
        assert self.backend_holder is not None
        return self.backend_holder.get()

    def layout(self, run_id: str) -> RunLayout:
        return RunLayout.of(self.settings.output_prefix, run_id)
