"""Submit a claimed run: RECEIVED -> SUBMITTED, its lines written as queued jobs (or a terminal state).

Idempotent (deterministic chunks, jobs created if absent), so after a transient failure the run simply
backs off and is submitted again; launching the queued jobs is the next step of the lifecycle.
"""

from __future__ import annotations

import base64
import logging
import mimetypes
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

from promptdrop import prompts
from promptdrop.cost import CapEstimate, LaneMoney, LaneTally
from promptdrop.errors import NotFoundError, OutOfTimeError, PermanentError, PromptdropError, TransientError
from promptdrop.models import (
    ModelChoice,
    ServedModels,
    backend_doubts,
    backend_problem,
    choose_model,
    lane_problem,
)
from promptdrop.names import VERTEX_LABEL, vertex_label
from promptdrop.outcomes import LineError, Outcome
from promptdrop.prompts import PromptRequest
from promptdrop.records import Cost, Counts, Job, Run
from promptdrop.states import RunState
from promptdrop.usecases import gallery, spending
from promptdrop.usecases.cache import CacheSplit, ImageDigests
from promptdrop.usecases.chunks import ChunkPlanner
from promptdrop.usecases.context import Context
from promptdrop.usecases.inputs import parse_options, parsed_input, stage_input
from promptdrop.usecases.settle import fail_refused, fail_unusable
from promptdrop.usecases.workfiles import read_records, write_records, write_refused

log = logging.getLogger(__name__)


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
    """RECEIVED -> SUBMITTED (jobs recorded as QUEUED) or a terminal state; still RECEIVED when the time
    ran out while the pay-once cache was deciding or reference images were uploading (the next tick goes on
    from what was kept)."""
    if run.state is not RunState.RECEIVED:
        return run
    try:
        stage_input(ctx, run)
        parse_options(ctx.settings, run.source.defaults)
    except PermanentError as exc:
        return fail_unusable(ctx, run, str(exc))
    if spending.still_waiting(ctx, run):  # over a spend cap at the last check: not parsed again
        return run
    choose = ModelChooser(ctx)
    try:
        # Both caps are decided before anything is copied from the cache or sent.
        money, unserved = _screen(ctx, run, choose)
    except _RunRefused as refused:  # too many now lines: the whole run, before any line is sent
        return fail_refused(ctx, run, refused.error)
    notice = money.notice()
    cap = ctx.settings.max_cost_usd
    if cap is not None and money.amount > cap:
        now = money.total.now
        split = f" (now lines ${now:.4f} at the interactive price)" if now else ""
        reason = (
            f"estimated cost ${money.amount:.4f}{split} exceeds the budget cap "
            f"PROMPTDROP_MAX_COST_USD=${cap:.4f}; nothing was submitted" + (f"; {notice}" if notice else "")
        )
        run = ctx.store.update_run(run.run_id, {"cost": _estimate_cost(money.known).model_dump()})
        write_refused(ctx, ctx.layout(run.run_id), unserved)  # they end invalid, not over the budget
        return fail_refused(ctx, run, LineError("budget_exceeded", reason))
    if notice:
        log.info("estimate: %s", notice, extra={"run_id": run.run_id})
    waiting = spending.reserve(ctx, run, money.amount)
    if waiting is not None:
        return waiting
    try:
        plan = _write_chunks(ctx, run, deadline, choose)
    except OutOfTimeError as paused:
        log.info("%s; the next tick goes on", paused, extra={"run_id": run.run_id})
        return run
    for job in plan.jobs:
        ctx.store.create_job(job)
    for choice in plan.models.values():
        if choice.notice or choice.code:
            # Said to people by `run`/`status` and in summary.json; a warning in the structured (Cloud) log,
            # where nobody reads the CLI's notice (at the terminal the CLI prints it once itself).
            log.log(
                logging.WARNING if ctx.settings.log_format == "json" else logging.INFO,
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
            "cost": _estimate_cost(plan.cost.total)
            .model_copy(
                update={"cached": len(plan.cache.served), "saved_by_cache": plan.cache.saved.total.batch}
            )
            .model_dump(),
            "reason": None,
            "next_attempt_at": 0.0,
            "waiting": len(plan.cache.waits),
            "waiting_on": sorted({w.payer.run_id for w in plan.cache.waits}),
        },
        if_states=[RunState.RECEIVED],
    )
    try:
        gallery.list_run(ctx, run)
    except PromptdropError as exc:  # only the page of all runs: its row is written again at the run's end
        log.warning("page of all runs not updated: %s", exc, extra={"run_id": run.run_id})
    log.info(
        "submitted %d valid of %d lines (%d in the now lane) in %d job(s)",
        plan.counts.valid,
        plan.counts.lines,
        plan.counts.now,
        len(plan.jobs),
        extra={"run_id": run.run_id},
    )
    return run


