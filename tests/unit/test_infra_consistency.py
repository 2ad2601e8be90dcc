"""The Terraform in infra/ agrees with the code it deploys.

Providers cannot be downloaded in CI, so instead of ``terraform validate`` this parses ``infra/*.tf`` with
python-hcl2 and checks what the functions rely on: entry points, environment variables, the event types
their triggers deliver, bucket prefixes, lifecycle rules and the Firestore indexes of the poller's queries.
"""

from __future__ import annotations

import ast
import inspect
import itertools
import re
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import flask
import hcl2
import pytest
from functions_framework import event_conversion
from hcl2.utils import SerializationOptions

from promptdrop.layout import RunLayout
from promptdrop.prompts import LineFormat
from promptdrop.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
MAIN_PY = ROOT / "functions" / "main.py"
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"

PUBSUB_EVENT = "google.cloud.pubsub.topic.v1.messagePublished"
FUNCTION = "google_cloudfunctions2_function"
# The google_cloudfunctions2_function resource of the CloudEvent functions, one instance per entry of
# local.functions, and the webhook receiver's (an HTTP function, one instance when var.webhooks is on).
FUNCTION_NAME = "function"
WEBHOOK = "webhook"
# Settings fields that Settings.from_env reads from other variables (GEMINI_API_KEY, K_SERVICE).
FIELDS_NOT_FROM_PREFIX = {"api_key", "in_cloud"}
# Variables for the runtime rather than for promptdrop (docs/DEPLOY.md, "What gets deployed").
RUNTIME_VARIABLES = {"MALLOC_ARENA_MAX"}
# What a reference to something only known after apply (a project number, a bucket name) resolves to.
UNKNOWN = "unknown"
_INTERPOLATION = re.compile(r"\$\{([^{}]+)\}")
# type.name["key"].attribute.path of a resource reference.
_RESOURCE_ATTRIBUTE = re.compile(r'(google_\w+)\.(\w+)(?:\["(\w+)"\])?((?:\.\w+|\[\d+\])+)')
# What `.id` of a resource is (template over project, and the body attribute that names it).
_IDENTITIES = {
    "google_pubsub_topic": ("projects/{}/topics/{}", "name"),
    "google_secret_manager_secret": ("projects/{}/secrets/{}", "secret_id"),
    "google_firestore_database": ("projects/{}/databases/{}", "name"),
}
# `var.x ? A : B` where A and B are strings or references: evaluated with the variable's default.
_CONDITION = re.compile(r'(var|local)\.(\w+)\s*\?\s*("[^"]*"|[\w.\[\]"]+)\s*:\s*("[^"]*"|[\w.\[\]"]+)')
_EACH_VALUE = re.compile(r"^\$\{each\.value\.(\w+)\}$")
# The only form of dynamic block for_each that expand() evaluates: one block when a boolean attribute of
# the instance's local.functions entry is true, none otherwise.
_FLAG_FOR_EACH = re.compile(r'^\$\{each\.value\.(\w+) \? \["\w+"\] : \[\]\}$')


