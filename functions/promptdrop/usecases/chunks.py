"""Chunk planning: requests split into jobs by lane, model, count, bytes and the enqueued-token budget.

A now-lane chunk holds at most ``now_chunk_lines`` lines (the unit one function invocation sends).

Each job's request file and key list are written as the lines go by; the job records are returned for
the caller to store. Chunks are deterministic, so planning the same lines again gives the same jobs.
"""

from __future__ import annotations

import contextlib
from typing import BinaryIO

import orjson

from promptdrop.layout import RunLayout
from promptdrop.models import model_spec
from promptdrop.prompts import Lane, PromptRequest
from promptdrop.records import Job, Run
from promptdrop.states import JobPhase
from promptdrop.usecases.context import Context


def job_id(run_id: str, attempt: int, chunk: int) -> str:
    """Also the batch's display name: what an ambiguous create is looked up by."""
    return f"{run_id}-a{attempt}-c{chunk:04d}"


def request_tokens(req: PromptRequest) -> int:
    """Tokens one request puts in the enqueued-token budget: its input plus the image it asks for."""
    spec = model_spec(req.model)
    output = spec.tokens_for(req.image_size) if spec else 1290
    return req.estimated_input_tokens + output


class _ChunkWriter:
    """Writes one job's request file and key list, opened lazily, closed when full."""

    def __init__(
        self,
        ctx: Context,
        layout: RunLayout,
        run: Run,
        attempt: int,
        chunk: int,
        model: str,
        priority: int,
        lane: Lane = "batch",
    ) -> None:
        self.ctx, self.layout, self.run = ctx, layout, run
        self.job_id = job_id(run.run_id, attempt, chunk)
        self.attempt, self.chunk, self.model, self.priority = attempt, chunk, model, priority
        self.lane = lane
        self.count = self.bytes = self.tokens = 0
        self._stack = contextlib.ExitStack()
        self._requests: BinaryIO = self._stack.enter_context(
            ctx.blobs.open_write(layout.job_requests(self.job_id), content_type="application/jsonl")
        )
        self._keys: BinaryIO = self._stack.enter_context(
            ctx.blobs.open_write(layout.job_keys(self.job_id), content_type="application/jsonl")
        )

    def fits(self, size: int, tokens: int) -> bool:
        settings = self.ctx.settings
        if self.lane == "now":
            return self.count < max(1, settings.now_chunk_lines)
        return self.count == 0 or (
            self.count < settings.max_requests_per_job
            and self.bytes + size <= settings.max_job_bytes
            and self.tokens + tokens <= settings.enqueued_token_budget(self.model)
        )

    def add(self, key: str, line: int, request_line: bytes, tokens: int) -> None:
        self._requests.write(request_line)
        self._requests.write(b"\n")
        self._keys.write(orjson.dumps({"key": key, "line": line}) + b"\n")
        self.count += 1
        self.bytes += len(request_line) + 1
        self.tokens += tokens

    def close(self) -> Job:
        self._stack.close()
        now = self.ctx.clock()
        return Job(
            job_id=self.job_id,
            run_id=self.run.run_id,
            attempt=self.attempt,
            chunk=self.chunk,
            phase=JobPhase.QUEUED,
            lane=self.lane,
            model=self.model,
            priority=self.priority,
            request_object=self.layout.job_requests(self.job_id),
            request_count=self.count,
            request_bytes=self.bytes,
            estimated_tokens=self.tokens,
            created_at=now,
            updated_at=now,
        )

    def abort(self) -> None:
        # Unwinding with an exception discards the half-written objects.
        self._stack.__exit__(RuntimeError, RuntimeError("aborted"), None)


class ChunkPlanner:
    """Splits requests into jobs by lane, model and priority, request count, bytes and the enqueued-token budget."""

    def __init__(self, ctx: Context, run: Run, attempt: int, first_chunk: int = 0) -> None:
        self.ctx, self.run, self.attempt = ctx, run, attempt
        self.layout = ctx.layout(run.run_id)
        self.next_chunk = first_chunk
        self.open: dict[tuple[Lane, str, int], _ChunkWriter] = {}
        self.jobs: list[Job] = []

    def add(
        self,
        model: str,
        key: str,
        line: int,
        request_line: bytes,
        tokens: int,
        *,
        priority: int = 0,
        lane: Lane = "batch",
    ) -> None:
        group = (lane, model, priority)
        writer = self.open.get(group)
        if writer is not None and not writer.fits(len(request_line) + 1, tokens):
            self.jobs.append(writer.close())
            writer = None
        if writer is None:
            writer = _ChunkWriter(
                self.ctx, self.layout, self.run, self.attempt, self.next_chunk, model, priority, lane
            )
            self.next_chunk += 1
            self.open[group] = writer
        writer.add(key, line, request_line, tokens)

    def add_line(self, model: str, line: PromptRequest, request_line: bytes) -> None:
        """A prompt line as sent (``request_line``), on ``model``, in its lane and priority."""
        self.add(
            model,
            line.key,
            line.line,
            request_line,
            request_tokens(line),
            priority=line.priority,
            lane=line.lane,
        )

    def finish(self) -> list[Job]:
        for writer in self.open.values():
            self.jobs.append(writer.close())
        self.open.clear()
        return sorted(self.jobs, key=lambda job: job.chunk)

    def abort(self) -> None:
        for writer in self.open.values():
            writer.abort()
        self.open.clear()
