# promptdrop on Google Cloud: a bucket whose inbox starts runs, Firestore for state, three 2nd-gen
# Cloud Functions fed through Pub/Sub, a scheduler tick for the poller. scripts/deploy drives it.

locals {
  bucket_name        = coalesce(var.bucket_name, "${var.project_id}-${var.name_prefix}")
  firestore_location = coalesce(var.firestore.location, var.region)
  pubsub_agent       = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
  # Where Cloud Functions (2nd gen) stages each function's source for its build.
  function_staging_bucket = "gcf-v2-sources-${data.google_project.this.number}-${var.region}"

  # A run's scratch objects are <output_prefix><run_id>/_work/... (promptdrop/layout.py). A lifecycle
  # condition anchors only at the two ends of a name (matches_prefix, matches_suffix; no wildcard in the
  # middle), so the rule takes the output prefix and lists the endings of every scratch name; none of
  # them ends an output (images/<key>.<ext>, manifest.jsonl, errors.jsonl, rejected.jsonl, summary.json).
  # The consistency test derives both sets of names from RunLayout and checks the rule against them.
  scratch_suffixes = [
    "/_work/input.jsonl",
    "/_work/input.txt",
    "/_work/submit-outcomes.jsonl",
    "/_work/cached-outcomes.jsonl",
    "/_work/fingerprints.jsonl",
    "/_work/waiting.jsonl",
    "/requests.jsonl",
    "/keys.jsonl",
    "/results.jsonl",
    # jobs/<job_id>/outcomes-NNNNNN.jsonl
    "0.jsonl", "1.jsonl", "2.jsonl", "3.jsonl", "4.jsonl", "5.jsonl", "6.jsonl", "7.jsonl", "8.jsonl", "9.jsonl",
  ]

  # 540 s is the longest an event-driven function may run. Harvest stops at 480 s (its time budget) to
  # checkpoint and still finish the uploads in flight; a lease lasts 600 s so no other poller takes over
  # a job while the invocation that holds it may still be running.
  function_timeout_seconds    = 540
  harvest_time_budget_seconds = 480
  lease_seconds               = 600

  # Each instance handles one event at a time (max_instance_request_concurrency = 1): the poller already
  # works in threads inside one event, and the memory figures below are per event. Sizing, in var.functions:
  # - poller 2Gi/1 vCPU: in Cloud Functions the disk is memory, so results stream into GCS and back;
  #   what stays resident is a few 4K-image result lines (tens of MB of base64 each, plus the decoded
  #   bytes) times the upload concurrency. JSON parsing and base64 decoding are CPU-bound: 1 full vCPU.
  #   3 instances: ticks overlap only while a harvest runs, and a third poller would mostly skip leased work.
  # - file/message 1Gi/1 vCPU: a prompt file is streamed to the Files API, but one line may carry up to
  #   max_line_bytes (20 MiB) of inline reference images, held while it is validated and re-serialised.
  #   10 and 5 instances absorb a burst of uploads or messages; Pub/Sub retries the rest with backoff.
  # All bounded so a burst can neither exceed the API's 100 concurrent batch jobs nor run up cost.
  functions = {
    file = {
      name        = "${var.name_prefix}-on-prompt-file"
      entry_point = "on_prompt_file"
      description = "Starts a run for each prompt file finalized under the inbox prefix."
      sizing      = var.functions.file
      api_key     = var.backend == "gemini" # GEMINI_API_KEY from Secret Manager
      # Fed by the push subscription google_pubsub_subscription.file, not by an Eventarc trigger.
      tick_trigger = false
    }
    message = {
      name        = "${var.name_prefix}-on-prompt-message"
      entry_point = "on_prompt_message"
      description = "Starts a run for each message on the requests topic."
      sizing      = var.functions.message
      api_key     = var.backend == "gemini" # GEMINI_API_KEY from Secret Manager
      # Fed by the push subscription google_pubsub_subscription.message, not by an Eventarc trigger.
      tick_trigger = false
    }
    poller = {
      name        = "${var.name_prefix}-poll-jobs"
      entry_point = "poll_jobs"
      description = "On each scheduler tick: submits, polls and harvests batch jobs."
      sizing      = var.functions.poller
      api_key     = var.backend == "gemini" # GEMINI_API_KEY from Secret Manager
      # Triggered through Eventarc by the scheduler's messages on the tick topic.
      tick_trigger = true
    }
    # The now lane (issue 16): fed by the push subscription google_pubsub_subscription.now (see "Now lane").
    now = {
      name         = "${var.name_prefix}-on-now-chunk"
      entry_point  = "on_now_chunk"
      description  = "Sends the now-lane lines of a run's chunk with generate_content, each answer checkpointed."
      sizing       = var.functions.now
      api_key      = var.backend == "gemini" # GEMINI_API_KEY from Secret Manager
      tick_trigger = false
    }
  }

  # Vertex AI batch (var.backend = "vertex"): no API key, no Files API, no webhooks (README "Backends").
  vertex = var.backend == "vertex"

  # The webhook receiver (var.webhooks): an HTTP function, not in local.functions because it differs from
  # the CloudEvent functions in trigger, ingress and secrets. It shares their identity grants.
  webhook_function_name = "${var.name_prefix}-on-batch-webhook"
  # One service account per function; each gets the same object, Firestore, events and API key grants.
  function_identities = merge(
    { for role, function in local.functions : role => function.entry_point },
    var.webhooks ? { webhook = "on_batch_webhook" } : {},
  )

  # Every PROMPTDROP_* variable here is read by promptdrop.settings.Settings (tests/unit/test_infra_consistency.py
  # checks); the others are for the runtime, on its documented allow-list.
  fixed_env = {
    PROMPTDROP_BUCKET              = "gs://${google_storage_bucket.data.name}"
    PROMPTDROP_STORE               = "firestore://${var.project_id}/${google_firestore_database.main.name}"
    PROMPTDROP_BACKEND             = var.backend
    PROMPTDROP_VERTEX_PROJECT      = var.project_id
    PROMPTDROP_VERTEX_LOCATION     = var.vertex_location
    PROMPTDROP_INBOX_PREFIX        = var.inbox_prefix
    PROMPTDROP_OUTPUT_PREFIX       = var.output_prefix
    PROMPTDROP_EVENTS_TOPIC        = google_pubsub_topic.events.id
    PROMPTDROP_NOW_TOPIC           = google_pubsub_topic.now.id
    PROMPTDROP_HARVEST_TIME_BUDGET = tostring(local.harvest_time_budget_seconds)
    PROMPTDROP_LEASE_SECONDS       = tostring(local.lease_seconds)
    PROMPTDROP_LOG_FORMAT          = "json"
    # glibc gives each allocating thread its own heap, which keeps freed megabytes; the poller runs runs
    # and uploads in threads. Two arenas took a 16-upload harvest from 277 to 210 MB peak RSS at the same
    # speed (scripts/bench, docs/PERFORMANCE.md). Set for every function: none needs more arenas.
    MALLOC_ARENA_MAX = "2"
  }
  tunable_env = {
    PROMPTDROP_MODEL                   = var.settings.model
    PROMPTDROP_RETIRED_MODELS          = var.settings.retired_models
    PROMPTDROP_MODEL_MAP               = var.settings.model_map
    PROMPTDROP_TIER                    = var.settings.tier
    PROMPTDROP_PRIORITY                = var.settings.priority
    PROMPTDROP_MAX_COST_USD            = var.settings.max_cost_usd
    PROMPTDROP_MAX_SPEND_USD_PER_DAY   = var.settings.max_spend_usd_per_day
    PROMPTDROP_MAX_SPEND_USD_PER_MONTH = var.settings.max_spend_usd_per_month
    PROMPTDROP_MAX_ATTEMPTS            = var.settings.max_attempts
    PROMPTDROP_JOB_DEADLINE            = var.settings.job_deadline
    PROMPTDROP_MAX_JOBS_IN_FLIGHT      = var.settings.max_jobs_in_flight
    PROMPTDROP_MAX_FILE_BYTES          = var.settings.max_file_bytes
    PROMPTDROP_MAX_LINE_BYTES          = var.settings.max_line_bytes
    PROMPTDROP_MAX_ENQUEUED_TOKENS     = var.settings.max_enqueued_tokens
    PROMPTDROP_MAX_REQUESTS_PER_JOB    = var.settings.max_requests_per_job
    PROMPTDROP_UPLOAD_CONCURRENCY      = var.settings.upload_concurrency
    PROMPTDROP_GEMINI_BASE_URL         = var.settings.gemini_base_url
    PROMPTDROP_MAX_NOW_LINES           = var.settings.max_now_lines
    PROMPTDROP_NOW_CONCURRENCY         = var.settings.now_concurrency
    PROMPTDROP_NOW_CHUNK_LINES         = var.settings.now_chunk_lines
    PROMPTDROP_NOW_BASE_URL            = var.settings.now_base_url
    PROMPTDROP_NOW_SPEND_PER_10_MIN    = var.settings.now_spend_per_10_min
  }
  # Every function learns whether webhooks are on: with them, the poller polls each job only every
  # webhook_poll_seconds (the net for lost deliveries) instead of on every tick.
  webhook_env = {
    PROMPTDROP_WEBHOOKS             = var.webhooks ? "on" : "off"
    PROMPTDROP_WEBHOOK_POLL_SECONDS = tostring(var.webhook_poll_seconds)
  }
  function_env = merge(local.fixed_env, local.webhook_env, { for name, value in local.tunable_env : name => tostring(value) if value != null })

  apis = toset(concat(local.vertex ? ["aiplatform.googleapis.com"] : [], [
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com",
    "cloudfunctions.googleapis.com",
    "cloudresourcemanager.googleapis.com",
    "cloudscheduler.googleapis.com",
    "eventarc.googleapis.com",
    "firestore.googleapis.com",
    "iam.googleapis.com",
    "logging.googleapis.com",
    "monitoring.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
    "storage.googleapis.com",
  ]))
}

