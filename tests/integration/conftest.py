"""One local Google Cloud per test session: the Firestore and Pub/Sub emulators and fake-gcs-server.

The servers start once (a few seconds), the client variables point at them for the whole session, and each
test gets isolation cheaply: a fresh bucket name, an emptied Firestore database, unique topic names.
fake-gcs-server publishes object events under ``inbox/`` to ``STORAGE_EVENTS_TOPIC``, like a bucket's
Pub/Sub notification does in the deployment.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from google.cloud import firestore, pubsub_v1, storage

from promptdrop.testing.cloud import CloudHarnessError, LocalCloud, StorageEvents, unique_name
from tests.support.deployment import Deployment, deployment_for

STORAGE_EVENTS_TOPIC = "storage-events"
INBOX_PREFIX = "inbox/"


@pytest.fixture(scope="session")
def cloud() -> Iterator[LocalCloud]:
    """The running servers, with the client variables set for the session."""
    local = LocalCloud(storage_events=StorageEvents(STORAGE_EVENTS_TOPIC, object_prefix=INBOX_PREFIX))
    try:
        local.start()
    except CloudHarnessError as exc:
        # A missing emulator is a failure, never a skip: CI must not go green without these tests.
        pytest.fail(str(exc), pytrace=False)
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in local.endpoints.env().items():
                patch.setenv(name, value)
            yield local
    finally:
        local.stop()


@pytest.fixture(scope="session")
def project(cloud: LocalCloud) -> str:
    return cloud.project


@pytest.fixture(scope="session")
def storage_client(cloud: LocalCloud) -> storage.Client:
    return storage.Client(project=cloud.project)


@pytest.fixture
def bucket_name(storage_client: storage.Client) -> str:
    """A new, empty bucket."""
    name = unique_name("test")
    storage_client.create_bucket(name)
    return name


@pytest.fixture(scope="session")
def firestore_client(cloud: LocalCloud) -> firestore.Client:
    return firestore.Client(project=cloud.project)


@pytest.fixture
def firestore_db(cloud: LocalCloud, firestore_client: firestore.Client) -> firestore.Client:
    """The Firestore client, on a database emptied for this test."""
    cloud.reset_firestore()
    return firestore_client


@pytest.fixture(scope="session")
def publisher(cloud: LocalCloud) -> pubsub_v1.PublisherClient:
    return pubsub_v1.PublisherClient()


@pytest.fixture(scope="session")
def subscriber(cloud: LocalCloud) -> Iterator[pubsub_v1.SubscriberClient]:
    client = pubsub_v1.SubscriberClient()
    yield client
    client.close()


@pytest.fixture
def topic_path(project: str, publisher: pubsub_v1.PublisherClient) -> str:
    """A new topic."""
    path = f"projects/{project}/topics/{unique_name('topic')}"
    publisher.create_topic(name=path)
    return path


@pytest.fixture
def deployment(
    cloud: LocalCloud,
    bucket_name: str,
    storage_client: storage.Client,
    firestore_db: firestore.Client,
    publisher: pubsub_v1.PublisherClient,
    subscriber: pubsub_v1.SubscriberClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Deployment]:
    """promptdrop deployed on the emulators for one test: a fresh bucket, Firestore, topics, Gemini emulator."""
    with deployment_for(
        cloud, bucket_name, storage_client, firestore_db, publisher, subscriber, tmp_path, monkeypatch
    ) as deployed:
        yield deployed
