"""The holes of issue 10, each shown closed on whole runs: embedded adapters, the real SDK, the emulator.

Backends that misbehave wrap the real one (the emulator over HTTP) and change one call; everything else is real.
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from promptdrop.cli import InboxWatcher
from promptdrop.errors import (
    AmbiguousCreateError,
    BackendPermanentError,
    BackendTransientError,
    PreconditionFailedError,
)
from promptdrop.events import StorageObject
from promptdrop.names import candidate_run_ids, file_claim_key
from promptdrop.ports import BatchInfo
from promptdrop.records import Run, RunSource
from promptdrop.settings import Settings
from promptdrop.states import JobPhase, RunState
from promptdrop.usecases import advance, leases, poll, receive, settle
from promptdrop.usecases.context import Context
from promptdrop.usecases.jobs import MAX_CREATE_RECOVERIES
from tests.functional.conftest import Pipeline, jsonl, read_jsonl

TWO = jsonl({"key": "a", "prompt": "one"}, {"key": "b", "prompt": "two"})


class Wrapped:
    """The real backend, with the calls a subclass overrides changed; ``calls`` counts every call by name."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        self.calls[name] = self.calls.get(name, 0) + 1
        return getattr(self.real, name)


def use_backend(ctx: Context, backend: Any) -> None:
    assert ctx.backend_holder is not None
    ctx.backend_holder.set(backend)


def batches_named(pipeline: Pipeline, display_name: str) -> list[Any]:
    client = pipeline.emulator.client()
    return [b for b in client.batches.list(config={"page_size": 100}) if b.display_name == display_name]


def summary(pipeline: Pipeline, run: Run) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads((pipeline.outputs(run) / "summary.json").read_bytes())
    return data


# 1. Run id collisions


def test_hole1_taken_run_id_with_another_claim_gets_a_longer_id(pipeline: Pipeline) -> None:
    """A run id already held by another claim (a hash-prefix collision) gives the new upload a longer id."""
    ctx = pipeline.ctx
    info_name = ctx.settings.inbox_prefix + "cats.jsonl"
    ctx.blobs.write_bytes(info_name, TWO)
    info = ctx.blobs.stat(info_name)
    assert info is not None
    claim = file_claim_key(ctx.settings.bucket_name, info_name, info.generation)
    short_id, longer_id, _ = candidate_run_ids("cats", claim)
    squatter = Run(
        run_id=short_id,
        claim_key="file:elsewhere/inbox/cats.jsonl#1",  # another claim whose hash starts alike
        state=RunState.SUCCEEDED,
        source=RunSource(kind="file", object="inbox/cats.jsonl", generation="1", name="cats"),
        input_object=f"outputs/{short_id}/_work/input.jsonl",
        output_folder=f"outputs/{short_id}/",
        model=ctx.settings.model,
        created_at=1.0,
        updated_at=1.0,
    )
    assert ctx.store.create_run(squatter)

    receipt = receive.receive_file(
        ctx, StorageObject(ctx.settings.bucket_name, info_name, info.generation, info.size)
    )
    assert receipt.created and receipt.run is not None
    assert receipt.run.run_id == longer_id and receipt.run.claim_key == claim
    run = pipeline.finish(longer_id)
    assert run.state is RunState.SUCCEEDED and len(pipeline.manifest(run)) == 2
    again = receive.receive_file(
        ctx, StorageObject(ctx.settings.bucket_name, info_name, info.generation, info.size)
    )
    assert not again.created and again.run is not None and again.run.run_id == longer_id
    assert ctx.store.get_run(short_id) == squatter


# 2. Every failure ends somewhere


def test_hole2_results_file_gone_for_good_fails_the_lines_instead_of_retrying_forever(
    pipeline: Pipeline,
) -> None:
    """A results file the Files API no longer has (permanent error) ends the job; its lines are retried, then fail."""

    class Gone(Wrapped):
        def download_file(self, file_name: str, destination: Any, **kwargs: Any) -> None:
            raise BackendPermanentError(f"download {file_name} failed: HTTP 404 (File not found)")

    use_backend(pipeline.ctx, Gone(pipeline.ctx.backend))
    receipt = pipeline.drop("gone.jsonl", TWO)
    assert receipt.run is not None
    run = pipeline.finish(receipt.run.run_id, ticks=60)
    assert run.state is RunState.FAILED
    entries = pipeline.manifest(run)
    assert [(e["key"], e["error"]["code"], e["attempts"]) for e in entries] == [
        ("a", "results_lost", 3),
        ("b", "results_lost", 3),
    ]