# ---------------------------------------------------------------------------------------------------
# APIs and service agents

resource "google_project_service" "apis" {
  for_each = local.apis

  service = each.value
  # Other workloads in the project may use these APIs: tearing promptdrop down never disables them.
  disable_on_destroy         = false
  disable_dependent_services = false
}

data "google_project" "this" {
  depends_on = [google_project_service.apis]
}

# Reading this data source also creates the Cloud Storage service agent if it does not exist yet.
data "google_storage_project_service_account" "gcs" {
  depends_on = [google_project_service.apis]
}

# ---------------------------------------------------------------------------------------------------
# Buckets

resource "google_storage_bucket" "data" {
  # checkov:skip=CKV_GCP_62: Usage logs would need a second bucket and cost storage; Cloud Audit Logs record admin access, and every run is recorded in Firestore.
  # checkov:skip=CKV_GCP_78: Outputs are written once under run-unique names and scratch objects are rewritten during a harvest; versioning would keep every scratch copy. Soft delete (var.soft_delete_days, 7 by default) still protects against accidental deletes.
  name                        = local.bucket_name
  location                    = var.region
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = var.allow_data_deletion

  # Soft delete is one policy per bucket: it keeps every deleted object, outputs and scratch alike, billed
  # for its retention. Scratch is large and deleted as soon as its run ends (Gemini API results copies,
  # Vertex AI prediction files of base64 images), so the policy is set explicitly to the shortest non-zero
  # retention rather than left to a project or organization default that may be longer (up to 90 days);
  # 0 turns it off and leaves outputs without protection (variables.tf).
  soft_delete_policy {
    retention_duration_seconds = var.soft_delete_days * 86400
  }

  # Scratch that outlived its run. A run's scratch lives as long as the run, which has no bound (jobs are
  # launched one after another under the enqueued-token cap, each up to 48 h), so the rule counts from the
  # run's end, never from an object's creation: settle stamps customTime on every object under the run's
  # _work/ before it records the end, then deletes them. What a crash in between leaves behind goes
  # scratch_days later; an object without customTime (a live run's) never matches.
  lifecycle_rule {
    action {
      type = "Delete"
    }
    condition {
      days_since_custom_time = var.retention.scratch_days
      matches_prefix         = [var.output_prefix]
      matches_suffix         = local.scratch_suffixes
    }
  }

  dynamic "lifecycle_rule" {
    for_each = var.retention.outputs_days == null ? [] : [var.retention.outputs_days]
    content {
      action {
        type = "Delete"
      }
      condition {
        age            = lifecycle_rule.value
        matches_prefix = [var.output_prefix]
      }
    }
  }

  lifecycle {
    precondition {
      condition     = !startswith(var.output_prefix, var.inbox_prefix) && !startswith(var.inbox_prefix, var.output_prefix)
      error_message = "output_prefix must not overlap inbox_prefix: outputs written into the inbox would start new runs."
    }
  }

  depends_on = [google_project_service.apis]
}

