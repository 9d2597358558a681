"""DockerRuntime: cold start, `echo hi` latency (runc and runsc), concurrent sandboxes.

- cold start: the runtime image exists; ``DockerRuntime.connect()`` (create and start
  the container, wait for the server, open the channel) plus the first ``echo hi``,
  i.e. the time an agent waits for its first observation;
- ``echo hi``: ``run()`` round trips through a warm sandbox of each channel (``tcp``:
  the published port, through docker-proxy; ``unix``: the run directory's socket),
  interleaved with the floor (the host's own bash + WebSocket round trips), with
  issue 20's targets (runc p50 <= 0.3 ms, runsc <= 1.0 ms);
- the same two under gVisor (``oci_runtime="runsc"``) when the engine has it;
- N concurrent sandboxes started with ``asyncio.gather`` (each to its first
  observation), then left idle: the memory each one's cgroup charges, and what
  the host spends beside it (containerd shim + docker-proxy RSS).

Every container carries a run label and everything carrying it is removed at the
end, also after a failure or Ctrl-C; the last line checks that none is left.

Run: uv run python benchmarks/docker_runtime.py [--starts 7] [--n 1000] [--concurrency 10 30]
     [--mode build|mount] [--echo-only]
Needs a running Docker engine and the base image (openhands-rt base-image bootstrap).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _floor import Floor
from _util import percentiles_ms, remove_labelled_containers, rss_mb

from events import CmdOutputObservation, CmdRunAction, EventStream
from openhands_rt import DockerRuntime, SandboxConfig
from openhands_rt.docker_client import open_docker
from openhands_rt.docker_runtime import SERVER_PORT
from openhands_rt.image import DEFAULT_BASE_IMAGE, build_runtime_image
from openhands_rt.sandboxes import list_sandboxes

RUN_LABEL = "org.openhands-rt.bench-run"
RUN_ID = uuid.uuid4().hex[:12]
SESSION_PREFIX = f"bench-{RUN_ID}-"
CGROUP_MEMORY = Path("/sys/fs/cgroup/memory")
IDLE_SETTLE_SECONDS = 2.0
MB = 1024 * 1024


def p50_p90_ms(samples_s: Sequence[float]) -> str:
    ordered = sorted(samples_s)
    p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
    return (
        f"p50 {statistics.median(ordered) * 1000:8.1f} ms   p90 {p90 * 1000:8.1f} ms   "
        f"(n={len(ordered)})"
    )


class Bench:
    """Makes labelled sandbox configs and session ids for one benchmark run."""

    def __init__(self, image: str, *, mode: str = "build") -> None:
        self.image = image
        self.mode = mode
        self._count = 0

    def config(self, **overrides: Any) -> SandboxConfig:
        # build: the runtime image; mount: the base image as it is, the bundle mounted.
        where: dict[str, Any] = (
            {"runtime_mode": "mount", "base_container_image": self.image}
            if self.mode == "mount"
            else {"runtime_container_image": self.image}
        )
        kwargs: dict[str, Any] = {
            **where,
            "labels": {RUN_LABEL: RUN_ID},
            "timeout": 60.0,
            "no_change_timeout": 30.0,
        }
        kwargs.update(overrides)
        return SandboxConfig(**kwargs)

    def session_id(self) -> str:
        self._count += 1
        return f"{SESSION_PREFIX}{self._count}"

    async def start(self, stack: AsyncExitStack, config: SandboxConfig) -> DockerRuntime:
        """A connected runtime whose first ``echo hi`` answered; closed with ``stack``."""
        stream = await stack.enter_async_context(EventStream())
        runtime = DockerRuntime(stream, config, session_id=self.session_id())
        stack.push_async_callback(runtime.aclose)
        await runtime.connect()
        await echo(runtime)
        return runtime


async def echo(runtime: DockerRuntime) -> None:
    obs = await runtime.run(CmdRunAction("echo hi"))
    if not isinstance(obs, CmdOutputObservation) or obs.content.strip() != "hi":
        raise RuntimeError(f"unexpected answer to echo hi: {obs!r}")


async def cold_starts(bench: Bench, n: int, **overrides: Any) -> list[float]:
    samples = []
    for _ in range(n):
        async with AsyncExitStack() as stack:
            t0 = time.perf_counter()
            await bench.start(stack, bench.config(**overrides))
            samples.append(time.perf_counter() - t0)
    return samples


ECHO_TARGET_MS = {"runc": 0.3, "runsc": 1.0}  # issue 20


async def echo_latency(bench: Bench, n: int, oci_runtime: str) -> None:
    """``echo hi`` through a tcp and a unix channel sandbox and the floor, interleaved.

    One sample of each per iteration, so load hits all alike. The floor is the
    host's own bash round trip plus a WebSocket echo (``benchmarks/_floor.py``):
    what an echo costs with no container at all.
    """
    async with AsyncExitStack() as stack:
        runtimes = {
            channel: await bench.start(
                stack, bench.config(oci_runtime=oci_runtime, channel=channel)
            )
            for channel in ("tcp", "unix")
        }
        floor = await stack.enter_async_context(Floor())
        for _ in range(200):
            for runtime in runtimes.values():
                await echo(runtime)
            await floor.sample()
        samples: dict[str, list[float]] = {channel: [] for channel in runtimes}
        floor_samples: list[float] = []
        for _ in range(n):
            for channel, runtime in runtimes.items():
                t0 = time.perf_counter()
                await echo(runtime)
                samples[channel].append(time.perf_counter() - t0)
            floor_samples.append(sum(await floor.sample()))
    target = ECHO_TARGET_MS.get(oci_runtime)
    floor_p50 = statistics.median(floor_samples)
    for channel, values in samples.items():
        label = f"echo hi ({oci_runtime}, {channel})"
        p50 = statistics.median(values)
        print(
            f"{label:<27} {percentiles_ms(values)}   {p50 / floor_p50:.2f}x the floor"
            + (f", target p50 <= {target} ms" if target is not None else "")
        )
    print(f"{'  floor (no container)':<27} {percentiles_ms(floor_samples)}")


def _cgroup_memory(container_id: str) -> dict[str, int] | None:
    """usage_in_bytes plus memory.stat of a container's cgroup (v1, cgroupfs driver)."""
    for directory in (
        CGROUP_MEMORY / "docker" / container_id,
        CGROUP_MEMORY / "system.slice" / f"docker-{container_id}.scope",
    ):
        try:
            usage = int((directory / "memory.usage_in_bytes").read_text())
            stat = (directory / "memory.stat").read_text()
        except OSError:
            continue
        values = {"usage": usage}
        for line in stat.splitlines():
            key, _, value = line.partition(" ")
            values[key] = int(value)
        return values
    return None


