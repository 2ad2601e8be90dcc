"""Benchmark sections of issue 24 (``scripts/bench --only runs-page,overhead``), each self-contained.

runs-page: one ``gallery.list_run`` (the read-modify-write of ``outputs/runs.jsonl`` on its generation, the
    render of the paged ``outputs/index.html`` and the writes of the pages) with 600 runs in the index
    object, on the local folder bucket and on fake-gcs-server (direct, and behind 50 ms per request);
    the median of several settles, each in the same child process after a warm-up.

overhead: the deployment's own cost. A run of 1,000 lines goes through the Cloud path in-process (the
    functions under functions-framework, as tests/support/deployment.py loads them) against the Firestore
    and Pub/Sub emulators, fake-gcs-server and the Gemini emulator, once with webhooks on (the emulator
    pushes signed batch events to ``on_batch_webhook`` on a loopback HTTP server; no tick) and once
    polling (a scheduler tick every 0.5 s). Every Cloud Storage request is counted at the HTTP layer
    (``requests.Session.send`` to the storage endpoint, classed A / B / free as Cloud Storage bills them),
    every Firestore RPC at the GAPIC layer with the documents it read, wrote or deleted, every Pub/Sub
    publish with its billable bytes; each function invocation is timed. ``OVERHEAD_PRICES`` turns them
    into dollars (sources in docs/PERFORMANCE.md). The benchmark's own reads (waiting for the run's end)
    are not counted.
"""

from __future__ import annotations

import contextlib
import json
import math
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import bench
from bench import BUCKET, LATENCY, MODEL, REPO, FakeGcs, local_env, log, peak_rss_mb, scratch

RUNS_PAGE_RUNS = 600


