"""Our own runtime image's inputs: lock files, source directories, requirements and pins.

- lock files: ``pyproject.toml``, ``uv.lock`` and, when plugins are requested, a
  plugin requirements file generated here (sorted, pinned from ``uv.lock``), so
  that adding a plugin changes the lock tag;
- source directories: ``events/`` and ``container_server/`` (copied into the image);
- requirements: ``[project] dependencies`` less the host-only ones, plus each
  plugin's requirements; pins: every registry package version in ``uv.lock``.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from openhands_rt.errors import SandboxBuildError
from openhands_rt.image.cache import cache_dir

__all__ = [
    "HOST_ONLY_DEPENDENCIES",
    "PluginLike",
    "ProjectFiles",
    "extra_requirements",
    "find_project",
    "image_requirements",
    "locked_versions",
    "normalize_name",
    "plugin_lock_file",
    "plugin_requirements",
    "render_plugin_lock",
    "requirement_name",
]

#: Dependencies of the host side only; the in-image server never imports them.
HOST_ONLY_DEPENDENCIES = frozenset({"aiodocker", "websockets", "rich"})

_NAME = re.compile(r"^\s*([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)")

if sys.version_info >= (3, 11):
    import tomllib

    def _load_toml(path: Path) -> dict[str, Any]:
        return tomllib.loads(path.read_text(encoding="utf-8"))

else:  # pragma: no cover - openhands_rt needs 3.11; this keeps mypy's 3.10 target happy

    def _load_toml(path: Path) -> dict[str, Any]:
        raise RuntimeError("reading TOML needs Python >= 3.11")


class PluginLike(Protocol):
    """What the builder needs of a plugin requirement (``openhands_rt.PluginRequirement``)."""

    @property
    def name(self) -> str: ...

    @property
    def requirements(self) -> Sequence[str]: ...


@dataclass(frozen=True)
class ProjectFiles:
    """Where our image's inputs are on this host."""

    root: Path
    pyproject: Path
    lock_file: Path
    source_dirs: tuple[Path, ...]


def find_project(root: Path | None = None) -> ProjectFiles:
    """The project files next to the ``openhands_rt`` package (a source checkout).

    Raises :class:`SandboxBuildError` when ``pyproject.toml`` or ``uv.lock`` is
    missing there (an installed wheel carries neither).
    """
    if root is None:
        root = Path(__file__).resolve().parents[2]
    files = ProjectFiles(
        root=root,
        pyproject=root / "pyproject.toml",
        lock_file=root / "uv.lock",
        source_dirs=(root / "events", root / "container_server"),
    )
    missing = [
        str(path)
        for path in (files.pyproject, files.lock_file, *files.source_dirs)
        if not path.exists()
    ]
    if missing:
        raise SandboxBuildError(
            "cannot build the runtime image: missing " + ", ".join(missing) + " (the builder "
            "needs a source checkout; or pass lock_files= and source_dirs=)"
        )
    return files


def normalize_name(name: str) -> str:
    """PEP 503 normalized project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    """The project name a PEP 508 requirement string starts with (normalized)."""
    match = _NAME.match(requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return normalize_name(match.group(1))


def image_requirements(pyproject: Path) -> list[str]:
    """``[project] dependencies`` without the host-only ones, as written there."""
    dependencies: list[str] = _load_toml(pyproject).get("project", {}).get("dependencies", [])
    return [req for req in dependencies if requirement_name(req) not in HOST_ONLY_DEPENDENCIES]


def extra_requirements(pyproject: Path, extra: str) -> list[str]:
    """The requirements of optional-dependency ``extra`` (empty when there is none)."""
    extras: dict[str, list[str]] = (
        _load_toml(pyproject).get("project", {}).get("optional-dependencies", {})
    )
    wanted = normalize_name(extra)
    for name, requirements in extras.items():
        if normalize_name(name) == wanted:
            return list(requirements)
    return []


def locked_versions(lock_file: Path) -> dict[str, str]:
    """normalized name → version for each registry package pinned in ``uv.lock``.

    A package the lock resolves to several versions (per-marker forks) is left
    unpinned rather than pinned to a version that may not fit the image.
    """
    seen: dict[str, set[str]] = {}
    for package in _load_toml(lock_file).get("package", []):
        if "registry" not in package.get("source", {}):
            continue
        seen.setdefault(normalize_name(package["name"]), set()).add(str(package["version"]))
    return {name: versions.pop() for name, versions in seen.items() if len(versions) == 1}


def plugin_requirements(
    plugins: Sequence[str | PluginLike], pyproject: Path
) -> dict[str, list[str]]:
    """plugin name → requirements to install for it.

    A plugin given by name, or a requirement without requirements of its own, gets
    the project's optional-dependency extra of the same name (``jupyter``).
    """
    result: dict[str, list[str]] = {}
    for plugin in plugins:
        name = plugin if isinstance(plugin, str) else plugin.name
        own = [] if isinstance(plugin, str) else list(plugin.requirements)
        requirements = own or extra_requirements(pyproject, name)
        result.setdefault(name, [])
        result[name] = sorted(set(result[name]) | set(requirements))
    return result


def render_plugin_lock(requirements: Mapping[str, Sequence[str]], pins: Mapping[str, str]) -> bytes:
    """The plugin requirements file's bytes: sorted, each pinned when ``uv.lock`` pins it.

    Deterministic (same plugins → same bytes, whatever their order) and empty when
    no plugin is requested, so a plugin-less lock tag is the plain
    ``pyproject.toml`` + ``uv.lock`` one. A direct reference (``name @ …``) is
    written as given: it names exactly what is installed, a pin would not.
    """
    if not requirements:
        return b""
    lines = ["# openhands-rt plugin requirements (generated; part of the lock tag)"]
    for name in sorted(requirements):
        lines.append(f"# plugin: {name}")
        for requirement in sorted(requirements[name], key=requirement_name):
            project = requirement_name(requirement)
            pinned = project in pins and not _is_direct_reference(requirement)
            lines.append(f"{project}=={pins[project]}" if pinned else requirement)
    return ("\n".join(lines) + "\n").encode()


def _is_direct_reference(requirement: str) -> bool:
    return "@" in requirement.split(";", 1)[0]


def plugin_lock_file(content: bytes) -> Path:
    """A file holding ``content``, in the cache, named by its hash (written once)."""
    digest = hashlib.md5(content, usedforsecurity=False).hexdigest()
    path = cache_dir("plugin-locks") / f"{digest}.txt"
    if not path.exists() or path.read_bytes() != content:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(content)
        tmp.replace(path)
    return path
