"""``BatchBackend`` on Vertex AI batch inference for Gemini: google-genai in ``vertexai=True`` mode.

A job reads its input from the bucket (the chunk the submission wrote, no upload) and writes
``predictions*.jsonl`` under an output folder in the run's scratch (no results copy); requests carry their
key in ``labels`` (``names.vertex_label``), as Vertex has no ``key`` field. It authenticates with the
service account (Application Default Credentials): no API key. No webhooks: its jobs are polled.
``PROMPTDROP_VERTEX_BASE_URL`` points it at another endpoint (the bundled emulator) with anonymous
credentials. The now lane's ``generate_content``, the lookup by display name and cancel are the Gemini
backend's, on the Vertex client.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import BinaryIO

from google import genai
from google.auth.credentials import AnonymousCredentials
from google.genai import types

from promptdrop.adapters.gemini import GeminiBackend
from promptdrop.errors import BackendPermanentError, ConfigurationError
from promptdrop.models import ServedModels
from promptdrop.ports import BatchInfo, UploadedFile, WebhookRegistration, WebhookStatus
from promptdrop.settings import Settings
from promptdrop.states import JobState

VERTEX_API_VERSION = "v1beta1"


class EmulatorCredentials(AnonymousCredentials):
    """Anonymous credentials the SDK can send: it asks every credential for a bearer token, and plain
    ``AnonymousCredentials`` has none and refuses to refresh."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.token = "anonymous"  # noqa: S105 - not a secret: what an emulator is sent

    @property
    def expired(self) -> bool:
        return False


def batch_info_from_vertex(job: types.BatchJob) -> BatchInfo:
    """A ``BatchInfo`` from a ``BatchPredictionJob`` as the SDK parses it."""
    stats: dict[str, int] = {}
    counts = job.completion_stats
    if counts is not None:
        for name, value in (
            ("successfulRequestCount", counts.successful_count),
            ("failedRequestCount", counts.failed_count),
            ("pendingRequestCount", counts.incomplete_count),
        ):
            if value:
                stats[name] = int(value)
    output = job.output_info
    error = job.error.message if job.error is not None and job.error.message else None
    return BatchInfo(
        name=job.name or "",
        display_name=job.display_name,
        state=JobState.parse(job.state),
        model=job.model,
        stats=stats,
        error=error,
        results_dir=output.gcs_output_directory if output is not None else None,
    )


class VertexBackend(GeminiBackend):
    """Vertex AI batch over the google-genai SDK."""

    bucket_input = True  # a constant per class: Gemini False, Vertex True
    _info_from_job = staticmethod(batch_info_from_vertex)  # find_batches' list items

    def __init__(
        self,
        project: str,
        location: str = "global",
        *,
        base_url: str | None = None,
        timeout_s: float = 120,
        client: genai.Client | None = None,
    ) -> None:
        if not project:
            raise ConfigurationError("PROMPTDROP_BACKEND=vertex needs PROMPTDROP_VERTEX_PROJECT")
        self._secret = ""  # no API key: the service account's token never appears in our messages
        self._owns_client = client is None
        self._base_url = (base_url or f"https://{location}-aiplatform.googleapis.com").rstrip("/")
        self._timeout_s = timeout_s
        retry = types.HttpRetryOptions(attempts=5, initial_delay=1.0, max_delay=60.0, jitter=1.0)
        self._client = client or genai.Client(
            vertexai=True,
            project=project,
            location=location,
            # An emulator takes any token; the real endpoint gets Application Default Credentials.
            credentials=EmulatorCredentials() if base_url else None,
            http_options=types.HttpOptions(
                base_url=base_url,
                api_version=VERTEX_API_VERSION,
                timeout=int(timeout_s * 1000),
                retry_options=retry,
            ),
        )
        self._now_client = self._client

    @classmethod
    def from_settings(cls, settings: Settings, base_url_override: str | None = None) -> VertexBackend:
        return cls(
            settings.vertex_project or "",
            settings.vertex_location,
            base_url=base_url_override or settings.vertex_base_url,
            timeout_s=settings.api_timeout,
        )

    def upload_file(
        self, source: BinaryIO, *, size: int, display_name: str, mime_type: str = "jsonl"
    ) -> UploadedFile:
        raise BackendPermanentError("Vertex AI reads its inputs from the bucket: nothing is uploaded")

    def create_batch(
        self,
        *,
        model: str,
        file_name: str,
        display_name: str,
        priority: int = 0,
        output_uri: str | None = None,
    ) -> BatchInfo:
        """One POST, retries off. ``priority`` has no Vertex field: jobs run in the shared pool's order."""
        if not file_name.startswith("gs://") or not output_uri:
            raise BackendPermanentError("a Vertex AI batch needs a gs:// input and a gs:// output folder")
        config = types.CreateBatchJobConfig(
            display_name=display_name,
            dest=output_uri,
            http_options=types.HttpOptions(retry_options=types.HttpRetryOptions(attempts=1)),
        )
        with self._translated_errors(f"create batch {display_name}", creating=True):
            job = self._client.batches.create(
                model=model.removeprefix("models/"), src=file_name, config=config
            )
        return batch_info_from_vertex(job)

    def served_models(self) -> ServedModels:
        """The table's models: Vertex lists publisher models, not what batch takes per location."""
        return ServedModels.from_table(datetime.now(UTC).date())

    def get_batch(self, name: str) -> BatchInfo:
        with self._translated_errors(f"get {name}"):
            return batch_info_from_vertex(self._client.batches.get(name=name))

    def download_file(self, file_name: str, destination: BinaryIO, *, start: int = 0) -> None:
        raise BackendPermanentError("Vertex AI writes its predictions to the bucket: nothing is downloaded")

    def delete_file(self, file_name: str) -> None:
        """Inputs are the run's scratch objects: they go with the run's scratch, not here."""

    def create_webhook(self, uri: str, *, events: Sequence[str], name: str) -> WebhookRegistration:
        raise ConfigurationError("Vertex AI batch sends no webhooks: its jobs are polled")

    def delete_webhook(self, webhook_id: str) -> None:
        """No webhooks on Vertex: nothing to delete."""

    def list_webhooks(self) -> list[WebhookStatus]:
        return []
