"""Whole runs through the use cases: embedded adapters, the real SDK and the emulator over HTTP."""

from __future__ import annotations

import base64
import itertools
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest

from promptdrop.errors import AmbiguousCreateError
from promptdrop.events import StorageObject
from promptdrop.models import BATCH_DISCOUNT, model_spec
from promptdrop.ports import BatchInfo
from promptdrop.states import JobPhase, RunState
from promptdrop.usecases import harvest, poll, receive
from promptdrop.usecases.context import Context
from tests.functional.conftest import Pipeline, billed, jsonl, read_jsonl

REPO = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"


def _png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(PNG)
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _batches(emulator: Any) -> list[Any]:
    """Every batch job the emulator holds (the client is kept alive while the pager runs)."""
    client = emulator.client()
    return list(client.batches.list(config={"page_size": 50}))


def _bucket_files(root: Path) -> set[str]:
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith(".promptdrop-meta")
    }


def test_example_file_runs_to_partial_with_every_line_accounted_for(pipeline: Pipeline) -> None:
    """The shipped example gives images for the good lines, one safety failure and one invalid line."""
    # What scripts/demo runs: the example plus the emulator's marker lines (kept in their own file).
    catalogue = (REPO / "examples" / "catalogue.jsonl").read_bytes()
    receipt = pipeline.drop(
        "catalogue.jsonl", catalogue + (REPO / "examples" / "emulator-extras.jsonl").read_bytes()
    )
    assert receipt.created and receipt.run is not None
    run = pipeline.finish(receipt.run.run_id)

    assert run.state is RunState.PARTIAL
    entries = pipeline.manifest(run)
    assert [e["line"] for e in entries] == list(range(2, 15))  # line 1 is the defaults line
    by_key = {e["key"]: e for e in entries}
    assert by_key["blocked-example"]["status"] == "failed"
    assert by_key["blocked-example"]["error"]["code"] == "safety"
    assert by_key["bad-ratio"]["status"] == "invalid"
    assert by_key["bad-ratio"]["error"]["code"] == "bad_aspect_ratio"
    succeeded = [e for e in entries if e["status"] == "succeeded"]
    assert len(succeeded) == 11
    for entry in succeeded:
        data = (pipeline.bucket / entry["image"]).read_bytes()
        assert len(data) == entry["bytes"]
        width, height = _png_size(data)
        assert width > 0 and height > 0
    hero = (pipeline.bucket / by_key["hero-mountain"]["image"]).read_bytes()
    width, height = _png_size(hero)
    assert abs(width / height - 21 / 9) < 0.05

    summary = orjson.loads((pipeline.outputs(run) / "summary.json").read_bytes())
    assert summary["state"] == "PARTIAL"
    assert summary["counts"] == {"lines": 13, "succeeded": 11, "failed": 1, "invalid": 1}
    assert summary["jobs"][0]["state"] == "JOB_STATE_SUCCEEDED"
    # The emulator bills each image the table's tokens for its size, and every line some prompt tokens.
    lines = read_jsonl(REPO / "examples" / "catalogue.jsonl")
    defaults = lines[0]["defaults"]
    for entry in succeeded:
        spec = model_spec(entry.get("model") or summary["model"])
        assert spec is not None
        size = next(
            line.get("image_size", defaults["image_size"])
            for line in lines
            if line.get("key") == entry["key"]
        )
        assert entry["usage"]["image_tokens"] == spec.image_tokens[size], entry["key"]
        assert entry["usage"]["prompt_tokens"] > 0
    # The cost is what that usage costs at the table's rates, to the micro-dollar summary.json keeps.
    batch, interactive = billed(entries, summary["model"])
    assert summary["cost"]["batch"] == pytest.approx(batch, abs=1e-6)
    assert summary["cost"]["interactive"] == pytest.approx(interactive, abs=1e-6)
    assert summary["cost"]["saved"] == pytest.approx(interactive - batch, abs=2e-6)
    assert summary["cost"]["estimate"] is not None

    events = read_jsonl(pipeline.home / "events.jsonl")
    assert [(e["run_id"], e["state"]) for e in events] == [(run.run_id, "PARTIAL")]
    assert not list(pipeline.ctx.blobs.list(run.output_folder + "_work/"))  # scratch cleaned up


