"""Settle a run: every non-blank input line gets exactly one manifest entry, then the run ends.

The input is streamed through the same pure parser once more and joined on key with the checkpointed
outcomes, so the manifest is in input order and nothing needs to be held per line but the outcomes.
Order of writes: outputs, summary and event, terminal state (guarded: only an active run ends), scratch
clean-up. A crash anywhere before the terminal state makes the next tick settle again and write the same
outputs (the event is at least once).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import orjson

from promptdrop import manifest
from promptdrop.cost import CostTally, LaneTally, ModelTally
from promptdrop.gallery import thumb_name
from promptdrop.logs import LINE_OUTCOMES, RUN_ENDED, metric_fields
from promptdrop.outcomes import LineError, Outcome, Usage
from promptdrop.prompts import InvalidLine, PromptRequest, RejectedLine
from promptdrop.records import Cost, Counts, Job, Run
from promptdrop.states import RUN_ACTIVE, RunState
from promptdrop.usecases import cache, gallery, spending
from promptdrop.usecases.context import Context
from promptdrop.usecases.inputs import parsed_input
from promptdrop.usecases.workfiles import delete_work, load_outcomes

log = logging.getLogger(__name__)


def settle_run(ctx: Context, run: Run, *, refused: LineError | None = None) -> Run:
    """Write manifest.jsonl, errors.jsonl, rejected.jsonl, summary.json; publish the event; end the run.

    ``refused``: the run was refused before submission (budget cap); every valid line fails with it.
    A run that has ended meanwhile (another worker settled it) is left as it is.
    """
    current = ctx.store.get_run(run.run_id)
    if current is not None and current.state.terminal:
        return current
    layout = ctx.layout(run.run_id)
    jobs = ctx.store.list_jobs(run.run_id)
    outcomes = load_outcomes(ctx, run, jobs)
    counts = Counts()
    tally = LaneTally(ctx.settings.backend)
    saved_by_cache = CostTally(
        ctx.settings.backend
    )  # lines served from the pay-once cache: what they would have cost
    cached = 0
    problems: Counter[str] = Counter()  # outcome codes of the lines that did not succeed
    by_model = ModelTally(ctx.settings.backend)
    errors_written = rejected_written = 0
    cancelled = run.cancel_requested
    kept: set[str] = set()  # the images of lines that succeeded
    with (
        ctx.blobs.open_write(layout.manifest, content_type="application/jsonl") as out_manifest,
        ctx.blobs.open_write(layout.errors, content_type="application/jsonl") as out_errors,
        ctx.blobs.open_write(layout.rejected, content_type="application/jsonl") as out_rejected,
        parsed_input(ctx, run) as lines,
    ):
        for line in lines:
            counts.lines += 1
            entry: dict[str, Any]
            if isinstance(line, RejectedLine):
                counts.invalid += 1
                entry = manifest.entry_for_invalid(line)
                out_rejected.write(orjson.dumps(manifest.rejected_line(line)) + b"\n")
                rejected_written += 1
            elif isinstance(line, InvalidLine):
                counts.invalid += 1
                entry = manifest.entry_for_invalid(line)
                if line.input_form is not None:
                    out_errors.write(
                        orjson.dumps(manifest.error_line(line.input_form, entry["error"])) + b"\n"
                    )
                    errors_written += 1
            else:
                outcome = outcomes.get(line.key) or _unanswered(line, refused, cancelled)
                entry = manifest.entry_for_outcome(
                    line.line, outcome, requested_model=line.model, lane=line.lane
                )
                if outcome.cached_from is not None:
                    cached += 1
                    if outcome.usage and outcome.model:
                        saved_by_cache.add_usage(outcome.model, Usage(**outcome.usage))
                elif outcome.usage and outcome.model:
                    tally.add_usage(line.lane, outcome.model, Usage(**outcome.usage))
                if outcome.status != "invalid" and (outcome.model or line.model):
                    by_model.add(
                        outcome.model or line.model or "",
                        lane=line.lane,
                        usage=Usage(**outcome.usage) if outcome.usage else None,
                        succeeded=outcome.status == "succeeded",
                        cached=outcome.cached_from is not None,
                    )
                if outcome.status != "invalid" and line.lane == "now":
                    counts.now += 1
                if outcome.status == "succeeded":
                    kept.add(outcome.image or "")
                    counts.succeeded += 1
                    counts.valid += 1
                else:
                    if outcome.status == "invalid":
                        counts.invalid += 1
                    else:
                        counts.failed += 1
                        counts.valid += 1
                    out_errors.write(
                        orjson.dumps(manifest.error_line(line.input_form, entry["error"])) + b"\n"
                    )
                    errors_written += 1
            if entry.get("error"):
                problems[entry["error"]["code"]] += 1
            out_manifest.write(orjson.dumps(entry) + b"\n")
    if not errors_written:
        ctx.blobs.delete(layout.errors)
    if not rejected_written:
        ctx.blobs.delete(layout.rejected)
    if run.state is RunState.RECEIVED:
        # Refused or cancelled before submission: images the cache copied meanwhile serve no line.
        _drop_unaccounted(ctx, layout.folder, kept)
    # Every image of the run is written whole by now (the harvest flushes before its checkpoints).
    cache.fill(ctx, run, outcomes)

    lanes = tally.total
    total = lanes.batch  # the batch lane: its cost, its interactive price, the saving
    state = RunState.FAILED if refused is not None else manifest.final_state(counts, cancelled=cancelled)
    saved = None if total.batch is None or total.interactive is None else total.interactive - total.batch
    cost = Cost(
        batch=total.batch,
        interactive=total.interactive,
        saved=saved,
        now=lanes.now,
        estimate=run.cost.estimate,
        estimate_interactive=run.cost.estimate_interactive,
        estimate_now=run.cost.estimate_now,
        cached=cached,
        saved_by_cache=saved_by_cache.total.batch,
    )
    final = _end(
        ctx,
        run,
        jobs,
        {
            "state": state,
            "counts": counts,
            "cost": cost,
            "reason": manifest.final_reason(state, counts, refused=refused.message if refused else None),
            "by_model": by_model.to_json(),
        },
        lambda: parsed_input(ctx, run),
        problems,
    )
    log.info(
        "run %s: %d succeeded, %d failed, %d invalid of %d lines",
        state.value,
        counts.succeeded,
        counts.failed,
        counts.invalid,
        counts.lines,
        extra={"run_id": run.run_id},
    )
    return final


def _drop_unaccounted(ctx: Context, folder: str, kept: set[str]) -> None:
    """Delete the images (and their thumbnails) under ``folder`` that are not the image of a line that
    succeeded: every image a run leaves has a ``succeeded`` manifest entry."""
    thumbs = {name for image in kept if (name := thumb_name(folder, image)) is not None}
    for sub, keep in (("images/", kept), ("thumbs/", thumbs)):
        if not keep:  # the usual case (every line refused or cancelled): the folder at once
            ctx.blobs.delete_prefix(folder + sub)
            continue
        for info in list(ctx.blobs.list(folder + sub)):
            if info.name not in keep:
                ctx.blobs.delete(info.name)


def _end(
    ctx: Context,
    run: Run,
    jobs: list[Job],
    update: dict[str, Any],
    lines: gallery.InputOpener | None = None,
    problems: Counter[str] | None = None,
) -> Run:
    """Gallery, summary and event, then the terminal state (only from an active state), then the scratch files.

    Backoff fields go: a finished run carries only what its end says.
    """
    final = run.model_copy(update={**update, "finished_at": ctx.clock(), "next_attempt_at": 0.0})
    _announce(ctx, final, jobs, lines)
    # Before the end is recorded: scratch that a crash leaves behind now expires from the run's end.
    ctx.blobs.mark_ended(ctx.layout(run.run_id).work, final.finished_at or ctx.clock())
    # Before the end is recorded: a crash here settles again, and the ledger entry is replaced, not added.
    spending.settle(ctx, final)
    changes = final.model_dump(
        mode="json",
        include={"state", "counts", "cost", "reason", "finished_at", "next_attempt_at", "by_model"},
    )
    final = ctx.store.update_run(run.run_id, changes, if_states=RUN_ACTIVE)
    _log_end(final, problems or Counter())
    delete_work(ctx, run.run_id)
    # Writes of images, thumbnails or pages that a kill cut off left temporaries beside the outputs; the run
    # has ended (fenced), so nothing may still be writing them.
    ctx.blobs.sweep_interrupted(ctx.layout(run.run_id).folder)
    return final


def _log_end(run: Run, problems: Counter[str]) -> None:
    """The structured lines the deployment's metrics count: the run's end, and its lines by problem code."""
    cost = run.cost
    billed = None if cost.batch is None or cost.now is None else round(cost.batch + cost.now, 6)
    fields = metric_fields(
        RUN_ENDED,
        state=run.state.value,
        lines=run.counts.lines,
        succeeded=run.counts.succeeded,
        failed=run.counts.failed,
        invalid=run.counts.invalid,
        cost_usd=billed,
    )
    log.info("run ended: %s", run.state.value, extra={"run_id": run.run_id, **fields})
    for code, count in sorted(problems.items()):
        extra = {"run_id": run.run_id, **metric_fields(LINE_OUTCOMES, code=code, count=count)}
        log.info("%d line(s) ended %s", count, code, extra=extra)


def _announce(ctx: Context, final: Run, jobs: list[Job], lines: gallery.InputOpener | None = None) -> None:
    """Write the gallery page and summary.json for a run that is ending, then publish the run event (at least
    once). ``lines`` opens the parsed input, for the page's prompts (none for an unusable file)."""
    gallery.publish(ctx, final, jobs, lines)
    gallery.list_run(ctx, final)
    layout = ctx.layout(final.run_id)
    summary = manifest.summary(final, jobs, bucket_url=ctx.blobs.url)
    ctx.blobs.write_bytes(
        layout.summary, orjson.dumps(summary, option=orjson.OPT_INDENT_2), content_type="application/json"
    )
    ctx.notifier.publish(
        {
            "schema_version": manifest.SCHEMA_VERSION,
            "run_id": final.run_id,
            "state": final.state.value,
            "counts": summary["counts"],
            "cost": summary["cost"],
            "summary": layout.summary,
        }
    )


