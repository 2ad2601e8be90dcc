"""Poller memory: one tick harvesting 4 runs at once into Cloud Storage, with 1K, 2K and 4K images.

Each case runs in a fresh process (peak RSS = VmHWM of that process) against fake-gcs-server behind a proxy
adding 50 ms per request, as the poller function writes to Cloud Storage. Four finished jobs (one per run)
are harvested concurrently, sharing the tick's image byte budget (PROMPTDROP_HARVEST_MEMORY_BUDGET), with
MALLOC_ARENA_MAX=2 as the deployment sets it; the same without a budget shows what the budget buys.
Images are noise PNGs (they do not compress): 1.5 MB at 1K, 6 MB at 2K, 25 MB at 4K, the upper end of what
the API returns. Prints a Markdown table; exits 1 if a case is over the poller's memory less a 25% margin.

    scripts/bench-memory            # all three sizes (about 4 minutes on 2 cores)
    scripts/bench-memory --quick    # 1K only, fewer images: a check of the script
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The shared benchmark helpers (fake-gcs-server, peak RSS, result lines).
import bench

MiB = 1024 * 1024
RUNS_PER_TICK = 4
POLLER_MEMORY_MB = 2048  # infra/main.tf: the poller's memory
MARGIN = 0.75
# size class -> (image side in pixels, images per run)
SIZES = {"1K": (720, 60), "2K": (1440, 30), "4K": (2880, 16)}


def noise_png(side: int, seed: int) -> bytes:
    from PIL import Image

    pixels = random.Random(seed).randbytes(side * side * 3)
    out = io.BytesIO()
    Image.frombytes("RGB", (side, side), pixels).save(out, format="PNG", compress_level=1)
    return out.getvalue()


def write_results(folder: Path, size: str, images: int) -> tuple[Path, Path, int]:
    """A results file of ``images`` lines (two distinct images alternating) and its key list."""
    side, _ = SIZES[size]
    encoded = [base64.b64encode(noise_png(side, seed)) for seed in (1, 2)]
    folder.mkdir(parents=True, exist_ok=True)
    results, keys = folder / f"results-{size}.jsonl", folder / f"keys-{size}.jsonl"
    with results.open("wb") as out:
        for index in range(images):
            line = bench._result_line(index + 1, f"img-{index:04d}", encoded)  # never an error or refusal
            out.write(line)
    keys.write_bytes(
        b"".join(json.dumps({"key": f"img-{i:04d}", "line": i + 1}).encode() + b"\n" for i in range(images))
    )
    return results, keys, len(encoded[0]) * 3 // 4


def worker(args: dict[str, Any]) -> dict[str, Any]:
    """One tick's worth of harvests: RUNS_PER_TICK finished jobs harvested at once, one context."""
    from promptdrop.records import Job, Run
    from promptdrop.settings import Settings
    from promptdrop.usecases import harvest
    from promptdrop.wiring import build_context

    ctx = build_context(Settings.from_env())
    ctx.backend_factory = bench._harvest_context().backend_factory  # no Files API objects to delete
    keys = Path(args["keys"]).read_bytes()
    work: list[tuple[Run, Job]] = []
    for index in range(RUNS_PER_TICK):
        run_id = f"mem-{index:08d}"
        results = ctx.layout(run_id).job_results(f"{run_id}-a1-c0000")
        ctx.blobs.copy(args["master"], results)
        work.append(bench._terminal_job(ctx, results, keys, run_id))
    start = time.perf_counter()
    with ThreadPoolExecutor(RUNS_PER_TICK) as pool:
        done = list(pool.map(lambda pair: harvest.harvest_job(ctx, pair[0], pair[1], None), work))
    assert all(done)
    return {"seconds": time.perf_counter() - start, "budget_peak_mb": ctx.image_budget.peak / MiB}


def run_case(env: dict[str, str], args: dict[str, Any]) -> dict[str, Any]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(args)]
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("PROMPTDROP_")}
    done = subprocess.run(argv, env={**inherited, **env}, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"worker failed:\n{done.stderr[-4000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1K only, fewer images")
    parser.add_argument("--budget-mb", type=int, default=256, help="PROMPTDROP_HARVEST_MEMORY_BUDGET in MiB")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        figures = worker(json.loads(args.worker))
        figures["peak_rss_mb"] = bench.peak_rss_mb()
        print(json.dumps(figures), flush=True)
        return 0

    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    sizes = ["1K"] if args.quick else list(SIZES)
    work = Path(tempfile.mkdtemp(prefix="promptdrop-bench-memory-"))
    server = bench.FakeGcs(work / "fake-gcs")
    rows: list[dict[str, Any]] = []
    try:
        server.wait_ready()
        client = storage.Client(
            project="bench", credentials=AnonymousCredentials(), client_options={"api_endpoint": server.url}
        )
        bucket = client.create_bucket(bench.BUCKET)
        for size in sizes:
            server.proxy.delay(bench.LATENCY)
            images = SIZES[size][1] // (3 if args.quick else 1)
            results, keys, image_bytes = write_results(work / "data", size, images)
            master = f"bench/results-{size}.jsonl"
            bucket.blob(master).upload_from_filename(
                str(results), content_type="application/jsonl", timeout=600
            )
            for label, budget in (("budget", args.budget_mb * MiB), ("no budget", 1 << 50)):
                home = work / "home"
                shutil.rmtree(home, ignore_errors=True)
                home.mkdir()
                env = {
                    **bench.local_env(home),
                    "STORAGE_EMULATOR_HOST": server.proxy.url,
                    "GOOGLE_CLOUD_PROJECT": "bench",
                    "PROMPTDROP_BUCKET": f"gs://{bench.BUCKET}",
                    "PROMPTDROP_HARVEST_MEMORY_BUDGET": str(budget),
                    "MALLOC_ARENA_MAX": "2",
                }
                bench.log(
                    f"{size}: {RUNS_PER_TICK} runs x {images} images of {image_bytes / MiB:.1f} MB, {label}"
                )
                figures = run_case(env, {"master": master, "keys": str(keys)})
                rows.append(
                    {
                        "size": size,
                        "image_mb": round(image_bytes / MiB, 1),
                        "images": RUNS_PER_TICK * images,
                        "case": label,
                        "peak_rss_mb": round(figures["peak_rss_mb"]),
                        "budget_peak_mb": round(figures["budget_peak_mb"]),
                        "seconds": round(figures["seconds"], 1),
                    }
                )
                bench._empty(bucket, keep=master)
            server.proxy.delay(0)
            bucket.blob(master).delete()
            results.unlink()
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    limit = POLLER_MEMORY_MB * MARGIN
    print(
        f"\npoller memory {POLLER_MEMORY_MB} MB; target: peak RSS under {limit:.0f} MB (25% margin) with the budget\n"
    )
    print("| size | image | images (4 runs) | case | peak RSS | images held (peak) | harvest wall |")
    print("|---|---:|---:|---|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['size']} | {row['image_mb']} MB | {row['images']} | {row['case']} | {row['peak_rss_mb']} MB "
            f"| {row['budget_peak_mb']} MB | {row['seconds']} s |"
        )
    Path(".bench").mkdir(exist_ok=True)
    Path(".bench/memory.json").write_text(json.dumps(rows, indent=2))
    missed = [row for row in rows if row["case"] == "budget" and row["peak_rss_mb"] > limit]
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