def _estimate_cost(money: LaneMoney) -> Cost:
    return Cost(
        estimate=money.total,
        estimate_interactive=money.batch.interactive,
        estimate_now=money.now,
        now=None,
    )


def _screen(ctx: Context, run: Run, choose: ModelChooser) -> tuple[CapEstimate, list[Outcome]]:
    """The estimate the budget cap is held against, after the now-lane cap (``_RunRefused``), and the lines
    refused for their model.

    Lines whose model the API does not serve end ``invalid`` and count nothing; a line whose model has no
    known price counts at the highest known price for its size, so no line turns the cap off.
    """
    money = CapEstimate(ctx.settings.backend)
    unserved: list[Outcome] = []
    now_asked = 0
    with parsed_input(ctx, run) as lines:
        for line in lines:
            if not isinstance(line, PromptRequest):
                continue
            if line.lane == "now":
                now_asked += 1
                if now_asked > ctx.settings.max_now_lines:
                    raise _RunRefused(_now_cap_error(ctx, line))
            choice = choose(line.model)
            if choice.model is None:
                unserved.append(_invalid(line, _model_error(choice)))
            elif (error := choose.line_error(choice.model, line)) is not None:
                unserved.append(_invalid(line, error))  # ends invalid: counts nothing
            else:
                money.add(line.lane, choice.model, line.image_size, line.estimated_input_tokens)
    return money, unserved


def _model_error(choice: ModelChoice) -> LineError:
    return LineError(choice.code or "unknown_model", choice.message or "")


def _invalid(line: PromptRequest, error: LineError) -> Outcome:
    return Outcome.failure(line.key, error, attempt=0, model=line.model, status="invalid")


def _now_cap_error(ctx: Context, line: PromptRequest) -> LineError:
    cap = ctx.settings.max_now_lines
    return LineError(
        "too_many_now_lines",
        f'more than {cap} lines ask for "lane": "now" (line {line.line} is number {cap + 1}), over '
        f"PROMPTDROP_MAX_NOW_LINES={cap}: the run was refused before any line was sent",
    )


class ModelChooser:
    """What a run's lines run on, per model id they ask for, from what the API serves (``models.list``, asked
    once per run and cached per process); a line whose lane the model cannot take is refused."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.choices: dict[str, ModelChoice] = {}
        self.doubts: dict[str, dict[str, None]] = {}  # requested id -> notices of unconfirmed limits
        self._served: ServedModels | None = None

    @property
    def served(self) -> ServedModels:
        if self._served is None:
            self._served = self.ctx.backend.served_models()
        return self._served

    def __call__(self, requested: str) -> ModelChoice:
        choice = self.choices.get(requested)
        if choice is None:
            settings = self.ctx.settings
            choice = choose_model(
                requested,
                self.served,
                policy=settings.retired_models,
                today=datetime.fromtimestamp(self.ctx.clock(), UTC).date(),
                model_map=settings.model_mapping,
            )
            self.choices[requested] = choice
        return choice

    def line_error(self, model: str, line: PromptRequest) -> LineError | None:
        """What refuses this line on ``model``: a lane the served model cannot take, or what the backend's
        table says it cannot run here (``models.backend_problem``); what the table leaves unconfirmed is
        noted for the model's notice (``decided``)."""
        problem = lane_problem(model, self.served, line.lane)
        settings = self.ctx.settings
        where = {"backend": settings.backend, "location": settings.vertex_location, "lane": line.lane}
        problem = problem or backend_problem(model, **where, size=line.image_size)
        if problem is not None:
            return LineError(*problem)
        for doubt in backend_doubts(model, **where, size=line.image_size):
            self.doubts.setdefault(line.model, {})[doubt] = None  # ordered, each said once
        return None

    def decided(self) -> dict[str, ModelChoice]:
        """The choices made, each notice joined by what the backend's table left unconfirmed for its lines."""
        return {
            requested: replace(
                choice, notice="; ".join(filter(None, (choice.notice, *self.doubts.get(requested, {}))))
            )
            if requested in self.doubts
            else choice
            for requested, choice in self.choices.items()
        }


