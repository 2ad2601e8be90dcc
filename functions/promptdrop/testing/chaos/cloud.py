"""The Cloud path: ``functions/main.py`` under functions-framework (one process per function) against the
Firestore / Pub/Sub emulators and fake-gcs-server, Firestore and Storage reached through fault proxies that
reset connections some of the time, every Pub/Sub delivery possibly duplicated, overlapping poll ticks, and
function instances SIGKILLed (while their create is stalled in the emulator, mid-harvest, at random).

On the Vertex AI backend (``backend="vertex"``) the functions run with ``PROMPTDROP_BACKEND=vertex`` against
the emulator's Vertex routes, which read the jobs' inputs from fake-gcs-server and write their predictions
there; webhooks are off (Vertex sends none: jobs are polled), some lines lose their labels, and the checks
add that no call reached the Files API (no upload, no results download).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson
from google.cloud import firestore, pubsub_v1, storage

from promptdrop.adapters.firestore_store import FirestoreJobStore
from promptdrop.emulator.hooks import new_secret
from promptdrop.records import Run
from promptdrop.testing import eventarc
from promptdrop.testing.bridge import PubsubBridge, Ticker
from promptdrop.testing.chaos.checks import TERMINAL, RunView, Snapshot, judge
from promptdrop.testing.chaos.common import (
    REPO,
    Plan,
    SeedResult,
    batch_display_names,
    billing,
    cached_images,
    due_cache_redrop,
    extra_file,
    fault_figures,
    files_api_calls,
    generate_counts,
    lease_lost_jobs,
    line_figures,
    start_emulator,
    tracebacks,
    write_stuck_runs,
)
from promptdrop.testing.chaos.local import run_view
from promptdrop.testing.chaos.procs import Child, owns_client_port, stalled_create_ports, wait_listening
from promptdrop.testing.chaos.prompts import CACHE_REDROP, MODEL, PromptFile, seed_files, seed_messages
from promptdrop.testing.cloud import LocalCloud, StorageEvents, create_topic, free_port
from promptdrop.testing.cloud_local import (
    CREATED_TOPICS,
    INBOX_PREFIX,
    INBOX_TOPIC,
    PUSHED,
    REQUESTS_TOPIC,
    TARGETS,
    Stack,
    function_argv,
)
from promptdrop.testing.faultproxy import FaultProxy
from promptdrop.usecases.harvest import CHECKPOINT_LINES

log = logging.getLogger(__name__)

PROJECT = "chaos-project"
BUCKET = "promptdrop-chaos"
OUTPUTS = "outputs/"
DUPLICATE_RATE = 0.5  # deliveries sent twice, at the same time
STORAGE_LATENCY = 0.03  # seconds before each Storage request
# A failed push is redelivered after this, as the deployment's push subscriptions do (minimum_backoff in
# infra/main.tf), not at once: a tighter loop would be a load production never sees.
DEPLOYED_MINIMUM_BACKOFF = 10


class Deliveries:
    """Posts CloudEvents to a function, sometimes twice at once; counts duplicates and overlapping ticks."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.lock = threading.Lock()
        self.duplicates = 0
        self.ticks = 0
        self.overlapping_ticks = 0
        self._ticks_in_flight = 0

    def duplicating(self, url: str) -> Callable[[Mapping[str, Any]], int]:
        def deliver(event: Mapping[str, Any]) -> int:
            with self.lock:
                twice = self.rng.random() < DUPLICATE_RATE
                self.duplicates += twice
            if twice:
                threading.Thread(target=eventarc.post, args=(url, event), daemon=True).start()
            return eventarc.post(url, event)

        return deliver

    def ticking(self, url: str) -> Callable[[Mapping[str, Any]], int]:
        def deliver(event: Mapping[str, Any]) -> int:
            with self.lock:
                self.ticks += 1
                self.overlapping_ticks += self._ticks_in_flight > 0
                self._ticks_in_flight += 1
            try:
                return eventarc.post(url, event)
            finally:
                with self.lock:
                    self._ticks_in_flight -= 1

        return deliver


