"""The ``gs://`` objects the emulator's Vertex AI routes read their input from and write predictions to.

Reached the way the client libraries reach Cloud Storage: ``STORAGE_EMULATOR_HOST`` pointing at
fake-gcs-server (the Cloud path's tests), with anonymous credentials. Without it the emulator has no bucket
to read and refuses a Vertex AI batch create (400): a folder bucket (the local path) batches through the
Gemini API routes.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from google.api_core import exceptions as gcs_errors
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from promptdrop.emulator.wire import ApiError

STORAGE_HOST_ENV = "STORAGE_EMULATOR_HOST"


class GcsObjectMissing(Exception):
    """A ``gs://`` object the job needs is not there."""


def split_uri(uri: str) -> tuple[str, str]:
    """``gs://BUCKET/NAME`` -> (bucket, name); ApiError 400 for anything else."""
    bucket, _, name = uri.removeprefix("gs://").partition("/")
    if not uri.startswith("gs://") or not bucket or not name:
        raise ApiError(400, f"not a gs://BUCKET/OBJECT URI: {uri!r}", "INVALID_ARGUMENT")
    return bucket, name


class GcsAccess:
    """One google-cloud-storage client, made on first use (only the Vertex routes need it)."""

    def __init__(self) -> None:
        self._client: storage.Client | None = None
        self._lock = threading.Lock()

    def client(self) -> storage.Client:
        if not os.environ.get(STORAGE_HOST_ENV):
            raise ApiError(
                400,
                f"the emulator reaches gs:// only through {STORAGE_HOST_ENV} (fake-gcs-server); "
                "a folder bucket batches through the Gemini API routes",
                "FAILED_PRECONDITION",
            )
        with self._lock:
            if self._client is None:
                anonymous = AnonymousCredentials()  # type: ignore[no-untyped-call]
                self._client = storage.Client(project="promptdrop-emulator", credentials=anonymous)
            return self._client

    @contextmanager
    def open_read(self, uri: str) -> Iterator[BinaryIO]:
        bucket, name = split_uri(uri)
        blob = self.client().bucket(bucket).blob(name)
        try:
            with blob.open("rb") as stream:
                yield stream
        except gcs_errors.NotFound as exc:
            raise GcsObjectMissing(f"{uri} does not exist") from exc

    def upload(self, uri: str, path: Path) -> None:
        bucket, name = split_uri(uri)
        self.client().bucket(bucket).blob(name).upload_from_filename(
            str(path), content_type="application/jsonl"
        )
