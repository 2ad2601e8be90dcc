"""The now lane's spend pacing rules: a call's price, the rolling window, a refusal's RetryInfo (pure)."""

from __future__ import annotations

import pytest

from promptdrop import pacing
from promptdrop.cost import ceiling_request, estimate_request
from promptdrop.models import DEFAULT_MODEL
from promptdrop.settings import Settings


def _request(prompt: str = "a red fox", size: str | None = None, images: int = 0) -> dict[str, object]:
    parts: list[dict[str, object]] = [{"text": prompt}]
    parts += [{"inlineData": {"mimeType": "image/png", "data": "AAAA"}} for _ in range(images)]
    request: dict[str, object] = {"contents": [{"role": "user", "parts": parts}]}
    if size:
        request["generationConfig"] = {"imageConfig": {"imageSize": size}}
    return request


def test_a_call_costs_its_models_interactive_price_for_its_size_and_input() -> None:
    price = pacing.call_price(DEFAULT_MODEL, _request("x" * 400, "4K", images=2))
    expected = estimate_request(DEFAULT_MODEL, "4K", 100 + 2 * 560).interactive
    assert expected is not None and price == pytest.approx(expected)
    assert pacing.call_price(DEFAULT_MODEL, _request()) < price  # 1K, the model's default size


def test_a_call_on_an_unpriced_model_counts_at_the_highest_known_price() -> None:
    """As the budget cap counts it: a model the table lacks can never turn the pacing off."""
    price = pacing.call_price("gemini-from-the-future", _request("abcd"))
    assert price == pytest.approx(ceiling_request("1K", 1).interactive or 0.0)
    assert price > 0


@pytest.mark.parametrize(
    ("entries", "now", "expected_wait"),
    [
        ([], 0.0, 0.0),
        ([(0.0, 0.1)], 1.0, 0.0),  # 0.1 + 0.1 <= 0.25
        ([(0.0, 0.1), (5.0, 0.1)], 6.0, 594.0),  # the first call must leave the window
        ([(0.0, 0.1), (5.0, 0.1)], 600.0, 0.0),  # it has: taken
        ([(0.0, 0.2), (5.0, 0.04)], 6.0, 594.0),
    ],
)
def test_the_window_takes_what_fits_and_says_how_long_the_rest_waits(
    entries: list[pacing.Entry], now: float, expected_wait: float
) -> None:
    kept, wait = pacing.window_take(entries, 0.1, 0.25, now, 600.0)
    assert wait == pytest.approx(expected_wait)
    if wait == 0.0:
        assert kept[-1] == (now, 0.1) and all(at > now - 600.0 for at, _ in kept)
    else:
        assert kept == sorted(entries)  # nothing taken


def test_a_call_dearer_than_the_whole_limit_goes_alone_once_the_window_is_empty() -> None:
    assert pacing.window_take([], 5.0, 1.0, 0.0) == ([(0.0, 5.0)], 0.0)
    _, wait = pacing.window_take([(0.0, 5.0)], 5.0, 1.0, 100.0)
    assert wait == pytest.approx(500.0)


def test_expired_entries_are_dropped() -> None:
    kept, wait = pacing.window_take([(0.0, 0.1), (700.0, 0.1)], 0.1, 1.0, 800.0)
    assert wait == 0.0 and kept == [(700.0, 0.1), (800.0, 0.1)]


@pytest.mark.parametrize(
    ("details", "expected"),
    [
        ([{"@type": pacing.RETRY_INFO_TYPE, "retryDelay": "19s"}], 19.0),
        (
            [
                {"@type": "type.googleapis.com/google.rpc.Help"},
                {"@type": pacing.RETRY_INFO_TYPE, "retryDelay": "1.5s"},
            ],
            1.5,
        ),
        ([{"@type": pacing.RETRY_INFO_TYPE, "retryDelay": {"seconds": 2, "nanos": 500_000_000}}], 2.5),
        ([{"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []}], None),
        ([{"@type": pacing.RETRY_INFO_TYPE, "retryDelay": "soon"}], None),
        (None, None),
        ("not a list", None),
    ],
)
def test_a_refusal_says_how_long_to_wait_in_its_retry_info(details: object, expected: float | None) -> None:
    error = {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "x", "details": details}
    assert pacing.retry_delay(error) == expected


@pytest.mark.parametrize(("tier", "limit"), [("1", 10.0), ("2", 50.0), ("3", 200.0)])
def test_the_spend_limit_defaults_to_the_tiers_and_can_be_set(tier: str, limit: float) -> None:
    assert Settings.from_env({"PROMPTDROP_TIER": tier}).now_spend_limit == limit
    env = {"PROMPTDROP_TIER": tier, "PROMPTDROP_NOW_SPEND_PER_10_MIN": "0.3"}
    assert Settings.from_env(env).now_spend_limit == 0.3
    assert Settings.from_env({**env, "PROMPTDROP_NOW_SPEND_PER_10_MIN": "0"}).now_spend_limit == 0.0