def test_hole2_permanent_upload_failure_ends_the_job_without_list_scans(pipeline: Pipeline) -> None:
    """An upload refused for good fails its job (no job left CREATING) and no tick pays a batches.list scan."""

    class Refused(Wrapped):
        def upload_file(self, source: Any, **kwargs: Any) -> Any:
            raise BackendPermanentError("upload refused: HTTP 400 (file too large)")

    backend = Refused(pipeline.ctx.backend)
    use_backend(pipeline.ctx, backend)
    receipt = pipeline.drop("refused.jsonl", TWO)
    assert receipt.run is not None
    run = pipeline.finish(receipt.run.run_id, ticks=30)
    assert run.state is RunState.FAILED
    assert {e["error"]["code"] for e in pipeline.manifest(run)} == {"job_failed"}
    assert "upload refused" in pipeline.manifest(run)[0]["error"]["message"]
    assert backend.calls.get("find_batches", 0) + backend.calls.get("find_batch", 0) == 0
    assert all(job.phase is JobPhase.DONE for job in pipeline.ctx.store.list_jobs(run.run_id))


def test_hole2_a_job_stuck_creating_gives_up_after_bounded_recoveries(pipeline: Pipeline) -> None:
    """A create that never lands and is never found is retried a bounded number of times, then the run ends."""

    class NeverLands(Wrapped):
        def create_batch(self, **kwargs: Any) -> BatchInfo:
            self.calls["create_batch"] = self.calls.get("create_batch", 0) + 1
            raise AmbiguousCreateError("create timed out")

        def find_batches(self, display_name: str) -> list[BatchInfo]:
            self.calls["find_batches"] = self.calls.get("find_batches", 0) + 1
            return []

    backend = NeverLands(pipeline.ctx.backend)
    use_backend(pipeline.ctx, backend)
    now = [time.time()]
    ctx = dataclasses.replace(pipeline.ctx, clock=lambda: now[0])
    receipt = pipeline.drop("stuck.jsonl", TWO, ctx)
    assert receipt.run is not None
    for _ in range(200):
        now[0] += 1000.0  # each tick comes after the create timeout and its margin have passed
        poll.tick(ctx, run_ids=[receipt.run.run_id])
        run = ctx.store.get_run(receipt.run.run_id)
        assert run is not None
        if run.state.terminal:
            break
    assert run.state is RunState.FAILED
    attempts = ctx.settings.max_attempts
    assert backend.calls["create_batch"] == attempts * (MAX_CREATE_RECOVERIES + 1)
    assert "gave up creating" in pipeline.manifest(run)[0]["error"]["message"]


# 3. A finished run's own reason


def test_hole3_finished_run_reports_its_own_reason_not_a_stale_retry(pipeline: Pipeline) -> None:
    """A transient upload failure after submission leaves no "retrying: ..." in the finished run's summary."""

    class FlakyOnce(Wrapped):
        failed = False

        def upload_file(self, source: Any, **kwargs: Any) -> Any:
            if not self.failed:
                self.failed = True
                raise BackendTransientError("upload x failed: HTTP 503")
            return self.real.upload_file(source, **kwargs)

    use_backend(pipeline.ctx, FlakyOnce(pipeline.ctx.backend))
    receipt = pipeline.drop("flaky.jsonl", TWO)
    assert receipt.run is not None
    run = pipeline.finish(receipt.run.run_id)
    assert run.state is RunState.SUCCEEDED
    assert run.reason is None and summary(pipeline, run)["reason"] is None
    assert run.next_attempt_at == 0.0


def test_hole3_partial_run_says_what_failed() -> None:
    """The reason of a run that ended PARTIAL or FAILED is computed from its own counts."""
    from promptdrop.manifest import final_reason
    from promptdrop.records import Counts

    counts = Counts(lines=4, valid=3, invalid=1, succeeded=2, failed=1)
    assert final_reason(RunState.PARTIAL, counts) == "1 failed and 1 invalid of 4 lines"
    assert final_reason(RunState.SUCCEEDED, counts) is None
    assert final_reason(RunState.CANCELLED, counts) == "cancelled on request"
    assert final_reason(RunState.FAILED, counts, refused="over budget") == "over budget"


# 4. Fencing


