"""Claim a prompt file or message as a run, then turn it into batch jobs.

Claim first, then side effects: the run record is one atomic create-if-absent keyed by the claim (bucket,
object, generation / message id), so a redelivered event finds it and does nothing more. Submission of a
claimed run is idempotent (deterministic chunks, jobs created if absent), so the poller can simply call it
again after a transient failure.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import mimetypes
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any, BinaryIO, Literal

import orjson

from promptdrop import prompts
from promptdrop.cost import CostTally, Money
from promptdrop.errors import PermanentError, TransientError
from promptdrop.layout import RunLayout
from promptdrop.manifest import Outcome
from promptdrop.models import ModelChoice, choose_model, model_spec
from promptdrop.names import file_claim_key, make_run_id, message_claim_key
from promptdrop.prompts import LineError, ParseOptions, PromptRequest
from promptdrop.records import Cost, Counts, Job, Run, RunSource
from promptdrop.settings import Settings
from promptdrop.states import JobPhase, RunState
from promptdrop.usecases.context import Context

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StorageObject:
    """An object that landed in the bucket (from a notification, a CloudEvent, or the local inbox scan)."""

    bucket: str
    name: str
    generation: str
    size: int


@dataclass(frozen=True, slots=True)
class InlineRequest:
    """A Pub/Sub request carrying its prompts."""

    claim_token: str  # message id, or the idempotency_key attribute
    name: str
    prompts: Sequence[Any]
    defaults: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Receipt:
    """What a trigger did: ``run`` is None when the object was ignored."""

    run: Run | None
    created: bool
    ignored: str | None = None


# How long a trigger may spend submitting what it claimed (launching jobs included); the rest is the poller's.
SUBMIT_ON_CLAIM_SECONDS = 60.0


def receive_file(ctx: Context, obj: StorageObject) -> Receipt:
    """A file landed in the inbox: claim it (once per generation) and submit it."""
    settings = ctx.settings
    if not obj.name.startswith(settings.inbox_prefix):
        return Receipt(None, False, f"{obj.name} is outside the inbox prefix {settings.inbox_prefix}")
    if obj.size == 0:
        return Receipt(None, False, f"{obj.name} is empty (uploaders send a zero-byte object first)")
    if PurePosixPath(obj.name).name.startswith("."):
        return Receipt(None, False, f"{obj.name} is a hidden file")
    return _receive_object(ctx, obj, "file")


def receive_uri(ctx: Context, obj: StorageObject) -> Receipt:
    """A message named a prompt file elsewhere in the bucket: claimed by that object's generation."""
    return _receive_object(ctx, obj, "uri")


def _receive_object(ctx: Context, obj: StorageObject, kind: Literal["file", "uri"]) -> Receipt:
    source = RunSource(
        kind=kind,
        bucket=obj.bucket,
        object=obj.name,
        generation=obj.generation,
        name=PurePosixPath(obj.name).stem,
        format=prompts.detect_format(obj.name) or "jsonl",
    )
    return _claim_and_submit(ctx, file_claim_key(obj.bucket, obj.name, obj.generation), source, obj.size)


def receive_inline(ctx: Context, request: InlineRequest) -> Receipt:
    """A message carrying prompts: staged as the run's input first (the message is the only copy), then claimed."""
    claim = message_claim_key("requests", request.claim_token)
    run_id = make_run_id(request.name or "message", claim)
    layout = ctx.layout(run_id)
    existing = ctx.store.get_run(run_id)
    if existing is None:
        # One line per prompt, so line numbers are the 1-based indexes in `prompts`; the message's defaults
        # travel in the run record instead of a defaults line.
        with ctx.blobs.open_write(layout.input("jsonl"), content_type="application/jsonl") as out:
            for item in request.prompts:
                # A string item is a plain prompt; anything else is a JSONL line as written.
                out.write(orjson.dumps({"prompt": item} if isinstance(item, str) else item) + b"\n")
    source = RunSource(
        kind="message",
        message_id=request.claim_token,
        name=request.name or "message",
        defaults=dict(request.defaults) if request.defaults else None,
    )
    staged = ctx.blobs.stat(layout.input("jsonl"))
    return _claim_and_submit(ctx, claim, source, staged.size if staged else None)