def run_worker(name: str, args: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
    """One worker of this module in a fresh process (never the caller's PROMPTDROP_* or API key)."""
    return bench.run_worker(name, args, env, script=__file__)


# List prices (USD), Tier-1 / US regions, without free tiers; docs/PERFORMANCE.md cites each source.
OVERHEAD_PRICES: dict[str, float] = {
    "gcs_class_a": 0.005 / 1000,  # Standard storage, per operation
    "gcs_class_b": 0.0004 / 1000,
    "firestore_read": 0.06 / 100_000,  # multi-region (nam5/eur3); a regional database is half
    "firestore_write": 0.18 / 100_000,
    "firestore_delete": 0.02 / 100_000,
    "pubsub_byte": 40.0 / 2**40,  # throughput, publish and each delivery; at least 1000 bytes per request
    "vcpu_second": 0.000024,  # Cloud Run (functions 2nd gen), request-based billing, Tier 1
    "gib_second": 0.0000025,
    "invocation": 0.40 / 1_000_000,
}
# infra/variables.tf: var.functions sizing (vCPU, GiB) per entry point.
FUNCTION_SIZE = {
    "on_prompt_file": (1.0, 1.0),
    "poll_jobs": (1.0, 2.0),
    "on_batch_webhook": (1.0, 2.0),
}
# The image bill per 1,000 images, from the model table (batch price = half the interactive price).
IMAGE_BILL = {
    "1K on the cheapest priced model": None,  # filled from promptdrop.models at run time
    "2K on gemini-3-pro-image": None,
}


# --- runs page ---------------------------------------------------------------------------------------------


def _page_run(number: int) -> Any:
    from promptdrop.records import Cost, Counts, Run, RunSource
    from promptdrop.states import RunState

    run_id = f"run-{number:04d}-abcdef01"
    created = 1_790_000_000.0 + number * 60
    return Run(
        run_id=run_id,
        claim_key=run_id,
        state=RunState.SUCCEEDED if number % 5 else RunState.PARTIAL,
        source=RunSource(kind="file", name=run_id, object=f"inbox/{run_id}.jsonl"),
        input_object=f"outputs/{run_id}/input.jsonl",
        output_folder=f"outputs/{run_id}/",
        model=MODEL,
        created_at=created,
        updated_at=created + 30,
        finished_at=created + 30,
        counts=Counts(lines=10, valid=10, succeeded=8, failed=2),
        cost=Cost(batch=0.536 + number / 1000, interactive=1.072, cached=number % 3, saved_by_cache=0.067),
    )


def worker_runs_page(args: dict[str, Any]) -> dict[str, Any]:
    """599 rows in the index object, then the 600th run settles ``repeats`` times (its row replaced)."""
    from promptdrop import runs_page
    from promptdrop.settings import Settings
    from promptdrop.usecases import gallery
    from promptdrop.wiring import build_context

    ctx = build_context(Settings.from_env())
    count = int(args["runs"])
    data = b""
    for number in range(count - 1):
        data, _ = runs_page.upsert(data, runs_page.row(_page_run(number)))
    ctx.blobs.write_bytes(ctx.settings.output_prefix + runs_page.INDEX_OBJECT, data)
    last = _page_run(count - 1)
    gallery.list_run(ctx, last)  # warm-up: imports, connections, the 600th row put in
    seconds = []
    for _ in range(int(args["repeats"])):
        began = time.perf_counter()
        gallery.list_run(ctx, last)
        seconds.append(time.perf_counter() - began)
    rows = runs_page.parse_index(ctx.blobs.read_bytes(ctx.settings.output_prefix + runs_page.INDEX_OBJECT))
    size = len(ctx.blobs.read_bytes(ctx.settings.output_prefix + runs_page.FIRST_PAGE))
    return {"seconds": seconds, "rows": len(rows), "first_page_bytes": size, "index_bytes": len(data)}


def bench_runs_page(work: Path, repeats: int) -> dict[str, Any]:
    """The settle's page work with 600 runs: local folder, fake-gcs-server direct and behind 50 ms."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    args = {"runs": RUNS_PAGE_RUNS, "repeats": repeats}
    found: dict[str, Any] = {}
    with scratch(work, "runs-page-home") as home:
        home.mkdir(parents=True)
        found["local folder"] = run_worker("runs_page", args, local_env(home))
    server = FakeGcs(work / "fake-gcs-runs")
    try:
        server.wait_ready()
        client = storage.Client(
            project="bench", credentials=AnonymousCredentials(), client_options={"api_endpoint": server.url}
        )
        for delay, label in ((0.0, "fake-gcs-server"), (LATENCY, "fake-gcs-server, 50 ms per request")):
            name = f"{BUCKET}-runs-{int(delay * 1000)}"
            client.create_bucket(name)
            server.proxy.delay(delay) if delay else server.proxy.pass_through()
            with scratch(work, "runs-page-home") as home:
                home.mkdir(parents=True)
                env = {
                    **local_env(home),
                    "STORAGE_EMULATOR_HOST": server.proxy.url,
                    "GOOGLE_CLOUD_PROJECT": "bench",
                    "PROMPTDROP_BUCKET": f"gs://{name}",
                }
                found[label] = run_worker("runs_page", args, env)
    finally:
        server.stop()
    for label, figures in found.items():
        if figures["rows"] != RUNS_PAGE_RUNS:
            raise RuntimeError(f"runs page on {label}: {figures['rows']} rows")
        figures["median_seconds"] = statistics.median(figures["seconds"])
        log(
            f"  runs page, {RUNS_PAGE_RUNS} runs, {label}: median {figures['median_seconds'] * 1000:.0f} ms "
            f"of {len(figures['seconds'])} (index {figures['index_bytes'] / 1024:.0f} KiB, "
            f"first page {figures['first_page_bytes'] / 1024:.0f} KiB)"
        )
    return found


def runs_page_table(found: dict[str, Any]) -> str:
    rows = [
        f"| bucket | one settle's page work, {RUNS_PAGE_RUNS} runs (median) | runs | target |",
        "|---|---:|---:|---|",
    ]
    for label, figures in found.items():
        ok = figures["median_seconds"] < 1.0
        rows.append(
            f"| {label} | {figures['median_seconds'] * 1000:,.0f} ms | {len(figures['seconds'])} "
            f"| < 1 s: {'met' if ok else 'MISSED'} |"
        )
    return "\n".join(rows)


# --- the deployment's own cost ----------------------------------------------------------------------------


class Meter:
    """Billable operations by kind, counted from any thread but the driver's own (``with meter.off()``)."""

    def __init__(self, storage_url: str) -> None:
        self.storage = urlsplit(storage_url).netloc
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._local = threading.local()

    def add(self, kind: str, amount: float = 1) -> None:
        if getattr(self._local, "off", False) or not amount:
            return
        with self._lock:
            self.counts[kind] += amount  # type: ignore[assignment]

    @contextlib.contextmanager
    def off(self) -> Iterator[None]:
        self._local.off = True
        try:
            yield
        finally:
            self._local.off = False

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self.counts)


