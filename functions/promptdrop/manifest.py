"""What a run writes for people and programs: manifest entries, errors.jsonl / rejected.jsonl lines, the summary.

Pure: the harvest and settle use cases decide *what* happened; this module only says how it is written down
(DESIGN.md "Bucket layout" and "manifest.jsonl").
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

from promptdrop.outcomes import Outcome
from promptdrop.prompts import LANES, InvalidLine, RejectedLine
from promptdrop.records import Counts, Job, Run
from promptdrop.states import RunState

SCHEMA_VERSION = 1


def entry_for_outcome(
    line: int, outcome: Outcome, *, requested_model: str | None = None, lane: str = "batch"
) -> dict[str, Any]:
    """A manifest entry for a line that was submitted (or refused at submission).

    ``requested_model`` is the id the line asked for; it is written only when the line ran on another one
    (a retired id replaced). ``lane``: "batch" or "now" (sent with generate_content).
    """
    entry = {
        "schema_version": SCHEMA_VERSION,
        "line": line,
        "key": outcome.key,
        "status": outcome.status,
        "image": outcome.image,
        "mime_type": outcome.mime_type,
        "bytes": outcome.bytes,
        "finish_reason": outcome.finish_reason,
        "text": outcome.text,
        "usage": outcome.usage,
        "attempts": outcome.attempt,
        "error": outcome.error,
        "model": outcome.model,
        "lane": lane,
    }
    if requested_model is not None and outcome.model is not None and requested_model != outcome.model:
        entry["requested_model"] = requested_model
    if outcome.cached_from is not None:
        entry["cached_from"] = {"run_id": outcome.cached_from["run_id"], "key": outcome.cached_from["key"]}
    return entry


def entry_for_invalid(line: InvalidLine | RejectedLine) -> dict[str, Any]:
    """A manifest entry for a line that never reached the API."""
    return {
        "schema_version": SCHEMA_VERSION,
        "line": line.line,
        "key": line.key if isinstance(line, InvalidLine) else None,
        "status": "invalid",
        "image": None,
        "mime_type": None,
        "bytes": None,
        "finish_reason": None,
        "text": None,
        "usage": None,
        "attempts": 0,
        "error": line.error.to_json(),
        # The model it would have run on, when the line got that far.
        "model": _form_model(line.input_form) if isinstance(line, InvalidLine) else None,
        "lane": _form_lane(line.input_form) if isinstance(line, InvalidLine) else "batch",
    }


def _form_lane(form: dict[str, Any] | None) -> str:
    """The lane an invalid line asked for, when it named a known one; the default otherwise."""
    lane = form.get("lane") if form else None
    return lane if lane in LANES else "batch"


def _form_model(form: dict[str, Any] | None) -> str | None:
    model = form.get("model") if form else None
    return model.removeprefix("models/") if isinstance(model, str) else None


def error_line(input_form: dict[str, Any], error: dict[str, Any]) -> dict[str, Any]:
    """An errors.jsonl line: the input form (defaults resolved) plus ``error``; droppable back into the inbox."""
    return {**{k: v for k, v in input_form.items() if k != "error"}, "error": error}


def rejected_line(line: RejectedLine) -> dict[str, Any]:
    """A rejected.jsonl line: where, why, and the raw bytes (base64) so nothing is lost."""
    return {
        "line": line.line,
        "error": line.error.to_json(),
        "raw_base64": base64.b64encode(line.raw).decode("ascii"),
    }


def final_state(counts: Counts, *, cancelled: bool) -> RunState:
    """SUCCEEDED if every line succeeded, PARTIAL if some did, FAILED if none (DESIGN "Lifecycle")."""
    if cancelled:
        return RunState.CANCELLED
    if counts.lines > 0 and counts.succeeded == counts.lines:
        return RunState.SUCCEEDED
    if counts.succeeded > 0:
        return RunState.PARTIAL
    return RunState.FAILED


def final_reason(state: RunState, counts: Counts, *, refused: str | None = None) -> str | None:
    """Why a run ended as it did, in its own words: never a reason left over from an earlier step."""
    if refused is not None:
        return refused
    if state is RunState.CANCELLED:
        return "cancelled on request"
    if state is RunState.SUCCEEDED:
        return None
    if counts.lines == 0:
        return "the input has no prompt lines"
    unsuccessful = f"{counts.failed} failed and {counts.invalid} invalid of {counts.lines} lines"
    return f"no line succeeded: {unsuccessful}" if state is RunState.FAILED else unsuccessful


def _sum(*amounts: float | None) -> float | None:
    if any(amount is None for amount in amounts):
        return None
    return round(sum(amount for amount in amounts if amount is not None), 6)


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def summary(run: Run, jobs: list[Job], *, bucket_url: str) -> dict[str, Any]:
    """summary.json for a run (terminal or not: `promptdrop status --json` shows the same shape)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": run.run_id,
        "state": run.state.value,
        "reason": run.reason,
        "source": {**run.source.model_dump(mode="json"), "bucket_url": bucket_url},
        "model": run.model,
        # Retired ids whose lines ran on their replacement (and those refused, with the reason).
        "model_replacements": [
            {"requested": c["requested"], "model": c["model"], "shutdown": c.get("shutdown")}
            for c in run.model_choices
            if c.get("model") and c["model"] != c["requested"]
        ],
        "model_notices": [
            c.get("notice") or c.get("message") for c in run.model_choices if c.get("notice") or c.get("code")
        ],
        "created_at": iso(run.created_at),
        "finished_at": iso(run.finished_at),
        "counts": {
            "lines": run.counts.lines,
            "succeeded": run.counts.succeeded,
            "failed": run.counts.failed,
            "invalid": run.counts.invalid,
        },
        "jobs": [
            {
                "name": job.batch_name,
                "display_name": job.job_id,
                "state": job.state.value,
                "attempt": job.attempt,
                "requests": job.request_count,
                "model": job.model,
                "priority": job.priority,
            }
            for job in jobs
        ],
        # Batches that shared a job's display name (a create that landed late): kept one, cancelled these.
        "duplicates_cancelled": [name for job in jobs for name in job.duplicates],
        # Per model the run's lines ran on: lines, images, cached lines, and money as in "cost" (None where
        # the model has no price); `promptdrop report` adds these up.
        "by_model": run.by_model,
        # By lane: batch, interactive and saved are the batch lane's (the saving counts batch lines only);
        # now is the now lane's lines at the interactive price; total is both.
        "cost": {
            "currency": "USD",
            "batch": run.cost.batch,
            "interactive": run.cost.interactive,
            "saved": run.cost.saved,
            "now": run.cost.now,
            "total": _sum(run.cost.batch, run.cost.now),
            "estimate": run.cost.estimate,
            # The pay-once cache: lines served from images paid for by earlier runs, and their batch price.
            "cached": run.cost.cached,
            "saved_by_cache": run.cost.saved_by_cache,
            "estimate_now": run.cost.estimate_now,
        },
        "lanes": {"now": {"lines": run.counts.now}},
        "outputs": {
            "folder": run.output_folder,
            "manifest": run.output_folder + "manifest.jsonl",
            "images": run.output_folder + "images/",
        },
    }
