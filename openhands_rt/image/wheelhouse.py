"""A wheelhouse made on the host for the image's Python, so the build needs no network.

pip runs on the host *from its wheel file* (the project's venv has no pip): the
pinned pip wheel is fetched once from the package index (checked against its
known SHA-256) and cached. ``pip download --only-binary=:all:`` then resolves
the requirements for the image's interpreter (``--python-version``,
``--implementation``, ``--abi``, ``--platform`` per manylinux/musllinux tag),
constrained to the versions pinned in ``uv.lock``. When those pins cannot fit
that Python (a 3.10 image, say) the pins are relaxed to "not newer than the
lock". The result is cached per (pip, interpreter, platform, requirements,
pins) under ``~/.cache/openhands-rt/wheelhouse/<key>``; ``requirements.txt``
there pins every wheel and is written last, marking the wheelhouse complete.
A requirement on a wheel of this host (``name @ file:///…/x.whl#sha256=…``, see
:mod:`openhands_rt.image.local_wheels`) is copied by ``pip download`` like one
from the index, hash-checked, its dependencies resolved with the rest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import anyio
from yarl import URL

from openhands_rt.errors import SandboxBuildError
from openhands_rt.image.cache import cache_dir
from openhands_rt.image.probe import PythonInfo
from openhands_rt.image.progress import ProgressCallback, report, run_reporting
from openhands_rt.image.project import normalize_name

__all__ = [
    "PIP_VERSION",
    "PIP_WHEEL",
    "Wheelhouse",
    "ensure_pip_wheel",
    "parse_wheel_name",
    "platform_tags",
    "prepare_wheelhouse",
    "run_pip",
    "wheel_pins",
]

logger = logging.getLogger(__name__)

#: pip used on the host to download and in the image to install (>= 3.10, like us).
PIP_VERSION = "26.3"
PIP_WHEEL = f"pip-{PIP_VERSION}-py3-none-any.whl"
_PIP_WHEEL_SHA256 = "f3b60b20ffaadd4415ed7957212a38ac63fa4c5fa375bd0f4a797777940fad13"
_DEFAULT_INDEX = "https://pypi.org/simple"
_TAIL_LINES = 30
_WHEEL_NAME = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-[^-]+-[^-]+-[^-]+\.whl$")


@dataclass(frozen=True)
class Wheelhouse:
    """A complete wheelhouse: the directory, its pip wheel and the pinned wheels."""

    directory: Path
    pip_wheel: Path
    pins: tuple[str, ...]  # "name==version" for every wheel but pip

    @property
    def requirements_file(self) -> Path:
        return self.directory / "requirements.txt"

    def files(self) -> list[Path]:
        """Every file to ship into the build context (wheels, pip, requirements.txt)."""
        return sorted(p for p in self.directory.iterdir() if p.is_file())


def platform_tags(python: PythonInfo) -> list[str]:
    """The wheel platform tags the image's interpreter accepts, most specific first (pure).

    glibc 2.N: ``manylinux_2_N`` down to ``manylinux_2_17`` (``_2_5`` on x86), plus the
    legacy aliases ``manylinux2014/2010/1`` where they apply; musl 1.N:
    ``musllinux_1_N`` down to ``musllinux_1_0``.
    """
    arch = python.machine
    if arch in ("amd64", "x64"):
        arch = "x86_64"
    if arch == "arm64":
        arch = "aarch64"
    try:
        major, minor = (int(part) for part in python.libc_version.split(".")[:2])
    except ValueError:
        raise SandboxBuildError(f"unreadable C library version {python.libc_version!r}") from None
    if python.libc == "musl":
        return [f"musllinux_{major}_{m}_{arch}" for m in range(minor, -1, -1)]
    if python.libc != "glibc" or major != 2:
        raise SandboxBuildError(f"no binary wheels fit a {python.libc} {python.libc_version} image")
    oldest = 5 if arch in ("x86_64", "i686") else 17
    tags = [f"manylinux_2_{m}_{arch}" for m in range(minor, oldest - 1, -1)]
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    tags += [f"{alias}_{arch}" for glibc, alias in legacy.items() if oldest <= glibc <= minor]
    return tags


def parse_wheel_name(filename: str) -> tuple[str, str] | None:
    """(normalized project name, version) of a wheel file name; None for anything else (pure)."""
    match = _WHEEL_NAME.match(filename)
    if match is None:
        return None
    return normalize_name(match.group("name")), match.group("version")


def wheel_pins(wheel_names: Sequence[str]) -> list[str]:
    """``name==version`` per wheel file name, sorted, pip itself left out (pure)."""
    pins = []
    for filename in wheel_names:
        parsed = parse_wheel_name(filename)
        if parsed is not None and parsed[0] != "pip":
            pins.append(f"{parsed[0]}=={parsed[1]}")
    return sorted(pins)


async def ensure_pip_wheel(on_progress: ProgressCallback | None = None) -> Path:
    """The cached pinned pip wheel, fetched from the package index the first time."""
    path = cache_dir("pip") / PIP_WHEEL
    if await anyio.Path(path).is_file():
        return path
    index = os.environ.get("PIP_INDEX_URL", _DEFAULT_INDEX).rstrip("/")
    await report(on_progress, f"fetching {PIP_WHEEL} from {index}")
    try:
        async with aiohttp.ClientSession(trust_env=True) as session:
            url = await _find_wheel_url(session, index, PIP_WHEEL)
            async with session.get(url) as response:
                response.raise_for_status()
                content = await response.read()
    except aiohttp.ClientError as exc:
        raise SandboxBuildError(f"cannot fetch {PIP_WHEEL} from {index}: {exc}") from exc
    if hashlib.sha256(content).hexdigest() != _PIP_WHEEL_SHA256:
        raise SandboxBuildError(f"{PIP_WHEEL} from {index} does not have the expected SHA-256")
    await anyio.to_thread.run_sync(_write_atomically, path, content)
    return path


async def _find_wheel_url(session: aiohttp.ClientSession, index: str, filename: str) -> str:
    # PEP 691 (JSON) when the index speaks it, PEP 503 (HTML anchors) otherwise.
    headers = {"Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"}
    page_url = f"{index}/pip/"
    async with session.get(page_url, headers=headers) as response:
        response.raise_for_status()
        body = await response.text()
        is_json = response.content_type.endswith("json")
    if is_json:
        for file in json.loads(body).get("files", []):
            if file.get("filename") == filename:
                return str(response.url.join(URL(file["url"])))
    else:
        for href in re.findall(r'href="([^"]+)"', body):
            if href.split("#", 1)[0].rsplit("/", 1)[-1] == filename:
                return str(response.url.join(URL(href.split("#", 1)[0])))
    raise SandboxBuildError(f"{filename} is not on the package index {page_url}")


def _write_atomically(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(content)
    tmp.replace(path)


async def prepare_wheelhouse(
    python: PythonInfo,
    requirements: Sequence[str],
    pins: Mapping[str, str],
    *,
    on_progress: ProgressCallback | None = None,
) -> Wheelhouse:
    """The wheelhouse for ``requirements`` on ``python``, from the cache or made now.

    Raises :class:`SandboxBuildError` with pip's last output lines when no set of
    binary wheels fits.
    """
    platforms = platform_tags(python)
    python_version = python.version_text
    key_source = json.dumps(
        {
            "pip": PIP_VERSION,
            "python": [python_version, python.implementation, python.abi],
            "platforms": platforms,
            "requirements": sorted(requirements),
            "pins": sorted(pins.items()),
        },
        sort_keys=True,
    )
    key = hashlib.md5(key_source.encode(), usedforsecurity=False).hexdigest()
    directory = cache_dir("wheelhouse", key)
    cached = await anyio.to_thread.run_sync(_load_wheelhouse, directory)
    if cached is not None:
        logger.debug("wheelhouse %s is cached", directory)
        return cached

    pip_wheel = await ensure_pip_wheel(on_progress)
    await report(on_progress, f"preparing wheels for Python {python_version} ({platforms[0]})")
    staging = Path(
        await anyio.to_thread.run_sync(
            lambda: tempfile.mkdtemp(prefix=f".{key}.", dir=_ensure_dir(directory.parent))
        )
    )
    try:
        target = [
            *("--python-version", python_version),
            *("--implementation", "cp"),
            *("--abi", python.abi),
            *(arg for tag in platforms for arg in ("--platform", tag)),
        ]
        strict = "".join(f"{name}=={version}\n" for name, version in sorted(pins.items()))
        failure = await _pip_download(pip_wheel, staging, target, requirements, strict, on_progress)
        if failure is not None:
            logger.warning(
                "the locked versions do not fit Python %s; using the newest versions "
                "not newer than the lock",
                python_version,
            )
            await report(on_progress, f"locked versions do not fit Python {python_version}")
            relaxed = "".join(f"{name}<={version}\n" for name, version in sorted(pins.items()))
            await anyio.to_thread.run_sync(_clear_wheels, staging)
            second = await _pip_download(
                pip_wheel, staging, target, requirements, relaxed, on_progress
            )
            if second is not None:
                raise SandboxBuildError(
                    f"no binary wheels for Python {python_version} on {platforms[0]} "
                    f"satisfy {', '.join(requirements)}",
                    log_tail=[*failure[-10:], "--- with relaxed pins ---", *second[-20:]],
                )
        return await anyio.to_thread.run_sync(_finish_wheelhouse, staging, pip_wheel, directory)
    finally:
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(staging, ignore_errors=True))


def _ensure_dir(path: Path) -> str:
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def _clear_wheels(directory: Path) -> None:
    for wheel in directory.glob("*.whl"):
        wheel.unlink()


async def _pip_download(
    pip_wheel: Path,
    destination: Path,
    target: Sequence[str],
    requirements: Sequence[str],
    constraints: str,
    on_progress: ProgressCallback | None,
) -> list[str] | None:
    """Run ``pip download``; None on success, else pip's last output lines."""
    constraints_file = destination / "constraints.txt"
    await anyio.Path(constraints_file).write_text(constraints)
    arguments = [
        "--only-binary=:all:",
        *target,
        "--dest",
        str(destination),
        "--constraint",
        str(constraints_file),
        *requirements,
    ]
    return await run_pip(pip_wheel, "download", arguments, on_progress=on_progress)


