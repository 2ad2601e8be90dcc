"""The one table of image models: what each accepts, what an image bills, each id's lifecycle and quota.

Validation, the emulator, the cost code and model choice all read this table, but it is hints: what is
served is asked of the API (``models.list``), and a served model missing here still runs, with the checks
it cannot make skipped and its cost ``None`` (unknown), never a guess; so is the cost of a size whose token
count no page gives, or of a model whose prices could not be confirmed (``rates=None``).

Rates are interactive USD per million tokens; the Batch API bills half of each. An **alias** is the same
model under another id (a preview id and its GA id): its lines follow it. A **successor** is a different
model Google points to (other price, look and quality): lines are moved to it only when asked
(``PROMPTDROP_RETIRED_MODELS=upgrade`` or ``PROMPTDROP_MODEL_MAP``).

Sources (checked 2026-12-07; ``shared/reference/gemini-batch-api.md`` §4.3, §7, §11.1, §12.1, §12.2; the
``search`` of Google's and third parties' pages found no Google page newer than those):
- gemini-3-pro-image (GA 2026-05-28; its preview id shut down 2026-06-25): 1120 image tokens at 1K/2K and
  2000 at 4K at $120/M ($0.134 / $0.24 per image; $0.067 / $0.12 in batch), text input $2/M.
- gemini-3.1-flash-image (GA 2026-05-28; preview shut down 2026-06-25): 747/1120/1680/2520 tokens at
  512/1K/2K/4K at $60/M ($0.045 / $0.067 / $0.101 / $0.151), text input $0.5/M. Deprecated 2026-10-06,
  successor gemini-nano-banana-2.1 (changelog, §12.1). Shutdown: third parties (LiteLLM discussion #44983,
  skills.sh "nanobanana") say 2026-10-29; no Google page gives it, so it is unknown here.
- gemini-nano-banana-2.1 (GA 2026-10-06, §12.1): 1K/2K/4K (512 refused), the 14 ratios, 14 reference
  images. $30/M image output, $1.50/M text input, $7.50/M text output per third-party release notes
  (LiteLLM discussion #44983: "$0.0336 per 1K image" -> 1120 tokens at 1K; inference.sh: "$0.0336-$0.1134
  per image (1K-4K)" -> 3780 tokens at 4K). No page gives the 2K count: its 2K cost is unknown. Whether the
  Gemini API takes it in batch is not confirmed on Google's pages (listed for Vertex batch): the API's
  ``supportedGenerationMethods`` decide.
- gemini-3.1-flash-lite-image (GA 2026-06-30): 1K only, the 14 ratios, 65,536 input tokens (Google's
  model page). Its price is only on third-party pages (one, unconfirmed), so its cost is unknown; its image
  tokens (1120, as the other 1K images) only feed the enqueued-token budget.
- gemini-2.5-flash-image: 1290 tokens at 1K at $30/M ($0.039). Changelog 2026-09-18: 2.5 models are
  limited to projects that already used them and are not deprecated until further notice (the 2026-10-02
  shutdown this table carried before was wrong).
- Reference images per request ("Maximum images per prompt", Google's Vertex AI model pages): 14 for
  gemini-3-pro-image and gemini-3.1-flash-image, 3 for gemini-2.5-flash-image; none documented for
  gemini-3.1-flash-lite-image.
- Enqueued-token quotas per tier (rate-limits page, 2026-08-18, §12.2): Tier 1 1,000,000 for 3.1 Flash
  Image and 2,000,000 for 3 Pro Image and Flash-Lite Image; Tier 2 250M / 270M / 270M; Tier 3 750M / 1B /
  1B. None given for gemini-nano-banana-2.1 or gemini-2.5-flash-image: they get the smallest figure of
  their tier (``enqueued_token_budget``), so a job never overshoots a quota we do not know.
- Spend-based rate limits per rolling 10 minutes (``NOW_SPEND_PER_10_MIN``): $10 / $50 / $200 for Tiers
  1/2/3 per the reference (§12.2, rate-limits page, 2026-08-18), answered 429 RESOURCE_EXHAUSTED. Checked
  2026-12-07 with the ``search`` tool: the stored copy of ai.google.dev/gemini-api/docs/rate-limits
  ("Spend-based rate limits", the zh-CN rendering; the English one was not stored) gives $10 for Tier 1 and
  $200 for Tier 3 but $200 for Tier 2. Tier 2 is unconfirmed: the lower $50 is kept (pacing under a limit
  lower than Google's only spreads calls more; above it, calls would be refused).

Vertex AI batch inference (``PROMPTDROP_BACKEND=vertex``; ``VertexBatch``, checked 2026-12-07 with the
``search`` tool; reference §12.4; issue 23). Where sources disagree the safe side is kept: a location not
listed refuses the line, a size no page confirms for batch runs with a notice, a price not found is unknown.
- Which models and locations: Google's Vertex batch pages, as the reference (§12.4) and issue 23 quote them,
  list batch for gemini-3-pro-image in location ``global`` only and gemini-3.1-flash-image in ``global``,
  ``us`` and ``eu``. The stored Vertex model pages (docs.cloud.google.com .../models/gemini/3-pro-image and
  .../3-1-flash-image, GA ids) list "Batch inference" among their consumption options and more regions for
  online calls (us-central1, us-east1, ... for 3 Pro Image): those are online endpoints, not batch ones, so
  the batch list is kept. gemini-nano-banana-2.1 is "listed for Vertex batch" (§12.1) with no location
  found: it runs with a notice. No page found says whether gemini-3.1-flash-lite-image or
  gemini-2.5-flash-image take batch on Vertex: they run with a notice (the job is refused by Vertex if not).
- Sizes: the model pages list 1K, 2K, 4K (4K "Preview") for 3 Pro Image and 512, 1K, 2K, 4K (4K "Preview")
  for 3.1 Flash Image, online. For batch, a July 2026 third-party note says Vertex batch images came out
  1K only, a third party says 4K went GA on 2026-08-31, and js-genai issue #1682 (2026-06-13, closed)
  reports the GA 3.1 Flash Image on Vertex returning 1K whatever imageSize asked. Nothing from Google
  confirms or denies other sizes in batch: 1K is the confirmed size, the others run with a notice.
- Prices: Google's batch page for Vertex says "Batch requests for Gemini models are discounted 50% from
  standard requests" (the same ``BATCH_DISCOUNT``). Google's Vertex pricing page itself was not in the
  stored pages; third-party copies of it give, for Gemini 3 Pro Image, $120/M image output ($60/M in batch)
  and $2/M input (finout.io, "top 16 Vertex services in 2026"), and for 3.1 Flash Image $0.50/M input and
  $0.067 per 1K image = $60/M (University of Florida NaviGator model page, a Vertex deployment): the same
  rates as the Gemini API, used here. No Vertex price was found for gemini-nano-banana-2.1,
  gemini-3.1-flash-lite-image or gemini-2.5-flash-image: their Vertex cost is unknown (None).
- No per-tier enqueued-token quota on Vertex (a shared pool, §12.4): the quotas above are the Gemini API's.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date
from types import MappingProxyType
from typing import Final, Literal

from promptdrop.errors import ConfigurationError

BATCH_DISCOUNT: Final = 0.5

STANDARD_RATIOS: Final = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")
EXTREME_RATIOS: Final = ("1:4", "4:1", "1:8", "8:1")

# What lines on an id the API no longer serves do: "aliases" follow an alias (the same model under its new
# id) and refuse a successor (a different model); "upgrade" follows both; "refuse" follows neither.
RetiredPolicy = Literal["aliases", "upgrade", "refuse"]
Tier = Literal[1, 2, 3]
# USD of interactive calls a project may spend per rolling 10 minutes at tier 1/2/3 (sources above).
NOW_SPEND_PER_10_MIN: Final[tuple[float, float, float]] = (10.0, 50.0, 200.0)

GENERATE: Final = "generateContent"
BATCH_GENERATE: Final = "batchGenerateContent"
# The text models Google serves for batch: gemini-2.5-flash in every batch example of Google's guide and blog,
# gemini-3.5-flash (Google's model page: stable, "Batch API: Supported"; preview id gemini-3-flash-preview),
# gemini-2.5-pro and gemini-3.1-pro-preview (the Pro ids of Google's model list as last read). The emulator
# serves them answering text, because SDK users batch text too.
TEXT_MODELS: Final = (
    "gemini-2.5-flash",
    "gemini-2.5-pro",
    "gemini-3.5-flash",
    "gemini-3-flash-preview",
    "gemini-3.1-pro-preview",
)


@dataclass(frozen=True, slots=True)
class Rates:
    """Interactive prices in USD per million tokens."""

    text_input: float
    image_input: float
    text_output: float
    image_output: float


Backend = Literal["gemini", "vertex"]
VERTEX: Final = "vertex"


@dataclass(frozen=True, slots=True)
class VertexBatch:
    """What Vertex AI batch inference takes for one model (sources in the module docstring)."""

    batch: bool | None  # takes batch on Vertex; None: no page says
    locations: tuple[str, ...] | None  # locations listed for batch; None: none listed (unconfirmed)
    sizes: tuple[str, ...] = ()  # image sizes confirmed in batch; others the model accepts are unconfirmed
    refused_sizes: tuple[str, ...] = ()  # sizes a page says batch does not take there
    rates: Rates | None = None  # Vertex's interactive prices; None: none found (cost unknown)


_VERTEX_UNKNOWN: Final = VertexBatch(batch=None, locations=None)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What one image model id accepts, what it costs, when it is (or was) served, and what replaces it."""

    name: str
    aspect_ratios: tuple[str, ...]
    # imageSize class -> output image tokens billed per image; a size it accepts but no page gives a
    # count for is in ``sizes`` only (its cost is unknown).
    image_tokens: MappingProxyType[str, int]
    default_size: str
    rates: Rates | None  # None: not confirmed, so cost is unknown
    max_input_tokens: int
    # Tokens one reference (input) image costs, for the estimate.
    input_image_tokens: int = 560
    # Reference images (image parts) one request may carry; None: no documented maximum.
    max_input_images: int | None = None
    released: date | None = None
    deprecated: date | None = None  # when Google announced its end
    shutdown: date | None = None  # earliest announced shutdown; None: none announced (or no official date)
    alias_of: str | None = None  # the same model under its current id (preview -> GA)
    successor: str | None = None  # the different model Google points to
    batch: bool | None = True  # takes batchGenerateContent on the Gemini API; None: unconfirmed
    # Enqueued-token quota per tier 1/2/3 (rate-limits page); None: no figure published.
    enqueued_tokens: tuple[int, int, int] | None = None
    extra_sizes: tuple[str, ...] = ()  # accepted sizes without a published token count
    note: str | None = None
    vertex: VertexBatch = _VERTEX_UNKNOWN  # what Vertex AI batch takes of it

    def on(self, backend: str) -> ModelSpec:
        """This spec as the backend bills it: Vertex's prices on ``vertex``, the Gemini API's elsewhere."""
        return replace(self, rates=self.vertex.rates) if backend == VERTEX else self

    @property
    def image_sizes(self) -> tuple[str, ...]:
        known = tuple(self.image_tokens)
        return known + tuple(s for s in self.extra_sizes if s not in known)

    def tokens_for(self, size: str) -> int:
        """Output image tokens of one image of this size class, for the enqueued-token budget: the largest
        known count when this size has none (a budget must not be undercounted)."""
        return self.image_tokens.get(size) or max(self.image_tokens.values())

    def image_cost(self, size: str, *, batch: bool) -> float | None:
        """USD for one output image of this size class; None when its price or token count is unknown."""
        tokens = self.image_tokens.get(size)
        if self.rates is None or tokens is None:
            return None
        price = tokens * self.rates.image_output / 1_000_000
        return price * BATCH_DISCOUNT if batch else price

    def retired_on(self, today: date) -> bool:
        """The announced shutdown date has come."""
        return self.shutdown is not None and self.shutdown <= today

    @property
    def replacement(self) -> str | None:
        return self.alias_of or self.successor


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
    enqueued_tokens: tuple[int, int, int] | None = None,
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
        enqueued_tokens=enqueued_tokens,
    )


