"""Claim a prompt file or message as a run, then move it on.

Claim first, then side effects: the run record is one atomic create-if-absent keyed by the claim (bucket,
object, generation / message id), so a redelivered event finds it and does nothing more. The run id is
short and readable (``<name>-<8 hex of the claim>``); when that id is taken by another claim, a longer
one is used, so a second upload is never mistaken for the first. After the claim the run goes through
``advance_run`` like every other trigger's.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import PurePosixPath
from typing import Any, Literal

import orjson

from promptdrop import prompts
from promptdrop.events import NowChunk, StorageObject
from promptdrop.names import candidate_run_ids, file_claim_key, message_claim_key
from promptdrop.records import Run, RunSource
from promptdrop.states import RUN_ACTIVE, JobPhase, RunState
from promptdrop.usecases.advance import advance_run
from promptdrop.usecases.context import Context

log = logging.getLogger(__name__)

# How long a trigger may spend moving what it claimed on (launching jobs included); the rest is the poller's.
SUBMIT_ON_CLAIM_SECONDS = 60.0


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


def receive_file(ctx: Context, obj: StorageObject, *, fresh: bool = False) -> Receipt:
    """A file landed in the inbox: claim it (once per generation) and move it on.

    ``fresh`` (`run --fresh`): every line is submitted, none served from the pay-once cache.
    """
    settings = ctx.settings
    if not obj.name.startswith(settings.inbox_prefix):
        return Receipt(None, False, f"{obj.name} is outside the inbox prefix {settings.inbox_prefix}")
    if PurePosixPath(obj.name).name.startswith("."):
        return Receipt(None, False, f"{obj.name} is a hidden file")
    if obj.size is None:  # a notification without payload: ask the bucket
        info = ctx.blobs.stat(obj.name)
        if info is None or info.generation != obj.generation:
            return Receipt(None, False, f"{obj.name}#{obj.generation} is gone or replaced")
        obj = replace(obj, size=info.size)
    if obj.size == 0:
        return Receipt(None, False, f"{obj.name} is empty (uploaders send a zero-byte object first)")
    return _receive_object(ctx, obj, "file", fresh=fresh)


def unfinished_twin(
    ctx: Context, size: int, digest: str, fmt: Literal["jsonl", "txt"], *, fresh: bool = False
) -> Run | None:
    """The newest unfinished file run whose input has exactly these bytes (``size``, sha256 ``digest``),
    format and ``fresh`` choice: the CLI attaches to it rather than paying for the same lines twice."""
    runs = sorted(ctx.store.list_runs(RUN_ACTIVE), key=lambda r: r.created_at, reverse=True)
    for run in runs:
        if run.source.kind != "file" or run.source.format != fmt or run.fresh != fresh:
            continue
        # The run's own copy once made; the inbox object until then.
        for name in (run.input_object, run.source.object):
            info = ctx.blobs.stat(name) if name else None
            if info is None or name is None:
                continue
            if info.size == size and _sha256(ctx, name) == digest:
                return run
            break
    return None


def _sha256(ctx: Context, name: str) -> str:
    digest = hashlib.sha256()
    with ctx.blobs.open_read(name) as stream:
        while block := stream.read(4 * 1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


def receive_uri(ctx: Context, obj: StorageObject) -> Receipt:
    """A message named a prompt file elsewhere in the bucket: claimed by that object's generation."""
    return _receive_object(ctx, obj, "uri")


def _receive_object(
    ctx: Context, obj: StorageObject, kind: Literal["file", "uri"], *, fresh: bool = False
) -> Receipt:
    source = RunSource(
        kind=kind,
        bucket=obj.bucket,
        object=obj.name,
        generation=obj.generation,
        name=PurePosixPath(obj.name).stem,
        format=prompts.detect_format(obj.name) or "jsonl",
    )
    claim = file_claim_key(obj.bucket, obj.name, obj.generation)
    return _claim_and_advance(ctx, claim, source, obj.size, fresh=fresh)


