"""infra/ holds up over weeks: scratch expiry, the pinned API key, the build's reach, dead letters, memory.

Parsed with python-hcl2 like tests/unit/test_infra_consistency.py (providers cannot be downloaded in CI),
but with its own small loader so the two files can change independently.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import hcl2
import pytest
from hcl2.utils import SerializationOptions

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
BUILD_MEMBER = "${google_service_account.build.member}"
# Google's bounds for DeadLetterPolicy.max_delivery_attempts.
PUBSUB_MAX_DELIVERY_ATTEMPTS = 100
IAM_RESOURCES = (
    "google_project_iam_member",
    "google_project_iam_binding",
    "google_storage_bucket_iam_member",
    "google_storage_bucket_iam_binding",
)


@cache
def parsed() -> dict[str, dict[str, Any]]:
    """{"resource": {type: {name: body}}, "locals": {...}, "variable": {name: body}, "output": {...}}."""
    options = SerializationOptions(strip_string_quotes=True, explicit_blocks=False, with_comments=False)
    found: dict[str, dict[str, Any]] = {"resource": {}, "locals": {}, "variable": {}, "output": {}}
    for path in sorted(INFRA.glob("*.tf")):
        with path.open() as file:
            document = hcl2.load(file, serialization_options=options)
        for entry in document.get("resource", []):
            for kind, named in entry.items():
                found["resource"].setdefault(kind, {}).update(named)
        for section in ("locals", "variable", "output"):
            for entry in document.get(section, []):
                found[section].update(entry)
    return found


def resource(kind: str, name: str) -> dict[str, Any]:
    body: dict[str, Any] | None = parsed()["resource"].get(kind, {}).get(name)
    assert body is not None, f"infra/ declares no {kind}.{name}"
    return body


def one(body: dict[str, Any], name: str) -> dict[str, Any]:
    blocks = body.get(name) or []
    assert len(blocks) == 1, f"expected one {name} block, found {len(blocks)}"
    result: dict[str, Any] = blocks[0]
    return result


def variable(name: str) -> dict[str, Any]:
    body: dict[str, Any] = parsed()["variable"][name]
    return body


def build_grants() -> list[tuple[str, str, dict[str, Any]]]:
    """(kind, name, body) of every IAM grant to the build service account."""
    return [
        (kind, name, body)
        for kind in IAM_RESOURCES
        for name, body in parsed()["resource"].get(kind, {}).items()
        if body.get("member") == BUILD_MEMBER or BUILD_MEMBER in body.get("members", [])
    ]


# --- scratch lives as long as its run ------------------------------------------------------------------


def scratch_rule() -> dict[str, Any]:
    rules = [
        rule
        for rule in resource("google_storage_bucket", "data").get("lifecycle_rule", [])
        if one(rule, "condition").get("matches_suffix") == "${local.scratch_suffixes}"
    ]
    assert len(rules) == 1, "the data bucket needs exactly one rule for scratch objects"
    return rules[0]


def test_scratch_expires_days_after_its_run_ended_never_by_creation_age() -> None:
    """The scratch rule counts from customTime (stamped at the run's end), with no age condition."""
    condition = one(scratch_rule(), "condition")
    assert condition["days_since_custom_time"] == "${var.retention.scratch_days}"
    # Any other time condition would be ANDed in, and one counted from creation deletes live scratch.
    assert set(condition) == {"days_since_custom_time", "matches_prefix", "matches_suffix"}
    assert one(scratch_rule(), "action")["type"] == "Delete"


def test_scratch_retention_is_documented_as_counted_from_the_runs_end() -> None:
    """var.retention says scratch_days count from the run's end, and allows a single day."""
    retention = variable("retention")
    assert "customTime" in retention["description"]
    assert "scratch_days >= 1" in one(retention, "validation")["condition"]


# --- the API key: a pinned version ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "accepted"), [("1", True), ("42", True), ("latest", False), ("0", False)]
)
def test_the_key_version_variable_takes_a_number_never_an_alias(version: str, accepted: bool) -> None:
    """gemini_api_key_version is validated as a version number: `latest` is refused."""
    condition = one(variable("gemini_api_key_version"), "validation")["condition"]
    pattern = re.search(r'regex\("([^"]+)", var\.gemini_api_key_version\)', condition)
    assert pattern, condition
    assert "var.gemini_api_key_version == null ||" in condition
    assert bool(re.fullmatch(pattern.group(1), version)) is accepted


