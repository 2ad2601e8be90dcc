"""The pay-once cache in Firestore: collection ``paid_images``, one document per request fingerprint.

A new entry is ``document.create()`` (refused when the document exists), so of two runs settling the same
new line at once the first one's image is kept; replacing a stale entry reads and writes it in one
transaction, conditional on it still being the stale one. Many entries are created in batched writes of up
to ``WRITE_BATCH`` creates, and many claims released by a batched read (``get_all``) and a batched delete of
those still this run's, each delete conditional on the document's update time at the read. Collection ``in_flight`` holds a document per
request an unfinished run is paying for now (``InFlight``), claimed the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
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
# Writes per batched commit: Firestore's limit.
WRITE_BATCH = 500
# A batched commit is atomic: one write refused refuses the batch. Such a batch (a document created or
# changed by someone else since) is committed again without the documents found taken, then one by one.
_BATCH_REFUSED = (api_exceptions.AlreadyExists, api_exceptions.FailedPrecondition)


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

    def put_many(self, entries: Sequence[PaidImage]) -> list[bool]:
        docs: dict[str, dict[str, Any]] = {}
        for entry in entries:  # one create per fingerprint: a repeat finds the first one's entry
            docs.setdefault(entry.fingerprint, entry.to_json())
        created: set[str] = set()
        names = list(docs)
        for start in range(0, len(names), WRITE_BATCH):
            batch = {name: docs[name] for name in names[start : start + WRITE_BATCH]}
            created |= self._create_all(self._entries, batch, "storing paid images")
        answers: list[bool] = []
        for entry in entries:  # True for the first entry of a fingerprint created, once
            answers.append(entry.fingerprint in created)
            created.discard(entry.fingerprint)
        return answers

    def _create_all(
        self, collection: firestore.CollectionReference, docs: Mapping[str, dict[str, Any]], what: str
    ) -> set[str]:
        """Create the documents of ``docs`` (at most ``WRITE_BATCH``) that do not exist; returns the names
        created. One commit; when it is refused (a document exists: an earlier try's, another run's), the
        ones that exist are read and the others committed again, then one by one if that races too."""
        pending = dict(docs)
        for _ in range(2):
            if not pending:
                return set()
            batch = self._client.batch()
            for name, data in pending.items():
                batch.create(collection.document(name), data)
            with firestore_errors(f"{what} ({len(pending)} at once)"):
                try:
                    batch.commit(**self._call)
                    return set(pending)
                except _BATCH_REFUSED:
                    pass
            existing = self._get_all(collection, pending, what)
            pending = {name: data for name, data in pending.items() if name not in existing}
        created: set[str] = set()
        for name, data in pending.items():
            with firestore_errors(f"{what} ({name[:12]})"):
                try:
                    collection.document(name).create(data, **self._call)
                    created.add(name)
                except api_exceptions.AlreadyExists:
                    pass
        return created

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

    def claim_in_flight_many(self, markers: Sequence[InFlight]) -> list[InFlight]:
        first: dict[str, InFlight] = {}
        for marker in markers:
            first.setdefault(marker.fingerprint, marker)
        names = list(first)
        created: set[str] = set()
        for start in range(0, len(names), WRITE_BATCH):
            batch = {name: first[name].to_json() for name in names[start : start + WRITE_BATCH]}
            created |= self._create_all(self._in_flight, batch, "claiming in-flight requests")
        holders = {name: first[name] for name in created}
        holders |= self.in_flight_many(name for name in names if name not in created)
        for name in names:
            if name not in holders:  # released between the create and the read: claimed on its own
                holders[name] = self.claim_in_flight(first[name])
        return [holders[marker.fingerprint] for marker in markers]

    def release_in_flight(self, marker: InFlight) -> None:
        reference = self._in_flight.document(marker.fingerprint)

        def release(transaction: firestore.Transaction) -> None:
            snapshot = reference.get(transaction=transaction, **self._call)
            if snapshot.exists and InFlight.from_json(snapshot.to_dict() or {}) == marker:
                transaction.delete(reference)

        with firestore_errors(f"releasing in-flight request {marker.fingerprint[:12]}"):
            firestore.transactional(release)(self._client.transaction())

    def release_in_flight_many(self, markers: Sequence[InFlight]) -> None:
        wanted = set(markers)
        names = list(dict.fromkeys(marker.fingerprint for marker in markers))
        for start in range(0, len(names), GET_ALL_BATCH):
            batch_names = names[start : start + GET_ALL_BATCH]
            what = f"releasing in-flight requests ({len(batch_names)} at once)"
            # Still this run's when read; deleted only if unchanged since (a claim taken over stays).
            mine = [
                snapshot
                for snapshot in self._read_claims(batch_names)
                if snapshot.exists and InFlight.from_json(snapshot.to_dict() or {}) in wanted
            ]
            if not mine:
                continue
            batch = self._client.batch()
            for snapshot in mine:
                option = self._client.write_option(last_update_time=snapshot.update_time)
                batch.delete(snapshot.reference, option=option)
            with firestore_errors(what):
                try:
                    batch.commit(**self._call)
                    continue
                except _BATCH_REFUSED:
                    pass
            # One of them changed since the read: each on its own, read and deleted in a transaction.
            for snapshot in mine:
                self.release_in_flight(InFlight.from_json(snapshot.to_dict() or {}))

    def _read_claims(self, names: Sequence[str]) -> list[firestore.DocumentSnapshot[Any]]:
        """The snapshots of the claims named (one ``get_all``), with their update times."""
        references = [self._in_flight.document(name) for name in names]
        with firestore_errors(f"reading in-flight requests ({len(references)} at once)"):
            return list(self._client.get_all(references, **self._call))
