"""Build the adapters the settings name. The one place that knows which adapter serves which setting."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from promptdrop.errors import ConfigurationError
from promptdrop.logs import register_secret
from promptdrop.ports import BatchBackend, BlobStore, JobStore, Notifier
from promptdrop.settings import Settings
from promptdrop.usecases.context import Context

log = logging.getLogger(__name__)

# The key the CLI hands the bundled emulator when no GEMINI_API_KEY is configured (it accepts any).
EMULATOR_KEY = "promptdrop-local-emulator"


def blob_store(settings: Settings) -> BlobStore:
    if settings.bucket_is_gcs:
        from promptdrop.adapters.gcs import GcsBlobStore

        return GcsBlobStore(settings.bucket_name, upload_concurrency=settings.upload_concurrency)
    from promptdrop.adapters.localfs import LocalBlobStore

    return LocalBlobStore(Path(settings.bucket))


def job_store(settings: Settings) -> JobStore:
    if settings.store_is_firestore:
        from promptdrop.adapters.firestore_store import FirestoreJobStore

        return FirestoreJobStore.from_url(settings.store)
    if settings.store.startswith("sqlite:///"):
        from promptdrop.adapters.sqlite_store import SqliteJobStore

        return SqliteJobStore(settings.sqlite_path)
    raise ConfigurationError(
        "PROMPTDROP_STORE must be sqlite:///PATH, firestore or firestore://PROJECT/DATABASE"
    )


def notifier(settings: Settings) -> Notifier:
    if settings.events_topic:
        from promptdrop.adapters.pubsub import PubsubNotifier

        return PubsubNotifier(settings.events_topic)
    from promptdrop.adapters.events_log import EventsLog

    return EventsLog(settings.events_log)


# Starts (or finds) the bundled emulator and returns its URL. The CLI passes one in; the deployed functions
# never do, so the emulator package stays out of their import graph (and out of the function archive).
EmulatorLauncher = Callable[[Settings], str]


def backend(settings: Settings, emulator_launcher: EmulatorLauncher | None = None) -> BatchBackend:
    from promptdrop.adapters.gemini import GeminiBackend

    if settings.backend == "gemini":
        if settings.api_key is None:
            raise ConfigurationError("PROMPTDROP_BACKEND=gemini needs GEMINI_API_KEY")
        register_secret(settings.api_key.get_secret_value())
        return GeminiBackend.from_settings(settings)
    base_url = settings.gemini_base_url
    if base_url is None:
        if emulator_launcher is None:
            raise ConfigurationError("PROMPTDROP_BACKEND=emulator needs PROMPTDROP_GEMINI_BASE_URL here")
        base_url = emulator_launcher(settings)
    key = settings.api_key.get_secret_value() if settings.api_key else EMULATOR_KEY
    return GeminiBackend(key, base_url=base_url)


def build_context(settings: Settings, emulator_launcher: EmulatorLauncher | None = None) -> Context:
    if settings.in_cloud:
        settings.require_cloud_ready()
    if settings.api_key is not None:
        register_secret(settings.api_key.get_secret_value())
    return Context(
        settings=settings,
        blobs=blob_store(settings),
        store=job_store(settings),
        notifier=notifier(settings),
        backend_factory=lambda: backend(settings, emulator_launcher),
    )
