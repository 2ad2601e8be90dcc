"""Copy a job's results file from the Files API into the bucket, in parts that survive a killed invocation.

A results file of 10,000 4K images is tens of GB: more than one Cloud Function invocation (540 s) can copy.
So the copy is cut into parts of ``PROMPTDROP_RESULTS_PART_BYTES``; each part is an object that appears only
when whole, and the job record counts the parts written. The time budget is checked as the bytes arrive: at
the deadline the download is stopped and the part being written is closed short (its size recorded), so a
download slower than one part per budget still moves on every invocation. The next tick resumes with a ranged
download from the first byte not yet in a part. Each byte of the file is thus copied at most once, plus at
most one part that a kill cut off.

The harvest then reads the parts in order as one stream (``open_copied_results``).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any, BinaryIO, cast

from promptdrop.layout import RunLayout
from promptdrop.ports import BlobStore
from promptdrop.records import Job, Run
from promptdrop.usecases.context import Context
from promptdrop.usecases.leases import renew

log = logging.getLogger(__name__)

# An invocation keeps at least this many bytes before it stops for time. Stopping throws away what the
# connection already had in flight (socket buffers: tens of kB on a small file); a call whose deadline had
# already passed when it began would otherwise keep one block and throw the rest away on every tick.
MIN_PROGRESS_BYTES = 128 * 1024


class _OutOfTime(Exception):
    """Raised from inside the download to stop it (the part being written is then kept, short)."""


class _PartWriter(io.RawIOBase):
    """A writable the download streams into: every ``part_bytes`` it closes a part and records it."""

    def __init__(self, ctx: Context, run: Run, job: Job, deadline: float | None) -> None:
        super().__init__()
        self.ctx, self.run, self.job, self.deadline = ctx, run, job, deadline
        self.layout = ctx.layout(run.run_id)
        self.part_bytes = job.results_part_size
        self._stack = contextlib.ExitStack()
        self._out: BinaryIO | None = None
        self._filled = 0
        self._taken = 0  # bytes this call kept

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        taken = 0
        while taken < len(view):
            if self._out is None:
                name = self.layout.job_results_part(self.job.job_id, self.job.results_parts)
                self._out = self._stack.enter_context(
                    self.ctx.blobs.open_write(name, content_type="application/jsonl")
                )
            piece = view[taken : taken + self.part_bytes - self._filled]
            self._out.write(piece)
            self._filled += len(piece)
            taken += len(piece)
            if self._filled == self.part_bytes:
                self._close_part()
        self._taken += taken
        if (
            self.deadline is not None
            and self._taken >= MIN_PROGRESS_BYTES
            and self.ctx.clock() >= self.deadline
        ):
            # The connection is closed first (no more bytes fetched to be thrown away), then ``keep``.
            raise _OutOfTime
        return taken

    def _close_part(self) -> None:
        """The part becomes an object, then the record says so (a crash between them redoes this part)."""
        self._stack.close()
        self._out = None
        changes: dict[str, Any] = {
            "results_parts": self.job.results_parts + 1,
            "results_copied": self.job.results_copied + self._filled,
        }
        if self._filled != self.part_bytes:
            short = {**self.job.results_short_parts, str(self.job.results_parts): self._filled}
            changes["results_short_parts"] = short
        self.job = _record(self.ctx, self.run, self.job, changes)
        self._filled = 0

    def keep(self) -> None:
        """Out of time: the bytes of the part being written are kept as a shorter part."""
        if self._out is not None and self._filled:
            self._close_part()
        self._stack.close()
        self._out = None

    def finish(self) -> Job:
        """The download ended: the last (short) part, then the copy is done."""
        if self._out is not None and self._filled:
            self._close_part()
        self._stack.close()
        self.job = _record(self.ctx, self.run, self.job, {"results_copy_done": True})
        return self.job

    def abandon(self) -> None:
        """A part cut off mid-way is discarded (never published half)."""
        self._stack.__exit__(_OutOfTime, _OutOfTime(), None)
        self._out = None


def _record(ctx: Context, run: Run, job: Job, changes: dict[str, Any]) -> Job:
    # Long copies outlive a lease; renewing it also tells us if another worker took the run over.
    renew(ctx, run.run_id)
    return ctx.store.update_job(job.job_id, changes)


def copy_results(ctx: Context, run: Run, job: Job, deadline: float | None) -> tuple[Job, bool]:
    """Copy what is left of ``job.results_file`` into parts. Returns (job, done); not done = out of time."""
    results_file = job.results_file
    assert results_file is not None
    if job.results_copy_done:
        return job, True
    if not job.results_part_size:
        # Fixed once per copy: a redeploy with another setting must not shift where parts begin.
        job = _record(ctx, run, job, {"results_part_size": max(1, ctx.settings.results_part_bytes)})
    writer = _PartWriter(ctx, run, job, deadline)
    extra = {"run_id": run.run_id, "job": job.batch_name or job.job_id}
    try:
        ctx.backend.download_file(results_file, cast(BinaryIO, writer), start=job.results_copied)
    except _OutOfTime:
        writer.keep()
        log.info(
            "results copy paused after %d bytes in %d part(s) (time budget)",
            writer.job.results_copied,
            writer.job.results_parts,
            extra=extra,
        )
        return writer.job, False
    except BaseException:
        writer.abandon()
        raise
    job = writer.finish()
    log.info("results copied: %d bytes in %d part(s)", job.results_copied, job.results_parts, extra=extra)
    return job, True


def part_sizes(job: Job) -> list[int]:
    """Bytes in each copied part: the part size, but for the parts closed short (the last is read to its end)."""
    return [
        job.results_short_parts.get(str(part), job.results_part_size) for part in range(job.results_parts)
    ]


class _Parts(io.RawIOBase):
    """The copied parts read in order as one stream, from a byte offset of the whole file."""

    def __init__(self, blobs: BlobStore, names: list[str], sizes: list[int], start: int) -> None:
        super().__init__()
        self.blobs, self.names = blobs, names
        self._index, self._offset = 0, start
        # The part holding byte ``start``, and where in it: past the parts before it.
        while self._index < len(names) and self._offset >= sizes[self._index]:
            self._offset -= sizes[self._index]
            self._index += 1
        self._stack = contextlib.ExitStack()
        self._current: BinaryIO | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while self._index < len(self.names):
            if self._current is None:
                self._current = self._stack.enter_context(
                    self.blobs.open_read(self.names[self._index], start=self._offset)
                )
                self._offset = 0
            data = self._current.read(len(buffer))
            if data:
                buffer[: len(data)] = data
                return len(data)
            self._stack.close()
            self._current = None
            self._index += 1
        return 0

    def close(self) -> None:
        self._stack.close()
        super().close()


@contextlib.contextmanager
def open_parts(blobs: BlobStore, names: list[str], sizes: list[int], start: int) -> Iterator[BinaryIO]:
    """Objects of these sizes read in order as one stream, from byte ``start`` of the whole: the parts of a
    copied results file, or a Vertex AI job's prediction files where it wrote them."""
    reader = _Parts(blobs, names, sizes, start)
    with contextlib.closing(reader):
        yield reader  # type: ignore[misc]


def open_copied_results(
    ctx: Context, layout: RunLayout, job: Job, start: int
) -> AbstractContextManager[BinaryIO]:
    """Read a copied results file from byte ``start``."""
    return open_parts(ctx.blobs, copied_part_names(layout, job), part_sizes(job), start)


def copied_part_names(layout: RunLayout, job: Job) -> list[str]:
    return [layout.job_results_part(job.job_id, part) for part in range(job.results_parts)]