@dataclass(frozen=True)
class Terraform:
    """The parts of infra/*.tf these checks read, with literal values resolved where they can be."""

    resources: dict[str, dict[str, dict[str, Any]]]  # type -> name -> body
    locals: dict[str, Any]
    variables: dict[str, dict[str, Any]]

    def resource(self, kind: str, name: str) -> dict[str, Any]:
        try:
            return self.resources[kind][name]
        except KeyError:
            pytest.fail(f"infra/ declares no {kind}.{name}")

    def with_variables(self, **defaults: Any) -> Terraform:
        """The same configuration as deployed with these variables set (``webhooks=False``)."""
        variables = {name: dict(body) for name, body in self.variables.items()}
        for name, value in defaults.items():
            assert name in variables, f"infra/ declares no variable {name}"
            variables[name]["default"] = value
        return Terraform(self.resources, self.locals, variables)

    def value(self, expression: Any) -> Any:
        """A whole-value reference (``${local.x}``) becomes the referenced value; strings are resolved."""
        if isinstance(expression, list):
            return [self.value(item) for item in expression]
        if not isinstance(expression, str):
            return expression
        whole = re.fullmatch(r"\$\{(var|local)\.(\w+)\}", expression)
        if whole:
            return self.value(self._lookup(*whole.groups()))
        return self.text(expression)

    def text(self, expression: str) -> str:
        """Resolve every ``${...}`` in a string (see ``reference``); what cannot be known becomes UNKNOWN."""
        while True:  # innermost first: a resolved value may itself be interpolated
            resolved = _INTERPOLATION.sub(lambda match: self.reference(match.group(1)), expression)
            if resolved == expression:
                return resolved
            expression = resolved

    def boolean(self, expression: Any) -> bool | None:
        """A boolean expression's value with the variables' defaults: ``true``/``false``, ``var.x``/``local.x``
        holding one, ``var.x == "literal"`` and ``!`` of those; None when it is not one of these forms."""
        if isinstance(expression, bool):
            return expression
        text = str(expression).strip()
        whole = re.fullmatch(r"\$\{(.*)\}", text, re.DOTALL)
        inner = (whole.group(1) if whole else text).strip()
        if inner.startswith("!"):
            negated = self.boolean(inner[1:])
            return None if negated is None else not negated
        compared = re.fullmatch(r'(var|local)\.(\w+)\s*==\s*"([^"]*)"', inner)
        if compared:
            kind, name, literal = compared.groups()
            return bool(self.value(f"${{{kind}.{name}}}") == literal)
        named = re.fullmatch(r"(var|local)\.(\w+)", inner)
        if named:
            return self.boolean(self._lookup(*named.groups()))
        return {"true": True, "false": False}.get(inner)

    def reference(self, inner: str) -> str:
        """What one interpolated expression stands for: ``var.x`` (its default), ``var.x.attribute`` (the
        object default or the type's ``optional(..., default)``), ``local.x``, ``tostring(...)``, and the
        attributes of resources this file declares (``.id`` of topics, secrets and databases as the API
        spells it, a function's ``service_config[0].uri`` as its name; others from the resource body)."""
        inner = inner.strip()
        condition = _CONDITION.fullmatch(inner)
        if condition:
            kind, name, when_true, when_false = condition.groups()
            chosen = when_true if self.boolean(f"{kind}.{name}") is True else when_false
            return chosen[1:-1] if chosen.startswith('"') else self.reference(chosen)
        if inner.isdigit():
            return inner
        call = re.fullmatch(r"tostring\((.+)\)", inner)
        if call:
            return self.reference(call.group(1))
        coalesce = re.fullmatch(r"coalesce\((.+)\)", inner)
        if coalesce:
            for argument in _split_arguments(coalesce.group(1)):
                if argument.startswith('"') and argument.endswith('"'):
                    return argument[1:-1]
                variable = re.fullmatch(r"(var|local)\.(\w+)", argument)
                if variable and self._lookup(*variable.groups()) is None:
                    continue  # null: coalesce takes the next argument
                return self.reference(argument)
            return UNKNOWN
        variable = re.fullmatch(r"(var|local)\.(\w+)(?:\.(\w+))?", inner)
        if variable:
            kind, name, attribute = variable.groups()
            value = self._lookup(kind, name)
            if attribute is not None:
                value = self._attribute(name, attribute, value)
            return self.text(str(value)) if value is not None else UNKNOWN
        resource = _RESOURCE_ATTRIBUTE.fullmatch(inner)
        if resource:
            return self._resource_attribute(*resource.groups())
        return UNKNOWN

    def targets(self, expression: Any) -> set[tuple[str, str]]:
        """The resources (type, name) an expression refers to."""
        return set(re.findall(r"\b(google_\w+)\.(\w+)\b", str(expression)))

    def map_keys(self, expression: Any) -> set[str]:
        """The keys a map can have: a map literal, a ``local.x`` map, ``merge(...)`` of maps, or a for
        expression over a map (``{for k, v in MAP : k => ... if ...}``: a subset of MAP's keys)."""
        if isinstance(expression, dict):
            return set(expression)
        text = str(expression).strip()
        whole = re.fullmatch(r"\$\{(.*)\}", text, re.DOTALL)
        inner = whole.group(1).strip() if whole else text
        local = re.fullmatch(r"local\.(\w+)", inner)
        if local:
            return self.map_keys(self.locals[local.group(1)])
        branch = r"(\{.*?\}|local\.\w+)"
        condition = re.fullmatch(rf"(var|local)\.(\w+)\s*\?\s*{branch}\s*:\s*{branch}", inner, re.DOTALL)
        if condition:
            kind, name, when_true, when_false = condition.groups()
            return self.map_keys(when_true if self.boolean(f"{kind}.{name}") is True else when_false)
        if re.fullmatch(r"\{\s*\}", inner):
            return set()
        literal = re.fullmatch(r"\{((?:\s*\w+\s*=\s*\"[^\"]*\"\s*,?)*)\s*\}", inner)
        if literal:
            return set(re.findall(r"(\w+)\s*=", literal.group(1)))
        merge = re.fullmatch(r"merge\((.*)\)", inner, re.DOTALL)
        if merge:
            return set().union(*(self.map_keys(argument) for argument in _split_arguments(merge.group(1))))
        loop = re.fullmatch(r"\{\s*for\s+\w+\s*,\s*\w+\s+in\s+(\S+)\s*:.*\}", inner, re.DOTALL)
        if loop:
            return self.map_keys(loop.group(1))
        pytest.fail(f"cannot tell the keys of the map {text}")

    def _attribute(self, variable: str, attribute: str, value: Any) -> Any:
        if isinstance(value, dict) and attribute in value:
            return value[attribute]
        declared = re.search(
            rf'\b{attribute}\s*=\s*optional\(\w+,\s*"([^"]*)"\)', self.variables[variable]["type"]
        )
        return declared.group(1) if declared else None

    def _resource_attribute(self, kind: str, name: str, key: str | None, path: str) -> str:
        if kind == FUNCTION and key is not None and path in (".service_config[0].uri", ".url"):
            return f"https://{self.text(function(key)['name'])}.{UNKNOWN}"
        if kind == FUNCTION and name == WEBHOOK and path in ("[0].service_config[0].uri", "[0].url"):
            return f"https://{self.text(self.resources[kind][name]['name'])}.{UNKNOWN}"
        body = self.resources.get(kind, {}).get(name)
        if body is None or key is not None:
            return UNKNOWN
        if path.startswith("[0]") and "count" in body:
            path = path.removeprefix("[0]")  # the one instance of a resource switched on by count
        identity = _IDENTITIES.get(kind)
        if identity is not None and path == ".id":
            template, field_name = identity
            return template.format(UNKNOWN, self.text(str(body[field_name])))
        attribute = path.removeprefix(".")
        if attribute in body and isinstance(body[attribute], str):
            return self.text(body[attribute])
        return UNKNOWN

    def _lookup(self, kind: str, name: str) -> Any:
        if kind == "local":
            return self.locals[name]
        return self.variables[name].get("default", f"${{{UNKNOWN}}}")


def _split_arguments(arguments: str) -> list[str]:
    """Top-level comma-separated arguments of a call (commas inside brackets stay)."""
    parts, depth, current = [], 0, ""
    for char in arguments:
        depth += char in "([{"
        depth -= char in ")]}"
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    return [*parts, current.strip()] if current.strip() else parts


def block(body: dict[str, Any], name: str) -> dict[str, Any]:
    """The one nested block ``name`` of a resource body."""
    blocks = body.get(name) or []
    assert len(blocks) == 1, f"expected exactly one {name} block, found {len(blocks)}"
    result: dict[str, Any] = blocks[0]
    return result


@cache
def terraform() -> Terraform:
    resources: dict[str, dict[str, dict[str, Any]]] = {}
    local_values: dict[str, Any] = {}
    variables: dict[str, dict[str, Any]] = {}
    options = SerializationOptions(strip_string_quotes=True, explicit_blocks=False, with_comments=False)
    for path in sorted(INFRA.glob("*.tf")):
        with path.open() as file:
            parsed = hcl2.load(file, serialization_options=options)
        for entry in parsed.get("resource", []):
            for kind, named in entry.items():
                resources.setdefault(kind, {}).update(named)
        for entry in parsed.get("locals", []):
            local_values.update(entry)
        for entry in parsed.get("variable", []):
            variables.update(entry)
    return Terraform(resources, local_values, variables)


def expand(body: Any, key: str, value: dict[str, Any]) -> Any:
    """One instance of a ``for_each`` resource body: ``${each.value.x}`` becomes the entry's value,
    ``each.key`` the key, and dynamic blocks become the static blocks they generate."""
    if isinstance(body, list):
        return [expand(item, key, value) for item in body]
    if isinstance(body, str):
        whole = _EACH_VALUE.fullmatch(body)
        if whole:
            assert whole.group(1) in value, f"local.functions.{key} has no {whole.group(1)}"
            return value[whole.group(1)]
        return body.replace("[each.key]", f'["{key}"]').replace("${each.key}", key)
    if not isinstance(body, dict):
        return body
    result = {name: expand(item, key, value) for name, item in body.items() if name != "dynamic"}
    for dynamic in body.get("dynamic", []):
        for name, generator in dynamic.items():
            flag = _FLAG_FOR_EACH.fullmatch(generator["for_each"])
            assert flag, f"cannot evaluate the for_each of dynamic {name}: {generator['for_each']}"
            enabled = value.get(flag.group(1))
            assert isinstance(enabled, bool), f"local.functions.{key}.{flag.group(1)} must be true or false"
            if enabled:
                result[name] = result.get(name, []) + expand(generator["content"], key, value)
    return result