def _claim_and_submit(ctx: Context, claim: str, source: RunSource, size: int | None) -> Receipt:
    settings = ctx.settings
    run_id = make_run_id(source.name, claim)
    layout = ctx.layout(run_id)
    now = ctx.clock()
    run = Run(
        run_id=run_id,
        claim_key=claim,
        state=RunState.RECEIVED,
        source=source,
        input_object=layout.input(source.format),
        output_folder=layout.folder,
        model=settings.model,
        created_at=now,
        updated_at=now,
    )
    if not ctx.store.create_run(run):
        existing = ctx.store.get_run(run_id)
        log.info("already claimed; nothing to do", extra={"run_id": run_id})
        return Receipt(existing, False)
    log.info("claimed %s", source.object or f"message {source.message_id}", extra={"run_id": run_id})
    if size is not None and size > settings.submit_on_claim_max_bytes:
        # Parsing and uploading a big file takes minutes: the trigger answers now, the poller submits.
        log.info(
            "%d bytes is over PROMPTDROP_SUBMIT_ON_CLAIM_MAX_BYTES; the poller submits it",
            size,
            extra={"run_id": run_id},
        )
        return Receipt(run, True)
    if not ctx.store.acquire_lease("run", run_id, ctx.owner, settings.lease_seconds, ctx.clock()):
        return Receipt(run, True)  # a poller got there first; it will submit
    try:
        run = submit_or_backoff(ctx, run, ctx.clock() + SUBMIT_ON_CLAIM_SECONDS)
    except PermanentError as exc:
        # Claimed, so the work is recorded and the poller tries again each tick (e.g. once a refused API
        # key is replaced); said here, where the run id is known, rather than by the trigger.
        log.error("submission refused: %s", exc, extra={"run_id": run_id})
        return Receipt(ctx.store.get_run(run_id) or run, True)
    finally:
        ctx.store.release_lease("run", run_id, ctx.owner)
    return Receipt(run, True)


def submit_or_backoff(ctx: Context, run: Run, deadline: float | None = None) -> Run:
    """Submit a RECEIVED run; on a transient failure record a backoff for the poller, never raise it."""
    try:
        return submit_run(ctx, run, deadline)
    except TransientError as exc:
        attempts = run.submit_attempts + 1
        delay = min(ctx.settings.submit_retry_base * 2 ** (attempts - 1), 3600.0)
        log.warning(
            "submission failed transiently (%s); retry in %.0fs", exc, delay, extra={"run_id": run.run_id}
        )
        return ctx.store.update_run(
            run.run_id,
            {
                "submit_attempts": attempts,
                "next_attempt_at": ctx.clock() + delay,
                "reason": f"retrying: {exc}",
            },
        )


def submit_run(ctx: Context, run: Run, deadline: float | None = None) -> Run:
    """RECEIVED -> SUBMITTED (jobs recorded and launched as capacity allows) or a terminal state."""
    from promptdrop.usecases import poll, settle  # the cycle is only at call time

    if run.state is not RunState.RECEIVED:
        return run
    layout = ctx.layout(run.run_id)
    try:
        _stage_input(ctx, run)
        parse_options(ctx.settings, run.source.defaults)
    except PermanentError as exc:
        return settle.fail_unusable(ctx, run, str(exc))
    if ctx.settings.max_cost_usd is not None:
        estimate = _estimate(ctx, run)
        if estimate.batch is not None and estimate.batch > ctx.settings.max_cost_usd:
            reason = (
                f"estimated batch cost ${estimate.batch:.4f} exceeds the budget cap "
                f"PROMPTDROP_MAX_COST_USD=${ctx.settings.max_cost_usd:.4f}; nothing was submitted"
            )
            run = ctx.store.update_run(
                run.run_id,
                {
                    "cost": Cost(
                        estimate=estimate.batch, estimate_interactive=estimate.interactive
                    ).model_dump()
                },
            )
            return settle.fail_refused(ctx, run, reason, LineError("budget_exceeded", reason))
    plan = _write_chunks(ctx, run, layout)
    for job in plan.jobs:
        ctx.store.create_job(job)
    for choice in plan.models.values():
        if choice.notice or choice.code:
            # Said to people by `run`/`status` and in summary.json; logged for the Cloud deployment.
            log.info(
                "model %s: %s",
                choice.requested,
                choice.notice or choice.message,
                extra={"run_id": run.run_id},
            )
    run = ctx.store.update_run(
        run.run_id,
        {
            "state": RunState.SUBMITTED.value,
            "model_choices": [choice.to_json() for choice in plan.models.values()],
            "counts": plan.counts.model_dump(),
            "cost": Cost(
                estimate=plan.cost.total.batch, estimate_interactive=plan.cost.total.interactive
            ).model_dump(),
            "reason": None,
        },
        if_states=[RunState.RECEIVED],
    )
    log.info(
        "submitted %d valid of %d lines in %d job(s)",
        plan.counts.valid,
        plan.counts.lines,
        len(plan.jobs),
        extra={"run_id": run.run_id},
    )
    if not plan.jobs:
        return settle.settle_run(ctx, run)
    poll.launch_queued_jobs(ctx, run, deadline)
    return ctx.store.get_run(run.run_id) or run