def _alias(spec: ModelSpec, name: str, *, shutdown: date) -> ModelSpec:
    """An old id of the same model: its capabilities, prices and quota."""
    return replace(
        spec, name=name, released=None, shutdown=shutdown, alias_of=spec.name, successor=None, deprecated=None
    )


_PRO_IMAGE_RATES: Final = Rates(text_input=2.0, image_input=2.0, text_output=12.0, image_output=120.0)
_PRO_IMAGE = replace(
    _spec(
        "gemini-3-pro-image",
        STANDARD_RATIOS,
        {"1K": 1120, "2K": 1120, "4K": 2000},
        _PRO_IMAGE_RATES,
        max_input_tokens=65_536,
        max_input_images=14,
        released=date(2026, 5, 28),
        enqueued_tokens=(2_000_000, 270_000_000, 1_000_000_000),
    ),
    vertex=VertexBatch(batch=True, locations=("global",), sizes=("1K",), rates=_PRO_IMAGE_RATES),
)
_NANO_BANANA_21 = replace(
    _spec(
        "gemini-nano-banana-2.1",
        STANDARD_RATIOS + EXTREME_RATIOS,
        {"1K": 1120, "4K": 3780},  # third-party per-image prices at $30/M (docstring); 2K: no count found
        # Third-party release notes (docstring); image input at the text input rate, as every other model.
        Rates(text_input=1.5, image_input=1.5, text_output=7.5, image_output=30.0),
        max_input_tokens=65_536,  # assumed as its predecessor's: only a bound for the line check
        max_input_images=14,
        released=date(2026, 10, 6),
    ),
    extra_sizes=("2K",),
    batch=None,  # Gemini API batch not confirmed on Google's pages
    vertex=VertexBatch(batch=True, locations=None),  # listed for Vertex batch; no location, size or price
)
_FLASH_31_IMAGE_RATES: Final = Rates(text_input=0.5, image_input=0.5, text_output=3.0, image_output=60.0)
_FLASH_31_IMAGE = replace(
    _spec(
        "gemini-3.1-flash-image",
        STANDARD_RATIOS + EXTREME_RATIOS,
        {"512": 747, "1K": 1120, "2K": 1680, "4K": 2520},
        _FLASH_31_IMAGE_RATES,
        max_input_tokens=65_536,
        max_input_images=14,
        released=date(2026, 5, 28),
        enqueued_tokens=(1_000_000, 250_000_000, 750_000_000),
    ),
    deprecated=date(2026, 10, 6),
    successor=_NANO_BANANA_21.name,
    note="shutdown 2026-10-29 per third parties; no Google page gives a date",
    vertex=VertexBatch(
        batch=True, locations=("global", "us", "eu"), sizes=("1K",), rates=_FLASH_31_IMAGE_RATES
    ),
)
_FLASH_LITE_31_IMAGE = _spec(
    "gemini-3.1-flash-lite-image",
    STANDARD_RATIOS + EXTREME_RATIOS,
    {"1K": 1120},
    None,
    max_input_tokens=65_536,
    max_input_images=None,
    released=date(2026, 6, 30),
    enqueued_tokens=(2_000_000, 270_000_000, 1_000_000_000),
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
    note="limited to projects that already used it; not deprecated until further notice (changelog 2026-09-18)",
)
_PREVIEW_SHUTDOWN: Final = date(2026, 6, 25)