def _gcs_kind(method: str, url: str) -> str:
    """How Cloud Storage bills one JSON-API request (cloud.google.com/storage/pricing#operations-by-class)."""
    parts = urlsplit(url)
    path, query = parts.path, parts.query
    if method == "DELETE":
        return "gcs_free"
    if path.startswith("/upload/"):
        # A simple or multipart insert is one class A operation; a resumable upload's initiation and each
        # of its PUTs are counted apart (an object of under 8 MiB never takes that path here).
        return "gcs_class_a" if method == "POST" else "gcs_class_a_resumable_put"
    if method in {"POST", "PUT", "PATCH"}:
        return "gcs_class_a"  # copyTo / rewriteTo / compose / patch / update
    if method == "GET":
        tail = path.rstrip("/").split("/")
        if tail[-1] == "o" or ("alt=json" in query and tail[-1] == "o"):
            return "gcs_class_a"  # objects.list
        return "gcs_class_b"  # objects.get (metadata or media), buckets.get
    return "gcs_other"


def install_meter(meter: Meter) -> None:
    """Count at the clients' transport layers: HTTP for Cloud Storage, GAPIC for Firestore and Pub/Sub."""
    import requests
    from google.cloud.firestore_v1.services.firestore import client as firestore_gapic
    from google.pubsub_v1.services.publisher import client as publisher_gapic

    send = requests.Session.send

    def counted_send(self: Any, request: Any, **kwargs: Any) -> Any:
        if urlsplit(request.url).netloc == meter.storage:
            meter.add(_gcs_kind(request.method, request.url))
            meter.add("gcs_requests")
        return send(self, request, **kwargs)

    requests.Session.send = counted_send  # type: ignore[method-assign]

    def request_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return kwargs.get("request", args[0] if args else None)

    def field(request: Any, name: str) -> Any:
        return request.get(name) if isinstance(request, dict) else getattr(request, name, None)

    def collection(name: str) -> str:
        """``runs/ID/jobs/X`` -> ``runs/jobs``: where a document lives, for the per-collection detail."""
        path = name.split("/documents/", 1)[-1].split("/")
        return "/".join(path[0::2])

    def writes(request: Any) -> None:
        for write in field(request, "writes") or []:
            pb = getattr(write, "_pb", write)
            op = pb.WhichOneof("operation")
            kind = "firestore_delete" if op == "delete" else "firestore_write"
            meter.add(kind)
            name = (
                pb.delete if op == "delete" else pb.update.name if op == "update" else pb.transform.document
            )
            meter.add(f"{kind}:{collection(name)}")

    class Stream:
        """A streamed answer, counted as it is read: a document read per document (a query reading none
        is still billed one)."""

        def __init__(self, inner: Any, what: str) -> None:
            self._inner, self._what, self._seen = iter(inner), what, 0
            self._source = inner

        def __iter__(self) -> Stream:
            return self

        def __next__(self) -> Any:
            try:
                response = next(self._inner)
            except StopIteration:
                if self._what == "run_query" and not self._seen:
                    meter.add("firestore_read")
                    self._seen = -1
                raise
            pb = getattr(response, "_pb", response)
            if self._what == "batch_get_documents":
                if pb.HasField("found") or pb.missing:
                    meter.add("firestore_read")
                    meter.add(f"firestore_read:{collection(pb.found.name or pb.missing)}")
                    self._seen += 1
            elif self._what == "run_query" and pb.HasField("document"):
                meter.add("firestore_read")
                meter.add(f"firestore_read:query {collection(pb.document.name)}")
                self._seen += 1
            return response

        def __getattr__(self, name: str) -> Any:
            return getattr(self._source, name)

    def wrap(name: str) -> None:
        original = getattr(firestore_gapic.FirestoreClient, name)

        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            meter.add(f"firestore_rpc_{name}")
            if name in {"commit", "batch_write"}:
                writes(request_of(args, kwargs))
            elif name == "run_aggregation_query":
                meter.add("firestore_read")  # one read per up to 1,000 index entries counted
            answer = original(self, *args, **kwargs)
            if name in {"batch_get_documents", "run_query"}:
                return Stream(answer, name)
            if name == "list_documents":
                meter.add("firestore_read", len(list(getattr(answer, "documents", []) or [])))
            return answer

        setattr(firestore_gapic.FirestoreClient, name, wrapper)

    for name in (
        "batch_get_documents",
        "run_query",
        "run_aggregation_query",
        "commit",
        "batch_write",
        "list_documents",
        "begin_transaction",
        "rollback",
    ):
        wrap(name)

    publish = publisher_gapic.PublisherClient.publish

    def counted_publish(self: Any, *args: Any, **kwargs: Any) -> Any:
        request = request_of(args, kwargs)
        size = 0
        messages = list(kwargs.get("messages") or field(request, "messages") or [])
        for message in messages:
            pb = getattr(message, "_pb", message)
            data = pb.data if hasattr(pb, "data") else message.get("data", b"")
            attributes = dict(pb.attributes) if hasattr(pb, "attributes") else message.get("attributes", {})
            # Billed volume: data, attribute keys and values, 20 bytes of timestamp, the message id.
            size += len(data) + sum(len(k) + len(v) for k, v in attributes.items()) + 20 + 16
        meter.add("pubsub_publish_requests")
        meter.add("pubsub_messages", len(messages))
        meter.add("pubsub_billable_bytes", max(1000, size))
        return publish(self, *args, **kwargs)

    publisher_gapic.PublisherClient.publish = counted_publish  # type: ignore[method-assign]


