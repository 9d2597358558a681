"""SwarmRuntime on the three-node test cluster (issue 19): starts, placement, echo, loss.

Makes the cluster of tests/swarm (tests/swarm/cluster.py: three Docker-in-Docker
nodes, a docker-registry process on their bridge's gateway), builds the runtime
image on this host's engine, and prints:

- the first sandbox's start (the image copied to the manager, pushed, pulled by
  its node) and a second one's (image everywhere it is needed already);
- ``--concurrent`` sandboxes (default 30) started at once: wall time, each
  start's p50/max, and how many landed on each node;
- ``echo`` through a node: p50/p90 over ``--echoes`` round trips (one sandbox),
  and the same through a ``DockerRuntime`` on this host for comparison;
- a node's engine killed under a sandbox with an action pending: the time to the
  ``ErrorObservation`` and the ``RuntimeStatusObservation(error)``, then to a
  replacement's first observation on the nodes left (``connect()`` again).

Everything is torn down at the end and checked. Figures are this machine's:
the three nodes share its two cores.

Run: uv run python benchmarks/swarm.py [--concurrent 30] [--echoes 200]
Needs a running Docker engine, the base image and Debian's docker-registry
(scripts/ensure-docker.sh installs it), and the swarm extra (cryptography).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import statistics
import sys
import time
import uuid
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "swarm"))

from cluster import RUN_LABEL, SwarmCluster, leftovers, open_swarm_cluster

from events import CmdOutputObservation, CmdRunAction, ErrorObservation, EventStream
from openhands_rt import DockerRuntime, SandboxConfig
from openhands_rt.docker_client import open_docker
from openhands_rt.image import DEFAULT_BASE_IMAGE, bootstrap_base_image, build_runtime_image
from openhands_rt.swarm.runtime import SwarmRuntime

REPOSITORY = "openhands-rt-bench/swarm-runtime"


def _ms(samples: list[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
    return f"p50 {statistics.median(ordered) * 1e3:.2f} ms, p90 {p90 * 1e3:.2f} ms"


def _runtime(cluster: SwarmCluster, stream: EventStream, config: SandboxConfig) -> SwarmRuntime:
    return SwarmRuntime(
        stream,
        config,
        session_id="bench-" + uuid.uuid4().hex[:8],
        docker_host=cluster.manager,
        registry=cluster.registry,
        registry_auth=cluster.registry_auth,
    )


async def _started(cluster: SwarmCluster, config: SandboxConfig) -> float:
    async with EventStream() as stream:
        rt = _runtime(cluster, stream, config)
        try:
            started = time.monotonic()
            await rt.connect()
            obs = await rt.run(CmdRunAction("echo up"))
            assert isinstance(obs, CmdOutputObservation), obs
            return time.monotonic() - started
        finally:
            await rt.aclose()


async def _concurrent(cluster: SwarmCluster, config: SandboxConfig, count: int) -> None:
    names = {n.swarm_id: f"node {n.index}" for n in cluster.nodes}
    async with contextlib.AsyncExitStack() as stack:
        runtimes = []
        for _ in range(count):
            stream = await stack.enter_async_context(EventStream())
            runtimes.append(_runtime(cluster, stream, config))
            stack.push_async_callback(runtimes[-1].aclose)
        times: list[float] = []
        failed: list[str] = []

        async def start(rt: SwarmRuntime) -> None:
            t0 = time.monotonic()
            try:
                await rt.connect()
                obs = await rt.run(CmdRunAction("echo up"))
            except Exception as exc:
                failed.append(f"{type(exc).__name__}: {exc}")
                return
            assert isinstance(obs, CmdOutputObservation), obs
            times.append(time.monotonic() - t0)

        wall = time.monotonic()
        async with anyio.create_task_group() as group:
            for rt in runtimes:
                group.start_soon(start, rt)
        wall = time.monotonic() - wall
        placed = collections.Counter(
            names.get(rt.node_id or "", "?") for rt in runtimes if rt.node_id
        )
        print(
            f"{count} concurrent starts to first observation: wall {wall:.1f} s; "
            f"each p50 {statistics.median(times):.1f} s, max {max(times):.1f} s; "
            f"{len(failed)} failed"
        )
        for reason in failed:
            print(f"  failed: {reason[:300]}")
        print("placement: " + ", ".join(f"{k} {v}" for k, v in sorted(placed.items())))


async def _echo(cluster: SwarmCluster, config: SandboxConfig, echoes: int) -> None:
    async with EventStream() as stream, _runtime(cluster, stream, config) as rt:
        samples = []
        for _ in range(echoes):
            t0 = time.perf_counter()
            obs = await rt.run(CmdRunAction("echo hi"))
            samples.append(time.perf_counter() - t0)
            assert isinstance(obs, CmdOutputObservation), obs
        node = next(n.index for n in cluster.nodes if n.swarm_id == rt.node_id)
        print(f"echo hi through node {node} (TLS, host-mode port): {_ms(samples)} (n={echoes})")


async def _local_echo(config: SandboxConfig, echoes: int) -> None:
    """The same echo through a DockerRuntime on this host, for comparison."""
    async with EventStream() as stream, DockerRuntime(stream, config) as rt:
        samples = []
        for _ in range(echoes):
            t0 = time.perf_counter()
            obs = await rt.run(CmdRunAction("echo hi"))
            samples.append(time.perf_counter() - t0)
            assert isinstance(obs, CmdOutputObservation), obs
        print(f"echo hi through DockerRuntime on this host (same image): {_ms(samples)}")


async def _lost_node(cluster: SwarmCluster, config: SandboxConfig) -> None:
    lost = cluster.node(3)
    async with EventStream() as stream:
        rt = _runtime(cluster, stream, config)
        rt.placement = [f"node.id=={lost.swarm_id}"]
        try:
            async with rt:
                pending = asyncio.create_task(rt.run(CmdRunAction("sleep 600", blocking=True)))
                await asyncio.sleep(0.5)
                killed = time.monotonic()
                await cluster.kill(3)
                obs = await pending
                reported = time.monotonic() - killed
                assert isinstance(obs, ErrorObservation), obs
                print(f"node killed -> ErrorObservation and status error: {reported:.1f} s")
                rt.placement = []
                started = time.monotonic()
                await rt.connect()
                obs = await rt.run(CmdRunAction("echo replaced"))
                assert isinstance(obs, CmdOutputObservation), obs
                node = next(n.index for n in cluster.nodes if n.swarm_id == rt.node_id)
                print(
                    f"replacement on node {node} to first observation: "
                    f"{time.monotonic() - started:.1f} s"
                )
        finally:
            await cluster.start(3)


async def main(concurrent: int, echoes: int) -> None:
    base = await bootstrap_base_image(DEFAULT_BASE_IMAGE)
    run_id = "b" + uuid.uuid4().hex[:11]
    labels = {RUN_LABEL: run_id}
    built = await build_runtime_image(base, repository=REPOSITORY, labels=labels)
    try:
        async with open_swarm_cluster(
            run_id=run_id, labels=labels, base_image=base, images=[base]
        ) as cluster:
            made = {
                "tmp": cluster.tmp,
                "registry_pid": cluster.registry_pid,
                "registry": cluster.registry,
                "network_id": cluster.network_id,
            }
            print(f"cluster ready in {sum(cluster.timings.values()):.1f} s")
            config = SandboxConfig(runtime_container_image=built.image, labels=labels)
            first = await _started(cluster, config)
            print(f"first start (image copied, pushed, pulled): {first:.1f} s")
            print(f"second start: {await _started(cluster, config):.1f} s")
            # Echo first: the concurrent starts' removals keep the nodes busy for a while.
            await _echo(cluster, config, echoes)
            await _local_echo(config, echoes)
            await _concurrent(cluster, config, concurrent)
            await _lost_node(cluster, config)
        left = await leftovers(run_id, f"{RUN_LABEL}={run_id}", **made)
        if left:
            raise SystemExit(f"the cluster left {left}")
        print("teardown: nothing left")
    finally:
        async with open_docker() as host:
            for image in await host.images.list(filters={"label": [f"{RUN_LABEL}={run_id}"]}):
                with contextlib.suppress(Exception):
                    await host.images.delete(image["Id"], force=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrent", type=int, default=30)
    parser.add_argument("--echoes", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(main(args.concurrent, args.echoes))