def test_hole4_settle_of_a_run_another_worker_ended_changes_nothing(pipeline: Pipeline) -> None:
    """A stale worker settling a run that has already ended neither rewrites its record nor publishes again."""
    receipt = pipeline.drop("fenced.jsonl", TWO)
    assert receipt.run is not None and receipt.run.state is RunState.SUBMITTED
    stale = receipt.run
    done = pipeline.finish(stale.run_id)
    events = read_jsonl(pipeline.home / "events.jsonl")
    result = settle.settle_run(pipeline.ctx, stale)
    assert result.state is RunState.SUCCEEDED
    assert pipeline.ctx.store.get_run(stale.run_id) == done
    assert read_jsonl(pipeline.home / "events.jsonl") == events


def test_hole4_a_worker_that_lost_its_lease_cannot_write(pipeline: Pipeline) -> None:
    """Once another worker has taken the run's lease, every write of the first one is refused."""
    receipt = pipeline.drop("lease.jsonl", TWO)
    assert receipt.run is not None
    run_id = receipt.run.run_id
    ctx = pipeline.ctx
    assert leases.acquire(ctx, run_id)
    fenced = leases.fenced(ctx)
    fenced.store.update_run(run_id, {"submit_attempts": 1})  # ours: fine
    far = time.time() + 10 * ctx.settings.lease_seconds  # our lease has expired by then
    assert ctx.store.acquire_lease(run_id, "another-worker", ctx.settings.lease_seconds, far)
    (job,) = ctx.store.list_jobs(run_id)
    with pytest.raises(PreconditionFailedError):
        fenced.store.update_run(run_id, {"submit_attempts": 2})
    with pytest.raises(PreconditionFailedError):
        fenced.store.update_job(job.job_id, {"error": "stale"})
    current = ctx.store.get_run(run_id)
    assert current is not None and current.submit_attempts == 1
    assert ctx.store.list_jobs(run_id)[0].error is None


def test_hole4_two_calls_in_one_process_do_not_work_one_run_together(pipeline: Pipeline) -> None:
    """Overlapping invocations in one function instance share a process, not a lease: the second is skipped.

    With a lease owner per process, the second call "renewed" the first one's lease, found the job CREATING
    without a recorded create and created it again: the batch was paid twice.
    """

    class SlowUpload(Wrapped):
        def __init__(self, real: Any) -> None:
            super().__init__(real)
            self.entered = threading.Event()
            self.go_on = threading.Event()

        def upload_file(self, stream: Any, **kwargs: Any) -> Any:
            if not self.entered.is_set():  # the first upload waits; any other goes straight through
                self.entered.set()
                assert self.go_on.wait(30)
            return self.real.upload_file(stream, **kwargs)

    backend = SlowUpload(pipeline.ctx.backend)
    use_backend(pipeline.ctx, backend)
    receipts: list[receive.Receipt] = []
    first = threading.Thread(target=lambda: receipts.append(pipeline.drop("overlap.jsonl", TWO)))
    first.start()
    assert backend.entered.wait(30)  # the claim's own advance is uploading the job's input
    (run,) = pipeline.ctx.store.list_runs()
    second = advance.advance_run(pipeline.ctx, run.run_id)
    backend.go_on.set()
    first.join(30)
    use_backend(pipeline.ctx, backend.real)
    (job,) = pipeline.ctx.store.list_jobs(run.run_id)
    assert pipeline.finish(run.run_id).state is RunState.SUCCEEDED
    assert len(batches_named(pipeline, job.job_id)) == 1
    assert second.outcome == "skipped"


