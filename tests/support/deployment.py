"""A promptdrop deployment on the local cloud, driven through its three Cloud Functions in-process.

A ``Deployment`` has its own bucket, events topic (with a subscription that reads what the functions
publish) and in-process Gemini emulator, on a Firestore database emptied for the test. ``app(target)``
loads ``functions/main.py`` afresh under functions-framework with the deployment's environment, the way
Cloud Run starts an instance: main reads its settings at import, so every app is a new module with its
own settings, clients and lease owner.

    deployment = Deployment(...)
    files = deployment.app("on_prompt_file")
    assert files.post(eventarc.storage_notification(...)) == 200
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import functions_framework
import orjson
import pytest
from google.cloud import firestore, pubsub_v1, storage
from werkzeug.serving import make_server

from promptdrop.adapters.firestore_store import FirestoreJobStore
from promptdrop.records import Job, Run
from promptdrop.testing import eventarc
from promptdrop.testing.cloud import LocalCloud, pull, subscribe, unique_name
from promptdrop.testing.cloud_local import FUNCTIONS_SOURCE, signature_type
from promptdrop.testing.emulator import RunningEmulator, running_emulator
from promptdrop.usecases.context import Context

REPO = Path(__file__).resolve().parents[2]
# Distinctive, so a test can search every log line and output for it.
API_KEY = "pd-test-key-7f3c9e1a5b2d4c6e8a0b"
T = TypeVar("T")


class Listener:
    """A werkzeug server on 127.0.0.1 whose WSGI app is set after it binds; 503 until it is."""

    def __init__(self) -> None:
        self.app: Any = None
        self._server = make_server("127.0.0.1", 0, self._dispatch, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}/"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _dispatch(self, environ: Any, start_response: Any) -> Any:
        if self.app is None:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"not ready"]
        return self.app(environ, start_response)

    @classmethod
    @contextlib.contextmanager
    def serving(cls) -> Iterator[Listener]:
        listener = cls()
        listener._thread.start()
        try:
            yield listener
        finally:
            listener._server.shutdown()
            listener._server.server_close()


@dataclass
class FunctionApp:
    """One function instance: the functions-framework test client and the module it loaded."""

    target: str
    client: Any  # flask.testing.FlaskClient
    module: ModuleType
    wsgi: Any = None  # the flask app itself, to serve over real HTTP (Deployment.listen)

    def post(self, event: Mapping[str, Any], encoding: eventarc.Encoding = "binary") -> int:
        """Deliver a CloudEvent; the HTTP status the function answered."""
        headers, body = eventarc.encode(event, encoding)
        return int(self.client.post("/", headers=headers, data=body).status_code)

    def push(self, body: Mapping[str, Any], topic_path: str) -> int:
        """Deliver a raw Pub/Sub push body to ``/<topic path>``, as the deployment's push subscriptions do."""
        response = self.client.post(f"/{topic_path}", json=dict(body))
        return int(response.status_code)

    def call(self, body: bytes, headers: Mapping[str, str]) -> int:
        """POST a raw body (an HTTP function's request, e.g. a webhook delivery); the status it answered."""
        return int(self.client.post("/", headers=dict(headers), data=body).status_code)

    @property
    def context(self) -> Context:
        """The instance's context (built on first use and kept while warm, as in Cloud Functions)."""
        ctx: Context = self.module.context()
        return ctx