@cache
def functions() -> dict[str, dict[str, Any]]:
    """The deployed functions by key of local.functions, each as its own resource body."""
    return functions_of(terraform())


def functions_of(tf: Terraform) -> dict[str, dict[str, Any]]:
    """``functions()`` as deployed with ``tf``'s variables (``terraform().with_variables(...)``)."""
    declared = tf.resources.get(FUNCTION, {})
    assert sorted(declared) == sorted([FUNCTION_NAME, WEBHOOK]), (
        f"infra/ must declare {FUNCTION}.{FUNCTION_NAME} (for_each) and {FUNCTION}.{WEBHOOK} (count)"
    )
    body = declared[FUNCTION_NAME]
    assert body["for_each"] == "${local.functions}"
    table = tf.locals["functions"]
    # Boolean entries (a flag computed from the variables) are evaluated before the dynamic blocks are.
    return {
        key: expand(body, key, {name: _flag(tf, item) for name, item in value.items()})
        for key, value in table.items()
    }


def _flag(tf: Terraform, item: Any) -> Any:
    evaluated = tf.boolean(item) if isinstance(item, str) and "==" in item else None
    return item if evaluated is None else evaluated


def function(name: str) -> dict[str, Any]:
    try:
        return functions()[name]
    except KeyError:
        pytest.fail(f"local.functions has no {name}: {FUNCTION}.{FUNCTION_NAME} deploys no such function")


def entry_point(function: dict[str, Any]) -> str:
    return str(block(function, "build_config")["entry_point"])


def main_source() -> str:
    if not MAIN_PY.exists():
        pytest.fail(f"{MAIN_PY.relative_to(ROOT)} is missing: Terraform deploys its entry points")
    return MAIN_PY.read_text()


def cloud_event_handlers(source: str) -> dict[str, ast.FunctionDef]:
    """Top-level functions of main.py decorated with ``functions_framework.cloud_event``."""
    return {
        node.name: node
        for node in ast.parse(source).body
        if isinstance(node, ast.FunctionDef)
        and any(
            ast.unparse(d) in {"functions_framework.cloud_event", "cloud_event"} for d in node.decorator_list
        )
    }


def module_assignments(tree: ast.Module) -> dict[str, ast.expr]:
    """Values assigned to top-level names (``NAME = ...`` or ``NAME: Final = ...``)."""
    values = {}
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            values[node.target.id] = node.value
        elif (
            isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
        ):
            values[node.targets[0].id] = node.value
    return values


def accepted_event_types(handler: str) -> frozenset[str]:
    """``main.ACCEPTED_EVENT_TYPES[handler]``, read from the source without importing main.py."""
    assigned = module_assignments(ast.parse(main_source()))
    table = assigned.get("ACCEPTED_EVENT_TYPES")
    if not isinstance(table, ast.Dict):
        pytest.fail(
            "functions/main.py must define ACCEPTED_EVENT_TYPES as a dict literal: "
            "entry point -> frozenset({...}) of the CloudEvent types it accepts"
        )

    def string(node: ast.expr) -> str:
        if isinstance(node, ast.Name):
            node = assigned[node.id]  # a module-level constant such as PUBSUB_PUBLISHED
        assert isinstance(node, ast.Constant) and isinstance(node.value, str), ast.unparse(node)
        return node.value

    for key, value in zip(table.keys, table.values, strict=True):
        if isinstance(key, ast.Constant) and key.value == handler:
            assert isinstance(value, ast.Call) and isinstance(value.args[0], ast.Set), ast.unparse(value)
            return frozenset(string(item) for item in value.args[0].elts)
    pytest.fail(f"main.ACCEPTED_EVENT_TYPES has no entry for {handler}")


def topic_id(expression: str) -> str:
    """The topic an expression names, as its full id (a topic may be given by name or by id)."""
    resolved = terraform().text(expression)
    return resolved if resolved.startswith("projects/") else f"projects/{UNKNOWN}/topics/{resolved}"


def seconds(duration: str) -> float:
    """A protobuf Duration string ("10s", "0.5s") in seconds."""
    found = re.fullmatch(r"(\d+(?:\.\d+)?)s", duration)
    assert found, f"not a duration: {duration!r}"
    return float(found.group(1))


def function_env(tf: Terraform | None = None) -> dict[str, str]:
    """Resolved environment of the functions with every optional setting left at its default (null)."""
    tf = tf or terraform()
    fixed = {**tf.locals["fixed_env"], **tf.locals["webhook_env"]}
    return {name: tf.text(value) for name, value in fixed.items()}


def env_names() -> set[str]:
    tf = terraform()
    return set(tf.locals["fixed_env"]) | set(tf.locals["webhook_env"]) | set(tf.locals["tunable_env"])


def readable_env_names() -> set[str]:
    fields = set(Settings.model_fields)
    assert fields >= FIELDS_NOT_FROM_PREFIX, "a field read from another variable was renamed"
    return {ENV_PREFIX + name.upper() for name in fields - FIELDS_NOT_FROM_PREFIX} | {"GEMINI_API_KEY"}


# --- entry points --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["file", "message", "poller", "now"])
def test_each_function_runs_a_cloud_event_handler_of_main_py(name: str) -> None:
    """Every deployed entry point is a top-level CloudEvent function of main.py taking one event."""
    handler_name = entry_point(function(name))
    handlers = cloud_event_handlers(main_source())
    assert handler_name in handlers, f"main.py has no @functions_framework.cloud_event def {handler_name}"
    arguments = handlers[handler_name].args
    positional = arguments.posonlyargs + arguments.args
    required_keywords = [
        a.arg
        for a, default in zip(arguments.kwonlyargs, arguments.kw_defaults, strict=True)
        if default is None
    ]
    assert len(positional) == 1 and arguments.vararg is None and not required_keywords, (
        f"{handler_name} must take exactly one positional parameter (the CloudEvent)"
    )


