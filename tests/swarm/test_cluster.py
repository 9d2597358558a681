"""The test cluster itself (issue 19; docs/scale-out.md sections 2 and 5).

Raw Engine API calls through aiodocker on the nodes' sockets: the cluster forms,
the registry serves the nodes, a service shaped like a sandbox (one replica,
``RestartPolicy: none``, ``--endpoint-mode dnsrr``, a host-mode published port,
no networks) answers on its node's address, a killed node is reported down, and
the design's open questions 1, 3, 4, 5 and 6 are settled here by experiment (the
answers are in the tests' comments).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiodocker
import aiohttp
import anyio
import pytest
import pytest_asyncio
from aiodocker.exceptions import DockerError
from cluster import (
    RUN_LABEL,
    SwarmCluster,
    engine_events,
    engine_request,
    leftovers,
    open_swarm_cluster,
)
from registry_process import basic_auth

from openhands_rt.docker.engine import NotFound
from openhands_rt.swarm.engine import auth_header

pytestmark = [
    pytest.mark.docker,
    pytest.mark.swarm,
    pytest.mark.slow,
    pytest.mark.asyncio(loop_scope="session"),
    # The first test pays for the cluster (and, once per recipe, its node image).
    pytest.mark.timeout(900),
]

SERVER_PORT = 8000
BASE_REPOSITORY = "openhands-rt/base"


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def registry_base_image(swarm_cluster: SwarmCluster, swarm_base_image: str) -> str:
    """The base image pushed to the cluster's registry (from node 1)."""
    return await swarm_cluster.push(swarm_base_image, BASE_REPOSITORY, "bookworm")


def pull_auth(cluster: SwarmCluster) -> str:
    return auth_header(cluster.registry_auth, cluster.registry)


async def tasks_of(manager: aiodocker.Docker, service_id: str) -> list[Any]:
    return list(await manager.tasks.list(filters={"service": service_id}))


@asynccontextmanager
async def http_service(
    manager: aiodocker.Docker,
    image: str,
    *,
    constraints: list[str],
    labels: dict[str, str],
    registry_auth: str,
) -> AsyncIterator[tuple[str, dict[str, Any], float, float]]:
    """A service shaped like a sandbox, serving its node's hostname over HTTP; yields
    its id, its running task, the seconds from create to the server's line in the
    service's log, and from that line to the manager's ``running``. Removed on the
    way out. ``registry_auth``: the ``X-Registry-Auth`` value the node pulls with."""
    name = "ohrt-test-" + uuid.uuid4().hex[:10]
    spec: dict[str, Any] = {
        "Name": name,
        "Labels": labels,
        "TaskTemplate": {
            "ContainerSpec": {
                "Image": image,
                # A Swarm template: the container's hostname is its node's.
                "Hostname": "{{.Node.Hostname}}",
                "Command": ["sh", "-c"],
                "Args": [
                    "mkdir -p /srv && hostname > /srv/index.html && cd /srv "
                    f"&& exec python3 -u -m http.server {SERVER_PORT}"
                ],
                "Labels": labels,
            },
            "RestartPolicy": {"Condition": "none"},
            "Placement": {"Constraints": constraints},
        },
        "Mode": {"Replicated": {"Replicas": 1}},
        # Question 5: dnsrr with a host-mode port and no networks is accepted on 20.10
        # (the 1.41 swagger says published ports need vip; the engine does not check
        # it for host mode).
        "EndpointSpec": {
            "Mode": "dnsrr",
            "Ports": [{"Protocol": "tcp", "TargetPort": SERVER_PORT, "PublishMode": "host"}],
        },
    }
    started = time.monotonic()
    created = await manager._query_json(
        "services/create", "POST", data=spec, headers={"X-Registry-Auth": registry_auth}
    )
    service_id = str(created["ID"])
    try:
        with anyio.fail_after(120):
            async with engine_request(
                manager,
                f"services/{service_id}/logs",
                params={"follow": "1", "stdout": "1", "stderr": "1"},
            ) as response:
                async for raw in response.content:
                    if b"Serving HTTP" in raw:
                        break
                else:
                    raise AssertionError("the service's log ended before its server started")
        ready = time.monotonic() - started
        with anyio.fail_after(60):
            task = await running_task(manager, service_id)
        reported = time.monotonic() - started - ready
        yield service_id, task, ready, reported
    finally:
        with anyio.CancelScope(shield=True):
            await manager.services.delete(service_id)


