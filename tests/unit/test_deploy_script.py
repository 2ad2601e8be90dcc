"""scripts/deploy's decisions: which key version it pins, how it rotates the key, what it refuses to delete,
and how it registers the webhook and keeps its signing secret.

A real run needs a Google Cloud project, so ``terraform`` and ``gcloud`` are replaced on PATH by small
recorders: they keep secrets' versions and the Terraform outputs in a state directory, log every command
line, and answer the way the real tools do for the few commands the script uses. The webhook registration
runs the real google-genai SDK against the bundled Gemini emulator (PROMPTDROP_GEMINI_BASE_URL), which accepts
only the key of the version the deployment pins. What is tested is the script's own logic: the order of its
commands and what reaches a command line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from google import genai
from google.genai.webhooks import Webhook

from promptdrop.adapters.webhook_listener import WebhookListener
from promptdrop.testing.emulator import RunningEmulator, create_inline, running_emulator
from promptdrop.webhooks import SignatureError, Verifier

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "scripts" / "deploy"
SECRET = "promptdrop-gemini-api-key"
BUCKET = "proj-promptdrop"
NEW_KEY = "AIza-new-key-5e1f9c3b7d"
FUNCTIONS = {"file": "promptdrop-on-prompt-file", "poller": "promptdrop-poll-jobs"}
SIGNING = "promptdrop-webhook-signing-secret"
WEBHOOK = "promptdrop-on-batch-webhook"
WEBHOOK_URL = f"https://{WEBHOOK}-abc-uc.a.run.app"
BATCH_EVENTS = ["batch.succeeded", "batch.failed", "batch.expired", "batch.cancelled"]

_COMMON = """
import json, os, re, sys
from pathlib import Path
STATE = Path(os.environ["STUB_STATE"])

def load(name, default):
    path = STATE / name
    return json.loads(path.read_text()) if path.exists() else default

def save(name, value):
    (STATE / name).write_text(json.dumps(value))

def log(tool, argv):
    with (STATE / "calls.jsonl").open("a") as file:
        file.write(json.dumps({"tool": tool, "argv": argv}) + "\\n")