def test_adversarial_file_one_entry_per_line_and_nothing_outside_the_run_folder(pipeline: Pipeline) -> None:
    """Bad lines are reported with line numbers while the good ones run; nothing escapes outputs/<run_id>/."""
    huge = "x" * (5 * 1024 * 1024)
    lines = [
        b'{"key": "ok-1", "prompt": "a red apple"}',
        b"",
        b'{"key": "broken", "prompt": "missing brace"',
        b'{"key": "ok-1", "prompt": "duplicate key"}',
        b'{"key": "../escape", "prompt": "path traversal"}',
        b'{"key": "ratio", "prompt": "odd ratio", "aspect_ratio": "5:7"}',
        b"   ",
        b'{"key": "empty", "prompt": ""}',
        b'{"key": "latin1", "prompt": "caf\xe9"}',
        orjson.dumps({"key": "huge", "prompt": huge}),
        b'{"key": "ok-2", "prompt": "a green pear", "aspect_ratio": "16:9"}',
        b'{"key": "/abs", "prompt": "absolute key"}',
        b"",
    ]
    before = _bucket_files(pipeline.bucket) if pipeline.bucket.exists() else set()
    receipt = pipeline.drop("adversarial.jsonl", b"\n".join(lines) + b"\n")
    assert receipt.run is not None
    run = pipeline.finish(receipt.run.run_id)

    entries = pipeline.manifest(run)
    non_blank = [i + 1 for i, raw in enumerate(lines) if raw.strip()]
    assert [e["line"] for e in entries] == non_blank
    status = {e["line"]: (e["status"], (e["error"] or {}).get("code")) for e in entries}
    assert status[1] == ("succeeded", None)
    assert status[3][0] == "invalid" and status[3][1] == "bad_json"
    assert status[4] == ("invalid", "duplicate_key")
    assert status[5] == ("invalid", "invalid_key")
    assert status[6] == ("invalid", "bad_aspect_ratio")
    assert status[8] == ("invalid", "empty_prompt")
    assert status[9] == ("invalid", "bad_utf8")
    assert status[10] == ("invalid", "prompt_too_long")
    assert status[11] == ("succeeded", None)
    assert status[12] == ("invalid", "invalid_key")
    assert run.state is RunState.PARTIAL

    images = sorted(p.name for p in (pipeline.outputs(run) / "images").iterdir())
    assert images == ["ok-1.png", "ok-2.png"]
    rejected = read_jsonl(pipeline.outputs(run) / "rejected.jsonl")
    assert sorted(r["line"] for r in rejected) == [3, 9]
    raw9 = base64.b64decode(next(r for r in rejected if r["line"] == 9)["raw_base64"])
    assert raw9 == lines[8]
    errors = read_jsonl(pipeline.outputs(run) / "errors.jsonl")
    assert {e["key"] for e in errors} == {"ok-1", "../escape", "ratio", "empty", "huge", "/abs"}
    assert all("error" in e for e in errors)

    created = _bucket_files(pipeline.bucket) - before
    # Beside the run's folder: only the page of all runs and its index object (DESIGN, bucket layout).
    shared = {"inbox/adversarial.jsonl", "outputs/index.html", "outputs/runs.jsonl"}
    outside = [f for f in created if not f.startswith(run.output_folder) and f not in shared]
    assert outside == []
    assert not (pipeline.bucket.parent / "escape.png").exists()


