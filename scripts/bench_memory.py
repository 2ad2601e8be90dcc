"""Poller memory: one tick harvesting several runs at once into Cloud Storage, under the tick's byte budget.

Each case runs in a fresh process (peak RSS = VmHWM of that process) against fake-gcs-server behind a proxy
adding 50 ms per request, as the poller function writes to Cloud Storage. Finished jobs (one per run) are
harvested concurrently (PROMPTDROP_TICK_CONCURRENCY = the number of runs), sharing the tick's byte budget
(PROMPTDROP_HARVEST_MEMORY_BUDGET), with MALLOC_ARENA_MAX=2 as the deployment sets it; the same without a
budget shows what the budget buys. Images are noise PNGs (they do not compress): 1.5 MB at 1K, 6 MB at 2K,
25 MB at 4K, the upper end of what the API returns. Two tables, medians of ``--repeat`` fresh processes:

- sizes: 4 runs of 1K, 2K and 4K images, with the 256 MiB budget and without one;
- scaling: 4K images, peak RSS against the budget (128 / 256 / 512 MiB, none) and the runs of a tick (1, 4, 8).

Exits 1 if a budgeted case of the sizes table is over the poller's memory less a 25% margin.

    scripts/bench-memory                      # both tables, 3 runs each (about 25 minutes on 2 cores)
    scripts/bench-memory --repeat 1           # one run each
    scripts/bench-memory --quick              # 1K only, fewer images: a check of the script
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The shared benchmark helpers (fake-gcs-server, peak RSS, result lines).
import bench

MiB = 1024 * 1024
RUNS_PER_TICK = 4  # PROMPTDROP_TICK_CONCURRENCY's default
POLLER_MEMORY_MB = 2048  # infra/main.tf: the poller's memory
MARGIN = 0.75
NO_BUDGET = 1 << 50
# size class -> (image side in pixels, images per run)
SIZES = {"1K": (720, 60), "2K": (1440, 30), "4K": (2880, 16)}
SCALING_SIZE = "4K"
SCALING_IMAGES = 8  # per run: 8 runs of 8 images are 1.5 GB of images
SCALING_BUDGETS_MB = (128, 256, 512, None)
SCALING_RUNS = (1, 4, 8)


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
    """One tick's worth of harvests: ``runs`` finished jobs harvested at once, one context."""
    from promptdrop.records import Job, Run
    from promptdrop.settings import Settings
    from promptdrop.usecases import harvest
    from promptdrop.wiring import build_context

    ctx = build_context(Settings.from_env())
    ctx.backend_factory = bench._harvest_context().backend_factory  # no Files API objects to delete
    keys = Path(args["keys"]).read_bytes()
    runs = int(args["runs"])
    work: list[tuple[Run, Job]] = []
    for index in range(runs):
        run_id = f"mem-{index:08d}"
        results = ctx.layout(run_id).job_results(f"{run_id}-a1-c0000")
        ctx.blobs.copy(args["master"], results)
        work.append(bench._terminal_job(ctx, results, keys, run_id))
    threads = ThreadCount()
    start = time.perf_counter()
    with threads, ThreadPoolExecutor(runs) as pool:
        done = list(pool.map(lambda pair: harvest.harvest_job(ctx, pair[0], pair[1], None), work))
    assert all(done)
    assert ctx.image_budget is not None
    return {
        "seconds": time.perf_counter() - start,
        "budget_peak_mb": ctx.image_budget.peak / MiB,
        "threads": threads.peak,
    }


