# Copy to infra/terraform.tfvars (scripts/deploy writes a minimal one if it is missing) and adjust.
# Every setting is optional except project_id; the values shown are the defaults.

project_id = "my-project"
region     = "us-central1"

# name_prefix   = "promptdrop"            # prefix of every resource name
# bucket_name   = "my-project-promptdrop" # default: <project_id>-<name_prefix>
# inbox_prefix  = "inbox/"
# output_prefix = "outputs/"

# retention = {
#   scratch_days = 7    # crash leftovers under <output_prefix><run_id>/_work/, days after the run ended
#   outputs_days = null # e.g. 90 to delete outputs after three months
# }
# soft_delete_days = 7 # deleted objects (outputs and scratch alike) stay restorable and billed; 0 off, 7-90

# firestore = {
#   database = "(default)" # only one database per project gets Firestore's free tier
#   location = null        # default: region
# }

# functions = {
#   runtime = "python312"
#   file    = { memory = "1Gi", cpu = "1", max_instances = 10 }
#   message = { memory = "1Gi", cpu = "1", max_instances = 5 }
#   poller  = { memory = "2Gi", cpu = "1", max_instances = 3 }
#   webhook = { memory = "2Gi", cpu = "1", max_instances = 5 }
# }

# Gemini's batch webhooks finish runs as soon as their batch ends (docs/DEPLOY.md, "Webhooks"); false
# keeps polling only. With them on, each job is still polled every webhook_poll_seconds.
# webhooks             = true
# webhook_poll_seconds = 900

# PROMPTDROP_* settings for the functions (null keeps the code's default; see the README's table).
# settings = {
#   model        = "gemini-3-pro-image"   # a retired *-preview id runs on its GA id
#   retired_models = "aliases"            # "upgrade": successors too; "refuse": not even aliases
#   model_map    = "OLD-ID=NEW-ID"   # run lines of a deprecated model on its successor (README, Models)
#   tier         = 1                      # billing tier: each model's enqueued-token quota
#   priority     = 0
#   max_cost_usd = 25
#   max_attempts = 3
#   job_deadline = "36h"
# }

# tick_schedule                     = "*/2 * * * *"
# dead_letter_max_delivery_attempts = 100
