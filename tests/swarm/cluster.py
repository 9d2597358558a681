"""A real three-node Docker Swarm made by the tests (issue 19; docs/scale-out.md, section 2).

``open_swarm_cluster()`` builds, on the host's engine:

1. the node image (node_image.py), kept between sessions;
2. a bridge network of its own (``ohrt-test-swarm-<run>``), whose gateway is the
   host's address for the nodes;
3. a registry (registry_process.py), a host process listening on that gateway;
4. the nodes: Docker-in-Docker containers on the network, each with its engine's
   socket in a host directory bound into it (the host talks to a node only
   through ``unix://<dir>/docker.sock``, never a TCP engine port) and its
   ``/var/lib/docker`` on a volume of its own (overlay2 cannot have its upper
   directories on the node container's own overlay root);
5. images loaded from the host's engine into node 1 (save → load), pushed from
   there to the registry when asked (node 1 has the registry as an insecure
   registry; the host's engine does not, and is not ours to reconfigure);
6. the swarm: node 1 the one manager, the others workers (a worker can be
   killed and restarted by the tests while the manager, and so the swarm's
   state, lives on).

Every object carries the run's labels, and its undo is registered in an
``AsyncExitStack`` as soon as it exists: a failure (or a cancellation: Ctrl-C)
at any step tears down exactly what was made. ``leftovers()`` says what, of a
run, is still there; ``sweep()`` removes it by label and name (the last resort
of a session that could not unwind).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiodocker
import anyio
from aiodocker.exceptions import DockerError
from aiodocker.volumes import DockerVolume
from node_image import NODE_SOCKET_DIR, ensure_node_image
from registry_process import RegistryProcess, start_registry

from openhands_rt.docker.engine import EngineError
from openhands_rt.docker.lifecycle import demultiplex_lines
from openhands_rt.docker_client import open_docker
from openhands_rt.swarm.engine import (
    RegistryAuth,
    auth_header,
    copy_image,
    engine_events,
    engine_request,
    push_image,
    read_json_stream,
)

__all__ = [
    "NAME_PREFIX",
    "RUN_LABEL",
    "SwarmCluster",
    "SwarmNode",
    "engine_events",
    "engine_request",
    "leftovers",
    "open_swarm_cluster",
    "sweep",
]

logger = logging.getLogger(__name__)

#: The label of a test run (the Docker suite's key): every object of a cluster carries it.
RUN_LABEL = "org.openhands-rt.test-run"
#: Every container, network and volume of a cluster is named ``NAME_PREFIX + run id + ...``.
NAME_PREFIX = "ohrt-test-swarm-"


@dataclass
class SwarmNode:
    """One node: its container on the host's engine and its engine's socket."""

    index: int
    container_name: str
    container_id: str
    hostname: str
    address: str
    socket_dir: Path
    volume: str
    swarm_id: str = ""
    #: How many times its dockerd was started (each prints one "API listen on" line).
    starts: int = 0

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket_dir}/docker.sock"


@dataclass
class SwarmCluster:
    """A running cluster. ``manager`` is node 1's engine URL; ``registry`` is ``HOST:PORT``."""

    run_id: str
    labels: dict[str, str]
    node_image: str
    network_id: str
    network_name: str
    gateway: str
    registry: str
    registry_pid: int
    #: The registry's credentials (it refuses every request without them).
    registry_auth: RegistryAuth
    tmp: Path
    nodes: list[SwarmNode] = field(default_factory=list)
    #: Seconds: node image build (0 when it existed), network, registry, nodes, swarm, images.
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def manager(self) -> str:
        return self.nodes[0].docker_host

    def node(self, index: int) -> SwarmNode:
        """Node ``index`` (1-based, as named)."""
        return self.nodes[index - 1]

    def engine(self, index: int) -> contextlib.AbstractAsyncContextManager[aiodocker.Docker]:
        """An aiodocker client on node ``index``'s engine (through its socket)."""
        return open_docker(self.node(index).docker_host)

    async def kill(self, index: int) -> None:
        """Kill node ``index``'s container: its engine and everything on it die at once."""
        async with open_docker() as host:
            await host.containers.container(self.node(index).container_id).kill()

    async def start(self, index: int) -> None:
        """Start node ``index`` again after ``kill``; returns when the manager sees it ready."""
        node = self.node(index)
        async with (
            open_docker() as host,
            self.engine(1) as manager,
            engine_events(manager, {"type": ["node"]}) as events,
        ):
            await _start_node(host, node)
            await _until(manager, events, lambda nodes: _state(nodes, node.swarm_id) == "ready")

    async def wait_node_state(self, index: int, *states: str) -> dict[str, Any]:
        """Wait until the manager reports node ``index`` in one of ``states``; its
        ``/nodes`` entry then. Reads node events, re-reading ``/nodes`` on each."""
        node = self.node(index)
        async with self.engine(1) as manager, engine_events(manager, {"type": ["node"]}) as events:
            nodes = await _until(
                manager, events, lambda nodes: _state(nodes, node.swarm_id) in states
            )
        return next(n for n in nodes if n["ID"] == node.swarm_id)

    async def load(self, image: str, index: int = 1) -> str:
        """Copy ``image`` from the host's engine into node ``index`` (save → load);
        the image's id."""
        async with open_docker() as host, self.engine(index) as engine:
            await copy_image(host, engine, image)
            return str((await engine.images.inspect(image))["Id"])

    async def push(self, image: str, repository: str, tag: str) -> str:
        """Push ``image`` (on node 1) to the registry as ``repository:tag``; the
        registry reference ``REGISTRY/repository:tag``."""
        ref = f"{self.registry}/{repository}"
        async with self.engine(1) as engine:
            await engine.images.tag(image, ref, tag=tag)
            await push_image(
                engine, ref, tag, auth_header=auth_header(self.registry_auth, self.registry)
            )
        return f"{ref}:{tag}"

    async def pull(self, index: int, ref: str) -> dict[str, Any]:
        """Pull ``ref`` (``REGISTRY/repository:tag``) on node ``index``; its inspect data."""
        repository, _, tag = ref.rpartition(":")
        async with self.engine(index) as engine:
            async with engine_request(
                engine,
                "images/create",
                "POST",
                params={"fromImage": repository, "tag": tag},
                headers={"X-Registry-Auth": auth_header(self.registry_auth, self.registry)},
            ) as response:
                await read_json_stream(response)
            return dict(await engine.images.inspect(ref))


