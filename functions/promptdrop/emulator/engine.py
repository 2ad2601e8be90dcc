"""Batch jobs of the emulator: records on disk, a scheduler thread and a small pool of workers.

A job is PENDING for ``pending_seconds`` after creation, then RUNNING: a worker answers its requests one by
one from the start of RUNNING, streaming the results to a temporary file, and the job ends once they are all
answered and ``running_seconds`` have passed since it started (not ``running_seconds`` *plus* the answering,
as when the worker only began at the deadline: 12 jobs of a 20,000-line run waited 24 s idle that way).
Deadlines are computed from the persisted create/start times and the *current* options, so an emulator
restarted on the same data folder picks every unfinished job up where it stopped.

Layout under the data folder: ``batches/<id>.json`` (record), ``batches/<id>.requests.jsonl``
(the requests of an inline-source job), ``batches/<id>.inline.jsonl`` (inline results, one item a line).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Final

import orjson

from promptdrop.emulator.answers import (
    UNKNOWN_MODEL_IMAGE_TOKENS,
    Answer,
    answer,
    job_marker,
    label_lost,
    response_id,
    status_error,
)
from promptdrop.emulator.files import FileStore, random_id, remove_stale_temporaries, write_json_atomically
from promptdrop.emulator.gcs import GcsAccess, GcsObjectMissing, split_uri
from promptdrop.emulator.options import EmulatorOptions
from promptdrop.emulator.wire import (
    ApiError,
    camel_keys,
    int64,
    rfc3339,
    spend_limit_error,
    unknown_fields_error,
)
from promptdrop.models import (
    BATCH_GENERATE,
    GENERATE,
    MODELS,
    TEXT_MODELS,
    bare_model_id,
    model_spec,
    served_by_schedule,
)
from promptdrop.request_schema import UnknownField, unknown_fields
from promptdrop.rpc import rpc_status
from promptdrop.streams import iter_lines

logger = logging.getLogger(__name__)

PENDING: Final = "BATCH_STATE_PENDING"
RUNNING: Final = "BATCH_STATE_RUNNING"
SUCCEEDED: Final = "BATCH_STATE_SUCCEEDED"
FAILED: Final = "BATCH_STATE_FAILED"
CANCELLED: Final = "BATCH_STATE_CANCELLED"
EXPIRED: Final = "BATCH_STATE_EXPIRED"
ACTIVE_STATES: Final = frozenset({PENDING, RUNNING})

BATCH_TYPE: Final = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch"
OUTPUT_TYPE: Final = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput"
RESULTS_MIME_TYPE: Final = "application/jsonl"
# An InlinedRequest's fields (the API refuses any other, googleapis/python-genai#1451).
INLINED_REQUEST_FIELDS: Final = frozenset({"request", "metadata"})
# How many bad lines a refused input file's error lists (the rest are counted).
MAX_LINE_ERRORS_SHOWN: Final = 20


def file_line_problem(raw: bytes) -> str | None:
    """Why one input file line does not parse as ``{"key", "request": GenerateContentRequest}``, or None.

    Worded as the API's file parser words it (``near column C: no such field: 'x'``); the column is
    where the field's name first appears in the line, so approximate.
    """
    try:
        item = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return f"near column {exc.colno}: {exc.msg}"
    if not isinstance(item, dict):
        return "near column 1: the line is not a JSON object"
    request = item.get("request")
    if request is not None and not isinstance(request, dict):
        column = raw.find(b'"request"') + 1
        return f"near column {column}: 'request' is not an object"
    unknown = unknown_fields(request) if request else []
    if not unknown:
        return None
    name = unknown[0].name
    column = raw.find(orjson.dumps(name)) + 1
    return f"near column {column}: no such field: '{name}'"


@dataclass(slots=True)
class BatchRecord:
    """One batch job as the emulator persists it."""

    id: str
    model: str
    create_time: float
    update_time: float
    state: str
    request_count: int
    display_name: str | None = None
    source_file: str | None = None
    start_time: float | None = None
    end_time: float | None = None
    succeeded: int = 0
    failed: int = 0
    responses_file: str | None = None
    # Set when the results were answered inline: how many items, and their bytes (for Content-Length).
    inline_count: int | None = None
    inline_bytes: int = 0
    error: dict[str, object] | None = None
    priority: int = 0
    # A Vertex AI job: "projects/P/locations/L", its gs:// inputs, output prefix and the folder it wrote.
    vertex_parent: str | None = None
    vertex_input: list[str] | None = None
    vertex_output: str | None = None
    output_dir: str | None = None

    @property
    def name(self) -> str:
        if self.vertex_parent is not None:
            return f"{self.vertex_parent}/batchPredictionJobs/{self.id}"
        return f"batches/{self.id}"

    @property
    def sort_key(self) -> str:
        return f"{int(self.create_time * 1_000_000):020d}:{self.id}"


def _batch_stats(job: BatchRecord) -> dict[str, str]:
    counts = {"requestCount": job.request_count}
    if job.state in ACTIVE_STATES:
        counts["pendingRequestCount"] = job.request_count
    elif job.state == SUCCEEDED:
        counts["successfulRequestCount"] = job.succeeded
        counts["failedRequestCount"] = job.failed
    # int64 as strings, and zero fields left out, as the API does.
    return {field: int64(value) for field, value in counts.items() if value}


def operation_json(
    job: BatchRecord, *, inline_items: object = None, listing: bool = False
) -> dict[str, object]:
    """The long-running Operation wrapping the GenerateContentBatch.

    ``inline_items`` stands for the inline results (the server streams them in place of this value);
    ``listing`` leaves outputs out, as list items carry none.
    """
    metadata: dict[str, object] = {"@type": BATCH_TYPE, "name": job.name, "model": job.model}
    if job.display_name:
        metadata["displayName"] = job.display_name
    if job.source_file:
        metadata["inputConfig"] = {"fileName": job.source_file}
    metadata["createTime"] = rfc3339(job.create_time)
    metadata["updateTime"] = rfc3339(job.update_time)
    if job.end_time is not None:
        metadata["endTime"] = rfc3339(job.end_time)
    metadata["batchStats"] = _batch_stats(job)
    metadata["state"] = job.state
    if job.priority:
        metadata["priority"] = int64(job.priority)
    operation: dict[str, object] = {"name": job.name, "metadata": metadata}
    if job.state in ACTIVE_STATES:
        return operation
    output: dict[str, object] | None = None
    if job.responses_file:
        output = {"responsesFile": job.responses_file}
    elif job.inline_count is not None:
        output = {"inlinedResponses": {"inlinedResponses": inline_items}}
    if output is not None and not listing:
        metadata["output"] = output
        operation["response"] = {"@type": OUTPUT_TYPE, **output}
    operation["done"] = True
    if job.error:
        operation["error"] = job.error
    return operation


def vertex_job_json(job: BatchRecord) -> dict[str, object]:
    """A ``BatchPredictionJob`` as Vertex AI answers it (create, get, list)."""
    state = "JOB_STATE_" + job.state.removeprefix("BATCH_STATE_")
    if job.state == SUCCEEDED and job.failed and job.succeeded:
        state = "JOB_STATE_PARTIALLY_SUCCEEDED"
    body: dict[str, object] = {
        "name": job.name,
        "displayName": job.display_name or "",
        "model": "publishers/google/models/" + bare_model_id(job.model),
        "inputConfig": {"instancesFormat": "jsonl", "gcsSource": {"uris": job.vertex_input or []}},
        "outputConfig": {
            "predictionsFormat": "jsonl",
            "gcsDestination": {"outputUriPrefix": job.vertex_output or ""},
        },
        "state": state,
        "createTime": rfc3339(job.create_time),
        "updateTime": rfc3339(job.update_time),
    }
    if job.start_time is not None:
        body["startTime"] = rfc3339(job.start_time)
    if job.end_time is not None:
        body["endTime"] = rfc3339(job.end_time)
        body["completionStats"] = {
            "successfulCount": int64(job.succeeded),
            "failedCount": int64(job.failed),
            "incompleteCount": int64(job.request_count - job.succeeded - job.failed),
        }
    if job.output_dir:
        body["outputInfo"] = {"gcsOutputDirectory": job.output_dir}
    if job.error:
        body["error"] = job.error
    return body


@dataclass(frozen=True, slots=True)
class _SourceLine:
    key: str | None
    metadata: dict[str, object] | None
    request: object
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class _Outcome:
    """How answering a job's requests ended."""

    state: str
    succeeded: int = 0
    failed: int = 0
    item_bytes: int = 0
    error: dict[str, object] | None = None


