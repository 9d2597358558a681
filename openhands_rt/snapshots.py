"""Snapshots of sandboxes: where they are kept, listing, removal.

A snapshot (made by :meth:`openhands_rt.docker.runtime.DockerRuntime.snapshot`,
started from with ``DockerRuntime(..., snapshot=ID)``) is two things:

- an **image** ``openhands-rt/snapshot:<id>``: the container's file system,
  committed while the container was paused. It carries the sandbox labels
  (session id, version, the config's own labels) and the snapshot's:
  :data:`LABEL_SNAPSHOT` (its id), :data:`LABEL_SNAPSHOT_EVENT` (the id of
  the last event of the source stream it includes), :data:`LABEL_RUNTIME_MODE`
  (how the source was started: a ``mount`` snapshot has no server of its own
  and starts with the runtime bundle mounted again), :data:`LABEL_SNAPSHOT_DIR`
  and :data:`LABEL_SNAPSHOT_FACTS` (the source config's facts, JSON);
- a **host directory** ``$OPENHANDS_RT_DATA_DIR`` or
  ``$XDG_DATA_HOME/openhands-rt`` (``~/.local/share``), ``snapshots/<id>/``,
  private to the user: ``workspace.tar`` (the workspace as the engine's archive
  of ``/workspace`` while paused: a bind mount, which a commit misses; owners
  and modes included) and ``shell.json`` (the shell's working directory and
  exported environment, when they could be read).

The image is the snapshot's identity: a directory without its image is
debris (:func:`prune_snapshot_dirs`). Nothing in the image says which process
owns it: a snapshot outlives its sandbox and its process on purpose, until
:func:`remove_snapshot` or ``openhands-rt gc --snapshots`` (every snapshot of
ours, whatever its session) removes it.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiodocker
import anyio

from openhands_rt.docker.engine import Conflict, NotFound, translated
from openhands_rt.docker_client import use_docker
from openhands_rt.errors import SandboxError
from openhands_rt.sandboxes import LABEL_SESSION, LABEL_VERSION

__all__ = [
    "LABEL_RUNTIME_MODE",
    "LABEL_SNAPSHOT",
    "LABEL_SNAPSHOT_DIR",
    "LABEL_SNAPSHOT_EVENT",
    "LABEL_SNAPSHOT_FACTS",
    "SHELL_FILE",
    "SNAPSHOT_REPOSITORY",
    "WORKSPACE_FILE",
    "SnapshotInfo",
    "list_snapshots",
    "new_snapshot_id",
    "prune_snapshot_dirs",
    "remove_snapshot",
    "remove_snapshots",
    "snapshot_dir",
    "snapshot_image",
    "snapshot_info",
    "snapshots_root",
]

logger = logging.getLogger(__name__)

SNAPSHOT_REPOSITORY = "openhands-rt/snapshot"
LABEL_SNAPSHOT = "org.openhands-rt.snapshot"
LABEL_SNAPSHOT_EVENT = "org.openhands-rt.snapshot.event"
LABEL_SNAPSHOT_DIR = "org.openhands-rt.snapshot.dir"
LABEL_SNAPSHOT_FACTS = "org.openhands-rt.snapshot.facts"
LABEL_RUNTIME_MODE = "org.openhands-rt.runtime-mode"
WORKSPACE_FILE = "workspace.tar"
SHELL_FILE = "shell.json"
_ID_PREFIX = "snap-"


def new_snapshot_id() -> str:
    """A fresh snapshot id: ``snap-`` and 16 hex digits (a valid image tag)."""
    return _ID_PREFIX + secrets.token_hex(8)


def _check_id(snapshot_id: str) -> None:
    body = snapshot_id.removeprefix(_ID_PREFIX)
    if (
        not snapshot_id.startswith(_ID_PREFIX)
        or not body
        or not all(c in "0123456789abcdef" for c in body)
    ):
        raise SandboxError(f"{snapshot_id!r} is not a snapshot id (snap-<hex>)")


def snapshot_image(snapshot_id: str) -> str:
    """The image name of snapshot ``snapshot_id``."""
    _check_id(snapshot_id)
    return f"{SNAPSHOT_REPOSITORY}:{snapshot_id}"


def snapshots_root() -> Path:
    """``$OPENHANDS_RT_DATA_DIR/snapshots``, else ``$XDG_DATA_HOME/openhands-rt/snapshots``
    (``~/.local/share``). Nothing is created here."""
    root = os.environ.get("OPENHANDS_RT_DATA_DIR")
    if root:
        base = Path(root)
    else:
        xdg = os.environ.get("XDG_DATA_HOME")
        base = (Path(xdg) if xdg else Path.home() / ".local" / "share") / "openhands-rt"
    return base / "snapshots"


def snapshot_dir(snapshot_id: str) -> Path:
    """The host directory of snapshot ``snapshot_id`` (may not exist)."""
    _check_id(snapshot_id)
    return snapshots_root() / snapshot_id


@dataclass(frozen=True)
class SnapshotInfo:
    """What a snapshot's image says about it."""

    snapshot_id: str
    image: str
    session_id: str
    #: The id of the last event of the source stream whose effects it holds (-1: none).
    event_id: int
    runtime_mode: str
    directory: str
    created: str
    version: str
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def workspace_archive(self) -> Path:
        return Path(self.directory) / WORKSPACE_FILE

    @property
    def shell_file(self) -> Path:
        return Path(self.directory) / SHELL_FILE


