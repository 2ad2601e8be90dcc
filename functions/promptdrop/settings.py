"""The one settings object, built once from the environment (explicit arguments win).

Every variable here is listed in the README's configuration table; the Cloud Functions read the same
ones (a test checks that Terraform sets only variables this module reads).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, cast, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    SecretStr,
    ValidationError,
)

from promptdrop.api_limits import FILE_MAX_BYTES
from promptdrop.errors import ConfigurationError
from promptdrop.models import (
    DEFAULT_MODEL,
    NOW_SPEND_PER_10_MIN,
    RetiredPolicy,
    Tier,
    enqueued_token_budget,
    parse_model_map,
)

ENV_PREFIX = "PROMPTDROP_"

MiB = 1024 * 1024
GiB = 1024 * MiB

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float | None:
    """Seconds from ``"90"``, ``"90s"``, ``"15m"``, ``"36h"`` or ``"2d"``; None for anything else."""
    match = _DURATION.match(text)
    if not match:
        return None
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


# Fields read with parse_duration (seconds, or a number with a unit).
_DURATIONS = frozenset(
    {
        "job_deadline",
        "lease_seconds",
        "harvest_time_budget",
        "poll_interval",
        "submit_retry_base",
        "emulator_idle",
        "api_timeout",
        "create_margin",
        "webhook_poll_seconds",
    }
)
_SECRETS = frozenset({"api_key", "webhook_secret"})
# The expected form of the values that a field's type alone does not say (the rest: _expected_form).
_FORMS = {
    "max_cost_usd": "a non-negative amount in USD such as 25 or 12.50",
    "store": "sqlite:///PATH, firestore or firestore://PROJECT/DATABASE",
    "gemini_base_url": "an http:// or https:// URL",
    "now_base_url": "an http:// or https:// URL",
    "vertex_base_url": "an http:// or https:// URL",
    "vertex_location": "global, us, eu or a region such as us-central1",
    "inbox_prefix": "a folder prefix that ends with '/' and does not start with one, such as inbox/",
    "output_prefix": "a folder prefix that ends with '/' and does not start with one, such as outputs/",
    "max_job_bytes": f"a whole number of bytes from 0 to {FILE_MAX_BYTES} (the Files API takes 2 GB per file)",
}


LEGACY_HOME = Path(
    ".promptdrop"
)  # the state folder of earlier versions: used when the current folder has one


def default_home(env: Mapping[str, str]) -> Path:
    """The per-user state folder: ``./.promptdrop`` when it exists (earlier versions made it there), else the
    platform's data directory (``$XDG_DATA_HOME/promptdrop``, ``~/.local/share/promptdrop``; macOS
    ``~/Library/Application Support/promptdrop``), so every folder sees the same runs."""
    if LEGACY_HOME.is_dir():
        return LEGACY_HOME
    user = Path(env.get("HOME") or Path.home())
    if sys.platform == "darwin":
        return user / "Library" / "Application Support" / "promptdrop"
    return Path(env.get("XDG_DATA_HOME") or user / ".local" / "share") / "promptdrop"


class Settings(BaseModel):
    """Deployment-wide configuration. Field ``x`` is read from ``PROMPTDROP_X`` unless noted."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    home: Path = LEGACY_HOME  # local state folder (PROMPTDROP_HOME); from_env: default_home()
    bucket: str = ""  # gs://NAME or a local folder; default <home>/bucket
    store: str = ""  # sqlite:///PATH or firestore[://PROJECT/DATABASE]; default sqlite <home>/state.db
    backend: Literal["gemini", "emulator", "vertex"] = "emulator"
    api_key: SecretStr | None = None  # GEMINI_API_KEY
    gemini_base_url: str | None = None
    # Vertex AI batch (PROMPTDROP_BACKEND=vertex): reads its input from the bucket and writes its
    # predictions there, with the service account's credentials (no API key, no Files API, no webhooks).
    vertex_project: str | None = None
    vertex_location: str = "global"
    vertex_base_url: str | None = None  # another endpoint (the bundled emulator in tests)
    model: str = DEFAULT_MODEL
    # Lines on an id the API no longer serves: "aliases" follow an alias (the same model, e.g. preview -> GA)
    # and refuse a successor (a different model); "upgrade" follows both; "refuse" neither (models.py).
    retired_models: RetiredPolicy = "aliases"
    # "FROM=TO,...": lines asking for FROM run on TO (the user's own choice of a successor, without a release).
    model_map: str = ""
    tier: int = Field(
        default=1, ge=1, le=3
    )  # the project's billing tier: picks each model's enqueued-token quota
    priority: int = 0  # batch priority (higher runs first) for lines and files that set none
    inbox_prefix: str = "inbox/"
    output_prefix: str = "outputs/"
    events_topic: str | None = None
    max_cost_usd: NonNegativeFloat | None = None
    # Spend caps across runs, per UTC day and month (usecases/spending.py): a run over one waits in RECEIVED.
    max_spend_usd_per_day: NonNegativeFloat | None = None
    max_spend_usd_per_month: NonNegativeFloat | None = None
    max_attempts: int = Field(
        default=3, ge=1
    )  # batch submissions per line; in the now lane, the most sends of a line
    job_deadline: NonNegativeFloat = 36 * 3600.0  # seconds; the API expires jobs at 48 h
    max_line_bytes: NonNegativeInt = 20 * MiB
    max_file_bytes: NonNegativeInt = 2 * GiB
    max_requests_per_job: NonNegativeInt = 10_000
    max_job_bytes: int = Field(default=1900 * MiB, ge=0, le=FILE_MAX_BYTES)  # the Files API: 2 GB a file
    # Enqueued tokens per job and in flight; unset: each model's quota at PROMPTDROP_TIER (models.py).
    max_enqueued_tokens: NonNegativeInt | None = None
    max_jobs_in_flight: NonNegativeInt = 50  # the API allows 100 concurrent batch jobs per project
    inline_image_max_bytes: NonNegativeInt = 4 * MiB  # larger reference images go through the Files API
    upload_concurrency: NonNegativeInt = 16
    # Bytes of decoded images one process holds queued or being written, across all the runs of a tick,
    # and how many runs a tick advances at once: together they bound the poller's memory (PERFORMANCE.md).
    harvest_memory_budget: NonNegativeInt = 256 * MiB
    tick_concurrency: NonNegativeInt = 4
    # The Files API keeps 20 GB per project: inputs of jobs not yet harvested stay below this, leaving room
    # for the results files waiting to be harvested.
    max_input_bytes_in_flight: NonNegativeInt = 10 * GiB
    # A trigger (file, message) submits what it claimed only up to this size; larger files are claimed and
    # left to the poller, so the trigger answers within seconds (no 429/504 that would dead-letter it).
    submit_on_claim_max_bytes: NonNegativeInt = 16 * MiB
    lease_seconds: NonNegativeFloat = 300.0
    harvest_time_budget: NonNegativeFloat = 0.0  # seconds per invocation; 0 = no budget (local)
    # A results file is copied into the bucket in parts of this size, each recorded when whole: the unit
    # of work a time budget can cut off (at 50 MB/s a 64 MiB part takes under 2 s).
    results_part_bytes: NonNegativeInt = 64 * MiB
    poll_interval: NonNegativeFloat = 10.0  # seconds between `serve` ticks
    # Seconds; backoff base for a submission that failed transiently.
    submit_retry_base: NonNegativeFloat = 30.0
    # The pay-once cache: a line whose request was paid for before is served from that image (README "Pay
    # once per image"); "off" submits every line. Images older than cache_days are not reused.
    cache: bool = True
    cache_days: float = Field(default=30.0, gt=0)
    thumbnails: bool = True  # small WebP beside each image for the gallery page ("off" to skip)
    gallery_page_size: NonNegativeInt = 500  # cards per gallery page
    # The bundled emulator draws images at this fraction of real size.
    emulator_image_scale: NonNegativeFloat = 1.0
    # Seconds; the background emulator the CLI starts stops after this idle time.
    emulator_idle: NonNegativeFloat = 900.0
    log_format: Literal["text", "json"] = "text"
    verbose: bool = False  # the CLI logs at INFO instead of WARNING
    # Seconds per Gemini API call; a create unanswered this long may still land.
    api_timeout: NonNegativeFloat = 120.0
    # A create whose answer was lost is not sent again until api_timeout plus this has passed (it may still
    # be landing at the server); meanwhile it is looked up by display name.
    create_margin: NonNegativeFloat = 60.0
    # The now lane (lines with "lane": "now", sent at once with generate_content at the standard price).
    max_now_lines: NonNegativeInt = 50  # a run asking for more now lines is refused before any call
    now_concurrency: NonNegativeInt = 4  # generate_content calls in flight per process
    now_chunk_lines: NonNegativeInt = 20  # now lines per chunk (one Pub/Sub message each in the cloud)
    # USD the now lane's calls may spend per rolling 10 minutes, across every process (usecases/now_lane.py);
    # unset: the tier's spend-based rate limit (models.NOW_SPEND_PER_10_MIN); 0: not paced.
    now_spend_per_10_min: NonNegativeFloat | None = None
    # Pub/Sub topic the now chunks are published to (the cloud: worked by on_now_chunk); unset, whoever
    # advances the run sends them itself (the CLI, serve).
    now_topic: str | None = None
    now_base_url: str | None = None  # the now lane's endpoint; default PROMPTDROP_GEMINI_BASE_URL
    # Gemini's batch webhooks (README "Webhooks"): "on" finishes a run when the push arrives and polls each
    # running job only every webhook_poll_seconds, the net for a lost delivery; "off" polls every tick.
    webhooks: Literal["on", "off"] = "off"
    webhook_secret: SecretStr | None = None  # the "whsec_..." signing secret the API returned on create
    # With webhooks on: a running job is still polled this often.
    webhook_poll_seconds: NonNegativeFloat = 900.0
    webhook_max_bytes: NonNegativeInt = 64 * 1024  # a delivery body over this is refused (400) unread
    in_cloud: bool = False  # K_SERVICE is set: a real Cloud Functions deployment

    @property
    def model_mapping(self) -> dict[str, str]:
        return parse_model_map(self.model_map)

    def enqueued_token_budget(self, model: str) -> int:
        """Enqueued tokens one model's jobs may hold: PROMPTDROP_MAX_ENQUEUED_TOKENS, else its tier quota."""
        if self.max_enqueued_tokens is not None:
            return self.max_enqueued_tokens
        return enqueued_token_budget(model, cast(Tier, self.tier))

    @property
    def now_spend_limit(self) -> float:
        """USD per rolling 10 minutes the now lane paces itself under (0: not paced)."""
        if self.now_spend_per_10_min is not None:
            return self.now_spend_per_10_min
        return NOW_SPEND_PER_10_MIN[self.tier - 1]

    @property
    def webhooks_on(self) -> bool:
        return self.webhooks == "on"

    @property
    def job_poll_interval(self) -> float:
        """Seconds between two polls of one running job: every tick (0) unless webhooks are on."""
        return self.webhook_poll_seconds if self.webhooks_on else 0.0

    @property
    def bucket_is_gcs(self) -> bool:
        return self.bucket.startswith("gs://")

    @property
    def bucket_name(self) -> str:
        """The GCS bucket name, or the local folder path."""
        return self.bucket.removeprefix("gs://").rstrip("/")

    @property
    def store_is_firestore(self) -> bool:
        return self.store == "firestore" or self.store.startswith("firestore://")

    @property
    def sqlite_path(self) -> Path:
        return Path(self.store.removeprefix("sqlite:///"))

    @property
    def emulator_dir(self) -> Path:
        return self.home / "emulator"

    @property
    def events_log(self) -> Path:
        return self.home / "events.jsonl"

    def require_cloud_ready(self) -> None:
        """In a real deployment refuse local defaults: no silent fallback (DESIGN reliability rule 8)."""
        problems = []
        if not self.bucket_is_gcs:
            problems.append(f"PROMPTDROP_BUCKET must be gs://NAME, not {self.bucket!r}")
        if not self.store_is_firestore:
            problems.append(
                f"PROMPTDROP_STORE must be firestore or firestore://PROJECT/DATABASE, not {self.store!r}"
            )
        if self.backend not in ("gemini", "vertex"):
            problems.append(f"PROMPTDROP_BACKEND must be gemini or vertex, not {self.backend!r}")
        if self.backend == "vertex":
            if not self.vertex_project:
                problems.append("PROMPTDROP_VERTEX_PROJECT must be set with PROMPTDROP_BACKEND=vertex")
        elif self.api_key is None:
            problems.append("GEMINI_API_KEY must be set (from Secret Manager)")
        if problems:
            raise ConfigurationError("refusing to start in the cloud: " + "; ".join(problems))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Build settings from ``PROMPTDROP_*`` variables (and ``GEMINI_API_KEY``, ``K_SERVICE``)."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        problems: list[str] = []
        for name in cls.model_fields:
            if name in {"api_key", "in_cloud"}:
                continue
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is None or raw == "":
                continue
            if name in _DURATIONS:
                seconds = parse_duration(raw)
                if seconds is None:
                    problems.append(_problem(name, raw))
                values[name] = seconds
            else:
                values[name] = raw
        key = env.get("GEMINI_API_KEY")
        if key:
            values["api_key"] = key
        values["in_cloud"] = bool(env.get("K_SERVICE"))
        if "backend" not in values:
            values["backend"] = "gemini" if key else "emulator"
        values.update(overrides)
        if "home" not in values and not values["in_cloud"]:
            values["home"] = default_home(env)
        home = Path(str(values.get("home", cls.model_fields["home"].default)))
        values.setdefault("bucket", str(home / "bucket"))
        values.setdefault("store", f"sqlite:///{home / 'state.db'}")
        if problems:  # durations: said before pydantic would add its own word on the None
            raise ConfigurationError("; ".join(problems))
        try:
            settings = cls.model_validate(values)
        except ValidationError as exc:
            failed = dict.fromkeys(str(e["loc"][0]) for e in exc.errors())
            raise ConfigurationError("; ".join(_problem(name, values.get(name)) for name in failed)) from None
        problems = [_problem(name, getattr(settings, name)) for name in _bad_forms(settings)]
        if problems:
            raise ConfigurationError("; ".join(problems))
        settings.model_mapping  # noqa: B018 - refuses a malformed PROMPTDROP_MODEL_MAP at start
        if settings.output_prefix.startswith(settings.inbox_prefix) or settings.inbox_prefix.startswith(
            settings.output_prefix
        ):
            raise ConfigurationError(
                f"PROMPTDROP_OUTPUT_PREFIX={settings.output_prefix!r} and "
                f"PROMPTDROP_INBOX_PREFIX={settings.inbox_prefix!r}: expected two prefixes that do not "
                "overlap, such as outputs/ and inbox/"
            )
        if settings.backend == "vertex" and settings.webhooks_on:
            raise ConfigurationError(
                "PROMPTDROP_WEBHOOKS=on with PROMPTDROP_BACKEND=vertex: Vertex AI batch sends no webhooks "
                "(its jobs are polled); set PROMPTDROP_WEBHOOKS=off"
            )
        return settings


