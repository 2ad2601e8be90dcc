"""Pay once across unfinished runs: a line whose request another run is paying for now waits for that run
(local path: folder bucket, SQLite, the emulator over HTTP)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from promptdrop.cli import app
from promptdrop.records import Run
from promptdrop.settings import Settings
from promptdrop.states import RunState
from promptdrop.usecases import inflight
from promptdrop.usecases.advance import advance_run
from promptdrop.wiring import build_context
from tests.functional.conftest import Pipeline, jsonl, pipeline_env
from tests.functional.test_pay_once import catalogue, requests_sent


def _drop(pipeline: Pipeline, name: str, lines: list[dict[str, Any]]) -> Run:
    receipt = pipeline.drop(name, jsonl(*lines))
    assert receipt.run is not None
    run = pipeline.ctx.store.get_run(receipt.run.run_id)
    assert run is not None
    return run


def _images(pipeline: Pipeline, run: Run) -> list[str]:
    return sorted(path.name for path in (pipeline.outputs(run) / "images").iterdir())


@pytest.fixture
def slow_pipeline(tmp_path: Path, emulator_factory: Any) -> Pipeline:
    """Batches stay pending for 4 s: a run is cancelled before its batch can have made any image."""
    emulator = emulator_factory(pending_seconds=4.0, running_seconds=1.0)
    home = tmp_path / "home"
    env = pipeline_env(home, emulator.url)
    return Pipeline(home=home, emulator=emulator, env=env, ctx=build_context(Settings.from_env(env)))


def test_an_edited_redrop_while_the_first_run_runs_sends_only_the_edited_lines(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """20 lines submitted; the file re-dropped with 2 edits before the first run ends: the second run sends
    the 2, its 18 others wait and are then served from the first run's images. 22 requests in all."""
    first = _drop(pipeline, "catalogue.jsonl", catalogue(20))
    assert first.state is RunState.SUBMITTED
    second = _drop(pipeline, "catalogue.jsonl", catalogue(20, edited=frozenset({3, 11})))
    assert (second.state, second.waiting, second.waiting_on) == (RunState.SUBMITTED, 18, [first.run_id])
    assert requests_sent(pipeline.emulator) == 22

    # `status` says what waits, and for which run.
    for name, value in pipeline.env.items():
        monkeypatch.setenv(name, value)
    status = CliRunner().invoke(app, ["status", second.run_id])
    assert f"waiting: 18 line(s) wait for run(s) paying for them now: {first.run_id}" in status.output

    # The second run does not end while its lines wait, whatever its own jobs do (advanced alone: a
    # tick would move the first run too).
    for _ in range(8):
        advance_run(pipeline.ctx, second.run_id)
        time.sleep(0.5)
    waiting = pipeline.ctx.store.get_run(second.run_id)
    assert waiting is not None and not waiting.state.terminal and waiting.waiting == 18

    first = pipeline.finish(first.run_id)
    second = pipeline.finish(second.run_id)
    assert (first.state, second.state) == (RunState.SUCCEEDED, RunState.SUCCEEDED)
    assert requests_sent(pipeline.emulator) == 22
    assert len(_images(pipeline, first)) == len(_images(pipeline, second)) == 20
    entries = {e["key"]: e for e in pipeline.manifest(second)}
    paid = sorted(key for key, e in entries.items() if "cached_from" not in e)
    assert paid == ["item-03", "item-11"]
    for key, entry in entries.items():
        assert entry["status"] == "succeeded"
        if key not in paid:
            assert entry["cached_from"] == {"run_id": first.run_id, "key": key}
    assert second.cost.cached == 18 and second.waiting == 0


