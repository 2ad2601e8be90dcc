"""infra/monitoring.tf: the metrics always exist; the channel, the policies and the dashboard only with an
e-mail address to notify (tests/functional/test_metric_logs.py ties the metrics to the code's log lines)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hcl2
from hcl2.utils import SerializationOptions

MONITORING = Path(__file__).resolve().parents[2] / "infra" / "monitoring.tf"


def _parsed() -> dict[str, Any]:
    options = SerializationOptions(strip_string_quotes=True, explicit_blocks=False, with_comments=False)
    with MONITORING.open() as file:
        parsed: dict[str, Any] = hcl2.load(file, serialization_options=options)
    return parsed


def _resources() -> dict[str, dict[str, dict[str, Any]]]:
    resources: dict[str, dict[str, dict[str, Any]]] = {}
    for entry in _parsed().get("resource", []):
        for kind, named in entry.items():
            resources.setdefault(kind, {}).update(named)
    return resources


def test_only_the_metrics_exist_without_an_alert_email() -> None:
    """Every resource but the log-based metrics is counted by local.alerts, which is 0 for an empty e-mail."""
    locals_ = {k: v for entry in _parsed()["locals"] for k, v in entry.items()}
    assert locals_["alerts"].replace(" ", "") == '${var.alert_email!=""?1:0}'
    for kind, named in _resources().items():
        for name, body in named.items():
            if kind == "google_logging_metric":
                assert "count" not in body, f"{kind}.{name} must exist whatever alert_email says"
            elif "for_each" in body:
                assert body["for_each"].replace(" ", "") == "${local.alerts==1?local.log_metric_alerts:{}}", (
                    f"{kind}.{name} must be empty unless local.alerts"
                )
            else:
                assert body.get("count") == "${local.alerts}", (
                    f"{kind}.{name} must be counted by local.alerts"
                )


def test_each_alert_policy_notifies_the_email_channel_and_says_what_to_do() -> None:
    """A run stuck past its deadline, dead letters, function errors, spend near a cap, the webhook disabled:
    each with what to do."""
    policies = _resources()["google_monitoring_alert_policy"]
    assert set(policies) == {"dead_letters", "log_metric"}
    locals_ = {k: v for entry in _parsed()["locals"] for k, v in entry.items()}
    alerts = locals_["log_metric_alerts"]
    assert set(alerts) == {"run_overdue", "function_errors", "spend_near_cap", "webhook_disabled"}
    for name, alert in alerts.items():
        assert alert["doc"] and alert["title"], name
        metric = alert["metric"].removeprefix("${google_logging_metric.").removesuffix(".name}")
        assert metric in _resources()["google_logging_metric"], (name, metric)
    for name, body in policies.items():
        assert body["notification_channels"] == ["${google_monitoring_notification_channel.email[0].id}"], (
            name
        )
        assert body["documentation"][0]["content"], name
    dead = policies["dead_letters"]["conditions"][0]["condition_threshold"][0]["filter"]
    assert "google_pubsub_subscription.dead_letter.name" in dead
    assert "num_undelivered_messages" in dead


def test_every_metric_is_on_the_functions_logs_and_on_the_dashboard() -> None:
    resources = _resources()
    metrics = resources["google_logging_metric"]
    for name, body in metrics.items():
        assert body["filter"].startswith("${local.function_logs} AND "), name
    dashboard = resources["google_monitoring_dashboard"]["operations"]["dashboard_json"]
    charted = {name for name in metrics if f"google_logging_metric.{name}.name" in str(dashboard)}
    assert charted == set(metrics)