def test_every_cloud_event_handler_of_main_py_is_deployed() -> None:
    """main.py has no handler that Terraform forgot, and Terraform deploys each handler once."""
    deployed = [entry_point(body) for body in functions().values()]
    assert sorted(deployed) == sorted(set(deployed))
    assert set(deployed) == set(cloud_event_handlers(main_source()))


# --- environment ---------------------------------------------------------------------------------------


def test_functions_get_the_shared_environment_and_the_key_from_secret_manager() -> None:
    """Each function gets every fixed and tunable variable, and GEMINI_API_KEY as the latest version of the
    secret Terraform creates (which its service account may read), never as a plain variable."""
    tf = terraform()
    assert "GEMINI_API_KEY" not in env_names()
    key_secret = tf.resource("google_secret_manager_secret", "gemini_api_key")
    secret_id = tf.text(key_secret["secret_id"])
    for name, deployed in functions().items():
        service = block(deployed, "service_config")
        assert tf.map_keys(service["environment_variables"]) == env_names(), name
        secret = block(service, "secret_environment_variables")
        assert secret["key"] == "GEMINI_API_KEY", name
        # The field takes the secret's short id (a full resource path names another project's secret).
        assert tf.text(secret["secret"]) == secret_id, name
        assert tf.text(secret["project_id"]) == tf.text("${var.project_id}"), name
        # A pinned version that scripts/deploy passes (`latest` would be read once per instance and kept).
        assert re.findall(r"\bvar\.(\w+)", str(secret["version"])) == ["gemini_api_key_version"], name
    grant = tf.resource("google_secret_manager_secret_iam_member", "function_reads_key")
    assert tf.text(grant["secret_id"]) in {secret_id, f"projects/{UNKNOWN}/secrets/{secret_id}"}
    assert grant["role"] == "roles/secretmanager.secretAccessor"
    assert "local.function_identities" in grant["for_each"] and "each.key" in grant["member"]
    assert tf.map_keys(grant["for_each"]) >= set(functions())


def test_terraform_sets_only_variables_the_settings_read() -> None:
    """Every variable Terraform sets is PROMPTDROP_<field> of a Settings field (or the API key, or for the runtime)."""
    unread = env_names() - readable_env_names() - RUNTIME_VARIABLES
    assert not unread, f"Terraform sets variables promptdrop.settings does not read: {sorted(unread)}"


def test_optional_settings_map_one_to_one_onto_settings_fields() -> None:
    """Each attribute of var.settings feeds PROMPTDROP_<ATTRIBUTE>, and each such variable has one."""
    tf = terraform()
    attributes = set(re.findall(r"(\w+)\s*=\s*optional\(", tf.variables["settings"]["type"]))
    tunables = tf.locals["tunable_env"]
    assert {ENV_PREFIX + attribute.upper() for attribute in attributes} == set(tunables)
    for variable, expression in tunables.items():
        fed_by = re.findall(r"\bvar\.settings\.(\w+)\b", str(expression))
        assert fed_by == [variable.removeprefix(ENV_PREFIX).lower()], variable


def test_the_environment_passes_the_cloud_readiness_check() -> None:
    """Terraform's environment (plus the secret and K_SERVICE) satisfies Settings.require_cloud_ready."""
    env = function_env() | {"GEMINI_API_KEY": "test-key", "K_SERVICE": "promptdrop-poll-jobs"}
    settings = Settings.from_env(env)
    settings.require_cloud_ready()
    assert settings.in_cloud and settings.log_format == "json"
    assert settings.events_topic == f"projects/{UNKNOWN}/topics/promptdrop-events"


def test_harvest_stops_and_leases_outlive_the_function_timeout() -> None:
    """The harvest budget ends before the timeout, a lease outlives it, and Pub/Sub waits for it."""
    tf = terraform()
    timeout = tf.locals["function_timeout_seconds"]
    settings = Settings.from_env(function_env())
    assert settings.harvest_time_budget < timeout < settings.lease_seconds
    for name, deployed in functions().items():
        assert tf.value(block(deployed, "service_config")["timeout_seconds"]) == timeout, name
    for name in ("file", "message", "now"):
        assert tf.resource("google_pubsub_subscription", name)["ack_deadline_seconds"] > timeout


# --- triggers ------------------------------------------------------------------------------------------


def test_scheduler_ticks_reach_the_poller_without_retries() -> None:
    """The scheduler publishes to the tick topic, whose Eventarc trigger the poller accepts, never retried."""
    tf = terraform()
    poller = function("poller")
    trigger = block(poller, "event_trigger")
    assert trigger["event_type"] in accepted_event_types(entry_point(poller))
    job = tf.resource("google_cloud_scheduler_job", "tick")
    tick_topic = topic_id(block(job, "pubsub_target")["topic_name"])
    assert topic_id(trigger["pubsub_topic"]) == tick_topic
    # Only the tick: no file, request or run event reaches the poller through its trigger.
    others = {
        topic_id(tf.resource("google_pubsub_subscription", name)["topic"])
        for name in ("file", "message", "now")
    }
    assert tick_topic not in others | {function_env()["PROMPTDROP_EVENTS_TOPIC"]}
    assert trigger["retry_policy"] == "RETRY_POLICY_DO_NOT_RETRY"
    assert tf.value(block(job, "retry_config")["retry_count"]) == 0


@pytest.mark.parametrize(("name", "topic"), [("file", "inbox"), ("message", "requests"), ("now", "now")])
def test_file_and_request_paths_are_pushed_with_a_dead_letter_topic(name: str, topic: str) -> None:
    """An explicit push subscription (not Eventarc) feeds the function, retried, then dead-lettered."""
    tf = terraform()
    deployed = function(name)
    assert "event_trigger" not in deployed, f"{name} would get each message twice"
    subscription = tf.resource("google_pubsub_subscription", name)
    topic_path = topic_id(f"${{google_pubsub_topic.{topic}.id}}")
    assert topic_id(subscription["topic"]) == topic_path
    push = block(subscription, "push_config")
    uri = f"https://{tf.text(deployed['name'])}.{UNKNOWN}"  # the function's own URL
    assert tf.text(push["push_endpoint"]) == f"{uri}/{topic_path}"
    assert tf.text(block(push, "oidc_token")["audience"]) == uri
    dead_letter = topic_id(block(subscription, "dead_letter_policy")["dead_letter_topic"])
    assert dead_letter == topic_id("${google_pubsub_topic.dead_letter.id}") != topic_path
    # Something keeps what reaches the dead-letter topic (a topic without a subscription drops it).
    kept = {topic_id(body["topic"]) for body in tf.resources["google_pubsub_subscription"].values()}
    assert dead_letter in kept
    retry = block(subscription, "retry_policy")
    assert 0 < seconds(retry["minimum_backoff"]) <= seconds(retry["maximum_backoff"])
    assert block(subscription, "expiration_policy")["ttl"] == "", "an idle subscription must never expire"

    # What functions-framework makes of a raw push to that endpoint is what the handler must accept.
    topic_id_ = topic_path
    body = {
        "message": {
            "data": "e30=",
            "messageId": "17",
            "publishTime": "2025-01-01T00:00:00Z",
            "attributes": {},
        },
        "subscription": f"projects/{UNKNOWN}/subscriptions/{tf.text(subscription['name'])}",
    }
    with flask.Flask(__name__).test_request_context(f"/{topic_id_}", method="POST", json=body):
        event = event_conversion.background_event_to_cloud_event(flask.request)
    assert event["type"] == PUBSUB_EVENT
    assert event["source"] == f"//pubsub.googleapis.com/{topic_id_}"
    assert event.data["message"]["data"] == "e30="
    assert PUBSUB_EVENT in accepted_event_types(entry_point(deployed))


