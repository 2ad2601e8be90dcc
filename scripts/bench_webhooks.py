"""Webhooks vs polling: seconds from a batch job's end to its run's summary.json, and batches.get calls per job.

Local path (SQLite store, a local folder as the bucket) against the bundled emulator in-process. Each mode
submits N prompt files spread evenly over one poller interval (so the jobs end at every phase of the tick
cycle); every batch stays PENDING+RUNNING for ``--job-seconds``.

- webhooks: the emulator POSTs a signed batch event to a WebhookListener whose handler is the same
  ``usecases.webhook.deliver`` the Cloud function calls; a poller ticks at ``--tick`` seconds as the
  net, with PROMPTDROP_WEBHOOKS=on (it polls a job only every PROMPTDROP_WEBHOOK_POLL_SECONDS, default 900).
- polling: PROMPTDROP_WEBHOOKS=off, the poller ticks every ``--tick`` seconds (`serve`'s default, 10 s).

A job's end is the emulator's own end time; the summary's time is the run's ``finished_at`` (set when
summary.json is written). ``batches.get`` calls are counted by the emulator (GET /stats, calls_by_route).
Prints a Markdown table and writes .bench/webhooks.json.
"""

from __future__ import annotations

import argparse
import base64
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from promptdrop.adapters.webhook_listener import WebhookListener
from promptdrop.emulator.engine import Engine
from promptdrop.events import StorageObject
from promptdrop.settings import Settings
from promptdrop.testing.emulator import running_emulator
from promptdrop.usecases import poll, receive, webhook
from promptdrop.webhooks import Verifier
from promptdrop.wiring import build_context

SECRET = "whsec_" + base64.b64encode(b"bench-webhooks-secret-000000000").decode()


def one_mode(root: Path, mode: str, files: int, job_seconds: float, tick: float) -> dict[str, Any]:
    home = root / mode
    options: dict[str, Any] = {"pending_seconds": job_seconds / 2, "running_seconds": job_seconds / 2}
    # The listener binds first (the emulator must know its URL); its handler needs the context built after.
    handlers: list[Any] = []
    hook_listener = WebhookListener(lambda body, headers: handlers[0](body, headers), max_bytes=64 * 1024)
    if mode == "webhooks":
        options.update(webhook_urls=(hook_listener.url,), webhook_secret=SECRET)
    with running_emulator(home / "emulator", **options) as emulator:
        settings = Settings.from_env(
            {},
            home=str(home),
            backend="emulator",
            gemini_base_url=emulator.url,
            thumbnails=False,
            webhooks="on" if mode == "webhooks" else "off",
            webhook_secret=SECRET,
        )
        ctx = build_context(settings)
        verifier = Verifier(SECRET)

        def handle(body: bytes, headers: Any) -> tuple[int, str]:
            reply = webhook.deliver(ctx, verifier, body, headers)
            return reply.status, reply.message

        handlers.append(handle)
        hook_listener.start()
        stop = threading.Event()

        def poller() -> None:
            while not stop.wait(tick):
                poll.tick(ctx)

        thread = threading.Thread(target=poller, daemon=True)
        thread.start()
        started = time.monotonic()
        run_ids = []
        gets_before = emulator.server.stats()["calls_by_route"].get("get", 0)  # type: ignore[union-attr]
        for n in range(files):
            # Submissions spread evenly over one tick, so the jobs end at every phase of the poller's cycle
            # (as real jobs do) instead of all just before or just after one tick.
            time.sleep(max(0.0, started + (n + 0.5) * tick / files - time.monotonic()))
            name = f"{settings.inbox_prefix}bench-{n}.txt"
            ctx.blobs.write_bytes(name, b"a red kite\na blue boat\n")
            info = ctx.blobs.stat(name)
            assert info is not None
            receipt = receive.receive_file(
                ctx, StorageObject(settings.bucket_name, name, info.generation, info.size)
            )
            assert receipt.run is not None
            run_ids.append(receipt.run.run_id)
        deadline = time.monotonic() + job_seconds + 10 * tick + 60
        while time.monotonic() < deadline:
            runs = [ctx.store.get_run(run_id) for run_id in run_ids]
            if all(run is not None and run.state.terminal for run in runs):
                break
            time.sleep(0.05)
        stop.set()
        thread.join()
        hook_listener.close()
        gets = emulator.server.stats()["calls_by_route"].get("get", 0) - gets_before  # type: ignore[operator]
        engine: Engine = emulator.server._engine  # type: ignore[assignment]
        delays = []
        jobs = 0
        for run_id in run_ids:
            run = ctx.store.get_run(run_id)
            assert run is not None and run.state.value == "SUCCEEDED", run
            assert run.finished_at is not None
            for job in ctx.store.list_jobs(run_id):
                jobs += 1
                batch = engine.get_batch(str(job.batch_name).removeprefix("batches/"))
                assert batch.end_time is not None
                delays.append(run.finished_at - batch.end_time)
    return {
        "mode": mode,
        "runs": files,
        "jobs": jobs,
        "median_seconds_end_to_summary": statistics.median(delays),
        "max_seconds_end_to_summary": max(delays),
        "batches_get_per_job": gets / jobs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5, help="prompt files (one job each) per mode (5)")
    parser.add_argument("--job-seconds", type=float, default=30.0, help="how long each batch runs (30)")
    parser.add_argument("--tick", type=float, default=10.0, help="poller interval, `serve`'s default (10)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-webhooks-") as tmp:
        results = [
            one_mode(Path(tmp), mode, args.runs, args.job_seconds, args.tick)
            for mode in ("webhooks", "polling")
        ]
    hooks, polling = results
    print("| mode | runs | median s job end -> summary.json | max s | batches.get per job |")
    print("|---|---|---|---|---|")
    for row in results:
        print(
            f"| {row['mode']} | {row['runs']} | {row['median_seconds_end_to_summary']:.2f} | "
            f"{row['max_seconds_end_to_summary']:.2f} | {row['batches_get_per_job']:.1f} |"
        )
    latency_ratio = polling["median_seconds_end_to_summary"] / max(
        hooks["median_seconds_end_to_summary"], 1e-9
    )
    gets_ratio = polling["batches_get_per_job"] / max(hooks["batches_get_per_job"], 1e-9)
    print(
        f"\npolling every {args.tick:g} s / webhooks: {latency_ratio:.1f}x the delay, {gets_ratio:.1f}x the "
        f"batches.get calls per job (jobs ran {args.job_seconds:g} s; the Cloud tick is every 120 s, where "
        "polling waits 60 s on average)"
    )
    out = Path(".bench")
    out.mkdir(exist_ok=True)
    (out / "webhooks.json").write_bytes(
        orjson.dumps(
            {
                "args": vars(args),
                "results": results,
                "latency_ratio": latency_ratio,
                "gets_ratio": gets_ratio,
            },
            option=orjson.OPT_INDENT_2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
