"""Section ``scale`` of scripts/bench: a big local run through ``promptdrop run --wait``, phase by phase.

A prompt file of ``--scale-lines`` lines (20,000 by default) goes through the CLI on the bundled emulator
(images at 1/16 scale, as the tests draw them; the emulator's default pending and running times), in a fresh
state folder, each run in a fresh process: once with thumbnails and the pay-once cache on (the defaults) and
once with both off, taking turns. The CLI runs in a child process that wraps the use cases' entry points with
timers (nothing else changes), so each phase's wall time and the CPU the process spent in it are known:

- claim + submit: ``promptdrop run`` up to the end of its first tick's submission (claim, parse, cache
  decision, request files, uploads, batch creates);
- batch at the emulator: from the last batch create to the start of the first harvest (the CLI only polls);
- results copy, harvest (images written, thumbnails in the writer threads), settle (manifest, errors,
  cache fill, gallery pages, the page of all runs, summary), each summed over the run's jobs and ticks.

The emulator's CPU (user + system) and peak RSS come from /proc at the end of the run; the CLI's from the
child itself (VmHWM, all threads).

    scripts/bench --only scale                                  # 20,000 lines, on and off, 1 run each
    scripts/bench --only scale --scale-lines 5000 --runs 3      # medians of 3 on 5,000 lines
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
IMAGE_SCALE = 0.0625  # the emulator draws 1/16-size images, as the test suite does
PHASES = ("submit", "emulator", "copy", "harvest", "thumbnails", "settle", "cache_fill", "gallery", "other")
PHASE_NAMES = {
    "submit": "claim + submit (cache decision, request files, uploads, creates)",
    "emulator": "waiting for the emulator (CLI between ticks)",
    "copy": "results copy",
    "harvest": "harvest (parse, decode, write images; thumbnails included)",
    "thumbnails": "  of which thumbnails (summed over writer threads)",
    "settle": "settle (manifest, errors, cache fill, pages, summary)",
    "cache_fill": "  of which cache fill",
    "gallery": "  of which gallery pages and the page of all runs",
    "other": "the rest (start-up, ticks, waiting out the poll interval)",
}


def _cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_SELF)
    return used.ru_utime + used.ru_stime


class Phases:
    """Wall and process-CPU seconds spent inside wrapped functions, by phase (outermost call only)."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.thread_seconds: dict[str, float] = {}
        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self._depth: dict[str, int] = {}

    def wrap(self, owner: Any, attribute: str, phase: str, *, threads: bool = False) -> None:
        original: Callable[..., Any] = getattr(owner, attribute)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if threads:  # called from many threads at once: add up each call's own time
                began = time.perf_counter()
                try:
                    return original(*args, **kwargs)
                finally:
                    spent = time.perf_counter() - began
                    self.thread_seconds[phase] = self.thread_seconds.get(phase, 0.0) + spent
            depth = self._depth.get(phase, 0)
            self._depth[phase] = depth + 1
            began, cpu = time.perf_counter(), _cpu()
            self.first.setdefault(phase, began)
            try:
                return original(*args, **kwargs)
            finally:
                self._depth[phase] = depth
                if depth == 0:
                    ended = time.perf_counter()
                    self.wall[phase] = self.wall.get(phase, 0.0) + ended - began
                    self.cpu[phase] = self.cpu.get(phase, 0.0) + _cpu() - cpu
                    self.last[phase] = ended

        setattr(owner, attribute, timed)


def _emulator_figures(home: Path) -> dict[str, float]:
    """CPU seconds and peak RSS of the background emulator serving ``home``, which is then stopped."""
    record = json.loads((home / "emulator" / "server.json").read_text())
    pid = int(record["pid"])
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    peak = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) / 1024
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    return {"emulator_cpu_seconds": cpu, "emulator_peak_rss_mb": peak}


def _batches(home: Path) -> dict[str, float]:
    """The batch jobs as the emulator recorded them: how many, and their time from create to end."""
    records = [json.loads(p.read_text()) for p in (home / "emulator" / "batches").glob("*.json")]
    spans = [(r["create_time"], r["end_time"]) for r in records if r.get("end_time")]
    return {
        "batch_jobs": len(records),
        "batch_seconds": sum(end - start for start, end in spans),
        # From the first create to the last end: how long the emulator had at least one job.
        "batch_span": max(e for _, e in spans) - min(s for s, _ in spans) if spans else 0.0,
    }


