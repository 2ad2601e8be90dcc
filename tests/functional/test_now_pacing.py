"""The now lane's spend rate, against the emulator over HTTP: calls paced under the spend per rolling window
(PROMPTDROP_NOW_SPEND_PER_10_MIN), shared by every process through the job store, and a 429
RESOURCE_EXHAUSTED waited out as its RetryInfo says, not counted as a send."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from promptdrop import pacing
from promptdrop.models import DEFAULT_MODEL
from promptdrop.settings import Settings
from promptdrop.states import JobPhase, RunState
from promptdrop.usecases import now_lane
from promptdrop.usecases.advance import advance_run
from promptdrop.wiring import build_context
from tests.functional.conftest import Pipeline, jsonl, pipeline_env

WINDOW = 3.0  # seconds: the test's "10 minutes"
# The window counts when a call is let go; it reaches the emulator a little later (the first one of a process
# builds its client first), so arrivals of two windows may be this much closer than the window.
SLACK = 0.4
LIMIT = 0.30  # USD per window: two calls of the default model at 1K ($0.134 each), not three


def _now_lines(count: int, prefix: str = "n") -> bytes:
    return jsonl(
        *[
            {"key": f"{prefix}{i}", "prompt": f"an urgent picture {prefix}{i}", "lane": "now"}
            for i in range(count)
        ]
    )


def _most_in_one_window(arrivals: list[float], window: float) -> int:
    """The most calls that arrived within any span shorter than ``window`` (less ``SLACK``).

    Arrivals are the emulator's clock, after each call's own delays: on a loaded machine a pair let go at the
    end of one window can arrive with the next pair, so the tests allow two pairs in one window and prove the
    pacing by the span of the calls (unpaced, all arrive within a fraction of a second)."""
    return max(sum(start <= other < start + window - SLACK for other in arrivals) for start in arrivals)


def _pipeline(tmp_path: Path, emulator: Any, *, claim_only: bool = False, **env_extra: str) -> Pipeline:
    """A local deployment on ``emulator``; ``claim_only``: the trigger claims a file and sends nothing (the
    test's own advance does, with the deadline it chooses)."""
    home = tmp_path / "home"
    env = pipeline_env(home, emulator.url, **env_extra)
    overrides: dict[str, Any] = {"submit_on_claim_max_bytes": 1} if claim_only else {}
    return Pipeline(
        home=home, emulator=emulator, env=env, ctx=build_context(Settings.from_env(env, **overrides))
    )


def _advance_once(pipeline: Pipeline, lines: int, budget: float) -> tuple[str, float]:
    """Claim a file of now lines, advance its run once with ``budget`` seconds: (run id, seconds taken)."""
    receipt = pipeline.drop("urgent.jsonl", _now_lines(lines))
    assert receipt.run is not None
    started = time.monotonic()
    advance_run(pipeline.ctx, receipt.run.run_id, time.time() + budget)
    return receipt.run.run_id, time.monotonic() - started


@pytest.fixture
def short_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pacing, "SPEND_WINDOW_SECONDS", WINDOW)
    price = pacing.call_price(DEFAULT_MODEL, {"contents": [{"parts": [{"text": "an urgent picture n0"}]}]})
    assert 2 * price <= LIMIT < 3 * price  # the figures below rest on this


def test_now_calls_are_spread_under_the_spend_per_window_and_the_run_ends(
    tmp_path: Path, emulator_factory: Any, short_window: None
) -> None:
    """Six now lines, four calls at a time, $0.30 per 3 s window: two calls per window (at about 0, 3 and
    6 s), never three, and the run succeeds with all six images."""
    emulator = emulator_factory("paced")
    pipeline = _pipeline(tmp_path, emulator, PROMPTDROP_NOW_SPEND_PER_10_MIN=str(LIMIT))
    started = time.monotonic()
    receipt = pipeline.drop("urgent.jsonl", _now_lines(6))
    assert receipt.run is not None
    final = pipeline.finish(receipt.run.run_id)
    assert final.state is RunState.SUCCEEDED
    arrivals = emulator.server.generate_arrivals
    assert len(arrivals) == 6
    assert _most_in_one_window(arrivals, WINDOW) <= 4
    assert max(arrivals) - min(arrivals) >= 2 * WINDOW - SLACK  # three windows' worth
    assert time.monotonic() - started < 6 * WINDOW  # paced, not stuck
    assert sorted(entry["status"] for entry in pipeline.manifest(final)) == ["succeeded"] * 6