def _info(labels: dict[str, str], *, created: str) -> SnapshotInfo | None:
    snapshot_id = labels.get(LABEL_SNAPSHOT, "")
    try:
        image = snapshot_image(snapshot_id)
        event_id = int(labels.get(LABEL_SNAPSHOT_EVENT, "-1"))
        facts = json.loads(labels.get(LABEL_SNAPSHOT_FACTS) or "{}")
    except (SandboxError, ValueError):
        return None  # not one of ours, or damaged: left alone
    return SnapshotInfo(
        snapshot_id=snapshot_id,
        image=image,
        session_id=labels.get(LABEL_SESSION, ""),
        event_id=event_id,
        runtime_mode=labels.get(LABEL_RUNTIME_MODE, "build"),
        directory=labels.get(LABEL_SNAPSHOT_DIR) or str(snapshot_dir(snapshot_id)),
        created=created,
        version=labels.get(LABEL_VERSION, ""),
        facts=facts if isinstance(facts, dict) else {},
    )


async def snapshot_info(
    snapshot_id: str, *, docker: aiodocker.Docker | None = None
) -> SnapshotInfo:
    """The snapshot ``snapshot_id``; :class:`SandboxError` when there is no such snapshot."""
    image = snapshot_image(snapshot_id)
    try:
        async with use_docker(docker) as client:
            with translated():
                raw = await client.images.inspect(image)
    except NotFound as exc:
        raise SandboxError(
            f"snapshot {snapshot_id} does not exist on this Docker engine "
            "(removed, or made on another host)"
        ) from exc
    info = _info((raw.get("Config") or {}).get("Labels") or {}, created=raw.get("Created", ""))
    if info is None or info.snapshot_id != snapshot_id:
        raise SandboxError(f"image {image} is not an openhands-rt snapshot")
    return info


