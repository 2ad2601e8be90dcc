"""Run and job states: stored values, terminal sets, and parsing every spelling the API and SDK use."""

from __future__ import annotations

import pytest
from google.genai import types

from promptdrop.states import JOB_TERMINAL, RUN_ACTIVE, RUN_TERMINAL, JobState, RunState


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("BATCH_STATE_PENDING", JobState.JOB_STATE_PENDING),
        ("BATCH_STATE_RUNNING", JobState.JOB_STATE_RUNNING),
        ("BATCH_STATE_SUCCEEDED", JobState.JOB_STATE_SUCCEEDED),
        ("BATCH_STATE_EXPIRED", JobState.JOB_STATE_EXPIRED),
        ("JOB_STATE_FAILED", JobState.JOB_STATE_FAILED),
        (types.JobState.JOB_STATE_CANCELLED, JobState.JOB_STATE_CANCELLED),
        (types.JobState.JOB_STATE_EXPIRED, JobState.JOB_STATE_EXPIRED),
        ("JOB_STATE_PARTIALLY_SUCCEEDED", JobState.JOB_STATE_PARTIALLY_SUCCEEDED),
        (types.JobState.JOB_STATE_PAUSED, JobState.JOB_STATE_PAUSED),
        ("JOB_STATE_UPDATING", JobState.JOB_STATE_UPDATING),
        ("JOB_STATE_QUEUED", JobState.JOB_STATE_QUEUED),
        ("JOB_STATE_CANCELLING", JobState.JOB_STATE_CANCELLING),
        ("BATCH_STATE_HIBERNATING", JobState.JOB_STATE_UNSPECIFIED),  # a wire value nobody knows yet
        (None, JobState.JOB_STATE_UNSPECIFIED),
        ("nonsense", JobState.JOB_STATE_UNSPECIFIED),
    ],
)
def test_job_state_parse(raw: object, expected: JobState) -> None:
    """Wire BATCH_STATE_*, SDK enums and JOB_STATE_* strings map to one stored value (never str(enum))."""
    parsed = JobState.parse(raw)
    assert parsed is expected
    assert parsed.value == expected.value and not parsed.value.startswith("JobState.")


def test_expired_is_terminal_and_running_is_not() -> None:
    """EXPIRED ends a job (the SDK README's loop forgets it); PENDING and RUNNING do not."""
    assert JobState.JOB_STATE_EXPIRED.terminal
    assert {s for s in JobState if s.terminal} == JOB_TERMINAL
    assert not JobState.JOB_STATE_RUNNING.terminal and not JobState.JOB_STATE_PENDING.terminal


def test_run_states_are_stored_exactly_as_designed() -> None:
    """The run states and their split into active and terminal, as DESIGN.md names them."""
    assert [s.value for s in RunState] == [
        "RECEIVED", "SUBMITTED", "HARVESTING", "SUCCEEDED", "PARTIAL", "FAILED", "CANCELLED",
    ]  # fmt: skip
    assert {RunState.SUCCEEDED, RunState.PARTIAL, RunState.FAILED, RunState.CANCELLED} == RUN_TERMINAL
    assert {RunState.RECEIVED, RunState.SUBMITTED, RunState.HARVESTING} == RUN_ACTIVE
