"""No job state, known or not, keeps a run past its job deadline."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import pytest

from promptdrop.ports import BatchInfo
from promptdrop.states import JobState, RunState
from promptdrop.usecases import poll
from promptdrop.usecases.poll import DEADLINE_GRACE_SECONDS
from tests.functional.conftest import Pipeline, jsonl, read_jsonl


class StuckIn:
    """The real backend, except that every job it reports is stuck in ``state`` and cancels do not take."""

    def __init__(self, real: Any, state: JobState) -> None:
        self.real, self.state = real, state
        self.cancels = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def get_batch(self, name: str) -> BatchInfo:
        return replace(self.real.get_batch(name), state=self.state, results_file=None, inlined_responses=None)

    def cancel_batch(self, name: str) -> None:
        self.cancels += 1


@pytest.mark.parametrize(
    "state", [JobState.JOB_STATE_PAUSED, JobState.JOB_STATE_UPDATING, JobState.JOB_STATE_UNSPECIFIED]
)
def test_a_job_stuck_in_any_state_ends_at_its_deadline(pipeline: Pipeline, state: JobState) -> None:
    """Cancelled at the deadline; still not ended after the grace period, it is given up on and the run ends."""
    ctx = pipeline.context(job_deadline=60, max_attempts=1)
    now = [time.time()]
    ctx.clock = lambda: now[0]
    stuck = StuckIn(ctx.backend, state)
    ctx._backend = stuck  # type: ignore[assignment]
    receipt = pipeline.drop(
        "stuck.jsonl", jsonl({"key": "a", "prompt": "x"}, {"key": "b", "prompt": "y"}), ctx
    )
    assert receipt.run is not None
    run_id = receipt.run.run_id
    poll.tick(ctx, run_ids=[run_id])
    assert not ctx.store.get_run(run_id).state.terminal  # type: ignore[union-attr]
    now[0] += 61  # past the deadline: cancelled, still waiting for the cancel to take
    poll.tick(ctx, run_ids=[run_id])
    assert stuck.cancels == 1
    assert not ctx.store.get_run(run_id).state.terminal  # type: ignore[union-attr]
    now[0] += DEADLINE_GRACE_SECONDS  # the cancel never took: given up on
    run = pipeline.finish(run_id, ctx)
    assert run.state is RunState.FAILED
    entries = read_jsonl(pipeline.outputs(run) / "manifest.jsonl")
    assert [(e["key"], e["error"]["code"]) for e in entries] == [
        ("a", "deadline_exceeded"),
        ("b", "deadline_exceeded"),
    ]