async def list_snapshots(
    *,
    docker: aiodocker.Docker | None = None,
    session_id: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> list[SnapshotInfo]:
    """Every snapshot on this engine, oldest first; of ``session_id`` only, and only those
    carrying every one of ``labels`` (the source config's labels are a snapshot's too),
    when given."""
    wanted = [LABEL_SNAPSHOT, *(f"{key}={value}" for key, value in (labels or {}).items())]
    if session_id is not None:
        wanted.append(f"{LABEL_SESSION}={session_id}")
    async with use_docker(docker) as client:
        with translated():
            images = await client.images.list(filters={"label": wanted})
    found = []
    for raw in images:
        info = _info(raw.get("Labels") or {}, created=str(raw.get("Created", "")))
        if info is not None and f"{SNAPSHOT_REPOSITORY}:{info.snapshot_id}" in (
            raw.get("RepoTags") or []
        ):
            found.append(info)
    return sorted(found, key=lambda s: (s.created, s.snapshot_id))


async def remove_snapshot(snapshot_id: str, *, docker: aiodocker.Docker | None = None) -> None:
    """Remove snapshot ``snapshot_id``: its image and its host directory.

    :class:`SandboxError` when there is no such snapshot, or when a container
    still uses its image (a sandbox started from it: close that first).
    """
    image = snapshot_image(snapshot_id)
    directory = snapshot_dir(snapshot_id)
    async with use_docker(docker) as client:
        try:
            info = await snapshot_info(snapshot_id, docker=client)
            directory = Path(info.directory)
        except SandboxError:
            if not await anyio.Path(directory).exists():
                raise
            info = None
        if info is not None:
            try:
                with translated():
                    # No force: a sandbox made from it keeps it; no prune of its parents
                    # is needed (a commit's only parent is the source's image).
                    await client.images.delete(image)
            except NotFound:
                pass  # removed meanwhile
            except Conflict as exc:
                raise SandboxError(
                    f"snapshot {snapshot_id} is in use by a container ({exc.message}); "
                    "close the sandbox started from it first"
                ) from exc
    await anyio.to_thread.run_sync(_remove_dir, directory)


def _remove_dir(directory: Path) -> None:
    if directory.parent != snapshots_root() or not directory.name.startswith(_ID_PREFIX):
        # A label may be forged by whoever made the image: only our own kind of directory.
        logger.warning("not removing %s: not a snapshot directory", directory)
        return
    shutil.rmtree(directory, ignore_errors=True)


async def remove_snapshots(
    docker: aiodocker.Docker,
    *,
    session_id: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> list[str]:
    """Remove every snapshot (filtered as :func:`list_snapshots` does) and, without a
    ``session_id``, the directories of snapshots whose image is gone
    (:func:`prune_snapshot_dirs`); the ids removed. One in use by a container is kept
    (logged)."""
    removed = []
    for info in await list_snapshots(docker=docker, session_id=session_id, labels=labels):
        try:
            await remove_snapshot(info.snapshot_id, docker=docker)
        except SandboxError as exc:
            logger.warning("keeping snapshot %s: %s", info.snapshot_id, exc)
            continue
        removed.append(info.snapshot_id)
    if session_id is None:
        removed += await prune_snapshot_dirs(docker)
    return removed


async def prune_snapshot_dirs(docker: aiodocker.Docker) -> list[str]:
    """Remove the snapshot directories whose image is gone (a snapshot that failed half
    way, or whose image was removed with ``docker rmi``); the ids removed."""
    root = anyio.Path(snapshots_root())
    if not await root.is_dir():
        return []
    known = {info.snapshot_id for info in await list_snapshots(docker=docker)}
    removed = []
    async for entry in root.iterdir():
        name = entry.name
        if name.startswith(_ID_PREFIX) and name not in known:
            # A snapshot being made has its directory before its image: only old debris.
            if await _younger_than(entry, seconds=_IN_PROGRESS_GRACE):
                continue
            await anyio.to_thread.run_sync(_remove_dir, Path(entry))
            removed.append(name)
    return removed


#: A directory without an image this young may be a snapshot still being made, seconds.
_IN_PROGRESS_GRACE = 600.0


async def _younger_than(path: anyio.Path, *, seconds: float) -> bool:
    try:
        return time.time() - (await path.stat()).st_mtime < seconds
    except OSError:
        return False