class ThreadCount:
    """The most threads the process had at once while the block ran (sampled every 20 ms)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, threading.active_count())

    def __enter__(self) -> ThreadCount:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_case(env: dict[str, str], args: dict[str, Any]) -> dict[str, Any]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(args)]
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("PROMPTDROP_")}
    done = subprocess.run(argv, env={**inherited, **env}, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"worker failed:\n{done.stderr[-4000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


class Bench:
    """fake-gcs-server behind the latency proxy, a bucket, and one results file per size in it."""

    def __init__(self, work: Path) -> None:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        self.work = work
        self.server = bench.FakeGcs(work / "fake-gcs")
        self.server.wait_ready()
        client = storage.Client(
            project="bench",
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": self.server.url},
        )
        self.bucket = client.create_bucket(bench.BUCKET)

    def results(self, size: str, images: int) -> tuple[str, Path, int]:
        """The master results file of ``images`` lines in the bucket, its key list, and the image size."""
        results, keys, image_bytes = write_results(self.work / "data", size, images)
        master = f"bench/results-{size}-{images}.jsonl"
        self.bucket.blob(master).upload_from_filename(
            str(results), content_type="application/jsonl", timeout=600
        )
        results.unlink()
        return master, keys, image_bytes

    def case(self, master: str, keys: Path, runs: int, budget_mb: int | None) -> dict[str, Any]:
        home = self.work / "home"
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir()
        env = {
            **bench.local_env(home),
            "STORAGE_EMULATOR_HOST": self.server.proxy.url,
            "GOOGLE_CLOUD_PROJECT": "bench",
            "PROMPTDROP_BUCKET": f"gs://{bench.BUCKET}",
            "PROMPTDROP_HARVEST_MEMORY_BUDGET": str(NO_BUDGET if budget_mb is None else budget_mb * MiB),
            "PROMPTDROP_TICK_CONCURRENCY": str(runs),
            "MALLOC_ARENA_MAX": "2",
        }
        self.server.proxy.delay(bench.LATENCY)
        try:
            return run_case(env, {"master": master, "keys": str(keys), "runs": runs})
        finally:
            self.server.proxy.delay(0)
            bench._empty(self.bucket, keep=master)

    def stop(self) -> None:
        self.server.stop()


def measure(
    b: Bench, master: str, keys: Path, runs: int, budget_mb: int | None, repeat: int, label: str
) -> dict[str, Any]:
    """Medians of ``repeat`` fresh processes of one case."""
    figures = []
    for attempt in range(repeat):
        bench.log(f"{label}, run {attempt + 1}/{repeat}")
        figures.append(b.case(master, keys, runs, budget_mb))
    return {
        "peak_rss_mb": round(statistics.median(f["peak_rss_mb"] for f in figures)),
        "peak_rss_all_mb": [round(f["peak_rss_mb"]) for f in figures],
        "budget_peak_mb": round(statistics.median(f["budget_peak_mb"] for f in figures)),
        "threads": round(statistics.median(f["threads"] for f in figures)),
        "seconds": round(statistics.median(f["seconds"] for f in figures), 1),
    }


def _budget_label(budget_mb: int | None) -> str:
    return "no budget" if budget_mb is None else f"budget {budget_mb} MiB"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1K only, fewer images, one run each")
    parser.add_argument(
        "--repeat", type=int, default=3, help="fresh processes per case (the median is shown)"
    )
    parser.add_argument("--tables", default="sizes,scaling", help="sizes, scaling or both (comma-separated)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        figures = worker(json.loads(args.worker))
        figures["peak_rss_mb"] = bench.peak_rss_mb()
        print(json.dumps(figures), flush=True)
        return 0

    tables = set(args.tables.split(","))
    repeat = 1 if args.quick else max(1, args.repeat)
    work = Path(tempfile.mkdtemp(prefix="promptdrop-bench-memory-"))
    size_rows: list[dict[str, Any]] = []
    scaling_rows: list[dict[str, Any]] = []
    b = Bench(work)
    try:
        if "sizes" in tables:
            for size in ["1K"] if args.quick else list(SIZES):
                images = SIZES[size][1] // (3 if args.quick else 1)
                master, keys, image_bytes = b.results(size, images)
                for budget_mb in (256, None):
                    label = f"{size}: {RUNS_PER_TICK} runs x {images} images, {_budget_label(budget_mb)}"
                    row = measure(b, master, keys, RUNS_PER_TICK, budget_mb, repeat, label)
                    size_rows.append(
                        {
                            "size": size,
                            "image_mb": round(image_bytes / MiB, 1),
                            "images": RUNS_PER_TICK * images,
                            "budget_mb": budget_mb,
                            **row,
                        }
                    )
                b.bucket.blob(master).delete()
        if "scaling" in tables and not args.quick:
            master, keys, image_bytes = b.results(SCALING_SIZE, SCALING_IMAGES)
            for budget_mb in SCALING_BUDGETS_MB:
                for runs in SCALING_RUNS:
                    label = (
                        f"{SCALING_SIZE}: {runs} runs x {SCALING_IMAGES} images, {_budget_label(budget_mb)}"
                    )
                    row = measure(b, master, keys, runs, budget_mb, repeat, label)
                    scaling_rows.append({"runs": runs, "budget_mb": budget_mb, **row})
    finally:
        b.stop()
        shutil.rmtree(work, ignore_errors=True)
    limit = POLLER_MEMORY_MB * MARGIN
    print(f"\nmedians of {repeat} fresh processes; MALLOC_ARENA_MAX=2; 50 ms per Cloud Storage request\n")
    if size_rows:
        print(
            f"poller memory {POLLER_MEMORY_MB} MB; target: peak RSS under {limit:.0f} MB (25% margin) with the budget\n"
        )
        print(
            "| size | image | images (4 runs) | case | peak RSS | budget held (peak) | threads | harvest wall |"
        )
        print("|---|---:|---:|---|---:|---:|---:|---:|")
        for row in size_rows:
            print(
                f"| {row['size']} | {row['image_mb']} MB | {row['images']} | {_budget_label(row['budget_mb'])} "
                f"| {row['peak_rss_mb']} MB | {row['budget_peak_mb']} MB | {row['threads']} | {row['seconds']} s |"
            )
    if scaling_rows:
        print(
            f"\n{SCALING_SIZE} images, {SCALING_IMAGES} per run: peak RSS (budget held at peak, harvest wall)\n"
        )
        print(
            "| budget | " + " | ".join(f"{runs} run{'s' if runs > 1 else ''}" for runs in SCALING_RUNS) + " |"
        )
        print("|---|" + "---:|" * len(SCALING_RUNS))
        for budget_mb in SCALING_BUDGETS_MB:
            cells = [
                f"{row['peak_rss_mb']} MB ({row['budget_peak_mb']} MB, {row['seconds']} s)"
                for runs in SCALING_RUNS
                for row in scaling_rows
                if row["runs"] == runs and row["budget_mb"] == budget_mb
            ]
            print(f"| {_budget_label(budget_mb)} | " + " | ".join(cells) + " |")
    Path(".bench").mkdir(exist_ok=True)
    Path(".bench/memory.json").write_text(json.dumps({"sizes": size_rows, "scaling": scaling_rows}, indent=2))
    missed = [row for row in size_rows if row["budget_mb"] is not None and row["peak_rss_mb"] > limit]
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
