"""``promptdrop.testing`` is tooling on top of the package: nothing the deployment runs may import it."""

from __future__ import annotations

import ast
from pathlib import Path

from promptdrop.testing import eventarc

FUNCTIONS = Path(__file__).resolve().parents[2] / "functions"


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_the_deployed_code_never_imports_the_testing_layer() -> None:
    deployed = [FUNCTIONS / "main.py"] + [
        path
        for path in (FUNCTIONS / "promptdrop").rglob("*.py")
        if "testing" not in path.relative_to(FUNCTIONS / "promptdrop").parts
    ]
    assert len(deployed) > 30  # the walk found the package
    offenders = {
        str(path.relative_to(FUNCTIONS)): sorted(
            name for name in _imported_modules(path) if name.startswith("promptdrop.testing")
        )
        for path in deployed
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_the_testing_layer_ships_the_captured_event_samples() -> None:
    tick = eventarc.scheduler_tick()
    assert tick["type"] == eventarc.PUBSUB_PUBLISHED
    assert (Path(__file__).resolve().parents[1] / "events").resolve() == eventarc.EVENTS_DIR
