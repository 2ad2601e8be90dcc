"""The now lane's spend rate: each call's interactive price held against a rolling 10-minute window (pure).

Google's spend-based rate limits answer 429 ``RESOURCE_EXHAUSTED`` once a project's spend in a rolling
10 minutes passes its tier's figure (``models.NOW_SPEND_PER_10_MIN``). The now lane takes each call's price
from one window in the job store before sending it (``window_take``, applied inside one transaction), so
every process and function instance of a deployment paces under the same figure; a call that would pass it
waits until enough older calls have left the window. A 429 that still comes waits as its ``RetryInfo`` says
(``retry_delay``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from promptdrop.cost import ceiling_request, estimate_request
from promptdrop.models import model_spec

SPEND_WINDOW_SECONDS: Final = 600.0  # "per rolling 10 minutes"
NOW_SPEND_KEY: Final = "now_spend"  # the window's key in the job store: one per project, as Google counts
RETRY_INFO_TYPE: Final = "type.googleapis.com/google.rpc.RetryInfo"
_EPSILON = 1e-9  # float noise in sums of prices
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")  # a google.protobuf.Duration in JSON: "19s", "1.5s"

Entry = tuple[float, float]  # (epoch seconds the call was let go, USD)


def call_price(model: str, request: Mapping[str, Any]) -> float:
    """The interactive price of one ``generateContent`` call: its image size and estimated input tokens at its
    model's price, or at the highest known price when its model has none (as the budget cap counts it)."""
    spec = model_spec(model)
    config = request.get("generationConfig") or request.get("generation_config") or {}
    image_config = config.get("imageConfig") or config.get("image_config") or {}
    size = str(image_config.get("imageSize") or image_config.get("image_size") or "")
    size = size or (spec.default_size if spec else "1K")
    text_chars, images = 0, 0
    system = request.get("systemInstruction") or request.get("system_instruction") or {}
    for content in [*(request.get("contents") or []), system]:
        for part in (content.get("parts") or []) if isinstance(content, Mapping) else []:
            if isinstance(part, Mapping):
                text_chars += len(str(part.get("text") or ""))
                images += any(name in part for name in ("inlineData", "inline_data", "fileData", "file_data"))
    tokens = math.ceil(text_chars / 4) + images * (spec.input_image_tokens if spec else 560)
    price = estimate_request(model, size, tokens).interactive
    if price is None:
        price = ceiling_request(size, tokens).interactive
    return price or 0.0


def window_take(
    entries: Sequence[Entry], amount: float, limit: float, now: float, window: float = SPEND_WINDOW_SECONDS
) -> tuple[list[Entry], float]:
    """Take ``amount`` from the window if it fits: (the entries to store, 0.0). Else (the live entries, the
    seconds until enough of them have left the window for it to fit). Entries older than the window are
    dropped. A call dearer than the whole limit goes alone, once the window is empty (never stuck)."""
    live = sorted(entry for entry in entries if entry[0] > now - window)
    spent = sum(usd for _, usd in live)
    if not live or spent + amount <= limit + _EPSILON:
        return [*live, (now, amount)], 0.0
    for at, usd in live:
        spent -= usd
        if spent + amount <= limit + _EPSILON or spent <= _EPSILON:
            return live, max(at + window - now, 0.001)
    raise AssertionError("unreachable: the window empties after its last entry")


def retry_delay(error: Mapping[str, Any]) -> float | None:
    """Seconds a refusal asks the caller to wait (``google.rpc.RetryInfo.retryDelay`` in the error's
    details), or None when it carries none."""
    details = error.get("details")
    for detail in details if isinstance(details, list) else []:
        if isinstance(detail, Mapping) and detail.get("@type") == RETRY_INFO_TYPE:
            delay = detail.get("retryDelay", detail.get("retry_delay"))
            if isinstance(delay, str) and (found := _DURATION.match(delay)):
                return float(found.group(1))
            if isinstance(delay, Mapping):  # the proto form {"seconds": ..., "nanos": ...}
                return float(delay.get("seconds") or 0) + float(delay.get("nanos") or 0) / 1e9
    return None
