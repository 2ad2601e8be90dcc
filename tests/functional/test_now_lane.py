"""The now lane, locally: lines marked ``"lane": "now"`` are sent with generate_content at once, while the
batch lines of the same file wait for their batch; one manifest, one summary, cost split by lane."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from promptdrop.adapters.gemini import GeminiBackend
from promptdrop.settings import Settings
from promptdrop.states import JobPhase, RunState
from promptdrop.testing.faultproxy import FaultProxy
from promptdrop.usecases import now_lane
from promptdrop.usecases.advance import advance_run
from promptdrop.wiring import build_context
from tests.functional.conftest import Pipeline, billed, jsonl, pipeline_env


def _lines(batch: int, now: int, *, blocked_now: int = 0) -> bytes:
    items: list[dict[str, Any]] = [
        {"key": f"b{i:02d}", "prompt": f"a batch picture {i}"} for i in range(batch)
    ]
    for i in range(now):
        marker = " [[emulator:safety]]" if i < blocked_now else ""
        items.append({"key": f"n{i}", "prompt": f"an urgent picture {i}{marker}", "lane": "now"})
    return jsonl(*items)


def _images(pipeline: Pipeline, run_id: str) -> set[str]:
    folder = pipeline.bucket / "outputs" / run_id / "images"
    return {path.stem for path in folder.glob("*.png")} if folder.exists() else set()


@pytest.fixture
def slow_batches(tmp_path: Path, emulator_factory: Any) -> Pipeline:
    """Batches that take 6 s on the emulator; a generateContent call takes 0.2 s."""
    emulator = emulator_factory("slow", pending_seconds=0.5, running_seconds=6.0, generate_seconds=0.2)
    home = tmp_path / "home"
    env = pipeline_env(home, emulator.url)
    return Pipeline(home=home, emulator=emulator, env=env, ctx=build_context(Settings.from_env(env)))


def test_now_lines_land_before_the_batch_ends_and_the_run_settles_with_both_lanes(
    slow_batches: Pipeline,
) -> None:
    pipeline = slow_batches
    receipt = pipeline.drop("mixed.jsonl", _lines(20, 3, blocked_now=1))
    assert receipt.run is not None
    run_id = receipt.run.run_id
    # The trigger's own advance submitted the run, launched the batch and sent the now lines.
    jobs = pipeline.ctx.store.list_jobs(run_id)
    batch_jobs = [job for job in jobs if job.lane == "batch"]
    now_jobs = [job for job in jobs if job.lane == "now"]
    assert len(batch_jobs) == 1 and batch_jobs[0].phase is JobPhase.ACTIVE
    assert [job.phase for job in now_jobs] == [JobPhase.DONE]
    # The batch has not ended on the emulator, yet the two good now images are in the bucket.
    batch = pipeline.ctx.backend.get_batch(batch_jobs[0].batch_name or "")
    assert not batch.done
    assert _images(pipeline, run_id) == {"n1", "n2"}

    final = pipeline.finish(run_id)
    assert final.state is RunState.PARTIAL
    assert len(_images(pipeline, run_id)) == 22
    entries = pipeline.manifest(final)
    assert len(entries) == 23
    lanes = {entry["key"]: entry["lane"] for entry in entries}
    assert [key for key, lane in lanes.items() if lane == "now"] == ["n0", "n1", "n2"]
    assert all(lane == "batch" for key, lane in lanes.items() if key.startswith("b"))
    blocked = next(entry for entry in entries if entry["key"] == "n0")
    assert blocked["status"] == "failed" and blocked["finish_reason"] == "IMAGE_SAFETY"
    errors = [
        orjson.loads(line) for line in (pipeline.outputs(final) / "errors.jsonl").read_bytes().splitlines()
    ]
    assert [(error["key"], error["lane"]) for error in errors] == [("n0", "now")]

    summary = orjson.loads((pipeline.outputs(final) / "summary.json").read_bytes())
    cost = summary["cost"]
    model = pipeline.ctx.settings.model
    batch_entries = [entry for entry in entries if entry["lane"] == "batch"]
    now_entries = [entry for entry in entries if entry["lane"] == "now"]
    batch_cost, batch_interactive = billed(batch_entries, model)
    _, now_cost = billed(now_entries, model)
    assert cost["batch"] == pytest.approx(batch_cost, abs=1e-6)
    assert cost["interactive"] == pytest.approx(batch_interactive, abs=1e-6)
    assert cost["saved"] == pytest.approx(batch_interactive - batch_cost, abs=1e-6)  # batch lines only
    assert cost["now"] == pytest.approx(now_cost, abs=1e-6)  # interactive price
    assert cost["now"] > 0
    assert cost["total"] == pytest.approx(batch_cost + now_cost, abs=1e-6)
    assert summary["lanes"] == {"now": {"lines": 3}}


def test_a_file_of_now_lines_only_creates_no_batch_job(pipeline: Pipeline) -> None:
    receipt = pipeline.drop(
        "urgent.jsonl", jsonl({"defaults": {"lane": "now"}}, *[{"prompt": f"p{i}"} for i in range(3)])
    )
    assert receipt.run is not None
    final = pipeline.finish(receipt.run.run_id)
    assert final.state is RunState.SUCCEEDED
    assert all(job.lane == "now" for job in pipeline.ctx.store.list_jobs(final.run_id))
    assert list(pipeline.emulator.client().batches.list()) == []
    assert [entry["lane"] for entry in pipeline.manifest(final)] == ["now"] * 3
    summary = orjson.loads((pipeline.outputs(final) / "summary.json").read_bytes())
    assert summary["cost"]["batch"] == 0 and summary["cost"]["saved"] == 0 and summary["cost"]["now"] > 0


def test_the_now_cap_refuses_the_run_before_any_call(pipeline: Pipeline) -> None:
    ctx = pipeline.context(max_now_lines=2)
    receipt = pipeline.drop("too-urgent.jsonl", _lines(2, 3), ctx)
    assert receipt.run is not None
    run = ctx.store.get_run(receipt.run.run_id)
    assert run is not None and run.state is RunState.FAILED
    assert run.reason is not None and "PROMPTDROP_MAX_NOW_LINES=2" in run.reason
    assert "line 5 is number 3" in run.reason
    assert ctx.store.list_jobs(run.run_id) == []
    assert list(pipeline.emulator.client().batches.list()) == []
    assert pipeline.emulator.server.generated == 0
    entries = pipeline.manifest(run)
    assert len(entries) == 5
    assert {entry["error"]["code"] for entry in entries} == {"too_many_now_lines"}
    assert not _images(pipeline, run.run_id)


def test_a_kill_mid_lane_neither_loses_nor_resends_an_answered_line(
    tmp_path: Path, emulator_factory: Any
) -> None:
    """The worker dies (its thread stops at the 3rd call); the next advance sends only the unanswered lines."""
    emulator = emulator_factory("kill", generate_seconds=0.05)
    home = tmp_path / "home"
    env = pipeline_env(home, emulator.url, PROMPTDROP_NOW_CONCURRENCY="1", PROMPTDROP_LEASE_SECONDS="1")
    ctx = build_context(Settings.from_env(env))
    pipeline = Pipeline(home=home, emulator=emulator, env=env, ctx=ctx)
    backend = ctx.backend
    sent: list[str] = []
    real_generate = backend.generate_content

    class Killed(BaseException):
        """Stands for the process dying mid-call: nothing after it runs in that worker."""

    def dying_generate(
        *, model: str, request: dict[str, Any], timeout: float | None = None
    ) -> dict[str, Any]:
        prompt = request["contents"][0]["parts"][0]["text"]
        sent.append(prompt)
        if len(sent) == 3:
            raise Killed
        return real_generate(model=model, request=request, timeout=timeout)

    backend.generate_content = dying_generate  # type: ignore[method-assign]
    with pytest.raises(Killed):
        pipeline.drop("kill.jsonl", _lines(0, 5))
    run = next(iter(ctx.store.list_runs()))
    assert _images(pipeline, run.run_id) == {"n0", "n1"}
    backend.generate_content = real_generate  # type: ignore[method-assign]
    time.sleep(1.1)  # the dead worker's lease lapses
    final = pipeline.finish(run.run_id)
    assert final.state is RunState.SUCCEEDED
    # n0, n1 answered once; n2 was sent when the worker died (its answer lost) and is sent again.
    assert emulator.server.generated == 2 + 3
    entries = pipeline.manifest(final)
    assert sorted(entry["key"] for entry in entries) == [f"n{i}" for i in range(5)]
    assert _images(pipeline, run.run_id) == {f"n{i}" for i in range(5)}


def test_a_now_line_failing_retryably_is_retried_in_the_now_lane(
    tmp_path: Path, emulator_factory: Any
) -> None:
    """A 500 on every try: each attempt goes to the now lane again (never to a batch), then the line fails."""
    emulator = emulator_factory("failing")
    home = tmp_path / "home"
    env = pipeline_env(home, emulator.url)
    ctx = build_context(Settings.from_env(env))
    # The SDK's own retries, shortened: one try per attempt keeps the test fast.
    ctx.backend_holder.set(GeminiBackend("k", base_url=emulator.url, retry_attempts=1))  # type: ignore[union-attr]
    pipeline = Pipeline(home=home, emulator=emulator, env=env, ctx=ctx)
    receipt = pipeline.drop(
        "retry.jsonl", jsonl({"key": "n", "prompt": "x [[emulator:error=13]]", "lane": "now"})
    )
    assert receipt.run is not None
    final = pipeline.finish(receipt.run.run_id)
    assert final.state is RunState.FAILED
    jobs = ctx.store.list_jobs(final.run_id)
    assert [(job.attempt, job.lane) for job in jobs] == [(1, "now"), (2, "now"), (3, "now")]
    assert list(emulator.client().batches.list()) == []
    (entry,) = pipeline.manifest(final)
    assert (entry["lane"], entry["attempts"], entry["error"]["retryable"]) == ("now", 3, True)
    assert emulator.server.generated == 3  # one call per attempt, each answered 500


def _generate_calls(emulator: Any) -> int:
    """generateContent calls the emulator received (counted on arrival, whether or not the client waited)."""
    calls: dict[str, int] = emulator.server.stats()["calls_by_route"]
    return calls.get("generate", 0)


def test_a_now_line_never_answered_in_time_is_sent_at_most_max_attempts_times_and_fails(
    tmp_path: Path, emulator_factory: Any
) -> None:
    """The emulator answers in 2.5 s, the call waits 1 s: every send is lost. Each line is sent
    PROMPTDROP_MAX_ATTEMPTS times (counted before each call, none retried by the SDK), then fails
    ``no_answer``, and the run ends."""
    emulator = emulator_factory("slow-answers", generate_seconds=2.5)
    home = tmp_path / "home"
    env = pipeline_env(
        home,
        emulator.url,
        PROMPTDROP_API_TIMEOUT="1",
        PROMPTDROP_MAX_ATTEMPTS="3",
        PROMPTDROP_NOW_CONCURRENCY="2",
    )
    pipeline = Pipeline(home=home, emulator=emulator, env=env, ctx=build_context(Settings.from_env(env)))
    receipt = pipeline.drop("late.jsonl", _lines(0, 2))
    assert receipt.run is not None
    final = pipeline.finish(receipt.run.run_id, ticks=8)
    assert final.state is RunState.FAILED
    assert _generate_calls(emulator) == 2 * 3  # no line can end no_answer with fewer than 3 sends
    entries = pipeline.manifest(final)
    assert sorted(entry["key"] for entry in entries) == ["n0", "n1"]
    for entry in entries:
        assert (entry["status"], entry["lane"], entry["error"]["code"]) == ("failed", "now", "no_answer")
        assert entry["error"]["retryable"] is False
        assert "3 sends" in entry["error"]["message"] and "1 s" in entry["error"]["message"]
    assert not _images(pipeline, final.run_id)
    # Nothing is sent again by later ticks.
    pipeline.finish(final.run_id)
    assert _generate_calls(emulator) == 6


def test_a_now_call_ends_when_the_time_budget_does(
    tmp_path: Path, emulator_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call's timeout is cut to the time budget left (not the fixed PROMPTDROP_API_TIMEOUT): the emulator
    answers in 8 s, the advance has 3 s left, so the call gives up at the budget's end and is counted."""
    monkeypatch.setattr(now_lane, "CALL_MARGIN_SECONDS", 1.0)  # a budget of seconds, not minutes
    emulator = emulator_factory("slow-now", generate_seconds=8.0)
    home = tmp_path / "home"
    env = pipeline_env(home, emulator.url, PROMPTDROP_API_TIMEOUT="120")
    # The trigger only claims (the file is over its size), so the advance below sends the line.
    ctx = build_context(Settings.from_env(env, submit_on_claim_max_bytes=1))
    pipeline = Pipeline(home=home, emulator=emulator, env=env, ctx=ctx)
    receipt = pipeline.drop("budget.jsonl", _lines(0, 1), ctx)
    assert receipt.run is not None
    started = time.monotonic()
    result = advance_run(ctx, receipt.run.run_id, time.time() + 3.0)
    elapsed = time.monotonic() - started
    assert elapsed < 5.0, f"the advance ran {elapsed:.1f} s past a 3 s budget"
    assert result.outcome == "failed" and "timed out" in (
        result.error or ""
    )  # sent again by the next advance
    (job,) = ctx.store.list_jobs(receipt.run.run_id)
    assert job.lane == "now" and job.phase is JobPhase.ACTIVE
    assert list(job.now_sends.values()) == [1]
    assert _generate_calls(emulator) == 1


