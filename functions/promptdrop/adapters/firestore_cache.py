"""The pay-once cache in Firestore: collection ``paid_images``, one document per request fingerprint.

A new entry is ``document.create()`` (refused when the document exists), so of two runs settling the same
new line at once the first one's image is kept; replacing a stale entry reads and writes it in one
transaction, conditional on it still being the stale one. Collection ``in_flight`` holds a document per
request an unfinished run is paying for now (``InFlight``), claimed the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.api_core import exceptions as api_exceptions
from google.api_core import gapic_v1
from google.api_core.retry import Retry
from google.cloud import firestore

from promptdrop.adapters.firestore_store import DEFAULT_DATABASE, firestore_errors, parse_store_url
from promptdrop.ports import InFlight, PaidImage

PAID_IMAGES = "paid_images"
IN_FLIGHT = "in_flight"
# Documents per ``get_all`` call: one batched read, far from the request size limits.
GET_ALL_BATCH = 300


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
        self._in_flight = self._client.collection(IN_FLIGHT)
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

    def get_many(self, fingerprints: Iterable[str]) -> dict[str, PaidImage]:
        docs = self._get_all(self._entries, fingerprints, "reading paid images")
        return {fingerprint: PaidImage.from_json(doc) for fingerprint, doc in docs.items()}

    def _get_all(
        self, collection: firestore.CollectionReference, ids: Iterable[str], what: str
    ) -> dict[str, dict[str, Any]]:
        """The documents of ``collection`` named ``ids`` that exist, ``GET_ALL_BATCH`` a call."""
        wanted = list(dict.fromkeys(ids))
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(wanted), GET_ALL_BATCH):
            references = [collection.document(name) for name in wanted[start : start + GET_ALL_BATCH]]
            with firestore_errors(f"{what} ({len(references)} at once)"):
                for snapshot in self._client.get_all(references, **self._call):
                    if snapshot.exists:
                        found[snapshot.id] = snapshot.to_dict() or {}
        return found

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

    def in_flight(self, fingerprint: str) -> InFlight | None:
        with firestore_errors(f"reading in-flight request {fingerprint[:12]}"):
            snapshot = self._in_flight.document(fingerprint).get(**self._call)
        return InFlight.from_json(snapshot.to_dict() or {}) if snapshot.exists else None

    def in_flight_many(self, fingerprints: Iterable[str]) -> dict[str, InFlight]:
        docs = self._get_all(self._in_flight, fingerprints, "reading in-flight requests")
        return {fingerprint: InFlight.from_json(doc) for fingerprint, doc in docs.items()}

    def claim_in_flight(self, marker: InFlight, *, replacing: InFlight | None = None) -> InFlight:
        reference = self._in_flight.document(marker.fingerprint)
        what = f"claiming in-flight request {marker.fingerprint[:12]}"
        if replacing is None:  # the common case, one call: create, else read who holds it
            with firestore_errors(what):
                try:
                    reference.create(marker.to_json(), **self._call)
                    return marker
                except api_exceptions.AlreadyExists:
                    pass
            current = self.in_flight(marker.fingerprint)
            if current is not None:
                return current
            # Released between the two calls: claimed in a transaction below.

        def claim(transaction: firestore.Transaction) -> InFlight:
            snapshot = reference.get(transaction=transaction, **self._call)
            if snapshot.exists:
                current = InFlight.from_json(snapshot.to_dict() or {})
                if current != replacing:
                    return current
            transaction.set(reference, marker.to_json())
            return marker

        with firestore_errors(what):
            result: InFlight = firestore.transactional(claim)(self._client.transaction())
        return result

    def release_in_flight(self, marker: InFlight) -> None:
        reference = self._in_flight.document(marker.fingerprint)

        def release(transaction: firestore.Transaction) -> None:
            snapshot = reference.get(transaction=transaction, **self._call)
            if snapshot.exists and InFlight.from_json(snapshot.to_dict() or {}) == marker:
                transaction.delete(reference)

        with firestore_errors(f"releasing in-flight request {marker.fingerprint[:12]}"):
            firestore.transactional(release)(self._client.transaction())
