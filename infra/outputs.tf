output "bucket" {
  description = "The data bucket."
  value       = google_storage_bucket.data.name
}

output "inbox_url" {
  description = "Drop prompt files here to start a run."
  value       = "gs://${google_storage_bucket.data.name}/${var.inbox_prefix}"
}

output "outputs_url" {
  description = "Each run writes its images, manifest.jsonl and summary.json under <outputs_url><run_id>/."
  value       = "gs://${google_storage_bucket.data.name}/${var.output_prefix}"
}

output "topics" {
  description = "Pub/Sub topics: requests (publish prompts), events (subscribe to run notifications), inbox notifications, tick, dead letters."
  value = {
    requests    = google_pubsub_topic.requests.id
    events      = google_pubsub_topic.events.id
    inbox       = google_pubsub_topic.inbox.id
    tick        = google_pubsub_topic.tick.id
    dead_letter = google_pubsub_topic.dead_letter.id
  }
}

output "dead_letter_subscription" {
  description = "Pull subscription that keeps file and request messages that failed every delivery."
  value       = google_pubsub_subscription.dead_letter.id
}

output "functions" {
  description = "The functions by role (file, message, poller, and webhook when webhooks are on): name and service URL."
  value = merge(
    {
      for role, function in google_cloudfunctions2_function.function : role => {
        name = function.name
        uri  = function.service_config[0].uri
      }
    },
    {
      for function in google_cloudfunctions2_function.webhook : "webhook" => {
        name = function.name
        uri  = function.service_config[0].uri
      }
    },
  )
}

output "webhook_url" {
  description = "The URL scripts/deploy registers with client.webhooks.create; empty when webhooks are off."
  value       = var.webhooks ? google_cloudfunctions2_function.webhook[0].service_config[0].uri : ""
}

output "webhook_secret" {
  description = "Secret Manager secret id that holds the webhook signing secret (scripts/deploy adds its versions); empty when webhooks are off."
  value       = var.webhooks ? google_secret_manager_secret.webhook_signing[0].secret_id : ""
}

output "webhook_secret_version" {
  description = "The version of the signing secret the receiver reads (scripts/deploy --rotate-webhook-secret adds and pins a new one)."
  value       = var.webhook_secret_version
}

output "gemini_api_key_secret" {
  description = "Secret Manager secret id that holds the Gemini API key (scripts/deploy adds its versions)."
  value       = one(google_secret_manager_secret.gemini_api_key[*].secret_id) # null with backend = vertex
}

output "firestore_database" {
  description = "The Firestore database of runs and jobs (PROMPTDROP_STORE)."
  value       = "firestore://${var.project_id}/${google_firestore_database.main.name}"
}

output "cli_environment" {
  description = "Environment for the promptdrop CLI to work against this deployment (status, cancel)."
  value       = { for name in ["PROMPTDROP_BUCKET", "PROMPTDROP_STORE", "PROMPTDROP_INBOX_PREFIX", "PROMPTDROP_OUTPUT_PREFIX"] : name => local.function_env[name] }
}

output "gemini_api_key_version" {
  description = "The version of the API key secret the functions read (scripts/deploy --rotate-key adds and pins a new one)."
  value       = var.gemini_api_key_version
}

output "region" {
  description = "Region of the functions (scripts/deploy --rotate-key checks their revisions there)."
  value       = var.region
}
