"""A run's scratch files under ``outputs/<run>/_work/``: each job's key list and checkpointed outcomes,
the lines refused at submission, and their removal when the run ends."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import orjson

from promptdrop.errors import NotFoundError
from promptdrop.layout import RunLayout
from promptdrop.outcomes import Outcome
from promptdrop.records import Job, Run
from promptdrop.streams import iter_lines
from promptdrop.usecases.context import Context


def iter_job_keys(ctx: Context, layout: RunLayout, job: Job) -> Iterator[tuple[str, int]]:
    """(key, input line) of every request in a job, in request order."""
    with ctx.blobs.open_read(layout.job_keys(job.job_id)) as stream:
        for raw in iter_lines(stream):
            if raw.strip():
                item = orjson.loads(raw)
                yield item["key"], item["line"]


def job_keys(ctx: Context, layout: RunLayout, job: Job) -> list[str]:
    return [key for key, _ in iter_job_keys(ctx, layout, job)]


def _outcome_lines(data: bytes) -> Iterator[Outcome]:
    for raw in data.splitlines():
        if raw:
            yield Outcome.from_json(orjson.loads(raw))


def iter_job_outcomes(ctx: Context, layout: RunLayout, job: Job) -> Iterator[Outcome]:
    """Outcomes a job's harvest has checkpointed so far (parts beyond the checkpoint are ignored)."""
    for part in range(job.harvest_part):
        try:
            data = ctx.blobs.read_bytes(layout.job_outcomes(job.job_id, part))
        except NotFoundError:
            continue
        yield from _outcome_lines(data)


def write_records(ctx: Context, name: str, records: Iterable[Mapping[str, Any]]) -> None:
    """A small scratch file of JSON lines, written whole."""
    data = b"".join(orjson.dumps(record) + b"\n" for record in records)
    ctx.blobs.write_bytes(name, data, content_type="application/jsonl")


def read_records(ctx: Context, name: str) -> list[dict[str, Any]] | None:
    """The records of a file ``write_records`` wrote; None when there is none (yet)."""
    try:
        data = ctx.blobs.read_bytes(name)
    except NotFoundError:
        return None
    return [orjson.loads(raw) for raw in data.splitlines() if raw.strip()]


def write_refused(ctx: Context, layout: RunLayout, refused: Iterable[Outcome]) -> None:
    """The lines refused at submission (a missing reference image, a request too large)."""
    records = [o.to_json() for o in refused]
    if records:
        write_records(ctx, layout.submit_outcomes, records)


def load_outcomes(ctx: Context, run: Run, jobs: list[Job]) -> dict[str, Outcome]:
    """key -> its latest outcome (a later attempt replaces an earlier one); the lines refused or served from the
    pay-once cache at submission, and the waiting lines served since, included."""
    layout = ctx.layout(run.run_id)
    outcomes: dict[str, Outcome] = {}
    for name in (layout.cached_outcomes, layout.submit_outcomes):
        try:
            for outcome in _outcome_lines(ctx.blobs.read_bytes(name)):
                outcomes[outcome.key] = outcome
        except NotFoundError:
            pass
    # Lines that waited for another run, served from its image (or refused when sent): round by round.
    for number in itertools.count():
        records = read_records(ctx, layout.wait_round(number))
        if records is None:
            break
        for record in records:
            if "outcome" in record:
                outcomes[record["key"]] = Outcome.from_json(record["outcome"])
    for job in sorted(jobs, key=lambda j: (j.attempt, j.chunk)):
        for outcome in iter_job_outcomes(ctx, layout, job):
            outcomes[outcome.key] = outcome
    return outcomes


def delete_work(ctx: Context, run_id: str) -> None:
    """Every scratch file of a run, those of interrupted writes included."""
    ctx.blobs.delete_prefix(ctx.layout(run_id).work)
