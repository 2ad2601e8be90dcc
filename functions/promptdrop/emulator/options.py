"""The emulator's controls: one frozen object, parsed from and rendered back to command-line flags.

``docs/EMULATOR.md`` describes each control. The API key is deliberately not rendered into flags
(a command line is visible to every user of the machine); the launcher passes it in the environment.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields
from typing import Final

API_KEY_ENV: Final = "PROMPTDROP_EMULATOR_API_KEY"
WEBHOOK_SECRET_ENV: Final = "PROMPTDROP_EMULATOR_WEBHOOK_SECRET"  # noqa: S105 - a variable name
# Never rendered into flags: a command line is visible to every user of the machine.
SECRET_FIELDS: Final = frozenset({"api_key", "webhook_secret"})

# Calls that fault injection may hit, by name. Upload-session chunk POSTs are never faulted: the SDK
# retries them with its own loop that only looks at the X-Goog-Upload-Status header.
FAULT_ROUTES: Final = (
    "upload",
    "file_get",
    "file_list",
    "file_delete",
    "download",
    "create",
    "get",
    "list",
    "cancel",
    "delete",
    "model_get",
    "model_list",
    "generate",
)
# Downloads are raw bytes, not JSON API calls, so they are faulted only when asked for by name.
DEFAULT_FAULT_ROUTES: Final = tuple(route for route in FAULT_ROUTES if route != "download")


@dataclass(frozen=True, slots=True)
class EmulatorOptions:
    """Every control of the emulator (see docs/EMULATOR.md)."""

    api_key: str | None = None
    pending_seconds: float = 1.0
    running_seconds: float = 2.0
    generate_seconds: float = 0.0  # how long a generateContent call (the now lane) takes to answer
    # The first N generateContent calls are answered 429 RESOURCE_EXHAUSTED (a spend-based rate limit), with
    # a google.rpc.RetryInfo of generate_retry_seconds (0: without RetryInfo), and not billed.
    generate_refusals: int = 0
    generate_retry_seconds: float = 2.0
    workers: int = 2
    image_scale: float = 1.0
    inline_responses_max: int = 0
    max_active_jobs: int = 100
    fault_rate: float = 0.0
    fault_codes: tuple[int, ...] = (429, 500, 503)
    fault_routes: tuple[str, ...] = DEFAULT_FAULT_ROUTES
    stall_rate: float = 0.0
    stall_seconds: float = 30.0
    create_stall_rate: float = 0.0  # extra stall rate for batch creates, the one call that is not idempotent
    fault_seed: int | None = None
    # Stop after this many seconds without a call while no job is unfinished (0: never). The CLI's
    # background emulator sets it, so it does not live for ever.
    idle_seconds: float = 0.0
    # Model ids served beyond the table's (those not past their shutdown date), e.g. to stand for a model
    # the real API still serves after its announced shutdown, or one our table lacks.
    serve_models: tuple[str, ...] = ()
    # Exactly the ids served (None: the table's current ones, the text models and serve_models), so a test
    # can shut a model down; and ids served without batchGenerateContent (models.list says so).
    models: tuple[str, ...] | None = None
    no_batch_models: tuple[str, ...] = ()
    # A create is answered 429 RESOURCE_EXHAUSTED once the PENDING/RUNNING jobs of its model would hold more
    # than this many enqueued tokens (0: no limit); each request counts as one default-size image.
    enqueued_token_limit: int = 0
    # Throttle file downloads to this many bytes per second (0: as fast as the disk), so a test can make a
    # results copy outlast a function's time budget.
    download_bytes_per_second: float = 0.0
    # Batch events POSTed here (Standard Webhooks, signed with webhook_secret) when a job ends; webhooks
    # created through the API are delivered to as well, each signed with its own secret.
    webhook_urls: tuple[str, ...] = ()
    webhook_secret: str | None = None
    webhook_attempts: int = 8  # tries per delivery (at least once: retried on non-2xx or timeout)
    webhook_retry_seconds: float = 0.5  # backoff before the 2nd try, doubling after
    webhook_timeout_seconds: float = 10.0  # a receiver slower than this counts as a failed try
    webhook_drop_rate: float = 0.0  # fraction of deliveries never sent (a lost push)
    webhook_duplicate_rate: float = 0.0  # fraction sent twice with the same webhook-id
    webhook_delay_seconds: float = 0.0  # every delivery waits this long before its first try
    # A registered webhook becomes disabled_due_to_failed_deliveries after this many deliveries in a row were
    # given up (0: never), and gets no pushes until it is updated back to enabled.
    webhook_disable_after: int = 0
    # A Vertex AI job's output is split into this many predictions*.jsonl files (Vertex may write several).
    prediction_files: int = 1

    def __post_init__(self) -> None:
        for name in (
            "pending_seconds",
            "running_seconds",
            "generate_seconds",
            "generate_retry_seconds",
            "stall_seconds",
            "idle_seconds",
            "download_bytes_per_second",
            "webhook_retry_seconds",
            "webhook_timeout_seconds",
            "webhook_delay_seconds",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        for name in ("fault_rate", "stall_rate", "create_stall_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if (
            not 0.0 <= self.webhook_drop_rate + self.webhook_duplicate_rate <= 1.0
            or min(self.webhook_drop_rate, self.webhook_duplicate_rate) < 0
        ):
            raise ValueError(
                "webhook_drop_rate and webhook_duplicate_rate must be >= 0 and add up to at most 1"
            )
        if self.webhook_attempts < 1:
            raise ValueError("webhook_attempts must be at least 1")
        if any(not url.startswith(("http://", "https://")) for url in self.webhook_urls):
            raise ValueError("webhook URLs must be http:// or https://")
        if self.fault_rate + self.stall_rate + self.create_stall_rate > 1.0:
            raise ValueError("fault_rate + stall_rate + create_stall_rate must not exceed 1")
        if self.workers < 1 or self.prediction_files < 1:
            raise ValueError("workers and prediction_files must be at least 1")
        if self.image_scale <= 0:
            raise ValueError("image_scale must be positive")
        if self.generate_refusals < 0:
            raise ValueError("generate_refusals must not be negative")
        if self.enqueued_token_limit < 0:
            raise ValueError("enqueued_token_limit must not be negative")
        if self.inline_responses_max < 0 or self.max_active_jobs < 1:
            raise ValueError("inline_responses_max must be >= 0 and max_active_jobs >= 1")
        if not self.fault_codes or any(code < 400 or code > 599 for code in self.fault_codes):
            raise ValueError("fault_codes must be HTTP error statuses (400-599)")
        unknown = set(self.fault_routes) - set(FAULT_ROUTES)
        if unknown:
            raise ValueError(f"unknown fault routes {sorted(unknown)}; known: {', '.join(FAULT_ROUTES)}")

    def to_argv(self) -> list[str]:
        """Flags that reproduce these options (all but the secrets) for ``python -m promptdrop.emulator``."""
        defaults = EmulatorOptions()
        argv: list[str] = []
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name in SECRET_FIELDS or value == getattr(defaults, field.name):
                continue
            if field.name == "webhook_urls":
                for url in value:
                    argv += ["--webhook-url", url]
                continue
            flag = "--" + field.name.replace("_", "-")
            argv += [flag, ",".join(map(str, value)) if isinstance(value, tuple) else str(value)]
        return argv


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def _name_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _route_list(text: str) -> tuple[str, ...]:
    return FAULT_ROUTES if text.strip() == "all" else _name_list(text)


def argument_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m promptdrop.emulator`` (and of ``promptdrop emulator``)."""
    parser = argparse.ArgumentParser(
        prog="promptdrop emulator",
        description="Serve the Gemini Batch and Files API locally, for the google-genai SDK (base_url).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 lets the OS choose")
    parser.add_argument("--data-dir", default="./.promptdrop/emulator", help="where files and jobs persist")
    parser.add_argument(
        "--api-key", help=f"accept only this API key (also ${API_KEY_ENV}); default: any non-empty key"
    )
    parser.add_argument("--pending-seconds", type=float, default=1.0, help="time a job stays PENDING")
    parser.add_argument("--running-seconds", type=float, default=2.0, help="time a job stays RUNNING")
    parser.add_argument(
        "--generate-seconds", type=float, default=0.0, help="time a generateContent call takes to answer"
    )
    parser.add_argument(
        "--generate-refusals",
        type=int,
        default=0,
        help="answer the first N generateContent calls 429 RESOURCE_EXHAUSTED (default 0)",
    )
    parser.add_argument(
        "--generate-retry-seconds",
        type=float,
        default=2.0,
        help="the RetryInfo retryDelay of those 429s (default 2; 0: no RetryInfo)",
    )
    parser.add_argument("--workers", type=int, default=2, help="threads that run jobs")
    parser.add_argument("--image-scale", type=float, default=1.0, help="scale image sizes (e.g. 0.0625)")
    parser.add_argument(
        "--inline-responses-max",
        type=int,
        default=0,
        help="answer file jobs of at most N requests inline (default 0: never)",
    )
    parser.add_argument("--max-active-jobs", type=int, default=100, help="unfinished jobs allowed at once")
    parser.add_argument("--fault-rate", type=float, default=0.0, help="fraction of calls answered by a fault")
    parser.add_argument(
        "--fault-codes", type=_int_list, default=(429, 500, 503), help="HTTP statuses of faults (429,500,503)"
    )
    parser.add_argument(
        "--fault-routes",
        type=_route_list,
        default=DEFAULT_FAULT_ROUTES,
        help=f"calls that faults and stalls may hit: {','.join(FAULT_ROUTES)}, or all (default: all but download)",
    )
    parser.add_argument("--stall-rate", type=float, default=0.0, help="fraction of calls that stall")
    parser.add_argument("--stall-seconds", type=float, default=30.0, help="how long a stalled call sleeps")
    parser.add_argument(
        "--create-stall-rate",
        type=float,
        default=0.0,
        help="extra fraction of batch creates that stall (they still create their job afterwards)",
    )
    parser.add_argument("--fault-seed", type=int, default=None, help="seed faults and stalls (repeatable)")
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=0.0,
        help="stop after this many seconds without a call while no job is unfinished (default 0: never)",
    )
    parser.add_argument(
        "--download-bytes-per-second",
        type=float,
        default=0.0,
        help="throttle file downloads (default 0: unthrottled)",
    )
    parser.add_argument(
        "--serve-models",
        type=_name_list,
        default=(),
        help="model ids to serve besides the table's current ones (e.g. a retired id still served)",
    )
    parser.add_argument(
        "--models",
        type=_name_list,
        default=None,
        help="serve exactly these model ids (default: the table's current ones and the text models)",
    )
    parser.add_argument(
        "--no-batch-models",
        type=_name_list,
        default=(),
        help="model ids served without batchGenerateContent (a batch on them gets 404)",
    )
    parser.add_argument(
        "--enqueued-token-limit",
        type=int,
        default=0,
        help="answer a create 429 past this many enqueued tokens per model (default 0: no limit)",
    )
    parser.add_argument(
        "--webhook-url",
        dest="webhook_urls",
        action="append",
        default=[],
        help="POST a signed batch event here when a job ends (repeatable)",
    )
    parser.add_argument(
        "--webhook-secret",
        help=f"whsec_... secret that signs --webhook-url deliveries (also ${WEBHOOK_SECRET_ENV})",
    )
    parser.add_argument("--webhook-attempts", type=int, default=8, help="tries per delivery (default 8)")
    parser.add_argument(
        "--webhook-retry-seconds", type=float, default=0.5, help="backoff before the 2nd try, doubling (0.5)"
    )
    parser.add_argument(
        "--webhook-timeout-seconds", type=float, default=10.0, help="a try unanswered this long failed (10)"
    )
    parser.add_argument(
        "--webhook-drop-rate", type=float, default=0.0, help="fraction of deliveries never sent"
    )
    parser.add_argument(
        "--webhook-duplicate-rate",
        type=float,
        default=0.0,
        help="fraction of deliveries sent twice (same id)",
    )
    parser.add_argument(
        "--webhook-delay-seconds", type=float, default=0.0, help="delay every delivery's first try"
    )
    parser.add_argument(
        "--webhook-disable-after",
        type=int,
        default=0,
        help="disable a registered webhook after this many given-up deliveries in a row (default 0: never)",
    )
    parser.add_argument(
        "--prediction-files",
        type=int,
        default=1,
        help="split a Vertex AI job's output into N predictions*.jsonl files (default 1)",
    )
    return parser