def worker(args: dict[str, Any]) -> dict[str, Any]:
    """``promptdrop run FILE --wait`` in this process, its use cases timed."""
    from promptdrop import cli
    from promptdrop.usecases import advance, cache, gallery, harvest, jobs, poll, settle

    phases = Phases()
    phases.wrap(cli, "_submit", "submit")
    phases.wrap(poll, "tick", "ticks")
    phases.wrap(jobs, "launch_queued_jobs", "launch")
    phases.wrap(harvest.results_copy, "copy_results", "copy")
    phases.wrap(advance, "harvest_job", "harvest")
    phases.wrap(gallery.Thumbnails, "__call__", "thumbnails", threads=True)
    phases.wrap(advance, "settle_run", "settle")
    phases.wrap(settle.cache, "fill", "cache_fill")
    phases.wrap(settle.gallery, "publish", "gallery")
    phases.wrap(settle.gallery, "list_run", "gallery")
    phases.wrap(cache.CacheSplit, "prepare", "cache_decision")
    began, cpu = time.perf_counter(), _cpu()
    with contextlib.suppress(SystemExit):
        cli.app(["run", args["prompts"], "--wait"], standalone_mode=False)
    wall, cpu = time.perf_counter() - began, _cpu() - cpu
    home = Path(os.environ["PROMPTDROP_HOME"])
    figures: dict[str, Any] = {
        "seconds": wall,
        "cpu_seconds": cpu,
        "phases": {
            name: {"wall": phases.wall.get(name, 0.0), "cpu": phases.cpu.get(name, 0.0)}
            for name in (
                "submit",
                "launch",
                "copy",
                "harvest",
                "settle",
                "cache_fill",
                "gallery",
                "cache_decision",
            )
        },
        "thumbnail_thread_seconds": phases.thread_seconds.get("thumbnails", 0.0),
        # Neither submitting nor in a tick: the CLI waits for the emulator (sleeping out its poll interval).
        "emulator_wait": wall - phases.wall.get("submit", 0.0) - phases.wall.get("ticks", 0.0),
        **_emulator_figures(home),
        **_batches(home),
    }
    summary = sorted((home / "bucket" / "outputs").glob("*/summary.json"))
    figures["counts"] = json.loads(summary[-1].read_text())["counts"] if summary else {}
    return figures


# The parent


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (the benchmark needs Linux)")