@dataclass
class _Plan:
    cache: CacheSplit  # lines served from images paid for before
    cost: LaneTally  # at the backend's prices
    counts: Counts = field(default_factory=Counts)
    jobs: list[Job] = field(default_factory=list)
    refused: list[Outcome] = field(default_factory=list)
    models: dict[str, ModelChoice] = field(default_factory=dict)


def _write_chunks(ctx: Context, run: Run, deadline: float | None, choose: ModelChooser) -> _Plan:
    plan = _Plan(cache=CacheSplit(ctx, run), cost=LaneTally(ctx.settings.backend))
    plan.cache.prepare(_cacheable(ctx, run, choose), deadline)
    planner = ChunkPlanner(ctx, run, attempt=1)
    references = _ReferenceImages(ctx, run, deadline, plan.cache.digests)
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
                        raise _Refused(_model_error(choice))
                    model = choice.model
                    if line_error := choose.line_error(model, line):
                        raise _Refused(line_error)
                    if plan.cache.serve(line, model):  # paid for by an earlier run: not submitted
                        plan.counts.valid += 1
                        continue
                    request_line = _request_line(ctx, references, line)
                except _Refused as refused:
                    plan.counts.invalid += 1
                    plan.refused.append(_invalid(line, refused.error))
                    continue
                plan.counts.valid += 1
                plan.counts.now += line.lane == "now"
                plan.cost.add_estimate(line.lane, model, line.image_size, line.estimated_input_tokens)
                planner.add_line(model, line, request_line)
        references.keep()
        plan.jobs = planner.finish()
        plan.models = choose.decided()
        plan.cache.finish()
    except BaseException:
        planner.abort()
        raise
    write_refused(ctx, ctx.layout(run.run_id), plan.refused)
    return plan


def _request_line(ctx: Context, references: _ReferenceImages, line: PromptRequest) -> bytes:
    """The line as sent, its reference images inline or uploaded; refused when too large."""
    # Vertex AI has no key field: the key rides in the request's labels, which its predictions echo.
    labels = {VERTEX_LABEL: vertex_label(line.key)} if ctx.settings.backend == "vertex" else None
    request_line = prompts.request_line(line, references.parts(line), labels)
    if len(request_line) > ctx.settings.max_line_bytes:
        raise _Refused(
            LineError(
                "request_too_large",
                f"the request with its reference images is {len(request_line)} bytes, over "
                f"PROMPTDROP_MAX_LINE_BYTES={ctx.settings.max_line_bytes}",
            )
        )
    return request_line


def plan_lines(ctx: Context, run: Run, models: Mapping[str, str], planner: ChunkPlanner) -> list[Outcome]:
    """Add the run's lines named in ``models`` (key -> the model decided at submission) to ``planner``, in
    input order (lines that waited for another run and are now sent by this one). Returns the lines
    refused (a reference image gone, a request too large) as ``invalid`` outcomes."""
    references = _ReferenceImages(ctx, run, None, ImageDigests(ctx))
    refused: list[Outcome] = []
    with parsed_input(ctx, run) as lines:
        for line in lines:
            if not isinstance(line, PromptRequest) or line.key not in models:
                continue
            try:
                request_line = _request_line(ctx, references, line)
            except _Refused as exc:
                refused.append(
                    Outcome.failure(line.key, exc.error, attempt=0, model=line.model, status="invalid")
                )
                continue
            planner.add_line(models[line.key], line, request_line)
    references.keep()
    return refused


def _cacheable(ctx: Context, run: Run, choose: ModelChooser) -> Iterator[tuple[PromptRequest, str]]:
    """The valid lines with the model each runs on: what the pay-once cache is asked about first."""
    with parsed_input(ctx, run) as lines:
        for line in lines:
            if isinstance(line, PromptRequest) and (model := choose(line.model).model) is not None:
                yield line, model


class _Refused(Exception):
    """One line refused at submission."""

    def __init__(self, error: LineError) -> None:
        super().__init__(error.message)
        self.error = error


class _RunRefused(_Refused):
    """The whole run refused at submission (more now lines than the cap)."""


