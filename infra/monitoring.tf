# Operating promptdrop: log-based metrics read from the functions' structured JSON logs
# (promptdrop/logs.py: RUN_ENDED, LINE_OUTCOMES, RUN_OVERDUE), and, when var.alert_email is set, an e-mail
# channel, alert policies and a dashboard over them. tests/unit/test_infra_monitoring.py ties every
# metric's jsonPayload fields to a log call in the code that emits them.

locals {
  # Cloud Functions (2nd gen) run on Cloud Run: their logs come from cloud_run_revision resources named
  # after the functions.
  function_logs = "resource.type=\"cloud_run_revision\" AND resource.labels.service_name=starts_with(\"${var.name_prefix}-\")"
  alerts        = var.alert_email != "" ? 1 : 0
}

resource "google_logging_metric" "runs_ended" {
  name        = "${var.name_prefix}/runs_ended"
  description = "Runs that reached a terminal state, by state (SUCCEEDED, PARTIAL, FAILED, CANCELLED)."
  filter      = "${local.function_logs} AND jsonPayload.event=\"run_ended\""
  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"
    labels {
      key        = "state"
      value_type = "STRING"
    }
  }
  label_extractors = {
    state = "EXTRACT(jsonPayload.state)"
  }
  depends_on = [google_project_service.apis]
}

resource "google_logging_metric" "spend" {
  name        = "${var.name_prefix}/spend_usd"
  description = "What each ended run cost in USD (batch plus now lane), by state; runs of unpriced models are left out (their cost is unknown)."
  filter      = "${local.function_logs} AND jsonPayload.event=\"run_ended\" AND jsonPayload.cost_usd>=0"
  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "DISTRIBUTION"
    unit        = "USD"
    labels {
      key        = "state"
      value_type = "STRING"
    }
  }
  value_extractor = "EXTRACT(jsonPayload.cost_usd)"
  label_extractors = {
    state = "EXTRACT(jsonPayload.state)"
  }
  bucket_options {
    exponential_buckets {
      num_finite_buckets = 32
      growth_factor      = 2
      scale              = 0.01
    }
  }
  depends_on = [google_project_service.apis]
}

resource "google_logging_metric" "line_outcomes" {
  name        = "${var.name_prefix}/line_outcomes"
  description = "Lines that did not succeed, by outcome code (safety, api_error, invalid_key, ...): one value per run and code, the number of lines."
  filter      = "${local.function_logs} AND jsonPayload.event=\"line_outcomes\""
  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "DISTRIBUTION"
    unit        = "1"
    labels {
      key        = "code"
      value_type = "STRING"
    }
  }
  value_extractor = "EXTRACT(jsonPayload.count)"
  label_extractors = {
    code = "EXTRACT(jsonPayload.code)"
  }
  bucket_options {
    exponential_buckets {
      num_finite_buckets = 24
      growth_factor      = 2
      scale              = 1
    }
  }
  depends_on = [google_project_service.apis]
}

resource "google_logging_metric" "runs_overdue" {
  name        = "${var.name_prefix}/runs_overdue"
  description = "Ticks that found a run still active an hour past the longest it may take (every attempt to its job deadline)."
  filter      = "${local.function_logs} AND jsonPayload.event=\"run_overdue\""
  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"
  }
  depends_on = [google_project_service.apis]
}

resource "google_logging_metric" "spend_near_cap" {
  name        = "${var.name_prefix}/spend_near_cap"
  description = "Submissions that found a period's spend ledger at 80% or more of its cap (PROMPTDROP_MAX_SPEND_USD_PER_DAY / _PER_MONTH), by period."
  filter      = "${local.function_logs} AND jsonPayload.event=\"spend_near_cap\""
  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"
    labels {
      key        = "period"
      value_type = "STRING"
    }
  }
  label_extractors = {
    period = "EXTRACT(jsonPayload.period)"
  }
  depends_on = [google_project_service.apis]
}

resource "google_logging_metric" "webhook_disabled" {
  name        = "${var.name_prefix}/webhook_disabled"
  description = "Hourly looks of the poller that found every batch webhook of ours disabled by the API (pushes stopped; jobs are polled every tick meanwhile)."
  filter      = "${local.function_logs} AND jsonPayload.event=\"webhook_disabled\""
  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"
  }
  depends_on = [google_project_service.apis]
}

resource "google_logging_metric" "function_errors" {
  name        = "${var.name_prefix}/function_errors"
  description = "ERROR lines (and worse) logged by the functions."
  filter      = "${local.function_logs} AND severity>=ERROR"
  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"
  }
  depends_on = [google_project_service.apis]
}

resource "google_monitoring_notification_channel" "email" {
  count        = local.alerts
  display_name = "${var.name_prefix} alerts"
  type         = "email"
  labels = {
    email_address = var.alert_email
  }
  depends_on = [google_project_service.apis]
}