def receive_inline(ctx: Context, request: InlineRequest) -> Receipt:
    """A message carrying prompts: staged as the run's input first (the message is the only copy), then claimed."""

    staged_size: list[int] = []

    def stage(run_id: str) -> None:
        # One line per prompt, so line numbers are the 1-based indexes in `prompts`; the message's defaults
        # travel in the run record instead of a defaults line.
        with ctx.blobs.open_write(ctx.layout(run_id).input("jsonl"), content_type="application/jsonl") as out:
            for item in request.prompts:
                # A string item is a plain prompt; anything else is a JSONL line as written.
                line = orjson.dumps({"prompt": item} if isinstance(item, str) else item) + b"\n"
                out.write(line)
                staged_size.append(len(line))

    source = RunSource(
        kind="message",
        message_id=request.claim_token,
        name=request.name or "message",
        defaults=dict(request.defaults) if request.defaults else None,
    )
    claim = message_claim_key("requests", request.claim_token)
    return _claim_and_advance(ctx, claim, source, lambda: sum(staged_size), stage)


def receive_now_chunk(ctx: Context, chunk: NowChunk, deadline: float | None) -> bool:
    """A now-lane chunk handed over by ``dispatch_now_jobs``: advance its run, sending its now lines here.

    True when there is nothing left for this message (the chunk is done, or its run ended or is gone);
    False when the chunk is still open (its run was leased by another worker, or time ran out): the caller
    asks for the message again, and the next delivery goes on from the chunk's checkpoint.
    """
    advance_run(ctx, chunk.run_id, deadline, work_now=True)
    run = ctx.store.get_run(chunk.run_id)
    job = ctx.store.get_job(chunk.job_id)
    if run is None or run.state.terminal or job is None or job.phase is JobPhase.DONE:
        return True
    log.info("now chunk still open (%s)", job.phase.value, extra={"run_id": run.run_id, "job": job.job_id})
    return False


def _claim_and_advance(
    ctx: Context,
    claim: str,
    source: RunSource,
    size: int | Callable[[], int] | None,
    stage: Callable[[str], None] | None = None,
    *,
    fresh: bool = False,
) -> Receipt:
    run, created = _claim(ctx, claim, source, stage, fresh=fresh)
    if not created:
        log.info("already claimed; nothing to do", extra={"run_id": run.run_id})
        return Receipt(run, False)
    log.info("claimed %s", source.object or f"message {source.message_id}", extra={"run_id": run.run_id})
    size = size() if callable(size) else size
    if size is not None and size > ctx.settings.submit_on_claim_max_bytes:
        # Parsing and uploading a big file takes minutes: the trigger answers now, the poller submits.
        log.info(
            "%d bytes is over PROMPTDROP_SUBMIT_ON_CLAIM_MAX_BYTES; the poller submits it",
            size,
            extra={"run_id": run.run_id},
        )
        return Receipt(run, True)
    # Failures are logged by advance_run and left to the poller: the claim is recorded either way.
    result = advance_run(ctx, run.run_id, ctx.clock() + SUBMIT_ON_CLAIM_SECONDS)
    return Receipt(result.run or ctx.store.get_run(run.run_id) or run, True)


def _claim(
    ctx: Context, claim: str, source: RunSource, stage: Callable[[str], None] | None, *, fresh: bool = False
) -> tuple[Run, bool]:
    """The run of this claim, and whether this call created it. The claim key is always compared: an id
    taken by another claim (two generations of one name whose hashes share a prefix) means a longer id."""
    for run_id in candidate_run_ids(source.name, claim):
        existing = ctx.store.get_run(run_id)
        if existing is None:
            if stage is not None:
                stage(run_id)
            run = _new_run(ctx, run_id, claim, source, fresh=fresh)
            if ctx.store.create_run(run):
                return run, True
            existing = ctx.store.get_run(run_id)
            if existing is None:  # created and deleted meanwhile: not ours to guess about
                continue
        if existing.claim_key == claim:
            return existing, False
        log.warning("run id %s belongs to another claim; using a longer id", run_id, extra={"run_id": run_id})
    raise AssertionError(f"no free run id for claim {claim!r}")  # the last candidate is the whole hash


def _new_run(ctx: Context, run_id: str, claim: str, source: RunSource, *, fresh: bool = False) -> Run:
    layout = ctx.layout(run_id)
    now = ctx.clock()
    return Run(
        run_id=run_id,
        claim_key=claim,
        state=RunState.RECEIVED,
        source=source,
        input_object=layout.input(source.format),
        output_folder=layout.folder,
        model=ctx.settings.model,
        created_at=now,
        updated_at=now,
        fresh=fresh,
    )