def _prompt_file(lines: int) -> bytes:
    subjects = ["a lighthouse", "a red kite", "a fox", "a glass teapot", "a tram", "an orchard", "a violin"]
    places = ["at dusk", "in fog", "on a beach", "in winter", "under neon", "in a meadow", "on Mars"]
    out = [
        f"{subjects[n % 7]} {places[n // 7 % 7]}, study {n}, watercolour, wide angle\n" for n in range(lines)
    ]
    return "".join(out).encode()


def worker_overhead(args: dict[str, Any]) -> dict[str, Any]:
    """One run of ``lines`` lines through the Cloud path, webhooks on or polling, every operation counted."""
    import base64

    import pytest
    from google.cloud import firestore, pubsub_v1, storage
    from tests.support.deployment import Deployment

    from promptdrop.testing import eventarc
    from promptdrop.testing.cloud import LocalCloud, unique_name

    webhooks = bool(args["webhooks"])
    lines = int(args["lines"])
    home = Path(args["home"])
    secret = "whsec_" + base64.b64encode(b"promptdrop-bench-webhook-secret!").decode()
    timings: list[tuple[str, str, float]] = []  # (phase, function, seconds)
    phases: dict[str, Counter[str]] = {}
    cloud = LocalCloud(log_dir=home / "cloud-logs")
    endpoints = cloud.start()
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in endpoints.env().items():
                patch.setenv(name, value)
            meter = Meter(endpoints.storage_url)
            storage_client = storage.Client(project=cloud.project)
            bucket = unique_name("bench")
            storage_client.create_bucket(bucket)
            deployment = Deployment(
                cloud=cloud,
                bucket=bucket,
                storage_client=storage_client,
                firestore_client=firestore.Client(project=cloud.project),
                publisher=pubsub_v1.PublisherClient(),
                subscriber=pubsub_v1.SubscriberClient(),
                home=home,
                monkeypatch=patch,
            )
            try:
                # The batch stays pending while the waiting ticks are measured, then ends.
                options: dict[str, Any] = {"pending_seconds": float(args["pending"]), "running_seconds": 0.0}
                if webhooks:
                    listener = deployment.listen()
                    options.update(
                        webhook_urls=(listener.url,), webhook_secret=secret, webhook_retry_seconds=0.2
                    )
                emulator = deployment.start_emulator("gemini-bench", **options)
                deployment.env.update(PROMPTDROP_GEMINI_BASE_URL=emulator.url)
                if webhooks:
                    deployment.env.update(PROMPTDROP_WEBHOOKS="on", PROMPTDROP_WEBHOOK_SECRET=secret)
                    hook = deployment.app("on_batch_webhook")

                    def timed_hook(environ: Any, start_response: Any) -> Any:
                        began = time.perf_counter()
                        try:
                            return list(hook.wsgi(environ, start_response))
                        finally:
                            timings.append(("end", "on_batch_webhook", time.perf_counter() - began))

                    listener.app = timed_hook
                files = deployment.app("on_prompt_file")
                poller = deployment.app("poll_jobs")
                with meter.off():
                    notification = deployment.notification(f"inbox/bench-{lines}.txt", _prompt_file(lines))
                # The tick every 2 minutes keeps the poller warm: its cold start is not the idle tick's.
                assert poller.post(eventarc.scheduler_tick()) == 200
                install_meter(meter)

                def call(phase: str, app: Any, event: dict[str, Any]) -> None:
                    began = time.perf_counter()
                    status = app.post(event)
                    timings.append((phase, app.target, time.perf_counter() - began))
                    if status != 200:
                        raise RuntimeError(f"{app.target} answered {status}")

                def phase(name: str, action: Callable[[], None]) -> None:
                    before = meter.snapshot()
                    action()
                    after = meter.snapshot()
                    after.subtract(before)
                    phases[name] = +after

                idle_ticks = int(args["ticks"])
                phase(
                    "idle ticks",
                    lambda: [
                        call("idle ticks", poller, eventarc.scheduler_tick()) for _ in range(idle_ticks)
                    ],
                )
                phase("drop", lambda: call("drop", files, notification))
                submitted = time.monotonic()
                with meter.off():
                    (run,) = deployment.runs()
                phase(
                    "waiting ticks",
                    lambda: [
                        call("waiting ticks", poller, eventarc.scheduler_tick()) for _ in range(idle_ticks)
                    ],
                )
                if time.monotonic() - submitted > float(args["pending"]):
                    raise RuntimeError("the batch may have ended before the waiting ticks were measured")

                def batch_done() -> bool:
                    return all(batch.done for batch in deployment.batches(emulator))

                while not batch_done():  # no tick meanwhile: the waiting ticks are measured above
                    time.sleep(0.2)

                def finish() -> None:
                    deadline = time.monotonic() + 600
                    while time.monotonic() < deadline:
                        if not webhooks:
                            call("end", poller, eventarc.scheduler_tick())
                        with meter.off():
                            current = deployment.store.get_run(run.run_id)
                        if current is not None and current.state.terminal:
                            return
                        time.sleep(0.5)
                    raise RuntimeError("the run did not end")

                phase("end", finish)
                with meter.off():
                    ended = deployment.store.get_run(run.run_id)
                    assert ended is not None
                    images = len(deployment.images(ended))
                    jobs = len(deployment.jobs(run.run_id))
            finally:
                deployment.close()
    finally:
        cloud.stop()
    return {
        "webhooks": webhooks,
        "lines": lines,
        "state": ended.state.value,
        "succeeded": ended.counts.succeeded,
        "objects_under_images": images,
        "jobs": jobs,
        "ticks_measured": idle_ticks,
        "phases": {name: dict(counts) for name, counts in phases.items()},
        "timings": timings,
    }