MODELS: Final[MappingProxyType[str, ModelSpec]] = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            _PRO_IMAGE,
            _NANO_BANANA_21,
            _FLASH_31_IMAGE,
            _FLASH_LITE_31_IMAGE,
            _FLASH_25_IMAGE,
            _alias(_PRO_IMAGE, "gemini-3-pro-image-preview", shutdown=_PREVIEW_SHUTDOWN),
            _alias(_FLASH_31_IMAGE, "gemini-3.1-flash-image-preview", shutdown=_PREVIEW_SHUTDOWN),
        )
    }
)

DEFAULT_MODEL: Final = "gemini-3-pro-image"


def bare_model_id(model: str) -> str:
    """``models/x`` -> ``x``."""
    return model.removeprefix("models/")


def model_spec(model: str, backend: str | None = None) -> ModelSpec | None:
    """The spec of a model id (with or without the ``models/`` prefix), or None if unknown; with a backend,
    priced as that backend bills it (``ModelSpec.on``)."""
    spec = MODELS.get(bare_model_id(model))
    return spec.on(backend) if spec is not None and backend is not None else spec


def served_by_schedule(model: str, today: date) -> bool:
    """What the table alone says: listed and not past its announced shutdown (the emulator serves these)."""
    spec = model_spec(model)
    return spec is not None and not spec.retired_on(today)