def _state(nodes: list[Any], node_id: str) -> str | None:
    for n in nodes:
        if n["ID"] == node_id:
            return str(n["Status"]["State"])
    return None


async def _until(
    manager: aiodocker.Docker,
    events: AsyncIterator[dict[str, Any]],
    done: Callable[[list[Any]], bool],
) -> list[Any]:
    """``GET /nodes`` now and after each node event until ``done`` holds."""
    nodes: list[Any] = await manager.nodes.list()
    if done(nodes):
        return nodes
    async for _ in events:
        nodes = await manager.nodes.list()
        if done(nodes):
            return nodes
    raise RuntimeError("the manager's event stream ended")


async def _start_node(host: aiodocker.Docker, node: SwarmNode) -> None:
    """Start the node's container and wait for its dockerd's "API listen on" line
    (one per start: the log keeps those of earlier starts), then ``/_ping``."""
    await host.containers.container(node.container_id).start()
    node.starts += 1
    buffer = b""
    with anyio.fail_after(60):
        async with engine_request(
            host,
            f"containers/{node.container_id}/logs",
            params={"follow": "1", "stdout": "1", "stderr": "1"},
        ) as response:
            async for chunk in response.content.iter_any():
                buffer += chunk
                lines = demultiplex_lines(buffer)
                if sum(b"API listen on" in line for line in lines) >= node.starts:
                    break
            else:
                tail = b"\n".join(demultiplex_lines(buffer)[-30:]).decode(errors="replace")
                raise RuntimeError(f"{node.container_name}'s dockerd exited:\n{tail}")
    async with open_docker(node.docker_host):
        pass  # open_docker asks the engine for its version: it answers on the socket


async def _create_node(
    host: aiodocker.Docker,
    stack: AsyncExitStack,
    *,
    index: int,
    run_id: str,
    image: str,
    network: str,
    registry: str,
    tmp: Path,
    labels: dict[str, str],
) -> SwarmNode:
    name = f"{NAME_PREFIX}{run_id}-node-{index}"
    socket_dir = tmp / f"node-{index}"
    socket_dir.mkdir()
    volume = await host.volumes.create({"Name": name, "Labels": labels})
    stack.push_async_callback(_shielded, volume.delete)
    config: dict[str, Any] = {
        "Image": image,
        "Hostname": f"node-{index}",
        "Cmd": ["--insecure-registry", registry],
        "Labels": labels,
        "HostConfig": {
            # --privileged fails here (the VM's bounding set lacks CAP_SYS_RESOURCE).
            "CapAdd": ["ALL"],
            "CapDrop": ["SYS_RESOURCE"],
            "SecurityOpt": ["seccomp=unconfined", "apparmor=unconfined"],
            # The CLI's "--security-opt systempaths=unconfined" is no option of the
            # API: it is these two fields, empty (nothing masked, nothing read-only).
            "MaskedPaths": [],
            "ReadonlyPaths": [],
            "CgroupnsMode": "private",
            "DeviceCgroupRules": ["a *:* rwm"],
            "Binds": [f"{socket_dir}:{NODE_SOCKET_DIR}", f"{name}:/var/lib/docker"],
            "NetworkMode": network,
        },
    }
    container = await host.containers.create(config, name=name)
    stack.push_async_callback(_shielded, _remove_container, host, container.id)
    node = SwarmNode(
        index=index,
        container_name=name,
        container_id=container.id,
        hostname=f"node-{index}",
        address="",
        socket_dir=socket_dir,
        volume=name,
    )
    await _start_node(host, node)
    info = await container.show()
    node.address = str(info["NetworkSettings"]["Networks"][network]["IPAddress"])
    return node