async def running_task(manager: aiodocker.Docker, service_id: str) -> dict[str, Any]:
    """The service's one task, once the manager has it ``running``.

    Question 2: the server's line reaches the service log *before* the manager has
    the task's state ``running`` (the node's agent reports states in batches), so
    the log line alone does not give the endpoint."""
    return await task_in_state(manager, service_id, "running")


async def task_in_state(manager: aiodocker.Docker, service_id: str, state: str) -> dict[str, Any]:
    """The service's one task once the manager reports it in ``state``. No event
    reports a task's state (the Engine API has no task events), so this reads the
    tasks with a short backoff: the one poll of these tests, for want of an event."""
    delay = 0.02
    while True:
        tasks = await tasks_of(manager, service_id)
        assert len(tasks) == 1, [(t["ID"], t["Status"]) for t in tasks]
        if tasks[0]["Status"]["State"] == state:
            return dict(tasks[0])
        await anyio.sleep(delay)
        delay = min(delay * 2, 0.5)


def node_index(cluster: SwarmCluster, swarm_id: str) -> int:
    return next(n.index for n in cluster.nodes if n.swarm_id == swarm_id)


async def test_the_cluster_forms(swarm_cluster: SwarmCluster, say: Callable[[str], None]) -> None:
    async with swarm_cluster.engine(1) as manager:
        nodes = await manager.nodes.list()
    by_id = {n["ID"]: n for n in nodes}
    assert set(by_id) == {node.swarm_id for node in swarm_cluster.nodes}
    assert {n["Status"]["State"] for n in nodes} == {"ready"}
    roles = {n["Description"]["Hostname"]: n["Spec"]["Role"] for n in nodes}
    assert roles == {"node-1": "manager", "node-2": "worker", "node-3": "worker"}
    for node in swarm_cluster.nodes:
        entry = by_id[node.swarm_id]
        assert entry["Description"]["Hostname"] == node.hostname
        assert entry["Spec"]["Labels"]["org.openhands-rt.engine"] == node.docker_host
        say(f"{node.hostname}: Status.Addr {entry['Status']['Addr']}, address {node.address}")
        async with swarm_cluster.engine(node.index) as engine:
            info = await engine.system.info()
        # Question 6: overlay2 works inside a node when /var/lib/docker is a volume
        # (the node container's own root is overlayfs, which overlay2 cannot sit on).
        assert info["Driver"] == "overlay2", info["Driver"]
        assert any("seccomp" in o for o in info["SecurityOptions"])
        insecure = info["RegistryConfig"]["IndexConfigs"].get(swarm_cluster.registry)
        assert insecure is not None, info["RegistryConfig"]
        assert insecure["Secure"] is False
        assert info["Swarm"]["LocalNodeState"] == "active"


async def test_an_image_pushed_to_the_registry_is_pulled_by_a_node(
    swarm_cluster: SwarmCluster, registry_base_image: str
) -> None:
    catalog = f"http://{swarm_cluster.registry}/v2/_catalog"
    auth = swarm_cluster.registry_auth
    async with aiohttp.ClientSession() as http:
        async with http.get(catalog) as response:
            assert response.status == 401  # nothing without the credentials
        async with http.get(catalog, headers=basic_auth(auth.username, auth.password)) as response:
            assert response.status == 200
            assert BASE_REPOSITORY in (await response.json())["repositories"]
    async with swarm_cluster.engine(1) as first:
        pushed = await first.images.inspect(registry_base_image)
    async with swarm_cluster.engine(2) as second:
        with pytest.raises(DockerError) as missing:
            await second.images.inspect(registry_base_image)
        assert missing.value.status == 404
    pulled = await swarm_cluster.pull(2, registry_base_image)
    assert pulled["Id"] == pushed["Id"]
    assert pulled["RepoDigests"] == pushed["RepoDigests"]