def enqueued_token_budget(model: str, tier: Tier) -> int:
    """The model's enqueued-token quota at this tier; the smallest of the tier's published figures for a
    model without one (a job that fits it fits every image model's quota)."""
    spec = model_spec(model)
    if spec is not None and spec.enqueued_tokens is not None:
        return spec.enqueued_tokens[tier - 1]
    return min(s.enqueued_tokens[tier - 1] for s in MODELS.values() if s.enqueued_tokens is not None)


def batch_price_text(model: str) -> str:
    """``"$0.0168 per 1K image in batch"`` (the default size), or that it is unknown."""
    spec = model_spec(model)
    cost = spec.image_cost(spec.default_size, batch=True) if spec else None
    size = spec.default_size if spec else "1K"
    return f"${cost:.4f} per {size} image in batch" if cost is not None else "batch price unknown"


def parse_model_map(text: str) -> dict[str, str]:
    """``PROMPTDROP_MODEL_MAP``: ``"old=new,other=newer"`` -> ``{"old": "new", "other": "newer"}``."""
    mapping: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        source, sep, target = (side.strip() for side in item.partition("="))
        if not sep or not source or not target:
            raise ConfigurationError(
                f"PROMPTDROP_MODEL_MAP={text!r}: expected comma-separated FROM=TO model ids, "
                f"e.g. gemini-3.1-flash-image=gemini-nano-banana-2.1 (bad item {item!r})"
            )
        mapping[bare_model_id(source)] = bare_model_id(target)
    return mapping


