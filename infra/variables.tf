variable "project_id" {
  description = "The Google Cloud project to deploy into."
  type        = string
}

variable "region" {
  description = "Region for the bucket, the functions, the scheduler job and (unless firestore.location says otherwise) Firestore."
  type        = string
  default     = "us-central1"
}

variable "name_prefix" {
  description = "Prefix of every resource name, so two deployments can share a project."
  type        = string
  default     = "promptdrop"

  validation {
    # Service account ids allow 30 characters; the longest suffix added here is "-message".
    condition     = can(regex("^[a-z][a-z0-9-]{2,14}$", var.name_prefix))
    error_message = "name_prefix must be 3-15 lowercase letters, digits or dashes, starting with a letter."
  }
}

variable "bucket_name" {
  description = "Name of the data bucket (inbox and outputs). Default: <project_id>-<name_prefix>."
  type        = string
  default     = null
}

variable "inbox_prefix" {
  description = "Objects under this prefix start a run (PROMPTDROP_INBOX_PREFIX)."
  type        = string
  default     = "inbox/"

  validation {
    condition     = endswith(var.inbox_prefix, "/") && !startswith(var.inbox_prefix, "/")
    error_message = "inbox_prefix must end with '/' and not start with one."
  }
}

variable "output_prefix" {
  description = "Everything a run writes goes under this prefix (PROMPTDROP_OUTPUT_PREFIX); it must not overlap the inbox."
  type        = string
  default     = "outputs/"

  validation {
    condition     = endswith(var.output_prefix, "/") && !startswith(var.output_prefix, "/")
    error_message = "output_prefix must end with '/' and not start with one."
  }
}

variable "retention" {
  description = <<-EOT
    Lifecycle of objects in the data bucket, in days.
    scratch_days: days after its run ended that a scratch object (<output_prefix><run_id>/_work/...) left
      behind by a crash is deleted; counted from the customTime the run's end stamps, so a live run's
      scratch is never deleted, however long the run lasts.
    outputs_days: delete everything under the output prefix after this many days (null keeps outputs forever).
  EOT
  type = object({
    scratch_days = optional(number, 7)
    outputs_days = optional(number)
  })
  default = {}

  validation {
    condition     = var.retention.scratch_days >= 1 && (var.retention.outputs_days == null ? true : var.retention.outputs_days >= 5)
    error_message = "scratch_days must be at least 1, outputs_days at least 5: outputs must outlive their run (3 attempts of 36 hours by default)."
  }
}

variable "soft_delete_days" {
  description = "Days a deleted object of the data bucket stays restorable (and billed): the bucket's soft delete policy, one for outputs and scratch alike. 7, the shortest Cloud Storage allows, keeps outputs restorable a week while large deleted scratch (results copies, Vertex AI prediction files) is billed a week at most; 0 turns soft delete off (scratch billed not a day longer, but a deleted output is gone); up to 90 keeps outputs restorable longer, at the price of every deleted scratch object billed that long."
  type        = number
  default     = 7

  validation {
    condition     = var.soft_delete_days == 0 || (var.soft_delete_days >= 7 && var.soft_delete_days <= 90 && floor(var.soft_delete_days) == var.soft_delete_days)
    error_message = "soft_delete_days must be 0 (off) or a whole number of days from 7 to 90 (Cloud Storage's bounds)."
  }
}

variable "firestore" {
  description = "The Firestore database (native mode) that keeps runs and jobs. Only one database per project gets the free tier."
  type = object({
    database = optional(string, "(default)")
    location = optional(string) # default: var.region
  })
  default = {}
}

variable "functions" {
  description = "Sizing of the functions (see the comment on local.function_sizing in main.tf for why these defaults)."
  type = object({
    runtime = optional(string, "python312")
    file = optional(object({
      memory        = optional(string, "1Gi")
      cpu           = optional(string, "1")
      max_instances = optional(number, 10)
    }), {})
    message = optional(object({
      memory        = optional(string, "1Gi")
      cpu           = optional(string, "1")
      max_instances = optional(number, 5)
    }), {})
    poller = optional(object({
      memory        = optional(string, "2Gi")
      cpu           = optional(string, "1")
      max_instances = optional(number, 3)
    }), {})
    # The now lane (issue 16): a few images at a time, each held while it is written.
    now = optional(object({
      memory        = optional(string, "1Gi")
      cpu           = optional(string, "1")
      max_instances = optional(number, 5)
    }), {})
    # The webhook receiver may harvest a finished job within its time budget: the poller's memory.
    webhook = optional(object({
      memory        = optional(string, "2Gi")
      cpu           = optional(string, "1")
      max_instances = optional(number, 5)
    }), {})
  })
  default = {}
}