async def test_a_host_mode_dnsrr_service_answers_on_its_node(
    swarm_cluster: SwarmCluster,
    registry_base_image: str,
    swarm_labels: dict[str, str],
    say: Callable[[str], None],
) -> None:
    async with (
        swarm_cluster.engine(1) as manager,
        http_service(
            manager,
            registry_base_image,
            constraints=["node.role==worker"],
            labels=swarm_labels,
            registry_auth=pull_auth(swarm_cluster),
        ) as (service_id, task, ready, reported),
    ):
        say(f"service create to its server's line in the service log: {ready:.2f} s")
        say(f"that line to the manager's task state running: {reported:.2f} s")
        # Question 1: with no PublishedPort the node's engine picks a free port, and
        # the running task reports it in Status.PortStatus on 20.10.
        ports = task["Status"]["PortStatus"]["Ports"]
        assert len(ports) == 1, ports
        assert ports[0]["TargetPort"] == SERVER_PORT
        assert ports[0]["PublishMode"] == "host"
        published = int(ports[0]["PublishedPort"])
        assert published > 0
        index = node_index(swarm_cluster, task["NodeID"])
        assert index in (2, 3)
        node = swarm_cluster.node(index)
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://{node.address}:{published}/") as response,
        ):
            assert response.status == 200
            assert (await response.text()).strip() == node.hostname
        # Host mode: the port is bound on that node only (no routing mesh here).
        for other in swarm_cluster.nodes:
            if other.index != index:
                with pytest.raises(ConnectionRefusedError):
                    await asyncio.open_connection(other.address, published)
        # Question 5, the other half: the task's container is on the node's default
        # bridge, and only there.
        container_id = task["Status"]["ContainerStatus"]["ContainerID"]
        async with swarm_cluster.engine(index) as engine:
            container = await engine.containers.get(container_id)
        assert set(container["NetworkSettings"]["Networks"]) == {"bridge"}
        bindings = container["NetworkSettings"]["Ports"][f"{SERVER_PORT}/tcp"]
        assert {int(b["HostPort"]) for b in bindings} == {published}
        assert container["Config"]["Labels"][RUN_LABEL] == swarm_labels[RUN_LABEL]
        assert service_id in container["Config"]["Labels"]["com.docker.swarm.service.id"]


async def test_a_label_only_update_replaces_no_task(
    swarm_cluster: SwarmCluster, registry_base_image: str, swarm_labels: dict[str, str]
) -> None:
    # Question 3: changing ServiceSpec.Labels leaves the task alone; a TaskTemplate
    # change (ForceUpdate here) replaces it. The forced update is what makes the
    # check sound: it is ordered after the label update, so a replacement the label
    # update had caused would show as a third task.
    async with (
        swarm_cluster.engine(1) as manager,
        http_service(
            manager,
            registry_base_image,
            constraints=[],
            labels=swarm_labels,
            registry_auth=pull_auth(swarm_cluster),
        ) as (
            service_id,
            task,
            _,
            _,
        ),
    ):
        current = await manager.services.inspect(service_id)
        spec = dict(current["Spec"])
        spec["Labels"] = {**spec["Labels"], "org.openhands-rt.lease": "someone"}
        await manager._query_json(
            f"services/{service_id}/update",
            "POST",
            params={"version": current["Version"]["Index"]},
            data=spec,
        )
        after_labels = await tasks_of(manager, service_id)
        assert [t["ID"] for t in after_labels] == [task["ID"]]
        assert after_labels[0]["DesiredState"] == "running"
        current = await manager.services.inspect(service_id)
        assert current["Spec"]["Labels"]["org.openhands-rt.lease"] == "someone"
        spec = dict(current["Spec"])
        spec["TaskTemplate"] = {**spec["TaskTemplate"], "ForceUpdate": 1}
        async with engine_events(manager, {"type": ["service"]}) as events:
            await manager._query_json(
                f"services/{service_id}/update",
                "POST",
                params={"version": current["Version"]["Index"]},
                data=spec,
            )
            with anyio.fail_after(120):
                async for _ in events:
                    tasks = await tasks_of(manager, service_id)
                    if any(
                        t["Status"]["State"] == "running" and t["ID"] != task["ID"] for t in tasks
                    ):
                        break
        tasks = await tasks_of(manager, service_id)
        assert len(tasks) == 2, [(t["ID"], t["Status"]["State"]) for t in tasks]