# Function source archives live apart from the data: a function that can write the data bucket must not
# be able to replace the code of the next deployment.
resource "google_storage_bucket" "source" {
  # checkov:skip=CKV_GCP_62: Holds only build inputs that Terraform itself uploads; access logs would record nothing of interest.
  # checkov:skip=CKV_GCP_78: Each archive is named after its MD5 and never overwritten, so there is nothing for versioning to keep.
  name                        = "${local.bucket_name}-source"
  location                    = var.region
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = true

  # Old archives only matter to builds that are long finished; Terraform uploads the current one again if it is gone.
  lifecycle_rule {
    action {
      type = "Delete"
    }
    condition {
      age = 30
    }
  }

  depends_on = [google_project_service.apis]
}

data "archive_file" "functions_source" {
  type        = "zip"
  source_dir  = "${path.module}/../functions"
  output_path = "${path.module}/.terraform/functions-source.zip"
  # The CLI and the bundled emulator are local tools: the functions never import them
  # (tests/unit/test_deployed_archive.py checks the import graph of main.py against this list).
  excludes = [
    "**/__pycache__/**", "**/*.pyc", "*.egg-info/**", "**/.pytest_cache/**", "**/.mypy_cache/**",
    "promptdrop/emulator/**", "promptdrop/cli.py",
  ]
}

resource "google_storage_bucket_object" "functions_source" {
  name   = "functions-${data.archive_file.functions_source.output_md5}.zip"
  bucket = google_storage_bucket.source.name
  source = data.archive_file.functions_source.output_path
}

