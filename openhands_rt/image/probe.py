"""What a base image offers: its python3 (version, ABI, platform), bash, package manager.

One short-lived container per image id runs a POSIX ``sh`` script (plus a few
lines of Python when python3 exists) and prints ``key=value`` lines;
:func:`parse_probe_output` turns them into an :class:`ImageProbe`. Results are
cached per image id, in memory and under ``~/.cache/openhands-rt/probe``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiodocker
import anyio
import msgspec

from openhands_rt.docker.engine import EngineError, translated
from openhands_rt.errors import SandboxBuildError, SandboxError
from openhands_rt.image.cache import cache_dir

__all__ = [
    "MIN_PYTHON",
    "ImageProbe",
    "PythonInfo",
    "parse_probe_output",
    "probe_image",
]

logger = logging.getLogger(__name__)

#: events/ and container_server/ run on Python 3.10 and later.
MIN_PYTHON = (3, 10)

# Runs under any python3 that still starts (3.6+), so that an old one is reported
# with its version instead of a syntax error.
_PYTHON_PROBE = r"""
import json, os, platform, re, subprocess, sys, sysconfig, glob
try:
    import importlib.util as iu
    has_venv = iu.find_spec("venv") is not None
    has_ensurepip = iu.find_spec("ensurepip") is not None
except Exception:
    has_venv = has_ensurepip = False
libc, libc_version = "", ""
try:
    name, _, ver = os.confstr("CS_GNU_LIBC_VERSION").partition(" ")
    if name == "glibc":
        libc, libc_version = "glibc", ver
except (ValueError, OSError, AttributeError):
    pass
