"""What the job store keeps: one record per run and one per batch job.

Timestamps are epoch seconds (floats), so SQLite and Firestore store them the same way and leases compare
without time-zone traps. Both stores persist ``model_dump(mode="json")`` and read back with
``model_validate``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from promptdrop.states import JobPhase, JobState, RunState


class _Record(BaseModel):
    # Built on first use, not at import: `status` on an empty state folder and `--help` never need them.
    model_config = ConfigDict(extra="ignore", validate_assignment=False, defer_build=True)


class RunSource(_Record):
    """Where a run's prompts came from, and what it was claimed by."""

    kind: Literal["file", "message", "uri"]
    bucket: str | None = None
    object: str | None = None  # object name of the prompt file (file and uri kinds)
    generation: str | None = None
    message_id: str | None = None
    name: str  # file stem or message `name`: the readable part of the run id
    format: Literal["jsonl", "txt"] = "jsonl"
    defaults: dict[str, Any] | None = None  # a message's `defaults` (a file carries its own defaults line)


class Counts(_Record):
    """Line counts; ``lines`` = non-blank input lines = manifest entries; ``now``: valid lines of the now lane."""

    lines: int = 0
    valid: int = 0
    invalid: int = 0
    succeeded: int = 0
    failed: int = 0
    now: int = 0


class Cost(_Record):
    """USD; ``None`` where a model's price is unknown.

    ``batch``, ``interactive`` and ``saved`` are about the batch lane only (what its lines cost, what they
    would have cost on the standard API, the difference); ``now`` is what the urgent lane's lines cost at
    the standard (interactive) price. ``estimate`` is the whole run's estimate: batch lines at the batch
    price plus now lines at the interactive price (what the budget cap compares).
    """

    batch: float | None = None
    interactive: float | None = None
    saved: float | None = None
    estimate: float | None = None
    estimate_interactive: float | None = None
    cached: int = 0  # lines served from the pay-once cache (no request, no cost)
    saved_by_cache: float | None = None  # what those lines would have cost in batch
    now: float | None = 0.0
    estimate_now: float | None = 0.0


class Lease(_Record):
    owner: str | None = None
    expires: float = 0.0


class Run(_Record):
    run_id: str
    claim_key: str
    state: RunState
    source: RunSource
    input_object: str  # the staged copy of the prompts, under the run's output folder
    output_folder: str  # "outputs/<run_id>/"
    model: str  # default model for lines that name none
    created_at: float
    updated_at: float
    finished_at: float | None = None
    counts: Counts = Field(default_factory=Counts)
    cost: Cost = Field(default_factory=Cost)
    reason: str | None = None  # why FAILED/CANCELLED, for people
    submit_attempts: int = 0
    next_attempt_at: float = 0.0
    cancel_requested: bool = False
    # Lines waiting for other unfinished runs that are paying for the same requests (the pay-once cache's
    # in-flight rule), and those runs; served or sent once they end (usecases/inflight.py).
    waiting: int = 0
    waiting_on: list[str] = Field(default_factory=list)
    wait_rounds: int = 0  # rounds of waiting lines resolved so far
    fresh: bool = False  # `run --fresh`: every line is submitted, none served from the pay-once cache
    # What the run did with each model id its lines asked for (models.ModelChoice.to_json()), decided
    # before its first batch: replacements of retired ids, refusals, shutdown notices.
    model_choices: list[dict[str, Any]] = Field(default_factory=list)
    lease: Lease = Field(default_factory=Lease)  # who works on the run (and its jobs) now
    # What the run did on each model (cost.ModelTally.to_json()), written at settle: summary.json's
    # by_model and `promptdrop report` read it.
    by_model: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # The spend ledgers (spend.py period keys) the run reserved its estimate in; settle corrects them.
    spend_periods: list[str] = Field(default_factory=list)
    # The amount a run waiting for a spend cap would reserve (its cap estimate), so later ticks check it
    # without parsing the file again; None once reserved.
    spend_waiting: float | None = None


