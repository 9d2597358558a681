"""SwarmRuntime on the real three-node test cluster (issue 19).

The sandbox is a one-replica service placed by Swarm, its image pushed to the
cluster's registry through the manager and pulled by the nodes, its server
reached on its node's host-mode port over pinned TLS. Deaths are real: a task's
container killed on its node, a node's engine killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiodocker
import pytest
import websockets
from cluster import SwarmCluster

from events import (
    CmdOutputObservation,
    CmdRunAction,
    ErrorObservation,
    EventStream,
    FileReadAction,
    FileReadObservation,
    FileWriteAction,
    RuntimeStatusObservation,
)
from openhands_rt import SandboxConfig
from openhands_rt.errors import SandboxError, SandboxStartError, SessionInUseError
from openhands_rt.forking import fork
from openhands_rt.swarm import SwarmRuntime, SwarmTarget, remove_swarm_snapshot
from openhands_rt.swarm.runtime import LABEL_HOST_DIR

pytestmark = [
    pytest.mark.docker,
    pytest.mark.swarm,
    pytest.mark.slow,
    pytest.mark.asyncio(loop_scope="session"),
    pytest.mark.timeout(900),
]


def session_id() -> str:
    return "sw-" + uuid.uuid4().hex[:10]


@pytest.fixture
def make_config(
    swarm_runtime_image: str, swarm_labels: dict[str, str]
) -> Callable[..., SandboxConfig]:
    def make(**overrides: Any) -> SandboxConfig:
        kwargs: dict[str, Any] = {
            "runtime_container_image": swarm_runtime_image,
            "labels": dict(swarm_labels),
            "no_change_timeout": 5.0,
            "timeout": 60.0,
            "startup_timeout": 120.0,
        }
        kwargs.update(overrides)
        return SandboxConfig(**kwargs)

    return make


@contextlib.asynccontextmanager
async def manager_of(cluster: SwarmCluster) -> AsyncIterator[aiodocker.Docker]:
    async with cluster.engine(1) as manager:
        yield manager


def runtime(
    cluster: SwarmCluster, stream: EventStream, config: SandboxConfig, **kwargs: Any
) -> SwarmRuntime:
    kwargs.setdefault("session_id", session_id())
    return SwarmRuntime(
        stream,
        config,
        docker_host=cluster.manager,
        registry=cluster.registry,
        registry_auth=cluster.registry_auth,
        **kwargs,
    )


async def sh(rt: SwarmRuntime, command: str, **kwargs: Any) -> CmdOutputObservation:
    obs = await rt.run(CmdRunAction(command, **kwargs))
    assert isinstance(obs, CmdOutputObservation), obs
    return obs


def node_index(cluster: SwarmCluster, node_id: str | None) -> int:
    return next(n.index for n in cluster.nodes if n.swarm_id == node_id)


async def services_named(cluster: SwarmCluster, name: str) -> list[Any]:
    async with manager_of(cluster) as manager:
        return [s for s in await manager._query_json("services") if s["Spec"]["Name"] == name]


async def secrets_of(cluster: SwarmCluster, service: str) -> list[Any]:
    filters = json.dumps({"label": [f"org.openhands-rt.service={service}"]})
    async with manager_of(cluster) as manager:
        return list(await manager._query_json("secrets", params={"filters": filters}))


def errors_on(stream: EventStream) -> list[RuntimeStatusObservation]:
    return [
        e
        for e in stream.iter_events()
        if isinstance(e, RuntimeStatusObservation) and e.status == "error"
    ]


async def test_a_sandbox_runs_actions_on_a_node_and_leaves_nothing(
    swarm_cluster: SwarmCluster, make_config: Callable[..., SandboxConfig]
) -> None:
    async with EventStream() as stream:
        rt = runtime(swarm_cluster, stream, make_config(cpus=0.5, memory_mb=512))
        async with rt:
            assert (await sh(rt, "echo hi from $(whoami)")).content.strip() == "hi from openhands"
            write = await rt.run(FileWriteAction("/workspace/a.txt", "content\n"))
            assert not isinstance(write, ErrorObservation), write
            read = await rt.run(FileReadAction("/workspace/a.txt"))
            assert isinstance(read, FileReadObservation)
            assert "content" in read.content
            await sh(rt, "cd /tmp && export FOO=bar")
            assert (await sh(rt, "pwd; echo $FOO")).content.split() == ["/tmp", "bar"]
            # The key and the TLS key are secrets only root can read; the agent is not root.
            obs = await sh(rt, "cat /run/openhands-rt/host/key /run/openhands-rt/host/tls.pem")
            assert obs.exit_code != 0
            assert "Permission denied" in obs.content
            # Pulled from the registry by digest; the channel is TLS to a node's port.
            assert rt.image is not None
            assert rt.image.startswith(swarm_cluster.registry + "/")
            assert "@sha256:" in rt.image
            assert rt.endpoint is not None
            assert rt.endpoint.url.startswith("wss://")
            assert rt.node_address in {n.address for n in swarm_cluster.nodes}
            [service] = await services_named(swarm_cluster, rt.service_name)
            template = service["Spec"]["TaskTemplate"]
            assert template["RestartPolicy"]["Condition"] == "none"
            assert template["Resources"]["Reservations"] == {
                "NanoCPUs": 500_000_000,
                "MemoryBytes": 512 * 1024 * 1024,
            }
            assert service["Spec"]["EndpointSpec"]["Mode"] == "dnsrr"
            assert service["Spec"]["Labels"]["org.openhands-rt.session"] == rt.session_id
            assert len(await secrets_of(swarm_cluster, rt.service_name)) == 2
            run_dir = service["Spec"]["Labels"][LABEL_HOST_DIR]
            assert os.path.isdir(run_dir)
    assert await services_named(swarm_cluster, rt.service_name) == []
    assert await secrets_of(swarm_cluster, rt.service_name) == []
    assert not os.path.exists(run_dir)


async def test_the_channel_is_tls_with_the_sandboxs_own_certificate(
    swarm_cluster: SwarmCluster, make_config: Callable[..., SandboxConfig]
) -> None:
    from openhands_rt.swarm.tls import make_server_identity

    async with EventStream() as stream, runtime(swarm_cluster, stream, make_config()) as rt:
        endpoint = rt.endpoint
        assert endpoint is not None
        assert endpoint.server_cert is not None
        plain = endpoint.url.replace("wss://", "ws://")
        with pytest.raises((OSError, websockets.InvalidHandshake, asyncio.TimeoutError)):
            async with websockets.connect(plain, open_timeout=5):
                pass
        # A client trusting the system CAs, or another sandbox's certificate, is refused.
        other = make_server_identity(endpoint.server_name or "x")
        for cadata in (None, other.cert_pem):
            context = ssl.create_default_context(cadata=cadata)
            with pytest.raises(ssl.SSLCertVerificationError):
                async with websockets.connect(
                    endpoint.url,
                    ssl=context,
                    server_hostname=endpoint.server_name,
                    open_timeout=5,
                ):
                    pass
        assert (await sh(rt, "echo still fine")).content.strip() == "still fine"
        # The service is named for its session: a hand-over keeps it.
        async with EventStream() as other:
            with pytest.raises(SandboxError, match="keeps its session id"):
                await rt.hand_over(other, session_id="another-session")


async def test_sandboxes_spread_over_the_three_nodes(
    swarm_cluster: SwarmCluster, make_config: Callable[..., SandboxConfig]
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        runtimes = []
        for _ in range(3):
            stream = await stack.enter_async_context(EventStream())
            runtimes.append(runtime(swarm_cluster, stream, make_config()))
        await asyncio.gather(*(stack.enter_async_context(rt) for rt in runtimes))
        outputs = await asyncio.gather(*(sh(rt, "hostname") for rt in runtimes))
        assert all(o.exit_code == 0 for o in outputs)
        assert sorted(node_index(swarm_cluster, rt.node_id) for rt in runtimes) == [1, 2, 3]


async def test_a_task_killed_on_its_node_is_reported_and_a_new_sandbox_starts(
    swarm_cluster: SwarmCluster, make_config: Callable[..., SandboxConfig]
) -> None:
    async with EventStream() as stream, runtime(swarm_cluster, stream, make_config()) as rt:
        await sh(rt, "echo before > /workspace/mark")
        pending = asyncio.create_task(rt.run(CmdRunAction("sleep 600", blocking=True)))
        await asyncio.sleep(0.5)
        async with swarm_cluster.engine(node_index(swarm_cluster, rt.node_id)) as node:
            await node.containers.container(rt.container_id).kill()
        obs = await asyncio.wait_for(pending, 60)
        assert isinstance(obs, ErrorObservation), obs
        [error] = errors_on(stream)
        assert "died" in error.message, error.message
        assert "task failed" in error.message, error.message
        old_service = rt.service_id
        await rt.connect()
        assert rt.service_id != old_service
        # A fresh sandbox: the old one's files are gone with it.
        obs = await sh(rt, "test -e /workspace/mark && echo kept || echo fresh")
        assert obs.content.strip() == "fresh"


async def test_a_lost_node_is_reported_and_the_next_sandbox_goes_elsewhere(
    swarm_cluster: SwarmCluster,
    make_config: Callable[..., SandboxConfig],
    say: Callable[[str], None],
) -> None:
    lost = swarm_cluster.node(3)
    # Placed on node 3 by a constraint; the replacement is placed freely.
    async with EventStream() as stream:
        rt = runtime(
            swarm_cluster,
            stream,
            make_config(),
            placement=[f"node.id=={lost.swarm_id}"],
        )
        try:
            async with rt:
                assert rt.node_id == lost.swarm_id
                pending = asyncio.create_task(rt.run(CmdRunAction("sleep 600", blocking=True)))
                await asyncio.sleep(0.5)
                killed = asyncio.get_running_loop().time()
                await swarm_cluster.kill(3)
                obs = await asyncio.wait_for(pending, 60)
                say(f"lost node reported after {asyncio.get_running_loop().time() - killed:.1f} s")
                assert isinstance(obs, ErrorObservation), obs
                [error] = errors_on(stream)
                assert "is down" in error.message, error.message
                rt.placement = []
                await rt.connect()
                assert rt.node_id != lost.swarm_id
                assert (await sh(rt, "echo replaced")).content.strip() == "replaced"
        finally:
            await swarm_cluster.start(3)


async def test_a_kept_alive_sandbox_is_attached_to_again(
    swarm_cluster: SwarmCluster, make_config: Callable[..., SandboxConfig]
) -> None:
    sid = session_id()
    async with EventStream() as stream:
        async with runtime(
            swarm_cluster, stream, make_config(keep_runtime_alive=True), session_id=sid
        ) as first:
            await sh(first, "echo kept > /workspace/kept.txt")
            name = first.service_name
        assert len(await services_named(swarm_cluster, name)) == 1
        async with runtime(swarm_cluster, stream, make_config(), session_id=sid) as second:
            assert second.attached
            assert (await sh(second, "cat /workspace/kept.txt")).content.strip() == "kept"
            # Held: a third runtime with the session id is refused.
            async with EventStream() as other:
                with pytest.raises(SessionInUseError):
                    await runtime(swarm_cluster, other, make_config(), session_id=sid).connect()
    assert await services_named(swarm_cluster, name) == []
    assert await secrets_of(swarm_cluster, name) == []


async def test_what_a_node_cannot_have_is_refused(
    swarm_cluster: SwarmCluster, make_config: Callable[..., SandboxConfig], tmp_path: Any
) -> None:
    for overrides in (
        {"workspace_dir": str(tmp_path)},
        {"network": "none"},
        {"channel": "unix"},
        {"auto_restart": True},
    ):
        async with EventStream() as stream:
            rt = runtime(swarm_cluster, stream, make_config(**overrides))
            with pytest.raises(SandboxError, match="SwarmRuntime cannot"):
                await rt.connect()
            await rt.aclose()


async def test_a_sandbox_that_fits_nowhere_fails_with_the_schedulers_reason(
    swarm_cluster: SwarmCluster, make_config: Callable[..., SandboxConfig]
) -> None:
    async with EventStream() as stream:
        rt = runtime(swarm_cluster, stream, make_config(cpus=512.0, startup_timeout=5.0))
        with pytest.raises(SandboxError, match="insufficient resources"):
            await rt.connect()
        await rt.aclose()
    assert await services_named(swarm_cluster, rt.service_name) == []


async def test_a_sandbox_whose_server_exits_at_start_fails_with_its_output(
    swarm_cluster: SwarmCluster, make_config: Callable[..., SandboxConfig]
) -> None:
    # The server refuses an unknown log level and exits: the SandboxStartError itself
    # (never an ExceptionGroup of one), with the server's own words from the service's log.
    config = make_config(env={"OPENHANDS_RT_LOG_LEVEL": "NO-SUCH-LEVEL"})
    async with EventStream() as stream:
        rt = runtime(swarm_cluster, stream, config)
        with pytest.raises(SandboxStartError) as info:
            await rt.connect()
        await rt.aclose()
    assert "NO-SUCH-LEVEL" in "\n".join(info.value.log_tail), info.value.log_tail
    assert await services_named(swarm_cluster, rt.service_name) == []
    assert await secrets_of(swarm_cluster, rt.service_name) == []


async def test_a_sandbox_lost_with_its_node_is_resumed_elsewhere_from_its_log(
    swarm_cluster: SwarmCluster, make_config: Callable[..., SandboxConfig], tmp_path: Any
) -> None:
    lost = swarm_cluster.node(2)
    log = tmp_path / "session.log"
    config = make_config()
    try:
        async with EventStream(log_path=log) as stream:
            rt = runtime(swarm_cluster, stream, config, placement=[f"node.id=={lost.swarm_id}"])
            async with rt:
                await sh(rt, "mkdir -p /workspace/proj && cd /workspace/proj")
                await sh(rt, "echo 'print(6 * 7)' > main.py && export MODE=resumed")
                last = await sh(rt, "python3 main.py")
                assert last.content.strip() == "42"
                pending = asyncio.create_task(rt.run(CmdRunAction("sleep 600", blocking=True)))
                await asyncio.sleep(0.5)
                await swarm_cluster.kill(2)
                assert isinstance(await asyncio.wait_for(pending, 60), ErrorObservation)
        # The log holds the session up to the loss; fork it at the last answered action
        # onto the swarm: Swarm places it on a node left, the actions are run again there.
        target = SwarmTarget(
            docker_host=swarm_cluster.manager,
            registry=swarm_cluster.registry,
            registry_auth=swarm_cluster.registry_auth,
        )
        async with fork(str(log), at_event=last.id, config=config, swarm=target) as resumed:
            assert isinstance(resumed, SwarmRuntime)
            assert resumed.node_id != lost.swarm_id
            obs = await sh(resumed, "pwd; echo $MODE; python3 main.py")
            assert obs.content.split() == ["/workspace/proj", "resumed", "42"]
            notes = [
                e.message
                for e in resumed.stream.iter_events()
                if isinstance(e, RuntimeStatusObservation)
            ]
            assert any("3 actions re-executed (3 matched)" in n for n in notes), notes
    finally:
        await swarm_cluster.start(2)


_ORPHAN_MAKER = """
import asyncio, os, sys
from events import EventStream
from openhands_rt import SandboxConfig
from openhands_rt.swarm import RegistryAuth, SwarmRuntime