def _stage_input(ctx: Context, run: Run) -> None:
    """Copy the prompt file into the run's folder, so a later overwrite of the inbox object cannot change the run."""
    if ctx.blobs.stat(run.input_object) is not None:
        return
    source = run.source
    if source.kind == "message" or source.object is None:
        raise PermanentError("the message's prompts were not staged")
    info = ctx.blobs.stat(source.object)
    if info is None or info.generation != source.generation:
        raise PermanentError(f"{source.object} was deleted or replaced before it could be read")
    if prompts.detect_format(source.object) is None:
        raise PermanentError(
            f"{source.object} is not a prompt file: use .jsonl (one JSON object per line) or .txt"
        )
    if info.size > ctx.settings.max_file_bytes:
        raise PermanentError(
            f"{source.object} is {info.size} bytes, over PROMPTDROP_MAX_FILE_BYTES={ctx.settings.max_file_bytes}"
        )
    ctx.blobs.copy(source.object, run.input_object)


def parse_options(settings: Settings, message_defaults: Mapping[str, Any] | None = None) -> ParseOptions:
    """How input is parsed: the deployment's defaults, and a message's own defaults over them."""
    defaults = prompts.FileDefaults()
    if message_defaults:
        defaults = prompts.parse_defaults(dict(message_defaults))  # InputError: the run is unusable
    return ParseOptions(
        default_model=settings.model,
        defaults=defaults,
        max_line_bytes=settings.max_line_bytes,
        bucket_name=settings.bucket_name if settings.bucket_is_gcs else None,
        default_priority=settings.priority,
    )


@contextlib.contextmanager
def parsed_input(ctx: Context, run: Run) -> Iterator[Iterator[prompts.ParsedLine]]:
    """Stream the run's staged input through the pure parser (used by submit, retry and settle alike)."""
    options = parse_options(ctx.settings, run.source.defaults)
    with ctx.blobs.open_read(run.input_object) as stream:
        yield prompts.parse_prompt_file(stream, run.source.format, options)


def _estimate(ctx: Context, run: Run) -> Money:
    tally = CostTally()
    with parsed_input(ctx, run) as lines:
        for line in lines:
            if isinstance(line, PromptRequest):
                tally.add_estimate(line.model, line.image_size, line.estimated_input_tokens)
    return tally.total


def request_tokens(req: PromptRequest) -> int:
    """Tokens one request puts in the enqueued-token budget: its input plus the image it asks for."""
    spec = model_spec(req.model)
    output = spec.tokens_for(req.image_size) if spec else 1290
    return req.estimated_input_tokens + output