def _run_child(
    prompts: Path, home: Path, *, features: bool, source: Path, tier: int | None = None
) -> dict[str, Any]:
    switch = "on" if features else "off"
    inherited = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PROMPTDROP_") and key not in {"GEMINI_API_KEY", "GOOGLE_API_KEY"}
    }
    env = {
        **inherited,
        "PYTHONPATH": str(source / "functions"),
        "NO_PROXY": "127.0.0.1,localhost",
        "PROMPTDROP_HOME": str(home),
        "PROMPTDROP_BACKEND": "emulator",
        "PROMPTDROP_EMULATOR_IMAGE_SCALE": str(IMAGE_SCALE),
        "PROMPTDROP_EMULATOR_IDLE": "300",
        "PROMPTDROP_THUMBNAILS": switch,
        "PROMPTDROP_CACHE": switch,
        **({"PROMPTDROP_TIER": str(tier)} if tier else {}),
    }
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps({"prompts": str(prompts)})]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False, cwd=home.parent)
    if done.returncode != 0:
        raise RuntimeError(f"scale worker failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


@contextlib.contextmanager
def _fresh(path: Path) -> Iterator[Path]:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def bench_scale(
    work: Path,
    lines: int,
    runs: int,
    write_prompt_file: Callable[[Path, int], None],
    log: Callable[[str], None],
    source: Path | None = None,
    tier: int | None = None,
    variants: tuple[str, ...] = ("on", "off"),
) -> dict[str, Any]:
    """Both variants, ``runs`` times each, taking turns; the figures of each run and the medians.
    ``source``: a checkout whose ``functions`` package runs instead of this one (a before/after figure);
    ``tier``: PROMPTDROP_TIER for the runs (the enqueued-token quota that splits the file into jobs)."""
    work.mkdir(parents=True, exist_ok=True)
    prompts = work / f"scale-{lines}.jsonl"
    write_prompt_file(prompts, lines)
    found: dict[str, list[dict[str, Any]]] = {switch: [] for switch in variants}
    for run in range(runs):
        for switch in variants:
            with _fresh(work / f"scale-home-{switch}") as home:
                figures = _run_child(prompts, home, features=switch == "on", source=source or REPO, tier=tier)
            found[switch].append(figures)
            log(
                f"  thumbnails+cache {switch}, run {run + 1}/{runs}: {figures['seconds']:.1f} s, "
                f"CLI CPU {figures['cpu_seconds']:.1f} s, {figures['peak_rss_mb']:.0f} MB; emulator CPU "
                f"{figures['emulator_cpu_seconds']:.1f} s; phases "
                + ", ".join(f"{k} {v['wall']:.1f}" for k, v in figures["phases"].items())
            )
    return {
        "lines": lines,
        "runs": runs,
        "package": str((source or REPO) / "functions"),
        "variants": {k: _medians(v) for k, v in found.items()},
        "all": found,
    }


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def _medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def med(get: Callable[[dict[str, Any]], float]) -> float:
        return round(_median([get(r) for r in runs]), 2)

    phases: dict[str, dict[str, float]] = {}
    for name in ("submit", "copy", "harvest", "settle", "cache_fill", "gallery", "cache_decision"):
        phases[name] = {
            "wall": med(lambda r, n=name: r["phases"][n]["wall"]),
            "cpu": med(lambda r, n=name: r["phases"][n]["cpu"]),
        }
    harvest_only = {
        "wall": round(phases["harvest"]["wall"] - phases["copy"]["wall"], 2),
        "cpu": round(phases["harvest"]["cpu"] - phases["copy"]["cpu"], 2),
    }
    return {
        "seconds": med(lambda r: r["seconds"]),
        "cpu_seconds": med(lambda r: r["cpu_seconds"]),
        "peak_rss_mb": med(lambda r: r["peak_rss_mb"]),
        "emulator_cpu_seconds": med(lambda r: r["emulator_cpu_seconds"]),
        "emulator_peak_rss_mb": med(lambda r: r["emulator_peak_rss_mb"]),
        "emulator_wait": med(lambda r: r["emulator_wait"]),
        "batch_jobs": med(lambda r: r["batch_jobs"]),
        "batch_seconds": med(lambda r: r["batch_seconds"]),
        "batch_span": med(lambda r: r["batch_span"]),
        "thumbnail_thread_seconds": med(lambda r: r["thumbnail_thread_seconds"]),
        "phases": {**phases, "harvest_without_copy": harvest_only},
        "counts": runs[-1].get("counts", {}),
    }


def table(figures: dict[str, Any]) -> str:
    """A Markdown table: one row a phase, wall / CPU seconds with the features on and off."""
    on, off = figures["variants"]["on"], figures["variants"]["off"]
    rows = [
        f"`promptdrop run --wait`, {figures['lines']:,} lines, emulator images at 1/16 scale "
        f"(median of {figures['runs']}; wall s / CLI CPU s)",
        "",
        "| phase | thumbnails + cache on | both off |",
        "|---|---:|---:|",
    ]

    def cell(variant: dict[str, Any], name: str) -> str:
        phase = variant["phases"][name]
        return f"{phase['wall']:.1f} / {phase['cpu']:.1f}"

    rows.append(f"| {PHASE_NAMES['submit']} | {cell(on, 'submit')} | {cell(off, 'submit')} |")
    rows.append(
        f"| &nbsp;&nbsp;of which the cache decision | {cell(on, 'cache_decision')} | {cell(off, 'cache_decision')} |"
    )
    rows.append(f"| {PHASE_NAMES['emulator']} | {on['emulator_wait']:.1f} | {off['emulator_wait']:.1f} |")
    rows.append(
        f"| &nbsp;&nbsp;batch jobs at the emulator: count, summed create-to-end, first create to last end "
        f"| {on['batch_jobs']:.0f}, {on['batch_seconds']:.1f}, {on['batch_span']:.1f} "
        f"| {off['batch_jobs']:.0f}, {off['batch_seconds']:.1f}, {off['batch_span']:.1f} |"
    )
    rows.append(f"| {PHASE_NAMES['copy']} | {cell(on, 'copy')} | {cell(off, 'copy')} |")
    rows.append(
        f"| harvest (parse, decode, write images, thumbnails) | {cell(on, 'harvest_without_copy')} "
        f"| {cell(off, 'harvest_without_copy')} |"
    )
    rows.append(
        f"| &nbsp;&nbsp;thumbnail calls, summed over writer threads | {on['thumbnail_thread_seconds']:.1f} "
        f"| {off['thumbnail_thread_seconds']:.1f} |"
    )
    rows.append(f"| {PHASE_NAMES['settle']} | {cell(on, 'settle')} | {cell(off, 'settle')} |")
    rows.append(f"| &nbsp;&nbsp;of which cache fill | {cell(on, 'cache_fill')} | {cell(off, 'cache_fill')} |")
    rows.append(f"| &nbsp;&nbsp;of which gallery pages | {cell(on, 'gallery')} | {cell(off, 'gallery')} |")
    rows.append(
        f"| **whole run** (CLI process) | **{on['seconds']:.1f} / {on['cpu_seconds']:.1f}** "
        f"| **{off['seconds']:.1f} / {off['cpu_seconds']:.1f}** |"
    )
    rows.append(f"| CLI peak RSS | {on['peak_rss_mb']:.0f} MB | {off['peak_rss_mb']:.0f} MB |")
    rows.append(
        f"| emulator CPU / peak RSS | {on['emulator_cpu_seconds']:.1f} s / {on['emulator_peak_rss_mb']:.0f} MB "
        f"| {off['emulator_cpu_seconds']:.1f} s / {off['emulator_peak_rss_mb']:.0f} MB |"
    )
    return "\n".join(rows)


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        figures = worker(json.loads(sys.argv[2]))
        figures["peak_rss_mb"] = _peak_rss_mb()
        print(json.dumps(figures), flush=True)
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main())
