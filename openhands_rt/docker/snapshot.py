"""Snapshots of a sandbox container: capture, and filling a new container from one.

Capture (:func:`capture`): the container is **paused** (its processes frozen
by the cgroup freezer, or gVisor's sandbox stopped), **committed** to the
snapshot image without a second pause, and its ``/workspace`` — a bind mount,
which a commit does not see — is **archived** into the snapshot's directory,
still paused, so that both halves are the same instant: on the host, from the
bound directory (a tenth of the engine's time for the same tar), or by the
engine, as root, when this user cannot read all of it or when the workspace is
the container's own.
The container is unpaused on every way out, cancellation included. What a
commit keeps: every file of the container's own layer — under runc, and under
gVisor (runsc) too, whose root file system writes go through its gofer to the
layer (this host's gVisor, 2022-12; later ones keep the root file system's
changes in an overlay of their own, ``--overlay2``, out of a commit's sight,
unless the runtime is registered with ``--overlay2=none``); what it cannot: tmpfs mounts (a
``read_only_root`` sandbox's /tmp, home and workspace; under runsc, /tmp,
where gVisor mounts a tmpfs of its own when the image's /tmp is empty), bind
mounts other than the workspace (the run directory, the mount-mode bundle:
both made afresh), processes and their memory (a snapshot's sandbox starts
its own; a paused one's go on after the unpause).

Restore (:func:`fill_workspace`): the workspace archive is put into the
created, not yet started container at ``/``; the engine extracts it as root
through the container's mounts, so that a bound workspace gets the files with
their owners and modes.

The shell's state goes through :func:`read_shell_state` and
:func:`write_shell_state`, the one place that knows how the server is asked
for it and started with it.
"""

from __future__ import annotations

import json
import logging
import shutil
import tarfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

import aiodocker
import anyio
import msgspec

from events import Event, EventSource, EventStream, Observation, SnapshotObservation
from events.control import ShellState
from events.wire import is_runnable
from openhands_rt import snapshots
from openhands_rt.channel import ChannelClient
from openhands_rt.docker import rundir
from openhands_rt.docker.engine import EngineError, NotFound, translated
from openhands_rt.errors import SandboxError

__all__ = [
    "WORKSPACE_IN_CONTAINER",
    "ShellSnapshot",
    "capture",
    "decode_shell",
    "encode_shell",
    "fill_workspace",
    "read_shell_state",
    "take",
    "unanswered",
    "until_idle",
    "write_shell_state",
]

logger = logging.getLogger(__name__)

WORKSPACE_IN_CONTAINER = "/workspace"
_CHUNK = 1 << 20


def unanswered(events: Iterable[Event], pending: set[int] | None = None) -> set[int]:
    """Ids of the runnable actions in ``events`` that no observation answers (pure).

    ``pending``: the set to update (from an earlier part of the same stream).
    """
    pending = set() if pending is None else pending
    for event in events:
        if is_runnable(event):
            pending.add(event.id)
        elif isinstance(event, Observation) and event.cause is not None:
            pending.discard(event.cause)
    return pending


async def until_idle(stream: EventStream) -> int:
    """Wait until every runnable action of ``stream`` has its observation; the id of the
    last event then (-1: an empty stream). Woken by the stream's own appends."""
    end = len(stream)
    pending = unanswered(stream.iter_events(0, end - 1) if end else ())
    if pending:
        async for event in stream.follow(end):
            unanswered((event,), pending)
            if not pending and len(stream) == event.id + 1:
                break
    return len(stream) - 1


async def capture(
    docker: aiodocker.Docker,
    container: Any,
    *,
    image: str,
    labels: Mapping[str, str],
    workspace_archive: Path,
    workspace_dir: str | None,
) -> None:
    """Pause ``container``, commit it as ``image`` (``repository:tag``) with ``labels``
    added to its own, archive its /workspace into ``workspace_archive``, unpause.

    ``workspace_dir``: the host directory bound at /workspace, archived on the host
    (ten times faster than the engine's archive request, see :func:`_archive_on_host`);
    None: the engine archives the container's own /workspace.

    Raises :class:`~openhands_rt.docker.engine.EngineError` or ``OSError``; the
    caller removes what a failure left (the image, the file).
    """
    repository, _, tag = image.rpartition(":")
    with translated():
        await container.pause()
    try:
        with translated():
            # The engine merges these labels into the container's own (Config.Labels).
            await container.commit(
                repository=repository,
                tag=tag,
                config={"Labels": dict(labels)},
                pause=False,
            )
        if workspace_dir is None or not await anyio.to_thread.run_sync(
            _archive_on_host, workspace_dir, workspace_archive
        ):
            await _save_archive(docker, container.id, WORKSPACE_IN_CONTAINER, workspace_archive)
    finally:
        # A frozen sandbox is useless: unpaused whatever happened, cancellation included.
        with anyio.CancelScope(shield=True), translated():
            await container.unpause()


def _archive_on_host(directory: str, target: Path) -> bool:
    """Archive ``directory`` as ``workspace/`` into ``target`` as the engine would (owners,
    modes, times, links; sockets left out); False when this user cannot read all of it
    (the agent's mode-000 file, root's files of a ``run_as_root`` sandbox): then the
    engine, which reads as root, must."""
    try:
        with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as tar:
            tar.add(directory, arcname=WORKSPACE_IN_CONTAINER.lstrip("/"))
    except PermissionError as exc:
        logger.info("archiving %s through the engine: %s", directory, exc)
        return False
    return True