def _dollars(
    counts: dict[str, float], invocations: int, seconds: list[tuple[str, float]]
) -> dict[str, float]:
    """List-price dollars of one phase's operations and function time (billed per started 100 ms)."""
    p = OVERHEAD_PRICES
    cpu = memory = 0.0
    for function, wall in seconds:
        vcpu, gib = FUNCTION_SIZE[function]
        billed = math.ceil(wall * 10) / 10
        cpu += billed * vcpu
        memory += billed * gib
    gcs_a = counts.get("gcs_class_a", 0) + counts.get("gcs_class_a_resumable_put", 0)
    return {
        "cloud_storage": gcs_a * p["gcs_class_a"] + counts.get("gcs_class_b", 0) * p["gcs_class_b"],
        "firestore": counts.get("firestore_read", 0) * p["firestore_read"]
        + counts.get("firestore_write", 0) * p["firestore_write"]
        + counts.get("firestore_delete", 0) * p["firestore_delete"],
        # Each function event arrives as a Pub/Sub push (Eventarc) of at least 1000 bytes, besides what
        # the functions publish.
        "pubsub": (counts.get("pubsub_billable_bytes", 0) + 1000 * invocations) * p["pubsub_byte"],
        "functions": cpu * p["vcpu_second"] + memory * p["gib_second"] + invocations * p["invocation"],
    }