def test_now_chunks_are_published_to_the_topic_the_now_function_is_pushed_from() -> None:
    """PROMPTDROP_NOW_TOPIC (where chunks are handed over) is the topic of on_now_chunk's push subscription,
    every function (the webhook receiver too: it advances runs) may publish there, and the dead-letter service
    agent may move its dead letters."""
    tf = terraform()
    now_topic = function_env()["PROMPTDROP_NOW_TOPIC"]
    assert topic_id(tf.resource("google_pubsub_subscription", "now")["topic"]) == now_topic
    assert Settings.from_env(function_env()).now_topic == now_topic
    grant = tf.resource("google_pubsub_topic_iam_member", "function_publishes_now_chunks")
    assert topic_id(grant["topic"]) == now_topic and grant["role"] == "roles/pubsub.publisher"
    assert grant["for_each"] == "${local.function_identities}" and "each.key" in grant["member"]
    forwards = tf.resource("google_pubsub_subscription_iam_member", "pubsub_forwards_dead_letters")
    assert "google_pubsub_subscription.now.id" in str(forwards["for_each"])


def test_bucket_notifies_finalized_objects_under_the_inbox_prefix_only() -> None:
    """The notification feeds the file function's topic, finalize events only, filtered to the inbox."""
    tf = terraform()
    notification = tf.resource("google_storage_notification", "inbox")
    # The bucket the functions read and write (the data bucket, not the source-code bucket).
    assert f"gs://{tf.text(notification['bucket'])}" == function_env()["PROMPTDROP_BUCKET"]
    assert tf.targets(notification["bucket"]) == {("google_storage_bucket", "data")}
    assert topic_id(notification["topic"]) == topic_id(
        tf.resource("google_pubsub_subscription", "file")["topic"]
    )
    assert notification["event_types"] == ["OBJECT_FINALIZE"]
    assert notification["payload_format"] == "JSON_API_V1"
    assert tf.text(notification["object_name_prefix"]) == function_env()["PROMPTDROP_INBOX_PREFIX"]


# --- bucket layout -------------------------------------------------------------------------------------


def test_prefix_defaults_agree_with_the_settings_defaults() -> None:
    """Terraform's default inbox and output prefixes are the code's, and they do not overlap."""
    env = function_env()
    defaults = Settings()
    assert env["PROMPTDROP_INBOX_PREFIX"] == defaults.inbox_prefix
    assert env["PROMPTDROP_OUTPUT_PREFIX"] == defaults.output_prefix
    settings = Settings.from_env(env)  # refuses overlapping prefixes
    assert (settings.inbox_prefix, settings.output_prefix) == (defaults.inbox_prefix, defaults.output_prefix)


def soft_delete_seconds(tf: Terraform) -> int:
    """The data bucket's soft delete retention as deployed with ``tf``'s variables (``var.x * 86400``)."""
    policy = block(tf.resource("google_storage_bucket", "data"), "soft_delete_policy")
    expression = re.fullmatch(r"\$\{var\.(\w+) \* 86400\}", str(policy["retention_duration_seconds"]))
    assert expression is not None, policy
    return int(tf.value(f"${{var.{expression.group(1)}}}")) * 86400


def test_backend_vertex_keeps_soft_delete_on_the_data_bucket_at_the_shortest_retention() -> None:
    """Prediction files (Vertex AI) and results copies (Gemini API) are large scratch, deleted when the run
    ends; soft delete keeps a deleted object billed for its retention. The data bucket sets its policy itself
    (not the project's or organization's default, which may be up to 90 days) to 7 days, the shortest
    non-zero Cloud Storage allows, with backend = "vertex" as with the default; 0 turns it off."""
    tf = terraform()
    vertex = tf.with_variables(backend="vertex", webhooks=False)
    assert soft_delete_seconds(vertex) == soft_delete_seconds(tf) == 7 * 86400
    assert soft_delete_seconds(vertex.with_variables(soft_delete_days=0)) == 0
    # The variable refuses what Cloud Storage refuses: between 0 (off) and 7 days, over 90, fractions.
    (validation,) = tf.variables["soft_delete_days"]["validation"]
    condition = str(validation["condition"])
    for bound in ("var.soft_delete_days == 0", "var.soft_delete_days >= 7", "var.soft_delete_days <= 90"):
        assert bound in condition
    source_bucket = tf.resource("google_storage_bucket", "source")
    assert "soft_delete_policy" not in source_bucket  # archives: never deleted but by their lifecycle rule


def lifecycle_rules(bucket: dict[str, Any], *, optional: bool) -> list[dict[str, Any]]:
    """The bucket's fixed lifecycle rules, or the ones a dynamic block adds when configured."""
    if not optional:
        return list(bucket.get("lifecycle_rule", []))
    rules = []
    for dynamic in bucket.get("dynamic", []):
        rules += [block(dynamic["lifecycle_rule"], "content")] if "lifecycle_rule" in dynamic else []
    return rules


def deletes(rule: dict[str, Any], name: str) -> bool:
    condition = block(rule, "condition")
    prefixes = terraform().value(condition.get("matches_prefix", [""]))
    suffixes = terraform().value(condition.get("matches_suffix", [""]))
    return any(name.startswith(p) for p in prefixes) and any(name.endswith(s) for s in suffixes)