class Deployment:
    """Everything one test's deployment needs; ``close`` undoes it."""

    def __init__(
        self,
        *,
        cloud: LocalCloud,
        bucket: str,
        storage_client: storage.Client,
        firestore_client: firestore.Client,
        publisher: pubsub_v1.PublisherClient,
        subscriber: pubsub_v1.SubscriberClient,
        home: Path,
        monkeypatch: pytest.MonkeyPatch,
        **emulator_options: Any,
    ) -> None:
        self.cloud = cloud
        self.project = cloud.project
        self.bucket = bucket
        self.storage = storage_client
        self.firestore = firestore_client
        self.subscriber = subscriber
        self.home = home
        self._monkeypatch = monkeypatch
        self._stack = contextlib.ExitStack()
        self._saved_path = list(sys.path)
        self.emulator = self.start_emulator("gemini", **emulator_options)
        self.events_topic = f"projects/{self.project}/topics/{unique_name('events')}"
        publisher.create_topic(name=self.events_topic)
        self.events_subscription = subscribe(subscriber, self.events_topic)
        self.env: dict[str, str] = {
            "PROMPTDROP_HOME": str(home / "home"),
            "PROMPTDROP_BACKEND": "gemini",
            "GEMINI_API_KEY": API_KEY,
            "PROMPTDROP_GEMINI_BASE_URL": self.emulator.url,
            "PROMPTDROP_BUCKET": f"gs://{bucket}",
            "PROMPTDROP_STORE": f"firestore://{self.project}/(default)",
            "PROMPTDROP_EVENTS_TOPIC": self.events_topic,
            "PROMPTDROP_LOG_FORMAT": "json",
            "PROMPTDROP_SUBMIT_RETRY_BASE": "0.05",
            "PROMPTDROP_UPLOAD_CONCURRENCY": "4",
        }
        monkeypatch.delenv("K_SERVICE", raising=False)

    def start_emulator(self, name: str, **options: Any) -> RunningEmulator:
        """Another Gemini emulator (e.g. one that wants a different key), stopped with the deployment."""
        return self._stack.enter_context(running_emulator(self.home / name, **options))

    def app(self, target: str, **env: str | None) -> FunctionApp:
        """A fresh instance of ``target``: the deployment's environment, ``env`` over it (None unsets).

        HTTP functions (``main.HTTP_FUNCTIONS``) load with the http signature, the others as CloudEvents."""
        for name, value in {**self.env, **env}.items():
            if value is None:
                self._monkeypatch.delenv(name, raising=False)
            else:
                self._monkeypatch.setenv(name, value)
        # create_app executes the source again into a new module registered as sys.modules["main"].
        signature = signature_type(target)
        app = functions_framework.create_app(  # type: ignore[no-untyped-call]
            target, source=str(FUNCTIONS_SOURCE), signature_type=signature
        )
        instance = FunctionApp(target, app.test_client(), sys.modules["main"])
        instance.wsgi = app
        return instance

    def listen(self) -> Listener:
        """A real HTTP server on loopback (stopped with the deployment), for a function to be put behind
        later: its URL is known before the instance is built (the emulator must know where to deliver)."""
        return self._stack.enter_context(Listener.serving())

    def close(self) -> None:
        sys.modules.pop("main", None)
        sys.path[:] = self._saved_path
        self._stack.close()

    # The bucket

    def upload(self, name: str, data: bytes) -> tuple[str, int]:
        """Write an object with the google-cloud-storage client; its (generation, size)."""
        blob = self.storage.bucket(self.bucket).blob(name)
        blob.upload_from_string(data)
        blob.reload()
        return str(blob.generation), len(data)

    def notification(self, name: str, data: bytes, **options: Any) -> dict[str, Any]:
        """Upload ``data`` as ``name`` and return the bucket's notification for it."""
        generation, size = self.upload(name, data)
        return eventarc.storage_notification(self.bucket, name, generation, size, **options)

    def objects(self, prefix: str = "") -> dict[str, int]:
        """Object name -> generation, under ``prefix``."""
        return {
            blob.name: int(blob.generation)
            for blob in self.storage.list_blobs(self.bucket, prefix=prefix or None)
        }

    def read(self, name: str) -> bytes:
        return bytes(self.storage.bucket(self.bucket).blob(name).download_as_bytes())

    def read_json(self, name: str) -> Any:
        return orjson.loads(self.read(name))

    def read_jsonl(self, name: str) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.read(name).splitlines() if line.strip()]

    def images(self, run: Run) -> dict[str, int]:
        return self.objects(run.output_folder + "images/")

    # Firestore

    @property
    def store(self) -> FirestoreJobStore:
        return FirestoreJobStore(self.firestore)

    def runs(self) -> list[Run]:
        return self.store.list_runs()

    def only_run(self) -> Run:
        (run,) = self.runs()
        return run

    def jobs(self, run_id: str) -> list[Job]:
        return self.store.list_jobs(run_id)

    # The Gemini emulator and the events topic

    def batches(self, emulator: RunningEmulator | None = None) -> list[Any]:
        """Every batch job the emulator holds."""
        client = (emulator or self.emulator).client()
        return list(client.batches.list(config={"page_size": 100}))

    def events(self, count: int, *, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Run events published to the events topic (waits up to ``timeout`` for ``count`` of them)."""
        messages = pull(self.subscriber, self.events_subscription, count, timeout=timeout)
        return [orjson.loads(message.data) for message in messages]

    # Driving runs

    def image_snapshots(
        self, poller: FunctionApp, run: Run, *, ticks: int = 10
    ) -> tuple[list[dict[str, int]], Run]:
        """Deliver ticks until the run ends (at most ``ticks``), noting the run's images (name -> generation)
        after each: how a harvest cut by its time budget goes on, and whether it rewrites an image."""
        snapshots: list[dict[str, int]] = []
        current: Run | None = run
        for _ in range(ticks):
            assert poller.post(eventarc.scheduler_tick()) == 200
            snapshots.append(self.images(run))
            current = self.store.get_run(run.run_id)
            assert current is not None
            if current.state.terminal:
                break
        assert current is not None
        return snapshots, current

    def finish(self, poller: FunctionApp, run_id: str, *, ticks: int = 200) -> Run:
        """Deliver scheduler ticks until the run ends (the emulator finishes jobs on its own threads)."""
        for _ in range(ticks):
            assert poller.post(eventarc.scheduler_tick()) == 200
            run = self.store.get_run(run_id)
            assert run is not None
            if run.state.terminal:
                return run
            time.sleep(0.02)
        raise AssertionError(f"run {run_id} did not finish: {self.store.get_run(run_id)}")


@contextlib.contextmanager
def deployment_for(
    cloud: LocalCloud,
    bucket: str,
    storage_client: storage.Client,
    firestore_client: firestore.Client,
    publisher: pubsub_v1.PublisherClient,
    subscriber: pubsub_v1.SubscriberClient,
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
    **emulator_options: Any,
) -> Iterator[Deployment]:
    deployment = Deployment(
        cloud=cloud,
        bucket=bucket,
        storage_client=storage_client,
        firestore_client=firestore_client,
        publisher=publisher,
        subscriber=subscriber,
        home=home,
        monkeypatch=monkeypatch,
        **emulator_options,
    )
    try:
        yield deployment
    finally:
        deployment.close()


def race(workers: int, attempt: Callable[[int], T]) -> list[T]:
    """Run ``attempt(i)`` on ``workers`` threads released at the same instant."""
    start = threading.Barrier(workers)

    def run(index: int) -> T:
        start.wait()
        return attempt(index)

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(run, range(workers)))
