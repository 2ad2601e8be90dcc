"""The seams between use cases and the outside world. Adapters implement these Protocols.

Adapters translate their SDK's errors into ``promptdrop.errors`` (transient vs permanent) so the use
cases never see a Google exception.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

from promptdrop.models import ServedModels
from promptdrop.records import Job, Run
from promptdrop.spend import SpendCap, SpendRefusal
from promptdrop.states import JobPhase, JobState, RunState


@dataclass(frozen=True, slots=True)
class BlobInfo:
    name: str
    size: int
    generation: str  # GCS generation; locally a counter assigned when the object lands
    updated: float  # epoch seconds
    content_type: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CopyOrder:
    """One copy of ``BlobStore.copy_many``: as ``copy(source, destination, if_source_generation=...)``."""

    source: str
    destination: str
    if_source_generation: str | None = None


# Orders per ``BlobStore.copy_many`` call that one request can carry (the Cloud Storage batch limit).
COPY_BATCH = 100


class BlobStore(Protocol):
    """A bucket: a local folder or Cloud Storage. Object names use '/' and never start with one."""

    @property
    def url(self) -> str:
        """``gs://NAME`` or the local folder, for people and for summary.json."""
        ...

    def stat(self, name: str) -> BlobInfo | None: ...

    def open_read(
        self, name: str, *, start: int = 0, generation: str | None = None
    ) -> AbstractContextManager[BinaryIO]:
        """Stream an object from byte ``start``. Raises NotFoundError; with ``generation``, streams that
        generation or raises NotFoundError (another one is live, or the object is gone)."""
        ...

    def read_bytes(self, name: str, *, generation: str | None = None) -> bytes:
        """The whole object; ``generation`` as for ``open_read``."""
        ...

    def open_write(
        self, name: str, *, content_type: str | None = None, metadata: Mapping[str, str] | None = None
    ) -> AbstractContextManager[BinaryIO]:
        """Stream an object in; it appears whole when the block ends without error, never half."""
        ...

    def write_overhead(self, size: int) -> int:
        """Bytes ``write_bytes`` holds beside the caller's ``size`` bytes while it writes them (a request body
        the client library builds), so a caller budgeting memory can count them."""
        ...

    def write_bytes(
        self,
        name: str,
        data: bytes,
        *,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
        if_absent: bool = False,
        if_generation: str | None = None,
    ) -> bool:
        """Write atomically. With ``if_absent`` return False (and change nothing) if the object exists; with
        ``if_generation``, write only over that generation of the object (a read-modify-write), else raise
        PreconditionFailedError and change nothing."""
        ...

    def list(self, prefix: str) -> Iterator[BlobInfo]: ...

    def delete(self, name: str) -> None:
        """Delete; a missing object is fine."""
        ...

    def delete_prefix(self, prefix: str) -> None:
        """Delete every object under ``prefix``, scratch files of interrupted writes included."""
        ...

    def copy(
        self, source: str, destination: str, *, if_source_generation: str | None = None, share: bool = False
    ) -> None:
        """Copy an object. Raises NotFoundError; with ``if_source_generation``, copies that generation or
        nothing (NotFoundError when it is gone, PreconditionFailedError when another one is live).
        ``share``: the copy may share storage with the source (a hard link in a local folder), for objects
        written once and never edited in place (images served from the pay-once cache)."""
        ...

    def copy_many(self, orders: Sequence[CopyOrder], *, share: bool = False) -> Sequence[bool]:
        """Each order as ``copy`` would make it, in as few calls as the store allows (Cloud Storage: one
        batch request per ``COPY_BATCH`` orders); per order, True when copied, False when its source is gone
        or another generation is live (where ``copy`` raises NotFoundError or PreconditionFailedError).
        Other errors are raised; the orders made before stay made (a copy is idempotent)."""
        ...

    def sweep_interrupted(self, prefix: str) -> None:
        """Remove what writes interrupted by a kill left under ``prefix`` (a folder's hidden temporaries);
        objects stay. Settle calls it on a run's folder once no worker may write there any more."""
        ...

    def mark_ended(self, prefix: str, when: float) -> None:
        """Stamp the objects under ``prefix`` with the time their run ended (Cloud Storage's ``customTime``),
        so the bucket's lifecycle rule expires scratch a crash left behind by the run's end, never by age.
        A folder has no lifecycle rule: nothing to do there."""
        ...