# Built images go to a repository with a cleanup policy, so redeploys do not pile up storage that is
# billed while idle (the default gcf-artifacts repository keeps every image).
resource "google_artifact_registry_repository" "functions" {
  # checkov:skip=CKV_GCP_84: Images hold only the open-source code of this repository; a customer-managed key would add a KMS key ring to pay for and rotate.
  repository_id = "${var.name_prefix}-functions"
  location      = var.region
  format        = "DOCKER"
  description   = "Images of the promptdrop functions"

  cleanup_policy_dry_run = false
  cleanup_policies {
    id     = "keep-recent"
    action = "KEEP"
    most_recent_versions {
      keep_count = 3
    }
  }
  cleanup_policies {
    id     = "delete-old"
    action = "DELETE"
    condition {
      older_than = "604800s"
    }
  }

  depends_on = [google_project_service.apis]
}

# ---------------------------------------------------------------------------------------------------
# Firestore

resource "google_firestore_database" "main" {
  name                        = var.firestore.database
  location_id                 = local.firestore_location
  type                        = "FIRESTORE_NATIVE"
  app_engine_integration_mode = "DISABLED"
  # PITR storage is billed; every output is in the bucket and the records can be rebuilt from summaries.
  point_in_time_recovery_enablement = "POINT_IN_TIME_RECOVERY_DISABLED"
  delete_protection_state           = var.allow_data_deletion ? "DELETE_PROTECTION_DISABLED" : "DELETE_PROTECTION_ENABLED"
  deletion_policy                   = var.allow_data_deletion ? "DELETE" : "ABANDON"

  depends_on = [google_project_service.apis]
}

# The poller's queries (docs/ARCHITECTURE.md): runs where state in [...] order by updated_at, and
# jobs where run_id == X order by attempt, chunk. `jobs where phase in [...]` uses a single-field index.
resource "google_firestore_index" "runs_by_state" {
  database    = google_firestore_database.main.name
  collection  = "runs"
  query_scope = "COLLECTION"

  fields {
    field_path = "state"
    order      = "ASCENDING"
  }
  fields {
    field_path = "updated_at"
    order      = "ASCENDING"
  }
}

resource "google_firestore_index" "jobs_by_run" {
  database    = google_firestore_database.main.name
  collection  = "jobs"
  query_scope = "COLLECTION"

  fields {
    field_path = "run_id"
    order      = "ASCENDING"
  }
  fields {
    field_path = "attempt"
    order      = "ASCENDING"
  }
  fields {
    field_path = "chunk"
    order      = "ASCENDING"
  }
}

# ---------------------------------------------------------------------------------------------------
# Pub/Sub

resource "google_pubsub_topic" "inbox" {
  # checkov:skip=CKV_GCP_83: Messages carry object metadata only, never prompts or keys; Google-managed encryption applies.
  name       = "${var.name_prefix}-inbox"
  depends_on = [google_project_service.apis]
}

resource "google_pubsub_topic" "requests" {
  # checkov:skip=CKV_GCP_83: Prompts are not secret to the project that runs them; a customer-managed key would add a KMS key ring to pay for and rotate.
  name       = "${var.name_prefix}-requests"
  depends_on = [google_project_service.apis]
}

resource "google_pubsub_topic" "events" {
  # checkov:skip=CKV_GCP_83: Run notifications hold ids, counts and costs only; Google-managed encryption applies.
  name       = "${var.name_prefix}-events"
  depends_on = [google_project_service.apis]
}

resource "google_pubsub_topic" "tick" {
  # checkov:skip=CKV_GCP_83: The tick carries no data at all.
  name = "${var.name_prefix}-tick"
  # A tick that waited is worthless: the next one is at most a schedule period away.
  message_retention_duration = "600s"
  depends_on                 = [google_project_service.apis]
}

resource "google_pubsub_topic" "dead_letter" {
  # checkov:skip=CKV_GCP_83: Holds the same messages as the inbox and requests topics; Google-managed encryption applies.
  name       = "${var.name_prefix}-dead-letter"
  depends_on = [google_project_service.apis]
}

# A topic without a subscription drops what it receives: this one keeps dead letters for a week.
resource "google_pubsub_subscription" "dead_letter" {
  name                       = "${var.name_prefix}-dead-letter"
  topic                      = google_pubsub_topic.dead_letter.id
  message_retention_duration = "604800s"
  ack_deadline_seconds       = 60
  expiration_policy {
    ttl = ""
  }
}

# The bucket notifies only for objects finalized under the inbox prefix. Eventarc's direct Cloud Storage
# trigger cannot filter by prefix, so it would invoke the function for every output image as well.
resource "google_storage_notification" "inbox" {
  bucket             = google_storage_bucket.data.name
  topic              = google_pubsub_topic.inbox.id
  payload_format     = "JSON_API_V1"
  event_types        = ["OBJECT_FINALIZE"]
  object_name_prefix = var.inbox_prefix

  depends_on = [google_pubsub_topic_iam_member.gcs_publishes_inbox]
}

resource "google_pubsub_topic_iam_member" "gcs_publishes_inbox" {
  topic  = google_pubsub_topic.inbox.id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${data.google_storage_project_service_account.gcs.email_address}"
}

