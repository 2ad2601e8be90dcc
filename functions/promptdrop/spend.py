"""Spend caps across runs: what a UTC day and a UTC month may cost, kept in a ledger in the job store (pure).

A run reserves its estimate against each capped period at submission, atomically (the store applies
``refusal`` inside one transaction, so two submissions never pass a cap together), and settle replaces the
reservation with what the run was billed. A run that would pass a cap is not failed: it waits in
``RECEIVED`` with a reason and is checked again on later ticks, so it goes on by itself when the period
turns or the cap is raised. The ledger of a period maps run ids to entries, so a reservation made twice (a
submission redone after a crash) counts once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

Period = Literal["day", "month"]

# What the caps are called in the configuration (and in every message about them).
CAP_VARIABLES: dict[Period, str] = {
    "day": "PROMPTDROP_MAX_SPEND_USD_PER_DAY",
    "month": "PROMPTDROP_MAX_SPEND_USD_PER_MONTH",
}


@dataclass(frozen=True, slots=True)
class SpendCap:
    """One capped period: its ledger key (``day-2026-12-07``, ``month-2026-12``), the limit in USD, and
    when the period ends (epoch seconds)."""

    period: Period
    key: str
    limit: float
    ends_at: float

    @property
    def variable(self) -> str:
        return CAP_VARIABLES[self.period]

    @property
    def label(self) -> str:
        """For people: ``2026-12-07 (UTC)`` or ``2026-12 (UTC)``."""
        return f"{self.key.split('-', 1)[1]} (UTC)"


@dataclass(frozen=True, slots=True)
class SpendRefusal:
    """The cap a reservation would pass, and what the period holds without this run."""

    cap: SpendCap
    spent: float
    amount: float

    def reason(self) -> str:
        resumes = datetime.fromtimestamp(self.cap.ends_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
        return (
            f"waiting for the spend cap: this run's estimate ${self.amount:.4f} would pass "
            f"{self.cap.variable}=${self.cap.limit:.2f} (${self.spent:.4f} already spent or reserved in "
            f"{self.cap.label}); it goes on by itself at {resumes}, or sooner if the cap is raised"
        )


def period_keys(now: float) -> dict[Period, tuple[str, float]]:
    """The ledger key of the UTC day and month at ``now``, and when each ends."""
    moment = datetime.fromtimestamp(now, UTC)
    day_start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    month_start = day_start.replace(day=1)
    next_month = (month_start + timedelta(days=32)).replace(day=1)
    return {
        "day": (f"day-{day_start:%Y-%m-%d}", (day_start + timedelta(days=1)).timestamp()),
        "month": (f"month-{month_start:%Y-%m}", next_month.timestamp()),
    }


def caps_at(now: float, *, per_day: float | None, per_month: float | None) -> list[SpendCap]:
    """The caps in force at ``now`` (none when neither is configured)."""
    keys = period_keys(now)
    limits: dict[Period, float | None] = {"day": per_day, "month": per_month}
    return [
        SpendCap(period, keys[period][0], limit, keys[period][1])
        for period, limit in limits.items()
        if limit is not None
    ]


def entry(amount: float, *, settled: bool) -> dict[str, Any]:
    """One run's line in a period's ledger: its reservation (``settled`` false) or what it was billed."""
    return {"amount": round(max(0.0, amount), 6), "settled": settled}


def total(ledger: Mapping[str, Mapping[str, Any]], *, without: str | None = None) -> float:
    """What a period holds: settled costs plus open reservations (``without`` one run's own entry)."""
    return sum(float(line.get("amount") or 0.0) for run_id, line in ledger.items() if run_id != without)


def refusal(
    ledgers: Mapping[str, Mapping[str, Mapping[str, Any]]],
    caps: Iterable[SpendCap],
    run_id: str,
    amount: float,
) -> SpendRefusal | None:
    """The first cap that ``amount`` more for ``run_id`` would pass, given each period's ledger by key."""
    for cap in caps:
        spent = total(ledgers.get(cap.key, {}), without=run_id)
        if spent + amount > cap.limit + 1e-9:
            return SpendRefusal(cap, spent, amount)
    return None


def period_keys_of(caps: Sequence[SpendCap]) -> list[str]:
    return [cap.key for cap in caps]