def test_hole4_a_worker_whose_scratch_a_successor_deleted_stops_quietly(
    pipeline: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    """A stalled worker reading scratch that the worker which took its run over has deleted stops with a
    warning, not a traceback; the same error with the lease still ours is still reported as a failure."""
    ctx = pipeline.ctx
    receipt = pipeline.drop("stale.jsonl", TWO)
    assert receipt.run is not None
    run_id = receipt.run.run_id

    class TakenOverMidRead:
        """The run's blobs, where the next read of scratch finds it deleted (by a successor, if ``successor``)."""

        def __init__(self, real: Any, successor: str | None) -> None:
            self.real = real
            self.successor = successor
            self.fired = False

        def __getattr__(self, name: str) -> Any:
            return getattr(self.real, name)

        def open_read(self, name: str, **kwargs: Any) -> Any:
            if "/_work/" in name and not self.fired:
                self.fired = True
                if self.successor:
                    later = time.time() + 10 * ctx.settings.lease_seconds  # our lease has expired by then
                    assert ctx.store.acquire_lease(run_id, self.successor, ctx.settings.lease_seconds, later)
                self.real.delete(name)
            return self.real.open_read(name, **kwargs)

    def advance_until_fired(successor: str | None) -> advance.Advance:
        blobs = TakenOverMidRead(ctx.blobs, successor)
        stale = dataclasses.replace(ctx, blobs=blobs)
        for _ in range(200):
            result = advance.advance_run(stale, run_id)
            if blobs.fired:
                return result
            time.sleep(0.05)
        raise AssertionError("no scratch was read")

    caplog.set_level(logging.WARNING)
    result = advance_until_fired(successor="the-worker-that-took-over")
    assert result.outcome == "skipped"
    assert [r.levelno for r in caplog.records if r.name == "promptdrop.usecases.advance"] == [logging.WARNING]
    assert "another worker took over" in caplog.records[-1].getMessage()

    caplog.clear()
    ctx.store.release_lease(run_id, "the-worker-that-took-over")
    result = advance_until_fired(successor=None)  # deleted by hand: nobody took over, so it is a failure
    assert result.outcome == "failed"
    assert any(r.levelno == logging.ERROR for r in caplog.records)


# 5. Per-run isolation


def test_hole5_a_raw_oserror_in_one_run_does_not_stop_the_others(
    pipeline: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    """A full disk while harvesting one run is logged with its id; the tick goes on and the other run ends."""
    good = pipeline.drop("good.jsonl", TWO)
    # Other prompts: the same ones would wait for the good run's images instead of being harvested.
    bad = pipeline.drop("bad.jsonl", jsonl({"key": "a", "prompt": "three"}, {"key": "b", "prompt": "four"}))
    assert good.run is not None and bad.run is not None
    bad_id = bad.run.run_id

    class FullDisk:
        def __init__(self, real: Any) -> None:
            self.real = real

        def __getattr__(self, name: str) -> Any:
            return getattr(self.real, name)

        def write_bytes(self, name: str, data: bytes, **kwargs: Any) -> bool:
            if bad_id in name:
                raise OSError(28, "No space left on device")
            return bool(self.real.write_bytes(name, data, **kwargs))

    ctx = dataclasses.replace(pipeline.ctx, blobs=FullDisk(pipeline.ctx.blobs))
    caplog.set_level(logging.ERROR)
    for _ in range(50):
        report = poll.tick(ctx, run_ids=[bad_id, good.run.run_id])
        current = ctx.store.get_run(good.run.run_id)
        assert current is not None
        if current.state.terminal:
            break
    assert current.state is RunState.SUCCEEDED
    assert any(error.startswith(bad_id) and "No space left" in error for error in report.errors)
    assert any(getattr(record, "run_id", None) == bad_id for record in caplog.records)
    bad_now = ctx.store.get_run(bad_id)
    assert bad_now is not None and not bad_now.state.terminal


def test_hole5_a_corrupt_run_record_does_not_stop_the_tick(
    pipeline: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    """A record that no longer reads is logged with its id and left out; the other runs are advanced."""
    with sqlite3.connect(pipeline.ctx.settings.sqlite_path) as db:
        db.execute(
            "INSERT INTO runs (run_id, state, updated_at, doc) VALUES (?, ?, ?, ?)",
            ["broken-1", "SUBMITTED", 0.0, '{"run_id": "broken-1", "state": "SUBMITTED"}'],
        )
    receipt = pipeline.drop("fine.jsonl", TWO)
    assert receipt.run is not None
    caplog.set_level(logging.ERROR)
    for _ in range(50):
        poll.tick(pipeline.ctx)
        run = pipeline.ctx.store.get_run(receipt.run.run_id)
        assert run is not None
        if run.state.terminal:
            break
    assert run.state is RunState.SUCCEEDED
    assert any(getattr(record, "run_id", None) == "broken-1" for record in caplog.records)


# 6. Leaks


def test_hole6_inbox_watcher_forgets_files_that_left_the_inbox(pipeline: Pipeline) -> None:
    """What the watcher remembers is bounded by what the inbox holds now."""
    ctx = pipeline.ctx
    watcher = InboxWatcher(ctx)
    for index in range(3):
        ctx.blobs.write_bytes(f"inbox/w{index}.jsonl", TWO)
    assert watcher.scan() == []  # sizes noted
    assert len(watcher.scan()) == 3  # claimed
    assert len(watcher.done) == 3
    for index in range(3):
        ctx.blobs.delete(f"inbox/w{index}.jsonl")
    assert watcher.scan() == []
    assert watcher.done == set() and watcher.sizes == {}


def test_hole6_backend_is_built_once_when_threads_first_use_it_together(tmp_path: Path) -> None:
    """Context.backend is built under a lock: eight threads asking at once get one backend."""
    built: list[object] = []

    def factory() -> Any:
        time.sleep(0.05)
        built.append(object())
        return built[-1]

    ctx = Context(
        settings=Settings.from_env({"PROMPTDROP_HOME": str(tmp_path)}),
        blobs=Any,  # type: ignore[arg-type]
        store=Any,  # type: ignore[arg-type]
        notifier=Any,  # type: ignore[arg-type]
        paid_images=Any,  # type: ignore[arg-type]
        backend_factory=factory,
    )
    start = threading.Barrier(8)
    seen: list[object] = []

    def use() -> None:
        start.wait()
        seen.append(ctx.backend)

    threads = [threading.Thread(target=use) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(built) == 1 and {id(b) for b in seen} == {id(built[0])}


# 7. A create that lands late


def test_hole7_a_create_that_lands_late_is_adopted_not_paid_twice(pipeline: Pipeline) -> None:
    """The create is still in flight when the next tick looks: nothing is created again, the late one is adopted."""

    class InFlight(Wrapped):
        def __init__(self, real: Any) -> None:
            super().__init__(real)
            self.held: list[dict[str, str]] = []

        def create_batch(self, **kwargs: str) -> BatchInfo:
            self.held.append(kwargs)  # the server has it, but has not made the job yet
            raise AmbiguousCreateError("create timed out")

    backend = InFlight(pipeline.ctx.backend)
    use_backend(pipeline.ctx, backend)
    receipt = pipeline.drop("late.jsonl", TWO)
    assert receipt.run is not None
    (job,) = pipeline.ctx.store.list_jobs(receipt.run.run_id)
    assert job.phase is JobPhase.CREATING and job.create_sent_at is not None
    for _ in range(3):  # ticks while the first create may still land
        poll.tick(pipeline.ctx, run_ids=[receipt.run.run_id])
    assert len(backend.held) == 1
    for kwargs in backend.held:  # now it lands
        backend.real.create_batch(**kwargs)
    use_backend(pipeline.ctx, backend.real)
    run = pipeline.finish(receipt.run.run_id)
    assert run.state is RunState.SUCCEEDED
    assert len(batches_named(pipeline, job.job_id)) == 1


def test_hole7_batches_sharing_a_display_name_keep_one_cancel_the_rest_and_say_so(pipeline: Pipeline) -> None:
    """Two batches with one display name: the first is adopted, the second cancelled, the summary names it."""

    class Twice(Wrapped):
        def create_batch(self, **kwargs: str) -> BatchInfo:
            self.real.create_batch(**kwargs)
            self.real.create_batch(**kwargs)
            raise AmbiguousCreateError("create timed out")

    class Recording(Wrapped):
        def __init__(self, real: Any) -> None:
            super().__init__(real)
            self.cancelled: list[str] = []

        def cancel_batch(self, name: str) -> None:
            self.cancelled.append(name)
            self.real.cancel_batch(name)

    real = pipeline.ctx.backend
    use_backend(pipeline.ctx, Twice(real))
    receipt = pipeline.drop("twice.jsonl", TWO)
    assert receipt.run is not None
    (job,) = pipeline.ctx.store.list_jobs(receipt.run.run_id)
    recording = Recording(real)
    use_backend(pipeline.ctx, recording)
    run = pipeline.finish(receipt.run.run_id)
    assert run.state is RunState.SUCCEEDED
    first, second = sorted(batches_named(pipeline, job.job_id), key=lambda b: b.create_time)
    (job,) = pipeline.ctx.store.list_jobs(run.run_id)
    assert job.batch_name == first.name and job.duplicates == [second.name]
    assert recording.cancelled == [second.name]
    assert summary(pipeline, run)["duplicates_cancelled"] == [second.name]


# 8. Scratch left behind


def test_hole8_scratch_of_an_interrupted_download_is_deleted_at_settle(pipeline: Pipeline) -> None:
    """A hidden partial file under outputs/<run>/_work/ (a download killed mid-way) is gone once the run ends."""
    receipt = pipeline.drop("scratch.jsonl", TWO)
    assert receipt.run is not None
    (job,) = pipeline.ctx.store.list_jobs(receipt.run.run_id)
    folder = pipeline.bucket / pipeline.ctx.layout(receipt.run.run_id).job_folder(job.job_id)
    (folder / ".promptdrop-tmp-0123456789abcdef").write_bytes(b"\0" * 1024)
    run = pipeline.finish(receipt.run.run_id)
    assert run.state is RunState.SUCCEEDED
    work = pipeline.outputs(run) / "_work"
    assert not work.exists() or [p for p in work.rglob("*") if p.is_file()] == []
