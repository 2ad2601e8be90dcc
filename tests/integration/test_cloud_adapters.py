"""The Google Cloud adapters against the emulators, with the real client libraries.

The port contract suites run unchanged on Cloud Storage and Firestore; the rest covers what only these
adapters have: create-only races, streaming in chunks, Firestore contention, the events topic and the
bucket's object notifications.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, TypeVar

import orjson
import pytest
from google.cloud import firestore, pubsub_v1, storage

from promptdrop.adapters.firestore_cache import FirestorePaidImageCache
from promptdrop.adapters.firestore_store import FirestoreJobStore, parse_store_url
from promptdrop.adapters.gcs import GcsBlobStore, batch_statuses, copy_call
from promptdrop.adapters.pubsub import PubsubNotifier
from promptdrop.budget import ByteBudget
from promptdrop.errors import ConfigurationError, NotFoundError, PreconditionFailedError
from promptdrop.events import parse_storage_notification
from promptdrop.ports import CopyOrder, InFlight, JobStore
from promptdrop.states import RunState
from promptdrop.testing.cloud import LocalCloud, pull, subscribe
from promptdrop.testing.counting_proxy import CountingProxy
from tests.contract.blob_store_contract import BlobStoreContract, Boom
from tests.contract.job_store_contract import JobStoreContract, make_run
from tests.contract.paid_image_cache_contract import PaidImageCacheContract, make_entry
from tests.integration.conftest import INBOX_PREFIX, STORAGE_EVENTS_TOPIC

pytestmark = pytest.mark.integration

KiB = 1024
# The smallest chunk resumable uploads allow, so a test object spans several chunks.
SMALL_CHUNK = 256 * KiB
T = TypeVar("T")


def race(workers: int, attempt: Callable[[int], T]) -> list[T]:
    """Run ``attempt(i)`` on ``workers`` threads released at the same instant."""
    start = threading.Barrier(workers)

    def run(index: int) -> T:
        start.wait()
        return attempt(index)

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(run, range(workers)))


class TestGcsBlobStore(BlobStoreContract):
    @pytest.fixture
    def store(self, bucket_name: str, storage_client: storage.Client) -> GcsBlobStore:
        return GcsBlobStore(bucket_name, storage_client)

    def test_copy_many_goes_in_one_batch_request_per_hundred_copies(
        self, store: GcsBlobStore, bucket_name: str, storage_client: storage.Client
    ) -> None:
        """The batch request itself answers each copy (200; 404 for a source gone; for another generation
        live 412, or 404 where the old generation is not kept), so copy_many makes one request per ``COPY_BATCH`` orders, not one per order."""
        store.write_bytes("images/a.png", b"png-a")
        store.write_bytes("images/b.png", b"old")
        a, old_b = store.stat("images/a.png"), store.stat("images/b.png")
        assert a is not None and old_b is not None
        store.write_bytes("images/b.png", b"new")
        orders = [
            CopyOrder("images/a.png", "run/a.png", a.generation),
            CopyOrder("images/gone.png", "run/gone.png"),
            CopyOrder("images/b.png", "run/b.png", old_b.generation),
        ]
        calls = [copy_call(bucket_name, order) for order in orders]
        statuses = batch_statuses(storage_client, calls, 30.0)
        assert statuses[:2] == [200, 404] and statuses[2] in (404, 412)
        assert store.read_bytes("run/a.png") == b"png-a" and store.stat("run/b.png") is None


class TestFirestoreJobStore(JobStoreContract):
    @pytest.fixture
    def job_store(self, firestore_db: firestore.Client) -> FirestoreJobStore:
        return FirestoreJobStore(firestore_db)

    @pytest.fixture
    def separate_stores(
        self, firestore_db: firestore.Client, project: str
    ) -> Callable[[int], list[JobStore]]:
        # Their own clients, as separate function instances have.
        return lambda count: [FirestoreJobStore(firestore.Client(project=project)) for _ in range(count)]


class TestFirestorePaidImageCache(PaidImageCacheContract):
    RACERS = 3  # the emulator serialises transactions with lock waits of ~2 s each

    @pytest.fixture
    def paid_images(self, firestore_db: firestore.Client) -> FirestorePaidImageCache:
        return FirestorePaidImageCache(firestore_db)

    @pytest.fixture
    def separate_caches(
        self, firestore_db: firestore.Client, project: str
    ) -> Callable[[int], list[FirestorePaidImageCache]]:
        # Their own clients, as separate function instances have.
        return lambda count: [
            FirestorePaidImageCache(firestore.Client(project=project)) for _ in range(count)
        ]


def test_a_runs_claims_entries_and_releases_take_a_few_firestore_calls(
    firestore_db: firestore.Client, project: str, cloud: LocalCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the pay-once cache asks of Firestore for a run of 1,000 new lines, counted as gRPC calls at a
    proxy in front of the emulator: the requests claimed in 2 batched commits of 500, the entries created in
    2 more, and the claims released in 4 batched reads and 4 batched deletes (one by one it was a create per
    claim and per entry and a transaction of 3-4 calls per release: about 5,000 calls)."""
    lines = 1000
    claims = [InFlight(f"{n:064x}", "run-a", f"line-{n}") for n in range(lines)]
    entries = [replace(make_entry("run-a"), fingerprint=m.fingerprint, key=m.key) for m in claims]
    host, _, port = cloud.endpoints.firestore_host.rpartition(":")
    proxy = CountingProxy("firestore", (host, int(port)))
    calls: list[int] = []
    try:
        monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", f"127.0.0.1:{proxy.port}")
        counted = FirestorePaidImageCache(firestore.Client(project=project))
        assert counted.claim_in_flight_many(claims) == claims
        calls.append(proxy.requests)
        assert counted.put_many(entries) == [True] * lines
        calls.append(proxy.requests - sum(calls))
        counted.release_in_flight_many(claims)
        calls.append(proxy.requests - sum(calls))
    finally:
        proxy.stop()
    assert calls == [2, 2, 4 + 4]
    direct = FirestorePaidImageCache(firestore_db)
    assert direct.in_flight_many(m.fingerprint for m in claims) == {}
    assert direct.get_many(e.fingerprint for e in entries) == {e.fingerprint: e for e in entries}