async def run_pip(
    pip_wheel: Path,
    command: str,
    arguments: Sequence[str],
    *,
    on_progress: ProgressCallback | None = None,
) -> list[str] | None:
    """Run ``pip COMMAND ARGUMENTS...`` from its wheel on the host.

    Returns None on success, else pip's last output lines. Every line goes to
    ``on_progress`` and the debug log as it comes.
    """
    argv = [
        sys.executable,
        str(pip_wheel / "pip"),
        command,
        "--disable-pip-version-check",
        "--no-input",
        "--progress-bar",
        "off",
        *arguments,
    ]
    returncode, tail = await run_reporting(
        argv, label="pip", on_progress=on_progress, tail_lines=_TAIL_LINES
    )
    return None if returncode == 0 else tail


def _finish_wheelhouse(staging: Path, pip_wheel: Path, directory: Path) -> Wheelhouse:
    (staging / "constraints.txt").unlink(missing_ok=True)
    shutil.copyfile(pip_wheel, staging / PIP_WHEEL)
    pins = wheel_pins([p.name for p in staging.glob("*.whl")])
    (staging / "requirements.txt").write_text("".join(pin + "\n" for pin in pins))
    try:
        staging.rename(directory)
    except OSError:
        # Another build finished the same wheelhouse first: theirs is as good.
        existing = _load_wheelhouse(directory)
        if existing is None:
            raise
        return existing
    loaded = _load_wheelhouse(directory)
    assert loaded is not None
    return loaded


def _load_wheelhouse(directory: Path) -> Wheelhouse | None:
    requirements = directory / "requirements.txt"
    pip_wheel = directory / PIP_WHEEL
    if not (requirements.is_file() and pip_wheel.is_file()):
        return None
    pins = tuple(line for line in requirements.read_text().splitlines() if line)
    return Wheelhouse(directory=directory, pip_wheel=pip_wheel, pins=pins)