class JobStore(Protocol):
    """Runs and jobs with atomic claims, leases and conditional updates (SQLite or Firestore)."""

    def create_run(self, run: Run) -> bool:
        """Atomic create-if-absent. False if a run with this id exists (a redelivered event)."""
        ...

    def get_run(self, run_id: str) -> Run | None: ...

    def update_run(
        self,
        run_id: str,
        changes: Mapping[str, Any],
        *,
        if_states: Iterable[RunState] | None = None,
        if_lease_owner: str | None = None,
    ) -> Run:
        """Set top-level fields (values as ``model_dump(mode="json")`` gives them) and ``updated_at``.

        Raises PreconditionFailedError if the run's state is not in ``if_states`` or its lease is not
        held by ``if_lease_owner``; NotFoundError if it does not exist.
        """
        ...

    def list_runs(self, states: Iterable[RunState] | None = None, limit: int = 1000) -> list[Run]:
        """Runs in these states (all if None), oldest ``updated_at`` first: the active-work query."""
        ...

    def create_job(self, job: Job, *, if_lease_owner: str | None = None) -> bool:
        """Atomic create-if-absent; with ``if_lease_owner``, only while that owner holds the run's lease."""
        ...

    def get_job(self, job_id: str) -> Job | None: ...

    def update_job(
        self,
        job_id: str,
        changes: Mapping[str, Any],
        *,
        if_phases: Iterable[JobPhase] | None = None,
        if_lease_owner: str | None = None,
    ) -> Job:
        """Like ``update_run``; ``if_lease_owner`` is checked against the lease of the job's run."""
        ...

    def start_job(
        self,
        job_id: str,
        *,
        max_jobs: int,
        max_tokens: int,
        max_input_bytes: int,
        if_lease_owner: str | None = None,
    ) -> Job | None:
        """QUEUED -> CREATING if the jobs of every run leave room under the caps (jobs and tokens in
        flight, CREATING or ACTIVE; input bytes the Files API holds, HARVESTING too), counted and changed
        in one transaction; None when they do not.

        Raises PreconditionFailedError if the job is not QUEUED (another worker started it).
        """
        ...

    def list_jobs(self, run_id: str) -> list[Job]:
        """A run's jobs ordered by (attempt, chunk)."""
        ...

    def acquire_lease(self, run_id: str, owner: str, ttl: float, now: float) -> bool:
        """Take the run's lease if free, expired, or already ours (then extend it). Atomic.

        The lease alone changes: ``updated_at`` keeps following real progress.
        """
        ...

    def release_lease(self, run_id: str, owner: str) -> None:
        """Give the run's lease back if we hold it; a missing run is fine."""
        ...

    def reserve_spend(self, run_id: str, amount: float, caps: Sequence[SpendCap]) -> SpendRefusal | None:
        """Reserve ``amount`` USD for the run in each capped period's ledger, in one transaction, unless it
        would pass a cap (``spend.refusal``): then change nothing and say which. Reserving again replaces
        the run's own entry."""
        ...

    def settle_spend(self, run_id: str, periods: Sequence[str], amount: float) -> None:
        """Replace the run's reservation in these periods' ledgers with what it was billed."""
        ...

    def spent(self, periods: Sequence[str]) -> dict[str, float]:
        """What each period's ledger holds: settled costs plus open reservations, by period key."""
        ...

    def take_spend_window(self, key: str, amount: float, limit: float, now: float, window: float) -> float:
        """Take ``amount`` USD from the rolling window ``key`` (one record, in one transaction: every process
        shares it) if it fits under ``limit`` (``pacing.window_take``): 0.0. Else change nothing and return
        the seconds until it would fit."""
        ...


@dataclass(frozen=True, slots=True)
class UploadedFile:
    name: str  # "files/..."
    uri: str