class Job(_Record):
    """A chunk of a run's lines. ``lane="batch"``: one batch job on the API. ``lane="now"``: lines sent one by
    one with generate_content (usecases/now_lane.py): QUEUED, then ACTIVE while they are sent (each answer
    checkpointed as an outcome part, like a harvest's), DONE when every line has its outcome."""

    job_id: str  # also the batch's display_name: "<run_id>-a<attempt>-c<chunk>"
    run_id: str
    attempt: int  # 1 for the first submission; retries of failed lines get 2, 3, ...
    chunk: int
    phase: JobPhase
    lane: Literal["batch", "now"] = "batch"
    # Now lane in the cloud: when the chunk's message was last published to the now topic.
    dispatched_at: float | None = None
    state: JobState = JobState.JOB_STATE_UNSPECIFIED
    model: str
    priority: int = 0  # the batch's priority (higher runs first)
    request_object: str  # the request JSONL in the bucket ({"key","request"} lines, as uploaded)
    request_count: int
    request_bytes: int
    estimated_tokens: int
    file_name: str | None = None  # Files API name of the uploaded input (Vertex AI: its gs:// URI)
    batch_name: str | None = None  # "batches/..."
    results_file: str | None = None  # "files/batch-..."
    results_object: str | None = None  # where inline results were written in the bucket (one object)
    # The results file is copied into the bucket in parts of a fixed size, each recorded when whole, so a
    # copy cut off by a function's time limit resumes at the next part (a ranged download) on the next tick.
    results_part_size: int = 0  # bytes per part (but those below), fixed when the copy starts
    results_parts: int = 0  # parts written whole
    results_copied: int = 0  # bytes in those parts
    # Part index (as a string) -> bytes, for the parts closed short: at a time budget (what the invocation
    # fetched is kept, never fetched again) and the last.
    results_short_parts: dict[str, int] = Field(default_factory=dict)
    results_copy_done: bool = False  # the last part is written: the harvest may read the parts
    # Vertex AI: the job's prediction files in the bucket and their sizes, read in order as one stream
    # (listed once when the job ends, so a resumed harvest reads the same bytes at the same offsets).
    prediction_files: list[str] = Field(default_factory=list)
    prediction_sizes: list[int] = Field(default_factory=list)
    harvest_offset: int = 0  # byte offset in results_object up to which outcomes are written
    harvest_part: int = 0  # number of outcome parts written
    created_at: float
    updated_at: float
    submitted_at: float | None = None
    deadline_at: float | None = None
    ended_at: float | None = None
    # When the API was last asked about this job: with webhooks on, a running job is polled only every
    # PROMPTDROP_WEBHOOK_POLL_SECONDS after this (lifecycle.refresh_due).
    checked_at: float | None = None
    stats: dict[str, int] = Field(default_factory=dict)
    error: str | None = None
    # batches.create is not idempotent: when the last create was sent, and how often a job left in
    # CREATING was looked up or created again (bounded, so a job cannot stay CREATING forever).
    create_sent_at: float | None = None
    recoveries: int = 0
    # A create refused with 429 (a quota): the job went back to QUEUED and is not launched before this time.
    not_before: float | None = None
    quota_refusals: int = 0
    duplicates: list[str] = Field(default_factory=list)  # batches sharing our display name, cancelled
    retryable: int = 0  # lines of this job that failed retryably (counted by the harvest)
    # A retry attempt's job count, on each of its jobs (0 on the first attempt): fewer recorded means the
    # attempt's creation was cut off, and lifecycle.next_step completes it before anything else.
    attempt_jobs: int = 0
    # Now lane: sends of each line the API may have billed, by the line's number in the input file (stable
    # across attempts; a key may not be a Firestore field name), counted BEFORE each call (a send whose
    # answer was lost counts) and taken back only for a clear refusal (429, 503). A line that reached
    # PROMPTDROP_MAX_ATTEMPTS over the run's attempts is not sent again.
    now_sends: dict[str, int] = Field(default_factory=dict)
