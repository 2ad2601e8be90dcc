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


# Whether the API documents each state as final (reference §3.6 and §11.2), as literal strings so the table
# stays the authority when members are added to JobState. SUCCEEDED, FAILED, CANCELLED and EXPIRED end a job
# on the Gemini API (EXPIRED: pending or running for over 48 h, no results; the SDK README's loop forgets it).
# PARTIALLY_SUCCEEDED (Vertex) is terminal too: the job ended with some requests failed, nothing more will
# come, and its results are there to harvest; the SDK's `BatchJob.done` forgets it, as it forgets nothing else.
# QUEUED, PENDING, RUNNING, PAUSED, UPDATING and CANCELLING are on the way somewhere; UNSPECIFIED (a missing or
# unknown wire value) is not an end either: the job deadline is what stops a job stuck in it.
DOCUMENTED_TERMINAL: dict[str, bool] = {
    "JOB_STATE_UNSPECIFIED": False,
    "JOB_STATE_QUEUED": False,
    "JOB_STATE_PENDING": False,
    "JOB_STATE_RUNNING": False,
    "JOB_STATE_SUCCEEDED": True,
    "JOB_STATE_FAILED": True,
    "JOB_STATE_CANCELLING": False,
    "JOB_STATE_CANCELLED": True,
    "JOB_STATE_PAUSED": False,
    "JOB_STATE_EXPIRED": True,
    "JOB_STATE_UPDATING": False,
    "JOB_STATE_PARTIALLY_SUCCEEDED": True,
}
# What the Gemini API can answer on the wire (`metadata.state`, reference §3.6): each must be a member.
GEMINI_WIRE_STATES = ["UNSPECIFIED", "PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "EXPIRED"]


def test_the_table_covers_every_state_the_sdk_knows() -> None:
    """A state the SDK adds must be decided here (terminal or not) before the table can be trusted."""
    assert {state.value for state in types.JobState} <= set(DOCUMENTED_TERMINAL)


@pytest.mark.parametrize("wire", GEMINI_WIRE_STATES)
def test_every_gemini_wire_state_is_a_job_state_with_the_documented_finality(wire: str) -> None:
    """Each BATCH_STATE_* the Gemini API sends parses to its own member, terminal exactly as documented."""
    parsed = JobState.parse(f"BATCH_STATE_{wire}")
    assert parsed.value == f"JOB_STATE_{wire}"
    assert parsed.terminal is DOCUMENTED_TERMINAL[parsed.value]


@pytest.mark.parametrize("state", list(JobState), ids=str)
def test_each_job_state_is_terminal_exactly_when_the_api_says_so(state: JobState) -> None:
    """Every state promptdrop stores ends a job (or not) as the API documents: EXPIRED ends one, RUNNING not."""
    assert state.value in DOCUMENTED_TERMINAL, f"{state.value} is not a documented job state"
    assert state.terminal is DOCUMENTED_TERMINAL[state.value]
    assert (state in JOB_TERMINAL) is DOCUMENTED_TERMINAL[state.value]


def test_run_states_are_stored_exactly_as_designed() -> None:
    """The run states and their split into active and terminal, as DESIGN.md names them."""
    assert [s.value for s in RunState] == [
        "RECEIVED", "SUBMITTED", "HARVESTING", "SUCCEEDED", "PARTIAL", "FAILED", "CANCELLED",
    ]  # fmt: skip
    assert {RunState.SUCCEEDED, RunState.PARTIAL, RunState.FAILED, RunState.CANCELLED} == RUN_TERMINAL
    assert {RunState.RECEIVED, RunState.SUBMITTED, RunState.HARVESTING} == RUN_ACTIVE
