# mypy: disable-error-code="no-untyped-call"
# (google-api-core exception constructors are unannotated)
"""Infrastructure failures become ``TransientError`` quickly, and the adapters recover when it comes back.

Clients reach the emulators through a ``FaultProxy`` that resets connections or adds latency on demand;
short client timeouts and no (or short) retries keep each failure to a few seconds.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest
import requests
from google.api_core import exceptions as api_exceptions
from google.api_core.retry import Retry
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore, storage

from promptdrop.adapters.firestore_store import RUNS, FirestoreJobStore, translate_firestore_error
from promptdrop.adapters.gcs import GcsBlobStore, translate_storage_error
from promptdrop.errors import (
    NotFoundError,
    PermanentError,
    PreconditionFailedError,
    PromptdropError,
    TransientError,
)
from promptdrop.testing.cloud import LocalCloud
from promptdrop.testing.faultproxy import FaultProxy
from tests.contract.job_store_contract import T0, make_run

pytestmark = pytest.mark.integration

FAST = 2.0  # seconds a client waits for an answer in these tests
# Enough retries to ride out gRPC's reconnect backoff (about a second) after the proxy heals.
PATIENT = Retry(initial=0.2, maximum=1.0, timeout=15)
# A query answer of many documents (one message each), cut after its first few.
RUNS_IN_A_LONG_ANSWER = 200
PART_OF_THE_ANSWER = 8 * 1024  # bytes


@pytest.fixture
def storage_proxy(cloud: LocalCloud) -> Iterator[FaultProxy]:
    with FaultProxy.for_address(cloud.endpoints.storage_url) as proxy:
        yield proxy


@pytest.fixture
def firestore_proxy(cloud: LocalCloud) -> Iterator[FaultProxy]:
    with FaultProxy.for_address(cloud.endpoints.firestore_host) as proxy:
        yield proxy


def storage_client_via(proxy: FaultProxy, project: str) -> storage.Client:
    return storage.Client(
        project=project, credentials=AnonymousCredentials(), client_options={"api_endpoint": proxy.url}
    )


def firestore_client_via(
    proxy: FaultProxy, project: str, monkeypatch: pytest.MonkeyPatch
) -> firestore.Client:
    # The client reads the emulator address when it is built, and only from the environment.
    with monkeypatch.context() as patch:
        patch.setenv("FIRESTORE_EMULATOR_HOST", proxy.address)
        return firestore.Client(project=project)


def test_storage_call_through_reset_connection_is_transient(
    storage_proxy: FaultProxy, project: str, bucket_name: str
) -> None:
    """With the connection reset, a Storage read raises TransientError; once healed, it works again."""
    store = GcsBlobStore(bucket_name, storage_client_via(storage_proxy, project), retry=None, timeout=FAST)
    store.write_bytes("x.txt", b"x")
    storage_proxy.reset()
    with pytest.raises(TransientError):
        store.stat("x.txt")
    storage_proxy.pass_through()
    info = store.stat("x.txt")
    assert info is not None and info.size == 1


def test_storage_retries_exhausted_is_transient(
    storage_proxy: FaultProxy, project: str, bucket_name: str
) -> None:
    """When the library's own retries give up, the error is still TransientError."""
    short_retry = Retry(initial=0.1, maximum=0.2, timeout=1.0)
    store = GcsBlobStore(
        bucket_name, storage_client_via(storage_proxy, project), retry=short_retry, timeout=FAST
    )
    storage_proxy.reset()
    with pytest.raises(TransientError):
        store.read_bytes("anything.txt")


def test_storage_timeout_is_transient(storage_proxy: FaultProxy, project: str, bucket_name: str) -> None:
    """A server slower than the client's timeout gives TransientError."""
    store = GcsBlobStore(bucket_name, storage_client_via(storage_proxy, project), retry=None, timeout=0.5)
    storage_proxy.delay(3.0)
    with pytest.raises(TransientError):
        store.stat("slow.txt")


def test_storage_works_through_added_latency(
    storage_proxy: FaultProxy, project: str, bucket_name: str
) -> None:
    """With latency on every request the store still works, and each request went through the proxy."""
    store = GcsBlobStore(bucket_name, storage_client_via(storage_proxy, project))
    storage_proxy.delay(0.05)
    before = storage_proxy.requests_forwarded
    store.write_bytes("a.txt", b"hello")
    assert store.read_bytes("a.txt") == b"hello"
    assert storage_proxy.requests_forwarded - before >= 2


