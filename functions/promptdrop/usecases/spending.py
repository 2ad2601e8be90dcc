"""Spend caps across runs (``PROMPTDROP_MAX_SPEND_USD_PER_DAY`` / ``..._PER_MONTH``; rules in ``spend.py``).

Submission reserves the run's estimate in the ledger of each capped UTC period before anything is sent;
settle replaces the reservation with what the run was billed (batch plus now lane; lines served from the
pay-once cache cost nothing). A run the caps do not allow waits in ``RECEIVED`` with the reason and is
checked again at every tick (one store transaction: its estimate is kept on the run, so a waiting run is not
parsed again), so it goes on by itself at the next tick after the period turns or the cap is raised.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from promptdrop import spend
from promptdrop.logs import SPEND_NEAR_CAP, metric_fields
from promptdrop.records import Run
from promptdrop.usecases.context import Context

log = logging.getLogger(__name__)

# A period whose ledger holds this share of its cap is reported (the deployment's spend alert counts it).
NEAR_CAP_SHARE = 0.8


def caps(ctx: Context, now: float | None = None) -> list[spend.SpendCap]:
    settings = ctx.settings
    return spend.caps_at(
        ctx.clock() if now is None else now,
        per_day=settings.max_spend_usd_per_day,
        per_month=settings.max_spend_usd_per_month,
    )


def reserve(ctx: Context, run: Run, amount: float) -> Run | None:
    """Reserve ``amount`` for the run in every capped period. None when reserved (or no cap is set); else
    the run, still RECEIVED, with the reason, its amount kept for the next check, due again at the next tick.
    ``amount`` is the budget cap's figure (an unpriced line at the highest known price; infinite when
    nothing in the run can be priced, which no cap lets through)."""
    in_force = caps(ctx)
    if not in_force:
        return None
    # The periods go on the run first: settle then always knows which ledgers to correct, even after a
    # crash between the two writes (settling a period the run never reserved in writes its cost there).
    run = ctx.store.update_run(run.run_id, {"spend_periods": spend.period_keys_of(in_force)})
    refused = ctx.store.reserve_spend(run.run_id, amount, in_force)
    _report_near_caps(ctx, run, in_force)
    if refused is None:
        if run.spend_waiting is not None:
            ctx.store.update_run(run.run_id, {"spend_waiting": None, "reason": None})
        return None
    reason = refused.reason()
    log.warning(reason, extra={"run_id": run.run_id})
    return ctx.store.update_run(
        run.run_id,
        {
            "reason": reason,
            "spend_waiting": amount if math.isfinite(amount) else None,
            "next_attempt_at": ctx.clock(),  # due again at the next tick
        },
    )


def still_waiting(ctx: Context, run: Run) -> bool:
    """A run that waited for a spend cap at its last check and would still pass one with the amount kept
    then: checked in one store transaction, without parsing its file again. False lets the submission go on
    (and reserve its amount anew)."""
    if run.spend_waiting is None or not caps(ctx):
        return False
    in_force = caps(ctx)
    refused = ctx.store.reserve_spend(run.run_id, run.spend_waiting, in_force)
    if refused is None:
        return False
    ctx.store.update_run(run.run_id, {"reason": refused.reason(), "next_attempt_at": ctx.clock()})
    return True


def _report_near_caps(ctx: Context, run: Run, in_force: list[spend.SpendCap]) -> None:
    spent = ctx.store.spent(spend.period_keys_of(in_force))
    for cap in in_force:
        held = spent.get(cap.key, 0.0)
        if held >= NEAR_CAP_SHARE * cap.limit:
            fields = metric_fields(SPEND_NEAR_CAP, period=cap.period, spent=round(held, 4), limit=cap.limit)
            log.warning(
                "%s holds $%.4f of %s=$%.2f",
                cap.label,
                held,
                cap.variable,
                cap.limit,
                extra={"run_id": run.run_id, **fields},
            )


def settle(ctx: Context, run: Run) -> None:
    """Replace the run's reservations with what it was billed. A bill that cannot be priced (a model
    without a known price) leaves the reservation, made at the highest known price, in place."""
    if not run.spend_periods:
        return
    cost = run.cost
    if cost.batch is None or cost.now is None:
        log.warning("the run's cost is unknown: its spend reservation stays", extra={"run_id": run.run_id})
        return
    ctx.store.settle_spend(run.run_id, run.spend_periods, cost.batch + cost.now)


@dataclass(frozen=True, slots=True)
class CapStatus:
    cap: spend.SpendCap
    spent: float


def status(ctx: Context) -> list[CapStatus]:
    """Each cap in force now, and what its period holds (settled costs plus open reservations)."""
    in_force = caps(ctx)
    if not in_force:
        return []
    spent = ctx.store.spent(spend.period_keys_of(in_force))
    return [CapStatus(cap, spent.get(cap.key, 0.0)) for cap in in_force]