# The file and request paths use explicit push subscriptions instead of Eventarc triggers: the
# subscription Eventarc creates for a function cannot be given a dead-letter topic
# (hashicorp/terraform-provider-google#25069). Pushed to <function url>/projects/P/topics/T, the raw
# Pub/Sub body becomes a google.cloud.pubsub.topic.v1.messagePublished CloudEvent in functions-framework,
# the same event an Eventarc trigger delivers. Retried with backoff, dead-lettered after N deliveries.
resource "google_pubsub_subscription" "file" {
  name  = "${var.name_prefix}-inbox-to-file"
  topic = google_pubsub_topic.inbox.id

  # Longer than the function timeout, so a message is not redelivered while it is still being handled.
  ack_deadline_seconds       = 600
  message_retention_duration = "604800s"
  expiration_policy {
    ttl = ""
  }
  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }
  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letter.id
    max_delivery_attempts = var.dead_letter_max_delivery_attempts
  }
  push_config {
    push_endpoint = "${google_cloudfunctions2_function.function["file"].service_config[0].uri}/${google_pubsub_topic.inbox.id}"
    oidc_token {
      service_account_email = google_service_account.invoker.email
      audience              = google_cloudfunctions2_function.function["file"].service_config[0].uri
    }
  }

  depends_on = [google_cloud_run_v2_service_iam_member.invoker, google_service_account_iam_member.pubsub_signs_as_invoker]
}

resource "google_pubsub_subscription" "message" {
  name  = "${var.name_prefix}-requests-to-message"
  topic = google_pubsub_topic.requests.id

  ack_deadline_seconds       = 600
  message_retention_duration = "604800s"
  expiration_policy {
    ttl = ""
  }
  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }
  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letter.id
    max_delivery_attempts = var.dead_letter_max_delivery_attempts
  }
  push_config {
    push_endpoint = "${google_cloudfunctions2_function.function["message"].service_config[0].uri}/${google_pubsub_topic.requests.id}"
    oidc_token {
      service_account_email = google_service_account.invoker.email
      audience              = google_cloudfunctions2_function.function["message"].service_config[0].uri
    }
  }

  depends_on = [google_cloud_run_v2_service_iam_member.invoker, google_service_account_iam_member.pubsub_signs_as_invoker]
}

# Dead-lettering is done by the Pub/Sub service agent: it must publish to the dead-letter topic and
# acknowledge on the source subscriptions.
resource "google_pubsub_topic_iam_member" "pubsub_publishes_dead_letters" {
  topic  = google_pubsub_topic.dead_letter.id
  role   = "roles/pubsub.publisher"
  member = local.pubsub_agent
}

resource "google_pubsub_subscription_iam_member" "pubsub_forwards_dead_letters" {
  for_each = {
    file    = google_pubsub_subscription.file.id
    message = google_pubsub_subscription.message.id
    now     = google_pubsub_subscription.now.id
  }

  subscription = each.value
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_agent
}

# ---------------------------------------------------------------------------------------------------
# Now lane (issue 16): a run's now-lane lines are handed over as one message per chunk on this topic
# (promptdrop/usecases/now_lane.py) and pushed to on_now_chunk, which sends them with generate_content
# within its time budget. A chunk still open when the invocation ends (its run leased elsewhere, time up)
# is answered 500 and redelivered with backoff; its answered lines are checkpointed, so a redelivery goes
# on where the last one stopped. After the dead-letter limit the poller hands the chunk over again.

resource "google_pubsub_topic" "now" {
  # checkov:skip=CKV_GCP_83: Messages hold a run id and a chunk id only; Google-managed encryption applies.
  name       = "${var.name_prefix}-now"
  depends_on = [google_project_service.apis]
}

resource "google_pubsub_subscription" "now" {
  name  = "${var.name_prefix}-now-to-chunk"
  topic = google_pubsub_topic.now.id

  # Longer than the function timeout, so a chunk is not redelivered while it is still being sent.
  ack_deadline_seconds       = 600
  message_retention_duration = "604800s"
  expiration_policy {
    ttl = ""
  }
  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }
  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letter.id
    max_delivery_attempts = var.dead_letter_max_delivery_attempts
  }
  push_config {
    push_endpoint = "${google_cloudfunctions2_function.function["now"].service_config[0].uri}/${google_pubsub_topic.now.id}"
    oidc_token {
      service_account_email = google_service_account.invoker.email
      audience              = google_cloudfunctions2_function.function["now"].service_config[0].uri
    }
  }

  depends_on = [google_cloud_run_v2_service_iam_member.invoker, google_service_account_iam_member.pubsub_signs_as_invoker]
}

# Every function may advance a run to its now lane (the webhook receiver too), so every one may hand
# chunks over.
resource "google_pubsub_topic_iam_member" "function_publishes_now_chunks" {
  for_each = local.function_identities

  topic  = google_pubsub_topic.now.id
  role   = "roles/pubsub.publisher"
  member = google_service_account.function[each.key].member
}

# ---------------------------------------------------------------------------------------------------
# Secret: the Gemini API key. Terraform creates the secret only; scripts/deploy adds the key as a
# version with gcloud, so the value never passes through Terraform state.