@dataclass(frozen=True, slots=True)
class ServedModels:
    """What the API serves (``models.list``): id -> its ``supportedGenerationMethods``.

    ``source`` says where the answer came from ("api", or "table" when predicted offline).
    """

    methods: Mapping[str, frozenset[str]]
    source: str = "api"

    def serves(self, model: str) -> bool:
        return bare_model_id(model) in self.methods

    def supports(self, model: str, method: str) -> bool:
        return method in self.methods.get(bare_model_id(model), frozenset())

    def closest(self, model: str) -> str | None:
        """The served id nearest to a mistyped one (difflib), if any is close."""
        found = difflib.get_close_matches(bare_model_id(model), list(self.methods), n=1, cutoff=0.75)
        return found[0] if found else None

    @classmethod
    def from_table(cls, today: date, extra: Iterable[str] = ()) -> ServedModels:
        """The table's prediction: ids not past their shutdown (batch unless the table knows it is not)."""
        methods: dict[str, frozenset[str]] = {}
        for name in [*(n for n in MODELS if served_by_schedule(n, today)), *extra]:
            spec = model_spec(name)
            batch = spec is None or spec.batch is not False
            methods[name] = frozenset({GENERATE, "countTokens"} | ({BATCH_GENERATE} if batch else set()))
        return cls(methods, source="table")


