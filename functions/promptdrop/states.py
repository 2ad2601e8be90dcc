"""Run and batch-job states, with their declared terminal sets."""

from __future__ import annotations

from enum import StrEnum


class RunState(StrEnum):
    """A run's lifecycle, stored exactly by these values."""

    RECEIVED = "RECEIVED"
    SUBMITTED = "SUBMITTED"
    HARVESTING = "HARVESTING"
    SUCCEEDED = "SUCCEEDED"
    PARTIAL = "PARTIAL"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in RUN_TERMINAL


RUN_TERMINAL = frozenset({RunState.SUCCEEDED, RunState.PARTIAL, RunState.FAILED, RunState.CANCELLED})
RUN_ACTIVE = frozenset(RunState) - RUN_TERMINAL


class JobState(StrEnum):
    """A batch job's state as the SDK's ``types.JobState`` values (never ``str(enum)``).

    The Gemini API yields PENDING, RUNNING and the four ends; QUEUED, PAUSED, UPDATING, CANCELLING and
    PARTIALLY_SUCCEEDED come from Vertex and newer SDKs. A value we do not know parses as UNSPECIFIED: a
    non-terminal state like the others, so the job deadline still ends a job stuck in it.
    """

    JOB_STATE_UNSPECIFIED = "JOB_STATE_UNSPECIFIED"
    JOB_STATE_QUEUED = "JOB_STATE_QUEUED"
    JOB_STATE_PENDING = "JOB_STATE_PENDING"
    JOB_STATE_RUNNING = "JOB_STATE_RUNNING"
    JOB_STATE_SUCCEEDED = "JOB_STATE_SUCCEEDED"
    JOB_STATE_FAILED = "JOB_STATE_FAILED"
    JOB_STATE_CANCELLING = "JOB_STATE_CANCELLING"
    JOB_STATE_CANCELLED = "JOB_STATE_CANCELLED"
    JOB_STATE_PAUSED = "JOB_STATE_PAUSED"
    JOB_STATE_EXPIRED = "JOB_STATE_EXPIRED"
    JOB_STATE_UPDATING = "JOB_STATE_UPDATING"
    JOB_STATE_PARTIALLY_SUCCEEDED = "JOB_STATE_PARTIALLY_SUCCEEDED"

    @property
    def terminal(self) -> bool:
        return self in JOB_TERMINAL

    @classmethod
    def parse(cls, value: object) -> JobState:
        """Accept an SDK enum, a ``JOB_STATE_*`` or a raw wire ``BATCH_STATE_*`` string."""
        raw = getattr(value, "value", value)
        text = str(raw or "JOB_STATE_UNSPECIFIED")
        if text.startswith("BATCH_STATE_"):
            text = "JOB_STATE_" + text.removeprefix("BATCH_STATE_")
        try:
            return cls(text)
        except ValueError:
            return cls.JOB_STATE_UNSPECIFIED


# EXPIRED is terminal: the SDK README's polling loop forgets it and spins forever. PARTIALLY_SUCCEEDED is
# an end too (the SDK's `done` forgets that one): its results are harvested, unanswered lines retried.
JOB_TERMINAL = frozenset(
    {
        JobState.JOB_STATE_SUCCEEDED,
        JobState.JOB_STATE_FAILED,
        JobState.JOB_STATE_CANCELLED,
        JobState.JOB_STATE_EXPIRED,
        JobState.JOB_STATE_PARTIALLY_SUCCEEDED,
    }
)


class JobPhase(StrEnum):
    """Where promptdrop is with one batch job (its own bookkeeping, beside the API's JobState)."""

    QUEUED = "QUEUED"  # request file written, waiting for a free slot (jobs-in-flight cap)
    CREATING = "CREATING"  # batches.create called or about to be: recover by display name
    ACTIVE = "ACTIVE"  # the API has it; polled until terminal
    HARVESTING = "HARVESTING"  # terminal on the API; results being written (checkpointed)
    DONE = "DONE"  # harvested (or nothing to harvest); inputs and results deleted