def _bad_forms(settings: Settings) -> list[str]:
    """The string fields whose value has not the form they need (their type alone cannot say)."""
    bad = [
        name
        for name in ("inbox_prefix", "output_prefix")
        if not getattr(settings, name).endswith("/") or getattr(settings, name).startswith("/")
    ]
    if not (settings.store_is_firestore or settings.store.startswith("sqlite:///")):
        bad.append("store")
    if not re.fullmatch(r"[a-z]+(?:-[a-z]+[0-9]+)?", settings.vertex_location):
        bad.append("vertex_location")
    for name in ("gemini_base_url", "now_base_url", "vertex_base_url"):
        url = getattr(settings, name)
        if url is not None and not url.startswith(("http://", "https://")):
            bad.append(name)
    return bad


def _problem(name: str, value: object) -> str:
    """``PROMPTDROP_X='value': expected <form>``: the variable, what it was given, and what it takes."""
    shown = "(hidden)" if name in _SECRETS else repr(value if isinstance(value, str) else str(value))
    return f"{ENV_PREFIX}{name.upper()}={shown}: expected {_expected_form(name)}"


def _expected_form(name: str) -> str:
    """What a field takes, from its type, bounds and default (or ``_FORMS`` where those do not say)."""
    if name in _FORMS:
        return _FORMS[name]
    if name in _DURATIONS:
        return "a duration in seconds, or a number with s, m, h or d, such as 90, 15m or 36h"
    field = Settings.model_fields[name]
    annotation = field.annotation
    if get_origin(annotation) is Literal:
        *first, last = (str(arg) for arg in get_args(annotation))
        return f"{', '.join(first)} or {last}"
    if annotation is bool:
        return "on or off (also true/false, yes/no, 1/0)"
    kind = "a whole number" if annotation is int else "a number"
    for bound in field.metadata:  # pydantic's Ge / Gt / Le constraints
        if (low := getattr(bound, "ge", None)) is not None:
            kind += f" of {low} or more"
        if (above := getattr(bound, "gt", None)) is not None:
            kind += f" above {above}"
        if (high := getattr(bound, "le", None)) is not None:
            kind += f" up to {high}"
    default = field.default
    example = int(default) if isinstance(default, float) and default.is_integer() else default
    return f"{kind}, such as {example}"
