"""What the runs cost, per UTC day and model (pure): ``promptdrop report`` over the job store's run records.

Each ended run carries ``by_model`` (written at settle, the same figures as its ``summary.json``); a day's
row for a model adds up the runs that ended that day and used it. A money figure is None as soon as one
run's figure for that model is (a model without a price), never a partial sum.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from promptdrop.records import Run

_DIGITS = 6
_MONEY = ("batch", "interactive", "now", "saved_by_cache")


@dataclass
class ReportRow:
    day: str  # YYYY-MM-DD (UTC) the runs ended
    model: str
    runs: int = 0
    lines: int = 0
    images: int = 0
    cached: int = 0
    money: dict[str, float | None] = field(default_factory=lambda: dict.fromkeys(_MONEY, 0.0))

    def add(self, use: dict[str, Any]) -> None:
        self.runs += 1
        self.lines += int(use.get("lines") or 0)
        self.images += int(use.get("images") or 0)
        self.cached += int(use.get("cached") or 0)
        for name in _MONEY:
            value, current = use.get(name), self.money[name]
            self.money[name] = None if value is None or current is None else current + float(value)

    def to_json(self) -> dict[str, Any]:
        money = {name: None if value is None else round(value, _DIGITS) for name, value in self.money.items()}
        batch, interactive = money["batch"], money["interactive"]
        saved = None if batch is None or interactive is None else round(interactive - batch, _DIGITS)
        return {
            "day": self.day,
            "model": self.model,
            "runs": self.runs,
            "lines": self.lines,
            "images": self.images,
            "cached": self.cached,
            "batch": batch,
            "now": money["now"],
            "interactive": interactive,
            "saved": saved,
            "saved_by_cache": money["saved_by_cache"],
        }


def day_of(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%d")


def rows(runs: Iterable[Run], *, since: float) -> list[ReportRow]:
    """One row per (day, model) of the runs that ended at or after ``since``, newest day first."""
    table: dict[tuple[str, str], ReportRow] = {}
    for run in runs:
        if run.finished_at is None or run.finished_at < since:
            continue
        day = day_of(run.finished_at)
        for model, use in run.by_model.items():
            table.setdefault((day, model), ReportRow(day, model)).add(use)
    by_model = sorted(table.values(), key=lambda row: row.model)
    return sorted(by_model, key=lambda row: row.day, reverse=True)
