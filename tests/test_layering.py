"""The package layering, checked statically and at import time.

- ``events`` imports neither ``container_server`` nor ``openhands_rt``, and
  nothing outside the standard library but msgspec;
- ``container_server`` never imports ``openhands_rt``;
- the wire contract (``events.wire``) is spelled in one place: neither side
  writes one of its values as a literal.
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


def test_the_wire_contract_is_spelled_only_in_events_wire() -> None:
    from events import wire

    exact = {
        wire.API_KEY_HEADER,
        wire.PLUGIN_ENTRY_POINT_GROUP,
        *(v for k, v in vars(wire.ErrorId).items() if k.isupper()),
    }

    def is_wire_value(text: str) -> bool:
        return text in exact or text.startswith(wire.READY_LINE_PREFIX)

    spelled: list[str] = []
    for package in ("container_server", "openhands_rt"):
        for path in sorted((ROOT / package).rglob("*.py")):
            source = path.read_text()
            tree = ast.parse(source, filename=str(path))
            docstrings = {
                id(node.body[0].value)
                for node in ast.walk(tree)
                if isinstance(
                    node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
                )
                and node.body
                and isinstance(node.body[0], ast.Expr)
                and isinstance(node.body[0].value, ast.Constant)
            }
            spelled.extend(
                f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}"
                for node in ast.walk(tree)
                if isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in docstrings
                and is_wire_value(node.value)
            )
            if "16 * 1024 * 1024" in source:
                spelled.append(f"{path.relative_to(ROOT)}: the frame limit")
    assert not spelled, "wire values spelled outside events.wire:\n" + "\n".join(spelled)
