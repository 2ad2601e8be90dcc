terraform {
  # optional() defaults in object types need 1.3; startswith/endswith in validations need 1.3 too.
  required_version = ">= 1.3, < 2.0"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 6.10, < 8.0"
    }
    archive = {
      source  = "hashicorp/archive"
      version = ">= 2.5, < 3.0" # glob patterns in archive_file excludes
    }
  }
}

provider "google" {
  project = var.project_id
  region  = var.region

  default_labels = {
    app = var.name_prefix
  }
}
