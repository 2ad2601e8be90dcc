"""functions/requirements.txt deploys what pyproject.toml declares."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _normalise(requirement: str) -> str:
    return requirement.replace(" ", "").lower()


def test_requirements_match_core_and_cloud_dependencies() -> None:
    """Every core and `cloud` dependency is in requirements.txt with the same range, and nothing else is."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {_normalise(r) for r in project["dependencies"] + project["optional-dependencies"]["cloud"]}
    lines = (REPO / "functions" / "requirements.txt").read_text().splitlines()
    deployed = {_normalise(line) for line in lines if line.strip() and not line.lstrip().startswith("#")}
    assert deployed == declared


def test_every_dependency_has_an_upper_bound() -> None:
    """Ranges are bounded, so a major release cannot break a deploy silently."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    every = project["dependencies"] + [
        r for extra in project["optional-dependencies"].values() for r in extra
    ]
    assert all("<" in r for r in every), [r for r in every if "<" not in r]