resource "google_secret_manager_secret" "gemini_api_key" {
  count = local.vertex ? 0 : 1 # Vertex AI authenticates as the service accounts: no key

  secret_id = "${var.name_prefix}-gemini-api-key"
  replication {
    auto {}
  }
  depends_on = [google_project_service.apis]
}

# The webhook's signing secret (whsec_...). Gemini returns it once, when scripts/deploy registers the
# webhook; the script pipes it into a new version with gcloud. No version here: never in Terraform state.
resource "google_secret_manager_secret" "webhook_signing" {
  count = var.webhooks ? 1 : 0

  secret_id = "${var.name_prefix}-webhook-signing-secret"
  replication {
    auto {}
  }
  depends_on = [google_project_service.apis]
}

# ---------------------------------------------------------------------------------------------------
# Identities: one service account per function, one that invokes them, one that builds them.

resource "google_service_account" "function" {
  for_each = local.function_identities

  account_id   = "${var.name_prefix}-${each.key}"
  display_name = "promptdrop ${each.value}"
  depends_on   = [google_project_service.apis]
}

# Objects of this bucket only (read the inbox, write outputs, delete scratch); no bucket administration.
resource "google_storage_bucket_iam_member" "function_objects" {
  for_each = local.function_identities

  bucket = google_storage_bucket.data.name
  role   = "roles/storage.objectUser"
  member = google_service_account.function[each.key].member
}

# Vertex AI (var.backend = "vertex"): the functions create, read and cancel batch jobs and call
# generateContent; the Vertex AI service agent, which runs the jobs, reads their inputs (the chunk files in
# each run's scratch, and reference images under the inbox prefix) and writes predictions into the scratch
# only. Scratch is <output_prefix><run>/_work/: the condition extracts the run from that shape.
resource "google_project_iam_member" "function_vertex" {
  for_each = local.vertex ? local.function_identities : {}

  project = var.project_id
  role    = "roles/aiplatform.user"
  member  = google_service_account.function[each.key].member
}

resource "google_storage_bucket_iam_member" "vertex_agent_reads_inputs" {
  count = local.vertex ? 1 : 0

  bucket = google_storage_bucket.data.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-aiplatform.iam.gserviceaccount.com"
  condition {
    title       = "vertex-inputs"
    description = "Batch inputs in run scratch, and reference images under the inbox prefix."
    expression  = "resource.name.extract(\"projects/_/buckets/${google_storage_bucket.data.name}/objects/${var.output_prefix}{run}/_work/\") != \"\" || resource.name.startsWith(\"projects/_/buckets/${google_storage_bucket.data.name}/objects/${var.inbox_prefix}\")"
  }
}

resource "google_storage_bucket_iam_member" "vertex_agent_writes_scratch" {
  count = local.vertex ? 1 : 0

  bucket = google_storage_bucket.data.name
  role   = "roles/storage.objectCreator"
  member = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-aiplatform.iam.gserviceaccount.com"
  condition {
    title       = "vertex-predictions"
    description = "Prediction files in run scratch only."
    expression  = "resource.name.extract(\"projects/_/buckets/${google_storage_bucket.data.name}/objects/${var.output_prefix}{run}/_work/\") != \"\""
  }
}

# Firestore user, limited to this database by an IAM condition on its resource name.
resource "google_project_iam_member" "function_firestore" {
  for_each = local.function_identities

  project = var.project_id
  role    = "roles/datastore.user"
  member  = google_service_account.function[each.key].member
  condition {
    title      = "${var.name_prefix}-database-only"
    expression = "resource.name == \"${google_firestore_database.main.id}\""
  }
}

# Every function may end a run (a file or message refused at submission ends it at once, a webhook
# delivery finishes one), so all publish events.
resource "google_pubsub_topic_iam_member" "function_publishes_events" {
  for_each = local.function_identities

  topic  = google_pubsub_topic.events.id
  role   = "roles/pubsub.publisher"
  member = google_service_account.function[each.key].member
}

resource "google_secret_manager_secret_iam_member" "function_reads_key" {
  for_each = local.vertex ? {} : local.function_identities

  secret_id = google_secret_manager_secret.gemini_api_key[0].id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.function[each.key].member
}

# Only the webhook receiver reads the signing secret.
resource "google_secret_manager_secret_iam_member" "webhook_reads_signing_secret" {
  count = var.webhooks ? 1 : 0

  secret_id = google_secret_manager_secret.webhook_signing[0].id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.function["webhook"].member
}

# The identity Pub/Sub push and the Eventarc tick trigger call the functions with.
resource "google_service_account" "invoker" {
  account_id   = "${var.name_prefix}-invoker"
  display_name = "promptdrop push and trigger identity"
  depends_on   = [google_project_service.apis]
}

resource "google_project_iam_member" "invoker_receives_events" {
  project = var.project_id
  role    = "roles/eventarc.eventReceiver"
  member  = google_service_account.invoker.member
}

