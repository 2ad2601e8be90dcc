"""Build the adapters the settings name. The one place that knows which adapter serves which setting.

The Google client-library adapters (Cloud Storage, Firestore, Pub/Sub, google-genai) are imported inside
their builders: together they take 2-3 s to import, which local runs, `status` and `--dry-run` never need.
These are the only imports inside functions in the package (tests/unit/test_layering.py lists them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from promptdrop.adapters.events_log import EventsLog
from promptdrop.adapters.localfs import LocalBlobStore
from promptdrop.adapters.sqlite_cache import SqlitePaidImageCache
from promptdrop.adapters.sqlite_store import SqliteJobStore
from promptdrop.budget import ByteBudget
from promptdrop.errors import ConfigurationError
from promptdrop.logs import register_secret
from promptdrop.ports import BatchBackend, BlobStore, JobStore, Notifier, PaidImageCache
from promptdrop.settings import Settings
from promptdrop.usecases.context import Context

log = logging.getLogger(__name__)

# The key the CLI hands the bundled emulator when no GEMINI_API_KEY is configured (it accepts any).
EMULATOR_KEY = "promptdrop-local-emulator"

# Starts (or finds) the bundled emulator and returns its URL. The CLI passes one in; the deployed functions
# never do, so the emulator package stays out of their import graph (and out of the function archive).
EmulatorLauncher = Callable[[Settings], str]


def blob_store(settings: Settings, memory: ByteBudget | None = None) -> BlobStore:
    """``memory``: the process's byte budget, which Cloud Storage reads draw on to fetch ahead."""
    if settings.bucket_is_gcs:
        from promptdrop.adapters.gcs import GcsBlobStore  # heavy: see the module docstring

        return GcsBlobStore(
            settings.bucket_name, upload_concurrency=settings.upload_concurrency, read_ahead_budget=memory
        )
    return LocalBlobStore(Path(settings.bucket))


def job_store(settings: Settings) -> JobStore:
    if settings.store_is_firestore:
        from promptdrop.adapters.firestore_store import FirestoreJobStore  # heavy: see the module docstring

        return FirestoreJobStore.from_url(settings.store)
    if settings.store.startswith("sqlite:///"):
        return SqliteJobStore(settings.sqlite_path)
    raise ConfigurationError(
        "PROMPTDROP_STORE must be sqlite:///PATH, firestore or firestore://PROJECT/DATABASE"
    )


def paid_images(settings: Settings) -> PaidImageCache:
    """The pay-once cache lives beside the job store: a table in its SQLite file, or a Firestore collection."""
    if settings.store_is_firestore:
        from promptdrop.adapters.firestore_cache import FirestorePaidImageCache  # heavy: see the docstring

        return FirestorePaidImageCache.from_url(settings.store)
    if settings.store.startswith("sqlite:///"):
        return SqlitePaidImageCache(settings.sqlite_path)
    raise ConfigurationError(
        "PROMPTDROP_STORE must be sqlite:///PATH, firestore or firestore://PROJECT/DATABASE"
    )


def notifier(settings: Settings) -> Notifier:
    if settings.events_topic:
        from promptdrop.adapters.pubsub import PubsubNotifier  # heavy: see the module docstring

        return PubsubNotifier(settings.events_topic)
    return EventsLog(settings.events_log)


def now_dispatch(settings: Settings) -> Notifier | None:
    """Where the now lane's chunks are handed over (the cloud's now topic); None: sent by whoever advances."""
    if settings.now_topic:
        from promptdrop.adapters.pubsub import PubsubNotifier  # heavy: see the module docstring

        return PubsubNotifier(settings.now_topic)
    return None


def backend(settings: Settings, emulator_launcher: EmulatorLauncher | None = None) -> BatchBackend:
    if settings.backend == "vertex":
        from promptdrop.adapters.vertex import VertexBackend  # heavy: see the module docstring

        return VertexBackend.from_settings(settings)
    from promptdrop.adapters.gemini import GeminiBackend  # heavy: see the module docstring

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
    return GeminiBackend(
        key, base_url=base_url, timeout_s=settings.api_timeout, now_base_url=settings.now_base_url
    )


def build_context(settings: Settings, emulator_launcher: EmulatorLauncher | None = None) -> Context:
    if settings.in_cloud:
        settings.require_cloud_ready()
    if settings.api_key is not None:
        register_secret(settings.api_key.get_secret_value())
    if settings.webhook_secret is not None:
        register_secret(settings.webhook_secret.get_secret_value())
    memory = ByteBudget(settings.harvest_memory_budget)
    return Context(
        settings=settings,
        blobs=blob_store(settings, memory),
        image_budget=memory,
        store=job_store(settings),
        notifier=notifier(settings),
        paid_images=paid_images(settings),
        now_dispatch=now_dispatch(settings),
        backend_factory=lambda: backend(settings, emulator_launcher),
    )