def test_a_cancelled_payer_leaves_the_waiting_lines_to_the_waiting_run(slow_pipeline: Pipeline) -> None:
    """The first run is cancelled before its batch made anything: the second sends its 18 waiting lines
    itself (one new chunk) and still ends with 20 images, none served from the cancelled run."""
    pipeline = slow_pipeline
    first = _drop(pipeline, "catalogue.jsonl", catalogue(20))
    second = _drop(pipeline, "catalogue.jsonl", catalogue(20, edited=frozenset({3, 11})))
    assert second.waiting == 18
    pipeline.ctx.store.update_run(first.run_id, {"cancel_requested": True})
    first = pipeline.finish(first.run_id)
    assert first.state is RunState.CANCELLED
    assert not (pipeline.outputs(first) / "images").exists()

    second = pipeline.finish(second.run_id)
    assert second.state is RunState.SUCCEEDED
    assert len(_images(pipeline, second)) == 20
    assert not any("cached_from" in e for e in pipeline.manifest(second))
    assert requests_sent(pipeline.emulator) == 20 + 2 + 18
    # The lines it sent are its own now: a third drop is served wholly from its images.
    third = pipeline.finish(
        _drop(pipeline, "catalogue.jsonl", catalogue(20, edited=frozenset({3, 11}))).run_id
    )
    assert requests_sent(pipeline.emulator) == 40
    assert {e["cached_from"]["run_id"] for e in pipeline.manifest(third)} == {second.run_id}


def test_a_run_whose_lines_all_wait_creates_no_job_and_now_lines_wait_too(pipeline: Pipeline) -> None:
    """Both lanes: the same file dropped twice while the first run's batch runs (its now lines answered
    already): the second run sends nothing, creates no job, and is served once the first ends."""
    lines = [*catalogue(4), {"key": "urgent-a", "prompt": "red kite", "lane": "now"}]
    lines.append({"key": "urgent-b", "prompt": "blue boat", "lane": "now"})
    first = _drop(pipeline, "both.jsonl", lines)
    assert first.state is RunState.HARVESTING  # the now lines are answered, the batch runs
    second = _drop(pipeline, "both.jsonl", lines)
    assert second.waiting == 6
    assert pipeline.ctx.store.list_jobs(second.run_id) == []
    first = pipeline.finish(first.run_id)
    second = pipeline.finish(second.run_id)
    assert second.state is RunState.SUCCEEDED
    assert (pipeline.emulator.server.generated, requests_sent(pipeline.emulator)) == (2, 4)
    assert pipeline.ctx.store.list_jobs(second.run_id) == []
    assert {e["cached_from"]["run_id"] for e in pipeline.manifest(second)} == {first.run_id}
    assert len(_images(pipeline, second)) == 6


def test_following_the_waiting_run_alone_moves_the_run_it_waits_for(pipeline: Pipeline) -> None:
    """`run --wait` on a re-drop with no `serve` running ticks only that run: the run it waits for is
    moved along with it, so both end (the waiting run would otherwise wait for ever)."""
    first = _drop(pipeline, "a.jsonl", catalogue(3))
    second = _drop(pipeline, "a.jsonl", catalogue(3))
    assert second.waiting == 3
    second = pipeline.finish(second.run_id)
    assert second.state is RunState.SUCCEEDED
    done = pipeline.ctx.store.get_run(first.run_id)
    assert done is not None and done.state is RunState.SUCCEEDED
    assert requests_sent(pipeline.emulator) == 3


def test_now_lines_whose_payer_left_no_usable_image_are_sent_by_the_waiting_run(pipeline: Pipeline) -> None:
    """The run waited for ends, but the images of its now lines are gone: the waiting run sends those two
    now lines itself (generate calls counted at the emulator) and serves the batch lines."""
    lines = [*catalogue(3), {"key": "urgent-a", "prompt": "red kite", "lane": "now"}]
    lines.append({"key": "urgent-b", "prompt": "blue boat", "lane": "now"})
    first = _drop(pipeline, "mixed.jsonl", lines)
    second = _drop(pipeline, "mixed.jsonl", lines)
    assert (second.waiting, pipeline.emulator.server.generated) == (5, 2)
    first = pipeline.finish(first.run_id)
    for key in ("urgent-a", "urgent-b"):
        (pipeline.outputs(first) / "images" / f"{key}.png").unlink()
    second = pipeline.finish(second.run_id)
    assert second.state is RunState.SUCCEEDED
    assert (pipeline.emulator.server.generated, requests_sent(pipeline.emulator)) == (4, 3)
    entries = {e["key"]: e for e in pipeline.manifest(second)}
    assert sorted(key for key, e in entries.items() if "cached_from" not in e) == ["urgent-a", "urgent-b"]
    assert entries["urgent-a"]["lane"] == "now" and entries["urgent-a"]["status"] == "succeeded"
    assert len(_images(pipeline, second)) == 5


