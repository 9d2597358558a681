"""Snapshots of a Swarm sandbox: committed on its node, pushed to the registry.

The manager's API has no pause and no commit: those are the node's engine's.
Each node that may hold snapshotted sandboxes carries the label
:data:`ENGINE_NODE_LABEL`, its engine's URL as this host reaches it (a Unix
socket in the test cluster, ``tcp://…`` with TLS elsewhere). A snapshot:

1. waits until every action of the stream is answered, and reads the shell's
   working directory and exported environment through the channel (as on
   Docker, :mod:`openhands_rt.docker.snapshot`);
2. pauses the container, commits it to ``REGISTRY/openhands-rt/snapshot:<id>``
   (the workspace is the container's own on Swarm: the commit holds it, no
   separate archive), unpauses — on every way out;
3. pushes that image from the node (the nodes trust the registry) and keeps
   its digest;
4. writes a record on this host (``$XDG_DATA_HOME/openhands-rt/swarm-snapshots/<id>.json``,
   0600: the environment may hold secrets): the image by digest, the registry,
   the last event it holds, the shell's state;
5. appends the ``SnapshotObservation``, only now: from that event on, the
   snapshot can start a sandbox on any node.

``SwarmRuntime(..., snapshot=ID)`` (and ``fork(..., swarm=…)``, which picks the
latest usable one) starts a service from that image, the shell's state
handed to the server as a third secret. :func:`remove_swarm_snapshot` forgets
a snapshot on this host; the registry's manifest stays (deleting it needs the
registry's own delete API, an operator's choice).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiodocker
import anyio
import msgspec

from events import EventSource, EventStream, SnapshotObservation
from events.control import ShellState, encode_control
from openhands_rt import snapshots
from openhands_rt.channel import ChannelClient
from openhands_rt.docker.engine import EngineError, translated
from openhands_rt.docker.snapshot import ShellSnapshot, read_shell_state, until_idle
from openhands_rt.errors import SandboxError
from openhands_rt.swarm import engine as swarm_engine

__all__ = [
    "ENGINE_NODE_LABEL",
    "SNAPSHOT_REPOSITORY",
    "SwarmSnapshot",
    "list_swarm_snapshots",
    "read_swarm_snapshot",
    "remove_swarm_snapshot",
    "shell_secret",
    "take",
]

#: On a node: the URL of its engine as this host reaches it (pause, commit, push).
ENGINE_NODE_LABEL = "org.openhands-rt.engine"
SNAPSHOT_REPOSITORY = "openhands-rt/snapshot"


class SwarmSnapshot(msgspec.Struct, frozen=True):
    """What this host keeps of a swarm snapshot (its image is in the registry)."""

    snapshot_id: str
    image: str  # REGISTRY/openhands-rt/snapshot@sha256:…
    registry: str
    event_id: int
    session_id: str
    shell: ShellSnapshot | None = None


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(SwarmSnapshot)


def records_root() -> Path:
    """Where this host keeps its swarm snapshot records (next to the Docker snapshots)."""
    return snapshots.snapshots_root().parent / "swarm-snapshots"


def _record_path(snapshot_id: str) -> Path:
    snapshots.snapshot_image(snapshot_id)  # checks the id's form (no path tricks)
    return records_root() / f"{snapshot_id}.json"


def _write_record(record: SwarmSnapshot) -> None:
    root = records_root()
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = _record_path(record.snapshot_id)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(_encoder.encode(record))
    os.replace(tmp, path)


def _read_record(snapshot_id: str) -> SwarmSnapshot:
    try:
        data = _record_path(snapshot_id).read_bytes()
    except FileNotFoundError:
        raise SandboxError(f"no swarm snapshot {snapshot_id} on this host") from None
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise SandboxError(f"swarm snapshot {snapshot_id} is damaged: {exc}") from exc


async def read_swarm_snapshot(snapshot_id: str) -> SwarmSnapshot:
    """This host's record of swarm snapshot ``snapshot_id`` (:class:`SandboxError`: none)."""
    return await anyio.to_thread.run_sync(_read_record, snapshot_id)


def _list_records() -> list[SwarmSnapshot]:
    root = records_root()
    if not root.is_dir():
        return []
    found = []
    for path in sorted(root.glob("snap-*.json")):
        try:
            found.append(_decoder.decode(path.read_bytes()))
        except (OSError, msgspec.DecodeError):
            continue
    return found


async def list_swarm_snapshots(*, registry: str | None = None) -> list[SwarmSnapshot]:
    """The swarm snapshots this host made (``registry``: only those pushed there)."""
    records = await anyio.to_thread.run_sync(_list_records)
    return [r for r in records if registry is None or r.registry == registry]


async def remove_swarm_snapshot(snapshot_id: str) -> None:
    """Forget a swarm snapshot on this host (its registry manifest stays)."""
    path = _record_path(snapshot_id)
    await anyio.to_thread.run_sync(lambda: path.unlink(missing_ok=True))


def shell_secret(record: SwarmSnapshot) -> bytes | None:
    """The server's ``--shell-state`` file for a sandbox started from ``record``."""
    if record.shell is None:
        return None
    return encode_control(ShellState(cwd=record.shell.cwd, env=dict(record.shell.env)))


async def take(
    node: aiodocker.Docker,
    container_id: str,
    *,
    stream: EventStream,
    channel: ChannelClient,
    session_id: str,
    registry: str,
    auth: swarm_engine.RegistryAuth | None = None,
    facts: Mapping[str, Any],
) -> SnapshotObservation:
    """Snapshot the sandbox whose container is ``container_id`` on the engine ``node``
    (see the module docstring); the event appended."""
    event_id = await until_idle(stream)
    shell, why_not = await read_shell_state(channel)
    snapshot_id = snapshots.new_snapshot_id()
    repository = f"{registry}/{SNAPSHOT_REPOSITORY}"
    labels = {
        snapshots.LABEL_SNAPSHOT: snapshot_id,
        snapshots.LABEL_SNAPSHOT_EVENT: str(event_id),
        snapshots.LABEL_SNAPSHOT_FACTS: json.dumps(dict(facts), sort_keys=True),
        snapshots.LABEL_RUNTIME_MODE: "build",
    }
    container = node.containers.container(container_id)
    try:
        with translated():
            await container.pause()
        try:
            with translated():
                await container.commit(
                    repository=repository,
                    tag=snapshot_id,
                    config={"Labels": labels},
                    pause=False,
                )
        finally:
            with anyio.CancelScope(shield=True), translated():
                await container.unpause()
        image = await swarm_engine.push_image(
            node,
            repository,
            snapshot_id,
            auth_header=swarm_engine.auth_header(auth, registry),
        )
    except EngineError as exc:
        raise SandboxError(f"snapshot of sandbox {session_id} failed: {exc.message}") from exc
    record = SwarmSnapshot(
        snapshot_id=snapshot_id,
        image=image,
        registry=registry,
        event_id=event_id,
        session_id=session_id,
        shell=shell,
    )
    await anyio.to_thread.run_sync(_write_record, record)
    content = f"snapshot {snapshot_id} of sandbox {session_id} after event {event_id}"
    if shell is None:
        content += f"; without the shell's state ({why_not})"
    return stream.append(
        SnapshotObservation(snapshot_id, content=content), source=EventSource.ENVIRONMENT
    )