def test_functions_read_the_pinned_key_version_and_refuse_to_deploy_without_one() -> None:
    """Each function's GEMINI_API_KEY names var.gemini_api_key_version, and a precondition requires it (on
    the Gemini API: with backend = "vertex" the functions carry no key, test_infra_consistency.py)."""
    function = resource("google_cloudfunctions2_function", "function")
    (dynamic,) = [
        block["secret_environment_variables"]
        for block in one(function, "service_config").get("dynamic", [])
        if "secret_environment_variables" in block
    ]
    assert dynamic["for_each"] == '${each.value.api_key ? ["key"] : []}'
    secret = one(dynamic, "content")
    assert secret["key"] == "GEMINI_API_KEY"
    assert secret["version"] == "${var.gemini_api_key_version}"
    preconditions = one(function, "lifecycle")["precondition"]
    assert any(
        p["condition"] == "${local.vertex || var.gemini_api_key_version != null}" for p in preconditions
    )
    # scripts/deploy passes the version it pins: tests/unit/test_deploy_script.py.


# --- the build reads two buckets, never the data -------------------------------------------------------


def test_build_account_has_no_project_wide_object_rights() -> None:
    """Every storage role of the build account is read-only, and a project-level one carries a condition."""
    grants = build_grants()
    assert grants, "no grant to the build service account found"
    for kind, name, body in grants:
        roles = [body["role"]] if "role" in body else []
        roles += [body["for_each"]] if "for_each" in body else []
        for role in roles:
            assert "storage." not in role or role == "roles/storage.objectViewer", f"{kind}.{name}: {role}"
        if kind.startswith("google_project_") and "storage." in body.get("role", ""):
            assert body.get("condition"), f"{kind}.{name} grants objects of every bucket in the project"


def test_build_account_reads_the_source_and_staging_buckets_only() -> None:
    """Bucket grants name the source bucket; the conditioned project grant names Cloud Functions' staging bucket."""
    buckets = set()
    for kind, name, body in build_grants():
        if kind.startswith("google_storage_bucket_"):
            buckets.add(body["bucket"])
        elif "storage." in body.get("role", ""):
            expression = one(body, "condition")["expression"]
            named = set(re.findall(r"projects/_/buckets/([^/\"]+)", expression))
            assert named == {"${local.function_staging_bucket}"}, f"{kind}.{name}: {expression}"
            assert 'startsWith("projects/_/buckets/${local.function_staging_bucket}/objects/")' in expression
            buckets.add("${local.function_staging_bucket}")
    assert buckets == {"${google_storage_bucket.source.name}", "${local.function_staging_bucket}"}
    staging = parsed()["locals"]["function_staging_bucket"]
    assert staging == "gcf-v2-sources-${data.google_project.this.number}-${var.region}"


def test_functions_are_built_by_that_account() -> None:
    """The functions' builds run as the restricted account, not a default one."""
    function = resource("google_cloudfunctions2_function", "function")
    assert one(function, "build_config")["service_account"] == "${google_service_account.build.id}"


# --- dead letters ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["file", "message"])
def test_push_subscriptions_dead_letter_after_the_most_attempts_pubsub_allows(name: str) -> None:
    """Both push subscriptions use var.dead_letter_max_delivery_attempts, which defaults to 100."""
    policy = one(resource("google_pubsub_subscription", name), "dead_letter_policy")
    assert policy["max_delivery_attempts"] == "${var.dead_letter_max_delivery_attempts}"
    assert policy["dead_letter_topic"] == "${google_pubsub_topic.dead_letter.id}"
    assert variable("dead_letter_max_delivery_attempts")["default"] == PUBSUB_MAX_DELIVERY_ATTEMPTS


def test_dead_letters_are_kept_on_a_pull_subscription_for_the_replay_script() -> None:
    """A pull subscription on the dead-letter topic keeps them 7 days; an output names it."""
    subscription = resource("google_pubsub_subscription", "dead_letter")
    assert subscription["topic"] == "${google_pubsub_topic.dead_letter.id}"
    assert "push_config" not in subscription
    assert "dead_letter_policy" not in subscription, "a replayed dead letter must not be dead-lettered again"
    assert subscription["message_retention_duration"] == "604800s"
    assert one(subscription, "expiration_policy")["ttl"] == ""
    output = parsed()["output"]["dead_letter_subscription"]
    assert output["value"] == "${google_pubsub_subscription.dead_letter.id}"


# --- memory ----------------------------------------------------------------------------------------------


def test_the_poller_runs_with_two_malloc_arenas() -> None:
    """MALLOC_ARENA_MAX=2 is in the environment the poller (every function) gets."""
    function = resource("google_cloudfunctions2_function", "function")
    assert one(function, "service_config")["environment_variables"] == "${local.function_env}"
    assert "poller" in parsed()["locals"]["functions"]
    assert "local.fixed_env" in parsed()["locals"]["function_env"]
    assert parsed()["locals"]["fixed_env"]["MALLOC_ARENA_MAX"] == "2"