def test_errors_file_dropped_back_retries_exactly_the_failed_and_invalid_lines(pipeline: Pipeline) -> None:
    """errors.jsonl is valid input: it reruns the failed and the invalid-but-parseable lines, nothing else."""
    first = pipeline.drop(
        "retry-me.jsonl",
        jsonl(
            {"defaults": {"aspect_ratio": "3:2"}},
            {"key": "good", "prompt": "fine line"},
            {"key": "blocked", "prompt": "blocked once [[emulator:safety]]"},
            {"key": "bad-size", "prompt": "wrong size", "image_size": "3K"},
        ),
    )
    assert first.run is not None
    run = pipeline.finish(first.run.run_id)
    errors = (pipeline.outputs(run) / "errors.jsonl").read_bytes()
    dropped = {e["key"]: e for e in read_jsonl(pipeline.outputs(run) / "errors.jsonl")}
    assert set(dropped) == {"blocked", "bad-size"}
    assert dropped["blocked"]["aspect_ratio"] == "3:2"  # the file's defaults resolved into the line

    second = pipeline.drop("retry-me-errors.jsonl", errors)
    assert second.run is not None and second.run.run_id != run.run_id
    rerun = pipeline.finish(second.run.run_id)
    entries = pipeline.manifest(rerun)
    assert [(e["key"], e["status"]) for e in entries] == [("blocked", "failed"), ("bad-size", "invalid")]


def test_retryable_failures_are_resubmitted_up_to_max_attempts(pipeline: Pipeline) -> None:
    """An INTERNAL error line and an expired job are retried automatically; attempts are recorded."""
    ctx = pipeline.context(max_attempts=2)
    receipt = pipeline.drop(
        "flaky.jsonl",
        jsonl({"key": "ok", "prompt": "fine"}, {"key": "internal", "prompt": "breaks [[emulator:error=13]]"}),
        ctx,
    )
    assert receipt.run is not None
    run = pipeline.finish(receipt.run.run_id, ctx)
    by_key = {e["key"]: e for e in pipeline.manifest(run)}
    assert by_key["ok"]["attempts"] == 1 and by_key["ok"]["status"] == "succeeded"
    assert by_key["internal"]["attempts"] == 2
    assert by_key["internal"]["error"]["code"] == "api_error" and by_key["internal"]["error"]["retryable"]
    jobs = ctx.store.list_jobs(run.run_id)
    assert [(j.attempt, j.request_count) for j in jobs] == [(1, 2), (2, 1)]


def test_expired_job_lines_are_resubmitted_and_reported(pipeline: Pipeline) -> None:
    """EXPIRED is terminal: its lines fail retryably, are resubmitted, and end with the reason."""
    ctx = pipeline.context(max_attempts=2)
    receipt = pipeline.drop(
        "expire.jsonl", jsonl({"key": "late", "prompt": "slow [[emulator:job=expired]]"}), ctx
    )
    assert receipt.run is not None
    run = pipeline.finish(receipt.run.run_id, ctx)
    assert run.state is RunState.FAILED
    (entry,) = pipeline.manifest(run)
    assert entry["error"]["code"] == "job_expired" and entry["attempts"] == 2
    summary = orjson.loads((pipeline.outputs(run) / "summary.json").read_bytes())
    assert [j["state"] for j in summary["jobs"]] == ["JOB_STATE_EXPIRED", "JOB_STATE_EXPIRED"]


def test_budget_cap_refuses_the_run_before_anything_is_submitted(pipeline: Pipeline) -> None:
    """A run whose estimate exceeds PROMPTDROP_MAX_COST_USD is FAILED with the reason and no batch job."""
    ctx = pipeline.context(max_cost_usd=0.10)
    receipt = pipeline.drop("pricey.txt", b"one\ntwo\nthree\n", ctx)
    assert receipt.run is not None
    run = ctx.store.get_run(receipt.run.run_id)
    assert run is not None and run.state is RunState.FAILED
    assert run.reason is not None and "budget cap" in run.reason
    assert ctx.store.list_jobs(run.run_id) == []
    entries = pipeline.manifest(run)
    assert [(e["key"], e["error"]["code"]) for e in entries] == [
        ("line-1", "budget_exceeded"),
        ("line-2", "budget_exceeded"),
        ("line-3", "budget_exceeded"),
    ]
    assert _batches(pipeline.emulator) == []


