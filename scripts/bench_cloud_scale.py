"""Section ``cloud-scale`` of scripts/bench: a big prompt file through the Cloud path on this machine.

The local Cloud stack of ``scripts/cloud-local`` (Firestore and Pub/Sub emulators, fake-gcs-server, the
functions under functions-framework, one process each, the Eventarc bridge and a scheduler tick every 3 s,
webhooks on) with the bundled Gemini emulator drawing images at 1/16 scale. The functions reach Firestore,
Pub/Sub and Cloud Storage through counting TCP proxies (HTTP/1.1 requests; gRPC calls as the HTTP/2
HEADERS frames that open a stream), so every request a function makes is counted; the harness's own
clients (the upload, the bridge, this script's polling of the run) go straight to the servers and are not.

A file of ``--cloud-lines`` lines is dropped into the inbox, followed to its end, then dropped again with
1% of its lines edited (the pay-once cache serves the other 99%). Phases are seen from outside, by polling
the run's records every 0.25 s: claim + submit (drop to SUBMITTED), launch (to every job created), batch
and harvest (to every job done), settle (to the run's end); for the re-drop, the cache decision.

    scripts/bench --only cloud-scale                           # 2,000 lines
    scripts/bench --only cloud-scale --cloud-lines 5000
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from promptdrop.testing.counting_proxy import CountingProxy

PROJECT, BUCKET = "bench-project", "promptdrop-bench-scale"
IMAGE_SCALE = 0.0625
TICK_SECONDS = 3.0
EDITED_FRACTION = 0.01


def _edited(lines: list[bytes], fraction: float) -> list[bytes]:
    """The same file with ``fraction`` of its prompt lines given a new prompt (a new request to pay for)."""
    rng = random.Random(25)
    out = list(lines)
    prompts = [i for i, raw in enumerate(lines) if b'"prompt"' in raw]
    for index in rng.sample(prompts, max(1, int(len(prompts) * fraction))):
        item = json.loads(out[index])
        item["prompt"] += " (edited)"
        out[index] = json.dumps(item).encode()
    return out


def _group_peak_mb(pid: int) -> float:
    """The largest VmHWM among the processes of ``pid``'s process group (a function's server and workers)."""
    peak = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != pid:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
    return peak


class Follower:
    """Polls the run's records (straight to Firestore, not counted) and notes when each phase ended."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def follow(self, known: set[str], began: float, timeout: float) -> tuple[Any, dict[str, float]]:
        from promptdrop.states import JobPhase, RunState

        seen: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = [r for r in self.store.list_runs(list(RunState)) if r.run_id not in known]
            if runs:
                run = runs[0]
                now = time.perf_counter() - began
                seen.setdefault("received", now)
                if run.state is not RunState.RECEIVED:
                    seen.setdefault("submitted", now)
                jobs = [j for j in self.store.list_jobs(run.run_id) if j.lane == "batch"]
                if jobs and all(j.phase not in (JobPhase.QUEUED, JobPhase.CREATING) for j in jobs):
                    seen.setdefault("launched", now)
                if jobs and any(j.phase in (JobPhase.HARVESTING, JobPhase.DONE) for j in jobs):
                    seen.setdefault("first_harvest", now)
                if jobs and all(j.phase is JobPhase.DONE for j in jobs):
                    seen.setdefault("jobs_done", now)
                if run.state.terminal:
                    seen.setdefault("submitted", now)
                    seen.setdefault("launched", seen["submitted"])
                    seen.setdefault("jobs_done", now)
                    seen["ended"] = now
                    return run, seen
            time.sleep(0.25)
        raise RuntimeError(f"the run did not end within {timeout:.0f} s: {seen}")


