"""The function archive leaves out the CLI and the emulator, and the deployed code never needs them.

infra/main.tf zips functions/ with excludes. Here: the excludes name the local-only modules; no module
reachable from functions/main.py imports them (every import statement counts, including those inside
functions, which run only on some paths); and main.py imports from a copy of exactly what the archive holds.
"""

from __future__ import annotations

import ast
import fnmatch
import os
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import hcl2
from hcl2.utils import SerializationOptions

ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS = ROOT / "functions"
LOCAL_ONLY = {"promptdrop/emulator/**", "promptdrop/cli.py"}


@cache
def excludes() -> list[str]:
    options = SerializationOptions(strip_string_quotes=True, explicit_blocks=False, with_comments=False)
    with (ROOT / "infra" / "main.tf").open() as file:
        parsed = hcl2.load(file, serialization_options=options)
    for block in parsed.get("data", []):
        archive = block.get("archive_file", {}).get("functions_source")
        if archive is not None:
            return list(archive["excludes"])
    raise AssertionError('infra/main.tf has no data "archive_file" "functions_source"')


def excluded(relative: str) -> bool:
    """Terraform's archive globs: ``**`` spans folders; ``dir/**`` is everything under dir."""
    for pattern in excludes():
        if pattern.endswith("/**") and not pattern.startswith("**"):
            if relative.startswith(pattern[:-2]):
                return True
        elif fnmatch.fnmatch(relative, pattern) or fnmatch.fnmatch(relative, pattern.removeprefix("**/")):
            return True
    return False


def module_file(module: str) -> Path | None:
    """functions/<a>/<b>.py or functions/<a>/<b>/__init__.py for a module of ours, else None."""
    base = FUNCTIONS.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path, module: str) -> set[str]:
    """Every module of ours that any import statement in ``path`` names, packages on the way included."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for name in names:
            parts = name.split(".")
            for end in range(1, len(parts) + 1):
                candidate = ".".join(parts[:end])
                if module_file(candidate) is not None:
                    found.add(candidate)
    return found


def reachable(start: str) -> dict[str, str]:
    """Module -> the module that first imported it, for everything ``start`` can import."""
    seen = {start: start}
    todo = [start]
    while todo:
        current = todo.pop()
        path = module_file(current)
        assert path is not None, current
        for name in imported_modules(path, current):
            if name not in seen:
                seen[name] = current
                todo.append(name)
    return seen


def test_archive_excludes_the_cli_and_the_emulator() -> None:
    """infra/main.tf names both, and they do match the files they are meant to drop."""
    assert set(excludes()) >= LOCAL_ONLY
    assert excluded("promptdrop/cli.py")
    assert excluded("promptdrop/emulator/server.py")
    assert not excluded("promptdrop/usecases/harvest.py")
    assert not excluded("main.py")


def test_deployed_entry_points_never_import_excluded_modules() -> None:
    """No import statement reachable from functions/main.py names a module the archive leaves out."""
    graph = reachable("main")
    assert "promptdrop.usecases.gallery" in graph and "promptdrop.thumbnails" in graph  # the walk does reach
    leaks = {
        module: by
        for module, by in graph.items()
        if excluded(str(module_file(module).relative_to(FUNCTIONS)))  # type: ignore[union-attr]
    }
    assert not leaks, f"deployed code imports modules the archive excludes (module: imported by): {leaks}"


def test_main_imports_from_a_copy_of_exactly_the_archive(tmp_path: Path) -> None:
    """The archive's files alone are enough to load every deployed module (no stray dependency)."""
    archive = tmp_path / "archive"
    for path in FUNCTIONS.rglob("*"):
        relative = str(path.relative_to(FUNCTIONS))
        if path.is_file() and not excluded(relative):
            (archive / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, archive / relative)
    assert (
        not (archive / "promptdrop" / "emulator").exists()
        and not (archive / "promptdrop" / "cli.py").exists()
    )
    modules = sorted(m for m in reachable("main") if m != "main")
    code = (
        "import importlib, sys\n"
        "import main\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "bad = [m for m in sys.modules if m.startswith(('promptdrop.emulator', 'promptdrop.cli'))]\n"
        "assert all(m.__file__.startswith(sys.argv[1]) for n, m in sys.modules.items() if n.startswith('promptdrop') and getattr(m, '__file__', None)), 'not the copy'\n"
        "assert not bad, bad\n"
    )
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PROMPTDROP_", "K_SERVICE")) and key not in {"GEMINI_API_KEY", "PYTHONPATH"}
    }
    env["PROMPTDROP_HOME"] = str(tmp_path / "home")
    done = subprocess.run(
        [sys.executable, "-c", code, str(archive)],
        cwd=archive,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