class _ReferenceImages:
    """Reference images from the bucket as request parts: inline when small, through the Files API when large.

    A large object (name and generation) is uploaded once per submission: a catalogue whose lines share
    one reference image uploads it once, not once per line (time, and the Files API's 20 GB). Only the
    uploads' parts are kept (a few bytes each); small images are read again, as keeping them would hold
    every distinct one in memory.

    Thousands of distinct large images take longer to upload than one invocation has, so the uploads are
    kept in the run's scratch every ``KEEP_EVERY`` and when the time is up (``OutOfTimeError``, checked
    after each upload, so every call uploads at least one); the next call reuses those still well inside
    the Files API's 48 h.
    """

    KEEP_EVERY = 16
    REUSE_SECONDS = 40 * 3600.0

    def __init__(self, ctx: Context, run: Run, deadline: float | None, digests: ImageDigests) -> None:
        self.ctx, self.deadline, self.digests = ctx, deadline, digests
        self.layout = ctx.layout(run.run_id)
        self._uploaded: dict[tuple[str, str], dict[str, Any]] = {}
        self._pending: list[dict[str, Any]] = []
        self._parts = 0
        while (records := read_records(ctx, self.layout.reference_uploads_part(self._parts))) is not None:
            for record in records:
                if ctx.clock() - record["uploaded_at"] < self.REUSE_SECONDS:
                    self._uploaded[(record["ref"], record["generation"])] = record["part"]
            self._parts += 1

    def keep(self) -> None:
        """Write the uploads not yet kept as the next part."""
        if not self._pending:
            return
        write_records(self.ctx, self.layout.reference_uploads_part(self._parts), self._pending)
        self._parts += 1
        self._pending.clear()

    def parts(self, req: PromptRequest) -> list[dict[str, Any]]:
        return [self._part(ref) for ref in req.image_refs]

    def _part(self, ref: str) -> dict[str, Any]:
        info = self.ctx.blobs.stat(ref)
        if info is None:
            raise _Refused(LineError("bad_image_ref", f"reference image {ref} does not exist in the bucket"))
        # The generation the line's fingerprint hashed (the cache on), else the one just seen: the bytes
        # sent are that generation's, or the submission is tried again (``_changed``) and hashes anew.
        generation = self.digests.pinned(ref) or info.generation
        if info.generation != generation:
            raise _changed(ref, generation)
        mime = info.content_type or mimetypes.guess_type(ref)[0] or ""
        if not mime.startswith("image/"):
            raise _Refused(
                LineError("bad_image_ref", f"reference {ref} is not an image ({mime or 'unknown type'})")
            )
        if info.size <= self.ctx.settings.inline_image_max_bytes:
            try:
                raw = self.ctx.blobs.read_bytes(ref, generation=generation)
            except NotFoundError:
                raise _changed(ref, generation) from None
            data = base64.b64encode(raw).decode("ascii")
            return {"inlineData": {"mimeType": mime, "data": data}}
        if self.ctx.backend.bucket_input:  # Vertex AI reads a large image where it is: no upload, no expiry
            return {"fileData": {"fileUri": f"{self.ctx.blobs.url}/{ref}", "mimeType": mime}}
        part = self._uploaded.get((ref, generation))
        if part is None:
            try:
                with self.ctx.blobs.open_read(ref, generation=generation) as stream:
                    uploaded = self.ctx.backend.upload_file(
                        stream, size=info.size, display_name=PurePosixPath(ref).name, mime_type=mime
                    )
            except NotFoundError:
                raise _changed(ref, generation) from None
            part = {"fileData": {"fileUri": uploaded.uri, "mimeType": mime}}
            self._uploaded[(ref, generation)] = part
            record = {
                "ref": ref,
                "generation": generation,
                "part": part,
                "uploaded_at": self.ctx.clock(),
            }
            self._pending.append(record)
            out_of_time = self.deadline is not None and self.ctx.clock() >= self.deadline
            if out_of_time or len(self._pending) >= self.KEEP_EVERY:
                self.keep()
            if out_of_time:
                raise OutOfTimeError(f"reference uploads paused after {ref}")
        return part


def _changed(ref: str, generation: str) -> TransientError:
    """A reference image rewritten (or deleted) between its hash and its read: the submission is tried
    again, which hashes the live version and sends that one."""
    return TransientError(
        f"reference image {ref} changed while the run was being submitted (generation {generation} was "
        "hashed); submitting again"
    )
