"""Harvest: stream a job's results once, write each image exactly as returned, checkpoint as it goes.

Resumable and idempotent: an image's object name depends only on (run, key); outcomes are written in
numbered parts, each followed by a checkpoint (byte offset, part count) in the job record. A crash between a
part and its checkpoint rewrites the same part from the same offset, so running a harvest twice produces the
same outputs once.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Any, BinaryIO

import orjson

from promptdrop import results
from promptdrop.budget import ByteBudget, Held
from promptdrop.errors import (
    BackendError,
    BackendPermanentError,
    PermanentError,
    PromptdropError,
    UnsafeNameError,
)
from promptdrop.layout import RunLayout
from promptdrop.manifest import SCHEMA_VERSION
from promptdrop.names import VERTEX_LABEL, check_key, vertex_label
from promptdrop.outcomes import ImageOutcome, LineError, Outcome
from promptdrop.ports import BlobStore
from promptdrop.records import Job, Run
from promptdrop.states import JobPhase, JobState
from promptdrop.streams import iter_lines
from promptdrop.usecases import results_copy
from promptdrop.usecases.context import Context
from promptdrop.usecases.gallery import thumbnails_for
from promptdrop.usecases.leases import renew
from promptdrop.usecases.workfiles import iter_job_keys, iter_job_outcomes

log = logging.getLogger(__name__)

CHECKPOINT_LINES = 200
CHECKPOINT_BYTES = 256 * 1024 * 1024
UNLIMITED = 1 << 62
# What a harvest reserves for the first line it reads, before it knows the size of any: a line of the
# largest images (a 4K image of about 25 MB is 33 MB of base64). Later lines reserve the size of the
# largest of the RECENT_LINES before them (an error line between two images does not lower it).
FIRST_LINE_BYTES = 34 * 1024 * 1024
RECENT_LINES = 8


class ImageWriter:
    """Writes images with bounded concurrency and bounded memory: at most concurrency + 1 images held,
    and no more bytes than ``budget`` allows (a budget shared by every run of the tick). Each image is
    charged with the copy the store makes of it while writing (``BlobStore.write_overhead``).

    One image waiting beside those being written keeps every writer busy (the caller decodes the next while
    they work); a deeper queue would only hold more megabytes when writes stall.
    """

    def __init__(
        self,
        blobs: BlobStore,
        concurrency: int,
        budget: ByteBudget | None = None,
        after_write: Callable[[str, bytes], None] | None = None,
    ) -> None:
        self.blobs = blobs
        self.budget = budget or ByteBudget(UNLIMITED)
        self.after_write = after_write  # e.g. the gallery's thumbnail, made in the same writer thread
        self.concurrency = max(1, concurrency)
        self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="promptdrop-img")
        self._slots = threading.BoundedSemaphore(self.concurrency + 1)
        self._pending: list[Future[None]] = []
        self._refused: dict[str, str] = {}
        self._lock = threading.Lock()

    def charge(self, size: int) -> int:
        """Bytes of the budget an image of ``size`` bytes holds until it is written: itself and the store's
        copy of it."""
        return size + self.blobs.write_overhead(size)

    def submit(
        self,
        name: str,
        data: bytes,
        content_type: str | None,
        metadata: Mapping[str, str],
        held: Held | None = None,
    ) -> None:
        """Write ``data`` (in the background when concurrency > 1). ``held``: budget the caller already holds
        for it (the harvest reserves a line's bytes before reading it), resized to the image's charge and
        released once it is written; without it the charge is waited for here."""
        charge = self.charge(len(data))
        if self.concurrency == 1:
            held = self._hold(charge, held)
            try:
                self._write(name, data, content_type, metadata)
            finally:
                held.release()
            return
        try:
            self._slots.acquire()
        except BaseException:
            if held is not None:
                held.release()
            raise
        held = self._hold(charge, held)
        try:
            future = self._pool.submit(self._write, name, data, content_type, metadata)
        except BaseException:
            self._done(held)
            raise
        future.add_done_callback(lambda _: self._done(held))
        self._pending.append(future)

    def _hold(self, charge: int, held: Held | None) -> Held:
        if held is None:
            return self.budget.hold(charge)
        held.resize(charge)
        return held

    def _done(self, held: Held) -> None:
        held.release()
        self._slots.release()

    def _write(self, name: str, data: bytes, content_type: str | None, metadata: Mapping[str, str]) -> None:
        try:
            self.blobs.write_bytes(name, data, content_type=content_type, metadata=metadata)
        except PermanentError as exc:
            # This one image can never be written (e.g. its name clashes with another key's folder):
            # it becomes that line's failure instead of stopping the whole harvest forever.
            with self._lock:
                self._refused[name] = str(exc)
            return
        if self.after_write is not None:
            self.after_write(name, data)

    def flush(self) -> dict[str, str]:
        """Wait until every submitted image is written. Re-raise the first transient failure; return the
        images refused for good since the last flush (object name -> reason)."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()
        with self._lock:
            refused, self._refused = self._refused, {}
        return refused

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._pool.shutdown(wait=True)

    def __enter__(self) -> ImageWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


RESULTS_LOST = "results unavailable"


def _job_end_error(job: Job) -> LineError:
    """Why the lines of a job that gave no result for them failed, and whether trying again may help."""
    if job.error and job.error.startswith(RESULTS_LOST):
        return LineError("results_lost", f"the job's results could not be read: {job.error}", True)
    if job.error == "cancelled":
        return LineError("cancelled", "the run was cancelled before this line finished")
    if job.error == "deadline":
        return LineError(
            "deadline_exceeded", "the batch job passed PROMPTDROP_JOB_DEADLINE and was cancelled", True
        )
    if job.state is JobState.JOB_STATE_EXPIRED:
        return LineError("job_expired", "the batch job expired (pending or running for over 48 hours)", True)
    if job.state is JobState.JOB_STATE_FAILED:
        return LineError("job_failed", f"the batch job failed: {job.error or 'no reason given'}", True)
    if job.state is JobState.JOB_STATE_CANCELLED:
        return LineError("job_cancelled", "the batch job was cancelled outside promptdrop", True)
    if job.prediction_files:
        return LineError(
            "missing_result",
            f"no prediction of the Vertex AI job carried this line's key in its labels ({VERTEX_LABEL})",
            True,
        )
    return LineError("missing_result", "the results file had no line for this key", True)


class Checkpointer:
    """Outcomes of a job written in numbered parts, each counted by the job record once it is whole (the
    harvest of a batch job and the now lane's answers alike)."""

    def __init__(self, ctx: Context, run: Run, job: Job, writer: ImageWriter) -> None:
        self.ctx, self.run, self.job, self.writer = ctx, run, job, writer
        self.layout = ctx.layout(run.run_id)
        self.buffer: list[Outcome] = []
        self.bytes_since = 0

    def add(self, outcome: Outcome, consumed: int) -> None:
        self.buffer.append(outcome)
        self.bytes_since += consumed

    @property
    def due(self) -> bool:
        return len(self.buffer) >= CHECKPOINT_LINES or self.bytes_since >= CHECKPOINT_BYTES

    def commit(self, offset: int, extra: Mapping[str, Any] | None = None) -> None:
        """Images durable first, then the outcome part, then the checkpoint that makes the part count."""
        refused = self.writer.flush()
        changes: dict[str, Any] = {"harvest_offset": offset}
        if self.buffer:
            part = self.job.harvest_part
            final = [o.unwritten(refused[o.image]) if o.image in refused else o for o in self.buffer]
            lines = [orjson.dumps(o.to_json()) for o in final]
            self.ctx.blobs.write_bytes(
                self.layout.job_outcomes(self.job.job_id, part),
                b"\n".join(lines) + b"\n",
                content_type="application/jsonl",
            )
            changes["harvest_part"] = part + 1
            # Counted with the part it belongs to, so a part written twice is counted once.
            changes["retryable"] = self.job.retryable + sum(o.retryable for o in final)
        changes.update(extra or {})
        renew(self.ctx, self.run.run_id)
        self.job = self.ctx.store.update_job(self.job.job_id, changes)
        self.buffer.clear()
        self.bytes_since = 0


def harvest_job(ctx: Context, run: Run, job: Job, deadline: float | None) -> bool:
    """Harvest one terminal job. True when done; False when the time budget ran out (resume next tick)."""
    layout = ctx.layout(run.run_id)
    extra = {"run_id": run.run_id, "job": job.batch_name or job.job_id}
    copy_pending = not job.results_object and not job.results_copy_done and job.harvest_offset >= 0
    if job.results_file and copy_pending:
        # Copied from the Files API into the bucket (in a Cloud Function the disk is memory), in parts
        # that a time budget or a kill can cut off without losing what was copied.
        try:
            job, copied = results_copy.copy_results(ctx, run, job, deadline)
        except BackendPermanentError as exc:
            # Gone for good (deleted, expired): the job's lines fail retryably instead of a retry per tick.
            log.error("results file %s cannot be read: %s", job.results_file, exc, extra=extra)
            job = ctx.store.update_job(job.job_id, {"error": f"{RESULTS_LOST}: {exc}", "harvest_offset": -1})
        else:
            if not copied:
                return False

    known = dict(iter_job_keys(ctx, layout, job))
    done_keys = {o.key for o in iter_job_outcomes(ctx, layout, job)}
    # Vertex AI predictions carry the key in a label (names.vertex_label): label -> key for those we sent.
    labels = {vertex_label(key): key for key in known} if job.prediction_files else None
    with ImageWriter(
        ctx.blobs, ctx.settings.upload_concurrency, ctx.image_budget, after_write=thumbnails_for(ctx, layout)
    ) as writer:
        cp = Checkpointer(ctx, run, job, writer)
        if (job.results_object or job.results_copy_done) and job.harvest_offset >= 0:
            offset = job.harvest_offset
            with _open_results(ctx, layout, job, offset) as stream:
                lines = _harvest_lines(stream, job, layout, known, done_keys, writer, run, labels)
                for size, outcome in lines:
                    offset += size
                    if outcome is not None:
                        done_keys.add(outcome.key)
                        cp.add(outcome, size)
                    else:
                        cp.bytes_since += size
                    if cp.due:
                        cp.commit(offset)
                        if deadline is not None and ctx.clock() >= deadline:
                            log.info("harvest paused at byte %d (time budget)", offset, extra=extra)
                            return False
            cp.commit(offset, {"harvest_offset": -1})  # -1: the whole results file is consumed
        job = cp.job
        # Every key is accounted for: lines the job never answered fail with the job's reason.
        error = _job_end_error(job)
        for key in known:
            if key not in done_keys:
                cp.add(Outcome.failure(key, error, attempt=job.attempt, model=job.model), 0)
        cp.commit(-1, {"phase": JobPhase.DONE.value})
    _cleanup_job(ctx, cp.job)
    log.info("harvested", extra=extra)
    return True


def line_charge(size: int, writer: ImageWriter) -> int:
    """Bytes of the budget a result line of ``size`` bytes needs while it is read and parsed: twice the line
    while the blocks it was read in are joined, then the line and its decoded image (3/4 of the base64, decoded
    from the line itself, never copied into a str) with the image's write charge."""
    return max(2 * size, size + writer.charge(size * 3 // 4))


def _harvest_lines(
    stream: BinaryIO,
    job: Job,
    layout: RunLayout,
    known: Mapping[str, int],
    done: set[str],
    writer: ImageWriter,
    run: Run,
    labels: Mapping[str, str] | None = None,
) -> Iterator[tuple[int, Outcome | None]]:
    """``(bytes consumed, outcome or None)`` for each line of a results file, its image handed to ``writer``.

    A line's memory is reserved from the writer's budget *before* the line is read (at the size of the line
    before it), so a run waits for the budget without holding a line, and all the runs of a tick together
    hold what the budget allows: lines being parsed, images queued and being written.
    """
    lines = iter_lines(stream)
    recent: deque[int] = deque([FIRST_LINE_BYTES], maxlen=RECENT_LINES)
    while True:
        # At most the whole budget: a line of that size then waits until nothing else is held.
        held = writer.budget.hold(min(line_charge(max(recent), writer), writer.budget.limit))
        try:
            raw = next(lines, None)
            if raw is None:
                held.release()
                return
            size = len(raw)
            recent.append(size)
            # A line longer than expected is counted now, without waiting (waiting while holding could
            # deadlock the runs on each other): the budget is exceeded by that difference, once.
            held.resize(line_charge(size, writer))
            found = _parse_line(raw, job, known, done, run, labels)
            del raw  # the decoded image is all that is needed from here on
        except BaseException:
            held.release()
            raise
        if found is None:
            held.release()
            yield size, None
            continue
        key, parsed = found
        del found
        # The writer takes the holding over (resized to the image's charge) and releases it once written.
        outcome = store_image(parsed, key, job, layout, writer, run, held)
        del parsed  # the writer holds the image; nothing here may keep it past its write
        yield size, outcome


def _parse_line(
    raw: bytes,
    job: Job,
    known: Mapping[str, int],
    done: set[str],
    run: Run,
    labels: Mapping[str, str] | None = None,
) -> tuple[str, ImageOutcome] | None:
    """A line's key and parsed answer, or None for a blank, unreadable or unattributable line.

    ``labels``: label -> key, when the line carries its key in a label (Vertex AI)."""
    if _blank(raw):
        return None
    try:
        parsed = results.parse_result_line(raw)
    except PromptdropError as exc:
        log.warning(
            "unreadable result line skipped: %s", exc, extra={"run_id": run.run_id, "job": job.batch_name}
        )
        return None
    key = parsed.key
    if labels is not None and key is not None:
        key = labels.get(key)
    if key is None or key not in known or key in done:
        # Join on key, never on order; a key we did not send (or a repeat) cannot be attributed.
        log.warning("result line with unknown or repeated key skipped", extra={"run_id": run.run_id})
        return None
    return key, parsed


def store_image(
    parsed: ImageOutcome,
    key: str,
    job: Job,
    layout: RunLayout,
    writer: ImageWriter,
    run: Run,
    held: Held | None = None,
) -> Outcome:
    """A line's answer -> its outcome, its image (if any) handed to ``writer`` under the key's one name.

    ``held``: budget already reserved for the line; handed to the writer with the image, or released."""
    image_name = None
    if parsed.succeeded and parsed.data is not None and parsed.extension:
        try:
            image_name = layout.image(key, parsed.extension)
        except BaseException:
            if held is not None:
                held.release()
            raise
        writer.submit(
            image_name,
            parsed.data,
            parsed.mime_type,
            {"run": run.run_id, "key": key, "model": job.model},
            held,
        )
    elif held is not None:
        held.release()
    return Outcome.of_image(parsed, key, image_name=image_name, attempt=job.attempt, model=job.model)


def _open_results(ctx: Context, layout: RunLayout, job: Job, start: int) -> AbstractContextManager[BinaryIO]:
    """The job's results from byte ``start``: one object (inline answers), the prediction files, or the
    copied parts."""
    if job.results_object:
        return ctx.blobs.open_read(job.results_object, start=start)
    if job.prediction_files:  # Vertex AI wrote them into the bucket: read in place, never copied
        return results_copy.open_parts(ctx.blobs, job.prediction_files, job.prediction_sizes, start)
    return results_copy.open_copied_results(ctx, layout, job, start)


def _blank(raw: bytes) -> bool:
    """A line of whitespace only; unlike ``strip()`` this copies nothing of a multi-megabyte line."""
    return not raw or raw.isspace()


def _cleanup_job(ctx: Context, job: Job) -> None:
    """Input files are deleted when their job ends and result files after harvest (20 GB per project)."""
    for name in (job.file_name, job.results_file):
        if name:
            try:
                ctx.backend.delete_file(name)
            except BackendError as exc:
                log.warning("could not delete %s: %s", name, exc, extra={"run_id": job.run_id})
    if job.results_object:
        ctx.blobs.delete(job.results_object)
    for name in [*results_copy.copied_part_names(ctx.layout(job.run_id), job), *job.prediction_files]:
        ctx.blobs.delete(name)


def extract_results(stream: Any, out: BlobStore, *, concurrency: int = 8) -> dict[str, int]:
    """`promptdrop extract`: a downloaded results file -> images/<key>.<ext> + manifest.jsonl in ``out``.

    Keys from someone else's file obey the same rules as ours: a key that could escape the folder is
    reported in the manifest and nothing is written for it.
    """
    counts = {"lines": 0, "succeeded": 0, "failed": 0, "invalid": 0}
    seen: set[str] = set()
    # Entries wait until their images are written, so an image refused for good is reported as such.
    pending: list[tuple[dict[str, Any], Outcome | None]] = []

    def drain(writer: ImageWriter, manifest: BinaryIO) -> None:
        refused = writer.flush()
        for entry, outcome in pending:
            if outcome is not None:
                if outcome.image is not None and outcome.image in refused:
                    outcome = outcome.unwritten(refused[outcome.image])
                counts[outcome.status] += 1
                entry.update({k: v for k, v in outcome.to_json().items() if k not in {"attempt", "model"}})
                entry["attempts"] = 1
            manifest.write(orjson.dumps(entry) + b"\n")
        pending.clear()

    with ImageWriter(out, concurrency) as writer, out.open_write("manifest.jsonl") as manifest:
        for number, raw in enumerate(iter_lines(stream), start=1):
            if _blank(raw):
                continue
            counts["lines"] += 1
            entry: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "line": number}
            reported: str | None = None  # the line's key as given: null only when the line cannot be parsed
            try:
                parsed = results.parse_result_line(raw)
                reported = parsed.key or f"line-{number}"
                key = check_key(reported)
                if key in seen:
                    raise UnsafeNameError(f"key {key!r} is used by an earlier line")
                seen.add(key)
            except PromptdropError as exc:
                # Only safe keys enter `seen`, so a reported key found there is a duplicate.
                code = (
                    "bad_json" if reported is None else "duplicate_key" if reported in seen else "invalid_key"
                )
                counts["invalid"] += 1
                entry.update(
                    key=reported,
                    status="invalid",
                    image=None,
                    mime_type=None,
                    bytes=None,
                    finish_reason=None,
                    text=None,
                    usage=None,
                    attempts=0,
                    error=LineError(code, str(exc)).to_json(),
                )
                pending.append((entry, None))
                continue
            image_name = None
            if parsed.succeeded and parsed.data is not None and parsed.extension:
                image_name = f"images/{key}.{parsed.extension}"
                writer.submit(image_name, parsed.data, parsed.mime_type, {"key": key})
            pending.append(
                (entry, Outcome.of_image(parsed, key, image_name=image_name, attempt=1, model=None))
            )
            if len(pending) >= CHECKPOINT_LINES:
                drain(writer, manifest)
        drain(writer, manifest)
    return counts