if not libc:
    for loader in glob.glob("/lib/ld-musl-*.so.1"):
        out = subprocess.run([loader], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        m = re.search(r"Version ([0-9]+\.[0-9]+)", out.stderr.decode("utf-8", "replace"))
        if m:
            libc, libc_version = "musl", m.group(1)
            break
abi = "%s%d%d" % ("cp" if sys.implementation.name == "cpython" else sys.implementation.name,
                  sys.version_info[0], sys.version_info[1])
if sysconfig.get_config_var("Py_GIL_DISABLED"):
    abi += "t"
print("python=" + json.dumps({
    "executable": os.path.realpath(sys.executable),
    "version": list(sys.version_info[:3]),
    "implementation": sys.implementation.name,
    "abi": abi,
    "machine": platform.machine(),
    "libc": libc,
    "libc_version": libc_version,
    "has_venv": has_venv,
    "has_ensurepip": has_ensurepip,
}))
"""

_SHELL_PROBE = r"""
echo probe=1
if command -v bash >/dev/null 2>&1; then echo "bash=$(command -v bash)"; fi
for pm in apt-get apk dnf microdnf yum zypper; do
    if command -v "$pm" >/dev/null 2>&1; then echo "package_manager=$pm"; break; fi
done
for tool in useradd adduser; do
    if command -v "$tool" >/dev/null 2>&1; then echo "$tool=1"; fi
done
py="$(command -v python3 2>/dev/null || true)"
if [ -n "$py" ]; then
    echo "python_path=$py"
    "$py" -c "$1" 2>&1 || echo "python_error=exit $?"
fi
"""


class PythonInfo(msgspec.Struct, frozen=True):
    """The image's python3, as it reported itself."""

    executable: str
    version: tuple[int, int, int]
    implementation: str
    abi: str
    machine: str
    libc: str
    libc_version: str
    has_venv: bool
    has_ensurepip: bool

    @property
    def version_text(self) -> str:
        return ".".join(str(part) for part in self.version)

    def unusable_reason(self) -> str | None:
        """Why this python cannot run the server, or None when it can."""
        if self.implementation != "cpython":
            return f"python3 is {self.implementation}, not CPython"
        if self.version[:2] < MIN_PYTHON:
            need = ".".join(map(str, MIN_PYTHON))
            return f"python3 is {self.version_text}, older than {need}"
        if self.libc not in ("glibc", "musl"):
            return "python3's C library is neither glibc nor musl (no binary wheels fit)"
        return None


class ImageProbe(msgspec.Struct, frozen=True):
    """What the probe found in one image."""

    image_id: str
    python: PythonInfo | None = None
    python_path: str | None = None
    python_error: str | None = None
    bash: str | None = None
    package_manager: str | None = None
    has_useradd: bool = False
    has_adduser: bool = False

    @property
    def usable_python(self) -> PythonInfo | None:
        if self.python is not None and self.python.unusable_reason() is None:
            return self.python
        return None

    def python_problem(self) -> str:
        """Human-readable: what is wrong with (or missing about) python3 here."""
        if self.python is not None:
            return self.python.unusable_reason() or "python3 is usable"
        if self.python_path is not None:
            return f"python3 at {self.python_path} does not run ({self.python_error or '?'})"
        return "no python3"


def parse_probe_output(image_id: str, text: str) -> ImageProbe:
    """Turn the probe's ``key=value`` lines into an :class:`ImageProbe` (pure).

    Raises ValueError when the text is not a probe's output at all.
    """
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.isidentifier() and key not in fields:
            fields[key] = value.strip()
    if fields.get("probe") != "1":
        raise ValueError(f"not a probe output: {text[:200]!r}")
    python: PythonInfo | None = None
    python_error = fields.get("python_error")
    if "python" in fields:
        try:
            python = msgspec.json.decode(fields["python"], type=PythonInfo)
        except msgspec.ValidationError as exc:
            python_error = f"unreadable probe answer: {exc}"
    elif "python_path" in fields and python_error is None:
        python_error = _first_other_line(text)
    return ImageProbe(
        image_id=image_id,
        python=python,
        python_path=fields.get("python_path"),
        python_error=python_error,
        bash=fields.get("bash"),
        package_manager=fields.get("package_manager"),
        has_useradd="useradd" in fields,
        has_adduser="adduser" in fields,
    )


def _first_other_line(text: str) -> str | None:
    for line in text.splitlines():
        key, sep, _ = line.partition("=")
        if not (sep and key.isidentifier()) and line.strip():
            return line.strip()
    return None


_memory_cache: dict[str, ImageProbe] = {}


def _disk_cache_path(image_id: str) -> Path:
    return cache_dir("probe") / (image_id.replace(":", "_") + ".json")


def _read_disk_cache(image_id: str) -> ImageProbe | None:
    try:
        return msgspec.json.decode(_disk_cache_path(image_id).read_bytes(), type=ImageProbe)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None


def _write_disk_cache(probe: ImageProbe) -> None:
    path = _disk_cache_path(probe.image_id)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(msgspec.json.encode(probe))
        tmp.replace(path)
    except OSError as exc:  # a read-only cache only costs a probe next time
        logger.debug("cannot cache the probe of %s: %s", probe.image_id, exc)


async def probe_image(
    docker: aiodocker.Docker,
    image: str,
    *,
    image_id: str,
    labels: Mapping[str, str] | None = None,
) -> ImageProbe:
    """Probe ``image`` (whose id is ``image_id``) in a short-lived container, or use the cache.

    Raises :class:`SandboxBuildError` when the image cannot run ``/bin/sh``.
    """
    cached = _memory_cache.get(image_id)
    if cached is None:
        cached = await anyio.to_thread.run_sync(_read_disk_cache, image_id)
    if cached is not None:
        _memory_cache[image_id] = cached
        return cached
    output = await _run_probe(docker, image, labels or {})
    try:
        probe = parse_probe_output(image_id, output)
    except ValueError as exc:
        raise SandboxBuildError(
            f"cannot inspect base image {image}: its /bin/sh printed no probe answer",
            log_tail=output.splitlines()[-30:],
        ) from exc
    logger.info(
        "probed %s: python %s, bash %s, package manager %s",
        image,
        probe.python.version_text if probe.python else probe.python_problem(),
        probe.bash or "missing",
        probe.package_manager or "none",
    )
    _memory_cache[image_id] = probe
    await anyio.to_thread.run_sync(_write_disk_cache, probe)
    return probe


async def _run_probe(docker: aiodocker.Docker, image: str, labels: Mapping[str, str]) -> str:
    config: dict[str, Any] = {
        "Image": image,
        "Entrypoint": ["/bin/sh"],
        "Cmd": ["-c", _SHELL_PROBE, "probe", _PYTHON_PROBE],
        "User": "0",
        "WorkingDir": "/",
        "Labels": {"org.openhands-rt.role": "probe", **labels},
        "AttachStdout": False,
        "AttachStderr": False,
        "HostConfig": {"NetworkMode": "none"},
    }
    try:
        with translated():
            container = await docker.containers.create(config=config)
    except EngineError as exc:
        raise SandboxError(f"cannot create a container from {image}: {exc.message}") from exc
    try:
        try:
            with translated():
                await container.start()
        except EngineError as exc:
            if "/bin/sh" in exc.message or "no such file" in exc.message:
                raise SandboxBuildError(
                    f"base image {image} has no /bin/sh: it has no python3 and no "
                    "package manager to install one, and no shell to run the server's "
                    "setup; use an image with python3 >= 3.10 and bash (or apt-get/apk)",
                    log_tail=[exc.message],
                ) from exc
            raise SandboxError(f"cannot start a probe container of {image}: {exc.message}") from exc
        result = await container.wait()
        lines = await container.log(stdout=True, stderr=True)
        output = "".join(lines)
        if result.get("StatusCode", 1) != 0:
            logger.debug("probe of %s exited %s: %s", image, result, output)
        return output
    finally:
        try:
            with translated():
                await container.delete(force=True, v=True)
        except EngineError as exc:
            logger.warning("cannot remove probe container %s: %s", container.id, exc.message)