variable "settings" {
  description = "Optional promptdrop settings passed to every function as PROMPTDROP_* variables; null keeps the code's default."
  type = object({
    model          = optional(string)
    retired_models = optional(string) # "aliases" (default), "upgrade" or "refuse"
    model_map      = optional(string) # "FROM=TO,...": lines on FROM run on TO (README, "Models")
    tier           = optional(number) # the project's billing tier, 1 (default), 2 or 3: enqueued-token quotas
    priority       = optional(number)
    max_cost_usd   = optional(number)
    # Spend caps across runs (UTC day and month): a run over one waits until the period turns.
    max_spend_usd_per_day   = optional(number)
    max_spend_usd_per_month = optional(number)
    max_attempts            = optional(number)
    job_deadline            = optional(string) # e.g. "36h"
    max_jobs_in_flight      = optional(number)
    max_file_bytes          = optional(number)
    max_line_bytes          = optional(number)
    max_enqueued_tokens     = optional(number)
    max_requests_per_job    = optional(number)
    upload_concurrency      = optional(number)
    gemini_base_url         = optional(string)
    # The now lane (issue 16).
    max_now_lines   = optional(number)
    now_concurrency = optional(number)
    now_chunk_lines = optional(number)
    now_base_url    = optional(string) # default: gemini_base_url
    # USD the now lane may spend per rolling 10 minutes (default: the tier's spend-based rate limit; 0: off).
    now_spend_per_10_min = optional(number)
  })
  default = {}
}

variable "tick_schedule" {
  description = "Cron schedule (UTC) of the poller's tick. While idle, each tick is one invocation and one Firestore read."
  type        = string
  default     = "*/2 * * * *"
}

variable "dead_letter_max_delivery_attempts" {
  description = "Deliveries of a file or request message before it goes to the dead-letter topic (5-100). A push answered 429 (instances at their cap) or 504 counts as one, so the default is the most Pub/Sub allows: about 16 hours of retries with the 10 s to 10 min backoff."
  type        = number
  default     = 100

  validation {
    condition     = var.dead_letter_max_delivery_attempts >= 5 && var.dead_letter_max_delivery_attempts <= 100
    error_message = "Pub/Sub accepts 5 to 100 delivery attempts."
  }
}

variable "allow_data_deletion" {
  description = "Let `terraform destroy` delete the data bucket's objects and the Firestore database (scripts/deploy --destroy --delete-data sets it)."
  type        = bool
  default     = false
}

variable "gemini_api_key_version" {
  description = "The version of the API key secret the functions read, pinned (scripts/deploy passes the newest enabled one). A new version makes new function revisions; `latest` would be read once per instance and kept."
  type        = string
  default     = null

  validation {
    condition     = var.gemini_api_key_version == null || can(regex("^[1-9][0-9]*$", var.gemini_api_key_version))
    error_message = "gemini_api_key_version must be a version number such as \"3\", not an alias like \"latest\"."
  }
}

variable "backend" {
  description = "Where batches run (PROMPTDROP_BACKEND): gemini, the Gemini API (an API key in Secret Manager, inputs and results through the Files API, webhooks); or vertex, Vertex AI batch (reads its inputs from and writes its predictions to the data bucket, authenticates as the functions' service accounts, polling only: set webhooks = false)."
  type        = string
  default     = "gemini"

  validation {
    condition     = contains(["gemini", "vertex"], var.backend)
    error_message = "backend must be gemini or vertex."
  }
}

variable "vertex_location" {
  description = "With backend = vertex, the Vertex AI location batches run in (PROMPTDROP_VERTEX_LOCATION): global, us, eu or a region; Google lists which image models take batch where."
  type        = string
  default     = "global"
}

variable "webhooks" {
  description = "Finish runs when Gemini says their batch ended: an HTTP function receives the signed batch webhooks (scripts/deploy registers it and stores its signing secret) and the poller polls each job only every webhook_poll_seconds, as the net for lost deliveries. false: polling only on every tick, no HTTP function, no registration."
  type        = bool
  default     = true
}

variable "webhook_poll_seconds" {
  description = "With webhooks on, seconds between two polls of one job (PROMPTDROP_WEBHOOK_POLL_SECONDS): the most a lost delivery delays a run."
  type        = number
  default     = 900

  validation {
    condition     = var.webhook_poll_seconds >= 60
    error_message = "webhook_poll_seconds must be at least 60 (the tick is every 2 minutes by default)."
  }
}

variable "webhook_secret_version" {
  description = "The version of the webhook signing secret the receiver reads, pinned like gemini_api_key_version (scripts/deploy passes the newest enabled one)."
  type        = string
  default     = null

  validation {
    condition     = var.webhook_secret_version == null || can(regex("^[1-9][0-9]*$", var.webhook_secret_version))
    error_message = "webhook_secret_version must be a version number such as \"3\", not an alias like \"latest\"."
  }
}

variable "alert_email" {
  description = "Where the alert policies (infra/monitoring.tf) send their notifications. Empty: only the log-based metrics are created (no channel, no policy, no dashboard)."
  type        = string
  default     = ""

  validation {
    condition     = var.alert_email == "" || can(regex("^[^@\\s]+@[^@\\s]+$", var.alert_email))
    error_message = "alert_email must be empty or one e-mail address."
  }
}

variable "alert_function_errors_per_minute" {
  description = "Alert when the functions log more ERROR lines than this per minute, averaged over 10 minutes."
  type        = number
  default     = 1
}
