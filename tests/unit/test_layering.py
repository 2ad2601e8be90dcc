"""The package's import graph, read with ast: no cycles, no imports hidden inside functions, layers downwards.

Every ``import`` of a ``promptdrop`` module counts as an edge, wherever it stands, so an import moved into a
function to dodge a cycle is still seen (and refused on its own account).
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "functions" / "promptdrop"

# The only imports inside functions: the Google client-library adapters, built on demand (see wiring.py).
ALLOWED_INNER_IMPORTS = frozenset(
    {
        ("promptdrop.wiring", "promptdrop.adapters.gcs"),
        ("promptdrop.wiring", "promptdrop.adapters.firestore_store"),
        ("promptdrop.wiring", "promptdrop.adapters.firestore_cache"),
        ("promptdrop.wiring", "promptdrop.adapters.pubsub"),
        ("promptdrop.wiring", "promptdrop.adapters.gemini"),
        ("promptdrop.wiring", "promptdrop.adapters.vertex"),
    }
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def resolve(name: str) -> str | None:
    """The module an imported name lives in: ``promptdrop.x.y`` itself, or the package holding ``y``."""
    while name and name not in modules():
        name = name.rpartition(".")[0]
    return name or None


@cache
def imports(module: str) -> tuple[tuple[str, bool], ...]:
    """(imported promptdrop module, whether the import stands inside a function) for every import."""
    tree = ast.parse(modules()[module].read_text())
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, inside: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = inside or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                names = [f"{child.module}.{alias.name}" for alias in child.names]
            else:
                visit(child, nested)
                continue
            for name in names:
                target = resolve(name) if name.startswith("promptdrop") else None
                if target is not None and target != module:
                    found.append((target, inside))

    visit(tree, False)
    return tuple(found)


@cache
def graph() -> dict[str, frozenset[str]]:
    return {module: frozenset(target for target, _ in imports(module)) for module in modules()}


# The command line, the top layer, imports inside its commands what only those commands use: `--help` and
# `status` start without pydantic's records, the use cases, PIL and the emulator (issue 22: under 0.3 s). Its
# inner imports are edges like any other (the cycle and layer tests below read them).
INNER_IMPORTS_ANYWHERE = frozenset({"promptdrop.cli"})


def test_no_import_inside_a_function_but_the_documented_ones() -> None:
    """Imports stand at the top of a module; the exceptions: the heavy cloud adapters in wiring.py, and the
    command line's commands."""
    inner = {
        (module, target)
        for module in modules()
        if module not in INNER_IMPORTS_ANYWHERE
        for target, inside in imports(module)
        if inside
    }
    assert inner <= ALLOWED_INNER_IMPORTS, sorted(inner - ALLOWED_INNER_IMPORTS)


def test_nothing_imports_the_command_line() -> None:
    """The command line stands above everything: no module of the package imports it, inside a function
    or not (its inner imports could otherwise hide a cycle)."""
    assert [module for module in modules() if "promptdrop.cli" in graph()[module]] == []


def test_no_import_cycle_between_modules() -> None:
    """No module reaches itself through the imports of others (a depth-first search finds none)."""
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    cycles: list[list[str]] = []

    def walk(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges[module]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                walk(target, [*path, target])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            walk(module, [module])
    assert cycles == []


def reaches(module: str, prefixes: tuple[str, ...]) -> list[str]:
    return sorted(target for target in graph()[module] if target.startswith(prefixes))


def test_use_cases_know_ports_not_adapters_or_faces() -> None:
    """Use cases import domain modules and each other (downwards), never an adapter, the wiring or the CLI."""
    faces = ("promptdrop.adapters", "promptdrop.wiring", "promptdrop.cli", "promptdrop.emulator")
    for module in modules():
        if module.startswith("promptdrop.usecases"):
            assert reaches(module, faces) == [], module


def test_domain_modules_import_no_use_case_adapter_or_face() -> None:
    """The pure core (parsing, records, lifecycle, rules) stands below everything that does I/O."""
    above = ("promptdrop.usecases", "promptdrop.adapters", "promptdrop.wiring", "promptdrop.cli")
    for module in modules():
        if module.count(".") == 1 and module not in {"promptdrop.wiring", "promptdrop.cli"}:
            assert reaches(module, above) == [], module


def test_the_graph_is_read() -> None:
    """The walk sees the known arrows (a parser that read nothing would pass every test above)."""
    edges = graph()
    assert "promptdrop.lifecycle" in edges["promptdrop.usecases.advance"]
    assert "promptdrop.usecases.advance" in edges["promptdrop.usecases.receive"]
    assert "promptdrop.adapters.gcs" in edges["promptdrop.wiring"]
    assert "promptdrop.usecases.poll" in edges["promptdrop.cli"]  # imported inside its commands