SAMPLE_ARGUMENTS: dict[str, list[Any]] = {
    "fmt": list(typing.get_args(LineFormat)),
    "job_id": ["poster-1a2b3c4d-a1-c0", "poster-1a2b3c4d-a12-c3"],
    "part": [0, 7, 999_999],
    "block": [0, 12, 999_999],
    "attempt": [2, 3, 999],
    "key": ["cat", "line-12", "shots/9"],
    "extension": ["png", "jpg", "webp"],
}


def layout_object_names(layout: RunLayout) -> Iterator[str]:
    """Every object name RunLayout can produce (properties, and methods called with sample arguments)."""
    for attribute, member in inspect.getmembers(RunLayout):
        if attribute.startswith("_") or attribute.endswith(("_prefix", "folder")):
            continue  # prefixes and folders are not object names
        if isinstance(member, property):
            values = [getattr(layout, attribute)]
        elif inspect.isfunction(member):
            parameters = list(inspect.signature(member).parameters)[1:]
            missing = [p for p in parameters if p not in SAMPLE_ARGUMENTS]
            assert not missing, f"add sample values for RunLayout.{attribute}({', '.join(missing)})"
            samples = itertools.product(*(SAMPLE_ARGUMENTS[p] for p in parameters))
            values = [member(layout, *sample) for sample in samples]
        else:
            continue
        yield from (value for value in values if not value.endswith("/"))


def test_lifecycle_rule_deletes_every_scratch_object_and_no_output() -> None:
    """The fixed rule matches every name under a run's _work/ folder and nothing else the code writes."""
    tf = terraform()
    bucket = tf.resource("google_storage_bucket", "data")
    rules = lifecycle_rules(bucket, optional=False)
    settings = Settings.from_env(function_env())
    layout = RunLayout.of(settings.output_prefix, "poster-1a2b3c4d")
    names = sorted(set(layout_object_names(layout)))
    scratch = [name for name in names if name.startswith(layout.work)]
    assert scratch and len(scratch) < len(names)
    wrong = [name for name in names if any(deletes(r, name) for r in rules) != name.startswith(layout.work)]
    assert not wrong, f"the lifecycle rule deletes outputs or misses scratch: {wrong}"
    assert not any(deletes(r, settings.inbox_prefix + "poster.jsonl") for r in rules)


@pytest.mark.parametrize("optional", [False, True], ids=["fixed", "optional"])
def test_lifecycle_rules_stay_under_the_output_prefix(optional: bool) -> None:
    """Every lifecycle rule of the data bucket is limited to the output prefix, never the inbox."""
    bucket = terraform().resource("google_storage_bucket", "data")
    rules = lifecycle_rules(bucket, optional=optional)
    assert rules
    output_prefix = function_env()["PROMPTDROP_OUTPUT_PREFIX"]
    for rule in rules:
        assert terraform().value(block(rule, "condition")["matches_prefix"]) == [output_prefix]


# --- Firestore -----------------------------------------------------------------------------------------


def required_indexes() -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    """The composite indexes the Firestore store's queries need, as the store itself declares them."""
    from promptdrop.adapters.firestore_store import REQUIRED_INDEXES

    assert REQUIRED_INDEXES, "the Firestore store declares no composite index"
    return {
        (collection, tuple((field, "ASCENDING") for field in fields))
        for collection, fields in REQUIRED_INDEXES
    }


def test_required_indexes_match_the_documented_queries() -> None:
    """docs/ARCHITECTURE.md states the same composite indexes the code declares."""
    found = re.findall(r"`(\w+) where [^`]*` \(composite index `([^`]+)`\)", ARCHITECTURE.read_text())
    direction = {"ASC": "ASCENDING", "DESC": "DESCENDING"}
    documented = {
        (collection, tuple((f.split()[0], direction[f.split()[1]]) for f in fields.split(", ")))
        for collection, fields in found
    }
    assert documented == required_indexes()


def test_firestore_indexes_cover_the_pollers_queries() -> None:
    """Terraform creates each composite index the poller's queries need, in the database the code uses."""
    tf = terraform()
    store = tf.locals["fixed_env"]["PROMPTDROP_STORE"]
    assert tf.targets(store) == {("google_firestore_database", "main")}
    database = tf.text("${google_firestore_database.main.name}")
    assert function_env()["PROMPTDROP_STORE"] == f"firestore://{tf.text('${var.project_id}')}/{database}"
    declared = set()
    for name, index in tf.resources.get("google_firestore_index", {}).items():
        assert tf.targets(index["database"]) == {("google_firestore_database", "main")}, name
        assert tf.text(index["database"]) == database, name
        assert index["query_scope"] == "COLLECTION", name
        declared.add((index["collection"], tuple((f["field_path"], f["order"]) for f in index["fields"])))
    missing = required_indexes() - declared
    assert not missing, f"infra/ lacks composite indexes: {sorted(missing)}"


# --- webhooks ------------------------------------------------------------------------------------------

WEBHOOK_ENTRY_POINT = "on_batch_webhook"
# Every resource that exists only for the webhook receiver: none of them when var.webhooks is false.
WEBHOOK_RESOURCES = [
    (FUNCTION, WEBHOOK),
    ("google_cloud_run_v2_service_iam_member", "webhook_public"),
    ("google_secret_manager_secret", "webhook_signing"),
    ("google_secret_manager_secret_iam_member", "webhook_reads_signing_secret"),
]


def webhook_function() -> dict[str, Any]:
    return terraform().resource(FUNCTION, WEBHOOK)


def http_handlers(source: str) -> set[str]:
    """Top-level functions of main.py decorated with ``functions_framework.http``."""
    return {
        node.name
        for node in ast.parse(source).body
        if isinstance(node, ast.FunctionDef)
        and any(ast.unparse(d) in {"functions_framework.http", "http"} for d in node.decorator_list)
    }


def grants_to(identity: str, tf: Terraform) -> list[tuple[str, str, dict[str, Any]]]:
    """Every IAM grant whose member is google_service_account.function[identity]: (kind, name, body)."""
    found = []
    for kind, named in tf.resources.items():
        if not kind.endswith("_iam_member"):
            continue
        for name, body in named.items():
            member = str(body.get("member", ""))
            if "google_service_account.function[each.key]" in member:
                if identity in tf.map_keys(body["for_each"]):
                    found.append((kind, name, body))
            elif f'google_service_account.function["{identity}"]' in member:
                found.append((kind, name, body))
    return found


def test_webhook_receiver_is_built_from_the_same_archive_as_the_other_functions() -> None:
    """Same source object, runtime, build account and image repository; its own entry point."""
    webhook = block(webhook_function(), "build_config")
    poller = block(function("poller"), "build_config")
    assert webhook["entry_point"] == WEBHOOK_ENTRY_POINT
    for field in ("runtime", "service_account", "docker_repository", "source"):
        assert webhook[field] == poller[field], field


