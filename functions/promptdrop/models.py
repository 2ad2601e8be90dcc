"""The one table of image models: what each accepts, what an image bills, and each id's lifecycle.

Validation, the emulator, the cost code and model replacement all read this table. Rates are interactive
USD per million tokens; the Batch API bills half of each. A model missing here is still usable when the API
serves it, but its cost is ``None`` (unknown), never a guess; so is the cost of a listed model whose prices
could not be confirmed (``rates=None``).

Sources (checked 2026-11-30; ``shared/reference/gemini-batch-api.md`` §4.3, §7 and §11.1):
- gemini-3-pro-image (GA 2026-05-28; its preview id shut down 2026-06-25): 1120 image tokens at 1K/2K and
  2000 at 4K at $120/M ($0.134 / $0.24 per image; $0.067 / $0.12 in batch), text input $2/M.
- gemini-3.1-flash-image (GA 2026-05-28; preview shut down 2026-06-25): 747/1120/1680/2520 tokens at
  512/1K/2K/4K at $60/M ($0.045 / $0.067 / $0.101 / $0.151), text input $0.5/M.
- gemini-3.1-flash-lite-image: 1K only, the standard and the extreme ratios (14), 65,536 input tokens
  (Google's model page). Its price is not on Google's pricing page (only third-party figures), so its
  cost is unknown; its image tokens (1120, as the other 1K images) only feed the enqueued-token budget.
- gemini-2.5-flash-image: 1290 tokens at 1K at $30/M ($0.039); earliest shutdown 2026-10-02.
- Reference images per request ("Maximum images per prompt", Google's Vertex AI model pages, the same
  models): 14 for gemini-3-pro-image(-preview) and gemini-3.1-flash-image(-preview), 3 for
  gemini-2.5-flash-image; none documented for gemini-3.1-flash-lite-image (not checked there).
The dates are "earliest possible shutdown" as announced; whether an id is still served is asked of the API
(``models.get``) before a run's first batch: this table only says what replaces a retired id.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date
from types import MappingProxyType
from typing import Final, Literal

BATCH_DISCOUNT: Final = 0.5

STANDARD_RATIOS: Final = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")
EXTREME_RATIOS: Final = ("1:4", "4:1", "1:8", "8:1")

RetiredPolicy = Literal["upgrade", "refuse"]


@dataclass(frozen=True, slots=True)
class Rates:
    """Interactive prices in USD per million tokens."""

    text_input: float
    image_input: float
    text_output: float
    image_output: float


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What one image model id accepts, what it costs, and when it is (or was) served."""

    name: str
    aspect_ratios: tuple[str, ...]
    # imageSize class -> output image tokens billed per image.
    image_tokens: MappingProxyType[str, int]
    default_size: str
    rates: Rates | None  # None: not confirmed on Google's pricing page, so cost is unknown
    max_input_tokens: int
    # Tokens one reference (input) image costs, for the estimate.
    input_image_tokens: int = 560
    # Reference images (image parts) one request may carry; None: no documented maximum.
    max_input_images: int | None = None
    released: date | None = None
    shutdown: date | None = None  # earliest announced shutdown
    replacement: str | None = None  # the id that takes over its lines once it is no longer served

    @property
    def image_sizes(self) -> tuple[str, ...]:
        return tuple(self.image_tokens)

    def tokens_for(self, size: str) -> int:
        """Output image tokens of one image of this size class (the default size's for an unknown one)."""
        return self.image_tokens.get(size, self.image_tokens[self.default_size])

    def image_cost(self, size: str, *, batch: bool) -> float | None:
        """USD for one output image of this size class; None when the price is unknown."""
        if self.rates is None:
            return None
        price = self.tokens_for(size) * self.rates.image_output / 1_000_000
        return price * BATCH_DISCOUNT if batch else price

    def retired_on(self, today: date) -> bool:
        """The announced shutdown date has come."""
        return self.shutdown is not None and self.shutdown <= today


