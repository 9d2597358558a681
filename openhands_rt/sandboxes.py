"""Our containers: labels, owners, listing and reaping orphans.

Every sandbox container carries labels saying it is ours, which session it
serves, whether it is kept alive on purpose, and who owns it: the host name,
the owner's pid and that pid's start time plus the boot id (a pid reused by
another process, or a reboot, is not mistaken for a live owner). An *orphan*
is a container of ours, not kept alive, whose owner on this host is gone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiodocker

from openhands_rt.docker.engine import EngineError, NotFound, translated

__all__ = [
    "CONTAINER_PREFIX",
    "HOST_DIR_PREFIX",
    "LABEL_KEEP_ALIVE",
    "LABEL_OWNER",
    "LABEL_POOL",
    "LABEL_POOL_WORKSPACE",
    "LABEL_SESSION",
    "LABEL_VERSION",
    "SandboxInfo",
    "list_sandboxes",
    "owner_alive",
    "owner_labels",
    "reap_orphans",
]

logger = logging.getLogger(__name__)

#: A sandbox container's name is this prefix and the session id.
CONTAINER_PREFIX = "openhands-runtime-"
LABEL_SESSION = "org.openhands-rt.session"
LABEL_VERSION = "org.openhands-rt.version"
LABEL_KEEP_ALIVE = "org.openhands-rt.keep-alive"
LABEL_OWNER = "org.openhands-rt.owner"  # host/boot_id/pid/starttime
LABEL_POOL = "org.openhands-rt.pool"  # the id of the SandboxPool that made it
# The workspace subdirectory a pool made for the sandbox (removed with it, and by gc).
LABEL_POOL_WORKSPACE = "org.openhands-rt.pool-workspace"
#: Host directories a runtime makes for its sandbox (in the temp directory) start so.
HOST_DIR_PREFIX = "openhands-rt-"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("openhands-rt")
    except PackageNotFoundError:
        return "0+unknown"


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # Field 22 (starttime); the command name (field 2) may contain spaces and ')'.
    return stat.rsplit(b")", 1)[1].split()[19].decode()


def owner_labels(pid: int | None = None) -> dict[str, str]:
    """Labels that identify this process as a container's owner."""
    pid = os.getpid() if pid is None else pid
    owner = f"{socket.gethostname()}/{_boot_id()}/{pid}/{_start_time(pid) or '?'}"
    return {LABEL_OWNER: owner, LABEL_VERSION: _version()}


def owner_alive(owner: str) -> bool | None:
    """True/False for an owner on this host; None when it belongs to another host."""
    try:
        host, boot_id, pid_text, start = owner.split("/")
        pid = int(pid_text)
    except ValueError:
        return False
    if host != socket.gethostname():
        return None
    if boot_id != _boot_id():
        return False
    return _start_time(pid) == start


@dataclass(frozen=True)
class SandboxInfo:
    name: str
    id: str
    session_id: str
    state: str
    status: str
    image: str
    keep_alive: bool
    owner: str
    owner_alive: bool | None
    version: str
    # Host directories the runtime made for it (run directory, rewritten /etc files).
    host_dirs: tuple[str, ...] = ()

    @property
    def orphan(self) -> bool:
        return not self.keep_alive and self.owner_alive is False


def _info(raw: dict[str, Any]) -> SandboxInfo:
    labels = raw.get("Labels") or {}
    owner = labels.get(LABEL_OWNER, "")
    name = (raw.get("Names") or ["?"])[0].lstrip("/")
    # The name, not the label: a pool's sandbox is renamed to its session when handed out.
    session_id = name.removeprefix(CONTAINER_PREFIX) if name.startswith(CONTAINER_PREFIX) else ""
    return SandboxInfo(
        name=name,
        id=raw.get("Id", "")[:12],
        session_id=session_id or labels.get(LABEL_SESSION, ""),
        state=raw.get("State", ""),
        status=raw.get("Status", ""),
        image=raw.get("Image", ""),
        keep_alive=labels.get(LABEL_KEEP_ALIVE) == "true",
        owner=owner,
        owner_alive=owner_alive(owner),
        version=labels.get(LABEL_VERSION, ""),
        host_dirs=tuple(
            str(m["Source"])
            for m in raw.get("Mounts") or []
            if m.get("Type") == "bind"
            and (
                (
                    os.path.basename(str(m.get("Source", ""))).startswith(HOST_DIR_PREFIX)
                    and os.path.dirname(str(m["Source"])) == tempfile.gettempdir()
                )
                or _pool_workspace(m, labels)
            )
        ),
    )


def _pool_workspace(mount: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Whether ``mount`` is the workspace subdirectory a pool made for this sandbox: the
    directory its label names, bound at /workspace, named after the sandbox's first
    session id (``pool-<pool id>-<n>``)."""
    source = str(mount.get("Source", ""))
    return (
        bool(source)
        and labels.get(LABEL_POOL_WORKSPACE) == source
        and mount.get("Destination") == "/workspace"
        and os.path.basename(source) == labels.get(LABEL_SESSION)
        and os.path.basename(source).startswith(f"pool-{labels.get(LABEL_POOL)}-")
    )


async def list_sandboxes(
    docker: aiodocker.Docker, *, labels: Mapping[str, str] | None = None
) -> list[SandboxInfo]:
    """Our containers, by name; only those carrying every one of ``labels`` when given.

    Raises :class:`~openhands_rt.docker.engine.EngineError` when the engine refuses.
    """
    wanted = [LABEL_SESSION, *(f"{key}={value}" for key, value in (labels or {}).items())]
    with translated():
        containers = await docker.containers.list(all=True, filters={"label": wanted})
    return sorted((_info(c._container) for c in containers), key=lambda s: s.name)


async def reap_orphans(
    docker: aiodocker.Docker,
    *,
    include_kept: bool = False,
    labels: Mapping[str, str] | None = None,
) -> list[str]:
    """Remove our containers whose owner is gone; returns their names.

    ``labels``: only containers carrying every one of them (e.g. one test run's).
    """
    removed = []
    for sandbox in await list_sandboxes(docker, labels=labels):
        dead_owner = sandbox.owner_alive is False
        if not dead_owner or (sandbox.keep_alive and not include_kept):
            continue
        try:
            with translated():
                await docker.containers.container(sandbox.id).delete(force=True, v=True)
        except NotFound:
            continue  # removed by someone else meanwhile
        except EngineError as exc:
            logger.warning("could not remove orphan %s: %s", sandbox.name, exc.message)
            continue
        logger.info("removed orphaned sandbox %s", sandbox.name)
        removed.append(sandbox.name)
        for directory in sandbox.host_dirs:
            await asyncio.to_thread(shutil.rmtree, directory, True)
    return removed
