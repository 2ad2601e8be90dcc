"""Logging set-up: JSON lines with Cloud Logging fields in the cloud, plain text locally.

Library modules only call ``logging.getLogger(__name__)`` and pass ``extra={"run_id": ..., "job": ...}``.
Lines the deployment's log-based metrics read also pass ``extra=metric_fields(EVENT, ...)``: an ``event`` name
and flat fields that the JSON line carries at its top level (``jsonPayload.event``, ``jsonPayload.state``, ...);
infra/monitoring.tf filters on them and tests/unit/test_infra_monitoring.py ties each filter to a call here.
A filter scrubs known secrets from every record as a last line of defence: no log line may carry the key.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson

_SEVERITY = {"DEBUG": "DEBUG", "INFO": "INFO", "WARNING": "WARNING", "ERROR": "ERROR", "CRITICAL": "CRITICAL"}
_secrets: set[str] = set()

# The structured events the deployment's log-based metrics count (infra/monitoring.tf).
RUN_ENDED = "run_ended"  # a run reached a terminal state: state, lines by status, cost_usd
LINE_OUTCOMES = "line_outcomes"  # at a run's end, one line per outcome code: code, count
RUN_OVERDUE = "run_overdue"  # a run still active an hour past the longest a run may take
SPEND_NEAR_CAP = (
    "spend_near_cap"  # a period's ledger holds 80% or more of its spend cap: period, spent, limit
)
WEBHOOK_DISABLED = "webhook_disabled"  # the poller saw every batch webhook of ours disabled: states
_EVENT_FIELDS = "_promptdrop_fields"


def metric_fields(event: str, **fields: str | int | float | None) -> dict[str, Any]:
    """``extra=`` for a log line a metric reads: the event name and its flat fields (JSON top level)."""
    return {_EVENT_FIELDS: {"event": event, **fields}}


def register_secret(value: str | None) -> None:
    """Never let this string reach a log line."""
    if value and len(value) >= 4:
        _secrets.add(value)


def redact(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, "[REDACTED]")
    return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``severity``, ``message``, ``run_id``, ``job`` (Cloud Logging reads these)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": _SEVERITY.get(record.levelname, "DEFAULT"),
            "message": record.getMessage(),
            "logger": record.name,
        }
        for field in ("run_id", "job"):
            value = getattr(record, field, None)
            if value is not None:
                entry[field] = value
        for name, value in (getattr(record, _EVENT_FIELDS, None) or {}).items():
            entry.setdefault(name, value)
        labels = {f: str(entry[f]) for f in ("run_id", "job") if f in entry}
        if labels:
            entry["logging.googleapis.com/labels"] = labels
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return redact(orjson.dumps(entry, default=str).decode())


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        context = " ".join(
            f"{f}={getattr(record, f)}" for f in ("run_id", "job") if getattr(record, f, None) is not None
        )
        base = super().format(record)
        return redact(f"{base} [{context}]" if context else base)


def configure(fmt: str = "text", level: int = logging.INFO) -> None:
    """Install one handler on the root logger (idempotent)."""
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stdout if fmt == "json" else sys.stderr)
    handler.setFormatter(
        JsonFormatter() if fmt == "json" else TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    for existing in list(root.handlers):
        if getattr(existing, "_promptdrop", False):
            root.removeHandler(existing)
    handler._promptdrop = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # The HTTP clients log request details at DEBUG/INFO; keep them quiet.
    for noisy in ("httpx", "httpx2", "httpcore", "urllib3", "google_genai", "google.auth"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