class _TakenOverAfterTheRead(FirestorePaidImageCache):
    """Another run takes over one of the claims once this cache has read them, before its batched delete."""

    def __init__(self, client: firestore.Client, other: FirestorePaidImageCache, taken: InFlight) -> None:
        super().__init__(client)
        self.other, self.taken, self.fired = other, taken, False

    def _read_claims(self, names: Any) -> list[Any]:
        snapshots = super()._read_claims(names)
        if not self.fired:
            self.fired = True
            taker = replace(self.taken, run_id="run-b")
            assert self.other.claim_in_flight(taker, replacing=self.taken) == taker
        return snapshots


def test_a_claim_taken_over_between_the_batched_read_and_delete_stays(
    firestore_db: firestore.Client, project: str
) -> None:
    """release_in_flight_many reads the claims, then deletes those that were this run's, each conditional on
    its update time: a claim another run took over in between refuses the batch, and the claims are then
    released one by one, the taken-over one kept."""
    claims = [InFlight(f"{n:064x}", "run-a", f"line-{n}") for n in range(10)]
    other = FirestorePaidImageCache(firestore.Client(project=project))
    for marker in claims:
        other.claim_in_flight(marker)
    releasing = _TakenOverAfterTheRead(firestore_db, other, claims[4])
    releasing.release_in_flight_many(claims)
    assert releasing.fired
    assert other.in_flight_many(m.fingerprint for m in claims) == {
        claims[4].fingerprint: replace(claims[4], run_id="run-b")
    }


# Cloud Storage


@pytest.fixture
def gcs(bucket_name: str, storage_client: storage.Client) -> GcsBlobStore:
    """A store on a fresh bucket that streams in the smallest chunks."""
    return GcsBlobStore(bucket_name, storage_client, chunk_size=SMALL_CHUNK)


def test_url_is_gs_bucket(gcs: GcsBlobStore, bucket_name: str) -> None:
    """The store's url is gs://BUCKET."""
    assert gcs.url == f"gs://{bucket_name}"


def test_if_absent_race_has_one_winner(bucket_name: str, storage_client: storage.Client) -> None:
    """Three writers racing a create-only write of one marker: exactly one wins, and its bytes stay."""
    stores = [GcsBlobStore(bucket_name, storage_client) for _ in range(3)]
    won = race(3, lambda i: stores[i].write_bytes("claims/marker", f"writer {i}".encode(), if_absent=True))
    assert sorted(won) == [False, False, True]
    assert stores[0].read_bytes("claims/marker") == f"writer {won.index(True)}".encode()


def test_image_metadata_round_trip(gcs: GcsBlobStore) -> None:
    """Custom metadata and content type as the harvest writes them survive stat, list and copy."""
    metadata = {"run": "cats-0123abcd", "key": "chat/é-1", "model": "gemini-3-pro-image"}
    with gcs.open_write("outputs/r/images/k.png", content_type="image/png", metadata=metadata) as out:
        out.write(b"\x89PNG" + bytes(600 * KiB))
    gcs.copy("outputs/r/images/k.png", "outputs/r/images/k-copy.png")
    infos = {info.name: info for info in gcs.list("outputs/r/images/")}
    for name in ("outputs/r/images/k.png", "outputs/r/images/k-copy.png"):
        assert (infos[name].content_type, dict(infos[name].metadata)) == ("image/png", metadata)