@dataclass(frozen=True, slots=True)
class ModelChoice:
    """What a run does with the lines that ask for one model id.

    ``model`` is the id the lines run on (None: they are refused with ``code``/``message``); ``notice`` is
    said once per run to people (a replacement, a deprecation, a model the table lacks).
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


def _when(spec: ModelSpec) -> str:
    return f"on {spec.shutdown}" if spec.shutdown else "(no official shutdown date)"


def _deprecation_notice(spec: ModelSpec, today: date) -> str | None:
    """For a model still served: its announced end, or None when none is announced."""
    if spec.retired_on(today):
        end = f"its announced shutdown date {spec.shutdown} has passed"
    elif spec.deprecated is not None or spec.shutdown is not None:
        since = f" since {spec.deprecated}" if spec.deprecated else ""
        end = f"deprecated{since}, shutdown " + (
            f"on {spec.shutdown}" if spec.shutdown else "announced, no date"
        )
    else:
        return None
    move = f": move to {spec.replacement}" if spec.replacement else ""
    return f"{spec.name} is still served, but {end}{move}"


def _unknown(requested: str, served: ServedModels, why: str) -> ModelChoice:
    guess = served.closest(requested)
    hint = f"; did you mean {guess}?" if guess else ""
    return ModelChoice(requested, None, code="unknown_model", message=f"{why}{hint}")


@dataclass
class _Walk:
    """Ids visited while following aliases and successors (a loop in the table ends the walk)."""

    seen: set[str] = field(default_factory=set)
    upgraded: bool = False  # a successor was taken on the way (not only aliases)


def choose_model(
    requested: str,
    served: ServedModels,
    *,
    policy: RetiredPolicy,
    today: date,
    model_map: Mapping[str, str] | None = None,
) -> ModelChoice:
    """Decide what lines asking for ``requested`` run on, from what the API serves.

    ``PROMPTDROP_MODEL_MAP`` is applied first (the user's choice). A served id runs as asked (with a notice
    when it is deprecated or missing from the table). An unserved alias runs on its target (unless
    ``refuse``); an unserved model with a successor is refused as ``retired_model`` naming the successor and
    both batch prices, unless ``upgrade``. Anything else is ``unknown_model``, with the closest served id.
    """
    bare = bare_model_id(requested)
    mapped = (model_map or {}).get(bare)
    if mapped is not None:
        if not served.serves(mapped):
            return _unknown(
                bare, served, f"PROMPTDROP_MODEL_MAP sends {bare} to {mapped}, which the API does not serve"
            )
        return ModelChoice(bare, mapped, notice=f"{bare} runs on {mapped} (PROMPTDROP_MODEL_MAP)")
    return _follow(bare, bare, served, policy=policy, today=today, walk=_Walk())


def _follow(
    requested: str, current: str, served: ServedModels, *, policy: RetiredPolicy, today: date, walk: _Walk
) -> ModelChoice:
    spec = model_spec(current)
    first = model_spec(requested)
    shutdown = first.shutdown if first else None
    if served.serves(current):
        if current == requested:
            if spec is None:
                return ModelChoice(
                    requested,
                    requested,
                    notice=f"{requested} is served but not in promptdrop's model table: its checks are skipped "
                    "and its cost is unknown",
                )
            notice = _deprecation_notice(spec, today)
            return ModelChoice(
                requested, requested, notice=notice, shutdown=spec.shutdown if notice else None
            )
        assert first is not None  # only an id in the table leads elsewhere
        if not walk.upgraded:
            return ModelChoice(
                requested,
                current,
                notice=f"{requested} was shut down {_when(first)}: its lines run on {current}",
                shutdown=shutdown,
            )
        return ModelChoice(
            requested,
            current,
            notice=f"{requested} is no longer served: its lines run on {current}, a different model "
            "(PROMPTDROP_RETIRED_MODELS=upgrade)",
            shutdown=shutdown,
        )
    walk.seen.add(current)
    if spec is None or spec.replacement is None or spec.replacement in walk.seen:
        if current == requested:
            return _unknown(
                requested, served, f"the Gemini API does not serve model {requested!r} (models.list)"
            )
        why = f"{requested} is no longer served and the API serves none of its replacements"
        return ModelChoice(requested, None, code="unknown_model", message=why, shutdown=shutdown)
    if spec.alias_of is not None:
        if policy == "refuse":
            return ModelChoice(
                requested,
                None,
                code="retired_model",
                message=f"{current} was shut down {_when(spec)}; it is now {spec.alias_of} "
                "(PROMPTDROP_RETIRED_MODELS=refuse, so it was not replaced)",
                shutdown=shutdown,
            )
        return _follow(requested, spec.alias_of, served, policy=policy, today=today, walk=walk)
    successor = spec.successor
    assert successor is not None
    if policy != "upgrade":
        since = f" (deprecated {spec.deprecated})" if spec.deprecated else ""
        return ModelChoice(
            requested,
            None,
            code="retired_model",
            message=f"{current} is no longer served{since}; Google's successor is {successor}, a different "
            f"model: {current} cost {batch_price_text(current)}, {successor} costs {batch_price_text(successor)}. "
            f"To run these lines on it: PROMPTDROP_RETIRED_MODELS=upgrade or "
            f"PROMPTDROP_MODEL_MAP={requested}={successor}",
            shutdown=shutdown,
        )
    walk.upgraded = True
    return _follow(requested, successor, served, policy=policy, today=today, walk=walk)


def lane_problem(model: str, served: ServedModels, lane: str) -> tuple[str, str] | None:
    """(code, message) when the served model cannot take this lane's calls (``supportedGenerationMethods``)."""
    if lane == "now":
        if not served.supports(model, GENERATE):
            return (
                "no_generate",
                f"{model} does not take generateContent calls, so the now lane cannot send it",
            )
        return None
    if not served.supports(model, BATCH_GENERATE):
        return (
            "no_batch",
            f"{model} does not take batch requests (models.list: no batchGenerateContent); "
            'send these lines in the now lane ("lane": "now", at the interactive price)',
        )
    return None