@pytest.mark.parametrize(("margin", "refused"), [(-0.0001, True), (0.0001, False)], ids=["below", "above"])
def test_budget_cap_is_held_against_the_batch_estimate(
    pipeline: Pipeline, margin: float, refused: bool
) -> None:
    """The cap is compared with the batch estimate (not the interactive one): a cap a hair under it refuses
    the run, a hair over it lets it run. The estimate is worked out here from the model table."""
    prompts = ["one", "two", "three"]
    spec = model_spec(pipeline.ctx.settings.model)
    assert spec is not None and spec.rates is not None
    estimate = BATCH_DISCOUNT * sum(
        spec.tokens_for(spec.default_size) * spec.rates.image_output / 1_000_000
        + math.ceil(len(prompt) / 4) * spec.rates.text_input / 1_000_000
        for prompt in prompts
    )
    ctx = pipeline.context(max_cost_usd=round(estimate + margin, 6))
    receipt = pipeline.drop("capped.txt", "\n".join(prompts).encode() + b"\n", ctx)
    assert receipt.run is not None
    run = ctx.store.get_run(receipt.run.run_id)
    assert run is not None
    assert (run.state is RunState.FAILED) is refused, run.reason
    assert (ctx.store.list_jobs(run.run_id) == []) is refused


def test_unusable_file_gives_a_failed_run_with_the_reason(pipeline: Pipeline) -> None:
    """A file that is not JSONL/text ends FAILED with the reason in summary.json, never a crash."""
    receipt = pipeline.drop("photo.csv", b"a,b,c\n")
    assert receipt.run is not None
    run = pipeline.ctx.store.get_run(receipt.run.run_id)
    assert run is not None and run.state is RunState.FAILED
    summary = orjson.loads((pipeline.outputs(run) / "summary.json").read_bytes())
    assert "not a prompt file" in summary["reason"]


def test_redelivered_event_creates_one_run_and_one_batch_job(pipeline: Pipeline) -> None:
    """The same object delivered twice is claimed once."""
    data = jsonl({"key": "a", "prompt": "one"})
    first = pipeline.drop("twice.jsonl", data)
    assert first.run is not None
    info = pipeline.ctx.blobs.stat("inbox/twice.jsonl")
    assert info is not None
    again = receive.receive_file(
        pipeline.ctx,
        StorageObject(pipeline.ctx.settings.bucket_name, info.name, info.generation, info.size),
    )
    assert not again.created and again.run is not None and again.run.run_id == first.run.run_id
    pipeline.finish(first.run.run_id)
    assert len(_batches(pipeline.emulator)) == 1


def test_job_created_before_a_crash_is_found_by_display_name(pipeline: Pipeline) -> None:
    """batches.create succeeded but the answer was lost: the next tick adopts the job instead of paying twice."""

    class LostAnswer:
        """Wraps the real backend: the create reaches the emulator, then the caller 'crashes'."""

        def __init__(self, real: Any) -> None:
            self.real = real

        def __getattr__(self, name: str) -> Any:
            return getattr(self.real, name)

        def create_batch(
            self, *, model: str, file_name: str, display_name: str, priority: int = 0
        ) -> BatchInfo:
            self.real.create_batch(
                model=model, file_name=file_name, display_name=display_name, priority=priority
            )
            raise AmbiguousCreateError("timed out waiting for the answer")

        def find_batches(self, display_name: str) -> list[BatchInfo]:
            return []  # until the 'crashed' worker is replaced, the lookup sees nothing yet

    ctx = pipeline.ctx
    real = ctx.backend
    assert ctx.backend_holder is not None
    ctx.backend_holder.set(LostAnswer(real))
    receipt = pipeline.drop("crash.jsonl", jsonl({"key": "k", "prompt": "once only"}))
    assert receipt.run is not None
    (job,) = ctx.store.list_jobs(receipt.run.run_id)
    assert job.phase is JobPhase.CREATING and job.batch_name is None

    ctx.backend_holder.set(real)
    run = pipeline.finish(receipt.run.run_id)
    assert run.state is RunState.SUCCEEDED
    batches = _batches(pipeline.emulator)
    assert len(batches) == 1
    (job,) = ctx.store.list_jobs(run.run_id)
    assert job.batch_name == batches[0].name