def test_webhook_entry_point_is_an_http_function_of_main_py() -> None:
    """Terraform's entry point is a top-level @functions_framework.http function of main.py."""
    assert WEBHOOK_ENTRY_POINT in http_handlers(main_source())


def test_webhook_receiver_gets_the_environment_and_both_secrets_pinned() -> None:
    """The shared environment, GEMINI_API_KEY and PROMPTDROP_WEBHOOK_SECRET from Secret Manager at pinned
    versions that scripts/deploy passes; both are variables promptdrop.settings reads."""
    tf = terraform()
    service = block(webhook_function(), "service_config")
    assert tf.map_keys(service["environment_variables"]) == env_names()
    assert "PROMPTDROP_WEBHOOK_SECRET" not in env_names(), "the signing secret must never be a plain variable"
    secrets = {secret["key"]: secret for secret in service["secret_environment_variables"]}
    # First, as in every function: scripts/deploy --rotate-key checks secretEnvironmentVariables[0].
    assert service["secret_environment_variables"][0]["key"] == "GEMINI_API_KEY"
    assert set(secrets) == {"GEMINI_API_KEY", "PROMPTDROP_WEBHOOK_SECRET"}
    assert set(secrets) <= readable_env_names()
    expected = {
        "GEMINI_API_KEY": ("gemini_api_key", "gemini_api_key_version"),
        "PROMPTDROP_WEBHOOK_SECRET": ("webhook_signing", "webhook_secret_version"),
    }
    for key, (secret_resource, version_variable) in expected.items():
        secret = secrets[key]
        body = tf.resource("google_secret_manager_secret", secret_resource)
        assert tf.text(secret["secret"]) == tf.text(body["secret_id"]), key
        assert tf.text(secret["project_id"]) == tf.text("${var.project_id}"), key
        assert re.findall(r"\bvar\.(\w+)", str(secret["version"])) == [version_variable], key
    conditions = {p["condition"] for p in block(webhook_function(), "lifecycle")["precondition"]}
    assert conditions == {"${var.gemini_api_key_version != null}", "${var.webhook_secret_version != null}"}
    # The same timeout as the others: the harvest budget and the lease are sized against it.
    assert tf.value(service["timeout_seconds"]) == tf.locals["function_timeout_seconds"]


def test_webhook_secret_version_variable_takes_a_number_never_an_alias() -> None:
    """Same rule as the key's version: `latest` would be read once per instance and kept."""
    variable = terraform().variables["webhook_secret_version"]
    assert variable["default"] is None
    assert variable["validation"][0]["condition"] == (
        '${var.webhook_secret_version == null || can(regex("^[1-9][0-9]*$", var.webhook_secret_version))}'
    )


def test_webhooks_on_by_default_tell_every_function_and_the_poller_backs_off() -> None:
    """By default every function (the poller included) reads PROMPTDROP_WEBHOOKS=on and the poll interval."""
    tf = terraform()
    assert tf.variables["webhooks"]["default"] is True
    settings = Settings.from_env(function_env())
    assert settings.webhooks_on
    assert settings.webhook_poll_seconds == tf.variables["webhook_poll_seconds"]["default"]
    for name, deployed in functions().items():
        assert block(deployed, "service_config")["environment_variables"] == "${local.function_env}", name


def test_webhooks_off_is_todays_polling_only_deployment() -> None:
    """webhooks = false: every webhook resource has count 0, the functions read PROMPTDROP_WEBHOOKS=off,
    no webhook identity is made, and the outputs scripts/deploy reads are empty (so it registers nothing)."""
    tf = terraform()
    off = tf.with_variables(webhooks=False)
    for kind, name in WEBHOOK_RESOURCES:
        assert tf.resource(kind, name)["count"] == "${var.webhooks ? 1 : 0}", (kind, name)
    assert not Settings.from_env(function_env(off)).webhooks_on
    assert tf.map_keys("${local.function_identities}") == set(functions()) | {WEBHOOK}
    assert off.map_keys("${local.function_identities}") == set(functions())
    outputs: dict[str, Any] = {}
    with (INFRA / "outputs.tf").open() as file:
        options = SerializationOptions(strip_string_quotes=True, explicit_blocks=False, with_comments=False)
        for entry in hcl2.load(file, serialization_options=options)["output"]:
            outputs.update(entry)
    url = outputs["webhook_url"]["value"]
    assert url == '${var.webhooks ? google_cloudfunctions2_function.webhook[0].service_config[0].uri : ""}'
    assert off.text(url) == "" and tf.text(url) == f"https://{tf.text(webhook_function()['name'])}.{UNKNOWN}"
    secret = outputs["webhook_secret"]["value"]
    assert off.text(secret) == ""
    assert tf.text(secret) == tf.text(
        tf.resource("google_secret_manager_secret", "webhook_signing")["secret_id"]
    )


def test_only_the_webhook_receiver_is_public_and_its_checkov_skip_says_why() -> None:
    """The receiver admits the internet (Gemini calls from outside); the other functions stay internal."""
    tf = terraform()
    assert block(webhook_function(), "service_config")["ingress_settings"] == "ALLOW_ALL"
    for name, deployed in functions().items():
        assert block(deployed, "service_config")["ingress_settings"] == "ALLOW_INTERNAL_ONLY", name
    public = [
        (kind, name)
        for kind, named in tf.resources.items()
        for name, body in named.items()
        if kind.endswith("_iam_member") and body.get("member") in {"allUsers", "allAuthenticatedUsers"}
    ]
    assert public == [("google_cloud_run_v2_service_iam_member", "webhook_public")]
    invoker = tf.resource("google_cloud_run_v2_service_iam_member", "webhook_public")
    # allUsers: Gemini's deliveries carry no Google token, so even allAuthenticatedUsers would refuse them.
    assert (invoker["role"], invoker["member"]) == ("roles/run.invoker", "allUsers")
    assert invoker["name"] == "${google_cloudfunctions2_function.webhook[0].service_config[0].service}"
    source = (INFRA / "main.tf").read_text()
    body = source[source.index(f'resource "{FUNCTION}" "{WEBHOOK}"') :]
    skip = re.search(r"#\s*checkov:skip=CKV_GCP_124:\s*(.+)", body[: body.index("\n}\n")])
    assert skip and "signature" in skip.group(1), "the public ingress needs its checkov skip, justified"