def test_write_failing_mid_stream_leaves_no_object(
    storage_proxy: FaultProxy, project: str, bucket_name: str, storage_client: storage.Client
) -> None:
    """A streamed upload cut off after its first chunk raises TransientError and never appears.

    The cancel request fails too (the connection is down), so this also checks that the abandoned writer
    does not finalize the object when garbage collection closes it after the network is back.
    """
    chunk = 256 * 1024
    store = GcsBlobStore(
        bucket_name, storage_client_via(storage_proxy, project), retry=None, timeout=FAST, chunk_size=chunk
    )
    with pytest.raises(TransientError), store.open_write("results.jsonl") as out:
        out.write(b"a" * chunk)
        storage_proxy.reset()
        out.write(b"b" * chunk)
    storage_proxy.pass_through()
    gc.collect()
    assert GcsBlobStore(bucket_name, storage_client).stat("results.jsonl") is None


def test_upload_whose_last_answer_is_lost_is_transient(
    storage_proxy: FaultProxy, project: str, bucket_name: str, storage_client: storage.Client
) -> None:
    """The answer to a streamed upload's last chunk is lost after the server finished the object: the
    library's retry sends the chunk again, the finished session answers 404, and that is TransientError (the
    session was lost; the whole write is tried again), not NotFoundError. Written again, the object is whole.
    """
    chunk = 256 * 1024
    data = b"a" * chunk + b"the last chunk\n"
    store = GcsBlobStore(
        bucket_name, storage_client_via(storage_proxy, project), timeout=FAST, chunk_size=chunk
    )
    with pytest.raises(TransientError, match="upload session"), store.open_write("results.jsonl") as out:
        out.write(data)  # the first chunk goes now; the rest when the writer closes
        storage_proxy.cut_after(0, request=b"PUT /upload/")
    assert storage_proxy.cuts == 1
    with store.open_write("results.jsonl") as out:
        out.write(data)
    assert GcsBlobStore(bucket_name, storage_client).read_bytes("results.jsonl") == data


def test_upload_into_a_missing_bucket_is_not_found(
    storage_proxy: FaultProxy, project: str, storage_client: storage.Client
) -> None:
    """A 404 from an upload whose bucket does not exist stays NotFoundError: retrying cannot fix it."""
    store = GcsBlobStore("no-such-bucket-here", storage_client_via(storage_proxy, project), timeout=FAST)
    with pytest.raises(NotFoundError), store.open_write("results.jsonl") as out:
        out.write(b"x")