def test_abandoned_multi_chunk_write_never_appears(gcs: GcsBlobStore) -> None:
    """An upload that already sent chunks and then fails leaves no object, not even at garbage collection."""
    with pytest.raises(Boom), gcs.open_write("results/big.jsonl") as out:
        out.write(b"x" * (3 * SMALL_CHUNK))
        raise Boom
    gc.collect()
    assert gcs.stat("results/big.jsonl") is None


def test_streamed_read_line_by_line(gcs: GcsBlobStore) -> None:
    """Reading line by line through the chunked reader gives every line, across chunk boundaries."""
    lines = [f'{{"key": "k{n}", "pad": "{"p" * (n % 977)}"}}\n'.encode() for n in range(2000)]
    gcs.write_bytes("results.jsonl", b"".join(lines))
    with gcs.open_read("results.jsonl") as handle:
        assert list(handle) == lines


def test_read_ahead_takes_only_spare_budget_and_gives_it_back(
    bucket_name: str, storage_client: storage.Client
) -> None:
    """With the process's byte budget, chunks are fetched ahead only with spare bytes of it (at most half), the
    read is whole either way, and every byte comes back when the reader is closed, read to the end or not."""
    budget = ByteBudget(3 * SMALL_CHUNK)  # room for one chunk ahead, not two
    store = GcsBlobStore(bucket_name, storage_client, chunk_size=SMALL_CHUNK, read_ahead_budget=budget)
    data = bytes(range(256)) * (10 * SMALL_CHUNK // 256)
    store.write_bytes("results.jsonl", data)
    spare_seen: list[int] = []
    with store.open_read("results.jsonl") as handle:
        parts = []
        while part := handle.read(SMALL_CHUNK // 2):
            spare_seen.append(budget.spare)
            parts.append(part)
    assert b"".join(parts) == data
    assert max(spare_seen) == SMALL_CHUNK  # one chunk ahead: the budget had room for no more
    assert budget.peak <= budget.limit
    assert (budget.used, budget.spare) == (0, 0)
    with store.open_read("results.jsonl") as handle:
        handle.read(10)  # closed with a chunk still ahead
    assert (budget.used, budget.spare) == (0, 0)
    budget.acquire(budget.limit)  # the budget spent by others: nothing is fetched ahead, the read still whole
    with store.open_read("results.jsonl") as handle:
        assert handle.read() == data
        assert budget.spare == 0
    budget.release(budget.limit)


def test_read_resumes_at_offset_of_a_line(gcs: GcsBlobStore) -> None:
    """open_read(start=offset) resumes at a checkpointed byte offset, as the harvest does."""
    lines = [f"line {n}\n".encode() for n in range(100_000)]
    gcs.write_bytes("results.jsonl", b"".join(lines))
    offset = sum(len(line) for line in lines[:70_000])
    with gcs.open_read("results.jsonl", start=offset) as handle:
        assert handle.readline() == b"line 70000\n"
        assert handle.read().count(b"\n") == 29_999


def test_write_to_missing_bucket_is_not_found(storage_client: storage.Client) -> None:
    """A bucket that does not exist is a NotFoundError (permanent), not something to retry."""
    with pytest.raises(NotFoundError):
        GcsBlobStore("no-such-bucket-here", storage_client).write_bytes("x", b"x")


# Firestore


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("firestore", (None, "(default)")),
        ("firestore://", (None, "(default)")),
        ("firestore://my-project", ("my-project", "(default)")),
        ("firestore://my-project/promptdrop", ("my-project", "promptdrop")),
    ],
)
def test_parse_store_url(url: str, expected: tuple[str | None, str]) -> None:
    """PROMPTDROP_STORE spellings give the project and database."""
    assert parse_store_url(url) == expected


@pytest.mark.parametrize("url", ["sqlite:///x.db", "firestore://p/d/extra", "firestor://p"])
def test_parse_store_url_refuses_other_stores(url: str) -> None:
    """Anything else is a configuration error."""
    with pytest.raises(ConfigurationError):
        parse_store_url(url)


def test_store_from_url_uses_that_project(firestore_db: firestore.Client, project: str) -> None:
    """A store built from firestore://PROJECT/(default) reads what another client wrote."""
    assert FirestoreJobStore(firestore_db).create_run(make_run("from-url"))
    store = FirestoreJobStore.from_url(f"firestore://{project}/(default)")
    found = store.get_run("from-url")
    assert found is not None and found.run_id == "from-url"


