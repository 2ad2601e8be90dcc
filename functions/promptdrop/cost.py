"""What a run costs: from token usage after the fact, and estimated before submission (pure).

Rates come from the one table in ``models.py``; the Batch API bills half of each. A model missing from the
table (or listed without confirmed prices) costs ``None``: a total that includes one is ``None`` too, never a partial guess.
The budget cap alone counts such a line at the highest known price for its image size (``CapEstimate``), so
an unpriced line can never turn the cap off. ``backend`` picks whose prices apply (``ModelSpec.on``): on
``vertex`` a model without a Vertex price costs ``None`` even when the Gemini API publishes one.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from promptdrop.models import BATCH_DISCOUNT, MODELS, model_spec
from promptdrop.outcomes import Usage

_PER_MILLION = 1_000_000
# Sums are rounded to micro-dollars so float noise (0.30000000000000004) stays out of summary.json.
_DIGITS = 6


@dataclass(frozen=True, slots=True)
class Money:
    """USD on the Batch API and on the standard (interactive) API; None = unknown model."""

    batch: float | None
    interactive: float | None

    @property
    def saved(self) -> float | None:
        if self.batch is None or self.interactive is None:
            return None
        return round(self.interactive - self.batch, _DIGITS)


def usage_cost(model: str, usage: Usage, *, batch: bool, backend: str = "gemini") -> float | None:
    """USD for one response's tokens: input at the text rate, image output and other output at theirs."""
    spec = model_spec(model, backend)
    if spec is None or spec.rates is None:
        return None
    rates = spec.rates
    other_output = max(usage.output_tokens - usage.image_tokens, 0)
    interactive = (
        usage.prompt_tokens * rates.text_input
        + usage.image_tokens * rates.image_output
        + other_output * rates.text_output
    ) / _PER_MILLION
    return interactive * BATCH_DISCOUNT if batch else interactive


def estimate_request(model: str, image_size: str, input_tokens: int, backend: str = "gemini") -> Money:
    """One image of ``image_size`` plus ``input_tokens`` of input, before submission."""
    spec = model_spec(model, backend)
    image = spec.image_cost(image_size, batch=False) if spec else None
    if spec is None or spec.rates is None or image is None:
        return Money(batch=None, interactive=None)
    interactive = image + input_tokens * spec.rates.text_input / _PER_MILLION
    return Money(batch=interactive * BATCH_DISCOUNT, interactive=interactive)


def ceiling_request(image_size: str, input_tokens: int, backend: str = "gemini") -> Money:
    """The most a priced model of the table bills for one image of ``image_size`` plus ``input_tokens`` of
    input: what a line whose own model has no known price counts as against the budget cap."""
    priced = [spec.on(backend) for spec in MODELS.values() if spec.on(backend).rates is not None]
    sized = [spec for spec in priced if image_size in spec.image_tokens] or priced
    amounts = (estimate_request(spec.name, image_size, input_tokens, backend) for spec in sized)
    return max(amounts, key=lambda money: money.interactive or 0.0)


class CostTally:
    """Adds costs up; the total is unknown (None) as soon as one unknown model was added."""

    def __init__(self, backend: str = "gemini") -> None:
        self.backend = backend  # whose prices apply
        self._batch = 0.0
        self._interactive = 0.0
        self._unknown = False

    def add_money(self, money: Money) -> None:
        """Add an amount already worked out (e.g. a checkpointed part of a resumed harvest)."""
        if money.batch is None or money.interactive is None:
            self._unknown = True
            return
        self._batch += money.batch
        self._interactive += money.interactive

    def add_usage(self, model: str, usage: Usage) -> None:
        self.add_money(
            Money(
                batch=usage_cost(model, usage, batch=True, backend=self.backend),
                interactive=usage_cost(model, usage, batch=False, backend=self.backend),
            )
        )

    def add_estimate(self, model: str, image_size: str, input_tokens: int) -> None:
        self.add_money(estimate_request(model, image_size, input_tokens, self.backend))

    @property
    def total(self) -> Money:
        if self._unknown:
            return Money(batch=None, interactive=None)
        return Money(batch=round(self._batch, _DIGITS), interactive=round(self._interactive, _DIGITS))


@dataclass(frozen=True, slots=True)
class LaneMoney:
    """A run's cost by lane: ``batch`` for the batch lane's lines (with what they would have cost on the
    standard API), ``now`` for the now lane's lines at the standard (interactive) price."""

    batch: Money
    now: float | None

    @property
    def total(self) -> float | None:
        """What the run costs (or is estimated to cost): what the budget cap is held against."""
        if self.batch.batch is None or self.now is None:
            return None
        return round(self.batch.batch + self.now, _DIGITS)