class ModelChooser:
    """What a run's lines run on, per model id they ask for: asked of the API once per id (``models.get``)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.choices: dict[str, ModelChoice] = {}

    def __call__(self, requested: str) -> ModelChoice:
        choice = self.choices.get(requested)
        if choice is None:
            choice = choose_model(
                requested,
                self.ctx.backend.model_served,
                policy=self.ctx.settings.retired_models,
                today=datetime.fromtimestamp(self.ctx.clock(), UTC).date(),
            )
            self.choices[requested] = choice
        return choice


@dataclass
class _Plan:
    counts: Counts = field(default_factory=Counts)
    cost: CostTally = field(default_factory=CostTally)
    jobs: list[Job] = field(default_factory=list)
    refused: list[Outcome] = field(default_factory=list)
    models: dict[str, ModelChoice] = field(default_factory=dict)


class _ChunkWriter:
    """Writes one job's request file and key list, opened lazily, closed when full."""

    def __init__(
        self, ctx: Context, layout: RunLayout, run: Run, attempt: int, chunk: int, model: str, priority: int
    ) -> None:
        self.ctx, self.layout, self.run = ctx, layout, run
        self.job_id = f"{run.run_id}-a{attempt}-c{chunk:04d}"
        self.attempt, self.chunk, self.model, self.priority = attempt, chunk, model, priority
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
        return self.count == 0 or (
            self.count < settings.max_requests_per_job
            and self.bytes + size <= settings.max_job_bytes
            and self.tokens + tokens <= settings.max_enqueued_tokens
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
    """Splits requests into jobs by model and priority, request count, bytes and the enqueued-token budget."""

    def __init__(self, ctx: Context, run: Run, attempt: int, first_chunk: int = 0) -> None:
        self.ctx, self.run, self.attempt = ctx, run, attempt
        self.layout = ctx.layout(run.run_id)
        self.next_chunk = first_chunk
        self.open: dict[tuple[str, int], _ChunkWriter] = {}
        self.jobs: list[Job] = []

    def add(
        self, model: str, key: str, line: int, request_line: bytes, tokens: int, *, priority: int = 0
    ) -> None:
        writer = self.open.get((model, priority))
        if writer is not None and not writer.fits(len(request_line) + 1, tokens):
            self.jobs.append(writer.close())
            writer = None
        if writer is None:
            writer = _ChunkWriter(
                self.ctx, self.layout, self.run, self.attempt, self.next_chunk, model, priority
            )
            self.next_chunk += 1
            self.open[(model, priority)] = writer
        writer.add(key, line, request_line, tokens)

    def finish(self) -> list[Job]:
        for writer in self.open.values():
            self.jobs.append(writer.close())
        self.open.clear()
        return sorted(self.jobs, key=lambda job: job.chunk)

    def abort(self) -> None:
        for writer in self.open.values():
            writer.abort()
        self.open.clear()


def _write_chunks(ctx: Context, run: Run, layout: RunLayout) -> _Plan:
    plan = _Plan()
    planner = ChunkPlanner(ctx, run, attempt=1)
    choose = ModelChooser(ctx)
    try:
        with parsed_input(ctx, run) as lines:
            for line in lines:
                plan.counts.lines += 1
                if not isinstance(line, PromptRequest):
                    plan.counts.invalid += 1
                    continue
                try:
                    # The API decides what is served; a retired id runs on its replacement, or is refused.
                    choice = choose(line.model)
                    if choice.model is None:
                        raise _Refused(LineError(choice.code or "unknown_model", choice.message or ""))
                    model = choice.model
                    parts = resolve_images(ctx, line)
                    request_line = prompts.request_line(line, parts)
                    if len(request_line) > ctx.settings.max_line_bytes:
                        raise _Refused(
                            LineError(
                                "request_too_large",
                                f"the request with its reference images is {len(request_line)} bytes, over "
                                f"PROMPTDROP_MAX_LINE_BYTES={ctx.settings.max_line_bytes}",
                            )
                        )
                except _Refused as refused:
                    plan.counts.invalid += 1
                    plan.refused.append(
                        Outcome.failure(
                            line.key, refused.error, attempt=0, model=line.model, status="invalid"
                        )
                    )
                    continue
                plan.counts.valid += 1
                plan.cost.add_estimate(model, line.image_size, line.estimated_input_tokens)
                planner.add(
                    model, line.key, line.line, request_line, request_tokens(line), priority=line.priority
                )
        plan.jobs = planner.finish()
        plan.models = choose.choices
    except BaseException:
        planner.abort()
        raise
    if plan.refused:
        data = b"".join(orjson.dumps(o.to_json()) + b"\n" for o in plan.refused)
        ctx.blobs.write_bytes(layout.submit_outcomes, data, content_type="application/jsonl")
    return plan


class _Refused(Exception):
    def __init__(self, error: LineError) -> None:
        super().__init__(error.message)
        self.error = error


def resolve_images(ctx: Context, req: PromptRequest) -> list[dict[str, Any]]:
    """Reference images from the bucket as request parts: inline when small, through the Files API when large."""
    parts: list[dict[str, Any]] = []
    for ref in req.image_refs:
        info = ctx.blobs.stat(ref)
        if info is None:
            raise _Refused(LineError("bad_image_ref", f"reference image {ref} does not exist in the bucket"))
        mime = info.content_type or mimetypes.guess_type(ref)[0] or ""
        if not mime.startswith("image/"):
            raise _Refused(
                LineError("bad_image_ref", f"reference {ref} is not an image ({mime or 'unknown type'})")
            )
        if info.size <= ctx.settings.inline_image_max_bytes:
            data = base64.b64encode(ctx.blobs.read_bytes(ref)).decode("ascii")
            parts.append({"inlineData": {"mimeType": mime, "data": data}})
        else:
            with ctx.blobs.open_read(ref) as stream:
                uploaded = ctx.backend.upload_file(
                    stream, size=info.size, display_name=PurePosixPath(ref).name, mime_type=mime
                )
            parts.append({"fileData": {"fileUri": uploaded.uri, "mimeType": mime}})
    return parts