def backend_problem(
    model: str, *, backend: str, location: str, lane: str, size: str | None
) -> tuple[str, str] | None:
    """(code, message) when the table says this backend cannot take a batch line of this model and size in
    this location (Vertex AI only: the Gemini API's answer is ``models.list``, ``lane_problem``)."""
    spec = model_spec(model)
    if backend != VERTEX or lane == "now" or spec is None:
        return None
    vertex = spec.vertex
    if vertex.batch is False:
        return (
            "no_batch",
            f"{model} does not take batch on Vertex AI; send these lines in the now lane "
            '("lane": "now", at the interactive price)',
        )
    if vertex.locations is not None and location not in vertex.locations:
        where = "location" if len(vertex.locations) == 1 else "locations"
        return (
            "location_unsupported",
            f"{model} takes batch on Vertex AI only in {where} {', '.join(vertex.locations)}; "
            f"PROMPTDROP_VERTEX_LOCATION={location}",
        )
    size = size or spec.default_size
    if size in vertex.refused_sizes:
        return (
            "size_unsupported",
            f"{model} takes no image_size {size} in batch on Vertex AI (location {location}); it takes "
            f"{', '.join(s for s in spec.image_sizes if s not in vertex.refused_sizes)}",
        )
    return None


def backend_doubts(
    model: str, *, backend: str, location: str, lane: str, size: str | None
) -> tuple[str, ...]:
    """Notices for what a batch line needs on this backend that Google's pages do not confirm (it runs)."""
    spec = model_spec(model)
    if backend != VERTEX or lane == "now" or spec is None:
        return ()
    vertex = spec.vertex
    if vertex.batch is None:
        return (
            f"{model}: no Google page says whether Vertex AI batch takes it (location {location}); its lines "
            "run, and Vertex AI refuses the job if it does not",
        )
    doubts = []
    if vertex.locations is None:
        doubts.append(
            f"{model}: Google's pages list no location for its Vertex AI batch; its lines run in "
            f"PROMPTDROP_VERTEX_LOCATION={location} (unconfirmed)"
        )
    size = size or spec.default_size
    if size not in vertex.sizes:
        doubts.append(
            f"{model}: image_size {size} in Vertex AI batch is unconfirmed (Google's pages give no batch "
            "sizes; a July 2026 note says Vertex batch images came out 1K only); its lines run"
        )
    return tuple(doubts)


def predict_choice(
    requested: str,
    *,
    policy: RetiredPolicy,
    today: date,
    model_map: Mapping[str, str] | None = None,
    served: ServedModels | None = None,
) -> ModelChoice:
    """The choice ``run --dry-run`` shows: from what the API serves when it could be asked, else from the
    table (an id the table lacks is assumed served then: it runs if the API serves it, cost unknown)."""
    if served is None:
        bare = bare_model_id(requested)
        mapped = (model_map or {}).get(bare, bare)
        served = ServedModels.from_table(today, () if model_spec(mapped) else (mapped,))
    return choose_model(requested, served, policy=policy, today=today, model_map=model_map)
