"""The byte budget one process shares between the runs a tick advances (PROMPTDROP_HARVEST_MEMORY_BUDGET).

Three kinds of holders, so that nothing can wait for ever:

- ``acquire`` waits while the budget is spent by other holders that drain by themselves (images being
  written, lines being parsed). Something larger than the whole budget still goes, alone.
- ``add`` never waits: a holder that already owns a reservation tops it up when the real size turns out larger
  (a result line longer than the one before it). Waiting there could deadlock holders on each other.
- ``take_spare`` is for work that only helps speed (reading ahead): it takes bytes only when they are free and
  leaves at least half of the budget to the others; a holder of spare bytes never blocks anyone, because
  ``acquire`` does not wait for spare bytes to come back.
"""

from __future__ import annotations

import threading


class ByteBudget:
    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.used = 0  # every byte held, spare included
        self.spare = 0  # the part held by take_spare
        self.peak = 0
        self._cond = threading.Condition()

    def hold(self, size: int) -> Held:
        """``size`` bytes, waited for as ``acquire`` does, as one holding that can be resized."""
        self.acquire(size)
        return Held(self, size)

    def acquire(self, size: int) -> None:
        with self._cond:
            while self.used > self.spare and self.used + size > self.limit:
                self._cond.wait()
            self._add(size)

    def add(self, size: int) -> None:
        with self._cond:
            self._add(size)

    def release(self, size: int) -> None:
        with self._cond:
            self.used -= size
            self._cond.notify_all()

    def take_spare(self, size: int) -> bool:
        with self._cond:
            if self.used + size > self.limit or 2 * (self.spare + size) > self.limit:
                return False
            self.spare += size
            self._add(size)
            return True

    def return_spare(self, size: int) -> None:
        with self._cond:
            self.spare -= size
            self.used -= size
            self._cond.notify_all()

    def _add(self, size: int) -> None:
        self.used += size
        self.peak = max(self.peak, self.used)


class Held:
    """Bytes one holder has of a budget: resized (without waiting) when the real size becomes known, handed
    from the thread that parses a line to the thread that writes its image, released once."""

    def __init__(self, budget: ByteBudget, size: int) -> None:
        self.budget = budget
        self.size = size

    def resize(self, size: int) -> None:
        if size > self.size:
            self.budget.add(size - self.size)
        elif size < self.size:
            self.budget.release(self.size - size)
        self.size = size

    def release(self) -> None:
        self.resize(0)
