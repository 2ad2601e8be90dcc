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
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from promptdrop.api_limits import FILE_MAX_BYTES
from promptdrop.errors import ConfigurationError
from promptdrop.models import DEFAULT_MODEL, RetiredPolicy

ENV_PREFIX = "PROMPTDROP_"

MiB = 1024 * 1024
GiB = 1024 * MiB

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds from ``"90"``, ``"90s"``, ``"15m"``, ``"36h"`` or ``"2d"``."""
    match = _DURATION.match(text)
    if not match:
        raise ConfigurationError(f"not a duration: {text!r} (use seconds, or a number with s/m/h/d)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


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
    backend: Literal["gemini", "emulator"] = "emulator"
    api_key: SecretStr | None = None  # GEMINI_API_KEY
    gemini_base_url: str | None = None
    model: str = DEFAULT_MODEL
    # A retired model id (the API no longer serves it) runs on its replacement, or its lines are refused.
    retired_models: RetiredPolicy = "upgrade"
    priority: int = 0  # batch priority (higher runs first) for lines and files that set none
    inbox_prefix: str = "inbox/"
    output_prefix: str = "outputs/"
    events_topic: str | None = None
    max_cost_usd: float | None = None
    max_attempts: int = 3
    job_deadline: float = 36 * 3600.0  # seconds; the API expires jobs at 48 h
    max_line_bytes: int = 20 * MiB
    max_file_bytes: int = 2 * GiB
    max_requests_per_job: int = 10_000
    max_job_bytes: int = 1900 * MiB  # the Files API takes 2 GB per file
    max_enqueued_tokens: int = 2_000_000  # Tier 1 enqueued-token limit of the image models
    max_jobs_in_flight: int = 50  # the API allows 100 concurrent batch jobs per project
    inline_image_max_bytes: int = 4 * MiB  # larger reference images go through the Files API
    upload_concurrency: int = 16
    # Bytes of decoded images one process holds queued or being written, across all the runs of a tick,
    # and how many runs a tick advances at once: together they bound the poller's memory (PERFORMANCE.md).
    harvest_memory_budget: int = 256 * MiB
    tick_concurrency: int = 4
    # The Files API keeps 20 GB per project: inputs of jobs not yet harvested stay below this, leaving room
    # for the results files waiting to be harvested.
    max_input_bytes_in_flight: int = 10 * GiB
    # A trigger (file, message) submits what it claimed only up to this size; larger files are claimed and
    # left to the poller, so the trigger answers within seconds (no 429/504 that would dead-letter it).
    submit_on_claim_max_bytes: int = 16 * MiB
    lease_seconds: float = 300.0
    harvest_time_budget: float = 0.0  # seconds per invocation; 0 = no budget (local)
    # A results file is copied into the bucket in parts of this size, each recorded when whole: the unit
    # of work a time budget can cut off (at 50 MB/s a 64 MiB part takes under 2 s).
    results_part_bytes: int = 64 * MiB
    poll_interval: float = 10.0  # seconds between `serve` ticks
    submit_retry_base: float = 30.0  # seconds; backoff base for a submission that failed transiently
    # The pay-once cache: a line whose request was paid for before is served from that image (README "Pay
    # once per image"); "off" submits every line. Images older than cache_days are not reused.
    cache: bool = True
    cache_days: float = Field(default=30.0, gt=0)
    thumbnails: bool = True  # small WebP beside each image for the gallery page ("off" to skip)
    gallery_page_size: int = 500  # cards per gallery page
    emulator_image_scale: float = 1.0  # the bundled emulator draws images at this fraction of real size
    emulator_idle: float = 900.0  # seconds; the background emulator the CLI starts stops after this idle time
    log_format: Literal["text", "json"] = "text"
    verbose: bool = False  # the CLI logs at INFO instead of WARNING
    api_timeout: float = 120.0  # seconds per Gemini API call; a create unanswered this long may still land
    # A create whose answer was lost is not sent again until api_timeout plus this has passed (it may still
    # be landing at the server); meanwhile it is looked up by display name.
    create_margin: float = 60.0
    # The now lane (lines with "lane": "now", sent at once with generate_content at the standard price).
    max_now_lines: int = 50  # a run asking for more now lines is refused before any call
    now_concurrency: int = 4  # generate_content calls in flight per process
    now_chunk_lines: int = 20  # now lines per chunk (one Pub/Sub message each in the cloud)
    # Pub/Sub topic the now chunks are published to (the cloud: worked by on_now_chunk); unset, whoever
    # advances the run sends them itself (the CLI, serve).
    now_topic: str | None = None
    now_base_url: str | None = None  # the now lane's endpoint; default PROMPTDROP_GEMINI_BASE_URL
    # Gemini's batch webhooks (README "Webhooks"): "on" finishes a run when the push arrives and polls each
    # running job only every webhook_poll_seconds, the net for a lost delivery; "off" polls every tick.
    webhooks: Literal["on", "off"] = "off"
    webhook_secret: SecretStr | None = None  # the "whsec_..." signing secret the API returned on create
    webhook_poll_seconds: float = 900.0  # with webhooks on: a running job is still polled this often
    webhook_max_bytes: int = 64 * 1024  # a delivery body over this is refused (400) unread
    in_cloud: bool = False  # K_SERVICE is set: a real Cloud Functions deployment

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
            problems.append("PROMPTDROP_BUCKET must be gs://NAME")
        if not self.store_is_firestore:
            problems.append("PROMPTDROP_STORE must be firestore or firestore://PROJECT/DATABASE")
        if self.backend != "gemini":
            problems.append("PROMPTDROP_BACKEND must be gemini")
        if self.api_key is None:
            problems.append("GEMINI_API_KEY must be set (from Secret Manager)")
        if problems:
            raise ConfigurationError("refusing to start in the cloud: " + "; ".join(problems))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Build settings from ``PROMPTDROP_*`` variables (and ``GEMINI_API_KEY``, ``K_SERVICE``)."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for name in cls.model_fields:
            if name in {"api_key", "in_cloud"}:
                continue
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is None or raw == "":
                continue
            if name in {
                "job_deadline",
                "lease_seconds",
                "harvest_time_budget",
                "poll_interval",
                "submit_retry_base",
                "emulator_idle",
                "api_timeout",
                "create_margin",
                "webhook_poll_seconds",
            }:
                values[name] = parse_duration(raw)
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
        try:
            settings = cls.model_validate(values)
        except ValidationError as exc:
            # Never echo values: one of them may be the API key.
            fields = ", ".join(ENV_PREFIX + str(e["loc"][0]).upper() for e in exc.errors())
            raise ConfigurationError(f"invalid configuration in {fields}") from None
        for prefix in (settings.inbox_prefix, settings.output_prefix):
            if not prefix.endswith("/") or prefix.startswith("/"):
                raise ConfigurationError(f"prefix {prefix!r} must end with '/' and not start with one")
        if settings.max_job_bytes > FILE_MAX_BYTES:
            raise ConfigurationError(
                f"PROMPTDROP_MAX_JOB_BYTES must be at most {FILE_MAX_BYTES}: the Files API takes 2 GB per file"
            )
        if settings.output_prefix.startswith(settings.inbox_prefix) or settings.inbox_prefix.startswith(
            settings.output_prefix
        ):
            raise ConfigurationError("PROMPTDROP_OUTPUT_PREFIX must not overlap PROMPTDROP_INBOX_PREFIX")
        return settings
