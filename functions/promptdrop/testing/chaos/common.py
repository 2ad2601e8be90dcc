"""What both chaos paths share: the faulty Gemini emulator, the kill budget, the figures of a seed."""

from __future__ import annotations

import io
import os
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from PIL import Image

from promptdrop.emulator.options import WEBHOOK_SECRET_ENV
from promptdrop.ports import JobStore
from promptdrop.testing.chaos.checks import Billing, Miss, count_tracebacks, first_exception, now_requests
from promptdrop.testing.chaos.procs import Child, emulator_stats, wait_http
from promptdrop.testing.chaos.prompts import (
    CACHE_REDROP,
    PromptFile,
    big_file,
    big_lines,
    cache_redrop,
    mixed_file,
)
from promptdrop.testing.cloud import free_port

REPO = Path(__file__).resolve().parents[4]
API_KEY = "promptdrop-chaos-key"
# ~10% of calls on every route the emulator may fault: errors, and stalls longer than a lease.
FAULT_RATE = 0.08
STALL_RATE = 0.02
# An extra share of creates stall, so that some kills land while a create is still to land.
CREATE_STALL_RATE = 0.3
# Webhook deliveries (Cloud path) the emulator never sends, and those it sends twice.
WEBHOOK_DROP_RATE = 0.2
WEBHOOK_DUPLICATE_RATE = 0.3
# The emulator's Files API routes (uploads, results downloads, file get/list/delete): never called on Vertex AI.
FILES_API_ROUTES = ("upload", "download", "file_get", "file_list", "file_delete")
# Files dropped at most once the planned ones ended: the pay-once cache's re-drop, then files for the kills
# aimed at harvests and creates that did not hit yet.
MAX_EXTRA_FILES = 4


@dataclass(frozen=True, slots=True)
class Plan:
    """How hard one seed pushes."""

    short: bool
    stall_seconds: float
    lease_seconds: float
    random_kills: int  # kills at random moments (beside those aimed at creates and harvests)
    harvest_kills: int  # kills aimed at harvests, at most (they leave room for the others)
    max_kills: int  # all kills together
    kill_gap: tuple[float, float]  # seconds between random kills
    chaos_seconds: float  # the longest the kill phase lasts
    settle_seconds: float  # then, the longest every run may take to end with nothing killed
    # How long after a create's timeout it may still land (PROMPTDROP_CREATE_MARGIN). The emulator lands a
    # stalled create stall_seconds after it came, before the client's timeout (stall + 2 s), so a few
    # seconds are safe; a longer margin only slows runs whose create was ambiguous.
    create_margin: float

    @classmethod
    def for_mode(cls, *, short: bool) -> Plan:
        if short:
            return cls(True, 4.0, 3.0, 3, 2, 8, (2.0, 5.0), 45.0, 120.0, 10.0)
        return cls(False, 6.0, 4.0, 6, 4, 16, (3.0, 8.0), 150.0, 180.0, 30.0)


@dataclass
class SeedResult:
    path: str
    seed: int
    figures: dict[str, object] = field(default_factory=dict)
    misses: list[Miss] = field(default_factory=list)


def due_cache_redrop(extras: list[PromptFile], first: PromptFile) -> PromptFile | None:
    """The pay-once cache's re-drop of ``first`` (appended to ``extras``) if it was not dropped yet."""
    if any(extra.name == CACHE_REDROP for extra in extras):
        return None
    extras.append(cache_redrop(first))
    return extras[-1]


def extra_file(
    rng: random.Random, kills: Counter[str], extras: list[PromptFile], *, short: bool, first: PromptFile
) -> PromptFile | None:
    """Every run ended: first the pay-once cache's re-drop of ``first`` (its requests were all paid for by
    now), then, while no kill hit a harvest or a stalled create, one more file for it (appended to
    ``extras``); None when both were hit or the extras are used up."""
    redrop = due_cache_redrop(extras, first)
    if redrop is not None:
        return redrop
    if len(extras) >= MAX_EXTRA_FILES:
        return None
    number = len(extras) + 1
    # Fresh: their prompts may repeat earlier ones (the same seeded sequence), and the kills they are for need
    # a harvest and creates to aim at, not lines served from the pay-once cache.
    if not kills["harvest"]:
        extra = big_file(rng, f"big-extra-{number}.jsonl", big_lines(short=short), fresh=True)
    elif not kills["create"]:
        extra = mixed_file(rng, f"mixed-extra-{number}.jsonl", 6, fresh=True)
    else:
        return None
    extras.append(extra)
    return extra