def _spec(
    name: str,
    ratios: tuple[str, ...],
    tokens: dict[str, int],
    rates: Rates | None,
    *,
    max_input_tokens: int,
    max_input_images: int | None,
    released: date | None = None,
    default_size: str = "1K",
) -> ModelSpec:
    return ModelSpec(
        name=name,
        aspect_ratios=ratios,
        image_tokens=MappingProxyType(tokens),
        default_size=default_size,
        rates=rates,
        max_input_tokens=max_input_tokens,
        max_input_images=max_input_images,
        released=released,
    )


def _retired(spec: ModelSpec, name: str, *, shutdown: date, replacement: str) -> ModelSpec:
    """A retired id with the capabilities and prices of the model that replaced it."""
    return replace(spec, name=name, released=None, shutdown=shutdown, replacement=replacement)


_PRO_IMAGE = _spec(
    "gemini-3-pro-image",
    STANDARD_RATIOS,
    {"1K": 1120, "2K": 1120, "4K": 2000},
    Rates(text_input=2.0, image_input=2.0, text_output=12.0, image_output=120.0),
    max_input_tokens=65_536,
    max_input_images=14,
    released=date(2026, 5, 28),
)
_FLASH_31_IMAGE = _spec(
    "gemini-3.1-flash-image",
    STANDARD_RATIOS + EXTREME_RATIOS,
    {"512": 747, "1K": 1120, "2K": 1680, "4K": 2520},
    Rates(text_input=0.5, image_input=0.5, text_output=3.0, image_output=60.0),
    max_input_tokens=65_536,
    max_input_images=14,
    released=date(2026, 5, 28),
)
_FLASH_LITE_31_IMAGE = _spec(
    "gemini-3.1-flash-lite-image",
    STANDARD_RATIOS + EXTREME_RATIOS,
    {"1K": 1120},
    None,
    max_input_tokens=65_536,
    max_input_images=None,
)
_FLASH_25_IMAGE = replace(
    _spec(
        "gemini-2.5-flash-image",
        STANDARD_RATIOS,
        {"1K": 1290},
        Rates(text_input=0.3, image_input=0.3, text_output=2.5, image_output=30.0),
        max_input_tokens=32_768,
        max_input_images=3,
    ),
    shutdown=date(2026, 10, 2),
    replacement="gemini-3.1-flash-image",
)
_PREVIEW_SHUTDOWN: Final = date(2026, 6, 25)

MODELS: Final[MappingProxyType[str, ModelSpec]] = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            _PRO_IMAGE,
            _FLASH_31_IMAGE,
            _FLASH_LITE_31_IMAGE,
            _FLASH_25_IMAGE,
            _retired(
                _PRO_IMAGE,
                "gemini-3-pro-image-preview",
                shutdown=_PREVIEW_SHUTDOWN,
                replacement="gemini-3-pro-image",
            ),
            _retired(
                _FLASH_31_IMAGE,
                "gemini-3.1-flash-image-preview",
                shutdown=_PREVIEW_SHUTDOWN,
                replacement="gemini-3.1-flash-image",
            ),
        )
    }
)

DEFAULT_MODEL: Final = "gemini-3-pro-image"


def bare_model_id(model: str) -> str:
    """``models/x`` -> ``x``."""
    return model.removeprefix("models/")


def model_spec(model: str) -> ModelSpec | None:
    """The spec of a model id (with or without the ``models/`` prefix), or None if unknown."""
    return MODELS.get(bare_model_id(model))


def served_by_schedule(model: str, today: date) -> bool:
    """What the table alone says: listed and not past its announced shutdown (the emulator serves these)."""
    spec = model_spec(model)
    return spec is not None and not spec.retired_on(today)


