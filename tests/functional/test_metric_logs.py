"""The deployment's log-based metrics (infra/monitoring.tf) read fields that the code really logs.

A whole run goes through the use cases with the JSON formatter the functions use, a tick finds an overdue
run, and every metric's filter, label extractors and value extractor are evaluated against the captured
JSON lines (with a spend cap nearly reached and a webhook the API disabled): each metric must match at least one line, and each field it reads must be there with the type
it needs.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hcl2
import orjson
import pytest
from hcl2.utils import SerializationOptions

from promptdrop.logs import JsonFormatter
from promptdrop.states import RunState
from promptdrop.usecases import poll
from tests.functional.conftest import Pipeline, jsonl

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "infra" / "monitoring.tf"
# One comparison of a filter: jsonPayload.<field> <op> <value>, or severity>=ERROR.
_COMPARISON = re.compile(r'(jsonPayload\.\w+|severity)\s*(=|>=)\s*("[^"]*"|[\w.]+)')
_EXTRACT = re.compile(r"^EXTRACT\(jsonPayload\.(\w+)\)$")
_SEVERITIES = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(orjson.loads(self.format(record)))


@pytest.fixture
def captured() -> Iterator[_Capture]:
    handler = _Capture()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def _metrics() -> dict[str, dict[str, Any]]:
    options = SerializationOptions(strip_string_quotes=True, explicit_blocks=False, with_comments=False)
    with MONITORING.open() as file:
        parsed = hcl2.load(file, serialization_options=options)
    metrics: dict[str, dict[str, Any]] = {}
    for entry in parsed.get("resource", []):
        metrics.update(entry.get("google_logging_metric", {}))
    return metrics


def _matches(line: dict[str, Any], filter_text: str) -> bool:
    """The metric's filter on one JSON line, past the resource clause (every function's lines pass it)."""
    log_part = filter_text.split("jsonPayload", 1)[0]
    comparisons = _COMPARISON.findall(filter_text[len(log_part) :] if "jsonPayload" in filter_text else "")
    comparisons += [c for c in _COMPARISON.findall(filter_text) if c[0] == "severity"]
    assert comparisons, f"no jsonPayload or severity comparison in {filter_text!r}"
    for field, op, raw in comparisons:
        if field == "severity":
            if _SEVERITIES.index(line["severity"]) < _SEVERITIES.index(raw):
                return False
            continue
        value = line.get(field.removeprefix("jsonPayload."))
        if op == "=":
            if value != raw.strip('"'):
                return False
        elif not isinstance(value, (int, float)) or value < float(raw):
            return False
    return True


def test_every_metric_reads_fields_a_log_line_of_the_code_carries(
    pipeline: Pipeline, captured: _Capture
) -> None:
    """A run with failed and invalid lines, an overdue run seen by a tick, spend near a cap and a disabled
    webhook: each metric matches a line."""
    data = jsonl(
        {"prompt": "a lighthouse at dusk", "key": "ok"},
        {"prompt": "[[emulator:safety]] blocked", "key": "blocked"},
        {"prompt": "bad ratio", "key": "bad", "aspect_ratio": "7:3"},
    )
    receipt = pipeline.drop("metrics.jsonl", data)
    assert receipt.run is not None
    run = pipeline.finish(receipt.run.run_id)
    assert run.state is RunState.PARTIAL

    late = pipeline.drop("late.jsonl", jsonl({"prompt": "waiting", "key": "w"}))
    assert late.run is not None and not late.run.state.terminal
    future = poll.overdue_at(late.run, pipeline.ctx.settings) + 5
    poll.tick(dataclasses.replace(pipeline.ctx, clock=lambda: future))
    # A day capped at $0.08: a one-line run (about $0.067) takes it past 80%.
    capped = pipeline.context(max_spend_usd_per_day=0.08)
    near = pipeline.drop("near.jsonl", jsonl({"prompt": "a kite", "key": "k"}), capped)
    assert near.run is not None and near.run.spend_periods
    # The API disabled our batch webhook after failed deliveries: the poller's look says so.
    hooked = pipeline.context(webhooks="on")
    hook = hooked.backend.create_webhook("http://127.0.0.1:9/hook", events=("batch.succeeded",), name="pd")
    client = pipeline.emulator.client()  # held: the SDK closes a client it collects
    client.webhooks.update(id=hook.id, update_mask="state", state="disabled_due_to_failed_deliveries")
    assert poll.check_webhooks(hooked) is False

    metrics = _metrics()
    assert {
        "runs_ended",
        "spend",
        "line_outcomes",
        "runs_overdue",
        "function_errors",
        "spend_near_cap",
        "webhook_disabled",
    } <= set(metrics)
    logging.getLogger("promptdrop.test").error("an error line, as any function may log")
    for name, body in metrics.items():
        matching = [line for line in captured.lines if _matches(line, body["filter"])]
        assert matching, f"google_logging_metric.{name}: no log line matches {body['filter']!r}"
        for label, extractor in (body.get("label_extractors") or {}).items():
            field = _EXTRACT.fullmatch(extractor)
            assert field, f"{name}.{label}: unexpected extractor {extractor!r}"
            assert all(isinstance(line.get(field.group(1)), str) for line in matching), (name, label)
        if "value_extractor" in body:
            field = _EXTRACT.fullmatch(body["value_extractor"])
            assert field, f"{name}: unexpected value extractor {body['value_extractor']!r}"
            values = [line.get(field.group(1)) for line in matching]
            assert all(isinstance(v, (int, float)) for v in values), (name, values)

    ended = [
        line for line in captured.lines if line.get("event") == "run_ended" and line["run_id"] == run.run_id
    ]
    assert [(e["run_id"], e["state"], e["succeeded"], e["failed"], e["invalid"]) for e in ended] == [
        (run.run_id, "PARTIAL", 1, 1, 1)
    ]
    assert ended[0]["cost_usd"] == pytest.approx((run.cost.batch or 0.0) + (run.cost.now or 0.0))
    codes = {
        line["code"]: line["count"]
        for line in captured.lines
        if line.get("event") == "line_outcomes" and line["run_id"] == run.run_id
    }
    assert codes == {"safety": 1, "bad_aspect_ratio": 1}
    overdue = [line for line in captured.lines if line.get("event") == "run_overdue"]
    assert [line["run_id"] for line in overdue] == [late.run.run_id]
    disabled = [line for line in captured.lines if line.get("event") == "webhook_disabled"]
    assert [(line["severity"], line["webhooks"]) for line in disabled] == [
        ("WARNING", f"{hook.id}: disabled_due_to_failed_deliveries")
    ]
