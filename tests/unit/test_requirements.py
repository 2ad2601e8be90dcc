"""The functions deploy what the tests ran against.

pyproject.toml declares ranges; uv.lock pins one version of every package (scripts/lock resolves it);
scripts/bootstrap installs the lock into the test environment, and functions/requirements.txt, which Cloud
Build installs, is the lock's deployed subset (core + the `cloud` extra) with exact pins and hashes.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from functools import cache
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
REQUIREMENTS = REPO / "functions" / "requirements.txt"
UV = REPO / ".venv" / "bin" / "uv"
# A pinned line of requirements.txt: name==version, an optional marker, then its hashes.
_PIN = re.compile(r"^(?P<name>[A-Za-z0-9._-]+)==(?P<version>\S+?)(?:\s*;\s*(?P<marker>[^\\]+?))?\s*(?:\\)?$")


@cache
def project() -> dict[str, object]:
    parsed: dict[str, object] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return parsed


def declared(*extras: str) -> dict[str, Requirement]:
    """Core dependencies (and those of ``extras``) by canonical name."""
    optional: dict[str, list[str]] = project()["optional-dependencies"]  # type: ignore[assignment]
    lines: list[str] = list(project()["dependencies"])  # type: ignore[call-overload]
    for extra in extras:
        lines += optional[extra]
    return {canonicalize_name(Requirement(line).name): Requirement(line) for line in lines}


@cache
def pins() -> dict[str, tuple[str, str | None, list[str]]]:
    """functions/requirements.txt: canonical name -> (version, marker, hashes)."""
    found: dict[str, tuple[str, str | None, list[str]]] = {}
    current = ""
    for raw in REQUIREMENTS.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        hashed = re.fullmatch(r"--hash=(sha256:[0-9a-f]{64})\s*\\?", line)
        if hashed:
            found[current][2].append(hashed.group(1))
            continue
        pin = _PIN.match(line)
        assert pin, f"functions/requirements.txt: not an exact pin: {line!r}"
        current = canonicalize_name(pin["name"])
        assert current not in found, f"{current} is pinned twice"
        found[current] = (pin["version"], pin["marker"], [])
    return found


@cache
def locked() -> dict[str, str]:
    """uv.lock: canonical name -> version (one version per package: the lock is not forked)."""
    packages = tomllib.loads((REPO / "uv.lock").read_text())["package"]
    versions: dict[str, str] = {}
    for package in packages:
        name = canonicalize_name(package["name"])
        assert name not in versions, f"uv.lock holds two versions of {name}"
        versions[name] = package["version"]
    return versions


def test_requirements_are_exact_pins_with_hashes() -> None:
    """Every deployed package is pinned with == and carries hashes (pip then checks every download)."""
    assert len(pins()) > 20  # the whole dependency tree, not just the direct dependencies
    unhashed = [name for name, (_, _, hashes) in pins().items() if not hashes]
    assert not unhashed, f"pins without hashes: {unhashed}"


def test_requirements_pin_the_locked_versions() -> None:
    """Each package functions/requirements.txt pins is at the version uv.lock holds."""
    differing = {
        name: (version, locked().get(name))
        for name, (version, _, _) in pins().items()
        if locked().get(name) != version
    }
    assert not differing, f"requirements.txt vs uv.lock (name: (deployed, locked)): {differing}"


def test_requirements_are_what_scripts_lock_writes() -> None:
    """The file is byte for byte the lock's deployed export (so nobody edits it by hand, or forgets it)."""
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "lock"), "--print-requirements"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == REQUIREMENTS.read_text(), "functions/requirements.txt is stale: run scripts/lock"


def test_lock_is_current_with_pyproject() -> None:
    """uv.lock resolves the ranges pyproject.toml declares now (an edited range needs scripts/lock)."""
    done = subprocess.run(
        [str(UV), "lock", "--check", "--offline"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_test_environment_runs_the_deployed_versions() -> None:
    """Every package deployed for this interpreter is installed here at exactly the pinned version."""
    checked, differing = 0, {}
    for name, (version, marker, _) in pins().items():
        if marker is not None and not Marker(marker).evaluate():
            continue  # another platform's package (e.g. colorama on Windows)
        checked += 1
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = "not installed"
        if installed != version:
            differing[name] = (version, installed)
    assert checked > 20
    assert not differing, (
        f"deployed vs installed (name: (pinned, installed)); run scripts/bootstrap: {differing}"
    )


def test_deployed_packages_are_core_and_cloud_within_their_ranges() -> None:
    """Every core and `cloud` dependency is deployed at a version its pyproject range admits."""
    wanted = declared("cloud")
    missing = sorted(set(wanted) - set(pins()))
    assert not missing, f"declared but not deployed: {missing}"
    outside = {
        name: (str(requirement.specifier), pins()[name][0])
        for name, requirement in wanted.items()
        if not requirement.specifier.contains(pins()[name][0], prereleases=True)
    }
    assert not outside, f"pinned outside the declared range (name: (range, pin)): {outside}"
    assert "standardwebhooks" in pins()  # the webhook receiver's signature check


def test_test_and_lint_tools_are_not_deployed() -> None:
    """Packages only the test and lint groups name stay out of the function image."""
    groups = tomllib.loads((REPO / "pyproject.toml").read_text())["dependency-groups"]
    tools = {canonicalize_name(Requirement(line).name) for group in groups.values() for line in group}
    assert tools and not tools & set(pins()), sorted(tools & set(pins()))
    assert not {"promptdrop"} & set(pins())  # functions/ is the deployed source, not an installed package


def test_every_dependency_has_an_upper_bound() -> None:
    """Ranges are bounded, so a re-lock cannot pull a breaking major release in unnoticed."""
    optional: dict[str, list[str]] = project()["optional-dependencies"]  # type: ignore[assignment]
    every: list[str] = list(project()["dependencies"]) + [r for extra in optional.values() for r in extra]  # type: ignore[call-overload]
    assert all("<" in r for r in every), [r for r in every if "<" not in r]
