"""The one table of image models: what each accepts, how many tokens an image bills, and every rate.

Validation, the emulator and the cost code all read this table. Rates are interactive USD per million
tokens; the Batch API bills half of each. A model missing here is still usable, but its cost is
``None`` (unknown), never a guess.

Sources (checked 2026-11): Gemini API pricing page and image-generation docs, as quoted in
``shared/reference/gemini-batch-api.md`` §4.3/§7 and DESIGN.md. gemini-3-pro-image-preview bills 1120
image tokens at 1K/2K and 2000 at 4K at $120/M ($0.134 / $0.24 per image); gemini-3.1-flash-image bills
747/1120/1680/2520 at 512/1K/2K/4K at $60/M ($0.045 / $0.067 / $0.101 / $0.151); gemini-2.5-flash-image
bills 1290 tokens at 1K at $30/M ($0.039).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

BATCH_DISCOUNT: Final = 0.5

STANDARD_RATIOS: Final = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")
EXTREME_RATIOS: Final = ("1:4", "4:1", "1:8", "8:1")


@dataclass(frozen=True, slots=True)
class Rates:
    """Interactive prices in USD per million tokens."""

    text_input: float
    image_input: float
    text_output: float
    image_output: float


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What one image model accepts and what it costs."""

    name: str
    aspect_ratios: tuple[str, ...]
    # imageSize class -> output image tokens billed per image.
    image_tokens: MappingProxyType[str, int]
    default_size: str
    rates: Rates
    max_input_tokens: int
    # Tokens one reference (input) image costs, for the estimate.
    input_image_tokens: int = 560

    @property
    def image_sizes(self) -> tuple[str, ...]:
        return tuple(self.image_tokens)

    def image_cost(self, size: str, *, batch: bool) -> float:
        """USD for one output image of this size class."""
        tokens = self.image_tokens.get(size, self.image_tokens[self.default_size])
        price = tokens * self.rates.image_output / 1_000_000
        return price * BATCH_DISCOUNT if batch else price


def _spec(
    name: str,
    ratios: tuple[str, ...],
    tokens: dict[str, int],
    rates: Rates,
    *,
    max_input_tokens: int,
    default_size: str = "1K",
) -> ModelSpec:
    return ModelSpec(
        name=name,
        aspect_ratios=ratios,
        image_tokens=MappingProxyType(tokens),
        default_size=default_size,
        rates=rates,
        max_input_tokens=max_input_tokens,
    )


_PRO_IMAGE = _spec(
    "gemini-3-pro-image-preview",
    STANDARD_RATIOS,
    {"1K": 1120, "2K": 1120, "4K": 2000},
    Rates(text_input=2.0, image_input=2.0, text_output=12.0, image_output=120.0),
    max_input_tokens=65_536,
)
_FLASH_31_IMAGE = _spec(
    "gemini-3.1-flash-image-preview",
    STANDARD_RATIOS + EXTREME_RATIOS,
    {"512": 747, "1K": 1120, "2K": 1680, "4K": 2520},
    Rates(text_input=0.5, image_input=0.5, text_output=3.0, image_output=60.0),
    max_input_tokens=65_536,
)
_FLASH_25_IMAGE = _spec(
    "gemini-2.5-flash-image",
    STANDARD_RATIOS,
    {"1K": 1290},
    Rates(text_input=0.3, image_input=0.3, text_output=2.5, image_output=30.0),
    max_input_tokens=32_768,
)

MODELS: Final[MappingProxyType[str, ModelSpec]] = MappingProxyType(
    {
        "gemini-3-pro-image-preview": _PRO_IMAGE,
        "gemini-3-pro-image": _PRO_IMAGE,
        "gemini-3.1-flash-image-preview": _FLASH_31_IMAGE,
        "gemini-3.1-flash-image": _FLASH_31_IMAGE,
        "gemini-2.5-flash-image": _FLASH_25_IMAGE,
    }
)

DEFAULT_MODEL: Final = "gemini-3-pro-image-preview"


def model_spec(model: str) -> ModelSpec | None:
    """The spec of a model id (with or without the ``models/`` prefix), or None if unknown."""
    return MODELS.get(model.removeprefix("models/"))