def option(argv, name):
    for index, arg in enumerate(argv):
        if arg == name:
            return argv[index + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None
"""

TERRAFORM = (
    _COMMON
    + """
argv = sys.argv[1:]
log("terraform", argv)
assert argv[0] == "-chdir=infra", argv
command, rest = argv[1], argv[2:]
outputs = load("outputs.json", {})
if command == "init":
    sys.exit(0)
if command == "output":
    name = rest[-1]
    if name not in outputs:
        print("Warning: No outputs found", file=sys.stderr)
        sys.exit(1)
    value = outputs[name]
    print(json.dumps(value, separators=(",", ":")) if "-json" in rest else value, end="")
    sys.exit(0)
if command == "state":
    print("\\n".join(load("state.json", [])))
    sys.exit(0)
if command in ("apply", "destroy", "plan"):
    if command != "plan" and "-auto-approve" not in rest:
        answer = sys.stdin.readline().strip()
        if answer != "yes":
            print("Apply cancelled.", file=sys.stderr)
            sys.exit(1)
    var_file = Path(option(rest, "-var-file")).read_text()
    webhooks = not re.search(r"^\\s*webhooks\\s*=\\s*false", var_file, re.MULTILINE)
    outputs.setdefault("gemini_api_key_secret", os.environ["STUB_SECRET"])
    if command == "apply":
        targets = [a for a in rest if a.startswith("-target=")]
        # Any apply creates (or, switched off, destroys) the signing secret; an untargeted one the rest.
        outputs["webhook_secret"] = os.environ["STUB_SIGNING"] if webhooks else ""
        if not targets:
            planned = load("planned.json", {})
            if not webhooks:
                del planned["functions"]["webhook"]
            outputs = {**planned, **outputs}
            outputs["functions"] = planned["functions"]
            outputs["webhook_url"] = planned["webhook_url"] if webhooks else ""
        if not targets or "-target=google_cloudfunctions2_function.webhook" in targets:
            for index, arg in enumerate(rest):
                if arg == "-var" and rest[index + 1].startswith(("gemini_api_key_version=", "webhook_secret_version=")):
                    name, value = rest[index + 1].split("=", 1)
                    outputs[name] = value
    save("outputs.json", outputs)
    sys.exit(0)
sys.exit(f"terraform stub: unexpected {argv}")
"""
)

GCLOUD = (
    _COMMON
    + """
argv = sys.argv[1:]
log("gcloud", argv)
secrets = load("versions.json", {})
if argv[:1] == ["auth"]:
    print("token")
elif argv[:2] == ["config", "get-value"]:
    print("proj")
elif argv[:3] == ["secrets", "versions", "list"]:
    assert "--filter=state:ENABLED" in argv and "--sort-by=~createTime" in argv, argv
    for version in reversed(secrets.get(argv[3], [])):
        if version["state"] == "ENABLED":
            print(version["number"])
elif argv[:3] == ["secrets", "versions", "add"]:
    assert "--data-file=-" in argv, argv
    versions = secrets.setdefault(argv[3], [])
    versions.append({"number": str(len(versions) + 1), "state": "ENABLED", "data": sys.stdin.read()})
    save("versions.json", secrets)
elif argv[:3] == ["secrets", "versions", "disable"]:
    for version in secrets[option(argv, "--secret")]:
        if version["number"] == argv[3]:
            version["state"] = "DISABLED"
    save("versions.json", secrets)
elif argv[:3] == ["secrets", "versions", "access"]:
    (version,) = [v for v in secrets[option(argv, "--secret")] if v["number"] == argv[3]]
    if version["state"] != "ENABLED":
        sys.exit(f"ERROR: version {argv[3]} is {version['state']}")
    print(version["data"])
elif argv[:2] == ["functions", "describe"]:
    served = os.environ.get("STUB_SERVED") or load("outputs.json", {}).get("gemini_api_key_version")
    print(f"ACTIVE\\t{served}")
else:
    sys.exit(f"gcloud stub: unexpected {argv}")
"""
)


@dataclass
class Result:
    returncode: int
    output: str
    calls: list[dict[str, Any]]
    secrets: dict[str, list[dict[str, str]]]
    api_calls: dict[str, int]  # the emulator's calls during the run, by route (e.g. "webhook_create")

    @property
    def versions(self) -> list[dict[str, str]]:
        """The API key secret's versions."""
        return self.secrets.get(SECRET, [])

    @property
    def signing(self) -> list[dict[str, str]]:
        """The webhook signing secret's versions."""
        return self.secrets.get(SIGNING, [])

    def commands(self, tool: str) -> list[list[str]]:
        return [call["argv"] for call in self.calls if call["tool"] == tool]

    def index(self, tool: str, *words: str) -> int:
        """Position in the call log of the first ``tool`` call whose command line holds all ``words``."""
        for position, call in enumerate(self.calls):
            if call["tool"] == tool and all(word in call["argv"] for word in words):
                return position
        raise AssertionError(f"no {tool} call with {words}: {self.calls}")


class Stubs:
    """The state directory and PATH of the recorders, the Gemini emulator, and a way to run scripts/deploy
    against them."""

    def __init__(self, root: Path) -> None:
        self.emulator_dir = root / "emulator"
        self.key = (
            NEW_KEY  # the key the first deploy stores; deployed() moves to the key of the pinned version
        )
        self._emulator = running_emulator(self.emulator_dir, api_key=self.key, require_key=True)
        self.emulator: RunningEmulator = self._emulator.__enter__()
        self.state = root / "state"
        self.state.mkdir()
        bin_dir = root / "bin"
        bin_dir.mkdir()
        for name, source in (("terraform", TERRAFORM), ("gcloud", GCLOUD)):
            path = bin_dir / name
            path.write_text(f"#!{sys.executable}\n{source}")
            path.chmod(0o755)
        self.path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
        self.var_file = root / "terraform.tfvars"
        self.var_file.write_text('project_id = "proj"\nregion     = "us-central1"\n')

        # The outputs an untargeted apply leaves behind.
        planned = {
            "gemini_api_key_secret": SECRET,
            "bucket": BUCKET,
            "region": "us-central1",
            "functions": {
                role: {"name": name, "uri": f"https://{name}"}
                for role, name in {**FUNCTIONS, "webhook": WEBHOOK}.items()
            },
            "webhook_url": WEBHOOK_URL,
            "webhook_secret": SIGNING,
            "inbox_url": f"gs://{BUCKET}/inbox/",
            "outputs_url": f"gs://{BUCKET}/outputs/",
            "topics": {"events": "projects/proj/topics/promptdrop-events"},
        }
        (self.state / "planned.json").write_text(json.dumps(planned))

    def close(self) -> None:
        self._emulator.__exit__(None, None, None)

    def receiver_at(self, url: str) -> None:
        """The receiver the next apply deploys answers at ``url``."""
        planned = json.loads((self.state / "planned.json").read_text())
        planned["webhook_url"] = url
        (self.state / "planned.json").write_text(json.dumps(planned))

    def use_key(self, key: str) -> None:
        """Restart the emulator on its folder (its webhooks persist there) accepting only ``key``."""
        self.close()
        self.key = key
        self._emulator = running_emulator(self.emulator_dir, api_key=key, require_key=True)
        self.emulator = self._emulator.__enter__()

    def sdk(self) -> genai.Client:
        return self.emulator.client(api_key=self.key)

    def webhooks(self) -> list[Webhook]:
        """The project's webhooks as the API lists them."""
        client = self.sdk()
        try:
            return client.webhooks.list(page_size=1000).webhooks or []
        finally:
            client.close()

    def secrets_of(self, webhook: Webhook) -> list[str]:
        """The secrets the emulator signs the webhook's deliveries with, newest first."""
        assert webhook.id is not None
        return self.emulator.server.webhook_secrets(webhook.id)

    def deployed(self, *, versions: int, bucket: str | None = BUCKET, webhooks: bool = False) -> None:
        """A deployment as Terraform's state and Secret Manager would show it; with ``webhooks``, the
        receiver registered at Gemini with its signing secret stored as version 1."""
        outputs: dict[str, Any] = json.loads((self.state / "planned.json").read_text())
        if bucket is None:
            del outputs["bucket"]
        if versions:
            outputs["gemini_api_key_version"] = str(versions)
        existing = {
            SECRET: [
                {"number": str(n), "state": "ENABLED", "data": f"key-{n}"} for n in range(1, versions + 1)
            ]
        }
        self.use_key(f"key-{versions}")
        if webhooks:
            client = self.sdk()
            created = client.webhooks.create(
                subscribed_events=BATCH_EVENTS, uri=WEBHOOK_URL, name="promptdrop"
            )  # type: ignore[arg-type]
            client.close()
            assert created.id and created.new_signing_secret
            existing[SIGNING] = [{"number": "1", "state": "ENABLED", "data": created.new_signing_secret}]
            outputs["webhook_secret_version"] = "1"
            self.registered = created.id
        else:
            del outputs["functions"]["webhook"]
            outputs["webhook_url"] = outputs["webhook_secret"] = ""
        (self.state / "outputs.json").write_text(json.dumps(outputs))
        (self.state / "versions.json").write_text(json.dumps(existing))
        addresses = [
            "google_storage_bucket.data",
            "google_firestore_database.main",
            "google_secret_manager_secret.gemini_api_key",
            "google_pubsub_topic.inbox",
            'google_cloudfunctions2_function.function["poller"]',
        ]
        if webhooks:
            addresses += [
                "google_cloudfunctions2_function.webhook[0]",
                "google_secret_manager_secret.webhook_signing[0]",
            ]
        (self.state / "state.json").write_text(json.dumps(addresses))

    def webhooks_off(self) -> None:
        """The var file turns webhooks off."""
        self.var_file.write_text(self.var_file.read_text() + "webhooks   = false\n")

    def run(self, *args: str, stdin: str = "", env: dict[str, str] | None = None) -> Result:
        environment = {
            "PATH": self.path,
            "HOME": str(self.state),
            "STUB_STATE": str(self.state),
            "STUB_SECRET": SECRET,
            "STUB_SIGNING": SIGNING,
            "GOOGLE_APPLICATION_CREDENTIALS": "/dev/null",
            "PROMPTDROP_GEMINI_BASE_URL": self.emulator.url,
            "PROMPTDROP_SKIP_BOOTSTRAP": "1",  # the test environment is the project's .venv already
            **(env or {}),
        }
        before = self._api_calls()
        completed = subprocess.run(
            ["bash", str(DEPLOY), "--var-file", str(self.var_file), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=environment,
            timeout=60,
            check=False,
        )
        log = self.state / "calls.jsonl"
        calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        versions_file = self.state / "versions.json"
        secrets = json.loads(versions_file.read_text()) if versions_file.exists() else {}
        after = self._api_calls()
        api_calls = {
            route: n - before.get(route, 0) for route, n in after.items() if n != before.get(route, 0)
        }
        return Result(completed.returncode, completed.stdout + completed.stderr, calls, secrets, api_calls)

    def _api_calls(self) -> dict[str, int]:
        counted: dict[str, int] = self.emulator.server.stats()["calls_by_route"]  # type: ignore[assignment]
        return dict(counted)


@pytest.fixture
def stubs(tmp_path: Path) -> Iterator[Stubs]:
    made = Stubs(tmp_path)
    yield made
    made.close()


def pinned_versions(result: Result) -> list[str]:
    """The gemini_api_key_version each untargeted terraform apply pinned."""
    pins = []
    for argv in result.commands("terraform"):
        if argv[1] == "apply" and not any(arg.startswith("-target=") for arg in argv):
            pins += [arg.split("=", 1)[1] for arg in argv if arg.startswith("gemini_api_key_version=")]
    return pins


def assert_key_never_on_a_command_line(result: Result, key: str) -> None:
    for call in result.calls:
        assert not any(key in arg for arg in call["argv"]), call


# --- deploy: the pinned version ------------------------------------------------------------------------


def test_first_deploy_stores_the_key_through_a_pipe_and_pins_its_version(stubs: Stubs) -> None:
    """No version yet: the key from GEMINI_API_KEY becomes version 1, and the functions are applied with 1."""
    result = stubs.run("--yes", env={"GEMINI_API_KEY": NEW_KEY})
    assert result.returncode == 0, result.output
    assert [v["data"] for v in result.versions] == [NEW_KEY]
    assert pinned_versions(result) == ["1"]
    assert_key_never_on_a_command_line(result, NEW_KEY)


def test_redeploy_pins_the_newest_enabled_version_and_never_asks_for_the_key(stubs: Stubs) -> None:
    """With versions 1 and 2 enabled, a deploy pins 2 and reads no key (none is given)."""
    stubs.deployed(versions=2)
    result = stubs.run("--yes")
    assert result.returncode == 0, result.output
    assert pinned_versions(result) == ["2"]
    assert len(result.versions) == 2


# --- --rotate-key --------------------------------------------------------------------------------------


def test_rotate_key_on_vertex_says_there_is_no_key_and_changes_nothing(stubs: Stubs) -> None:
    """backend = "vertex" deploys no key secret: --rotate-key says Vertex AI has no key instead of asking for
    one (or claiming nothing was deployed)."""
    stubs.var_file.write_text(stubs.var_file.read_text() + 'backend    = "vertex"\nwebhooks   = false\n')
    result = stubs.run("--rotate-key", "--yes", stdin=NEW_KEY + "\n")
    assert result.returncode != 0
    assert "Vertex AI has no API key" in result.output and "nothing to rotate" in result.output
    assert not [argv for argv in result.commands("gcloud") if argv[1:3] == ["secrets", "versions"]]
    assert not [argv for argv in result.commands("terraform") if argv[1] == "apply"]


def test_rotate_key_adds_a_version_pins_it_then_disables_the_old_one(stubs: Stubs) -> None:
    """A piped key becomes version 2, the apply pins 2, and only after the functions serve it is 1 disabled."""
    stubs.deployed(versions=1)
    result = stubs.run("--rotate-key", "--yes", stdin=NEW_KEY + "\n")
    assert result.returncode == 0, result.output
    assert [(v["number"], v["state"]) for v in result.versions] == [("1", "DISABLED"), ("2", "ENABLED")]
    assert result.versions[1]["data"] == NEW_KEY
    assert pinned_versions(result) == ["2"]
    applied = result.index("terraform", "apply", "gemini_api_key_version=2")
    checked = [result.index("gcloud", "describe", name) for name in FUNCTIONS.values()]
    disabled = result.index("gcloud", "disable", "1")
    assert applied < min(checked) and max(checked) < disabled
    assert_key_never_on_a_command_line(result, NEW_KEY)


def test_rotate_key_keeps_the_old_version_while_a_function_serves_it(stubs: Stubs) -> None:
    """If a function still reports the old version after the apply, nothing is disabled and the script fails."""
    stubs.deployed(versions=1)
    result = stubs.run("--rotate-key", "--yes", env={"GEMINI_API_KEY": NEW_KEY, "STUB_SERVED": "1"})
    assert result.returncode != 0
    assert "old versions stay enabled" in result.output
    assert [v["state"] for v in result.versions] == ["ENABLED", "ENABLED"]


def test_rotate_key_with_a_piped_key_needs_yes(stubs: Stubs) -> None:
    """Terraform's confirmation would read the pipe the key came from: refused before anything changes."""
    stubs.deployed(versions=1)
    result = stubs.run("--rotate-key", stdin=NEW_KEY + "\n")
    assert result.returncode != 0
    assert "--yes" in result.output
    assert len(result.versions) == 1
    assert pinned_versions(result) == []


# --- --destroy ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("approve", [[], ["--yes"]], ids=["asked", "yes"])
def test_delete_data_is_refused_when_the_bucket_is_unknown(stubs: Stubs, approve: list[str]) -> None:
    """An empty bucket output never lets Enter (or --yes) confirm data deletion."""
    stubs.deployed(versions=1, bucket=None)
    result = stubs.run("--destroy", "--delete-data", *approve, stdin="\n")
    assert result.returncode != 0
    assert "nothing was deleted" in result.output
    assert not [argv for argv in result.commands("terraform") if argv[1] in ("apply", "destroy")]


@pytest.mark.parametrize(("answer", "deleted"), [("\n", False), ("yes\n", False), (f"{BUCKET}\n", True)])
def test_delete_data_needs_the_bucket_name_typed(stubs: Stubs, answer: str, deleted: bool) -> None:
    """Only the bucket's name confirms: Enter or a bare yes deletes nothing."""
    stubs.deployed(versions=1)
    result = stubs.run("--destroy", "--delete-data", stdin=answer)
    destroys = [argv for argv in result.commands("terraform") if argv[1] == "destroy"]
    assert bool(destroys) is deleted, result.output
    assert (result.returncode == 0) is deleted


def test_destroy_keeps_the_key_secret_unless_data_is_deleted(stubs: Stubs) -> None:
    """--destroy targets everything but the data and the secret, so a redeploy never asks for the key."""
    stubs.deployed(versions=1)
    result = stubs.run("--destroy", "--yes")
    assert result.returncode == 0, result.output
    (destroy,) = [argv for argv in result.commands("terraform") if argv[1] == "destroy"]
    targets = {arg.removeprefix("-target=") for arg in destroy if arg.startswith("-target=")}
    assert targets == {"google_pubsub_topic.inbox", 'google_cloudfunctions2_function.function["poller"]'}
    assert "kept" in result.output.lower() and SECRET in result.output


# --- webhooks ---------------------------------------------------------------------------------------------


def signing_pins(result: Result) -> list[str]:
    """The webhook_secret_version of each terraform apply that deploys the receiver (untargeted, or
    targeted at it), in order."""
    pins = []
    for argv in result.commands("terraform"):
        targets = [arg for arg in argv if arg.startswith("-target=")]
        if argv[1] == "apply" and (
            not targets or targets == ["-target=google_cloudfunctions2_function.webhook"]
        ):
            found = [arg.split("=", 1)[1] for arg in argv if arg.startswith("webhook_secret_version=")]
            pins.append(found[-1] if found else "")
    return pins


def assert_secret_kept_secret(stubs: Stubs, result: Result, secret: str) -> None:
    """Not on any command line, not in the script's output, not in Terraform's files or outputs (the stand-in
    for its state), not in infra/: only in Secret Manager's version (which the stubs keep in versions.json)."""
    assert_key_never_on_a_command_line(result, secret)
    assert secret not in result.output
    for path in [*stubs.state.iterdir(), stubs.var_file, *(ROOT / "infra").rglob("*")]:
        if path.is_file() and path.name != "versions.json":
            assert secret not in path.read_text(errors="replace"), path


def test_first_deploy_registers_the_webhook_and_pins_the_secret_gemini_returned(stubs: Stubs) -> None:
    """The receiver starts on a placeholder version; after the apply its URL is registered for the batch
    events, Gemini's secret becomes version 2 (through gcloud's stdin), the receiver moves to it and the
    placeholder is disabled."""
    result = stubs.run("--yes", env={"GEMINI_API_KEY": NEW_KEY})
    assert result.returncode == 0, result.output
    (webhook,) = stubs.webhooks()
    assert webhook.uri == WEBHOOK_URL and sorted(webhook.subscribed_events) == sorted(BATCH_EVENTS)
    assert result.api_calls.get("webhook_create") == 1
    (issued,) = stubs.secrets_of(webhook)  # what the emulator signs deliveries with
    placeholder, stored = result.signing
    assert placeholder["data"].startswith("whsec_") and placeholder["data"] != issued
    assert placeholder["state"] == "DISABLED"
    assert (stored["number"], stored["state"], stored["data"]) == ("2", "ENABLED", issued)
    assert signing_pins(result) == ["1", "2"]
    # Registered only once the receiver is deployed (its URL comes from the apply), moved to it after.
    phase2 = result.index("terraform", "apply", "webhook_secret_version=1")
    phase3 = result.index("terraform", "apply", "webhook_secret_version=2")
    added = [
        position
        for position, call in enumerate(result.calls)
        if call["tool"] == "gcloud" and call["argv"][:4] == ["secrets", "versions", "add", SIGNING]
    ]
    assert len(added) == 2
    assert added[0] < phase2 < added[1] < phase3 < result.index("gcloud", "disable", "1", "--secret")
    assert_secret_kept_secret(stubs, result, issued)
    assert_secret_kept_secret(stubs, result, placeholder["data"])
    assert "calls" in result.output and WEBHOOK_URL in result.output


def test_redeploy_finds_the_webhook_and_changes_neither_it_nor_its_secret(stubs: Stubs) -> None:
    """Listed first: no second webhook, no new secret version, the receiver keeps reading version 1."""
    stubs.deployed(versions=1, webhooks=True)
    result = stubs.run("--yes")
    assert result.returncode == 0, result.output
    assert [webhook.id for webhook in stubs.webhooks()] == [stubs.registered]
    assert set(result.api_calls) == {"webhook_list"}  # no create, rotate or delete
    assert [(v["number"], v["state"]) for v in result.signing] == [("1", "ENABLED")]
    assert signing_pins(result) == ["1"]
    assert not [argv for argv in result.commands("gcloud") if "add" in argv or "disable" in argv]


def test_rotate_webhook_secret_stores_the_new_secret_pins_it_then_disables_the_old(stubs: Stubs) -> None:
    stubs.deployed(versions=1, webhooks=True)
    result = stubs.run("--rotate-webhook-secret", "--yes")
    assert result.returncode == 0, result.output
    (webhook,) = stubs.webhooks()
    assert webhook.id == stubs.registered  # the same webhook, a new secret
    assert result.api_calls.get("webhook_rotate") == 1 and "webhook_create" not in result.api_calls
    # The old secret still signs for 24 hours (revoke_previous_secrets_after_h24), the new one first.
    new, old = stubs.secrets_of(webhook)
    assert old == result.signing[0]["data"]
    assert webhook.signing_secrets is not None
    assert [secret.expire_time is None for secret in webhook.signing_secrets] == [True, False]
    assert [(v["number"], v["state"]) for v in result.signing] == [("1", "DISABLED"), ("2", "ENABLED")]
    assert result.signing[1]["data"] == new
    assert signing_pins(result) == ["2"]
    assert result.index("terraform", "apply", "webhook_secret_version=2") < result.index(
        "gcloud", "disable", "1", "--secret"
    )
    assert [v["state"] for v in result.versions] == ["ENABLED"]  # the API key is not touched
    assert_secret_kept_secret(stubs, result, new)


def test_rotate_webhook_secret_without_webhooks_changes_nothing(stubs: Stubs) -> None:
    stubs.deployed(versions=1)
    stubs.webhooks_off()
    result = stubs.run("--rotate-webhook-secret", "--yes")
    assert result.returncode != 0 and "webhooks are off" in result.output
    assert not result.api_calls and not [argv for argv in result.commands("terraform") if argv[1] == "apply"]


def test_destroy_removes_the_webhook_before_the_receiver(stubs: Stubs) -> None:
    stubs.deployed(versions=1, webhooks=True)
    result = stubs.run("--destroy", "--yes")
    assert result.returncode == 0, result.output
    assert not stubs.webhooks()
    assert result.api_calls.get("webhook_delete") == 1
    (destroy,) = [argv for argv in result.commands("terraform") if argv[1] == "destroy"]
    assert "-target=google_cloudfunctions2_function.webhook[0]" in destroy
    assert "-target=google_secret_manager_secret.webhook_signing[0]" in destroy


def test_webhooks_off_deploys_polling_only(stubs: Stubs) -> None:
    """`webhooks = false`: no call to the webhooks API, no signing secret, nothing pinned for it."""
    stubs.webhooks_off()
    result = stubs.run("--yes", env={"GEMINI_API_KEY": NEW_KEY})
    assert result.returncode == 0, result.output
    assert not result.api_calls
    assert not result.signing
    assert all(pin == "" for pin in signing_pins(result))
    assert pinned_versions(result) == ["1"]
    assert "webhooks are off" in result.output


def test_turning_webhooks_off_removes_the_registration(stubs: Stubs) -> None:
    """A deployment that had webhooks and now sets `webhooks = false` deletes its registration."""
    stubs.deployed(versions=1, webhooks=True)
    stubs.webhooks_off()
    result = stubs.run("--yes")
    assert result.returncode == 0, result.output
    assert not stubs.webhooks() and "webhook_create" not in result.api_calls
    assert f"removed the webhook registration of {WEBHOOK_URL}" in result.output


def test_a_lost_registration_is_made_again_with_a_new_secret(stubs: Stubs) -> None:
    """Someone deleted the webhook at Gemini: the next deploy registers it again and moves to its secret."""
    stubs.deployed(versions=1, webhooks=True)
    client = stubs.sdk()
    client.webhooks.delete(id=stubs.registered)
    client.close()
    result = stubs.run("--yes")
    assert result.returncode == 0, result.output
    (webhook,) = stubs.webhooks()
    assert webhook.uri == WEBHOOK_URL and webhook.id != stubs.registered
    assert [(v["number"], v["state"]) for v in result.signing] == [("1", "DISABLED"), ("2", "ENABLED")]
    assert [result.signing[1]["data"]] == stubs.secrets_of(webhook)
    assert signing_pins(result) == ["1", "2"]


# --- end to end: the secret the deploy stored is the one deliveries are signed with -----------------------


class Deliveries:
    """A receiver's inbox: every delivery's body and headers, answered 200."""

    def __init__(self) -> None:
        self.got: list[tuple[bytes, dict[str, str]]] = []
        self.lock = threading.Lock()

    def handle(self, body: bytes, headers: Mapping[str, str]) -> tuple[int, str]:
        with self.lock:
            self.got.append((body, dict(headers)))
        return 200, "ok"

    def after_a_batch_ends(self, stubs: Stubs) -> tuple[bytes, dict[str, str]]:
        """Run a batch on the emulator to its end and return the delivery it causes."""
        seen = len(self.got)
        client = stubs.sdk()  # kept open until the batch is created
        create_inline(client, "a red kite")
        client.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.got) > seen:
                    return self.got[seen]
            time.sleep(0.02)
        raise AssertionError("no delivery within 20 s")


def verifies(secret: str, delivery: tuple[bytes, dict[str, str]]) -> bool:
    """The receiver's own check (promptdrop.webhooks.Verifier, as on_batch_webhook runs it)."""
    body, headers = delivery
    try:
        Verifier(secret).verify(body, headers, max_bytes=65536)
    except SignatureError:
        return False
    return True


def test_deliveries_are_signed_with_the_secret_the_deploy_stored_and_then_rotated(stubs: Stubs) -> None:
    """scripts/deploy registers the receiver's URL with the emulator and hands Gemini's secret to Secret
    Manager on gcloud's standard input; a batch that ends is then delivered signed with exactly the version
    the receiver is pinned to (not the placeholder it started on). After --rotate-webhook-secret the new
    pinned version verifies, and the disabled old one still does for the 24-hour overlap."""
    inbox = Deliveries()
    with WebhookListener(inbox.handle, max_bytes=65536) as listener:
        stubs.receiver_at(listener.url)
        result = stubs.run("--yes", env={"GEMINI_API_KEY": NEW_KEY})
        assert result.returncode == 0, result.output
        placeholder, stored = result.signing
        assert signing_pins(result)[-1] == stored["number"] == "2"
        first = inbox.after_a_batch_ends(stubs)
        assert json.loads(first[0])["type"] == "batch.succeeded"
        assert verifies(stored["data"], first)
        assert not verifies(placeholder["data"], first)

        rotated = stubs.run("--rotate-webhook-secret", "--yes")
        assert rotated.returncode == 0, rotated.output
        old, new = rotated.signing[1], rotated.signing[2]
        assert (old["state"], new["state"]) == ("DISABLED", "ENABLED")
        assert signing_pins(rotated)[-1] == new["number"] == "3"  # the call log spans both runs
        second = inbox.after_a_batch_ends(stubs)
        assert verifies(new["data"], second) and verifies(old["data"], second)
        assert not verifies(new["data"], first)  # the new secret is really new
