"""Work bounded to fit a function: big files left to the poller, inputs launched only with time to upload
them, input bytes in the Files API capped, image bytes held by a tick bounded."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

from promptdrop import results
from promptdrop.states import JobPhase, RunState
from promptdrop.store_rules import HOLDING_INPUT
from promptdrop.usecases import advance, harvest, poll
from tests.functional.conftest import Pipeline, jsonl


def _lines(count: int, size: int = 0) -> bytes:
    pad = "x" * size
    return jsonl(*({"key": f"k{n:03d}", "prompt": f"boat {n} {pad}"} for n in range(count)))


def test_a_file_over_the_claim_limit_is_claimed_and_left_to_the_poller(pipeline: Pipeline) -> None:
    """The trigger answers at once for a big file; the next tick submits it."""
    ctx = pipeline.context(submit_on_claim_max_bytes=1024)
    receipt = pipeline.drop("big.jsonl", _lines(40, 100), ctx)
    assert receipt.created and receipt.run is not None
    assert receipt.run.state is RunState.RECEIVED
    assert ctx.store.list_jobs(receipt.run.run_id) == []
    run = pipeline.finish(receipt.run.run_id, ctx)
    assert run.state is RunState.SUCCEEDED and run.counts.succeeded == 40


def test_jobs_are_launched_only_while_their_upload_fits_the_time_left(pipeline: Pipeline) -> None:
    """With no time left in the invocation nothing is uploaded or created; a later tick launches the jobs."""
    ctx = pipeline.context(max_requests_per_job=5, submit_on_claim_max_bytes=1)
    receipt = pipeline.drop("boats.jsonl", _lines(12), ctx)
    assert receipt.run is not None
    run_id = receipt.run.run_id
    result = advance.advance_run(ctx, run_id, ctx.clock())  # claimed; the budget is already spent
    assert result.run is not None and result.run.state is RunState.SUBMITTED
    jobs = ctx.store.list_jobs(run_id)
    assert [j.phase for j in jobs] == [JobPhase.QUEUED] * 3
    assert all(j.file_name is None for j in jobs)  # not even uploaded
    assert list(pipeline.emulator.client().batches.list(config={"page_size": 10})) == []
    assert pipeline.finish(run_id, ctx).state is RunState.SUCCEEDED


def test_input_bytes_held_by_the_files_api_are_capped(pipeline: Pipeline) -> None:
    """Jobs wait QUEUED while the inputs of jobs not yet harvested would pass the cap; all finish in the end."""
    probe = pipeline.context(max_requests_per_job=4)
    receipt = pipeline.drop("probe.jsonl", _lines(4), probe)
    assert receipt.run is not None
    (job,) = probe.store.list_jobs(receipt.run.run_id)
    pipeline.finish(receipt.run.run_id, probe)
    # Room for one job's input at a time: a 12-line file in 3 jobs launches them one after another.
    # The same lines as the probe: the pay-once cache would serve them, so it is off here.
    ctx = pipeline.context(
        max_requests_per_job=4, max_input_bytes_in_flight=job.request_bytes + 10, cache="off"
    )
    receipt = pipeline.drop("boats.jsonl", _lines(12), ctx)
    assert receipt.run is not None
    jobs = ctx.store.list_jobs(receipt.run.run_id)
    assert len(jobs) == 3
    assert [j.phase for j in jobs].count(JobPhase.QUEUED) == 2
    seen_holding: list[int] = []
    for _ in range(200):
        poll.tick(ctx, run_ids=[receipt.run.run_id])
        holding = [j for j in ctx.store.list_jobs(receipt.run.run_id) if j.phase in HOLDING_INPUT]
        seen_holding.append(sum(j.request_bytes for j in holding))
        run = ctx.store.get_run(receipt.run.run_id)
        if run is not None and run.state.terminal:
            break
    assert run is not None and run.state is RunState.SUCCEEDED
    assert max(seen_holding) <= job.request_bytes + 10


def test_image_bytes_of_a_harvest_stay_within_the_shared_budget(pipeline: Pipeline, monkeypatch: Any) -> None:
    """The tick's byte budget bounds the images queued and being written (one image at a time here)."""
    ctx = pipeline.context(harvest_memory_budget=1)
    receipt = pipeline.drop("boats.jsonl", _lines(6), ctx)
    assert receipt.run is not None
    sizes: list[int] = []
    original = harvest.ImageWriter._write

    def spy(self: Any, name: str, data: bytes, *args: Any) -> None:
        sizes.append(self.budget.used)
        assert self.budget.used == len(data)  # alone in the budget: nothing else held
        original(self, name, data, *args)

    monkeypatch.setattr(harvest.ImageWriter, "_write", spy)
    run = pipeline.finish(receipt.run.run_id, ctx)
    assert run.state is RunState.SUCCEEDED and len(sizes) == 6
    assert ctx.image_budget is not None and ctx.image_budget.used == 0


