"""The estimate the budget cap is held against: never unknown, an unpriced line at the highest known price."""

from __future__ import annotations

import pytest

from promptdrop.cost import CapEstimate, ceiling_request, estimate_request

PRO = "gemini-3-pro-image"
LITE = "gemini-3.1-flash-lite-image"  # listed without a confirmed price


@pytest.mark.parametrize(
    ("size", "dearest"),
    [("1K", PRO), ("2K", PRO), ("4K", PRO), ("512", "gemini-3.1-flash-image")],
)
def test_the_ceiling_is_the_dearest_priced_model_that_makes_the_size(size: str, dearest: str) -> None:
    assert ceiling_request(size, 40) == estimate_request(dearest, size, 40)


def test_an_unpriced_line_counts_at_the_ceiling_in_its_lane_and_is_said() -> None:
    money = CapEstimate()
    money.add("batch", PRO, "4K", 10)
    money.add("batch", LITE, "1K", 10)
    money.add("now", "a-model-the-table-lacks", "1K", 0)
    ceiling = ceiling_request("1K", 10)
    assert ceiling.batch is not None
    assert money.total.batch.batch == pytest.approx(0.12 + 10 * 1e-6 + ceiling.batch)
    assert money.total.now == pytest.approx(0.1344)  # the interactive price in the now lane
    assert money.amount == pytest.approx(0.12 + 10 * 1e-6 + ceiling.batch + 0.1344)
    assert money.known.total is None  # what the run records stays unknown, never a guess
    assert money.unpriced == 2
    assert money.notice() == (
        "2 line(s) without a known price counted at the highest known price for their image size: "
        "1 on a-model-the-table-lacks at $0.1344 per 1K image (now lane, interactive) plus input; "
        "1 on gemini-3.1-flash-lite-image at $0.0672 per 1K image (batch) plus input"
    )


def test_every_line_priced_has_no_notice_and_the_known_figure() -> None:
    money = CapEstimate()
    money.add("batch", PRO, "1K", 0)
    assert money.notice() is None
    assert money.known == money.total and money.amount == pytest.approx(0.0672)


def test_on_vertex_a_line_without_a_vertex_price_counts_at_vertex_s_dearest_price() -> None:
    """gemini-2.5-flash-image has a Gemini API price but none on Vertex: the cap counts it at the dearest
    Vertex price for its size (3 Pro Image's 1K), and says so."""
    money = CapEstimate("vertex")
    money.add("batch", "gemini-2.5-flash-image", "1K", 0)
    assert money.unpriced == 1
    assert money.known.batch.batch is None
    assert money.total.batch.batch == pytest.approx(ceiling_request("1K", 0, "vertex").batch or 0)
    assert money.total.batch.batch == pytest.approx(0.0672)
    assert money.notice() == (
        "1 line(s) without a known price counted at the highest known price for their image size: "
        "1 on gemini-2.5-flash-image at $0.0672 per 1K image (batch) plus input"
    )
    gemini = CapEstimate()
    gemini.add("batch", "gemini-2.5-flash-image", "1K", 0)
    assert gemini.unpriced == 0 and gemini.total.batch.batch == pytest.approx(0.01935)