async def _remove_container(host: aiodocker.Docker, container_id: str) -> None:
    try:
        await host.containers.container(container_id).delete(force=True, v=True)
    except DockerError as exc:
        if exc.status != 404:
            raise


async def _shielded(undo: Callable[..., Any], *args: Any) -> None:
    with anyio.CancelScope(shield=True):
        try:
            await undo(*args)
        except DockerError as exc:
            if exc.status != 404:
                logger.warning("test cluster teardown: %s", exc.message)


async def _form_swarm(cluster: SwarmCluster) -> None:
    first = cluster.nodes[0]
    async with cluster.engine(1) as manager:
        first.swarm_id = await manager.swarm.init(
            advertise_addr=first.address, listen_addr="0.0.0.0:2377"
        )
        # swarm.init answers with the node id (a JSON string).
        first.swarm_id = first.swarm_id.strip('"')
        token = (await manager.swarm.inspect())["JoinTokens"]["Worker"]
        async with engine_events(manager, {"type": ["node"]}) as events:

            async def join(node: SwarmNode) -> None:
                async with open_docker(node.docker_host) as engine:
                    await engine.swarm.join(
                        remote_addrs=[f"{first.address}:2377"],
                        join_token=token,
                        advertise_addr=node.address,
                        listen_addr="0.0.0.0:2377",
                    )
                    node.swarm_id = str((await engine.system.info())["Swarm"]["NodeID"])

            async with anyio.create_task_group() as tg:
                for node in cluster.nodes[1:]:
                    tg.start_soon(join, node)
            wanted = {n.swarm_id for n in cluster.nodes}
            await _until(
                manager,
                events,
                lambda nodes: {n["ID"] for n in nodes if n["Status"]["State"] == "ready"} >= wanted,
            )
        # Where a node's own engine is, for snapshots (docs/scale-out.md 1.8).
        for node in cluster.nodes:
            current = await manager.nodes.inspect(node_id=node.swarm_id)
            spec = dict(current["Spec"])
            spec["Labels"] = {
                **(spec.get("Labels") or {}),
                "org.openhands-rt.engine": node.docker_host,
            }
            await manager.nodes.update(
                node_id=node.swarm_id, version=current["Version"]["Index"], spec=spec
            )


async def _leave_swarm(cluster: SwarmCluster) -> None:
    """Workers first, the manager last; a dead node is simply skipped."""
    for node in reversed(cluster.nodes):
        if not node.swarm_id:
            continue
        with (
            anyio.move_on_after(10),
            contextlib.suppress(DockerError, EngineError, OSError, RuntimeError),
        ):
            async with open_docker(node.docker_host) as engine:
                await engine.swarm.leave(force=True)


@asynccontextmanager
async def open_swarm_cluster(
    *,
    run_id: str,
    labels: Mapping[str, str],
    base_image: str,
    images: Sequence[str] = (),
    size: int = 3,
    setup_timeout: float = 600,
) -> AsyncIterator[SwarmCluster]:
    """Make a cluster of ``size`` nodes (``images`` loaded into node 1), yield it,
    and tear everything down on the way out, whatever the way out is."""
    labels = dict(labels)
    async with AsyncExitStack() as stack:
        host = await stack.enter_async_context(open_docker())
        with anyio.fail_after(setup_timeout):
            started = time.monotonic()
            node_image, built = await ensure_node_image(host, base_image)
            timings = {"node image build": built}
            mark = time.monotonic()
            tmp = Path(tempfile.mkdtemp(prefix=f"ohrt-swarm-{run_id}-"))
            stack.callback(shutil.rmtree, tmp, ignore_errors=True)
            network_name = f"{NAME_PREFIX}{run_id}"
            network = await host.networks.create(
                {"Name": network_name, "Driver": "bridge", "Labels": labels}
            )
            stack.push_async_callback(_shielded, network.delete)
            network_info = await network.show()
            gateway = str(network_info["IPAM"]["Config"][0]["Gateway"])
            registry: RegistryProcess = await start_registry(gateway, tmp / "registry")
            stack.push_async_callback(_shielded, registry.stop)
            timings["network and registry"] = time.monotonic() - mark
            cluster = SwarmCluster(
                run_id=run_id,
                labels=labels,
                node_image=node_image,
                network_id=network.id,
                network_name=network_name,
                gateway=gateway,
                registry=registry.address,
                registry_pid=registry.pid,
                registry_auth=RegistryAuth(*registry.credentials),
                tmp=tmp,
                timings=timings,
            )
            mark = time.monotonic()

            async def create(index: int) -> None:
                cluster.nodes.append(
                    await _create_node(
                        host,
                        stack,
                        index=index,
                        run_id=run_id,
                        image=node_image,
                        network=network_name,
                        registry=registry.address,
                        tmp=tmp,
                        labels=labels,
                    )
                )

            async with anyio.create_task_group() as tg:
                for index in range(1, size + 1):
                    tg.start_soon(create, index)
            cluster.nodes.sort(key=lambda n: n.index)
            timings["nodes started"] = time.monotonic() - mark
            mark = time.monotonic()
            for image in images:
                await cluster.load(image)
            timings["images loaded"] = time.monotonic() - mark
            mark = time.monotonic()
            stack.push_async_callback(_leave_swarm, cluster)
            await _form_swarm(cluster)
            timings["swarm formed"] = time.monotonic() - mark
            timings["cluster ready (total)"] = time.monotonic() - started
        yield cluster