async def main(image, manager, registry, session, label):
    key, _, value = label.partition("=")
    config = SandboxConfig(runtime_container_image=image, labels={key: value})
    async with EventStream() as stream:
        auth = RegistryAuth(os.environ["REGISTRY_USER"], os.environ["REGISTRY_PASSWORD"])
        rt = SwarmRuntime(
            stream,
            config,
            session_id=session,
            docker_host=manager,
            registry=registry,
            registry_auth=auth,
        )
        await rt.connect()
        print(rt.service_name, flush=True)
        await asyncio.sleep(3600)

asyncio.run(main(*sys.argv[1:]))
"""


async def test_ps_and_gc_reap_the_services_of_a_killed_owner(
    swarm_cluster: SwarmCluster,
    swarm_runtime_image: str,
    swarm_labels: dict[str, str],
) -> None:
    [(key, value)] = swarm_labels.items()
    owner = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _ORPHAN_MAKER,
        swarm_runtime_image,
        swarm_cluster.manager,
        swarm_cluster.registry,
        session_id(),
        f"{key}={value}",
        stdout=asyncio.subprocess.PIPE,
        env={
            **os.environ,
            "REGISTRY_USER": swarm_cluster.registry_auth.username,
            "REGISTRY_PASSWORD": swarm_cluster.registry_auth.password,
        },
    )
    assert owner.stdout is not None
    name = (await asyncio.wait_for(owner.stdout.readline(), 300)).decode().strip()
    owner.kill()
    await owner.wait()
    [service] = await services_named(swarm_cluster, name)
    run_dir = service["Spec"]["Labels"][LABEL_HOST_DIR]
    assert os.path.isdir(run_dir)
    assert len(await secrets_of(swarm_cluster, name)) == 2

    async def cli(*args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "openhands_rt.cli",
            *args,
            "--swarm",
            swarm_cluster.manager,
            "--label",
            f"{key}={value}",
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "COLUMNS": "300"},
        )
        out, _ = await proc.communicate()
        assert proc.returncode == 0, out
        return out.decode()

    listed = [line for line in (await cli("ps")).splitlines() if name in line]
    assert listed, "the orphan is not listed"
    assert "gone" in listed[0]
    assert f"removed {name}" in await cli("gc")
    assert await services_named(swarm_cluster, name) == []
    assert await secrets_of(swarm_cluster, name) == []
    assert not os.path.exists(run_dir)


async def test_a_lost_sandbox_is_resumed_elsewhere_from_its_snapshot_and_log(
    swarm_cluster: SwarmCluster, make_config: Callable[..., SandboxConfig], tmp_path: Any
) -> None:
    lost = swarm_cluster.node(3)
    log = tmp_path / "session.log"
    config = make_config()
    snapshot_id = None
    try:
        async with EventStream(log_path=log) as stream:
            rt = runtime(swarm_cluster, stream, config, placement=[f"node.id=={lost.swarm_id}"])
            async with rt:
                await sh(rt, "mkdir -p /workspace/p && cd /workspace/p && echo one > a.txt")
                await sh(rt, "export STAGE=snapshotted; echo x >> /tmp/t")
                snap = await rt.snapshot()
                snapshot_id = snap.snapshot_id
                await sh(rt, "echo two > b.txt && export AFTER=yes")
                last = await sh(rt, "cat a.txt b.txt")
                assert last.content.split() == ["one", "two"]
                await swarm_cluster.kill(3)
                await asyncio.wait_for(
                    rt.run(CmdRunAction("sleep 600", blocking=True)), 60
                )  # answered with an error once the node is reported down
        target = SwarmTarget(
            docker_host=swarm_cluster.manager,
            registry=swarm_cluster.registry,
            registry_auth=swarm_cluster.registry_auth,
        )
        async with fork(str(log), at_event=last.id, config=config, swarm=target) as resumed:
            assert isinstance(resumed, SwarmRuntime)
            assert resumed.node_id != lost.swarm_id
            assert resumed.from_snapshot == snapshot_id
            obs = await sh(resumed, "pwd; echo $STAGE $AFTER; cat a.txt b.txt /tmp/t")
            assert obs.content.split() == ["/workspace/p", "snapshotted", "yes", "one", "two", "x"]
            notes = [
                e.message
                for e in resumed.stream.iter_events()
                if isinstance(e, RuntimeStatusObservation)
            ]
            # Only what followed the snapshot ran again.
            assert any(
                f"from snapshot {snapshot_id}, 2 actions re-executed (2 matched)" in n
                for n in notes
            ), notes
    finally:
        if snapshot_id is not None:
            await remove_swarm_snapshot(snapshot_id)
        await swarm_cluster.start(3)


async def test_an_agent_cannot_pull_from_the_registry_its_node_reaches(
    swarm_cluster: SwarmCluster, make_config: Callable[..., SandboxConfig]
) -> None:
    # The registry is on the nodes' network, so a sandbox can reach it; it holds the
    # snapshots, each a sandbox's workspace. Without the credentials it gives nothing,
    # and the agent has no way to them: Swarm keeps them with the task, on the node.
    password = swarm_cluster.registry_auth.password
    fetch = (
        "import urllib.request, urllib.error\n"
        "for path in ('_catalog', 'openhands-rt/snapshot/tags/list'):\n"
        "    try:\n"
        f"        urllib.request.urlopen('http://{swarm_cluster.registry}/v2/' + path, timeout=5)\n"
        "        print('open', path)\n"
        "    except urllib.error.HTTPError as e:\n"
        "        print(e.code, path)\n"
    )
    async with EventStream() as stream, runtime(swarm_cluster, stream, make_config()) as rt:
        await rt.run(FileWriteAction("/tmp/fetch.py", fetch))
        obs = await sh(rt, "python3 /tmp/fetch.py")
        assert obs.content.split() == ["401", "_catalog", "401", "openhands-rt/snapshot/tags/list"]
        hunt = await sh(
            rt,
            f"env | grep -c -- '{password}'; "
            # Every directory but the kernel's (/proc would never end, /sys holds nothing).
            "printf '%s\\n' /* | grep -vxE '/(proc|sys|dev)' "
            f"| xargs grep -rsl -D skip -- '{password}' | wc -l",
            timeout=300,
            blocking=True,
        )
        assert hunt.content.split() == ["0", "0"], hunt.content