class _Killed(Exception):
    """A process killed mid-step: the writes so far stay, the rest never happen."""


class _KillOnSecondCreate:
    """A job store that 'dies' once, creating the second job of the waiting lines sent later (attempt 1,
    chunk 2 and on: the run's own chunk is 0)."""

    def __init__(self, inner: Any, run_id: str) -> None:
        self.inner, self.run_id, self.created, self.fired = inner, run_id, 0, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def create_job(self, job: Any, **options: Any) -> bool:
        if job.run_id == self.run_id and job.chunk > 0:
            self.created += 1
            if self.created == 2 and not self.fired:
                self.fired = True
                raise _Killed(job.job_id)
        return bool(self.inner.create_job(job, **options))


def test_a_kill_while_creating_the_chunks_of_lines_sent_after_waiting_sends_each_line_once(
    slow_pipeline: Pipeline,
) -> None:
    """The lines the waiting run sends itself go in two chunks; a kill after the first is created: the
    next step finishes the same round (its record written before any job), so no line gets a second chunk."""
    pipeline = slow_pipeline
    ctx = pipeline.context(max_requests_per_job=10)
    first = pipeline.drop("catalogue.jsonl", jsonl(*catalogue(20)), ctx).run
    second = pipeline.drop("catalogue.jsonl", jsonl(*catalogue(20, edited=frozenset({3, 11}))), ctx).run
    assert first is not None and second is not None
    ctx.store.update_run(first.run_id, {"cancel_requested": True})
    assert pipeline.finish(first.run_id, ctx).state is RunState.CANCELLED
    killing = _KillOnSecondCreate(ctx.store, second.run_id)
    done = pipeline.finish(second.run_id, dataclasses.replace(ctx, store=killing))
    assert killing.fired and done.state is RunState.SUCCEEDED
    jobs = ctx.store.list_jobs(second.run_id)
    assert sorted(job.request_count for job in jobs) == [2, 8, 10]
    assert len(pipeline.manifest(done)) == 20 and len(_images(pipeline, done)) == 20
    assert requests_sent(pipeline.emulator) == 20 + 2 + 18


def test_many_waiting_lines_are_resolved_in_rounds_and_sent_ones_in_their_own_chunks(
    slow_pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rounds of at most ROUND_LINES (5 here): the 18 lines of a cancelled payer are sent in 4 rounds, each
    its own chunk, every line once; a call whose time is up stops after one round (the next goes on)."""
    monkeypatch.setattr(inflight, "ROUND_LINES", 5)
    pipeline = slow_pipeline
    first = _drop(pipeline, "catalogue.jsonl", catalogue(20))
    second = _drop(pipeline, "catalogue.jsonl", catalogue(20, edited=frozenset({3, 11})))
    pipeline.ctx.store.update_run(first.run_id, {"cancel_requested": True})
    assert pipeline.finish(first.run_id).state is RunState.CANCELLED
    advance_run(pipeline.ctx, second.run_id, deadline=pipeline.ctx.clock())  # out of time: one round
    one_round = pipeline.ctx.store.get_run(second.run_id)
    assert one_round is not None and (one_round.wait_rounds, one_round.waiting) == (1, 13)
    done = pipeline.finish(second.run_id)
    assert done.state is RunState.SUCCEEDED and done.wait_rounds == 4
    sizes = [job.request_count for job in pipeline.ctx.store.list_jobs(second.run_id)]
    assert sizes == [2, 5, 5, 5, 3]
    assert len(_images(pipeline, done)) == 20
    assert requests_sent(pipeline.emulator) == 20 + 2 + 18