class _SlowImages:
    """The run's bucket with image writes slowed down, counting the image bytes being written at each moment."""

    def __init__(self, inner: Any, delay: float, seen: Callable[[int], None]) -> None:
        self.inner, self.delay, self.seen = inner, delay, seen
        self.lock = threading.Lock()
        self.writing = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def write_bytes(self, name: str, data: bytes, **options: Any) -> bool:
        if "/images/" not in name:
            return bool(self.inner.write_bytes(name, data, **options))
        with self.lock:
            self.writing += len(data)
        self.seen(len(data))
        time.sleep(self.delay)
        try:
            return bool(self.inner.write_bytes(name, data, **options))
        finally:
            with self.lock:
                self.writing -= len(data)


def test_lines_being_parsed_and_images_being_written_are_all_counted_within_the_budget(
    pipeline: Pipeline, monkeypatch: Any
) -> None:
    """Three runs harvested in one tick with slow image writes: at every moment the bytes really held (the
    result lines being parsed, the images being written) are within the budget's own counter, and that
    counter within the budget."""
    probe = pipeline.context()
    receipt = pipeline.drop("probe.jsonl", _lines(1), probe)
    assert receipt.run is not None
    pipeline.finish(receipt.run.run_id, probe)
    image = next(i for i in probe.blobs.list(probe.layout(receipt.run.run_id).folder) if "/images/" in i.name)
    line = image.size * 4 // 3  # a result line is mostly the image's base64
    budget = 4 * (2 * line + image.size)  # room for about four lines being parsed or images being written
    ctx = pipeline.context(harvest_memory_budget=budget, tick_concurrency=3, cache="off")
    assert ctx.image_budget is not None
    counter = ctx.image_budget
    parsing = {"bytes": 0}
    lock = threading.Lock()
    held: list[tuple[int, int]] = []  # (bytes really held, the counter) at each moment something was added

    def sample(_: int) -> None:
        with lock:
            held.append((parsing["bytes"] + slow.writing, counter.used))

    slow = _SlowImages(ctx.blobs, 0.05, sample)
    ctx = dataclasses.replace(ctx, blobs=slow)
    parse = results.parse_result_line

    def counted_parse(raw: bytes) -> Any:
        with lock:
            parsing["bytes"] += len(raw)
        sample(len(raw))
        try:
            return parse(raw)
        finally:
            with lock:
                parsing["bytes"] -= len(raw)

    monkeypatch.setattr(harvest.results, "parse_result_line", counted_parse)
    run_ids = []
    for n in range(3):
        dropped = pipeline.drop(f"boats-{n}.jsonl", _lines(12, n + 1), ctx)
        assert dropped.run is not None
        run_ids.append(dropped.run.run_id)
    for _ in range(200):
        poll.tick(ctx, run_ids=run_ids)
        runs = [ctx.store.get_run(run_id) for run_id in run_ids]
        if all(run is not None and run.state.terminal for run in runs):
            break
    assert all(run is not None and run.state is RunState.SUCCEEDED for run in runs)
    assert len(held) >= 72  # 36 lines parsed, 36 images written
    assert all(really <= counted for really, counted in held), [h for h in held if h[0] > h[1]][:3]
    assert counter.peak <= counter.limit
    assert max(really for really, _ in held) > 2 * line  # work really overlapped under the budget
    assert counter.used == 0