def promptdrop_command() -> list[str]:
    """The ``promptdrop`` console script of this interpreter's environment."""
    script = Path(sys.executable).parent / "promptdrop"
    return (
        [str(script)]
        if script.exists()
        else [sys.executable, "-c", "from promptdrop.cli import main; main()"]
    )


def base_env() -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PROMPTDROP_", "GEMINI_", "GOOGLE_API_KEY", "K_SERVICE"))
    }
    env.update(NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost", PYTHONUNBUFFERED="1")
    return env


def start_emulator(
    work: Path, seed: int, plan: Plan, *, webhook_url: str | None = None, webhook_secret: str = ""
) -> tuple[Child, str]:
    """The Gemini emulator as its own process, faulting and stalling every route (create included).

    With ``webhook_url`` it also delivers each batch's end there, signed with ``webhook_secret``, dropping
    and duplicating some deliveries (the poller is the net for the dropped ones).
    """
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "promptdrop.emulator",
        "--port",
        str(port),
        "--data-dir",
        str(work / "gemini-emulator"),
        "--pending-seconds",
        "0.3",
        "--running-seconds",
        "0.7",
        "--image-scale",
        "0.0625",
        "--fault-rate",
        str(FAULT_RATE),
        "--stall-rate",
        str(STALL_RATE),
        "--create-stall-rate",
        str(CREATE_STALL_RATE),
        "--stall-seconds",
        str(plan.stall_seconds),
        "--fault-routes",
        "all",
        "--fault-seed",
        str(seed),
    ]
    env = base_env()
    if webhook_url:
        argv += [
            "--webhook-url",
            webhook_url,
            "--webhook-drop-rate",
            str(WEBHOOK_DROP_RATE),
            "--webhook-duplicate-rate",
            str(WEBHOOK_DUPLICATE_RATE),
        ]
        env[WEBHOOK_SECRET_ENV] = webhook_secret  # never on the command line
    child = Child("gemini-emulator", argv, env, work / "logs" / "gemini-emulator.log", REPO).start()
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/health", time.monotonic() + 30, child)
    return child, url


def batch_display_names(emulator_dir: Path) -> list[str | None]:
    """The display name of every batch job the emulator's data folder holds."""
    names: list[str | None] = []
    for path in sorted((emulator_dir / "batches").glob("*.json")):
        if not path.name.startswith("."):
            record = orjson.loads(path.read_bytes())
            names.append(record.get("display_name"))
    return names


def batches_billed(emulator_dir: Path) -> dict[str, int]:
    """Display name -> requests answered (billed) in the emulator's batches of that name that ran."""
    billed: Counter[str] = Counter()
    for path in sorted((emulator_dir / "batches").glob("*.json")):
        if not path.name.startswith("."):
            record = orjson.loads(path.read_bytes())
            answered = int(record.get("succeeded") or 0) + int(record.get("failed") or 0)
            if answered:
                billed[str(record.get("display_name"))] += answered
    return dict(billed)


def generate_counts(url: str) -> tuple[int, int, int]:
    """generateContent calls the emulator answered, those whose caller had gone, and those it stalled: read
    before it stops."""
    stats = emulator_stats(url)
    cut, stalled = stats.get("cut_by_route"), stats.get("stalls_by_route")
    return (
        int(str(stats.get("generated", 0))),
        int(cut.get("generate", 0)) if isinstance(cut, dict) else 0,
        int(stalled.get("generate", 0)) if isinstance(stalled, dict) else 0,
    )


# What a worker logs when a write under the run's lease failed because another worker had taken it over.
_LEASE_LOST = re.compile(r"stopped: job (\S+): the run's lease is not held by")