def test_inline_responses_are_harvested_like_a_results_file(
    pipeline: Pipeline, emulator_factory: Any
) -> None:
    """Small jobs answered inline (no responses file) still give images and a manifest."""
    emulator = emulator_factory("inline", inline_responses_max=10)
    ctx = pipeline.context(gemini_base_url=emulator.url)
    receipt = pipeline.drop(
        "inline.jsonl", jsonl({"key": "x", "prompt": "p1"}, {"key": "y", "prompt": "p2"}), ctx
    )
    assert receipt.run is not None
    run = pipeline.finish(receipt.run.run_id, ctx)
    assert run.state is RunState.SUCCEEDED
    assert sorted(p.name for p in (pipeline.outputs(run) / "images").iterdir()) == ["x.png", "y.png"]
    # The answers came inline: the job had no results file, and nothing was downloaded.
    (job,) = ctx.store.list_jobs(run.run_id)
    assert job.results_file is None
    assert emulator.server.bytes_downloaded == 0
    assert [e["key"] for e in pipeline.manifest(run) if e["status"] == "succeeded"] == ["x", "y"]


def test_cancel_reports_every_unfinished_line_as_cancelled(pipeline: Pipeline, emulator_factory: Any) -> None:
    """Cancelling a running run cancels its batch jobs and accounts for every line."""
    emulator = emulator_factory("slow", pending_seconds=30.0)
    ctx = pipeline.context(gemini_base_url=emulator.url)
    receipt = pipeline.drop(
        "cancel.jsonl", jsonl({"key": "a", "prompt": "x"}, {"key": "b", "prompt": "y"}), ctx
    )
    assert receipt.run is not None
    ctx.store.update_run(receipt.run.run_id, {"cancel_requested": True})
    run = pipeline.finish(receipt.run.run_id, ctx)
    assert run.state is RunState.CANCELLED
    assert [e["error"]["code"] for e in pipeline.manifest(run)] == ["cancelled", "cancelled"]
    (batch,) = _batches(emulator)
    assert batch.state == "JOB_STATE_CANCELLED"


def _record_writes(ctx: Context, written: list[str]) -> None:
    """Note the name of every object ``ctx`` writes with write_bytes (images and outcome parts go that way)."""
    write_bytes = ctx.blobs.write_bytes

    def recording(name: str, data: bytes, **options: Any) -> None:
        written.append(name)
        write_bytes(name, data, **options)

    ctx.blobs.write_bytes = recording  # type: ignore[method-assign]


def _image_files(root: Path) -> dict[str, tuple[int, int]]:
    """Image path -> (inode, mtime in ns): a rewrite (temporary file renamed over it) changes both."""
    return {str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in root.rglob("images/*")}