@dataclass(frozen=True, slots=True)
class ModelChoice:
    """What a run does with the lines that ask for one model id.

    ``model`` is the id the lines run on (None: they are refused with ``code``/``message``); ``notice`` is
    said once per run to people (a replacement, or a shutdown that has come but not yet happened).
    """

    requested: str
    model: str | None
    code: str | None = None  # "retired_model" / "unknown_model" when refused
    message: str | None = None
    notice: str | None = None
    shutdown: date | None = None

    @property
    def replaced(self) -> bool:
        return self.model is not None and self.model != self.requested

    def to_json(self) -> dict[str, object]:
        return {
            "requested": self.requested,
            "model": self.model,
            "code": self.code,
            "message": self.message,
            "notice": self.notice,
            "shutdown": self.shutdown.isoformat() if self.shutdown else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> ModelChoice:
        shutdown = data.get("shutdown")
        return cls(
            requested=str(data["requested"]),
            model=str(data["model"]) if data.get("model") else None,
            code=str(data["code"]) if data.get("code") else None,
            message=str(data["message"]) if data.get("message") else None,
            notice=str(data["notice"]) if data.get("notice") else None,
            shutdown=date.fromisoformat(shutdown) if isinstance(shutdown, str) else None,
        )


def choose_model(
    requested: str, served: Callable[[str], bool], *, policy: RetiredPolicy, today: date
) -> ModelChoice:
    """Decide what lines asking for ``requested`` run on. ``served`` asks the API (models.get).

    The API decides what is served; the table only says what replaces an id that is not. A served id runs
    as asked (with a notice once its announced shutdown has come); an unserved id with a replacement runs
    on it (``upgrade``) or is refused as ``retired_model`` (``refuse``); anything else is ``unknown_model``.
    """
    bare = bare_model_id(requested)
    spec = model_spec(bare)
    if served(bare):
        if spec is not None and spec.retired_on(today):
            notice = f"{bare} is still served, but its announced shutdown date {spec.shutdown} has passed" + (
                f": move to {spec.replacement}" if spec.replacement else ""
            )
            return ModelChoice(bare, bare, notice=notice, shutdown=spec.shutdown)
        return ModelChoice(bare, bare)
    if spec is None or spec.replacement is None:
        return ModelChoice(
            bare,
            None,
            code="unknown_model",
            message=f"the Gemini API does not serve model {bare!r} (models.get: not found)",
        )
    when = f"on {spec.shutdown}" if spec.shutdown else "by Google"
    if policy == "refuse":
        return ModelChoice(
            bare,
            None,
            code="retired_model",
            message=(
                f"{bare} was shut down {when}; use {spec.replacement} "
                "(PROMPTDROP_RETIRED_MODELS=refuse, so it was not replaced)"
            ),
            shutdown=spec.shutdown,
        )
    # Follow the chain of replacements to the first id the API serves.
    target: str | None = spec.replacement
    seen = {bare}
    while target is not None and target not in seen:
        if served(target):
            return ModelChoice(
                bare,
                target,
                notice=f"{bare} was shut down {when}: its lines run on {target}",
                shutdown=spec.shutdown,
            )
        seen.add(target)
        next_spec = model_spec(target)
        target = next_spec.replacement if next_spec else None
    return ModelChoice(
        bare,
        None,
        code="unknown_model",
        message=f"{bare} was shut down {when} and the API serves none of its replacements",
        shutdown=spec.shutdown,
    )


def predict_choice(requested: str, *, policy: RetiredPolicy, today: date) -> ModelChoice:
    """The choice the table alone predicts (for ``run --dry-run``, which asks the API nothing)."""
    bare = bare_model_id(requested)
    if model_spec(bare) is None:
        # Not ours to judge without the API: it runs if the API serves it (cost unknown).
        return ModelChoice(
            bare, bare, notice=f"{bare} is not in promptdrop's model table: its cost is unknown"
        )
    return choose_model(bare, lambda m: served_by_schedule(m, today), policy=policy, today=today)