class CloudChaos:
    def __init__(self, seed: int, plan: Plan, work: Path, backend: str = "gemini") -> None:
        self.seed = seed
        self.vertex = backend == "vertex"
        self.plan = plan
        self.work = work
        self.logs = work / "logs"
        self.rng = random.Random(seed)  # noqa: S311 - chaos timing, not secrets
        self.files = seed_files(seed, short=plan.short, lost_labels=self.vertex)
        self.messages = seed_messages(seed, short=plan.short)
        self.drops: Counter[str] = Counter()
        self.published: Counter[str] = Counter()
        self.kills: Counter[str] = Counter()
        self.generated = (0, 0, 0)  # generateContent calls the emulator answered, cut, stalled
        self.files_api_calls: dict[str, int] = {}  # Vertex AI: calls that reached the Files API routes
        self.scratch_left_to_expire = 0  # scratch objects of ended runs stamped for the lifecycle rule
        self.resets = 0
        self.deliveries = Deliveries(random.Random(seed + 7))  # noqa: S311 - not secrets
        self.functions: dict[str, Child] = {}
        self.extras: list[PromptFile] = []  # dropped when the planned files ended before the risky kills
        self.big_runs: dict[str, int] = {}
        self.image_counts: dict[
            str, int
        ] = {}  # big run id -> images seen at the last look  # run id -> lines, for the files of more than a checkpoint

    def run(self) -> SeedResult:
        self.logs.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        cloud = LocalCloud(
            PROJECT, log_dir=self.logs, storage_events=StorageEvents(INBOX_TOPIC, INBOX_PREFIX)
        )
        threads: list[PubsubBridge | Ticker] = []
        proxies: list[FaultProxy] = []
        emulator: Child | None = None
        result = SeedResult("cloud-vertex" if self.vertex else "cloud", self.seed)
        try:
            endpoints = cloud.start()
            # This process's own clients (uploads, checks) go straight to the emulators.
            os.environ.update(endpoints.env())
            firestore_proxy = FaultProxy.for_address(endpoints.firestore_host).start()
            storage_proxy = FaultProxy.for_address(endpoints.storage_url).start()
            proxies = [firestore_proxy, storage_proxy]
            self.calm(proxies)
            ports = {target: free_port() for target in TARGETS}
            # Vertex AI sends no webhooks: its deployment polls (PROMPTDROP_WEBHOOKS=off, no secret).
            webhook_secret = "" if self.vertex else new_secret()
            # The emulator reaches fake-gcs-server straight (STORAGE_EMULATOR_HOST, from this process's
            # environment): the Vertex routes read inputs and write predictions there.
            emulator, url = start_emulator(
                self.work,
                self.seed,
                self.plan,
                webhook_url=None if self.vertex else f"http://127.0.0.1:{ports['on_batch_webhook']}/",
                webhook_secret=webhook_secret,
            )
            self.storage = storage.Client(project=PROJECT)
            self.storage.create_bucket(BUCKET)
            for topic in CREATED_TOPICS:
                create_topic(endpoints.pubsub_host, PROJECT, topic)
            # The functions reach Firestore and Storage through the proxies only.
            stack = Stack(
                endpoints=dataclasses.replace(
                    endpoints, firestore_host=firestore_proxy.address, storage_url=storage_proxy.url
                ),
                bucket=BUCKET,
                function_urls={target: f"http://127.0.0.1:{port}/" for target, port in ports.items()},
                gemini_url=url,
                webhook_secret=webhook_secret,
            )
            for target, port in ports.items():
                self.functions[target] = self.function(stack, target, port).start()
            deadline = time.monotonic() + 60
            for target, port in ports.items():
                wait_listening(port, deadline, self.functions[target])
            threads = self.deliveries_for(stack)
            self.store = FirestoreJobStore(firestore.Client(project=PROJECT))
            self.chaos(stack, url, proxies)
            self.calm(proxies)
            result.figures["settle s"] = round(self.settle(stack), 1)
            result.figures.update(fault_figures(url))
            self.generated = generate_counts(url)  # read while the emulator runs
            self.files_api_calls = files_api_calls(url)
        finally:
            for thread in threads:
                thread.stop()
            for child in self.functions.values():
                child.stop(signal.SIGTERM)
            if emulator is not None:
                emulator.stop(signal.SIGTERM)
            for proxy in proxies:
                proxy.stop()
        try:
            snapshot = self.snapshot()
            result.figures["now sends recorded"] = self.now_sends()
            result.figures["scratch left to the lifecycle rule"] = self.scratch_left_to_expire
        finally:
            cloud.stop()
        result.misses = judge(snapshot)
        runs = snapshot.runs
        result.figures = {
            "runs": len(runs),
            "terminal": sum(r.state in TERMINAL for r in runs),
            **line_figures(dict(snapshot.manifests)),
            "batch jobs": len(snapshot.batch_display_names),
            **(snapshot.billing.figures() if snapshot.billing else {}),
            "kills": sum(self.kills.values()),
            "kills in create": self.kills["create"],
            "kills mid-harvest": self.kills["harvest"],
            "self exits": sum(child.unexpected_exits for child in self.functions.values()),
            "duplicate deliveries": self.deliveries.duplicates,
            "ticks": self.deliveries.ticks,
            "overlapping ticks": self.deliveries.overlapping_ticks,
            "connection resets": self.resets,
            **result.figures,
            "seconds": round(time.monotonic() - started, 1),
        }
        return result

    # Set-up

    @staticmethod
    def calm(proxies: list[FaultProxy]) -> None:
        """Firestore passes through; Storage answers with a little latency, as the real one does (which also
        makes a harvest last long enough to be killed in the middle)."""
        firestore_proxy, storage_proxy = proxies
        firestore_proxy.pass_through()
        storage_proxy.delay(STORAGE_LATENCY)

    def function(self, stack: Stack, target: str, port: int) -> Child:
        env = {
            **stack.function_env(target),
            "PROMPTDROP_MODEL": MODEL,
            "PROMPTDROP_LEASE_SECONDS": str(self.plan.lease_seconds),
            "PROMPTDROP_SUBMIT_RETRY_BASE": "0.5",
            # A stalled create lands stall_seconds after it arrived; 30 s more covers a loaded machine's
            # delays. The defaults (2 + 1 minutes) would outlast the seed's settle window.
            "PROMPTDROP_API_TIMEOUT": str(self.plan.stall_seconds + 2),
            "PROMPTDROP_CREATE_MARGIN": str(self.plan.create_margin),
            "PROMPTDROP_MAX_ATTEMPTS": "3",
            # Webhooks finish most runs; the poller, the net for the dropped deliveries, looks at a running
            # job every few seconds instead of every 15 minutes, so the seed settles in its window.
            "PROMPTDROP_WEBHOOK_POLL_SECONDS": "5",
            "PYTHONUNBUFFERED": "1",
        }
        if self.vertex:
            for name in ("GEMINI_API_KEY", "PROMPTDROP_GEMINI_BASE_URL"):
                env.pop(name, None)  # no API key on Vertex AI: the service account's token
            env.update(
                PROMPTDROP_BACKEND="vertex",
                PROMPTDROP_VERTEX_PROJECT=PROJECT,
                PROMPTDROP_VERTEX_BASE_URL=stack.gemini_url,
            )
        return Child(target, function_argv(target, port), env, self.logs / f"{target}.log", REPO)

    def deliveries_for(self, stack: Stack) -> list[PubsubBridge | Ticker]:
        subscriber = pubsub_v1.SubscriberClient()
        threads: list[PubsubBridge | Ticker] = []
        for name, template, target in PUSHED:
            topic = stack.topic(name)
            subscription = f"projects/{PROJECT}/subscriptions/{name}-chaos"
            subscriber.create_subscription(name=subscription, topic=topic, ack_deadline_seconds=60)
            deliver = self.deliveries.duplicating(stack.function_urls[target])
            threads.append(
                PubsubBridge(
                    subscriber,
                    subscription,
                    topic,
                    deliver,
                    template=template,
                    name=name,
                    redelivery_seconds=DEPLOYED_MINIMUM_BACKOFF,
                )
            )
        # Two schedulers a little out of step: their ticks overlap now and then.
        tick = self.deliveries.ticking(stack.function_urls["poll_jobs"])
        threads += [Ticker(tick, 1.0), Ticker(tick, 1.3)]
        for thread in threads:
            thread.start()
        return threads

    # Observation

    def runs(self) -> list[Run]:
        try:
            runs: list[Run] = self.store.list_runs(limit=10_000)
        except Exception:
            return []
        return runs

    def lease_holder(self, run_id: str) -> str | None:
        """The function whose process holds the run's lease (owner ``<host>-<pid>-<random>``): the one
        harvesting it, the poller or the webhook receiver."""
        run = self.store.get_run(run_id)
        owner = run.lease.owner if run is not None else None
        parts = owner.rsplit("-", 2) if owner else []
        if len(parts) != 3 or not parts[1].isdigit():
            return None
        pid = int(parts[1])
        return next((target for target, child in self.functions.items() if pid in child.pids()), None)

    def mid_harvest(self) -> str | None:
        """A big run with more images than a harvest checkpoint, and not all of them yet: its id."""
        big = {
            f"{INBOX_PREFIX}{f.name}": len(f.expected_lines) for f in self.files if f.name.startswith("big")
        }
        if len(self.big_runs) < sum(self.drops[name] for name in big):
            self.big_runs = {
                r.run_id: big[r.source.object or ""] for r in self.runs() if r.source.object in big
            }
        for run_id, total in self.big_runs.items():
            prefix = f"{OUTPUTS}{run_id}/images/"
            count = sum(1 for _ in self.storage.list_blobs(BUCKET, prefix=prefix, page_size=1000))
            # Growing since the last look: a harvest is under way (not one a kill already stopped).
            growing = count > self.image_counts.get(run_id, count)
            if count != self.image_counts.get(run_id):  # harness.log: where the harvest kills aim
                log.warning("big run %s: %d of %d images", run_id, count, total)
            self.image_counts[run_id] = count
            if growing and CHECKPOINT_LINES < count < total:
                return run_id
        return None

    # The seed

    def drop(self, name: str, data: bytes) -> None:
        self.storage.bucket(BUCKET).blob(INBOX_PREFIX + name).upload_from_string(data)
        self.drops[INBOX_PREFIX + name] += 1

    def staged(self, name: str) -> bool:
        """The earlier upload of ``name`` was read (its run left RECEIVED): replacing it now loses nothing."""
        return any(
            r.source.object == INBOX_PREFIX + name and r.state.value != "RECEIVED" for r in self.runs()
        )

    def publish(self, stack: Stack, body: bytes, name: str) -> None:
        pubsub_v1.PublisherClient().publish(stack.topic(REQUESTS_TOPIC), body).result(timeout=30)
        self.published[name] += 1

    def restart_dead(self, restart_at: dict[str, float], now: float) -> None:
        for target, child in self.functions.items():
            if target in restart_at:
                if now >= restart_at[target]:
                    child.start()
                    del restart_at[target]
            elif child.check_exit():
                child.start()

    def chaos(self, stack: Stack, url: str, proxies: list[FaultProxy]) -> None:
        plan, rng = self.plan, self.rng
        start = time.monotonic()
        *files, again = self.files
        work = [(0.0 if i < 3 else rng.uniform(0.5, 8.0), f.name, f.data) for i, f in enumerate(files)]
        work += [(rng.uniform(0.0, 8.0), f"message:{m.name}", m.body) for m in self.messages]
        schedule = sorted(work, key=lambda item: item[0])
        last_drop = False
        restart_at: dict[str, float] = {}
        next_kill = start + rng.uniform(*plan.kill_gap)
        last_kill = start
        next_fault = start + rng.uniform(1.0, 3.0)
        fault_ends: float | None = None
        while True:
            now = time.monotonic()
            while schedule and now - start >= schedule[0][0]:
                _, name, data = schedule.pop(0)
                if name.startswith("message:"):
                    self.publish(stack, data, name.removeprefix("message:"))
                else:
                    self.drop(name, data)
            if not schedule and not last_drop and self.staged(again.name):
                self.drop(again.name, again.data)  # a re-upload: a new generation, a new run
                last_drop = True
            self.restart_dead(restart_at, now)
            # Reset Firestore's or Storage's connections for a moment, now and then.
            if fault_ends is not None and now >= fault_ends:
                self.calm(proxies)
                fault_ends = None
            elif fault_ends is None and now >= next_fault:
                rng.choice(proxies).reset()
                self.resets += 1
                fault_ends = now + rng.uniform(0.1, 0.5)
                next_fault = now + rng.uniform(1.5, 4.0)
            kills = sum(self.kills.values())
            victim: str | None = None
            reason = ""
            if kills < plan.max_kills and now - last_kill > 1.0:
                ports = stalled_create_ports(url)
                for target, child in self.functions.items():
                    if target not in restart_at and any(owns_client_port(child.pids(), p) for p in ports):
                        victim, reason = target, "create"
                        break
                harvests_left = self.kills["harvest"] < plan.harvest_kills
                harvesting = self.mid_harvest() if victim is None and harvests_left else None
                holder = self.lease_holder(harvesting) if harvesting else None
                if holder is not None and holder not in restart_at:
                    victim, reason = holder, "harvest"
                if victim is None and now >= next_kill and self.kills["random"] < plan.random_kills:
                    alive = [t for t in self.functions if t not in restart_at]
                    victim, reason = rng.choice(alive), "random"
            if victim is not None:
                log.warning("kill %s (%s)", victim, reason)  # harness.log: when, to read beside the logs
                self.functions[victim].kill()
                self.kills[reason] += 1
                last_kill = now
                next_kill = now + rng.uniform(*plan.kill_gap)
                restart_at[victim] = now + rng.uniform(0.3, 1.5)
            if last_drop and not restart_at and now - start > 3.0:
                runs = self.runs()
                expected = sum(self.drops.values()) + sum(self.published.values())
                if len(runs) == expected and all(r.state.terminal for r in runs):
                    extra = extra_file(
                        self.rng, self.kills, self.extras, short=plan.short, first=self.files[0]
                    )
                    if extra is None:
                        return
                    self.drop(extra.name, extra.data)
                elif now - start > plan.chaos_seconds:
                    return
            time.sleep(0.05)

    def settle(self, stack: Stack) -> float:
        start = time.monotonic()
        expected = sum(self.drops.values()) + sum(self.published.values())
        while time.monotonic() - start < self.plan.settle_seconds:
            self.restart_dead({}, time.monotonic())
            runs = self.runs()
            if len(runs) == expected and all(r.state.terminal for r in runs):
                redrop = due_cache_redrop(self.extras, self.files[0])  # if the kill phase ran out first
                if redrop is None:
                    break
                self.drop(redrop.name, redrop.data)
                expected += 1
                start = time.monotonic()  # a new run: it gets the whole window (up to 3 attempts)
            time.sleep(0.3)
        else:
            write_stuck_runs(self.store, self.logs / "stuck-runs.json")
        return time.monotonic() - start

    def now_sends(self) -> int:
        """Sends of now-lane lines the jobs recorded (each counted before its call), written per job to
        ``logs/now-sends.json``: beside the emulator's generate calls, which line was sent more than once."""
        jobs = [job for run in self.runs() for job in self.store.list_jobs(run.run_id) if job.lane == "now"]
        listed = [{"job": job.job_id, "phase": job.phase.value, "now_sends": job.now_sends} for job in jobs]
        (self.logs / "now-sends.json").write_bytes(orjson.dumps(listed, option=orjson.OPT_INDENT_2))
        return sum(sum(job.now_sends.values()) for job in jobs)

    def snapshot(self) -> Snapshot:
        runs: list[RunView] = [run_view(run) for run in self.runs()]
        blobs = list(self.storage.list_blobs(BUCKET, prefix=OUTPUTS))
        objects = {blob.name: int(blob.size or 0) for blob in blobs}
        # Stamped by settle before it recorded the end: the `_work/` lifecycle rule expires these.
        marked = frozenset(blob.name for blob in blobs if "/_work/" in blob.name and blob.custom_time)
        self.scratch_left_to_expire = len(marked)
        manifests: dict[str, list[dict[str, Any]] | None] = {}
        for run in runs:
            name = f"{OUTPUTS}{run.run_id}/manifest.jsonl"
            manifests[run.run_id] = (
                [
                    orjson.loads(line)
                    for line in self.storage.bucket(BUCKET).blob(name).download_as_bytes().splitlines()
                    if line.strip()
                ]
                if name in objects
                else None
            )
        expected = {INBOX_PREFIX + f.name: f.expected_lines for f in [*self.files, *self.extras]}
        expected.update({m.name: m.expected_lines for m in self.messages})
        logs = {target: self.logs / f"{target}.log" for target in TARGETS}
        logs["gemini-emulator"] = self.logs / "gemini-emulator.log"
        counts, examples = tracebacks(logs)
        return Snapshot(
            drops=dict(self.drops),
            messages=dict(self.published),
            expected_lines=expected,
            runs=runs,
            manifests=manifests,
            objects=objects,
            output_prefix=OUTPUTS,
            batch_display_names=batch_display_names(self.work / "gemini-emulator"),
            tracebacks=counts,
            traceback_examples=examples,
            kills=dict(self.kills),
            # The short variant (in scripts/test) reports where its kills landed; only full runs, big enough to
            # give the harness its aim every time, require a kill in a create and one in a harvest.
            required_kills=() if self.plan.short else ("create", "harvest"),
            cached_images=cached_images(manifests, self.read),
            billing=billing(
                self.work / "gemini-emulator",
                self.generated,
                self.store,
                manifests,
                lease_lost_jobs(self.logs / f"{target}.log" for target in TARGETS),
            ),
            cache_redrop=INBOX_PREFIX + CACHE_REDROP,
            files_api_calls=self.files_api_calls if self.vertex else None,
            scratch_marked=marked,
        )

    def read(self, name: str) -> bytes | None:
        blob = self.storage.bucket(BUCKET).get_blob(name)
        return None if blob is None else bytes(blob.download_as_bytes())


def run_cloud(seed: int, plan: Plan, work: Path, backend: str = "gemini") -> SeedResult:
    return CloudChaos(seed, plan, work, backend).run()
