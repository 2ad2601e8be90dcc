"""Processes racing on one local bucket and one SQLite store: exactly one of them may win each race.

Each worker is a fresh interpreter (spawn), opens its own store, waits at a barrier so all of them strike
together, and reports what its call returned. The stores are opened fresh by every worker as well, so the
races also cover processes creating the same database at the same time.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from promptdrop.adapters.localfs import LocalBlobStore
from promptdrop.adapters.sqlite_store import SqliteJobStore
from promptdrop.records import Run, RunSource
from promptdrop.states import RunState

WORKERS = 6
T0 = 1_700_000_000.0


def _run(run_id: str, claim_key: str) -> Run:
    return Run(
        run_id=run_id,
        claim_key=claim_key,
        state=RunState.RECEIVED,
        source=RunSource(kind="message", message_id=claim_key, name="race"),
        input_object=f"outputs/{run_id}/input.jsonl",
        output_folder=f"outputs/{run_id}/",
        model="gemini-3-pro-image",
        created_at=T0,
        updated_at=T0,
    )


def _create_run(store: Any, worker: int) -> Any:
    return store.create_run(_run("race-run", f"claim-{worker}"))


def _acquire_lease(store: Any, worker: int) -> Any:
    return store.acquire_lease("run", "race-run", f"poller-{worker}", 300, time.time())


def _stat(store: Any, worker: int) -> Any:
    info = store.stat("inbox/dropped.jsonl")
    return None if info is None else info.generation


def _write_if_absent(store: Any, worker: int) -> Any:
    return store.write_bytes("outputs/r/claim.json", f"worker {worker}".encode(), if_absent=True)


def _worker(
    opener: Callable[[Path], Any],
    action: Callable[[Any, int], Any],
    target: Path,
    worker: int,
    barrier: Any,
    results: Any,
) -> None:
    try:
        barrier.wait()  # all open the store together (a new database: creation races too)
        store = opener(target)
        barrier.wait()  # then all strike together
        results.put((worker, action(store, worker)))
    except Exception as exc:  # reported, so the test shows it rather than hanging
        results.put((worker, f"error: {exc!r}"))


def race(opener: Callable[[Path], Any], action: Callable[[Any, int], Any], target: Path) -> list[Any]:
    """Run ``action(opener(target), worker)`` in WORKERS fresh processes at once; results by worker."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(WORKERS)
    results = context.Queue()
    processes = [
        context.Process(target=_worker, args=(opener, action, target, worker, barrier, results))
        for worker in range(WORKERS)
    ]
    for process in processes:
        process.start()
    outcomes = dict(results.get(timeout=60) for _ in processes)
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    return [outcomes[worker] for worker in range(WORKERS)]


def test_racing_create_run_has_one_winner(tmp_path: Path) -> None:
    """Of several processes creating the same run, exactly one is told it created it, and its record stays."""
    outcomes = race(SqliteJobStore, _create_run, tmp_path / "state.db")
    assert sorted(outcomes, key=str) == [False] * (WORKERS - 1) + [True]
    winner = outcomes.index(True)
    stored = SqliteJobStore(tmp_path / "state.db").get_run("race-run")
    assert stored is not None and stored.claim_key == f"claim-{winner}"


def test_racing_acquire_lease_has_one_winner(tmp_path: Path) -> None:
    """Of several pollers taking the same free lease at once, exactly one gets it, and it is recorded as theirs."""
    store = SqliteJobStore(tmp_path / "state.db")
    store.create_run(_run("race-run", "claim"))
    outcomes = race(SqliteJobStore, _acquire_lease, tmp_path / "state.db")
    assert outcomes.count(True) == 1 and outcomes.count(False) == WORKERS - 1
    stored = store.get_run("race-run")
    assert stored is not None and stored.lease.owner == f"poller-{outcomes.index(True)}"


def test_racing_stat_of_a_dropped_file_agrees_on_one_generation(tmp_path: Path) -> None:
    """Processes seeing a hand-dropped file for the first time all assign it the same generation."""
    (tmp_path / "bucket" / "inbox").mkdir(parents=True)
    (tmp_path / "bucket" / "inbox" / "dropped.jsonl").write_bytes(b'{"prompt": "a cat"}\n')
    outcomes = race(LocalBlobStore, _stat, tmp_path / "bucket")
    assert len(set(outcomes)) == 1
    info = LocalBlobStore(tmp_path / "bucket").stat("inbox/dropped.jsonl")
    assert info is not None and outcomes[0] == info.generation


def test_racing_write_if_absent_has_one_winner(tmp_path: Path) -> None:
    """Of several processes writing the same object if absent, exactly one succeeds, and its bytes are kept."""
    outcomes = race(LocalBlobStore, _write_if_absent, tmp_path / "bucket")
    assert outcomes.count(True) == 1 and outcomes.count(False) == WORKERS - 1
    store = LocalBlobStore(tmp_path / "bucket")
    assert store.read_bytes("outputs/r/claim.json") == f"worker {outcomes.index(True)}".encode()
    assert [info.name for info in store.list("")] == ["outputs/r/claim.json"]