def lease_lost_jobs(logs: Iterable[Path]) -> set[str]:
    """Job ids whose worker logged that it lost the run's lease while working on them."""
    lost: set[str] = set()
    for path in logs:
        if path.exists():
            lost.update(_LEASE_LOST.findall(path.read_text(errors="replace")))
    return lost


def billing(
    emulator_dir: Path,
    generated: tuple[int, int, int],
    store: JobStore,
    manifests: Mapping[str, list[dict[str, Any]] | None],
    lease_lost: set[str] | None = None,
) -> Billing:
    """What the emulator billed, and the distinct requests of every run's jobs and now lines.

    ``lease_lost``: job ids whose worker lost the run's lease (``lease_lost_jobs``); the sends beyond a line's
    first in those now chunks are counted apart.
    """
    jobs = [job for run in store.list_runs(limit=10_000) for job in store.list_jobs(run.run_id)]
    resent = sum(
        max(0, sends - 1)
        for job in jobs
        if job.lane == "now" and job.job_id in (lease_lost or set())
        for sends in job.now_sends.values()
    )
    return Billing(
        batches_billed(emulator_dir),
        {job.job_id: job.request_count for job in jobs if job.lane == "batch"},
        *generated,
        now_requests=now_requests(manifests),
        now_resent_after_lease_loss=resent,
    )


def tracebacks(logs: dict[str, Path]) -> tuple[dict[str, int], dict[str, str]]:
    """Tracebacks per log, and the exception line of each log's first one."""
    counts: dict[str, int] = {}
    examples: dict[str, str] = {}
    for name, path in logs.items():
        text = path.read_text(errors="replace") if path.exists() else ""
        counts[name] = count_tracebacks(text)
        example = first_exception(text)
        if example:
            examples[name] = example
    return counts, examples


def files_api_calls(url: str) -> dict[str, int]:
    """Calls that reached the emulator's Files API routes (faulted ones too), by route: read before it stops."""
    calls = emulator_stats(url).get("calls_by_route")
    counts = calls if isinstance(calls, dict) else {}
    return {route: int(counts.get(route, 0)) for route in FILES_API_ROUTES}


def fault_figures(url: str) -> dict[str, object]:
    stats = emulator_stats(url)
    by_route = stats.get("stalls_by_route")
    return {
        "api faults": stats.get("faults", "?"),
        "api stalls": stats.get("stalls", "?"),
        "stalled creates": by_route.get("create", 0) if isinstance(by_route, dict) else "?",
    }


def line_figures(manifests: dict[str, list[dict[str, object]] | None]) -> dict[str, object]:
    statuses: Counter[str] = Counter()
    for entries in manifests.values():
        statuses.update(str(entry.get("status")) for entry in entries or [])
    return {
        "lines": sum(statuses.values()),
        "succeeded": statuses["succeeded"],
        "failed": statuses["failed"],
        "invalid": statuses["invalid"],
        "cached": sum("cached_from" in entry for entries in manifests.values() for entry in entries or []),
    }


def decodes(data: bytes | None) -> bool:
    """The bytes are a whole image (Pillow decodes every pixel); None (no such object) is not."""
    if data is None:
        return False
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except (OSError, ValueError, Image.DecompressionBombError):
        return False
    return True


def cached_images(
    manifests: Mapping[str, list[dict[str, Any]] | None], read: Callable[[str], bytes | None]
) -> dict[str, bool]:
    """Image name -> whether it decodes, for every line served from the pay-once cache."""
    return {
        str(entry.get("image")): decodes(read(str(entry.get("image"))))
        for entries in manifests.values()
        for entry in entries or []
        if "cached_from" in entry
    }


def write_stuck_runs(store: JobStore, path: Path) -> int:
    """Every run not ended, with its jobs, as JSON at ``path`` (what to read when "every run terminal" misses).

    Returns how many runs were written; nothing is written when every run ended.
    """
    stuck = [
        {
            "run": run.model_dump(mode="json"),
            "jobs": [job.model_dump(mode="json") for job in store.list_jobs(run.run_id)],
        }
        for run in store.list_runs(limit=10_000)
        if not run.state.terminal
    ]
    if stuck:
        path.write_bytes(orjson.dumps({"written_at": time.time(), "runs": stuck}, option=orjson.OPT_INDENT_2))
    return len(stuck)