def test_webhook_identity_has_least_privilege() -> None:
    """Its own service account: objects of the data bucket, this Firestore database, the events topic,
    and the two secrets; nothing else, and nothing project-wide but the database-scoped Firestore role."""
    tf = terraform()
    grants = {(kind, body["role"]): body for kind, _, body in grants_to(WEBHOOK, tf)}
    assert set(grants) == {
        ("google_storage_bucket_iam_member", "roles/storage.objectUser"),
        ("google_project_iam_member", "roles/datastore.user"),
        ("google_pubsub_topic_iam_member", "roles/pubsub.publisher"),
        ("google_secret_manager_secret_iam_member", "roles/secretmanager.secretAccessor"),
    }, sorted(grants)
    assert tf.targets(grants["google_storage_bucket_iam_member", "roles/storage.objectUser"]["bucket"]) == {
        ("google_storage_bucket", "data")
    }
    firestore = grants["google_project_iam_member", "roles/datastore.user"]
    assert tf.targets(block(firestore, "condition")["expression"]) == {("google_firestore_database", "main")}
    assert (
        topic_id(grants["google_pubsub_topic_iam_member", "roles/pubsub.publisher"]["topic"])
        == (function_env()["PROMPTDROP_EVENTS_TOPIC"])
    )
    readable = {
        next(iter(tf.targets(body["secret_id"])))[1]
        for kind, _, body in grants_to(WEBHOOK, tf)
        if kind == "google_secret_manager_secret_iam_member"
    }
    assert readable == {"gemini_api_key", "webhook_signing"}
    # Nobody else reads the signing secret.
    for name, body in tf.resources["google_secret_manager_secret_iam_member"].items():
        if tf.targets(body["secret_id"]) == {("google_secret_manager_secret", "webhook_signing")}:
            assert body["member"] == '${google_service_account.function["webhook"].member}', name
    assert block(webhook_function(), "service_config")["service_account_email"] == (
        '${google_service_account.function["webhook"].email}'
    )


# --- backend = "vertex" ---------------------------------------------------------------------------------


def enabled_apis(tf: Terraform) -> set[str]:
    """local.apis as deployed with ``tf``'s variables: ``toset(concat(local.flag ? [...] : [], [...]))``."""
    text = str(tf.locals["apis"])
    listed = set(re.findall(r'"([\w.-]+\.googleapis\.com)"', text))
    for flag, items in re.findall(r"local\.(\w+)\s*\?\s*\[([^\]]*)\]\s*:\s*\[\]", text):
        if tf.boolean(f"local.{flag}") is not True:
            listed -= set(re.findall(r'"([^"]+)"', items))
    return listed


def instances(tf: Terraform, kind: str, name: str) -> set[str]:
    """The instance keys of a resource (for_each) or "0" when its count is 1 (count)."""
    body = tf.resource(kind, name)
    if "for_each" in body:
        return tf.map_keys(body["for_each"])
    return {"0"} if tf.text(str(body["count"])) == "1" else set()


def test_backend_vertex_enables_vertex_ai_grants_its_roles_and_deploys_no_key_or_webhook() -> None:
    """backend = "vertex" (webhooks off, as its precondition demands): aiplatform.googleapis.com enabled,
    roles/aiplatform.user for every function's account, the Vertex AI service agent reading inputs and writing
    only into run scratch, no API-key secret (nor its grants, nor GEMINI_API_KEY on any function), no webhook
    function; the functions read PROMPTDROP_BACKEND=vertex and pass the cloud readiness check without a key.
    The default stays the Gemini API with none of these."""
    tf = terraform()
    assert tf.variables["backend"]["default"] == "gemini"
    vertex = tf.with_variables(backend="vertex", webhooks=False)

    assert "aiplatform.googleapis.com" in enabled_apis(vertex)
    assert "aiplatform.googleapis.com" not in enabled_apis(tf)
    assert enabled_apis(vertex) - enabled_apis(tf) == {"aiplatform.googleapis.com"}

    assert instances(tf, "google_secret_manager_secret", "gemini_api_key") == {"0"}
    assert instances(vertex, "google_secret_manager_secret", "gemini_api_key") == set()
    assert instances(vertex, "google_secret_manager_secret_iam_member", "function_reads_key") == set()
    for name, deployed in functions_of(vertex).items():
        assert "secret_environment_variables" not in block(deployed, "service_config"), name
    for name, deployed in functions_of(tf).items():
        secret = block(block(deployed, "service_config"), "secret_environment_variables")
        assert secret["key"] == "GEMINI_API_KEY", name

    assert instances(vertex, FUNCTION, WEBHOOK) == set()
    assert WEBHOOK not in vertex.map_keys("${local.function_identities}")
    source = (INFRA / "main.tf").read_text()
    assert "condition     = !(local.vertex && var.webhooks)" in source  # vertex with webhooks on: refused

    role = tf.resource("google_project_iam_member", "function_vertex")
    assert role["role"] == "roles/aiplatform.user" and "each.key" in role["member"]
    assert instances(vertex, "google_project_iam_member", "function_vertex") == set(functions_of(vertex))
    assert instances(tf, "google_project_iam_member", "function_vertex") == set()

    scratch = f"/objects/{tf.text('${var.output_prefix}')}{{run}}/_work/"
    inbox = f"/objects/{tf.text('${var.inbox_prefix}')}"
    reads = tf.resource("google_storage_bucket_iam_member", "vertex_agent_reads_inputs")
    writes = tf.resource("google_storage_bucket_iam_member", "vertex_agent_writes_scratch")
    for grant, role_name in ((reads, "roles/storage.objectViewer"), (writes, "roles/storage.objectCreator")):
        assert grant["role"] == role_name
        assert "@gcp-sa-aiplatform.iam.gserviceaccount.com" in grant["member"]
        assert tf.targets(grant["bucket"]) == {("google_storage_bucket", "data")}
    assert instances(vertex, "google_storage_bucket_iam_member", "vertex_agent_reads_inputs") == {"0"}
    assert instances(tf, "google_storage_bucket_iam_member", "vertex_agent_writes_scratch") == set()
    read_condition = vertex.text(block(reads, "condition")["expression"])
    write_condition = vertex.text(block(writes, "condition")["expression"])
    assert scratch in read_condition and inbox in read_condition
    assert scratch in write_condition and inbox not in write_condition  # predictions land in scratch only

    env = function_env(vertex) | {"K_SERVICE": "promptdrop-poll-jobs"}
    settings = Settings.from_env(env)
    settings.require_cloud_ready()  # no GEMINI_API_KEY needed
    assert settings.backend == "vertex" and settings.vertex_location == "global"
    assert not settings.webhooks_on and Settings.from_env(function_env(tf)).backend == "gemini"