def options_from_args(args: argparse.Namespace) -> EmulatorOptions:
    """Build the options from parsed flags; the key comes from ``--api-key`` or the environment."""
    return EmulatorOptions(
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        pending_seconds=args.pending_seconds,
        running_seconds=args.running_seconds,
        generate_seconds=args.generate_seconds,
        generate_refusals=args.generate_refusals,
        generate_retry_seconds=args.generate_retry_seconds,
        workers=args.workers,
        image_scale=args.image_scale,
        inline_responses_max=args.inline_responses_max,
        max_active_jobs=args.max_active_jobs,
        fault_rate=args.fault_rate,
        fault_codes=tuple(args.fault_codes),
        fault_routes=tuple(args.fault_routes),
        stall_rate=args.stall_rate,
        stall_seconds=args.stall_seconds,
        create_stall_rate=args.create_stall_rate,
        fault_seed=args.fault_seed,
        idle_seconds=args.idle_seconds,
        serve_models=tuple(args.serve_models),
        models=tuple(args.models) if args.models is not None else None,
        no_batch_models=tuple(args.no_batch_models),
        enqueued_token_limit=args.enqueued_token_limit,
        download_bytes_per_second=args.download_bytes_per_second,
        webhook_urls=tuple(args.webhook_urls),
        webhook_secret=args.webhook_secret or os.environ.get(WEBHOOK_SECRET_ENV) or None,
        webhook_attempts=args.webhook_attempts,
        webhook_retry_seconds=args.webhook_retry_seconds,
        webhook_timeout_seconds=args.webhook_timeout_seconds,
        webhook_drop_rate=args.webhook_drop_rate,
        webhook_duplicate_rate=args.webhook_duplicate_rate,
        webhook_delay_seconds=args.webhook_delay_seconds,
        webhook_disable_after=args.webhook_disable_after,
        prediction_files=args.prediction_files,
    )