class LaneTally:
    """Adds costs up per lane: the saving of the Batch API is counted for batch lines only."""

    def __init__(self, backend: str = "gemini") -> None:
        self._batch = CostTally(backend)
        self._now = CostTally(backend)

    def _lane(self, lane: str) -> CostTally:
        return self._now if lane == "now" else self._batch

    def add_usage(self, lane: str, model: str, usage: Usage) -> None:
        self._lane(lane).add_usage(model, usage)

    def add_estimate(self, lane: str, model: str, image_size: str, input_tokens: int) -> None:
        self._lane(lane).add_estimate(model, image_size, input_tokens)

    def add_money(self, lane: str, money: Money) -> None:
        self._lane(lane).add_money(money)

    @property
    def total(self) -> LaneMoney:
        return LaneMoney(batch=self._batch.total, now=self._now.total.interactive)


class CapEstimate:
    """A run's estimate as the budget cap holds it, never unknown: each line at its model's price, and a line
    whose model has no known price at the highest known price for its image size (``ceiling_request``), in
    its lane (batch lines at the batch price, now lines at the interactive one). ``known`` is the estimate
    from known prices only (None as soon as one is unknown), as the run records it."""

    def __init__(self, backend: str = "gemini") -> None:
        self.backend = backend
        self._counted = LaneTally(backend)
        self._known = LaneTally(backend)
        self._unpriced: Counter[tuple[str, str, str]] = Counter()  # (model, lane, size) -> lines

    def add(self, lane: str, model: str, image_size: str, input_tokens: int) -> None:
        money = estimate_request(model, image_size, input_tokens, self.backend)
        self._known.add_money(lane, money)
        if money.batch is None:
            money = ceiling_request(image_size, input_tokens, self.backend)
            self._unpriced[(model, lane, image_size)] += 1
        self._counted.add_money(lane, money)

    @property
    def total(self) -> LaneMoney:
        """What the budget cap is held against (every part known)."""
        return self._counted.total

    @property
    def amount(self) -> float:
        """The total in USD; infinite if it could not be worked out (the table lists no priced model), so a
        cap still refuses."""
        total = self.total.total
        return math.inf if total is None else total

    @property
    def known(self) -> LaneMoney:
        return self._known.total

    @property
    def unpriced(self) -> int:
        return sum(self._unpriced.values())

    def notice(self) -> str | None:
        """How many lines were counted at which price, for the estimate's readers; None when every line
        had its own price."""
        if not self._unpriced:
            return None
        parts = []
        for (model, lane, size), lines in sorted(self._unpriced.items()):
            image = ceiling_request(size, 0, self.backend)
            price = image.interactive if lane == "now" else image.batch
            where = "now lane, interactive" if lane == "now" else "batch"
            parts.append(f"{lines} on {model} at ${price:.4f} per {size} image ({where}) plus input")
        return (
            f"{self.unpriced} line(s) without a known price counted at the highest known price for their "
            "image size: " + "; ".join(parts)
        )


class ModelTally:
    """A run's use of each model, for ``summary.json``'s ``by_model`` and ``promptdrop report``: lines that
    ran on it, images delivered, lines served from the pay-once cache, and money like the run's totals
    (batch lane at the batch price and at the interactive one, now lane, what the cache saved). A money
    figure of a model without a price is None."""

    _MONEY = ("batch", "interactive", "now", "saved_by_cache")

    def __init__(self, backend: str = "gemini") -> None:
        self.backend = backend
        self._models: dict[str, dict[str, float | int | None]] = {}

    def add(self, model: str, *, lane: str, usage: Usage | None, succeeded: bool, cached: bool) -> None:
        row = self._models.setdefault(
            model, {"lines": 0, "images": 0, "cached": 0, **dict.fromkeys(self._MONEY, 0.0)}
        )
        row["lines"] = int(row["lines"] or 0) + 1
        row["images"] = int(row["images"] or 0) + int(succeeded)
        row["cached"] = int(row["cached"] or 0) + int(cached)
        if usage is None:
            return
        batch = usage_cost(model, usage, batch=True, backend=self.backend)
        interactive = usage_cost(model, usage, batch=False, backend=self.backend)
        if cached:
            self._add(row, "saved_by_cache", batch)
        elif lane == "now":
            self._add(row, "now", interactive)
        else:
            self._add(row, "batch", batch)
            self._add(row, "interactive", interactive)

    @staticmethod
    def _add(row: dict[str, float | int | None], name: str, amount: float | None) -> None:
        current = row[name]
        row[name] = None if current is None or amount is None else float(current) + amount

    def to_json(self) -> dict[str, dict[str, float | int | None]]:
        return {
            model: {
                name: round(value, _DIGITS) if isinstance(value, float) else value
                for name, value in row.items()
            }
            for model, row in sorted(self._models.items())
        }