def separate_stores(count: int, project: str) -> list[FirestoreJobStore]:
    """Stores with their own clients, as separate function instances would have."""
    return [FirestoreJobStore(firestore.Client(project=project)) for _ in range(count)]


def test_racing_creates_have_one_winner(firestore_db: firestore.Client, project: str) -> None:
    """Three instances creating the same run (a redelivered event): exactly one create succeeds."""
    stores = separate_stores(3, project)
    created = race(3, lambda i: stores[i].create_run(make_run("dup", updated_at=float(i))))
    assert sorted(created) == [False, False, True]
    stored = stores[0].get_run("dup")
    assert stored is not None and stored.updated_at == float(created.index(True))


def test_racing_leases_have_one_winner(firestore_db: firestore.Client, project: str) -> None:
    """Three pollers taking the lease of one run at once: exactly one holds it afterwards."""
    stores = separate_stores(3, project)
    assert stores[0].create_run(make_run("contended"))
    taken = race(3, lambda i: stores[i].acquire_lease("contended", f"poller-{i}", 300, 1000.0))
    assert sorted(taken) == [False, False, True]
    stored = stores[0].get_run("contended")
    assert stored is not None and stored.lease.owner == f"poller-{taken.index(True)}"


def test_racing_conditional_updates_apply_once(firestore_db: firestore.Client, project: str) -> None:
    """Two workers moving a run out of RECEIVED at once: one succeeds, the other's precondition fails."""
    stores = separate_stores(2, project)
    assert stores[0].create_run(make_run("transition"))

    results = race(2, lambda i: _submit(stores[i], i))
    winners = [result for result in results if not isinstance(result, PreconditionFailedError)]
    assert len(winners) == 1
    assert stores[0].get_run("transition") == winners[0]


def _submit(store: FirestoreJobStore, worker: int) -> Any:
    try:
        return store.update_run(
            "transition",
            {"state": RunState.SUBMITTED.value, "reason": f"worker {worker}"},
            if_states=[RunState.RECEIVED],
        )
    except PreconditionFailedError as exc:
        return exc


# Pub/Sub


def test_notifier_publishes_event_with_attributes(
    topic_path: str, publisher: pubsub_v1.PublisherClient, subscriber: pubsub_v1.SubscriberClient
) -> None:
    """A run event arrives on the topic as JSON, with run_id and state as attributes."""
    subscription = subscribe(subscriber, topic_path)
    event = {"schema_version": 1, "run_id": "cats-0123abcd", "state": "PARTIAL", "counts": {"lines": 3}}
    PubsubNotifier(topic_path, publisher).publish(event)
    (message,) = pull(subscriber, subscription, 1)
    assert orjson.loads(message.data) == event
    assert dict(message.attributes) == {"run_id": "cats-0123abcd", "state": "PARTIAL"}


def test_notifier_on_missing_topic_is_a_configuration_error(
    project: str, publisher: pubsub_v1.PublisherClient
) -> None:
    """Publishing to a topic that does not exist fails as configuration, not as something to retry."""
    notifier = PubsubNotifier(f"projects/{project}/topics/never-created", publisher, timeout=20)
    with pytest.raises(ConfigurationError):
        notifier.publish({"run_id": "r", "state": "FAILED"})


@pytest.mark.parametrize("path", ["events", "projects/p/events", "projects/p/topics/t/extra"])
def test_notifier_refuses_a_malformed_topic_path(path: str, publisher: pubsub_v1.PublisherClient) -> None:
    """The topic must be a full projects/P/topics/T path."""
    with pytest.raises(ConfigurationError):
        PubsubNotifier(path, publisher)


def test_inbox_upload_notification_parses_to_the_object(
    project: str, gcs: GcsBlobStore, bucket_name: str, subscriber: pubsub_v1.SubscriberClient
) -> None:
    """An upload into inbox/ reaches the events topic as a notification that parses to that object."""
    subscription = subscribe(subscriber, f"projects/{project}/topics/{STORAGE_EVENTS_TOPIC}")
    gcs.write_bytes(f"{INBOX_PREFIX}cats.jsonl", b'{"prompt": "a cat"}\n')
    info = gcs.stat(f"{INBOX_PREFIX}cats.jsonl")
    # The topic is shared by the session: keep only this test's bucket.
    messages = [m for m in pull(subscriber, subscription, 1) if m.attributes.get("bucketId") == bucket_name]
    assert len(messages) == 1
    event = parse_storage_notification(dict(messages[0].attributes), messages[0].data)
    assert info is not None
    assert (event.bucket, event.name, event.generation, event.size, event.event_type) == (
        bucket_name,
        "inbox/cats.jsonl",
        info.generation,
        info.size,
        "OBJECT_FINALIZE",
    )
