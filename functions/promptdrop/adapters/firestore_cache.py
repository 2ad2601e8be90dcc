"""The pay-once cache in Firestore: collection ``paid_images``, one document per request fingerprint.

A new entry is ``document.create()`` (refused when the document exists), so of two runs settling the same
new line at once the first one's image is kept; replacing a stale entry reads and writes it in one
transaction, conditional on it still being the stale one.
"""

from __future__ import annotations

from typing import Any

from google.api_core import exceptions as api_exceptions
from google.api_core import gapic_v1
from google.api_core.retry import Retry
from google.cloud import firestore

from promptdrop.adapters.firestore_store import DEFAULT_DATABASE, firestore_errors, parse_store_url
from promptdrop.ports import PaidImage

PAID_IMAGES = "paid_images"


class FirestorePaidImageCache:
    """``PaidImageCache`` on Firestore. ``timeout``/``retry`` apply to each call."""

    def __init__(
        self,
        client: firestore.Client | None = None,
        *,
        project: str | None = None,
        database: str = DEFAULT_DATABASE,
        timeout: float | None = None,
        retry: Retry | object | None = gapic_v1.method.DEFAULT,
    ) -> None:
        self._client = client if client is not None else firestore.Client(project=project, database=database)
        self._entries = self._client.collection(PAID_IMAGES)
        self._call: dict[str, Any] = {"retry": retry, "timeout": timeout}

    @classmethod
    def from_url(
        cls, url: str, client: firestore.Client | None = None, **options: Any
    ) -> FirestorePaidImageCache:
        """The cache beside the store ``PROMPTDROP_STORE`` names (``firestore://PROJECT/DATABASE``)."""
        project, database = parse_store_url(url)
        return cls(client, project=project, database=database, **options)

    def get(self, fingerprint: str) -> PaidImage | None:
        with firestore_errors(f"reading paid image {fingerprint[:12]}"):
            snapshot = self._entries.document(fingerprint).get(**self._call)
        return PaidImage.from_json(snapshot.to_dict() or {}) if snapshot.exists else None

    def put(self, entry: PaidImage, *, replacing: PaidImage | None = None) -> bool:
        what = f"storing paid image {entry.fingerprint[:12]}"
        reference = self._entries.document(entry.fingerprint)
        if replacing is None:
            with firestore_errors(what):
                try:
                    reference.create(entry.to_json(), **self._call)
                except api_exceptions.AlreadyExists:
                    return False
            return True

        def swap(transaction: firestore.Transaction) -> bool:
            snapshot = reference.get(transaction=transaction, **self._call)
            if snapshot.exists and PaidImage.from_json(snapshot.to_dict() or {}) != replacing:
                return False
            transaction.set(reference, entry.to_json())
            return True

        with firestore_errors(what):
            result: bool = firestore.transactional(swap)(self._client.transaction())
        return result
