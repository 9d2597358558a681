"""Build a minimal Debian base image with python3 without any registry.

``debootstrap --variant=minbase`` makes a root filesystem on the host; the rootfs is
slimmed (no apt lists, caches, docs, man pages, locales) and streamed as a tar into
the engine through ``POST /images/create?fromSrc=-``. Nothing is pulled.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import aiodocker
import anyio

from openhands_rt.config import DEFAULT_BASE_IMAGE
from openhands_rt.docker_client import image_exists, import_image, split_image_ref, use_docker
from openhands_rt.errors import SandboxError
from openhands_rt.image.progress import ProgressCallback, report, run_reporting

__all__ = [
    "DEFAULT_BASE_IMAGE",
    "DEFAULT_BASE_PACKAGES",
    "bootstrap_base_image",
]

logger = logging.getLogger(__name__)

#: bash, coreutils, apt and dpkg are already in minbase (they are Essential).
DEFAULT_BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")

_TAIL_LINES = 30
_TAR_CHUNK = 1 << 20
_SLIM_REMOVE = (
    "var/lib/apt/lists",
    "var/cache/apt",
    "var/cache/debconf/templates.dat-old",
    "var/log",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/doc",
    "usr/share/lintian",
    "usr/share/linda",
)
# Directories whose content the engine provides at run time.
_EMPTIED_AT_RUN_TIME = ("dev", "proc", "sys", "run", "tmp")
_DPKG_NODOC = """\
# Added by openhands-rt: keep documentation out of the image (as the slim images do).
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
"""
_APT_CLEAN = """\
// Added by openhands-rt: no downloaded .deb files left in image layers.
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
"""


async def bootstrap_base_image(
    name: str = DEFAULT_BASE_IMAGE,
    suite: str = "bookworm",
    mirror: str = "http://deb.debian.org/debian",
    on_progress: ProgressCallback | None = None,
    *,
    packages: Sequence[str] = DEFAULT_BASE_PACKAGES,
    labels: Mapping[str, str] | None = None,
    force: bool = False,
    docker: aiodocker.Docker | None = None,
) -> str:
    """Make the base image ``name`` from Debian ``suite`` and return its name.

    Idempotent: when ``name`` exists it is returned at once (``force=True``
    rebuilds it). Needs root and ``debootstrap`` on the host; raises
    :class:`SandboxError` saying which is missing. Every output line of
    debootstrap and of the import goes to ``on_progress`` and to the log.
    """
    repository, tag = split_image_ref(name)
    async with use_docker(docker) as client:
        if not force and await image_exists(client, name) is not None:
            logger.debug("base image %s exists", name)
            return name
        _check_host_can_bootstrap()
        workdir = Path(await anyio.to_thread.run_sync(_make_workdir))
        try:
            rootfs = workdir / "rootfs"
            await _debootstrap(suite, rootfs, mirror, packages, on_progress)
            await report(on_progress, "slimming the root filesystem")
            await anyio.to_thread.run_sync(_slim_rootfs, rootfs)
            await report(on_progress, f"importing the root filesystem as {name}")
            changes = [
                'CMD ["/bin/bash"]',
                "ENV LANG=C.UTF-8",
                "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                _label_change(
                    {
                        "org.openhands-rt.role": "base",
                        "org.openhands-rt.suite": suite,
                        **(labels or {}),
                    }
                ),
            ]
            async with _tar_stream(rootfs) as chunks:
                image_id = await import_image(
                    client,
                    chunks,
                    repository=repository,
                    tag=tag,
                    changes=changes,
                    message=f"debootstrap --variant=minbase {suite} {mirror}",
                )
        finally:
            await anyio.to_thread.run_sync(
                lambda: shutil.rmtree(workdir, ignore_errors=True), abandon_on_cancel=False
            )
    await report(on_progress, f"{name} is {image_id}")
    return name


def _check_host_can_bootstrap() -> None:
    if os.geteuid() != 0:
        raise SandboxError(
            "bootstrapping a base image needs root (debootstrap creates device nodes "
            "and chowns files); run as root"
        )
    if shutil.which("debootstrap") is None:
        raise SandboxError(
            "debootstrap is not installed; install it with `apt-get install debootstrap` "
            "(scripts/ensure-docker.sh does)"
        )


def _make_workdir() -> str:
    return tempfile.mkdtemp(prefix="openhands-rt-rootfs-")


def _label_change(labels: Mapping[str, str]) -> str:
    # Dockerfile LABEL syntax: values double-quoted, backslash and quote escaped.
    def quoted(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    return "LABEL " + " ".join(f"{key}={quoted(value)}" for key, value in labels.items())


async def _debootstrap(
    suite: str,
    rootfs: Path,
    mirror: str,
    packages: Sequence[str],
    on_progress: ProgressCallback | None,
) -> None:
    argv = [
        "debootstrap",
        "--variant=minbase",
        "--components=main",
        *([f"--include={','.join(packages)}"] if packages else []),
        suite,
        str(rootfs),
        mirror,
    ]
    await report(on_progress, " ".join(argv))
    returncode, tail = await run_reporting(
        argv,
        label="debootstrap",
        on_progress=on_progress,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        tail_lines=_TAIL_LINES,
    )
    if returncode != 0:
        # debootstrap keeps its detailed log inside the target.
        log_file = rootfs / "debootstrap" / "debootstrap.log"
        details = await anyio.to_thread.run_sync(_read_tail, log_file)
        raise SandboxError(
            f"debootstrap {suite} from {mirror} failed with exit code {returncode}:\n"
            + "\n".join([*tail, *details])
        )


def _read_tail(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-_TAIL_LINES:]
    except OSError:
        return []


def _slim_rootfs(rootfs: Path) -> None:
    for relative in _SLIM_REMOVE:
        target = rootfs / relative
        if target.is_file() or target.is_symlink():
            target.unlink()
        elif target.is_dir():
            keep_copyright = relative == "usr/share/doc"
            for child in target.iterdir():
                if keep_copyright and child.is_dir() and (child / "copyright").is_file():
                    for entry in child.iterdir():
                        if entry.name != "copyright":
                            _remove(entry)
                else:
                    _remove(child)
    for relative in _EMPTIED_AT_RUN_TIME:
        target = rootfs / relative
        if target.is_dir() and not target.is_symlink():
            for child in target.iterdir():
                _remove(child)
    # The host's resolver and name leak in through debootstrap; the engine sets both.
    for relative in ("etc/resolv.conf", "etc/hostname"):
        path = rootfs / relative
        if path.is_file() and not path.is_symlink():
            path.write_text("")
    (rootfs / "etc/dpkg/dpkg.cfg.d").mkdir(parents=True, exist_ok=True)
    (rootfs / "etc/dpkg/dpkg.cfg.d/90-openhands-rt-nodoc").write_text(_DPKG_NODOC)
    (rootfs / "etc/apt/apt.conf.d").mkdir(parents=True, exist_ok=True)
    (rootfs / "etc/apt/apt.conf.d/90-openhands-rt-clean").write_text(_APT_CLEAN)
    (rootfs / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)
    (rootfs / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
    (rootfs / "var/log/apt").mkdir(parents=True, exist_ok=True)
    (rootfs / "tmp").chmod(0o1777)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


@asynccontextmanager
async def _tar_stream(rootfs: Path) -> AsyncIterator[AsyncIterator[bytes]]:
    """The rootfs as a tar byte stream, produced by a ``tar`` subprocess.

    GNU tar keeps hard links, modes, numeric owners (the host's user names mean
    nothing inside the image), xattrs (file capabilities) and sparse files; tarfile
    would push every byte through Python.
    """
    process = await asyncio.create_subprocess_exec(
        *("tar", "--numeric-owner", "--xattrs", "-C", str(rootfs), "-cf", "-", "."),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )

    async def chunks() -> AsyncIterator[bytes]:
        assert process.stdout is not None
        assert process.stderr is not None
        while chunk := await process.stdout.read(_TAR_CHUNK):
            yield chunk
        error = (await process.stderr.read()).decode("utf-8", "replace")
        if await process.wait() != 0:
            raise SandboxError(f"tar of the root filesystem failed: {error}")

    try:
        yield chunks()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