def test_a_refused_now_call_is_sent_again_at_once_and_not_counted_as_a_send(
    tmp_path: Path, emulator_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """429 says the API did not take the call: sent again in the same advance after a pause, and not
    counted against PROMPTDROP_MAX_ATTEMPTS (1 here: a counted refusal would leave a single try)."""
    monkeypatch.setattr(now_lane, "REFUSED_FIRST_PAUSE", 0.05)
    emulator = emulator_factory("refusing")
    home = tmp_path / "home"
    env = pipeline_env(home, emulator.url, PROMPTDROP_MAX_ATTEMPTS="1")
    pipeline = Pipeline(home=home, emulator=emulator, env=env, ctx=build_context(Settings.from_env(env)))
    receipt = pipeline.drop(
        "busy.jsonl", jsonl({"key": "n", "prompt": "x [[emulator:error=8]]", "lane": "now"})
    )
    assert receipt.run is not None
    (job,) = pipeline.ctx.store.list_jobs(receipt.run.run_id)
    assert job.phase is JobPhase.DONE  # the trigger's own advance tried it REFUSED_TRIES times
    assert _generate_calls(emulator) == now_lane.REFUSED_TRIES
    assert set(job.now_sends.values()) == {0}
    final = pipeline.finish(receipt.run.run_id)
    (entry,) = pipeline.manifest(final)
    assert entry["error"]["code"] != "no_answer" and "429" in entry["error"]["message"]
    assert _generate_calls(emulator) == now_lane.REFUSED_TRIES


def test_the_send_bound_holds_over_the_runs_attempts(tmp_path: Path, emulator_factory: Any) -> None:
    """Sends of a line add up over attempts: one answer lost (counted), then a 500 (retryable) in attempt
    1, one more 500 in attempt 2, and the line is not sent a 4th time: it fails, not retryable, saying why."""
    emulator = emulator_factory("lossy")
    home = tmp_path / "home"
    with FaultProxy.for_address(emulator.url) as proxy:
        env = pipeline_env(home, emulator.url, PROMPTDROP_NOW_BASE_URL=proxy.url, PROMPTDROP_MAX_ATTEMPTS="3")
        pipeline = Pipeline(home=home, emulator=emulator, env=env, ctx=build_context(Settings.from_env(env)))
        proxy.cut_after(0, request=b"POST ")  # the first call's answer is lost after the API took it
        receipt = pipeline.drop(
            "lossy.jsonl", jsonl({"key": "n", "prompt": "x [[emulator:error=13]]", "lane": "now"})
        )
        assert receipt.run is not None
        final = pipeline.finish(receipt.run.run_id)
    assert final.state is RunState.FAILED
    assert _generate_calls(emulator) == 3
    jobs = pipeline.ctx.store.list_jobs(final.run_id)
    assert [(job.attempt, list(job.now_sends.values())) for job in jobs] == [(1, [2]), (2, [1])]
    (entry,) = pipeline.manifest(final)
    assert entry["error"]["retryable"] is False and "sent 3 times" in entry["error"]["message"]