def _host_helpers_rss_mb(container_ids: Sequence[str], ips: Sequence[str]) -> float:
    """RSS of the containerd shims and docker-proxies that serve these containers."""
    ids = set(container_ids)
    ip_set = set(ips)
    total = 0.0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        name = os.path.basename(argv[0])
        ours = False
        if name.startswith("containerd-shim") and "-id" in argv:
            ours = argv[argv.index("-id") + 1] in ids
        elif name == "docker-proxy" and "-container-ip" in argv and "-container-port" in argv:
            ip = argv[argv.index("-container-ip") + 1]
            port = argv[argv.index("-container-port") + 1]
            ours = ip in ip_set and port == str(SERVER_PORT)
        if ours:
            total += rss_mb(int(entry.name))
    return total


def _cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all host CPUs since boot."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


async def memory_per_sandbox(runtimes: Sequence[DockerRuntime]) -> list[str]:
    infos = [await rt.container.show() for rt in runtimes]
    ids = [info["Id"] for info in infos]
    readings = [_cgroup_memory(cid) for cid in ids]
    if all(r is not None for r in readings):
        measure = "cgroup v1 memory.usage_in_bytes"
        usage = [r["usage"] for r in readings if r is not None]
        working_set = [r["usage"] - r.get("total_inactive_file", 0) for r in readings if r]
        rss = [r.get("total_rss", 0) for r in readings if r is not None]
    else:
        # Another cgroup layout: ask the engine (what `docker stats` reads).
        measure = "Docker stats API memory_stats.usage"
        usage, working_set, rss = [], [], []
        for rt in runtimes:
            memory = (await rt.container.stats(stream=False))[0]["memory_stats"]
            stats = memory.get("stats", {})
            usage.append(memory["usage"])
            working_set.append(memory["usage"] - stats.get("total_inactive_file", 0))
            rss.append(stats.get("total_rss", 0))
    ips = [
        net.get("IPAddress", "")
        for info in infos
        for net in (info["NetworkSettings"].get("Networks") or {}).values()
    ]
    helpers = await asyncio.to_thread(_host_helpers_rss_mb, ids, ips)
    n = len(runtimes)
    return [
        f"{statistics.mean(usage) / MB:6.1f} MB per sandbox ({measure}, mean)",
        f"{statistics.mean(working_set) / MB:6.1f} MB working set (usage - total_inactive_file, "
        f"as `docker stats` shows), {statistics.mean(rss) / MB:.1f} MB rss",
        f"{helpers / n:6.1f} MB on the host beside each (containerd shim + docker-proxy RSS)",
    ]


