"""Taking a run's lease on Firestore is one compare-and-set (it reads the run once, and refuses a lease held
by another worker without writing): no plain read before it, which every tick of every active run would pay
for as a second billed document read (docs/PERFORMANCE.md, the deployment's own cost)."""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from typing import Any

from promptdrop.usecases import leases
from tests.functional.conftest import Pipeline, jsonl


class _CountingStore:
    """The pipeline's job store, with a count of the calls made to it."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        self.calls[name] += 1
        return getattr(self._store, name)


def test_on_firestore_a_lease_is_taken_or_refused_with_the_store_s_compare_and_set_alone(
    pipeline: Pipeline,
) -> None:
    receipt = pipeline.drop("lease.jsonl", jsonl({"key": "a", "prompt": "an apple"}))
    assert receipt.run is not None
    run_id = receipt.run.run_id
    counting = _CountingStore(pipeline.ctx.store)
    firestore_settings = pipeline.ctx.settings.model_copy(update={"store": "firestore://demo/(default)"})
    assert firestore_settings.store_is_firestore
    ctx = dataclasses.replace(pipeline.ctx, settings=firestore_settings, store=counting, owner="worker-1")

    assert leases.acquire(ctx, run_id)
    assert counting.calls == {"acquire_lease": 1}

    counting.calls.clear()
    other = dataclasses.replace(ctx, owner="worker-2")
    assert not leases.acquire(other, run_id)  # held by worker-1 until it expires
    assert counting.calls == {"acquire_lease": 1}
    run = pipeline.ctx.store.get_run(run_id)
    assert run is not None and run.lease.owner == "worker-1" and run.lease.expires > time.time()
