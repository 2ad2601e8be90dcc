"""``scripts/cloud-local``: the Cloud deployment on this machine, from upload to images.

Starts the Firestore and Pub/Sub emulators and fake-gcs-server (publishing the inbox's object events to a
Pub/Sub topic, as the bucket's notification does), the bundled Gemini emulator, the five functions under
functions-framework (one process each, in cloud mode), a bridge that delivers the notifications, the
requests and the now lane's chunks to them as Eventarc-shaped CloudEvents, and a scheduler tick. Webhooks are
on: the emulator POSTs each batch's end to ``on_batch_webhook`` (signed with a secret made for this start),
and the tick is the net. Prints what a user needs to upload,
then runs until Ctrl-C or SIGTERM, and stops everything it started. ``--smoke`` uploads
``examples/catalogue.jsonl`` itself, waits for the run's summary, prints it and exits.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from promptdrop.emulator.hooks import new_secret
from promptdrop.emulator.options import WEBHOOK_SECRET_ENV
from promptdrop.testing import eventarc
from promptdrop.testing.bridge import PubsubBridge, Ticker
from promptdrop.testing.cloud import (
    CloudEndpoints,
    CloudHarnessError,
    LocalCloud,
    StorageEvents,
    create_topic,
    free_port,
)

# A source checkout: functions/main.py is what Cloud Functions deploys; it is not part of the package.
REPO = Path(__file__).resolve().parents[3]
FUNCTIONS_SOURCE = REPO / "functions" / "main.py"
EXAMPLE = REPO / "examples" / "catalogue.jsonl"
# The emulator's steering markers are kept out of the example (a real key must not pay for them).
EMULATOR_EXTRAS = REPO / "examples" / "emulator-extras.jsonl"
# The smoke upload's one now-lane line: it goes through the now topic and on_now_chunk.
URGENT_LINE = b'{"key": "urgent-example", "prompt": "A poster needed in the next minute", "lane": "now"}\n'
CLOUDEVENT_TARGETS = ("on_prompt_file", "on_prompt_message", "poll_jobs", "on_now_chunk")
TARGETS = (*CLOUDEVENT_TARGETS, "on_batch_webhook")
HTTP_TARGETS = frozenset({"on_batch_webhook"})  # functions/main.py's HTTP_FUNCTIONS
# Topic names as infra/ names them with the default name_prefix.
INBOX_TOPIC, REQUESTS_TOPIC, EVENTS_TOPIC = "promptdrop-inbox", "promptdrop-requests", "promptdrop-events"
NOW_TOPIC = "promptdrop-now"
# Topics the harness creates (the inbox topic is made by the storage events), and the push paths of infra/:
# (topic, the captured event shape it is delivered in, the function).
CREATED_TOPICS = (REQUESTS_TOPIC, EVENTS_TOPIC, NOW_TOPIC)
PUSHED = (
    (INBOX_TOPIC, "eventarc-storage-notification", "on_prompt_file"),
    (REQUESTS_TOPIC, "eventarc-request-inline", "on_prompt_message"),
    (NOW_TOPIC, "eventarc-request-inline", "on_now_chunk"),
)
INBOX_PREFIX = "inbox/"
# The bundled emulator accepts any key unless told otherwise; this one is not a secret.
LOCAL_KEY = "promptdrop-local-emulator"


@dataclass
class _Process:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path


class Processes:
    """Child processes, each in its own session, so stopping one stops everything it forked."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._started: list[_Process] = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO,
                start_new_session=True,
            )
        self._started.append(_Process(name, process, log_path))

    def wait_listening(self, name: str, port: int, deadline: float) -> None:
        started = next(p for p in self._started if p.name == name)
        while time.monotonic() < deadline:
            if started.process.poll() is not None:
                raise CloudHarnessError(
                    f"{name} exited with code {started.process.returncode}; see {started.log_path}"
                )
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
            time.sleep(0.05)
        raise CloudHarnessError(f"{name} was not listening on port {port} in time; see {started.log_path}")

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM every process group, then SIGKILL what is left after ``grace`` seconds."""
        for started in self._started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(started.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self._started:
            started = self._started.pop()
            with contextlib.suppress(subprocess.TimeoutExpired):
                started.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            # Workers a server forked may outlive it: the group goes either way.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(started.process.pid, signal.SIGKILL)
            started.process.wait()


@dataclass(frozen=True)
class Stack:
    """Where the running local cloud is, and what a user needs to reach it."""

    endpoints: CloudEndpoints
    bucket: str
    function_urls: dict[str, str]
    gemini_url: str
    webhook_secret: str = field(default="", repr=False)

    def topic(self, name: str) -> str:
        return f"projects/{self.endpoints.project}/topics/{name}"

    def user_env(self) -> dict[str, str]:
        """The variables a user (the google-cloud clients, the promptdrop CLI) needs."""
        return {
            **self.endpoints.env(),
            "PROMPTDROP_BUCKET": f"gs://{self.bucket}",
            "PROMPTDROP_STORE": f"firestore://{self.endpoints.project}/(default)",
        }

    def function_env(self, target: str) -> dict[str, str]:
        return {
            **os.environ,
            **self.user_env(),
            "K_SERVICE": target.replace("_", "-"),  # as Cloud Run sets it: cloud mode, JSON logs
            "PROMPTDROP_BACKEND": "gemini",
            "GEMINI_API_KEY": LOCAL_KEY,
            "PROMPTDROP_GEMINI_BASE_URL": self.gemini_url,
            "PROMPTDROP_EVENTS_TOPIC": self.topic(EVENTS_TOPIC),
            "PROMPTDROP_NOW_TOPIC": self.topic(NOW_TOPIC),
            "PROMPTDROP_INBOX_PREFIX": INBOX_PREFIX,
            "PROMPTDROP_HARVEST_TIME_BUDGET": "60",
            "PROMPTDROP_SUBMIT_RETRY_BASE": "2",
            # Webhooks on only where an emulator delivers them (the chaos suite's stack stays polling-only).
            "PROMPTDROP_WEBHOOKS": "on" if self.webhook_secret else "off",
            "PROMPTDROP_WEBHOOK_SECRET": self.webhook_secret,
            "WORKERS": "1",
            "THREADS": "8",
        }


def signature_type(target: str) -> str:
    """How functions-framework loads ``target``: an HTTP entry point, or a CloudEvent one."""
    return "http" if target in HTTP_TARGETS else "cloudevent"


def function_argv(target: str, port: int) -> list[str]:
    """The command line that serves one function of functions/main.py on 127.0.0.1:``port``, as its own
    process under functions-framework (what Cloud Functions runs)."""
    return [
        sys.executable,
        "-m",
        "functions_framework",
        "--source",
        str(FUNCTIONS_SOURCE),
        "--target",
        target,
        "--signature-type",
        signature_type(target),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


@contextlib.contextmanager
def local_cloud(
    project: str,
    bucket: str,
    state_dir: Path,
    tick_seconds: float,
    startup_timeout: float = 90.0,
    *,
    image_scale: float = 0.25,
    functions_reach: Callable[[CloudEndpoints], CloudEndpoints] | None = None,
    storage_root: Path | None = None,
) -> Iterator[Stack]:
    """Start everything; on leaving the block (or a failure while starting) stop all of it.

    ``functions_reach``: the endpoints the functions are given instead of the servers' own (e.g. through
    counting proxies, scripts/bench --only cloud-scale); the harness's own clients use the servers'.
    ``storage_root``: where fake-gcs-server keeps its objects as files (``LocalCloud``), else in memory."""
    from google.cloud import pubsub_v1, storage

    log_dir = state_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    cloud = LocalCloud(
        project,
        log_dir=log_dir,
        storage_events=StorageEvents(INBOX_TOPIC, INBOX_PREFIX),
        storage_root=storage_root,
    )
    processes = Processes(log_dir)
    threads: list[PubsubBridge | Ticker] = []
    try:
        endpoints = cloud.start()
        os.environ.update(endpoints.env())  # this process's own clients (bridge, smoke upload)
        deadline = time.monotonic() + startup_timeout
        gemini_port = free_port()
        ports = {target: free_port() for target in TARGETS}
        webhook_secret = new_secret()
        processes.start(
            "gemini-emulator",
            [
                sys.executable,
                "-m",
                "promptdrop.emulator",
                "--port",
                str(gemini_port),
                "--data-dir",
                str(state_dir / "gemini-emulator"),
                "--pending-seconds",
                "0.5",
                "--running-seconds",
                "1",
                "--image-scale",
                str(image_scale),
                "--webhook-url",
                f"http://127.0.0.1:{ports['on_batch_webhook']}/",
            ],
            {**os.environ, WEBHOOK_SECRET_ENV: webhook_secret},
        )
        stack = Stack(
            endpoints=endpoints,
            bucket=bucket,
            function_urls={target: f"http://127.0.0.1:{port}/" for target, port in ports.items()},
            gemini_url=f"http://127.0.0.1:{gemini_port}",
            webhook_secret=webhook_secret,
        )
        storage.Client(project=project).create_bucket(bucket)
        for topic in CREATED_TOPICS:
            create_topic(endpoints.pubsub_host, project, topic)
        reached = replace(stack, endpoints=functions_reach(endpoints)) if functions_reach else stack
        for target, port in ports.items():
            processes.start(target, function_argv(target, port), reached.function_env(target))
        processes.wait_listening("gemini-emulator", gemini_port, deadline)
        for target, port in ports.items():
            processes.wait_listening(target, port, deadline)

        subscriber = pubsub_v1.SubscriberClient()
        for name, template, target in PUSHED:
            topic = stack.topic(name)
            subscription = f"projects/{project}/subscriptions/{name}-bridge"
            subscriber.create_subscription(name=subscription, topic=topic, ack_deadline_seconds=600)
            url = stack.function_urls[target]
            threads.append(
                PubsubBridge(
                    subscriber, subscription, topic, _poster(url), template=template, name=name
                ).start()
            )
        threads.append(Ticker(_poster(stack.function_urls["poll_jobs"]), tick_seconds).start())
        yield stack
    finally:
        for thread in threads:
            thread.stop()
        processes.stop()
        cloud.stop()


def _poster(url: str) -> Callable[[Any], int]:
    return lambda event: eventarc.post(url, event)


def _print_ready(stack: Stack, log_dir: Path) -> None:
    print("promptdrop local cloud is up. In another shell:", flush=False)
    for name, value in stack.user_env().items():
        print(f"export {name}={shlex.quote(value)}")
    print(
        f"# bucket {stack.bucket}: prompt files uploaded under {INBOX_PREFIX} run; outputs appear under outputs/\n"
        f"# requests topic {stack.topic(REQUESTS_TOPIC)}; run events on {stack.topic(EVENTS_TOPIC)}\n"
        "# upload with the google-cloud-storage client, e.g.\n"
        f"#   python -c \"from google.cloud import storage; storage.Client().bucket('{stack.bucket}')"
        f".blob('inbox/catalogue.jsonl').upload_from_filename('examples/catalogue.jsonl')\"\n"
        f"# logs in {log_dir}; Ctrl-C stops everything",
        flush=True,
    )


def _find_summary(bucket: Any) -> str | None:
    names = (blob.name for blob in bucket.client.list_blobs(bucket, prefix="outputs/"))
    return next((name for name in names if name.endswith("/summary.json")), None)


def smoke(stack: Stack, timeout: float) -> int:
    """Upload the example, wait for its summary, print it; 0 when images, manifest and summary agree."""
    from google.cloud import storage

    bucket = storage.Client(project=stack.endpoints.project).bucket(stack.bucket)
    bucket.blob(INBOX_PREFIX + EXAMPLE.name).upload_from_string(
        EXAMPLE.read_bytes() + EMULATOR_EXTRAS.read_bytes() + URGENT_LINE, content_type="application/jsonl"
    )
    print(f"uploaded gs://{stack.bucket}/{INBOX_PREFIX}{EXAMPLE.name}; waiting for its summary", flush=True)
    deadline = time.monotonic() + timeout
    while (summary_name := _find_summary(bucket)) is None:
        if time.monotonic() > deadline:
            print(f"no summary.json after {timeout:.0f} s", file=sys.stderr)
            return 1
        time.sleep(0.5)
    folder = summary_name.removesuffix("summary.json")
    summary = orjson.loads(bucket.blob(summary_name).download_as_bytes())
    manifest = bucket.blob(folder + "manifest.jsonl").download_as_bytes().splitlines()
    images = [b.name for b in bucket.client.list_blobs(bucket, prefix=folder + "images/")]
    print(f"gs://{stack.bucket}/{summary_name}:")
    print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    print(f"images: {len(images)} under gs://{stack.bucket}/{folder}images/")
    print(f"manifest: {len(manifest)} lines in gs://{stack.bucket}/{folder}manifest.jsonl", flush=True)
    counts = summary["counts"]
    complete = len(images) == counts["succeeded"] > 0 and len(manifest) == counts["lines"]
    return 0 if summary["state"] in {"SUCCEEDED", "PARTIAL"} and complete else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cloud-local",
        description="Run promptdrop's Cloud deployment on this machine: the emulators, the four functions, "
        "Eventarc's delivery and the scheduler tick. Upload into the bucket's inbox to start a run.",
    )
    parser.add_argument("--project", default="test-project")
    parser.add_argument("--bucket", default="promptdrop-local")
    parser.add_argument("--state-dir", type=Path, help="logs and emulator data (default: a new temp dir)")
    parser.add_argument("--tick", type=float, default=3.0, help="seconds between poller ticks (default 3)")
    parser.add_argument(
        "--smoke", action="store_true", help="upload examples/catalogue.jsonl, print its summary, exit"
    )
    parser.add_argument(
        "--timeout", type=float, default=180.0, help="--smoke: seconds to wait for the summary"
    )
    args = parser.parse_args(argv)
    state_dir = args.state_dir or Path(tempfile.mkdtemp(prefix="promptdrop-cloud-local-"))

    # SIGTERM ends the run like Ctrl-C does, so everything is stopped either way.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with local_cloud(args.project, args.bucket, state_dir, args.tick) as stack:
            if args.smoke:
                return smoke(stack, args.timeout)
            _print_ready(stack, state_dir / "logs")
            while True:
                signal.pause()
    except CloudHarnessError as exc:
        print(f"cloud-local: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cloud-local: stopped", file=sys.stderr)
        return 0


if __name__ == "__main__":
    sys.exit(main())