resource "google_cloud_run_v2_service_iam_member" "invoker" {
  for_each = local.functions

  project  = var.project_id
  location = var.region
  name     = google_cloudfunctions2_function.function[each.key].service_config[0].service
  role     = "roles/run.invoker"
  member   = google_service_account.invoker.member
}

# Pub/Sub mints the OIDC tokens of push deliveries; projects created before April 2021 lack the grant.
resource "google_service_account_iam_member" "pubsub_signs_as_invoker" {
  service_account_id = google_service_account.invoker.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_agent
}

# Cloud Build runs as this account instead of the default compute account, which new projects no longer
# grant build permissions. The build runs third-party code (pip install), so it reads objects of two
# buckets only, never the data bucket: this deployment's source bucket, and the gcf-v2-sources-* bucket
# Cloud Functions copies each function's source into and fetches it from. Images go only to this
# deployment's repository.
resource "google_service_account" "build" {
  account_id   = "${var.name_prefix}-build"
  display_name = "promptdrop function builds"
  depends_on   = [google_project_service.apis]
}

resource "google_project_iam_member" "build" {
  for_each = toset(["roles/logging.logWriter"])

  project = var.project_id
  role    = each.value
  member  = google_service_account.build.member
}

resource "google_storage_bucket_iam_member" "build_reads_source" {
  bucket = google_storage_bucket.source.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.build.member
}

# Cloud Functions creates its staging bucket during the first deploy in a region, too late for a
# bucket-level grant: this one is on the project, with an IAM condition naming that bucket and its objects.
resource "google_project_iam_member" "build_reads_staged_source" {
  project = var.project_id
  role    = "roles/storage.objectViewer"
  member  = google_service_account.build.member
  condition {
    title      = "${var.name_prefix}-function-sources-only"
    expression = "resource.name == \"projects/_/buckets/${local.function_staging_bucket}\" || resource.name.startsWith(\"projects/_/buckets/${local.function_staging_bucket}/objects/\")"
  }
}

resource "google_artifact_registry_repository_iam_member" "build_pushes_images" {
  location   = google_artifact_registry_repository.functions.location
  repository = google_artifact_registry_repository.functions.name
  role       = "roles/artifactregistry.writer"
  member     = google_service_account.build.member
}

# ---------------------------------------------------------------------------------------------------
# Functions

# One resource for the three functions (local.functions): only the poller has an Eventarc trigger; the
# file and message functions are fed by the push subscriptions above.
resource "google_cloudfunctions2_function" "function" {
  for_each = local.functions

  name        = each.value.name
  location    = var.region
  description = each.value.description

  build_config {
    runtime           = var.functions.runtime
    entry_point       = each.value.entry_point
    service_account   = google_service_account.build.id
    docker_repository = google_artifact_registry_repository.functions.id
    source {
      storage_source {
        bucket = google_storage_bucket.source.name
        object = google_storage_bucket_object.functions_source.name
      }
    }
  }

  service_config {
    available_memory                 = each.value.sizing.memory
    available_cpu                    = each.value.sizing.cpu
    max_instance_count               = each.value.sizing.max_instances
    min_instance_count               = 0
    max_instance_request_concurrency = 1
    timeout_seconds                  = local.function_timeout_seconds
    ingress_settings                 = "ALLOW_INTERNAL_ONLY"
    all_traffic_on_latest_revision   = true
    service_account_email            = google_service_account.function[each.key].email
    environment_variables            = local.function_env
    # The API key, on the Gemini API only (each.value.api_key: local.functions says it per function).
    dynamic "secret_environment_variables" {
      for_each = each.value.api_key ? ["key"] : []
      content {
        key        = "GEMINI_API_KEY"
        project_id = var.project_id
        secret     = google_secret_manager_secret.gemini_api_key[0].secret_id
        # Pinned: "latest" is read once at instance start, and the tick keeps the poller warm for ever, so
        # it would keep a rotated key. A new version makes a new revision, whose instances read it.
        version = var.gemini_api_key_version
      }
    }
  }

  lifecycle {
    precondition {
      condition     = local.vertex || var.gemini_api_key_version != null
      error_message = "gemini_api_key_version is not set: scripts/deploy passes the version of the API key it pins."
    }
    precondition {
      condition     = !(local.vertex && var.webhooks)
      error_message = "backend = vertex sends no webhooks: set webhooks = false (its jobs are polled)."
    }
  }

  # The tick needs no dead letter and no retry: a stale tick is worthless, the next one comes anyway.
  dynamic "event_trigger" {
    for_each = each.value.tick_trigger ? ["tick"] : []
    content {
      trigger_region        = var.region
      event_type            = "google.cloud.pubsub.topic.v1.messagePublished"
      pubsub_topic          = google_pubsub_topic.tick.id
      retry_policy          = "RETRY_POLICY_DO_NOT_RETRY"
      service_account_email = google_service_account.invoker.email
    }
  }

  # depends_on cannot differ between instances: invoker_receives_events is for the poller's trigger and
  # only orders the file and message functions after one more IAM grant.
  depends_on = [
    google_project_iam_member.build,
    google_storage_bucket_iam_member.build_reads_source,
    google_project_iam_member.build_reads_staged_source,
    google_artifact_registry_repository_iam_member.build_pushes_images,
    google_secret_manager_secret_iam_member.function_reads_key,
    google_project_iam_member.invoker_receives_events,
  ]
}

