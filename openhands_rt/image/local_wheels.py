"""Plugin requirements that point at this host: a wheel file or a project directory.

A plugin that is on no package index is required by a PEP 508 direct reference
to a file URL, ``"name @ file:///abs/path"``, or by an absolute path alone,
naming either a built wheel or a project directory (with a ``pyproject.toml``).
Such a requirement is resolved on the host to a :class:`LocalWheel`:

- a wheel file is used as it is;
- a project directory is built into a wheel by pip (run from its wheel, as for
  the wheelhouse; the build backend comes from the package index), once per
  content of the directory: the wheel is cached under
  ``local-wheels/<dir_hash of the directory>/``.

The wheelhouse is then given ``name @ file:///…/x.whl#sha256=…`` (pip copies the
wheel, checks its hash and resolves its dependencies for the image's Python) and
the plugin lock file ``name @ x.whl#sha256=…``: the wheel's name and bytes, never
where it lies, so a changed plugin changes the lock tag while the same wheel
gives the same tag on any host (hatchling builds reproducible wheels, so the same
source does too).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

import anyio

from openhands_rt.errors import SandboxBuildError
from openhands_rt.image.cache import cache_dir
from openhands_rt.image.progress import ProgressCallback, report
from openhands_rt.image.project import requirement_name
from openhands_rt.image.tags import dir_hash
from openhands_rt.image.wheelhouse import ensure_pip_wheel, parse_wheel_name, run_pip

__all__ = ["LocalWheel", "build_local_wheel", "local_reference", "resolve_local_requirements"]


@dataclass(frozen=True)
class LocalWheel:
    """A wheel on this host that a plugin requirement resolved to."""

    path: Path
    name: str  # normalized project name
    version: str
    sha256: str

    @classmethod
    def from_file(cls, path: Path) -> LocalWheel:
        """Read ``path`` (blocking: call it in a worker thread) and describe it."""
        parsed = parse_wheel_name(path.name)
        if parsed is None:
            raise SandboxBuildError(f"{path} is not named like a wheel (name-version-tags.whl)")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        return cls(path=path.resolve(), name=parsed[0], version=parsed[1], sha256=digest)

    @property
    def install_requirement(self) -> str:
        """What pip is asked for: this file, hash-checked."""
        return f"{self.name} @ {self.path.as_uri()}#sha256={self.sha256}"

    @property
    def lock_entry(self) -> str:
        """What the lock records: the wheel's name and hash, not where it is."""
        return f"{self.name} @ {self.path.name}#sha256={self.sha256}"


def local_reference(requirement: str) -> Path | None:
    """The host path ``requirement`` points at; None for a requirement on an index (pure).

    ``name @ file:///path`` (environment markers after ``;`` and a URL fragment are
    ignored) and a bare absolute path count; other URLs and plain names do not.
    """
    text = requirement.split(";", 1)[0].strip()
    if text.startswith("/"):
        return Path(text)
    if text.startswith("file:"):
        url = text
    else:
        _, at, rest = text.partition("@")
        url = rest.strip()
        if not at or not url.startswith("file:"):
            return None
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise ValueError(f"{requirement!r}: a file URL on another host ({parts.netloc})")
    return Path(url2pathname(parts.path))


async def resolve_local_requirements(
    requirements: Iterable[str], *, on_progress: ProgressCallback | None = None
) -> dict[str, LocalWheel]:
    """requirement → its wheel, for each of ``requirements`` that points at this host.

    Raises :class:`SandboxBuildError` when the path does not exist, a directory
    does not build, or the wheel is not the project the requirement names.
    """
    resolved: dict[str, LocalWheel] = {}
    for requirement in dict.fromkeys(requirements):
        try:
            path = local_reference(requirement)
        except ValueError as exc:
            raise SandboxBuildError(f"plugin requirement {exc}") from None
        if path is None:
            continue
        if await anyio.Path(path).is_dir():
            wheel = await build_local_wheel(path, on_progress=on_progress)
        elif await anyio.Path(path).is_file():
            wheel = await anyio.to_thread.run_sync(LocalWheel.from_file, path)
        else:
            raise SandboxBuildError(f"plugin requirement {requirement!r}: {path} does not exist")
        declared = _declared_name(requirement)
        if declared is not None and declared != wheel.name:
            raise SandboxBuildError(
                f"plugin requirement {requirement!r}: {path} is {wheel.name} {wheel.version}, "
                f"not {declared}"
            )
        resolved[requirement] = wheel
    return resolved


def _declared_name(requirement: str) -> str | None:
    """The project name before ``@`` in a direct reference; None for a bare path or URL."""
    text = requirement.split(";", 1)[0].strip()
    if text.startswith(("/", "file:")):
        return None
    return requirement_name(text)


async def build_local_wheel(
    project: Path, *, on_progress: ProgressCallback | None = None
) -> LocalWheel:
    """The wheel of the project directory ``project``, from the cache or built now."""
    try:
        key = await anyio.to_thread.run_sync(dir_hash, [project])
    except ValueError as exc:
        raise SandboxBuildError(str(exc)) from None
    directory = cache_dir("local-wheels", key)
    cached = await anyio.to_thread.run_sync(_load, directory)
    if cached is not None:
        return cached
    pip_wheel = await ensure_pip_wheel(on_progress)
    await report(on_progress, f"building a wheel of {project}")
    staging = Path(
        await anyio.to_thread.run_sync(
            lambda: tempfile.mkdtemp(prefix=f".{key}.", dir=_ensure_dir(directory.parent))
        )
    )
    try:
        failure = await run_pip(
            pip_wheel,
            "wheel",
            ["--no-deps", "--wheel-dir", str(staging), str(project)],
            on_progress=on_progress,
        )
        if failure is not None:
            raise SandboxBuildError(f"cannot build a wheel of {project}", log_tail=failure)
        return await anyio.to_thread.run_sync(_finish, staging, directory, project)
    finally:
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(staging, ignore_errors=True))


def _ensure_dir(path: Path) -> str:
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def _load(directory: Path) -> LocalWheel | None:
    wheels = list(directory.glob("*.whl")) if directory.is_dir() else []
    return LocalWheel.from_file(wheels[0]) if len(wheels) == 1 else None


def _finish(staging: Path, directory: Path, project: Path) -> LocalWheel:
    wheels = sorted(p.name for p in staging.glob("*.whl"))
    if len(wheels) != 1:
        raise SandboxBuildError(f"building {project} made {wheels or 'no wheels'}, not one wheel")
    try:
        staging.rename(directory)
    except OSError:
        # Another build of the same content finished first: its wheel is as good.
        existing = _load(directory)
        if existing is None:
            raise
        return existing
    return LocalWheel.from_file(directory / wheels[0])
