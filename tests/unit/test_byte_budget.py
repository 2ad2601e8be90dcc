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


def test_spare_bytes_are_taken_only_when_free_and_never_keep_a_waiter_waiting() -> None:
    """Read-ahead takes spare bytes (at most half the budget); a waiter goes once only spare bytes are held."""
    budget = ByteBudget(100)
    assert budget.take_spare(40)
    assert not budget.take_spare(20)  # past half the budget
    budget.acquire(50)
    assert not budget.take_spare(15)  # 105 would be held with it
    done = threading.Event()
    thread = threading.Thread(target=lambda: (budget.acquire(30), done.set()))
    thread.start()
    assert not done.wait(0.1)  # 40 spare + 50 + 30 is over the budget while the 50 are held
    budget.release(50)
    assert done.wait(2)  # only spare bytes held: the waiter goes (120 would be over, but spare never blocks)
    thread.join()
    budget.return_spare(40)
    budget.release(30)
    assert (budget.used, budget.spare) == (0, 0)


def test_a_holding_is_resized_without_waiting_and_released_once() -> None:
    budget = ByteBudget(100)
    held = budget.hold(60)
    other = budget.hold(40)
    held.resize(90)  # a line longer than expected: counted at once, over the budget by the difference
    assert budget.used == 130 and budget.peak == 130
    held.resize(10)  # handed on as the smaller image
    assert budget.used == 50
    held.release()
    held.release()  # released once, however often asked
    other.release()
    assert budget.used == 0