def _image_bills() -> dict[str, float]:
    """Batch price of 1,000 images: 1K on the cheapest priced model, 2K on gemini-3-pro-image."""
    from promptdrop.models import BATCH_DISCOUNT, MODELS

    cheapest = min(
        (cost, name)
        for name, spec in MODELS.items()
        if (cost := spec.image_cost("1K", batch=False)) is not None
    )
    pro = MODELS["gemini-3-pro-image"].image_cost("2K", batch=False)
    assert pro is not None
    return {
        f"1K on {cheapest[1]} (cheapest priced)": 1000 * cheapest[0] * BATCH_DISCOUNT,
        "2K on gemini-3-pro-image": 1000 * pro * BATCH_DISCOUNT,
    }


def bench_overhead(work: Path, lines: int) -> dict[str, Any]:
    """Both modes, each in a fresh process with its own emulators; then dollars per 1,000 images."""
    found: dict[str, Any] = {"lines": lines, "prices": OVERHEAD_PRICES, "images": _image_bills()}
    for mode, webhooks in (("webhooks", True), ("polling", False)):
        with scratch(work, f"overhead-{mode}") as home:
            home.mkdir(parents=True)
            args = {"webhooks": webhooks, "lines": lines, "home": str(home), "pending": 10.0, "ticks": 3}
            figures = run_worker("overhead", args, {"PYTHONPATH": f"{REPO}:{REPO / 'functions'}"})
        if figures["succeeded"] != lines:
            raise RuntimeError(
                f"{mode}: {figures['succeeded']} of {lines} lines succeeded: {figures['state']}"
            )
        by_phase: dict[str, Any] = {}
        for phase, counts in figures["phases"].items():
            seconds = [(f, t) for p, f, t in figures["timings"] if p == phase]
            scale = figures["ticks_measured"] if phase.endswith("ticks") else 1
            per = {k: v / scale for k, v in counts.items()}
            timed = [(f, t) for f, t in seconds]
            dollars = {k: v / scale for k, v in _dollars(counts, len(seconds), timed).items()}
            by_phase[phase] = {
                "counts": per,
                "invocations": len(seconds) / scale,
                "function_seconds": sum(t for _, t in seconds) / scale,
                "dollars": dollars,
            }
            log(
                f"  {mode}, {phase}: {per}, {len(seconds) / scale:g} invocations, "
                f"{sum(t for _, t in seconds) / scale:.2f} s, ${sum(dollars.values()):.6f}"
            )
        found[mode] = {"run": figures, "phases": by_phase}
    return found


# Ticks a run waits through (every 2 minutes, infra's tick_schedule) for a batch that takes this long.
TURNAROUNDS = {"1 h": 30, "24 h": 720}


def overhead_per_run(found: dict[str, Any], mode: str, waiting_ticks: int) -> dict[str, float]:
    """Dollars of one run (scaled to 1,000 images): its drop, its end, the ticks it waits through (each
    less the idle tick the deployment pays anyway)."""
    phases = found[mode]["phases"]
    scale = 1000 / found["lines"]
    total: dict[str, float] = {}
    for service in phases["drop"]["dollars"]:
        waiting = phases["waiting ticks"]["dollars"][service] - phases["idle ticks"]["dollars"][service]
        total[service] = scale * (
            phases["drop"]["dollars"][service]
            + phases["end"]["dollars"][service]
            + waiting_ticks * max(0.0, waiting) / scale
        )
    return total


