"""The local path: the emulator as a process, two ``promptdrop serve`` on one bucket folder and one SQLite
store, one of them SIGKILLed and restarted at random, and when its create is stalled in the emulator or it is
harvesting a job past a checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
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
    fault_figures,
    line_figures,
    promptdrop_command,
    start_emulator,
    tracebacks,
)
from promptdrop.testing.chaos.procs import Child, has_open_file_under, owns_client_port, stalled_create_ports
from promptdrop.testing.chaos.prompts import MODEL, PromptFile, seed_files
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
        self.drops: Counter[str] = Counter()
        self.files = seed_files(seed, short=plan.short)

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
        big = [f for f in self.files if f.name.startswith("big")]
        for folder in (self.bucket / OUTPUTS).glob("big*"):
            images = folder / "images"
            with contextlib.suppress(OSError):
                count = sum(1 for entry in os.scandir(images) if not entry.name.startswith("."))
                total = max(len(f.expected_lines) for f in big)
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
        finally:
            for child in (steady, victim):
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
            "kills": sum(self.kills.values()),
            "kills in create": self.kills["create"],
            "kills mid-harvest": self.kills["harvest"],
            "self exits": steady.unexpected_exits + victim.unexpected_exits,
            **result.figures,
            "seconds": round(time.monotonic() - started, 1),
        }
        return result

    def chaos(self, steady: Child, victim: Child, store: Any, url: str) -> None:
        plan, rng = self.plan, self.rng
        start = time.monotonic()
        # The first files at once, the rest spread out; the re-upload of the first file comes last.
        *files, last = self.files
        again: PromptFile | None = last
        delays = [0.0 if i < 3 else rng.uniform(0.5, 8.0) for i in range(len(files))]
        schedule = sorted(zip(delays, files, strict=True), key=lambda item: item[0])
        next_kill = start + rng.uniform(*plan.kill_gap)
        restart_at: float | None = None
        last_kill = start
        while True:
            now = time.monotonic()
            while schedule and now - start >= schedule[0][0]:
                self.drop(schedule.pop(0)[1])
            runs = self.runs(store)
            if (
                not schedule
                and again is not None
                and any(r.source.object == INBOX + again.name for r in runs)
            ):
                self.drop(again)
                again = None
            for child in (steady, victim):
                if child is victim and restart_at is not None:
                    continue
                if child.check_exit():
                    child.start()
            if restart_at is not None and now >= restart_at:
                victim.start()
                restart_at = None
            kills = sum(self.kills.values())
            reason = None
            if victim.alive and restart_at is None and kills < plan.max_kills and now - last_kill > 1.0:
                if self.mid_harvest(victim):
                    reason = "harvest"
                elif any(owns_client_port(victim.pids(), port) for port in stalled_create_ports(url)):
                    reason = "create"
                elif now >= next_kill and self.kills["random"] < plan.random_kills:
                    reason = "random"
            if reason is not None:
                victim.kill()
                self.kills[reason] += 1
                last_kill = now
                next_kill = now + rng.uniform(*plan.kill_gap)
                restart_at = now + rng.uniform(0.3, 1.5)
            dropped = not schedule and again is None
            all_ended = (
                dropped and len(runs) == sum(self.drops.values()) and all(r.state.terminal for r in runs)
            )
            enough = (
                self.kills["random"] >= plan.random_kills and self.kills["create"] and self.kills["harvest"]
            )
            if dropped and restart_at is None and (all_ended or enough or now - start > plan.chaos_seconds):
                return
            time.sleep(0.05)

    def settle(self, steady: Child, victim: Child, store: Any) -> float:
        """Nothing killed any more: the time until every run ended (bounded by the plan)."""
        start = time.monotonic()
        while time.monotonic() - start < self.plan.settle_seconds:
            for child in (steady, victim):
                if child.check_exit():
                    child.start()
            runs = self.runs(store)
            if len(runs) == sum(self.drops.values()) and all(r.state.terminal for r in runs):
                break
            time.sleep(0.2)
        return time.monotonic() - start

    def snapshot(self, store: Any) -> Snapshot:
        runs = [run_view(run) for run in self.runs(store)]
        manifests: dict[str, list[dict[str, Any]] | None] = {}
        for run in runs:
            path = self.bucket / OUTPUTS / run.run_id / "manifest.jsonl"
            manifests[run.run_id] = (
                [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
                if path.exists()
                else None
            )
        objects = {}
        for folder, _, names in os.walk(self.bucket / OUTPUTS):
            for name in names:  # hidden temporary files included: they are what scratch looks like
                path = Path(folder) / name
                with contextlib.suppress(OSError):
                    objects[path.relative_to(self.bucket).as_posix()] = path.stat().st_size
        return Snapshot(
            drops=dict(self.drops),
            messages={},
            expected_lines={INBOX + f.name: f.expected_lines for f in self.files},
            runs=runs,
            manifests=manifests,
            objects=objects,
            output_prefix=OUTPUTS,
            batch_display_names=batch_display_names(self.work / "gemini-emulator"),
            tracebacks=tracebacks(
                {
                    name: self.logs / f"{name}.log"
                    for name in ("serve-steady", "serve-victim", "gemini-emulator")
                }
            ),
            kills=dict(self.kills),
            required_kills=("create", "harvest"),
        )


def run_local(seed: int, plan: Plan, work: Path) -> SeedResult:
    return LocalChaos(seed, plan, work).run()