# The functions used to be three separate resources: existing deployments keep them instead of
# replacing them.
moved {
  from = google_cloudfunctions2_function.file
  to   = google_cloudfunctions2_function.function["file"]
}

moved {
  from = google_cloudfunctions2_function.message
  to   = google_cloudfunctions2_function.function["message"]
}

moved {
  from = google_cloudfunctions2_function.poller
  to   = google_cloudfunctions2_function.function["poller"]
}

# ---------------------------------------------------------------------------------------------------
# Scheduler: the poller's tick

resource "google_cloud_scheduler_job" "tick" {
  name        = "${var.name_prefix}-tick"
  region      = var.region
  description = "Wakes the poller: submit, poll and harvest whatever is due."
  schedule    = var.tick_schedule
  time_zone   = "Etc/UTC"

  # A missed tick is not worth a retry (the next one is at most a schedule period away).
  retry_config {
    retry_count = 0
  }

  pubsub_target {
    topic_name = google_pubsub_topic.tick.id
    data       = base64encode(jsonencode({ tick = true }))
  }

  depends_on = [google_project_service.apis]
}

# ---------------------------------------------------------------------------------------------------
# Webhooks: Gemini pushes batch.succeeded / batch.failed / batch.expired here (docs/DEPLOY.md, "Webhooks").
# scripts/deploy registers this function's URL with client.webhooks.create after the apply.

resource "google_cloudfunctions2_function" "webhook" {
  # checkov:skip=CKV_GCP_124: Gemini delivers webhooks from outside Google Cloud with no identity token, so the function must accept calls from the internet; every delivery is authenticated by its Standard Webhooks signature (HMAC with the signing secret), and an unsigned, forged or stale one is refused before anything is read or written.
  count = var.webhooks ? 1 : 0

  name        = local.webhook_function_name
  location    = var.region
  description = "Receives Gemini's signed batch webhooks and finishes the run whose batch ended."

  build_config {
    runtime           = var.functions.runtime
    entry_point       = "on_batch_webhook"
    service_account   = google_service_account.build.id
    docker_repository = google_artifact_registry_repository.functions.id
    source {
      storage_source {
        bucket = google_storage_bucket.source.name
        object = google_storage_bucket_object.functions_source.name
      }
    }
  }

  service_config {
    available_memory                 = var.functions.webhook.memory
    available_cpu                    = var.functions.webhook.cpu
    max_instance_count               = var.functions.webhook.max_instances
    min_instance_count               = 0
    max_instance_request_concurrency = 1
    timeout_seconds                  = local.function_timeout_seconds
    # Public: see the checkov skip above. Google calls it from outside; the signature is the authentication.
    ingress_settings               = "ALLOW_ALL"
    all_traffic_on_latest_revision = true
    service_account_email          = google_service_account.function["webhook"].email
    environment_variables          = local.function_env
    secret_environment_variables {
      key        = "GEMINI_API_KEY"
      project_id = var.project_id
      secret     = google_secret_manager_secret.gemini_api_key[0].secret_id
      version    = var.gemini_api_key_version
    }
    # Pinned for the same reason as the key: a rotated secret becomes a new version and a new revision.
    secret_environment_variables {
      key        = "PROMPTDROP_WEBHOOK_SECRET"
      project_id = var.project_id
      secret     = google_secret_manager_secret.webhook_signing[0].secret_id
      version    = var.webhook_secret_version
    }
  }

  lifecycle {
    precondition {
      condition     = var.gemini_api_key_version != null
      error_message = "gemini_api_key_version is not set: scripts/deploy passes the version of the API key it pins."
    }
    precondition {
      condition     = var.webhook_secret_version != null
      error_message = "webhook_secret_version is not set: scripts/deploy passes the version of the signing secret it pins."
    }
  }

  depends_on = [
    google_project_iam_member.build,
    google_storage_bucket_iam_member.build_reads_source,
    google_project_iam_member.build_reads_staged_source,
    google_artifact_registry_repository_iam_member.build_pushes_images,
    google_secret_manager_secret_iam_member.function_reads_key,
    google_secret_manager_secret_iam_member.webhook_reads_signing_secret,
  ]
}

# Anyone may invoke it: Gemini's deliveries carry no Google identity to grant run.invoker to (see the
# function's checkov skip); what a caller without the signing secret cannot do is sign a delivery.
resource "google_cloud_run_v2_service_iam_member" "webhook_public" {
  count = var.webhooks ? 1 : 0

  project  = var.project_id
  location = var.region
  name     = google_cloudfunctions2_function.webhook[0].service_config[0].service
  role     = "roles/run.invoker"
  member   = "allUsers"
}