def overhead_table(found: dict[str, Any]) -> str:
    kinds = [
        ("gcs_class_a", "Cloud Storage class A"),
        ("gcs_class_b", "Cloud Storage class B"),
        ("gcs_free", "Cloud Storage free (deletes)"),
        ("firestore_read", "Firestore document reads"),
        ("firestore_write", "Firestore document writes"),
        ("firestore_delete", "Firestore document deletes"),
        ("pubsub_messages", "Pub/Sub messages published"),
        ("pubsub_billable_bytes", "Pub/Sub billable bytes published"),
    ]
    out = [
        f"Operations counted for one run of {found['lines']:,} lines (the ticks: per tick, the mean of "
        f"{found['webhooks']['run']['ticks_measured']}):",
        "",
        "| operation | "
        + " | ".join(
            f"{m}: {p}" for m in ("webhooks", "polling") for p in ("drop", "end", "waiting tick", "idle tick")
        )
        + " |",
        "|---|" + "---:|" * 8,
    ]
    names = ("drop", "end", "waiting ticks", "idle ticks")
    for key, label in kinds:
        cells = [
            f"{found[m]['phases'][p]['counts'].get(key, 0):,.4g}"
            for m in ("webhooks", "polling")
            for p in names
        ]
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    for key, label in (
        ("invocations", "function invocations"),
        ("function_seconds", "function seconds (wall)"),
    ):
        cells = [f"{found[m]['phases'][p][key]:,.3g}" for m in ("webhooks", "polling") for p in names]
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    out += [
        "",
        "Per 1,000 images, at list prices, against the image bill (batch):",
        "",
        "| mode, batch turnaround | Cloud Storage | Firestore | Pub/Sub | functions | total | "
        + " | ".join(f"share of {name}" for name in found["images"])
        + " |",
        "|---|---:|---:|---:|---:|---:|" + "---:|" * len(found["images"]),
    ]
    for mode in ("webhooks", "polling"):
        for turnaround, ticks in TURNAROUNDS.items():
            dollars = overhead_per_run(found, mode, ticks)
            total = sum(dollars.values())
            shares = " | ".join(
                f"{100 * total / bill:.3f}% of ${bill:,.2f}" for bill in found["images"].values()
            )
            out.append(
                f"| {mode}, {turnaround} ({ticks} ticks) | ${dollars['cloud_storage']:.4f} | ${dollars['firestore']:.4f} "
                f"| ${dollars['pubsub']:.6f} | ${dollars['functions']:.4f} | ${total:.4f} | {shares} |"
            )
    idle = found["polling"]["phases"]["idle ticks"]["dollars"]
    out += [
        "",
        f"An idle tick: ${sum(idle.values()):.7f}; 21,600 a month (every 2 minutes): ${21_600 * sum(idle.values()):.2f}.",
    ]
    return "\n".join(out)


def run_sections(work: Path, sections: set[str], quick: bool) -> dict[str, Any]:
    """The sections of this module that ``sections`` names: figures and a Markdown table each."""
    found: dict[str, Any] = {}
    if "runs-page" in sections:
        log(f"runs page: one settle's page work with {RUNS_PAGE_RUNS} runs in the index object")
        figures = bench_runs_page(work, 3 if quick else 9)
        found["runs-page"] = {"figures": figures, "table": runs_page_table(figures)}
    if "overhead" in sections:
        lines = 100 if quick else 1000
        log(f"overhead: the Cloud path's own operations for a run of {lines} lines, webhooks and polling")
        figures = bench_overhead(work, lines)
        found["overhead"] = {"figures": figures, "table": overhead_table(figures)}
    return found


WORKERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "runs_page": worker_runs_page,
    "overhead": worker_overhead,
}


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "--worker":
        sys.exit("usage: scripts/bench --only runs-page,overhead (this module runs its workers)")
    figures = WORKERS[sys.argv[2]](json.loads(sys.argv[3]))
    figures["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(figures), flush=True)