def _named(run_id: str, items: list[dict[str, Any]], key: str) -> list[str]:
    prefix = f"{NAME_PREFIX}{run_id}"
    return [
        str(item[key]).lstrip("/")
        for item in items
        if str(item[key]).lstrip("/").startswith(prefix)
    ]


async def leftovers(
    run_id: str,
    label: str,
    *,
    tmp: Path | None = None,
    registry_pid: int | None = None,
    registry: str | None = None,
    network_id: str | None = None,
) -> list[str]:
    """What of cluster ``run_id`` is still there (``label`` is ``KEY=VALUE``): containers,
    networks and volumes by label *and* by name (a forgotten label must not hide a
    leak), the temporary directory, the registry process and its port, the bridge."""
    found: list[str] = []
    async with open_docker() as host:
        containers = await host.containers.list(all=True)
        for c in containers:
            names = [n.lstrip("/") for n in c._container.get("Names", [])]
            labels = c._container.get("Labels") or {}
            key, _, value = label.partition("=")
            if labels.get(key) == value or any(n.startswith(NAME_PREFIX + run_id) for n in names):
                found.append(f"container {names or c.id}")
        networks = await host.networks.list()
        found += [f"network {n}" for n in _named(run_id, networks, "Name")]
        found += [
            f"network {n['Name']}"
            for n in await host.networks.list(filters={"label": [label]})
            if f"network {n['Name']}" not in found
        ]
        volumes = (await host.volumes.list())["Volumes"] or []
        found += [f"volume {v}" for v in _named(run_id, volumes, "Name")]
        found += [
            f"volume {v['Name']}"
            for v in (await host.volumes.list(filters={"label": [label]}))["Volumes"] or []
            if f"volume {v['Name']}" not in found
        ]
    if tmp is not None and tmp.exists():
        found.append(f"directory {tmp}")
    if registry_pid is not None and Path(f"/proc/{registry_pid}").exists():
        cmdline = Path(f"/proc/{registry_pid}/cmdline").read_bytes()
        if b"docker-registry" in cmdline:
            found.append(f"registry process {registry_pid}")
    if registry is not None:
        host_part, _, port = registry.rpartition(":")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            if s.connect_ex((host_part, int(port))) == 0:
                found.append(f"something listens on {registry}")
    if network_id is not None and os.path.exists(f"/sys/class/net/br-{network_id[:12]}"):
        found.append(f"bridge br-{network_id[:12]}")
    return found


async def sweep(run_id: str, label: str) -> list[str]:
    """Remove, by ``label`` and by name, every container, volume and network of
    cluster run ``run_id``; what could not be removed."""
    failures: list[str] = []
    async with open_docker() as host:
        for c in await host.containers.list(all=True):
            names = [n.lstrip("/") for n in c._container.get("Names", [])]
            key, _, value = label.partition("=")
            if (c._container.get("Labels") or {}).get(key) == value or any(
                n.startswith(NAME_PREFIX + run_id) for n in names
            ):
                try:
                    await c.delete(force=True, v=True)
                except DockerError as exc:
                    failures.append(f"container {names}: {exc.message}")
        volumes = (await host.volumes.list())["Volumes"] or []
        for name in _named(run_id, volumes, "Name"):
            try:
                await DockerVolume(host, name).delete()
            except DockerError as exc:
                failures.append(f"volume {name}: {exc.message}")
        for name in _named(run_id, await host.networks.list(), "Name"):
            try:
                await (await host.networks.get(name)).delete()
            except DockerError as exc:
                failures.append(f"network {name}: {exc.message}")
    return failures
