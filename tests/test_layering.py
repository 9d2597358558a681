"""The package layering, checked statically and at import time.

- ``events`` imports neither ``container_server`` nor ``openhands_rt``, and
  nothing outside the standard library but msgspec;
- ``container_server`` never imports ``openhands_rt``;
- ``openhands_rt`` imports nothing of ``container_server`` but the public
  ``Plugin`` of its package (host and server stand side by side on ``events``);
- no module of the three packages takes part in an import cycle (imports
  inside functions count; ``if TYPE_CHECKING:`` imports do not);
- the wire contract (``events.wire``) is spelled in one place: neither side
  writes one of its values as a literal;
- Docker's statuses are named once, at the aiodocker edge
  (``openhands_rt.docker.engine``): nothing else catches aiodocker's
  ``DockerError`` or compares a ``status`` with 404 or 409;
- ``DEFAULT_BASE_IMAGE`` is defined once (``openhands_rt.config``).
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
        wire.CHANNEL_PATH,
        wire.PLUGIN_ENTRY_POINT_GROUP,
        wire.TEST_PLUGIN_KEYWORD,
        *wire.BUILTIN_PLUGINS.values(),
        *(v for k, v in vars(wire.Route).items() if k.isupper()),
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
            spelled.extend(
                f"{path.relative_to(ROOT)}:{node.lineno}: close code {node.value}"
                for node in ast.walk(tree)
                if isinstance(node, ast.Compare)
                for side in (node.left, *node.comparators)
                if isinstance(side, ast.Constant)
                and side.value in {v for k, v in vars(wire.CloseCode).items() if k.isupper()}
                and "close" in ast.unparse(node)
            )
    assert not spelled, "wire values spelled outside events.wire:\n" + "\n".join(spelled)


PACKAGES = ("events", "container_server", "openhands_rt")
#: What the host may take from the server's package: the public API re-exports it (Plugin).
HOST_MAY_IMPORT = {"Plugin"}


def test_the_host_imports_nothing_of_the_server_but_plugin() -> None:
    found: list[str] = []
    for path in sorted((ROOT / "openhands_rt").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Import):
                found += [where for a in node.names if a.name.split(".")[0] == "container_server"]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                if node.module.split(".")[0] != "container_server":
                    continue
                names = {a.name for a in node.names}
                if node.module != "container_server" or not names <= HOST_MAY_IMPORT:
                    found.append(f"{where}: from {node.module} import {sorted(names)}")
    assert not found, "the host reaches into the server:\n" + "\n".join(found)


def test_importing_the_host_loads_only_the_servers_plugin_base() -> None:
    code = (
        "import sys, openhands_rt, pkgutil, importlib\n"
        "for m in pkgutil.walk_packages(openhands_rt.__path__, 'openhands_rt.'):\n"
        "    if m.name.endswith('__main__'):\n"
        "        continue\n"
        "    importlib.import_module(m.name)\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] == 'container_server')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert set(result.stdout.strip().split(",")) <= {"container_server", "container_server.plugins"}


def module_names() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the modules of the three packages it imports (at any depth of its code).

    A submodule importing its own package (``from events import X`` inside
    ``events.log``) is not an edge: the package's ``__init__`` is its facade.
    """
    modules = module_names()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        type_only = {
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for inner in ast.walk(node)
        }
        for node in ast.walk(tree):
            if id(node) in type_only:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                targets = [
                    f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source
                    for a in node.names
                ]
            for target in targets:
                while target not in modules and "." in target:
                    target = target.rpartition(".")[0]
                if target in modules and target != module and not module.startswith(target + "."):
                    graph[module].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert "openhands_rt.runtime" in graph["openhands_rt.docker_runtime"] or any(
        "openhands_rt.runtime" in deps for deps in graph.values()
    ), "the graph misses edges"
    assert cycles(graph) == []


DOCKER_EDGE = Path("openhands_rt/docker/engine.py")
DOCKER_STATUSES = {404, 409}


def docker_status_tests(tree: ast.AST) -> list[tuple[int, str]]:
    """Where ``tree`` names aiodocker's errors or compares a ``status`` with 404/409."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("aiodocker"):
            if node.module == "aiodocker.exceptions" or any(
                a.name.endswith("Error") for a in node.names
            ):
                found.append((node.lineno, f"from {node.module} import ..."))
        elif isinstance(node, ast.Attribute | ast.Name) and (
            (node.attr if isinstance(node, ast.Attribute) else node.id) == "DockerError"
        ):
            found.append((node.lineno, "DockerError"))
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            constants = {
                c.value
                for side in sides
                for c in ast.walk(side)
                if isinstance(c, ast.Constant) and isinstance(c.value, int)
            }
            status = any(
                isinstance(side, ast.Attribute) and side.attr == "status" for side in sides
            )
            if status and constants & DOCKER_STATUSES:
                found.append((node.lineno, ast.unparse(node)))
    return found


def test_the_status_finder_finds_status_tests() -> None:
    tree = ast.parse(
        "from aiodocker.exceptions import DockerError\n"
        "try:\n    pass\nexcept aiodocker.exceptions.DockerError as exc:\n"
        "    if exc.status == 404: pass\n"
        "    if exc.status in (404, 409): pass\n"
        "    if response.status != 409: pass\n"
        "    if exc.status == 500: pass\n"
    )
    assert [line for line, _ in docker_status_tests(tree)] == [1, 4, 5, 6, 7]


def test_dockers_statuses_are_named_only_at_the_edge() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}: {what}"
        for path in sorted((ROOT / "openhands_rt").rglob("*.py"))
        if path.relative_to(ROOT) != DOCKER_EDGE
        for line, what in docker_status_tests(ast.parse(path.read_text(), filename=str(path)))
    ]
    assert not found, "Docker errors handled outside the edge:\n" + "\n".join(found)
    assert docker_status_tests(ast.parse((ROOT / DOCKER_EDGE).read_text())), "the edge moved"


def test_the_default_base_image_is_defined_once() -> None:
    defined = [
        str(path.relative_to(ROOT))
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path)))
        if isinstance(node, ast.Assign | ast.AnnAssign)
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Name) and target.id == "DEFAULT_BASE_IMAGE"
    ]
    assert defined == ["openhands_rt/config.py"]


#: Modules of one concept: past this a module holds several and is split.
MAX_MODULE_LINES = 600


def test_no_module_is_over_the_size_of_one_concept() -> None:
    too_long = {
        f"{path.relative_to(ROOT)}: {count} lines"
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if (count := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not too_long, "split these modules:\n" + "\n".join(sorted(too_long))
