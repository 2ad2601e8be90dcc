"""Settle a run: every non-blank input line gets exactly one manifest entry, then the run ends.

The input is streamed through the same pure parser once more and joined on key with the checkpointed
outcomes, so the manifest is in input order and nothing needs to be held per line but the outcomes.
Order of writes: outputs, event, terminal state, scratch clean-up. A crash anywhere before the terminal
state makes the next tick settle again and write the same outputs (the event is at least once).
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from promptdrop import manifest
from promptdrop.cost import CostTally
from promptdrop.errors import NotFoundError
from promptdrop.manifest import Outcome
from promptdrop.prompts import InvalidLine, LineError, PromptRequest, RejectedLine
from promptdrop.records import Cost, Counts, Job, Run
from promptdrop.results import Usage
from promptdrop.states import RunState
from promptdrop.usecases import gallery, harvest
from promptdrop.usecases.context import Context

log = logging.getLogger(__name__)


def load_outcomes(ctx: Context, run: Run, jobs: list[Job]) -> dict[str, Outcome]:
    """key -> its latest outcome (a later attempt replaces an earlier one); refusals at submission included."""
    layout = ctx.layout(run.run_id)
    outcomes: dict[str, Outcome] = {}
    try:
        for raw in ctx.blobs.read_bytes(layout.submit_outcomes).splitlines():
            if raw:
                outcome = Outcome.from_json(orjson.loads(raw))
                outcomes[outcome.key] = outcome
    except NotFoundError:
        pass
    for job in sorted(jobs, key=lambda j: (j.attempt, j.chunk)):
        for outcome in harvest.iter_job_outcomes(ctx, layout, job):
            outcomes[outcome.key] = outcome
    return outcomes


def settle_run(ctx: Context, run: Run, *, refused: LineError | None = None) -> Run:
    """Write manifest.jsonl, errors.jsonl, rejected.jsonl, summary.json; publish the event; end the run.

    ``refused``: the run was refused before submission (budget cap); every valid line fails with it.
    """
    from promptdrop.usecases.submit import parsed_input

    layout = ctx.layout(run.run_id)
    jobs = ctx.store.list_jobs(run.run_id)
    outcomes = load_outcomes(ctx, run, jobs)
    counts = Counts()
    tally = CostTally()
    errors_written = rejected_written = 0
    cancelled = run.cancel_requested
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
                entry = manifest.entry_for_outcome(line.line, outcome, requested_model=line.model)
                if outcome.usage and outcome.model:
                    tally.add_usage(outcome.model, Usage(**outcome.usage))
                if outcome.status == "succeeded":
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
            out_manifest.write(orjson.dumps(entry) + b"\n")
    if not errors_written:
        ctx.blobs.delete(layout.errors)
    if not rejected_written:
        ctx.blobs.delete(layout.rejected)

    total = tally.total
    state = manifest.final_state(counts, cancelled=cancelled)
    if refused is not None:
        state = RunState.FAILED
    saved = None if total.batch is None or total.interactive is None else total.interactive - total.batch
    cost = Cost(
        batch=total.batch,
        interactive=total.interactive,
        saved=saved,
        estimate=run.cost.estimate,
        estimate_interactive=run.cost.estimate_interactive,
    )
    finished = ctx.clock()
    final = run.model_copy(
        update={
            "state": state,
            "counts": counts,
            "cost": cost,
            "finished_at": finished,
            "reason": refused.message if refused else run.reason,
        }
    )
    _announce(ctx, final, jobs, lambda: parsed_input(ctx, run))
    # Before the end is recorded: scratch that a crash leaves behind now expires from the run's end.
    ctx.blobs.mark_ended(layout.work, finished)
    final = ctx.store.update_run(
        run.run_id,
        {
            "state": state.value,
            "counts": counts.model_dump(),
            "cost": cost.model_dump(),
            "finished_at": finished,
            "reason": final.reason,
            "notified": True,
        },
    )
    _delete_prefix(ctx, layout.work)
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


def _announce(ctx: Context, final: Run, jobs: list[Job], lines: gallery.InputOpener | None = None) -> None:
    """Write the gallery page and summary.json for a run that is ending, then publish the run event (at least
    once). ``lines`` opens the parsed input, for the page's prompts (none for an unusable file)."""
    gallery.publish(ctx, final, jobs, lines)
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


def fail_refused(ctx: Context, run: Run, reason: str, error: LineError) -> Run:
    """Refused before submission (budget cap): FAILED with the reason, every line accounted for."""
    run = ctx.store.update_run(run.run_id, {"reason": reason})
    return settle_run(ctx, run, refused=error)


def fail_unusable(ctx: Context, run: Run, reason: str, state: RunState = RunState.FAILED) -> Run:
    """A file that cannot be used at all: FAILED with the reason in summary.json, never a crash loop."""
    finished = ctx.clock()
    _announce(ctx, run.model_copy(update={"state": state, "finished_at": finished, "reason": reason}), [])
    log.warning("run %s: %s", state.value, reason, extra={"run_id": run.run_id})
    return ctx.store.update_run(
        run.run_id, {"state": state.value, "finished_at": finished, "reason": reason, "notified": True}
    )


def cancel_unsubmitted(ctx: Context, run: Run) -> Run:
    """Cancelled before anything was submitted: every line is accounted for as cancelled."""
    if ctx.blobs.stat(run.input_object) is None:
        return fail_unusable(ctx, run, "cancelled before submission", RunState.CANCELLED)
    return settle_run(ctx, run)


def _delete_prefix(ctx: Context, prefix: str) -> None:
    for info in list(ctx.blobs.list(prefix)):
        ctx.blobs.delete(info.name)
