"""Cost from usage and estimates before submission: the published figures, batch at half, unknown = None."""

from __future__ import annotations

import pytest

from promptdrop.cost import CostTally, Money, estimate_request, usage_cost
from promptdrop.outcomes import Usage

PRO = "gemini-3-pro-image"
FLASH_31 = "gemini-3.1-flash-image"
FLASH_25 = "gemini-2.5-flash-image"


@pytest.mark.parametrize(
    ("model", "size", "input_tokens", "interactive", "batch"),
    [
        (PRO, "1K", 0, 0.1344, 0.0672),
        (PRO, "2K", 0, 0.1344, 0.0672),
        (PRO, "4K", 0, 0.24, 0.12),
        (PRO, "1K", 1_000_000, 2.1344, 1.0672),
        ("models/" + PRO, "4K", 0, 0.24, 0.12),
        (FLASH_31, "512", 0, 0.04482, 0.02241),
        (FLASH_31, "4K", 0, 0.1512, 0.0756),
        (FLASH_25, "1K", 0, 0.0387, 0.01935),
    ],
    ids=[
        "pro-1K",
        "pro-2K",
        "pro-4K",
        "pro-1K-1M-input",
        "models-prefix",
        "flash31-512",
        "flash31-4K",
        "flash25",
    ],
)
def test_estimate_request(model: str, size: str, input_tokens: int, interactive: float, batch: float) -> None:
    """One image at the model's image tokens times its rate, plus input at the text rate; batch is half."""
    money = estimate_request(model, size, input_tokens)
    assert money.interactive == pytest.approx(interactive)
    assert money.batch == pytest.approx(batch)
    assert money.saved == pytest.approx(interactive - batch)


def test_unknown_model_costs_none() -> None:
    """A model missing from the table has no price, never a guess."""
    assert estimate_request("imagen-9", "1K", 10) == Money(batch=None, interactive=None)
    assert Money(batch=None, interactive=None).saved is None
    assert usage_cost("imagen-9", Usage(1, 2, 1), batch=True) is None


@pytest.mark.parametrize("batch", [False, True], ids=["interactive", "batch"])
def test_usage_cost_splits_input_image_and_text_output(batch: bool) -> None:
    """Prompt tokens at text input, image tokens at image output, the rest of the output at text output."""
    usage = Usage(prompt_tokens=1000, output_tokens=1120 + 500, image_tokens=1120)
    expected = (1000 * 2.0 + 1120 * 120.0 + 500 * 12.0) / 1_000_000
    assert usage_cost(PRO, usage, batch=batch) == pytest.approx(expected / 2 if batch else expected)


def test_tally_adds_usage_and_rounds() -> None:
    """The tally sums both prices of every response and keeps float noise out of the total."""
    tally = CostTally()
    for _ in range(3):
        tally.add_usage(PRO, Usage(prompt_tokens=0, output_tokens=1120, image_tokens=1120))
    assert tally.total == Money(batch=0.2016, interactive=0.4032)
    assert tally.total.saved == 0.2016


def test_tally_of_estimates() -> None:
    """Estimates add up like the per-request figures."""
    tally = CostTally()
    tally.add_estimate(PRO, "1K", 0)
    tally.add_estimate(PRO, "4K", 0)
    assert tally.total == Money(batch=0.1872, interactive=0.3744)


def test_tally_is_unknown_once_an_unknown_model_is_added() -> None:
    """One unknown model makes the whole total None rather than a partial sum."""
    tally = CostTally()
    tally.add_estimate(PRO, "1K", 0)
    tally.add_usage("imagen-9", Usage(1, 1, 1))
    tally.add_estimate(PRO, "1K", 0)
    assert tally.total == Money(batch=None, interactive=None)


def test_tally_adds_checkpointed_money() -> None:
    """Amounts saved by an earlier harvest step add in, and an unknown one poisons the total."""
    tally = CostTally()
    tally.add_money(Money(batch=0.5, interactive=1.0))
    tally.add_estimate(PRO, "4K", 0)
    assert tally.total == Money(batch=0.62, interactive=1.24)
    tally.add_money(Money(batch=None, interactive=None))
    assert tally.total.batch is None


def test_empty_tally_is_zero() -> None:
    """A run with nothing billed costs zero, not unknown."""
    assert CostTally().total == Money(batch=0.0, interactive=0.0)


def test_vertex_costs_use_vertex_prices_and_none_where_vertex_publishes_none() -> None:
    """On Vertex AI: its own figures (the same as the Gemini API's for 3 Pro Image and 3.1 Flash Image,
    models.py), and no price for a model Vertex's pages give none for, never the Gemini API's as a guess."""
    assert estimate_request(PRO, "1K", 0, "vertex").batch == pytest.approx(0.0672)
    assert estimate_request(FLASH_31, "4K", 0, "vertex").batch == pytest.approx(0.0756)
    assert estimate_request(FLASH_25, "1K", 0, "vertex") == Money(batch=None, interactive=None)
    usage = Usage(prompt_tokens=10, output_tokens=1290, image_tokens=1290)
    assert usage_cost(FLASH_25, usage, batch=True, backend="vertex") is None
    assert usage_cost(FLASH_25, usage, batch=True) is not None
    on_vertex, on_gemini = CostTally("vertex"), CostTally()
    for tally in (on_vertex, on_gemini):
        tally.add_usage(PRO, usage)
        tally.add_usage(FLASH_25, usage)
    assert on_vertex.total == Money(batch=None, interactive=None)
    assert on_gemini.total.batch is not None