def test_two_processes_share_one_spend_window(
    tmp_path: Path, emulator_factory: Any, short_window: None
) -> None:
    """Two workers (own contexts, own SQLite connections, one state file) send the now lines of two runs at
    the same time: together they stay at two calls per window, as the project's limit counts them."""
    emulator = emulator_factory("paced-shared")
    home = tmp_path / "home"
    env = pipeline_env(home, emulator.url, PROMPTDROP_NOW_SPEND_PER_10_MIN=str(LIMIT))
    first, second = (build_context(Settings.from_env(env, submit_on_claim_max_bytes=1)) for _ in range(2))
    pipeline = Pipeline(home=home, emulator=emulator, env=env, ctx=first)
    runs = [
        pipeline.drop("a.jsonl", _now_lines(3, "a"), first),
        pipeline.drop("b.jsonl", _now_lines(3, "b"), second),
    ]
    run_ids = [receipt.run.run_id for receipt in runs if receipt.run is not None]
    assert len(run_ids) == 2 and emulator.server.generate_arrivals == []  # only claimed so far

    def finish(index: int) -> None:
        pipeline.finish(run_ids[index], (first, second)[index])

    workers = [threading.Thread(target=finish, args=(index,)) for index in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert all(first.store.get_run(run_id).state is RunState.SUCCEEDED for run_id in run_ids)  # type: ignore[union-attr]
    arrivals = emulator.server.generate_arrivals
    assert len(arrivals) == 6
    assert _most_in_one_window(arrivals, WINDOW) <= 4
    assert max(arrivals) - min(arrivals) >= 2 * WINDOW - SLACK  # one window for both, not one each


def test_a_429_with_retry_info_waits_as_long_as_it_says_and_is_not_a_send(
    tmp_path: Path, emulator_factory: Any
) -> None:
    """The emulator refuses the first call with 429 RESOURCE_EXHAUSTED and a RetryInfo of 2 s: the line is
    sent again about 2 s later (not after the fixed 1 s pause), and succeeds although
    PROMPTDROP_MAX_ATTEMPTS=1 (the refusal was not counted as a send)."""
    emulator = emulator_factory("spend-limited", generate_refusals=1, generate_retry_seconds=2.0)
    pipeline = _pipeline(tmp_path, emulator, PROMPTDROP_MAX_ATTEMPTS="1")
    receipt = pipeline.drop("urgent.jsonl", _now_lines(1))
    assert receipt.run is not None
    (job,) = pipeline.ctx.store.list_jobs(receipt.run.run_id)
    assert job.phase is JobPhase.DONE  # the trigger's own advance waited and sent it again
    first, second = emulator.server.generate_arrivals
    assert 1.9 <= second - first < 3.0, f"sent again after {second - first:.2f} s"
    assert list(job.now_sends.values()) == [1]
    assert emulator.server.generated == 1  # one call billed
    final = pipeline.finish(receipt.run.run_id)
    assert final.state is RunState.SUCCEEDED


def test_a_429_without_retry_info_waits_the_fixed_pause(
    tmp_path: Path, emulator_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No RetryInfo in the refusal: the first pause of the doubling series (REFUSED_FIRST_PAUSE)."""
    monkeypatch.setattr(now_lane, "REFUSED_FIRST_PAUSE", 0.5)
    emulator = emulator_factory("refused-plain", generate_refusals=1, generate_retry_seconds=0.0)
    pipeline = _pipeline(tmp_path, emulator, PROMPTDROP_MAX_ATTEMPTS="1")
    receipt = pipeline.drop("urgent.jsonl", _now_lines(1))
    assert receipt.run is not None
    first, second = emulator.server.generate_arrivals
    assert 0.45 <= second - first < 1.5
    assert pipeline.finish(receipt.run.run_id).state is RunState.SUCCEEDED


def test_a_retry_info_longer_than_the_time_budget_pauses_the_chunk_for_the_next_advance(
    tmp_path: Path, emulator_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RetryInfo says 4 s, the advance has 2 s: it returns at once (the chunk paused, nothing counted),
    and a later advance sends the line."""
    monkeypatch.setattr(now_lane, "CALL_MARGIN_SECONDS", 0.5)
    emulator = emulator_factory("long-retry", generate_refusals=1, generate_retry_seconds=4.0)
    pipeline = _pipeline(tmp_path, emulator, claim_only=True)
    run_id, elapsed = _advance_once(pipeline, 1, budget=2.0)
    assert elapsed < 1.5
    (job,) = pipeline.ctx.store.list_jobs(run_id)
    assert job.phase is JobPhase.ACTIVE and set(job.now_sends.values()) <= {0}
    assert len(emulator.server.generate_arrivals) == 1
    assert pipeline.finish(run_id).state is RunState.SUCCEEDED
    assert len(emulator.server.generate_arrivals) == 2


def test_a_spend_wait_longer_than_the_time_budget_pauses_the_chunk(
    tmp_path: Path, emulator_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One call fits the window ($0.20 per 60 s), the second would wait about 60 s: an advance with 3 s sends
    the first, leaves the second to the next advance, and returns within its budget."""
    monkeypatch.setattr(pacing, "SPEND_WINDOW_SECONDS", 60.0)
    monkeypatch.setattr(now_lane, "CALL_MARGIN_SECONDS", 0.5)
    emulator = emulator_factory("paced-budget")
    pipeline = _pipeline(tmp_path, emulator, claim_only=True, PROMPTDROP_NOW_SPEND_PER_10_MIN="0.2")
    run_id, elapsed = _advance_once(pipeline, 2, budget=3.0)
    assert elapsed < 2.5
    (job,) = pipeline.ctx.store.list_jobs(run_id)
    assert job.phase is JobPhase.ACTIVE
    assert sum(job.now_sends.values()) == 1 and len(emulator.server.generate_arrivals) == 1