async def concurrent(bench: Bench, n: int) -> None:
    async with AsyncExitStack() as stack:
        started: list[float] = []
        runtimes: list[DockerRuntime] = []

        async def one() -> None:
            # Each sandbox has its own stack, so that all close concurrently below.
            own = AsyncExitStack()
            stack.push_async_callback(own.aclose)
            t0 = time.perf_counter()
            runtimes.append(await bench.start(own, bench.config()))
            started.append(time.perf_counter() - t0)

        async def close_all() -> None:
            await asyncio.gather(*(rt.aclose() for rt in runtimes))

        stack.push_async_callback(close_all)
        cpu0 = _cpu_jiffies()
        t0 = time.perf_counter()
        results = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
        wall = time.perf_counter() - t0
        cpu1 = _cpu_jiffies()
        busy = (cpu1[0] - cpu0[0]) / max(1, cpu1[1] - cpu0[1])
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            raise RuntimeError(f"{len(failures)} of {n} sandboxes failed to start") from failures[0]
        print(
            f"{n:>2} concurrent: all at first observation in {wall:6.2f} s wall "
            f"(each: p50 {statistics.median(started):.2f} s, max {max(started):.2f} s; "
            f"host CPUs {busy:.0%} busy meanwhile, {os.cpu_count()} cores)"
        )
        # Idle means idle: let the servers and shells settle after their first command.
        await asyncio.sleep(IDLE_SETTLE_SECONDS)
        for line in await memory_per_sandbox(runtimes):
            print(f"{n:>2} idle:       {line}")
        t0 = time.perf_counter()
    print(f"{n:>2} closed:     all removed in {time.perf_counter() - t0:6.2f} s")


async def remove_ours() -> list[str]:
    """Force-remove every container carrying this run's label; returns their ids."""
    return await remove_labelled_containers(f"{RUN_LABEL}={RUN_ID}")


async def engine_runtimes() -> set[str]:
    async with open_docker() as docker:
        info = await docker.system.info()
    return set((info.get("Runtimes") or {}).keys())


async def bench_all(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    if args.mode == "mount":
        bench = Bench(args.base_image, mode="mount")
        print(f"mount mode                  {args.base_image} as it is, the runtime bundle mounted")
    else:
        result = await build_runtime_image(args.base_image)
        print(
            f"runtime image               {result.image} (build step {result.build_from!r}, "
            f"{time.perf_counter() - t0:.2f} s)"
        )
        bench = Bench(result.image)
    if not args.echo_only:
        print(f"cold start (runc)           {p50_p90_ms(await cold_starts(bench, args.starts))}")
    await echo_latency(bench, args.n, "runc")
    if args.runsc and "runsc" in await engine_runtimes():
        if not args.echo_only:
            starts = await cold_starts(bench, args.starts, oci_runtime="runsc")
            print(f"cold start (runsc)          {p50_p90_ms(starts)}")
        await echo_latency(bench, args.n, "runsc")
    elif args.runsc:
        print("runsc                       not registered with this engine: skipped")
    for n in [] if args.echo_only else args.concurrency:
        await concurrent(bench, n)


async def main(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    try:
        await bench_all(args)
    finally:
        leftovers = await remove_ours()
        async with open_docker() as docker:
            sandboxes = await list_sandboxes(docker)
        ours = [s.name for s in sandboxes if s.session_id.startswith(SESSION_PREFIX)]
        print(
            f"containers left             {len(ours)} of ours "
            f"({len(leftovers)} removed by the final sweep; {len(sandboxes)} sandboxes in all "
            f"on the engine); whole run {time.perf_counter() - t0:.0f} s"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-image", default=DEFAULT_BASE_IMAGE)
    parser.add_argument("--starts", type=int, default=7, help="cold starts to time (>= 5)")
    parser.add_argument("--n", type=int, default=1000, help="echo hi round trips to time")
    parser.add_argument("--concurrency", type=int, nargs="*", default=[10, 30])
    parser.add_argument("--no-runsc", dest="runsc", action="store_false")
    parser.add_argument("--echo-only", action="store_true", help="only the echo rows")
    parser.add_argument(
        "--mode",
        choices=("build", "mount"),
        default="build",
        help="runtime mode: the built runtime image, or the base image with the bundle mounted",
    )
    asyncio.run(main(parser.parse_args()))