async def test_a_killed_node_is_reported_down_and_its_task_is_not_replaced(
    swarm_cluster: SwarmCluster,
    registry_base_image: str,
    swarm_labels: dict[str, str],
    say: Callable[[str], None],
) -> None:
    # Question 4, answered: a one-replica service with RestartPolicy none on a node
    # that goes down gets no replacement task. At once (with the node's down) the
    # manager sets the task's *desired* state to shutdown, its state stays running;
    # when the node comes back its agent reports the dead container (state failed,
    # "task: non-zero exit (255)") and leaves it stopped; once the service is
    # removed, the agent removes the container.
    async with swarm_cluster.engine(1) as manager:
        async with http_service(
            manager,
            registry_base_image,
            constraints=["node.hostname==node-3"],
            labels=swarm_labels,
            registry_auth=pull_auth(swarm_cluster),
        ) as (service_id, task, _, _):
            assert node_index(swarm_cluster, task["NodeID"]) == 3
            container_id = task["Status"]["ContainerStatus"]["ContainerID"]
            killed = time.monotonic()
            await swarm_cluster.kill(3)
            down = await swarm_cluster.wait_node_state(3, "down")
            detected = time.monotonic() - killed
            say(f"killed node marked down after {detected:.1f} s")
            assert down["Status"]["State"] == "down"
            while_down = await tasks_of(manager, service_id)
            assert [t["ID"] for t in while_down] == [task["ID"]]
            say(
                f"its task while the node is down: desired {while_down[0]['DesiredState']}, "
                f"state {while_down[0]['Status']['State']}"
            )
            restarted = time.monotonic()
            await swarm_cluster.start(3)
            say(f"killed node ready again after {time.monotonic() - restarted:.1f} s")
            with anyio.fail_after(60):
                failed = await task_in_state(manager, service_id, "failed")
            assert failed["ID"] == task["ID"]
            assert failed["DesiredState"] == "shutdown"
            say(f"its task once the node is back: failed, {failed['Status'].get('Err')!r}")
            async with swarm_cluster.engine(3) as node3:
                inspected = await node3.containers.get(container_id)
            assert inspected["State"]["Running"] is False
            assert [t["ID"] for t in await tasks_of(manager, service_id)] == [task["ID"]]
        # The service is removed (http_service's exit): node 3's agent removes the
        # task's container.
        async with (
            swarm_cluster.engine(3) as node3,
            engine_events(node3, {"type": ["container"], "event": ["destroy"]}) as events,
        ):
            with anyio.fail_after(120):
                if await _container_exists(node3, container_id):
                    async for event in events:
                        if event.get("id") == container_id:
                            break
            assert not await _container_exists(node3, container_id)


async def _container_exists(engine: aiodocker.Docker, container_id: str) -> bool:
    try:
        await engine.containers.get(container_id)
    except DockerError as exc:
        if exc.status == 404:
            return False
        raise
    return True


async def test_a_cluster_leaves_nothing_behind(
    swarm_base_image: str, registry_required: Callable[[], None]
) -> None:
    registry_required()
    run_id = "s" + uuid.uuid4().hex[:11]
    label = f"{RUN_LABEL}={run_id}"
    async with open_swarm_cluster(
        run_id=run_id, labels={RUN_LABEL: run_id}, base_image=swarm_base_image, size=1
    ) as cluster:
        made: dict[str, Any] = {
            "tmp": cluster.tmp,
            "registry_pid": cluster.registry_pid,
            "registry": cluster.registry,
            "network_id": cluster.network_id,
        }
        # The check sees each kind of thing it looks for while the cluster lives.
        present = await leftovers(run_id, label, **made)
        kinds = {item.split()[0] for item in present}
        assert {
            "container",
            "network",
            "volume",
            "directory",
            "registry",
            "something",
            "bridge",
        } <= kinds, present
    assert await leftovers(run_id, label, **made) == []


async def test_a_setup_that_fails_half_way_leaves_nothing_behind(
    swarm_base_image: str, registry_required: Callable[[], None]
) -> None:
    registry_required()
    run_id = "s" + uuid.uuid4().hex[:11]
    label = f"{RUN_LABEL}={run_id}"
    # The image to load does not exist: setup fails after the network, the registry
    # and the node exist; the exit stack must undo them.
    with pytest.raises(NotFound):
        async with open_swarm_cluster(
            run_id=run_id,
            labels={RUN_LABEL: run_id},
            base_image=swarm_base_image,
            images=["openhands-rt-test/no-such-image:" + run_id],
            size=1,
        ):
            pytest.fail("the setup went through")
    assert await leftovers(run_id, label) == []