def _unanswered(line: PromptRequest, refused: LineError | None, cancelled: bool) -> Outcome:
    if refused is not None:
        return Outcome.failure(line.key, refused, attempt=0, model=line.model)
    if cancelled:
        return Outcome.failure(
            line.key,
            LineError("cancelled", "the run was cancelled before this line ran"),
            attempt=0,
            model=line.model,
        )
    # Should not happen: every submitted key gets an outcome. Said loudly rather than lost.
    return Outcome.failure(
        line.key,
        LineError("lost", "no outcome was recorded for this line", True),
        attempt=0,
        model=line.model,
    )


def fail_refused(ctx: Context, run: Run, error: LineError) -> Run:
    """Refused before submission (budget cap): FAILED with the reason, every line accounted for."""
    return settle_run(ctx, run, refused=error)


def fail_unusable(ctx: Context, run: Run, reason: str, state: RunState = RunState.FAILED) -> Run:
    """A file that cannot be used at all: FAILED with the reason in summary.json, never a crash loop."""
    log.warning("run %s: %s", state.value, reason, extra={"run_id": run.run_id})
    return _end(ctx, run, [], {"state": state, "reason": reason})


def cancel_unsubmitted(ctx: Context, run: Run) -> Run:
    """Cancelled before anything was submitted: every line is accounted for as cancelled."""
    if ctx.blobs.stat(run.input_object) is None:
        return fail_unusable(ctx, run, "cancelled before submission", RunState.CANCELLED)
    return settle_run(ctx, run)