# The alerts on our own log-based metrics: any count in the period (or, for errors, a rate over it).
locals {
  log_metric_alerts = {
    run_overdue = {
      title     = "a run is not terminal an hour after its deadline"
      metric    = google_logging_metric.runs_overdue.name
      doc       = "A run is still active an hour past the longest it may take. `promptdrop status RUN_ID` (with PROMPTDROP_STORE=firestore) shows its jobs; the log line carries its run_id."
      period    = "600s"
      aligner   = "ALIGN_SUM"
      threshold = 0
    }
    spend_near_cap = {
      title     = "spend above 80% of a cap"
      metric    = google_logging_metric.spend_near_cap.name
      doc       = "A day's or month's spend (settled costs plus reservations) reached 80% of PROMPTDROP_MAX_SPEND_USD_PER_DAY / _PER_MONTH. Runs past the cap wait in RECEIVED until the period turns or the cap is raised (settings.max_spend_usd_per_day / _per_month); `promptdrop status` shows the spend."
      period    = "600s"
      aligner   = "ALIGN_SUM"
      threshold = 0
    }
    webhook_disabled = {
      title     = "the Gemini batch webhook is disabled"
      metric    = google_logging_metric.webhook_disabled.name
      doc       = "The Gemini API disabled our batch webhook after failed deliveries: no pushes arrive, and the poller polls every job at each tick (slower to notice, more API calls). Find why deliveries failed (the webhook function's logs), then `scripts/deploy` re-enables it (docs/DEPLOY.md)."
      period    = "3600s"
      aligner   = "ALIGN_SUM"
      threshold = 0
    }
    function_errors = {
      title     = "functions logging errors"
      metric    = google_logging_metric.function_errors.name
      doc       = "The functions logged more than ${var.alert_function_errors_per_minute} ERROR line(s) a minute over 10 minutes. Each line carries run_id and job."
      period    = "600s"
      aligner   = "ALIGN_RATE"
      threshold = var.alert_function_errors_per_minute / 60
    }
  }
}

resource "google_monitoring_alert_policy" "log_metric" {
  for_each              = local.alerts == 1 ? local.log_metric_alerts : {}
  display_name          = "${var.name_prefix}: ${each.value.title}"
  combiner              = "OR"
  notification_channels = [google_monitoring_notification_channel.email[0].id]
  documentation {
    content   = each.value.doc
    mime_type = "text/markdown"
  }
  conditions {
    display_name = "${each.key} above ${each.value.threshold}"
    condition_threshold {
      filter          = "resource.type=\"cloud_run_revision\" AND metric.type=\"logging.googleapis.com/user/${each.value.metric}\""
      comparison      = "COMPARISON_GT"
      threshold_value = each.value.threshold
      duration        = "0s"
      aggregations {
        alignment_period     = each.value.period
        per_series_aligner   = each.value.aligner
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }
}

resource "google_monitoring_alert_policy" "dead_letters" {
  count                 = local.alerts
  display_name          = "${var.name_prefix}: messages in the dead-letter subscription"
  combiner              = "OR"
  notification_channels = [google_monitoring_notification_channel.email[0].id]
  documentation {
    content   = "File or request messages failed every delivery and wait in ${google_pubsub_subscription.dead_letter.name}. Fix the cause, then `scripts/replay-dead-letters` (docs/DEPLOY.md)."
    mime_type = "text/markdown"
  }
  conditions {
    display_name = "undelivered dead letters > 0"
    condition_threshold {
      filter          = "resource.type=\"pubsub_subscription\" AND resource.labels.subscription_id=\"${google_pubsub_subscription.dead_letter.name}\" AND metric.type=\"pubsub.googleapis.com/subscription/num_undelivered_messages\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "300s"
      aggregations {
        alignment_period   = "300s"
        per_series_aligner = "ALIGN_MAX"
      }
    }
  }
}

resource "google_monitoring_dashboard" "operations" {
  count = local.alerts
  dashboard_json = jsonencode({
    displayName = "${var.name_prefix} operations"
    mosaicLayout = {
      columns = 12
      tiles = [
        for index, chart in [
          { title = "Runs ended, by state", metric = google_logging_metric.runs_ended.name, aligner = "ALIGN_SUM", group = "metric.label.state", resource = "cloud_run_revision" },
          { title = "Failed and invalid lines, by code", metric = google_logging_metric.line_outcomes.name, aligner = "ALIGN_DELTA", group = "metric.label.code", resource = "cloud_run_revision" },
          { title = "Spend per run (USD)", metric = google_logging_metric.spend.name, aligner = "ALIGN_DELTA", group = "metric.label.state", resource = "cloud_run_revision" },
          { title = "Spend near a cap", metric = google_logging_metric.spend_near_cap.name, aligner = "ALIGN_SUM", group = "metric.label.period", resource = "cloud_run_revision" },
          { title = "Runs overdue", metric = google_logging_metric.runs_overdue.name, aligner = "ALIGN_SUM", group = "", resource = "cloud_run_revision" },
          { title = "Webhook found disabled", metric = google_logging_metric.webhook_disabled.name, aligner = "ALIGN_SUM", group = "", resource = "cloud_run_revision" },
          { title = "Function errors", metric = google_logging_metric.function_errors.name, aligner = "ALIGN_SUM", group = "", resource = "cloud_run_revision" },
          ] : {
          xPos   = (index % 2) * 6
          yPos   = floor(index / 2) * 4
          width  = 6
          height = 4
          widget = {
            title = chart.title
            xyChart = {
              dataSets = [{
                plotType = "STACKED_BAR"
                timeSeriesQuery = {
                  timeSeriesFilter = {
                    filter = "resource.type=\"${chart.resource}\" AND metric.type=\"logging.googleapis.com/user/${chart.metric}\""
                    aggregation = {
                      alignmentPeriod    = "3600s"
                      perSeriesAligner   = chart.aligner
                      crossSeriesReducer = "REDUCE_SUM"
                      groupByFields      = chart.group == "" ? [] : [chart.group]
                    }
                  }
                }
              }]
            }
          }
        }
      ]
    }
  })
}
