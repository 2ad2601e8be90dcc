"""Job stores that misbehave: a real adapter (SQLite or Firestore) with one call changed."""

from __future__ import annotations

from typing import Any

from promptdrop.errors import TransientError
from promptdrop.records import Job


class SecondRetryInsertFails:
    """The real job store; the second ``create_job`` of attempt 2 raises ``TransientError`` (once)."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.inserts = 0
        self.failed = False

    def create_job(self, job: Job, *, if_lease_owner: str | None = None) -> bool:
        if job.attempt == 2:
            self.inserts += 1
            if self.inserts == 2 and not self.failed:
                self.failed = True
                raise TransientError(f"injected: the store refused to create {job.job_id}")
        created: bool = self.real.create_job(job, if_lease_owner=if_lease_owner)
        return created

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)