def bench_cloud_scale(
    work: Path, lines: int, write_prompt_file: Callable[[Path, int], None], log: Callable[[str], None]
) -> dict[str, Any]:
    """Drop, follow, re-drop with 1% edited; phases, invocations, requests per service, peak memory."""
    from google.cloud import storage

    from promptdrop.testing import cloud_local, eventarc
    from promptdrop.testing.cloud import CloudEndpoints
    from promptdrop.testing.counting_proxy import CountingProxy

    work.mkdir(parents=True, exist_ok=True)
    prompts = work / f"cloud-scale-{lines}.jsonl"
    write_prompt_file(prompts, lines)
    original = prompts.read_bytes().splitlines()
    edited = b"\n".join(_edited(original, EDITED_FRACTION)) + b"\n"

    proxies: dict[str, CountingProxy] = {}

    def through_proxies(endpoints: CloudEndpoints) -> CloudEndpoints:
        def proxied(name: str, host_port: str) -> str:
            host, _, port = host_port.rpartition(":")
            proxies[name] = CountingProxy(name, (host, int(port)))
            return f"127.0.0.1:{proxies[name].port}"

        storage_host = endpoints.storage_url.removeprefix("http://")
        return replace(
            endpoints,
            firestore_host=proxied("firestore", endpoints.firestore_host),
            pubsub_host=proxied("pubsub", endpoints.pubsub_host),
            storage_url="http://" + proxied("storage", storage_host),
        )

    invocations: Counter[str] = Counter()
    invocation_seconds: Counter[str] = Counter()
    original_post = eventarc.post

    def counted_post(url: str, event: Any) -> int:
        began = time.perf_counter()
        try:
            return original_post(url, event)
        finally:
            target = targets.get(url, url)
            invocations[target] += 1
            invocation_seconds[target] += time.perf_counter() - began

    targets: dict[str, str] = {}
    eventarc.post = counted_post  # type: ignore[assignment]
    state_dir = work / "cloud-scale-state"
    # fake-gcs-server's objects as files on a tmpfs: its memory backend slows with every object the bucket
    # holds (LocalCloud), which at 20,000 lines, 40,000 images and thumbnails, was most of the harvest.
    shm = Path("/dev/shm")  # noqa: S108 - a folder of our own in it, removed afterwards
    storage_root = shm / f"promptdrop-cloud-scale-{os.getpid()}" if shm.is_dir() else work / "fake-gcs"
    figures: dict[str, Any] = {"lines": lines}
    try:
        with cloud_local.local_cloud(
            PROJECT,
            BUCKET,
            state_dir,
            TICK_SECONDS,
            image_scale=IMAGE_SCALE,
            functions_reach=through_proxies,
            storage_root=storage_root,
        ) as stack:
            targets.update({url: target for target, url in stack.function_urls.items()})
            os.environ.update(stack.user_env())
            os.environ.update(
                {
                    "PROMPTDROP_BACKEND": "gemini",
                    "GEMINI_API_KEY": "unused",
                    "PROMPTDROP_GEMINI_BASE_URL": stack.gemini_url,
                }
            )
            from promptdrop.settings import Settings
            from promptdrop.wiring import build_context

            store = build_context(Settings.from_env()).store
            follower = Follower(store)
            bucket = storage.Client(project=PROJECT).bucket(BUCKET)
            for name, data in (("first", b"\n".join(original) + b"\n"), ("redrop", edited)):
                before = _snapshot(proxies, invocations, invocation_seconds, stack.gemini_url)
                known = {r.run_id for r in store.list_runs()}
                began = time.perf_counter()
                bucket.blob(f"inbox/{prompts.name}").upload_from_string(
                    data, content_type="application/jsonl"
                )
                run, seen = follower.follow(known, began, timeout=max(600.0, lines * 0.2))
                time.sleep(TICK_SECONDS + 1)  # the requests of the run's last tick are counted too
                after = _snapshot(proxies, invocations, invocation_seconds, stack.gemini_url)
                figures[name] = {
                    "seen": {k: round(v, 2) for k, v in seen.items()},
                    "state": run.state.value,
                    "counts": {
                        "lines": run.counts.lines,
                        "succeeded": run.counts.succeeded,
                        "cached": run.cost.cached,
                    },
                    "jobs": len([j for j in store.list_jobs(run.run_id) if j.lane == "batch"]),
                    **_difference(before, after),
                }
                log(f"  {name}: {run.state.value} in {seen['ended']:.1f} s; {json.dumps(figures[name])}")
            figures["peak_rss_mb"] = _function_peaks(stack.function_urls)
    finally:
        eventarc.post = original_post  # type: ignore[assignment]
        for proxy in proxies.values():
            proxy.stop()
        shutil.rmtree(storage_root, ignore_errors=True)
    return figures


def _function_peaks(urls: dict[str, str]) -> dict[str, float]:
    """Peak RSS of each function's process group (functions-framework's server and its worker)."""
    leaders: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if b"functions_framework" not in argv or b"--target" not in argv:
                continue
            target = argv[argv.index(b"--target") + 1].decode()
            port = argv[argv.index(b"--port") + 1].decode()
            if urls.get(target, "").rstrip("/").endswith(f":{port}"):
                # Its process group: the server and the worker it forked share the command line.
                leaders[target] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2])
    return {target: round(_group_peak_mb(pid), 1) for target, pid in sorted(leaders.items())}


