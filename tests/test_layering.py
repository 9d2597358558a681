"""The package layering, checked statically and at import time.

- ``events`` imports neither ``container_server`` nor ``openhands_rt``, and
  nothing outside the standard library but msgspec;
- ``container_server`` never imports ``openhands_rt``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STDLIB = set(sys.stdlib_module_names)


def imported_top_levels(package: str) -> dict[str, set[str]]:
    """file -> top-level names of every module it imports (relative imports resolved)."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                names.add(package if node.level else (node.module or "").split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


def test_events_imports_only_msgspec_and_the_standard_library() -> None:
    for path, names in imported_top_levels("events").items():
        foreign = {n for n in names if n not in STDLIB and n not in {"events", "msgspec"}}
        assert not foreign, f"{path} imports {sorted(foreign)}"


def test_container_server_never_imports_openhands_rt() -> None:
    for path, names in imported_top_levels("container_server").items():
        assert "openhands_rt" not in names, path


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("events", ("container_server", "openhands_rt")), ("container_server", ("openhands_rt",))],
)
def test_importing_a_package_loads_nothing_it_must_not(
    package: str, forbidden: tuple[str, ...]
) -> None:
    code = (
        f"import sys, {package}, pkgutil, importlib\n"
        f"for m in pkgutil.walk_packages({package}.__path__, '{package}.'):\n"
        "    if m.name.endswith(('jupyter', '__main__')):\n"
        "        continue  # optional dependency / runs the server\n"
        "    importlib.import_module(m.name)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {forbidden!r})\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.strip() == "", f"{package} loaded {result.stdout.strip()}"