@dataclass(frozen=True, slots=True)
class BatchInfo:
    """A batch job as promptdrop needs it, from the SDK object plus the raw fields the SDK drops."""

    name: str  # "batches/..."
    display_name: str | None
    state: JobState
    model: str | None = None
    results_file: str | None = None  # "files/batch-..."
    # Raw wire items {"response"|"error", "metadata"?} when the API answered inline.
    inlined_responses: list[dict[str, Any]] | None = None
    stats: Mapping[str, int] = field(default_factory=dict)  # requestCount, successfulRequestCount...
    error: str | None = None  # the Operation error message, when the job failed
    # Vertex AI: the job's output directory (gs://...), where its predictions*.jsonl files are.
    results_dir: str | None = None

    @property
    def done(self) -> bool:
        return self.state.terminal


@dataclass(frozen=True, slots=True)
class WebhookStatus:
    """A static webhook as ``webhooks.list`` shows it (``state``: enabled, disabled, or
    disabled_due_to_failed_deliveries, when the API stopped pushing after failed deliveries)."""

    id: str
    uri: str
    state: str
    events: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class WebhookRegistration:
    """A static webhook just created: its id, and the ``whsec_`` secret its deliveries are signed with."""

    id: str
    secret: str = field(repr=False)


class BatchBackend(Protocol):
    """The Gemini Batch + Files API (real, or the bundled emulator over HTTP), or Vertex AI batch.

    ``bucket_input``: the backend reads each job's input where the submission wrote it in the bucket and
    writes its results there too (Vertex AI), so nothing is uploaded and no results file is copied.
    """

    @property
    def bucket_input(self) -> bool: ...

    def upload_file(
        self, source: BinaryIO, *, size: int, display_name: str, mime_type: str = "jsonl"
    ) -> UploadedFile: ...

    def create_batch(
        self,
        *,
        model: str,
        file_name: str,
        display_name: str,
        priority: int = 0,
        output_uri: str | None = None,
    ) -> BatchInfo:
        """One POST with SDK retries off. Raises AmbiguousCreateError when the job may exist anyway.

        ``file_name``: a Files API name, or with ``bucket_input`` the input's ``gs://`` URI; ``output_uri``:
        with ``bucket_input``, the ``gs://`` folder the job writes its predictions under."""
        ...

    def served_models(self) -> ServedModels:
        """The model ids the API serves now and their ``supportedGenerationMethods`` (``models.list``).

        Raises TransientError when it cannot tell: a verdict is never made from a failed call.
        """
        ...

    def generate_content(
        self, *, model: str, request: Mapping[str, Any], timeout: float | None = None
    ) -> dict[str, Any]:
        """One ``models.generate_content`` call (the now lane), sent once: no retries, not even the SDK's.

        ``request`` is a GenerateContentRequest as a batch line carries it (camelCase); ``timeout`` (seconds)
        bounds the call (default ``PROMPTDROP_API_TIMEOUT``). Returns what a results-file line holds for it:
        ``{"response": GenerateContentResponse}``, or ``{"error": Status}`` when the API answered with an
        error (its ``code`` the HTTP status). Raises BackendTransientError only when no answer came at all
        (the call may have been billed: the caller has counted the send and decides whether to send again).
        """
        ...

    def find_batches(self, display_name: str) -> list[BatchInfo]:
        """Every batch with this display name, oldest first: recovery after an ambiguous create."""
        ...

    def get_batch(self, name: str) -> BatchInfo: ...

    def cancel_batch(self, name: str) -> None: ...

    def download_file(self, file_name: str, destination: BinaryIO, *, start: int = 0) -> None:
        """Stream a file's bytes from byte ``start`` into ``destination`` (never whole in memory)."""
        ...

    def delete_file(self, file_name: str) -> None:
        """Delete; a missing file is fine."""
        ...

    def create_webhook(self, uri: str, *, events: Sequence[str], name: str) -> WebhookRegistration:
        """Register a static webhook (``webhooks.create``); the signing secret comes back this once."""
        ...

    def delete_webhook(self, webhook_id: str) -> None:
        """Remove a static webhook; a missing one is fine."""
        ...

    def list_webhooks(self) -> list[WebhookStatus]:
        """Every static webhook of the project (``webhooks.list``, every page)."""
        ...