def _snapshot(
    proxies: dict[str, CountingProxy], invocations: Counter[str], seconds: Counter[str], gemini_url: str
) -> dict[str, Any]:
    with urllib.request.urlopen(f"{gemini_url}/stats", timeout=10) as answer:  # noqa: S310 - loopback
        gemini = json.loads(answer.read())
    return {
        "requests": {name: p.requests for name, p in proxies.items()},
        "kinds": {name: dict(p.kinds) for name, p in proxies.items()},
        "gemini": dict(gemini.get("calls_by_route", {})),
        "webhooks_delivered": int(gemini.get("webhooks", {}).get("delivered", 0)),
        "invocations": dict(invocations),
        "invocation_seconds": dict(seconds),
    }


def _difference(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    def minus(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        return {k: round(v - b.get(k, 0), 2) for k, v in a.items() if v - b.get(k, 0)}

    return {
        "requests": minus(after["requests"], before["requests"]),
        "kinds": {
            name: minus(after["kinds"][name], before["kinds"].get(name, {})) for name in after["kinds"]
        },
        "gemini": minus(after["gemini"], before["gemini"]),
        "webhooks_delivered": after["webhooks_delivered"] - before["webhooks_delivered"],
        "invocations": minus(after["invocations"], before["invocations"]),
        "invocation_seconds": minus(after["invocation_seconds"], before["invocation_seconds"]),
    }


def table(figures: dict[str, Any]) -> str:
    """Markdown: phases, invocations and requests per 1,000 lines for the drop and the re-drop."""
    lines = figures["lines"]
    first, redrop = figures["first"], figures["redrop"]

    def phases(seen: dict[str, float]) -> list[tuple[str, float]]:
        return [
            ("claim + submit (drop to SUBMITTED)", seen["submitted"]),
            ("launch (to every job created)", seen["launched"] - seen["submitted"]),
            ("batch at the emulator and harvest (to every job done)", seen["jobs_done"] - seen["launched"]),
            ("settle (to the run's end)", seen["ended"] - seen["jobs_done"]),
            ("**whole run**", seen["ended"]),
        ]

    rows = [
        f"Local Cloud stack, {lines:,} lines (images at 1/16 scale, tick every {TICK_SECONDS:.0f} s); "
        f"then the same file with {EDITED_FRACTION:.0%} of its lines edited",
        "",
        "| phase | drop (s) | re-drop (s) |",
        "|---|---:|---:|",
    ]
    for (name, a), (_, b) in zip(phases(first["seen"]), phases(redrop["seen"]), strict=True):
        rows.append(f"| {name} | {a:.1f} | {b:.1f} |")
    rows.append(
        f"| lines served from the cache / batch jobs | {first['counts']['cached']} / {first['jobs']} "
        f"| {redrop['counts']['cached']} / {redrop['jobs']} |"
    )
    for name in sorted(set(first["invocations"]) | set(redrop["invocations"])):
        rows.append(
            f"| invocations of {name} (seconds in them) | {first['invocations'].get(name, 0):.0f} "
            f"({first['invocation_seconds'].get(name, 0):.1f}) | {redrop['invocations'].get(name, 0):.0f} "
            f"({redrop['invocation_seconds'].get(name, 0):.1f}) |"
        )
    rows.append(
        f"| webhook deliveries to on_batch_webhook | {first['webhooks_delivered']} | {redrop['webhooks_delivered']} |"
    )
    per = 1000 / lines
    for service in ("firestore", "pubsub", "storage"):
        rows.append(
            f"| {service} requests per 1,000 lines | {first['requests'].get(service, 0) * per:,.0f} "
            f"| {redrop['requests'].get(service, 0) * per:,.0f} |"
        )
    gemini_first, gemini_redrop = sum(first["gemini"].values()), sum(redrop["gemini"].values())
    rows.append(f"| Gemini API calls (all routes) | {gemini_first:.0f} | {gemini_redrop:.0f} |")
    peaks = ", ".join(f"{k} {v:.0f} MB" for k, v in figures.get("peak_rss_mb", {}).items())
    rows += ["", f"Peak RSS per function process group over both runs: {peaks}."]
    return "\n".join(rows)
