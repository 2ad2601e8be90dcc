"""What every use case needs: the settings and the ports, built once by ``promptdrop.wiring``."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from promptdrop.layout import RunLayout
from promptdrop.ports import BatchBackend, BlobStore, JobStore, Notifier
from promptdrop.settings import Settings


def default_owner() -> str:
    """A lease owner id unique to this process."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


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

    @property
    def backend(self) -> BatchBackend:
        if self._backend is None:
            self._backend = self.backend_factory()
        return self._backend

    def layout(self, run_id: str) -> RunLayout:
        return RunLayout.of(self.settings.output_prefix, run_id)
