"""The byte budget shared by every run of a tick: bounded, never stuck on one oversized image."""

from __future__ import annotations

import threading
import time

from promptdrop.budget import ByteBudget


def test_holders_never_exceed_the_limit() -> None:
    budget = ByteBudget(100)
    held: list[int] = []
    lock = threading.Lock()

    def hold(size: int) -> None:
        budget.acquire(size)
        with lock:
            held.append(budget.used)
        time.sleep(0.01)
        budget.release(size)

    threads = [threading.Thread(target=hold, args=(30,)) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert budget.used == 0
    assert budget.peak <= 90 and max(held) <= 90  # three 30-byte images at most, never four


def test_an_image_larger_than_the_budget_goes_alone() -> None:
    budget = ByteBudget(10)
    budget.acquire(50)  # waits for nobody: the budget was empty
    assert budget.used == 50
    started = threading.Event()
    done = threading.Event()

    def second() -> None:
        started.set()
        budget.acquire(5)
        done.set()

    thread = threading.Thread(target=second)
    thread.start()
    started.wait()
    assert not done.wait(0.1)  # waits while the big one is held
    budget.release(50)
    assert done.wait(2)
    thread.join()