async def _save_archive(
    docker: aiodocker.Docker, container_id: str, path: str, target: Path
) -> None:
    """Stream the engine's tar of ``path`` in the container into the file ``target``."""
    with translated():
        async with (
            docker._query(f"containers/{container_id}/archive", params={"path": path}) as response,
            await anyio.open_file(target, "wb") as out,
        ):
            async for chunk in response.content.iter_chunked(_CHUNK):
                await out.write(chunk)


async def fill_workspace(container: Any, workspace_archive: Path) -> None:
    """Extract ``workspace_archive`` (from :func:`capture`) into the created container
    ``container`` before it starts: its /workspace, bound or not, owners and modes kept."""
    # A file object: aiohttp streams it, reading through its executor.
    archive = await anyio.to_thread.run_sync(open, workspace_archive, "rb")
    try:
        with translated():
            await container.put_archive("/", archive)
    finally:
        archive.close()


# ---------------------------------------------------------------------- the shell's state


class ShellSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """The shell's working directory and exported environment, as a snapshot keeps them
    (``shell.json``; our own file, independent of the channel's frames)."""

    cwd: str
    env: dict[str, str]


_shell_encoder: Final = msgspec.json.Encoder()
_shell_decoder: Final = msgspec.json.Decoder(ShellSnapshot)


def encode_shell(state: ShellSnapshot) -> bytes:
    return _shell_encoder.encode(state)


def decode_shell(data: bytes) -> ShellSnapshot:
    """Decode ``shell.json``; ``ValueError`` when it is not one."""
    try:
        return _shell_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ValueError(f"not a snapshot's shell state: {exc}") from exc


async def read_shell_state(channel: ChannelClient) -> tuple[ShellSnapshot | None, str]:
    """The shell's state between actions (the channel's shell-state request), or None and
    why it could not be read (a command still running in the foreground, ...)."""
    try:
        state = await channel.shell_state()
    except SandboxError as exc:
        return None, str(exc)
    return ShellSnapshot(cwd=state.cwd, env=dict(state.env)), ""


def write_shell_state(run_dir: str, state: ShellSnapshot) -> None:
    """Make the server of the sandbox with ``run_dir`` start its shell in ``state``
    (before the container starts; blocking: call it through a thread)."""
    rundir.write_shell_state(run_dir, ShellState(cwd=state.cwd, env=dict(state.env)))


# ---------------------------------------------------------------------- the whole of it


async def take(
    docker: aiodocker.Docker,
    container: Any,
    *,
    stream: EventStream,
    channel: ChannelClient,
    session_id: str,
    runtime_mode: str,
    workspace_dir: str | None,
    facts: Mapping[str, object],
) -> SnapshotObservation:
    """Snapshot the sandbox ``container`` whose actions come from ``stream`` (see
    :meth:`~openhands_rt.docker.runtime.DockerRuntime.snapshot`); the event appended."""
    event_id = await until_idle(stream)
    shell, why_not = await read_shell_state(channel)
    snapshot_id = snapshots.new_snapshot_id()
    directory = snapshots.snapshot_dir(snapshot_id)
    image = snapshots.snapshot_image(snapshot_id)
    labels = {
        snapshots.LABEL_SNAPSHOT: snapshot_id,
        snapshots.LABEL_SNAPSHOT_EVENT: str(event_id),
        snapshots.LABEL_SNAPSHOT_DIR: str(directory),
        snapshots.LABEL_SNAPSHOT_FACTS: json.dumps(dict(facts), sort_keys=True),
        snapshots.LABEL_RUNTIME_MODE: runtime_mode,
    }
    await anyio.to_thread.run_sync(_make_dir, directory)
    try:
        await capture(
            docker,
            container,
            image=image,
            labels=labels,
            workspace_archive=directory / snapshots.WORKSPACE_FILE,
            workspace_dir=workspace_dir,
        )
        if shell is not None:
            await anyio.Path(directory / snapshots.SHELL_FILE).write_bytes(encode_shell(shell))
    except BaseException as exc:
        with anyio.CancelScope(shield=True):
            await _discard(docker, image, directory)
        if isinstance(exc, EngineError | OSError):
            raise SandboxError(f"snapshot of sandbox {session_id} failed: {exc}") from exc
        raise
    content = f"snapshot {snapshot_id} of sandbox {session_id} after event {event_id}"
    if shell is None:
        logger.warning("snapshot %s: without the shell's state: %s", snapshot_id, why_not)
        content += f"; without the shell's state ({why_not})"
    return stream.append(
        SnapshotObservation(snapshot_id, content=content), source=EventSource.ENVIRONMENT
    )


def _make_dir(directory: Path) -> None:
    directory.parent.mkdir(parents=True, exist_ok=True)
    # Private: the workspace may hold anything, the environment secrets.
    directory.mkdir(mode=0o700)


async def _discard(docker: aiodocker.Docker, image: str, directory: Path) -> None:
    try:
        with translated():
            await docker.images.delete(image, force=True)
    except EngineError as exc:
        if not isinstance(exc, NotFound):
            logger.warning("could not remove the failed snapshot's image %s: %s", image, exc)
    await anyio.to_thread.run_sync(shutil.rmtree, directory, True)
