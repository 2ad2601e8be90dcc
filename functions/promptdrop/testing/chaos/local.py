"""The local path: the emulator as a process, two ``promptdrop serve`` on one bucket folder and one SQLite
store, one of them SIGKILLed and restarted at random, and when its create is stalled in the emulator or it is
harvesting a job past a checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from promptdrop import wiring
from promptdrop.records import Run
from promptdrop.settings import Settings
from promptdrop.testing.chaos.checks import TERMINAL, RunView, Snapshot, judge
from promptdrop.testing.chaos.common import (
    API_KEY,
    REPO,
    Plan,
    SeedResult,
    base_env,
    batch_display_names,
    billing,
    cached_images,
    due_cache_redrop,
    extra_file,
    fault_figures,
    generate_counts,
    line_figures,
    promptdrop_command,
    start_emulator,
    tracebacks,
    write_stuck_runs,
)
from promptdrop.testing.chaos.procs import Child, has_open_file_under, owns_client_port, stalled_create_ports
from promptdrop.testing.chaos.prompts import CACHE_REDROP, MODEL, PromptFile, big_lines, seed_files
from promptdrop.usecases.harvest import CHECKPOINT_LINES

INBOX, OUTPUTS = "inbox/", "outputs/"


def run_view(run: Run) -> RunView:
    source = run.source
    return RunView(
        run_id=run.run_id,
        state=run.state.value,
        source_object=source.object if source.kind == "file" else None,
        generation=source.generation,
        message_name=source.name if source.kind == "message" else None,
    )


class LocalChaos:
    def __init__(self, seed: int, plan: Plan, work: Path) -> None:
        self.seed = seed
        self.plan = plan
        self.work = work
        self.rng = random.Random(seed)  # noqa: S311 - chaos timing, not secrets
        self.bucket = work / "bucket"
        self.logs = work / "logs"
        self.kills: Counter[str] = Counter()
        self.generated = (0, 0, 0)  # generateContent calls the emulator answered, cut, stalled
        self.drops: Counter[str] = Counter()
        self.files = seed_files(seed, short=plan.short)
        self.extras: list[PromptFile] = []  # dropped when the planned files ended before the risky kills
        self.lock = threading.Lock()  # kills and restarts of the victim
        self.restart_at: float | None = None
        self.last_kill = 0.0

    # Set-up

    def serve_env(self, url: str) -> dict[str, str]:
        return {
            **base_env(),
            "PROMPTDROP_HOME": str(self.work / "home"),
            "PROMPTDROP_BUCKET": str(self.bucket),
            "PROMPTDROP_STORE": f"sqlite:///{self.work / 'state.db'}",
            "PROMPTDROP_BACKEND": "gemini",
            "GEMINI_API_KEY": API_KEY,
            "PROMPTDROP_GEMINI_BASE_URL": url,
            "PROMPTDROP_MODEL": MODEL,
            "PROMPTDROP_LEASE_SECONDS": str(self.plan.lease_seconds),
            "PROMPTDROP_SUBMIT_RETRY_BASE": "0.5",
            # A stalled create lands stall_seconds after it arrived; 30 s more covers a loaded machine's
            # delays. The defaults (2 + 1 minutes) would outlast the seed's settle window.
            "PROMPTDROP_API_TIMEOUT": str(self.plan.stall_seconds + 2),
            "PROMPTDROP_CREATE_MARGIN": str(self.plan.create_margin),
            "PROMPTDROP_MAX_ATTEMPTS": "3",
        }

    def serve(self, name: str, interval: float, env: dict[str, str]) -> Child:
        argv = [*promptdrop_command(), "serve", "--interval", str(interval)]
        return Child(name, argv, env, self.logs / f"{name}.log", REPO)

    def drop(self, prompt_file: PromptFile) -> None:
        """Into the inbox whole (a rename), as an upload lands; the same name again is a new generation."""
        staging = self.work / "staging" / f"{uuid.uuid4().hex}.part"
        staging.write_bytes(prompt_file.data)
        os.replace(staging, self.bucket / INBOX / prompt_file.name)
        self.drops[INBOX + prompt_file.name] += 1

    # Observation

    def runs(self, store: Any) -> list[Run]:
        with contextlib.suppress(Exception):  # the store is being written by two processes
            runs: list[Run] = store.list_runs(limit=10_000)
            return runs
        return []

    def mid_harvest(self, victim: Child) -> bool:
        """The victim holds a big run's files open while that run has more images than a checkpoint."""
        total = big_lines(short=self.plan.short)
        for folder in (self.bucket / OUTPUTS).glob("big*"):
            images = folder / "images"
            with contextlib.suppress(OSError):
                count = sum(1 for entry in os.scandir(images) if not entry.name.startswith("."))
                if CHECKPOINT_LINES < count < total and has_open_file_under(victim.pids(), folder):
                    return True
        return False

    # The seed

    def run(self) -> SeedResult:
        for folder in (self.logs, self.work / "staging", self.bucket / INBOX):
            folder.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        emulator, url = start_emulator(self.work, self.seed, self.plan)
        env = self.serve_env(url)
        # The victim ticks often, so it takes most of the work; the steady one takes over when it dies.
        steady = self.serve("serve-steady", 1.5, env).start()
        victim = self.serve("serve-victim", 0.3, env).start()
        store = wiring.job_store(Settings.from_env(env))
        result = SeedResult("local", self.seed)
        try:
            self.chaos(steady, victim, store, url)
            settled = self.settle(steady, victim, store)
            result.figures["settle s"] = round(settled, 1)
            result.figures.update(fault_figures(url))
            self.generated = generate_counts(url)  # read while the emulator runs
        finally:
            for child in (steady, victim):
                child.wait_ready("serving ")
                child.stop(signal.SIGINT)
            emulator.stop(signal.SIGTERM)
        snapshot = self.snapshot(store)
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
            "self exits": steady.unexpected_exits + victim.unexpected_exits,
            **result.figures,
            "seconds": round(time.monotonic() - started, 1),
        }
        return result

    def kill_victim(self, victim: Child, reason: str) -> None:
        """SIGKILL the victim (the caller holds ``self.lock``); it is restarted a little later."""
        now = time.monotonic()
        victim.kill()
        self.kills[reason] += 1
        self.last_kill = now
        self.restart_at = now + self.rng.uniform(0.3, 1.5)

    def may_kill(self, victim: Child) -> bool:
        return (
            victim.alive
            and self.restart_at is None
            and sum(self.kills.values()) < self.plan.max_kills
            and time.monotonic() - self.last_kill > 1.0
        )

    def watch_harvests(self, victim: Child, stop: threading.Event) -> None:
        """A harvest past a checkpoint lasts a fraction of a second here: look every 10 ms."""
        while not stop.wait(0.01):
            with self.lock:
                aimed = self.kills["harvest"] < self.plan.harvest_kills
                if aimed and self.may_kill(victim) and self.mid_harvest(victim):
                    self.kill_victim(victim, "harvest")

    def chaos(self, steady: Child, victim: Child, store: Any, url: str) -> None:
        plan, rng = self.plan, self.rng
        start = time.monotonic()
        # The first files at once, the rest spread out; the re-upload of the first file comes last.
        *files, last = self.files
        again: PromptFile | None = last
        delays = [0.0 if i < 3 else rng.uniform(0.5, 8.0) for i in range(len(files))]
        schedule = sorted(zip(delays, files, strict=True), key=lambda item: item[0])
        next_kill = start + rng.uniform(*plan.kill_gap)
        self.last_kill = start
        stop = threading.Event()
        watcher = threading.Thread(target=self.watch_harvests, args=(victim, stop), daemon=True)
        watcher.start()
        try:
            while True:
                now = time.monotonic()
                while schedule and now - start >= schedule[0][0]:
                    self.drop(schedule.pop(0)[1])
                runs = self.runs(store)
                # The re-upload waits until the first upload was read (its run left RECEIVED): replacing a
                # file before that fails its run, rightly, and that is not what this seed is about.
                if not schedule and again is not None and self.staged(runs, again.name):
                    self.drop(again)
                    again = None
                with self.lock:
                    for child in (steady, victim):
                        if (child is steady or self.restart_at is None) and child.check_exit():
                            child.start()
                    if self.restart_at is not None and now >= self.restart_at:
                        victim.start()
                        self.restart_at = None
                    if self.may_kill(victim):
                        if any(owns_client_port(victim.pids(), port) for port in stalled_create_ports(url)):
                            self.kill_victim(victim, "create")
                        elif now >= next_kill and self.kills["random"] < plan.random_kills:
                            self.kill_victim(victim, "random")
                            next_kill = now + rng.uniform(*plan.kill_gap)
                    restarting = self.restart_at is not None
                dropped = not schedule and again is None
                ended = (
                    dropped and len(runs) == sum(self.drops.values()) and all(r.state.terminal for r in runs)
                )
                if ended and not restarting:
                    extra = extra_file(
                        self.rng, self.kills, self.extras, short=self.plan.short, first=self.files[0]
                    )
                    if extra is None:
                        return
                    self.drop(extra)
                if dropped and not restarting and now - start > plan.chaos_seconds:
                    return
                time.sleep(0.05)
        finally:
            stop.set()
            watcher.join()

    @staticmethod
    def staged(runs: list[Run], name: str) -> bool:
        return any(r.source.object == INBOX + name and r.state.value != "RECEIVED" for r in runs)

    def settle(self, steady: Child, victim: Child, store: Any) -> float:
        """Nothing killed any more: the time until every run ended (bounded by the plan)."""
        start = time.monotonic()
        while time.monotonic() - start < self.plan.settle_seconds:
            for child in (steady, victim):
                if child.check_exit():
                    child.start()
            runs = self.runs(store)
            if len(runs) == sum(self.drops.values()) and all(r.state.terminal for r in runs):
                redrop = due_cache_redrop(self.extras, self.files[0])  # if the kill phase ran out first
                if redrop is None:
                    break
                self.drop(redrop)
                start = time.monotonic()  # a new run: it gets the whole window (up to 3 attempts)
            time.sleep(0.2)
        else:
            write_stuck_runs(store, self.logs / "stuck-runs.json")
        return time.monotonic() - start

    def snapshot(self, store: Any) -> Snapshot:
        counts, examples = tracebacks(
            {name: self.logs / f"{name}.log" for name in ("serve-steady", "serve-victim", "gemini-emulator")}
        )
        runs = [run_view(run) for run in self.runs(store)]
        manifests: dict[str, list[dict[str, Any]] | None] = {}
        for run in runs:
            path = self.bucket / OUTPUTS / run.run_id / "manifest.jsonl"
            manifests[run.run_id] = (
                [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
                if path.exists()
                else None
            )

        def read(name: str) -> bytes | None:
            path = self.bucket / name
            return path.read_bytes() if path.is_file() else None

        objects = {}
        for folder, _, names in os.walk(self.bucket / OUTPUTS):
            for name in names:  # hidden temporary files included: they are what scratch looks like
                path = Path(folder) / name
                with contextlib.suppress(OSError):
                    objects[path.relative_to(self.bucket).as_posix()] = path.stat().st_size
        return Snapshot(
            drops=dict(self.drops),
            messages={},
            expected_lines={INBOX + f.name: f.expected_lines for f in [*self.files, *self.extras]},
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
            cached_images=cached_images(manifests, read),
            billing=billing(self.work / "gemini-emulator", self.generated, store, manifests),
            cache_redrop=INBOX + CACHE_REDROP,
        )


def run_local(seed: int, plan: Plan, work: Path) -> SeedResult:
    return LocalChaos(seed, plan, work).run()