def test_firestore_call_through_reset_connection_is_transient(
    firestore_proxy: FaultProxy, project: str, firestore_db: firestore.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the connection reset, Firestore reads and creates raise TransientError; once healed, they work."""
    client = firestore_client_via(firestore_proxy, project, monkeypatch)
    failing = FirestoreJobStore(client, retry=None, timeout=FAST)
    assert failing.create_run(make_run("before"))
    firestore_proxy.reset()
    with pytest.raises(TransientError):
        failing.get_run("before")
    with pytest.raises(TransientError):
        failing.create_run(make_run("during"))
    firestore_proxy.pass_through()
    recovering = FirestoreJobStore(client, retry=PATIENT, timeout=FAST)
    found = recovering.get_run("before")
    assert found is not None and found.run_id == "before"


def test_firestore_query_through_reset_connection_is_transient_or_retried(
    firestore_proxy: FaultProxy, project: str, firestore_db: firestore.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A streamed query (the jobs of a run, the active runs) through a reset connection raises TransientError
    without retries, and is retried to an answer with the default retry. (The chaos suite once saw
    google-cloud-firestore raise AttributeError when a stream broke after its first answer; a reset before
    the first answer, as here, does not take that path: the next test cuts a stream in the middle.)"""
    client = firestore_client_via(firestore_proxy, project, monkeypatch)
    assert FirestoreJobStore(client).create_run(make_run("listed"))
    firestore_proxy.reset()
    failing = FirestoreJobStore(client, retry=None, timeout=FAST)
    with pytest.raises(TransientError):
        failing.list_jobs("listed")
    with pytest.raises(TransientError):
        failing.list_runs()
    healing = threading.Timer(1.0, firestore_proxy.pass_through)
    healing.start()
    try:
        retrying = FirestoreJobStore(client, timeout=FAST)
        assert retrying.list_jobs("listed") == []
        assert [run.run_id for run in retrying.list_runs()] == ["listed"]
    finally:
        healing.cancel()


def test_firestore_timeout_is_transient(
    firestore_proxy: FaultProxy, project: str, firestore_db: firestore.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Firestore slower than the call's timeout gives TransientError."""
    store = FirestoreJobStore(
        firestore_client_via(firestore_proxy, project, monkeypatch), retry=None, timeout=0.5
    )
    # gRPC multiplexes calls and control frames on one HTTP/2 connection: delay the connection itself.
    firestore_proxy.delay(3.0, per="connection")
    with pytest.raises(TransientError):
        store.get_run("slow")


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (api_exceptions.NotFound("gone"), NotFoundError),
        (api_exceptions.PreconditionFailed("changed"), PreconditionFailedError),
        (api_exceptions.TooManyRequests("slow down"), TransientError),
        (api_exceptions.ServiceUnavailable("down"), TransientError),
        (api_exceptions.InternalServerError("oops"), TransientError),
        (api_exceptions.GatewayTimeout("late"), TransientError),
        (api_exceptions.RetryError("gave up", None), TransientError),
        (requests.ConnectionError("reset"), TransientError),
        (requests.ReadTimeout("late"), TransientError),
        (api_exceptions.Forbidden("no"), PermanentError),
        (api_exceptions.BadRequest("bad"), PermanentError),
    ],
)
def test_storage_error_translation(error: Exception, expected: type[PromptdropError]) -> None:
    """Each library error maps to its class in our taxonomy (and not to a broader one by accident)."""
    translated = translate_storage_error(error, "gs://b/o")
    assert type(translated) is expected


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (api_exceptions.Aborted("contention"), TransientError),
        (api_exceptions.ServiceUnavailable("down"), TransientError),
        (api_exceptions.DeadlineExceeded("late"), TransientError),
        (api_exceptions.ResourceExhausted("quota"), TransientError),
        (api_exceptions.NotFound("gone"), NotFoundError),
        (api_exceptions.AlreadyExists("there"), PreconditionFailedError),
        (api_exceptions.FailedPrecondition("needs an index"), PermanentError),
        (api_exceptions.PermissionDenied("no"), PermanentError),
        (api_exceptions.InvalidArgument("bad"), PermanentError),
    ],
)
def test_firestore_error_translation(error: Exception, expected: type[PromptdropError]) -> None:
    """Each Firestore error maps to its class in our taxonomy."""
    assert type(translate_firestore_error(error, "reading run r")) is expected


def test_exhausted_transaction_is_transient() -> None:
    """A transaction that ran out of attempts (ValueError caused by Aborted) is contention: transient."""
    exhausted = ValueError("Failed to commit transaction in 25 attempts.")
    exhausted.__cause__ = api_exceptions.Aborted("contention")
    assert type(translate_firestore_error(exhausted, "updating run r")) is TransientError


def test_firestore_query_stream_broken_midway_resumes_or_is_transient(
    firestore_proxy: FaultProxy, project: str, firestore_db: firestore.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A streamed query whose connection breaks after part of the answer has arrived: with the default
    retry it resumes after the last document it got and returns every run once, in order; without retries
    it raises TransientError. (google-cloud-firestore asks the stream's retry object whether to resume; given
    None or the library default it raised AttributeError here, which ``_stream_retry`` prevents.)"""
    expected = [f"run-{index:03d}" for index in range(RUNS_IN_A_LONG_ANSWER)]
    batch = firestore_db.batch()
    for index, run_id in enumerate(expected):
        run = make_run(run_id, updated_at=T0 + index)
        batch.set(firestore_db.collection(RUNS).document(run_id), run.model_dump(mode="json"))
    batch.commit()
    client = firestore_client_via(firestore_proxy, project, monkeypatch)
    assert (
        FirestoreJobStore(client).get_run("run-000") is not None
    )  # the connection is up: only the answer is cut

    firestore_proxy.cut_after(PART_OF_THE_ANSWER)
    resumed = FirestoreJobStore(client, timeout=FAST).list_runs()
    assert firestore_proxy.cuts == 1
    assert [run.run_id for run in resumed] == expected

    firestore_proxy.cut_after(PART_OF_THE_ANSWER)
    with pytest.raises(TransientError):
        FirestoreJobStore(client, retry=None, timeout=FAST).list_runs()
    assert firestore_proxy.cuts == 2