def test_two_pollers_at_once_harvest_each_job_once(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Overlapping ticks skip leased work: the results file is downloaded once, each image and each outcome
    part is written once, and images written by one tick are never rewritten by a later one."""
    monkeypatch.setattr(harvest, "CHECKPOINT_LINES", 5)  # 20 results -> 4 outcome parts
    keys = [f"k{i:02d}" for i in range(20)]
    receipt = pipeline.drop("overlap.jsonl", jsonl(*({"key": key, "prompt": f"p {key}"} for key in keys)))
    assert receipt.run is not None
    run_id = receipt.run.run_id
    pollers = [pipeline.ctx, pipeline.context(upload_concurrency=4)]
    written: list[str] = []
    for ctx in pollers:
        _record_writes(ctx, written)
    start = threading.Barrier(2)

    def tick(ctx: Context) -> None:
        start.wait()
        # A deadline already past: a harvest writes one checkpoint per tick, so it spans several ticks.
        poll.tick(ctx, deadline=ctx.clock())

    snapshots: list[dict[str, tuple[int, int]]] = []
    for _ in range(200):
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(tick, pollers))
        snapshots.append(_image_files(pipeline.bucket))
        run = pipeline.ctx.store.get_run(run_id)
        assert run is not None
        if run.state.terminal:
            break
    assert run.state is RunState.SUCCEEDED
    entries = pipeline.manifest(run)
    assert [e["key"] for e in entries] == keys

    (job,) = pipeline.ctx.store.list_jobs(run_id)
    assert job.results_file is not None and job.results_copy_done and job.results_copied > 0
    assert pipeline.emulator.server.bytes_downloaded == job.results_copied  # each byte fetched once
    layout = pipeline.ctx.layout(run_id)
    images = [name for name in written if name.startswith(layout.folder + "images/")]
    assert sorted(images) == sorted(e["image"] for e in entries)  # 20 names, each written once
    parts = [name for name in written if name.startswith(layout.job_outcomes_prefix(job.job_id))]
    assert parts == [layout.job_outcomes(job.job_id, part) for part in range(4)]
    assert job.harvest_part == 4
    # Several ticks wrote images (one checkpoint each); none touched an image an earlier tick had written.
    assert len({len(snapshot) for snapshot in snapshots if snapshot}) > 1
    for earlier, later in itertools.pairwise(snapshots):
        assert {name: later[name] for name in earlier} == earlier


def test_an_image_the_bucket_refuses_fails_its_line_not_the_run(pipeline: Pipeline) -> None:
    """Keys `a` and `a.png/c` cannot both be files; one line fails with write_failed and the run still ends."""
    receipt = pipeline.drop(
        "clash.jsonl",
        jsonl({"key": "a", "prompt": "x"}, {"key": "a.png/c", "prompt": "y"}, {"key": "b", "prompt": "z"}),
    )
    assert receipt.run is not None
    run = pipeline.finish(receipt.run.run_id)
    assert run.state is RunState.PARTIAL
    entries = {e["key"]: e for e in pipeline.manifest(run)}
    assert entries["b"]["status"] == "succeeded"
    codes = sorted((entries[k]["error"] or {}).get("code", "") for k in ("a", "a.png/c"))
    assert codes == ["", "write_failed"]


def _noise_png(size: int, seed: int) -> bytes:
    import io
    import random

    from PIL import Image

    rng = random.Random(seed)
    image = Image.frombytes("RGB", (size, size), rng.randbytes(size * size * 3))
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=0)
    return out.getvalue()


def _uploaded_names(pipeline: Pipeline) -> list[str]:
    """Display names of the files the emulator holds (its Files API)."""
    reply = pipeline.emulator.request("GET", "/v1beta/files?pageSize=100")
    assert reply.status == 200
    return [f.get("displayName", "") for f in reply.json().get("files", [])]


def test_reference_uploads_too_many_for_one_call_go_on_next_tick_each_uploaded_once(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thousands of distinct large reference images do not upload in one invocation: the claim uploads one,
    each tick (its deadline already past) one more, each reusing what the calls before kept; every image
    reaches the Files API once and the run ends with all its lines."""
    monkeypatch.setattr(receive, "SUBMIT_ON_CLAIM_SECONDS", 0.0)
    ctx = pipeline.context(inline_image_max_bytes=64 * 1024)
    refs = [f"refs/photo-{n}.png" for n in range(4)]
    for n, ref in enumerate(refs):
        ctx.blobs.write_bytes(ref, _noise_png(256, seed=n), content_type="image/png")  # ~196 KB each
    lines = [{"key": f"k{n}", "prompt": "restyle", "images": [ref]} for n, ref in enumerate(refs)]
    lines.append({"key": "again", "prompt": "restyle again", "images": [refs[0]]})
    receipt = pipeline.drop("photos.jsonl", jsonl(*lines), ctx)
    assert receipt.run is not None and receipt.run.state is RunState.RECEIVED
    run_id = receipt.run.run_id
    uploads = [sum(name.startswith("photo-") for name in _uploaded_names(pipeline))]
    for _ in range(10):
        poll.tick(ctx, run_ids=[run_id], deadline=ctx.clock())
        run = ctx.store.get_run(run_id)
        assert run is not None
        uploads.append(sum(name.startswith("photo-") for name in _uploaded_names(pipeline)))
        if run.state is not RunState.RECEIVED:
            break
    # One upload per call; the call after the fourth finds all four kept and submits.
    assert uploads == [1, 2, 3, 4, 4]
    assert sorted(n for n in _uploaded_names(pipeline) if n.startswith("photo-")) == [
        f"photo-{n}.png" for n in range(4)
    ]
    run = pipeline.finish(run_id, ctx)
    assert run.state is RunState.SUCCEEDED
    assert sorted(e["key"] for e in pipeline.manifest(run)) == ["again", "k0", "k1", "k2", "k3"]


def test_reference_images_are_inlined_or_uploaded_and_missing_ones_reported(pipeline: Pipeline) -> None:
    """Small reference images travel inline, large ones through the Files API; a missing one fails its line."""
    import io
    import os

    from PIL import Image

    def png(size: int, noise: bool) -> bytes:
        image = (
            Image.frombytes("RGB", (size, size), os.urandom(size * size * 3))
            if noise
            else Image.new("RGB", (size, size), (200, 10, 10))
        )
        out = io.BytesIO()
        image.save(out, "PNG", compress_level=0)
        return out.getvalue()

    ctx = pipeline.context(inline_image_max_bytes=64 * 1024)
    ctx.blobs.write_bytes("refs/small.png", png(16, noise=False), content_type="image/png")
    ctx.blobs.write_bytes("refs/large.png", png(256, noise=True), content_type="image/png")  # ~196 KB
    receipt = pipeline.drop(
        "refs.jsonl",
        jsonl(
            {"key": "inline", "prompt": "restyle", "images": ["refs/small.png"]},
            {"key": "uploaded", "prompt": "restyle", "images": ["refs/large.png"]},
            {"key": "missing", "prompt": "restyle", "images": ["refs/nope.png"]},
            {"key": "same-reference", "prompt": "restyle again", "images": ["refs/large.png"]},
        ),
        ctx,
    )
    assert receipt.run is not None
    (job,) = ctx.store.list_jobs(receipt.run.run_id)
    requests = {line["key"]: line["request"] for line in read_jsonl(pipeline.bucket / job.request_object)}
    assert set(requests) == {"inline", "uploaded", "same-reference"}
    inline_parts = requests["inline"]["contents"][0]["parts"]
    assert inline_parts[-1]["inlineData"]["mimeType"] == "image/png"
    assert base64.b64decode(inline_parts[-1]["inlineData"]["data"]) == ctx.blobs.read_bytes("refs/small.png")
    file_part = requests["uploaded"]["contents"][0]["parts"][-1]["fileData"]
    assert file_part["mimeType"] == "image/png" and "/files/" in file_part["fileUri"]
    # One upload per reference image and submission, however many lines use it.
    assert requests["same-reference"]["contents"][0]["parts"][-1]["fileData"] == file_part

    run = pipeline.finish(receipt.run.run_id, ctx)
    entries = {e["key"]: e for e in pipeline.manifest(run)}
    assert {entries[key]["status"] for key in ("inline", "uploaded", "same-reference")} == {"succeeded"}
    assert (
        entries["missing"]["status"] == "invalid" and entries["missing"]["error"]["code"] == "bad_image_ref"
    )
    assert run.state is RunState.PARTIAL