JOB_FAILED_ERROR: Final = {
    "code": 13,
    "message": "The batch job failed (asked for by [[emulator:job=failed]]).",
}


class _Abandoned(Exception):
    """The job was cancelled or deleted, or the emulator is stopping, while a worker ran it."""


class _InputMissing(Exception):
    """The input file of a job was deleted before the job ran."""


def model_not_found(model: str, version: str, method: str) -> ApiError:
    """The API's answer for a model id it does not serve (a retired preview id, a typo)."""
    return ApiError(
        404,
        f"models/{bare_model_id(model)} is not found for API version {version}, or is not supported for "
        f"{method}. Call ListModels to see the list of available models and their supported methods.",
    )


def model_json(model: str, *, batch: bool = True) -> dict[str, object]:
    """The ``Model`` resource of ``models.get`` / ``models.list`` for a served id."""
    bare = bare_model_id(model)
    methods = [GENERATE, "countTokens"] + ([BATCH_GENERATE] if batch else [])
    spec = model_spec(bare)
    return {
        "name": f"models/{bare}",
        "baseModelId": bare,
        "version": "001",
        "displayName": bare,
        "description": f"{bare} as served by the promptdrop emulator",
        "inputTokenLimit": spec.max_input_tokens if spec else 65_536,
        "outputTokenLimit": 32_768,
        "supportedGenerationMethods": methods,
    }


