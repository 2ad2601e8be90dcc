"""scripts/deploy's decisions: which key version it pins, how it rotates the key, what it refuses to delete.

A real run needs a Google Cloud project, so ``terraform`` and ``gcloud`` are replaced on PATH by small
recorders: they keep a secret's versions and the Terraform outputs in a state directory, log every command
line, and answer the way the real tools do for the few commands the script uses. What is tested is the
script's own logic: the order of its commands and what reaches a command line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "scripts" / "deploy"
SECRET = "promptdrop-gemini-api-key"
BUCKET = "proj-promptdrop"
NEW_KEY = "AIza-new-key-5e1f9c3b7d"
FUNCTIONS = {"file": "promptdrop-on-prompt-file", "poller": "promptdrop-poll-jobs"}

_COMMON = """
import json, os, sys
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
    outputs.setdefault("gemini_api_key_secret", os.environ["STUB_SECRET"])
    if command == "apply" and not any(a.startswith("-target=") for a in rest):
        outputs = {**load("planned.json", {}), **outputs}
        for index, arg in enumerate(rest):
            if arg == "-var" and rest[index + 1].startswith("gemini_api_key_version="):
                outputs["gemini_api_key_version"] = rest[index + 1].split("=", 1)[1]
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
versions = load("versions.json", [])
if argv[:1] == ["auth"]:
    print("token")
elif argv[:2] == ["config", "get-value"]:
    print("proj")
elif argv[:3] == ["secrets", "versions", "list"]:
    assert "--filter=state:ENABLED" in argv and "--sort-by=~createTime" in argv, argv
    for version in reversed(versions):
        if version["state"] == "ENABLED":
            print(version["number"])
elif argv[:3] == ["secrets", "versions", "add"]:
    assert "--data-file=-" in argv, argv
    versions.append({"number": str(len(versions) + 1), "state": "ENABLED", "data": sys.stdin.read()})
    save("versions.json", versions)
elif argv[:3] == ["secrets", "versions", "disable"]:
    for version in versions:
        if version["number"] == argv[3]:
            version["state"] = "DISABLED"
    save("versions.json", versions)
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
    versions: list[dict[str, str]]

    def commands(self, tool: str) -> list[list[str]]:
        return [call["argv"] for call in self.calls if call["tool"] == tool]

    def index(self, tool: str, *words: str) -> int:
        """Position in the call log of the first ``tool`` call whose command line holds all ``words``."""
        for position, call in enumerate(self.calls):
            if call["tool"] == tool and all(word in call["argv"] for word in words):
                return position
        raise AssertionError(f"no {tool} call with {words}: {self.calls}")


class Stubs:
    """The state directory and PATH of the recorders, and a way to run scripts/deploy against them."""

    def __init__(self, root: Path) -> None:
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
            "functions": {role: {"name": name, "uri": f"https://{name}"} for role, name in FUNCTIONS.items()},
            "inbox_url": f"gs://{BUCKET}/inbox/",
            "outputs_url": f"gs://{BUCKET}/outputs/",
            "topics": {"events": "projects/proj/topics/promptdrop-events"},
        }
        (self.state / "planned.json").write_text(json.dumps(planned))

    def deployed(self, *, versions: int, bucket: str | None = BUCKET) -> None:
        """A deployment as Terraform's state and Secret Manager would show it."""
        outputs: dict[str, Any] = json.loads((self.state / "planned.json").read_text())
        if bucket is None:
            del outputs["bucket"]
        if versions:
            outputs["gemini_api_key_version"] = str(versions)
        (self.state / "outputs.json").write_text(json.dumps(outputs))
        existing = [
            {"number": str(n), "state": "ENABLED", "data": f"key-{n}"} for n in range(1, versions + 1)
        ]
        (self.state / "versions.json").write_text(json.dumps(existing))
        addresses = [
            "google_storage_bucket.data",
            "google_firestore_database.main",
            "google_secret_manager_secret.gemini_api_key",
            "google_pubsub_topic.inbox",
            'google_cloudfunctions2_function.function["poller"]',
        ]
        (self.state / "state.json").write_text(json.dumps(addresses))

    def run(self, *args: str, stdin: str = "", env: dict[str, str] | None = None) -> Result:
        environment = {
            "PATH": self.path,
            "HOME": str(self.state),
            "STUB_STATE": str(self.state),
            "STUB_SECRET": SECRET,
            "GOOGLE_APPLICATION_CREDENTIALS": "/dev/null",
            **(env or {}),
        }
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
        versions = json.loads(versions_file.read_text()) if versions_file.exists() else []
        return Result(completed.returncode, completed.stdout + completed.stderr, calls, versions)


@pytest.fixture
def stubs(tmp_path: Path) -> Stubs:
    return Stubs(tmp_path)


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
