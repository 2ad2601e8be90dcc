"""The poller: one tick moves every active run (or the runs asked for) as far as it goes now.

Runs are advanced concurrently, each through ``advance_run`` under its own lease, so overlapping ticks
(Cloud Scheduler is at least once, two `serve`s) skip each other's work, and a failure in one run is
reported for that run alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from promptdrop.states import RUN_ACTIVE
from promptdrop.usecases.advance import advance_run
from promptdrop.usecases.context import Context


@dataclass
class TickReport:
    runs_seen: int = 0
    runs_advanced: list[str] = field(default_factory=list)
    runs_skipped: list[str] = field(default_factory=list)  # leased by another worker
    runs_finished: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # "<run id>: <error>", each logged with its run id
    out_of_time: bool = False


def tick(ctx: Context, *, run_ids: Iterable[str] | None = None, deadline: float | None = None) -> TickReport:
    """Advance every active run (or just ``run_ids``). Runs are worked on concurrently, each under its lease."""
    report = TickReport()
    if run_ids is None:
        wanted = [run.run_id for run in ctx.store.list_runs(RUN_ACTIVE)]
    else:
        wanted = with_payers(ctx, run_ids)
    report.runs_seen = len(wanted)
    if not wanted:
        return report
    workers = max(1, min(ctx.settings.tick_concurrency, len(wanted)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="promptdrop-run") as pool:
        results = list(pool.map(lambda run_id: advance_run(ctx, run_id, deadline), wanted))
    for result in results:
        if result.outcome == "skipped":
            report.runs_skipped.append(result.run_id)
        elif result.outcome == "failed":
            report.errors.append(f"{result.run_id}: {result.error}")
        elif result.outcome == "finished":
            report.runs_finished.append(result.run_id)
            report.runs_advanced.append(result.run_id)
        elif result.outcome == "advanced":
            report.runs_advanced.append(result.run_id)
    report.out_of_time = deadline is not None and ctx.clock() >= deadline
    return report


def with_payers(ctx: Context, run_ids: Iterable[str]) -> list[str]:
    """The runs asked for and the runs they wait for, and so on: a run whose lines wait ends only after
    those runs, so whoever follows it (`run --wait` with no `serve` running) moves them too."""
    wanted = list(dict.fromkeys(run_ids))
    for run_id in wanted:  # grows while it is walked: each run is read once
        run = ctx.store.get_run(run_id)
        wanted += [payer for payer in (run.waiting_on if run else []) if payer not in wanted]
    return wanted