def _job_tokens(job: BatchRecord) -> int:
    """A job's enqueued tokens as the emulator counts them: one default-size image per request."""
    spec = model_spec(job.model)
    return job.request_count * (spec.tokens_for(spec.default_size) if spec else UNKNOWN_MODEL_IMAGE_TOKENS)


class Engine:
    """Batch jobs and files of one data folder; thread-safe."""

    def __init__(
        self, data_dir: Path, options: EmulatorOptions, clock: Callable[[], float] = time.time
    ) -> None:
        self.options = options
        self.files = FileStore(data_dir, clock)
        self.gcs = GcsAccess()
        self._dir = data_dir / "batches"
        self._clock = clock
        self._lock = threading.Condition()
        self._jobs: dict[str, BatchRecord] = {}
        self._in_pool: set[str] = set()
        self._generated = 0  # generateContent calls answered (their response ids)
        self._generate_refused = 0  # generateContent calls answered 429 (generate_refusals)
        self._stopping = threading.Event()
        self._pool: ThreadPoolExecutor | None = None
        self._scheduler: threading.Thread | None = None
        # Told of every job that ends (called with the engine's lock held: it must not block).
        self.on_end: Callable[[BatchRecord], None] | None = None

    # Lifecycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        """Load what an earlier run left and start the scheduler and workers."""
        self.files.load()
        self._dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self._dir)
        for path in self._dir.glob("*.out.tmp"):
            path.unlink()
        for path in self._dir.glob("*.json"):
            job = BatchRecord(**orjson.loads(path.read_bytes()))
            self._jobs[job.id] = job
        self._pool = ThreadPoolExecutor(self.options.workers, thread_name_prefix="emulator-worker")
        self._scheduler = threading.Thread(target=self._schedule, name="emulator-scheduler", daemon=True)
        self._scheduler.start()

    def close(self) -> None:
        """Stop scheduling, let workers abandon their jobs (they stay RUNNING on disk) and wait for them."""
        self._stopping.set()
        with self._lock:
            self._lock.notify_all()
        if self._scheduler is not None:
            self._scheduler.join()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    # API -------------------------------------------------------------------------------------------

    def today(self) -> date:
        return datetime.fromtimestamp(self._clock(), UTC).date()

    def serves(self, model: str) -> bool:
        """Served: ``models`` when given, else the table's ids not past their shutdown date, the text
        models and ``serve_models``."""
        return bare_model_id(model) in self.served_models()

    def serves_batch(self, model: str) -> bool:
        return self.serves(model) and bare_model_id(model) not in self.options.no_batch_models

    def served_models(self) -> list[str]:
        if self.options.models is not None:
            return list(self.options.models)
        today = self.today()
        listed = [name for name in MODELS if served_by_schedule(name, today)] + list(TEXT_MODELS)
        return listed + [name for name in self.options.serve_models if name not in listed]

    @property
    def generated(self) -> int:
        """generateContent calls answered since start (tests count the now lane's calls with it)."""
        with self._lock:
            return self._generated

    @property
    def busy(self) -> bool:
        """Some job is still PENDING or RUNNING."""
        with self._lock:
            return any(job.state in ACTIVE_STATES for job in self._jobs.values())

    def generate(self, model: str, body: object, *, version: str = "v1beta") -> dict[str, object]:
        """Answer one ``generateContent`` call as a batch line with the same request is answered (same
        markers, same image), after ``generate_seconds``; an error line becomes the HTTP error it stands for."""
        if not self.serves(model):
            raise model_not_found(model, version, "generateContent")
        with self._lock:
            refuse = self._generate_refused < self.options.generate_refusals
            self._generate_refused += refuse
        if refuse:
            raise spend_limit_error(self.options.generate_retry_seconds)
        if self._stopping.wait(self.options.generate_seconds):
            raise ApiError(503, "The service is currently unavailable.")
        if isinstance(body, dict):
            body = {name: value for name, value in body.items() if name != "model"}
            if unknown := unknown_fields(body):
                raise unknown_fields_error(unknown)
        with self._lock:
            self._generated += 1
            index = self._generated
        result = answer(
            body, model, image_scale=self.options.image_scale, response_id=response_id("now", index)
        )
        if result.error is not None:
            code = int(str(result.error.get("code") or 2))
            name, http_status = rpc_status(code)
            raise ApiError(http_status, str(result.error.get("message") or ""), name)
        assert result.response is not None
        return result.response

    def create_batch(self, model: str, body: object, *, version: str = "v1beta") -> BatchRecord:
        """Create a job from a ``batchGenerateContent`` body (any key spelling)."""
        if not self.serves_batch(model):
            raise model_not_found(model, version, "batchGenerateContent")
        normalized = camel_keys(body)
        batch = normalized.get("batch") if isinstance(normalized, dict) else None
        if not isinstance(batch, dict):
            raise ApiError(400, "body must be {'batch': {...}}")
        input_config = batch.get("inputConfig")
        if not isinstance(input_config, dict) or ("fileName" in input_config) == ("requests" in input_config):
            raise ApiError(400, "batch.inputConfig must have exactly one of fileName or requests")
        display_name = batch.get("displayName")
        try:
            priority = int(batch.get("priority") or 0)  # int64: a JSON string on the wire
        except (TypeError, ValueError) as exc:
            raise ApiError(400, "batch.priority must be an integer") from exc
        job_id = random_id(36)
        now = self._clock()
        if "fileName" in input_config:
            source_file = str(input_config["fileName"])
            request_count = self._check_file_requests(source_file)
        else:
            source_file = None
            request_count = self._write_inline_requests(job_id, input_config["requests"])
        job = BatchRecord(
            id=job_id,
            model="models/" + model.removeprefix("models/"),
            create_time=now,
            update_time=now,
            state=PENDING,
            request_count=request_count,
            display_name=str(display_name) if display_name else None,
            source_file=source_file,
            priority=priority,
        )
        with self._lock:
            try:
                self._check_room()
            except ApiError:
                (self._dir / f"{job_id}.requests.jsonl").unlink(missing_ok=True)
                raise
            limit = self.options.enqueued_token_limit
            if limit and self._enqueued_tokens(job.model) + _job_tokens(job) > limit:
                (self._dir / f"{job_id}.requests.jsonl").unlink(missing_ok=True)
                raise ApiError(
                    429,
                    f"Enqueued token limit exceeded for {bare_model_id(job.model)} (limit {limit}); "
                    "try again later.",
                    "RESOURCE_EXHAUSTED",
                )
            self._save(job)
            self._lock.notify_all()
        return job

    def create_vertex_batch(self, parent: str, body: object) -> BatchRecord:
        """Create a Vertex AI ``BatchPredictionJob``: JSONL from gs:// in, predictions to gs:// out."""
        normalized = camel_keys(body)
        if not isinstance(normalized, dict):
            raise ApiError(400, "body must be a BatchPredictionJob")
        model = str(normalized.get("model") or "").rsplit("/", 1)[-1]
        if not self.serves_batch(model):
            raise model_not_found(model, "v1beta1", "batchPredictionJobs")
        input_config = normalized.get("inputConfig") or {}
        output_config = normalized.get("outputConfig") or {}
        uris = (input_config.get("gcsSource") or {}).get("uris") if isinstance(input_config, dict) else None
        prefix = (
            (output_config.get("gcsDestination") or {}).get("outputUriPrefix")
            if isinstance(output_config, dict)
            else None
        )
        if not isinstance(uris, list) or not uris or not isinstance(prefix, str):
            raise ApiError(
                400, "inputConfig.gcsSource.uris and outputConfig.gcsDestination.outputUriPrefix are required"
            )
        if input_config.get("instancesFormat") != "jsonl":
            raise ApiError(400, "inputConfig.instancesFormat must be jsonl", "INVALID_ARGUMENT")
        for uri in [*uris, prefix + "/x"]:
            split_uri(str(uri))
        count = 0
        try:
            for uri in uris:
                with self.gcs.open_read(str(uri)) as stream:
                    count += sum(1 for raw in iter_lines(stream) if raw.strip())
        except GcsObjectMissing as exc:
            raise ApiError(400, str(exc), "INVALID_ARGUMENT") from exc
        if count == 0:
            raise ApiError(400, "the batch input holds no requests", "INVALID_ARGUMENT")
        now = self._clock()
        display_name = normalized.get("displayName")
        job = BatchRecord(
            id=str(int.from_bytes(os.urandom(7), "big")),  # Vertex job ids are numbers
            model="models/" + model,
            create_time=now,
            update_time=now,
            state=PENDING,
            request_count=count,
            display_name=str(display_name) if display_name else None,
            vertex_parent=parent,
            vertex_input=[str(uri) for uri in uris],
            vertex_output=prefix.rstrip("/"),
        )
        with self._lock:
            self._check_room()
            self._save(job)
            self._lock.notify_all()
        return job

    def _check_room(self) -> None:
        """429 when the unfinished jobs are at the API's concurrent-batch limit (called with the lock held)."""
        active = sum(1 for j in self._jobs.values() if j.state in ACTIVE_STATES)
        if active >= self.options.max_active_jobs:
            raise ApiError(429, f"Too many concurrent batch jobs (limit {self.options.max_active_jobs}).")

    def _enqueued_tokens(self, model: str) -> int:
        """Tokens the model's PENDING/RUNNING jobs hold (called with the lock held)."""
        return sum(
            _job_tokens(j) for j in self._jobs.values() if j.state in ACTIVE_STATES and j.model == model
        )

    def get_batch(self, batch_id: str) -> BatchRecord:
        with self._lock:
            job = self._jobs.get(batch_id)
        if job is None:
            raise ApiError(404, f"Batch batches/{batch_id} not found.")
        return job

    def list_batches(self, parent: str | None = None) -> list[BatchRecord]:
        """Every job of the Gemini API (``parent`` None) or of one Vertex AI location, newest first."""
        with self._lock:
            jobs = [job for job in self._jobs.values() if job.vertex_parent == parent]
        return sorted(jobs, key=lambda j: j.sort_key, reverse=True)

    def cancel_batch(self, batch_id: str) -> None:
        """Cancel an unfinished job (results not yet written are dropped); a finished job is left as it is."""
        with self._lock:
            job = self.get_batch(batch_id)
            if job.state in ACTIVE_STATES:
                self._end(job, CANCELLED)
            self._lock.notify_all()

    def delete_batch(self, batch_id: str) -> None:
        """Forget a job (an unfinished one is abandoned); its results file, if any, stays in the Files API."""
        with self._lock:
            self.get_batch(batch_id)
            del self._jobs[batch_id]
            for suffix in (".json", ".requests.jsonl", ".inline.jsonl"):
                (self._dir / f"{batch_id}{suffix}").unlink(missing_ok=True)

    def inline_results_path(self, job: BatchRecord) -> Path:
        return self._dir / f"{job.id}.inline.jsonl"

    # Creation helpers ------------------------------------------------------------------------------

    def _check_file_requests(self, file_name: str) -> int:
        """Count the file's requests; refuse it whole if a line does not parse as a request (as the API does)."""
        if not file_name.startswith("files/"):
            raise ApiError(400, f"inputConfig.fileName must read files/<id>, got {file_name!r}")
        record = self.files.get(file_name.removeprefix("files/"))
        count = 0
        problems: list[str] = []
        with self.files.data_path(record.id).open("rb") as stream:
            for number, raw in enumerate(iter_lines(stream), start=1):
                if not raw.strip():
                    continue
                count += 1
                problem = file_line_problem(raw)
                if problem is not None:
                    problems.append(f"Error on line {number}: invalid JSON, {problem}")
        if problems:
            shown = problems[:MAX_LINE_ERRORS_SHOWN]
            if len(problems) > len(shown):
                shown.append(f"... and {len(problems) - len(shown)} more lines with errors")
            raise ApiError(400, "\n".join(shown), "INVALID_ARGUMENT")
        if count == 0:
            raise ApiError(400, f"{file_name} holds no requests.")
        return count

    def _write_inline_requests(self, job_id: str, requests: object) -> int:
        items = requests.get("requests") if isinstance(requests, dict) else None
        if not isinstance(items, list) or not items:
            raise ApiError(400, "inputConfig.requests.requests must be a non-empty list")
        unknown: list[UnknownField] = []
        for index, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get("request"), dict):
                raise ApiError(400, f"inputConfig.requests.requests[{index}].request must be an object")
            where = f"batch.input_config.requests.requests[{index}]"
            unknown.extend(
                UnknownField(str(name), where) for name in item if name not in INLINED_REQUEST_FIELDS
            )
            unknown.extend(unknown_fields(item["request"], path=f"{where}.request"))
        if unknown:
            raise unknown_fields_error(unknown)
        tmp = self._dir / f".{job_id}.requests.jsonl.tmp"
        with tmp.open("wb") as out:
            for item in items:
                out.write(
                    orjson.dumps({"request": item["request"], "metadata": item.get("metadata")}) + b"\n"
                )
        os.replace(tmp, self._dir / f"{job_id}.requests.jsonl")
        return len(items)

    # Scheduling ------------------------------------------------------------------------------------

    def _save(self, job: BatchRecord) -> None:
        """Persist and publish a record (called with the lock held)."""
        write_json_atomically(self._dir / f"{job.id}.json", asdict(job))
        self._jobs[job.id] = job

    def _end(self, job: BatchRecord, state: str, error: dict[str, object] | None = None) -> None:
        now = self._clock()
        job.state, job.end_time, job.update_time, job.error = state, now, now, error
        self._save(job)
        logger.info("%s ended %s", job.name, state)
        if self.on_end is not None:
            self.on_end(job)

    def _schedule(self) -> None:
        """Move jobs along as their deadlines pass; hand RUNNING jobs that are due to the workers."""
        with self._lock:
            while not self._stopping.is_set():
                now = self._clock()
                wake = now + 1.0
                # Higher priority first, then oldest first (the API's documented order).
                for job in sorted(self._jobs.values(), key=lambda j: (-j.priority, j.create_time)):
                    if job.state == PENDING:
                        due = job.create_time + self.options.pending_seconds
                        if now < due:
                            wake = min(wake, due)
                            continue
                        job.state, job.start_time, job.update_time = RUNNING, now, now
                        self._save(job)
                    if job.state == RUNNING and job.id not in self._in_pool:
                        self._in_pool.add(job.id)
                        assert self._pool is not None
                        self._pool.submit(self._run, job)
                self._lock.wait(max(0.01, wake - self._clock()))

    def _abandoned(self, job: BatchRecord) -> bool:
        return self._stopping.is_set() or job.state != RUNNING or self._jobs.get(job.id) is not job

    def _run(self, job: BatchRecord) -> None:
        tmp = self._dir / f"{job.id}.out.tmp"
        vertex = job.vertex_input is not None
        inline = not vertex and (
            job.source_file is None or job.request_count <= self.options.inline_responses_max
        )
        try:
            outcome = self._answer_all(job, tmp, inline=inline)
            self._hold_until_due(job)
            if vertex and outcome.state == SUCCEEDED and not self._abandoned(job):
                # Uploaded before the lock is taken: other calls go on meanwhile.
                job.output_dir = self._write_predictions(job, tmp)
            with self._lock:
                if not self._abandoned(job):
                    self._finish(job, tmp, outcome, inline=inline)
        except _Abandoned:
            pass
        except Exception:
            logger.exception("batch %s failed inside the emulator", job.name)
            with self._lock:
                if not self._abandoned(job):
                    self._end(job, FAILED, {"code": 13, "message": "internal error in the emulator"})
        finally:
            tmp.unlink(missing_ok=True)
            with self._lock:
                self._in_pool.discard(job.id)

    def _hold_until_due(self, job: BatchRecord) -> None:
        """Keep an answered job RUNNING until ``running_seconds`` (the current option) have passed since it
        started; raise _Abandoned if it is cancelled or deleted, or the emulator stops, meanwhile."""
        with self._lock:
            while not self._abandoned(job):
                left = (job.start_time or 0.0) + self.options.running_seconds - self._clock()
                if left <= 0:
                    return
                self._lock.wait(min(left, 1.0))  # at most 1 s, as the scheduler: an injected clock moves too
        raise _Abandoned

    def _finish(self, job: BatchRecord, tmp: Path, outcome: _Outcome, *, inline: bool) -> None:
        if outcome.state != SUCCEEDED:
            self._end(job, outcome.state, outcome.error)
            return
        if job.vertex_input is not None:
            pass  # the predictions are in the bucket already (_write_predictions)
        elif inline:
            os.replace(tmp, self.inline_results_path(job))
            job.inline_count = outcome.succeeded + outcome.failed
            job.inline_bytes = outcome.item_bytes
        else:
            job.responses_file = self.files.add_generated(f"batch-{job.id}", tmp, RESULTS_MIME_TYPE).name
        job.succeeded, job.failed = outcome.succeeded, outcome.failed
        self._end(job, SUCCEEDED)

    def _write_predictions(self, job: BatchRecord, tmp: Path) -> str:
        """Upload a Vertex AI job's answers as ``prediction_files`` files of consecutive lines under
        ``<prefix>/prediction-model-<time>/``, as Vertex writes them; returns that folder."""
        stamp = datetime.fromtimestamp(self._clock(), UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        folder = f"{job.vertex_output}/prediction-model-{stamp}"
        lines = tmp.read_bytes().splitlines(keepends=True)
        count = min(self.options.prediction_files, max(1, len(lines)))
        size = -(-len(lines) // count)
        for index in range(count):
            name = "predictions.jsonl" if count == 1 else f"predictions_{index + 1:05d}.jsonl"
            piece = tmp.with_suffix(f".{index}.part")
            try:
                piece.write_bytes(b"".join(lines[index * size : (index + 1) * size]))
                self.gcs.upload(f"{folder}/{name}", piece)
            finally:
                piece.unlink(missing_ok=True)
        return folder

    def _answer_all(self, job: BatchRecord, tmp: Path, *, inline: bool) -> _Outcome:
        """Answer every request into ``tmp``, one result item a line."""
        succeeded = failed = item_bytes = 0
        try:
            with tmp.open("wb") as out:
                for index, line in enumerate(self._source_lines(job)):
                    if self._abandoned(job):
                        raise _Abandoned
                    marker = job_marker(line.request)
                    if marker == "expired":
                        return _Outcome(EXPIRED)
                    if marker == "failed":
                        return _Outcome(FAILED, error=JOB_FAILED_ERROR)
                    request = line.request
                    if job.vertex_input is not None and isinstance(request, dict):
                        request = {k: v for k, v in request.items() if k != "labels"}
                    if line.problem is not None:
                        result = Answer(error=status_error(3, line.problem))
                    else:
                        result = answer(
                            request,
                            job.model,
                            image_scale=self.options.image_scale,
                            response_id=response_id(job.id, index),
                        )
                    if job.vertex_input is not None:
                        encoded = orjson.dumps(self._prediction(line, result))
                        out.write(encoded + b"\n")
                        failed += result.error is not None
                        succeeded += result.error is None
                        continue
                    item: dict[str, object] = {}
                    if not inline and line.key is not None:
                        item["key"] = line.key
                    if result.error is not None:
                        item["error"] = result.error
                        failed += 1
                    else:
                        item["response"] = result.response
                        succeeded += 1
                    if inline and line.metadata is not None:
                        item["metadata"] = line.metadata
                    encoded = orjson.dumps(item)
                    out.write(encoded + b"\n")
                    item_bytes += len(encoded)
        except _InputMissing as exc:
            return _Outcome(FAILED, error={"code": 5, "message": str(exc)})
        return _Outcome(SUCCEEDED, succeeded, failed, item_bytes)

    def _prediction(self, line: _SourceLine, result: Answer) -> dict[str, object]:
        """One Vertex AI prediction line: the request echoed (labels too, unless the marker drops them), and
        the response, or in ``status`` why there is none."""
        request = line.request
        if label_lost(request) and isinstance(request, dict):
            request = {k: v for k, v in request.items() if k != "labels"}
        item: dict[str, object] = {
            "status": "",
            "processed_time": rfc3339(self._clock()),
            "request": request,
        }
        if result.error is not None:
            item["status"] = "Request failed: " + orjson.dumps({"error": result.error}).decode()
        else:
            item["response"] = result.response
        return item

    def _source_lines(self, job: BatchRecord) -> Iterator[_SourceLine]:
        if job.vertex_input is not None:
            for uri in job.vertex_input:
                try:
                    with self.gcs.open_read(uri) as stream:
                        for number, raw in enumerate(iter_lines(stream), start=1):
                            if raw.strip():
                                yield self._parse_file_line(number, raw)
                except GcsObjectMissing as exc:
                    raise _InputMissing(str(exc)) from exc
            return
        if job.source_file is None:
            with (self._dir / f"{job.id}.requests.jsonl").open("rb") as stream:
                for raw in iter_lines(stream):
                    item = orjson.loads(raw)
                    yield _SourceLine(key=None, metadata=item.get("metadata"), request=item["request"])
            return
        file_id = job.source_file.removeprefix("files/")
        try:
            stream = self.files.data_path(file_id).open("rb")
        except FileNotFoundError as exc:
            raise _InputMissing(f"Input file {job.source_file} was deleted before the job ran.") from exc
        with stream:
            for number, raw in enumerate(iter_lines(stream), start=1):
                if not raw.strip():
                    continue
                yield self._parse_file_line(number, raw)

    @staticmethod
    def _parse_file_line(number: int, raw: bytes) -> _SourceLine:
        try:
            item = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return _SourceLine(None, None, None, f"line {number} is not valid JSON")
        if not isinstance(item, dict):
            return _SourceLine(None, None, None, f"line {number} is not a JSON object")
        key = item.get("key")
        key = None if key is None else str(key)
        metadata: dict[str, object] | None = {"key": key} if key is not None else None
        request = item.get("request")
        if not isinstance(request, dict):
            return _SourceLine(key, metadata, None, f"line {number} has no 'request' object")
        return _SourceLine(key, metadata, request)