@dataclass(frozen=True, slots=True)
class PaidImage:
    """What the pay-once cache keeps per request fingerprint: the image a run paid for, and where it is.

    ``generation`` and ``size`` are the image object's when the entry was made: an object with another
    generation (rewritten) or none (deleted) is not that image, and the entry is not used.
    """

    fingerprint: str
    image: str  # object name in the bucket
    generation: str
    size: int
    mime_type: str | None
    model: str
    usage: Mapping[str, int] | None  # the tokens it was billed for
    run_id: str  # the run and key that paid for it
    key: str
    created_at: float  # epoch seconds: when it was paid for (the retention counts from here)

    def to_json(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "image": self.image,
            "generation": self.generation,
            "size": self.size,
            "mime_type": self.mime_type,
            "model": self.model,
            "usage": dict(self.usage) if self.usage is not None else None,
            "run_id": self.run_id,
            "key": self.key,
            "created_at": self.created_at,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PaidImage:
        return cls(
            fingerprint=str(data["fingerprint"]),
            image=str(data["image"]),
            generation=str(data["generation"]),
            size=int(data["size"]),
            mime_type=data.get("mime_type"),
            model=str(data["model"]),
            usage=data.get("usage"),
            run_id=str(data["run_id"]),
            key=str(data["key"]),
            created_at=float(data["created_at"]),
        )


@dataclass(frozen=True, slots=True)
class InFlight:
    """A request being paid for now: the unfinished run (and its line) that sent it. Another run with the
    same request waits for that run instead of sending it again; the marker goes when the run settles."""

    fingerprint: str
    run_id: str
    key: str

    def to_json(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "run_id": self.run_id, "key": self.key}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> InFlight:
        return cls(fingerprint=str(data["fingerprint"]), run_id=str(data["run_id"]), key=str(data["key"]))


class PaidImageCache(Protocol):
    """Request fingerprint -> the image paid for (SQLite table ``paid_images``, or Firestore collection),
    and the requests in flight (table or collection ``in_flight``)."""

    def get(self, fingerprint: str) -> PaidImage | None: ...

    def get_many(self, fingerprints: Iterable[str]) -> dict[str, PaidImage]:
        """The entries stored for ``fingerprints`` (absent ones left out), in a few batched reads
        (SQLite ``IN`` queries, Firestore ``get_all``) rather than one read each."""
        ...

    def put(self, entry: PaidImage, *, replacing: PaidImage | None = None) -> bool:
        """Create the entry if there is none (atomic: of two runs settling at once, the first wins); with
        ``replacing``, overwrite that entry if it is still the one stored (a stale or superseded one).
        False when another entry is stored."""
        ...

    def put_many(self, entries: Sequence[PaidImage]) -> list[bool]:
        """``put`` without ``replacing`` of each entry (one per fingerprint), in a few batched writes
        (Firestore batches of up to 500 creates, SQLite one transaction per call) rather than one write
        each: True where the entry was created, False where one was stored already (left as it is)."""
        ...

    def in_flight(self, fingerprint: str) -> InFlight | None: ...

    def in_flight_many(self, fingerprints: Iterable[str]) -> dict[str, InFlight]:
        """The markers stored for ``fingerprints`` (absent ones left out), read in batches like ``get_many``."""
        ...

    def claim_in_flight(self, marker: InFlight, *, replacing: InFlight | None = None) -> InFlight:
        """Store ``marker`` if no marker is stored for its fingerprint (atomic: of two runs submitting the
        same line at once, one becomes the payer); with ``replacing``, also over that marker if it is still
        the one stored (its run has ended). Returns the marker stored after the call (``marker`` if won)."""
        ...

    def claim_in_flight_many(self, markers: Sequence[InFlight]) -> list[InFlight]:
        """``claim_in_flight`` without ``replacing`` of each marker, in a few batched writes (as
        ``put_many``): per marker, the marker stored after the call (the first of a fingerprint repeated)."""
        ...

    def release_in_flight(self, marker: InFlight) -> None:
        """Delete ``marker`` if it is still the one stored."""
        ...

    def release_in_flight_many(self, markers: Sequence[InFlight]) -> None:
        """``release_in_flight`` of each marker, in a few batched reads and writes: each deleted only if
        it is still the one stored (a claim another run took over stays)."""
        ...


class Notifier(Protocol):
    """Where run events go: the events topic, or locally an events log."""

    def publish(self, event: Mapping[str, Any]) -> None: ...
