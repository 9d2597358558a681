"""Where a sandbox's cold start goes: engine, server process, readiness, channel, first action.

Each sample makes the container ``DockerRuntime`` would make (``openhands_rt.docker.spec``)
and times its steps one by one, in each runtime mode, the modes alternating sample
by sample:

- ``create``: the engine's create request;
- ``start``: the engine's start request (runc sets up the container and execs init);
- ``process → listening``: from the engine's ``State.StartedAt`` to the timestamp the
  engine gave the server's "listening on" line: the interpreter's start, the server's
  imports, the sandbox user's set-up, the socket;
- ``line seen``: from that timestamp until the host has read the line from the log stream;
- ``connect``: opening the WebSocket channel (docker-proxy on the published port);
- ``first observation``: ``echo hi`` to its observation (the shell's first prompt);
- ``total``: create to first observation.

Then the server's imports alone, in a container of each mode (``python -X importtime``):
the total, and the biggest modules by their own time.

Then **sustained starts/s**: ``--sustained N`` sandboxes through ``DockerRuntime``, at
most ``--concurrency`` at a time, each started, its first ``echo hi`` answered and
closed (container removed); starts/s is N over the wall time. Where the CPU went
meanwhile, in CPU-seconds per start: the sandboxes' own cgroups (the server, its shell,
docker-init; under runsc the sentry), dockerd and containerd (with the docker-proxies
they reaped), the containerd shims (with their runc runs, read before each removal),
this process (the host side: runtimes, channels, aiodocker), and the rest of the
machine's busy time (the kernel's share, what exits unreaped, and whatever else runs on
the machine: the machine's load is printed before each run).

Run: uv run python benchmarks/start_path.py [--samples 7] [--base-image IMG]
         [--sustained 30] [--concurrency 4] [--oci-runtime runc runsc]
Needs a running Docker engine and the base image (openhands-rt base-image bootstrap).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import os
import resource
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import msgspec

sys.path.insert(0, str(Path(__file__).parent))

from _util import remove_labelled_containers

from events import CmdOutputObservation, CmdRunAction, Event, EventStream
from openhands_rt import DockerRuntime, SandboxConfig
from openhands_rt.bundle import BUNDLE_MOUNT, make_bundle
from openhands_rt.channel import ChannelClient
from openhands_rt.docker.lifecycle import wait_listening
from openhands_rt.docker.rundir import make_run_dir, remove_dirs
from openhands_rt.docker.spec import SERVER_PYTHON, container_config, find_endpoint
from openhands_rt.docker_client import open_docker
from openhands_rt.image import DEFAULT_BASE_IMAGE, build_runtime_image

RUN_LABEL = "org.openhands-rt.bench-run"
RUN_ID = uuid.uuid4().hex[:12]
STEPS = (
    "create",
    "start",
    "process → listening",
    "line seen",
    "connect",
    "first observation",
    "total",
)


def engine_time(stamp: str) -> float:
    """A Unix time from the engine's RFC 3339 stamp (nanoseconds cut to microseconds)."""
    head, _, rest = stamp.partition(".")
    fraction = rest.rstrip("Z")[:6].ljust(6, "0")
    moment = datetime.datetime.strptime(f"{head}.{fraction}", "%Y-%m-%dT%H:%M:%S.%f")
    return moment.replace(tzinfo=datetime.timezone.utc).timestamp()


async def one_start(docker: Any, config: SandboxConfig, bundle: Any) -> dict[str, float]:
    api_key = uuid.uuid4().hex
    session = f"startpath-{uuid.uuid4().hex[:8]}"
    run_dir = make_run_dir(session, api_key)
    body = container_config(
        config,
        session_id=session,
        image=config.runtime_container_image or config.base_container_image,
        run_dir=run_dir,
        workspace=None,
        owner_uid=None,
        bundle=bundle,
    )
    steps: dict[str, float] = {}
    container = None
    try:
        t0 = time.perf_counter()
        container = await docker.containers.create(body, name=f"openhands-rt-{session}")
        t1 = time.perf_counter()
        since = time.time() - 1
        await container.start()
        t2 = time.perf_counter()
        with anyio.fail_after(60):
            await wait_listening(docker, container, name=session, since=since)
        seen_wall, t3 = time.time(), time.perf_counter()
        info = await container.show()
        started = engine_time(info["State"]["StartedAt"])
        lines = await container.log(stdout=True, timestamps=True)
        ready_line = next(line for line in lines if "listening on" in line)
        listening = engine_time(ready_line.split(" ", 1)[0])
        endpoint = find_endpoint(config, info, api_key=api_key, name=session)
        arrived = anyio.Event()

        def on_event(event: Event) -> None:
            if isinstance(event, CmdOutputObservation) and event.cause == 1:
                arrived.set()

        client = ChannelClient(
            endpoint.url,
            api_key=api_key,
            client_id="bench",
            on_event=on_event,
            unix_socket=endpoint.unix_socket,
            peer_uid=endpoint.peer_uid,
        )
        async with client:
            t4 = time.perf_counter()
            await client.send(msgspec.structs.replace(CmdRunAction("echo hi"), id=1))
            with anyio.fail_after(60):
                await arrived.wait()
            t5 = time.perf_counter()
        steps["create"] = t1 - t0
        steps["start"] = t2 - t1
        steps["process → listening"] = listening - started
        steps["line seen"] = seen_wall - listening
        steps["connect"] = t4 - t3
        steps["first observation"] = t5 - t4
        steps["total"] = t5 - t0
        return steps
    finally:
        if container is not None:
            await container.delete(force=True, v=True)
        remove_dirs(run_dir)


async def import_profile(docker: Any, image: str, command: list[str], binds: list[str]) -> str:
    """The server's imports in a container: total and the biggest modules by own time."""
    container = await docker.containers.create(
        {
            "Image": image,
            "Entrypoint": command[:1],
            "Cmd": command[1:],
            "User": "0:0",
            "Labels": {RUN_LABEL: RUN_ID},
            "HostConfig": {"Binds": binds, "NetworkMode": "none"},
        }
    )
    try:
        await container.start()
        await container.wait()
        text = "".join(await container.log(stdout=False, stderr=True))
    finally:
        await container.delete(force=True, v=True)
    rows = []
    every = 0  # the imports the interpreter made at the top level: all of them
    for line in text.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        own, total, name = line.removeprefix("import time:").split("|")
        if len(name) - len(name.lstrip()) == 1:
            every += int(total)
        rows.append((int(own), int(total), name.strip()))
    top = sorted(rows, reverse=True)[:6]
    shown = ", ".join(f"{name} {own / 1000:.0f}" for own, _, name in top)
    return f"{every / 1000:6.0f} ms in all; biggest own times (ms): {shown}"


CGROUP_CPUACCT = Path("/sys/fs/cgroup/cpuacct")
ENGINE_PROCESSES = ("dockerd", "containerd")
IDLE_SAMPLE_SECONDS = 1.0


def _busy_seconds() -> float:
    """CPU-seconds all host CPUs spent busy since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _processes() -> Iterator[tuple[str, list[str], float]]:
    """(name, argv, CPU-seconds with its reaped children) of every process now."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        # utime, stime, cutime, cstime: a reaped child's time goes to its parent
        # (docker-proxy to dockerd, runc to its shim).
        ticks = sum(int(v) for v in fields[11:15])
        yield name, argv, ticks / os.sysconf("SC_CLK_TCK")


def _engine_seconds() -> float:
    """CPU-seconds dockerd and containerd (and their reaped children) have used."""
    return sum(cpu for name, _, cpu in _processes() if name in ENGINE_PROCESSES)


def _shim_seconds(container_id: str) -> float:
    """CPU-seconds of the container's containerd shim so far (runc's runs included)."""
    for name, argv, cpu in _processes():
        if name.startswith("containerd-shim") and container_id in argv:
            return cpu
    return float("nan")


def _own_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _container_seconds(container_id: str) -> float:
    """CPU-seconds charged to a container's cgroup (v1 cpuacct, cgroupfs driver); NaN if unknown."""
    for directory in (
        CGROUP_CPUACCT / "docker" / container_id,
        CGROUP_CPUACCT / "system.slice" / f"docker-{container_id}.scope",
    ):
        try:
            return int((directory / "cpuacct.usage").read_text()) / 1e9
        except OSError:
            continue
    return float("nan")


async def sustained(config: SandboxConfig, n: int, concurrency: int) -> str:
    """``n`` sandboxes, ``concurrency`` at a time, each to its first ``echo`` and closed."""
    limiter = anyio.CapacityLimiter(concurrency)
    latencies: list[float] = []
    in_containers: list[float] = []
    shims: list[float] = []

    async def one(i: int) -> None:
        async with limiter:
            t0 = time.perf_counter()
            async with (
                EventStream() as stream,
                DockerRuntime(stream, config, session_id=f"startpath-{RUN_ID}-{i}") as rt,
            ):
                obs = await rt.run(CmdRunAction("echo hi"))
                if not isinstance(obs, CmdOutputObservation) or obs.content.strip() != "hi":
                    raise RuntimeError(f"unexpected answer to echo hi: {obs!r}")
                in_containers.append(_container_seconds(rt.container.id))
                shims.append(await anyio.to_thread.run_sync(_shim_seconds, rt.container.id))
            latencies.append(time.perf_counter() - t0)

    idle_busy = _busy_seconds()
    await anyio.sleep(IDLE_SAMPLE_SECONDS)
    load = (_busy_seconds() - idle_busy) / IDLE_SAMPLE_SECONDS
    before = (_busy_seconds(), await anyio.to_thread.run_sync(_engine_seconds), _own_seconds())
    t0 = time.perf_counter()
    async with anyio.create_task_group() as task_group:
        for i in range(n):
            task_group.start_soon(one, i)
    wall = time.perf_counter() - t0
    after = (_busy_seconds(), await anyio.to_thread.run_sync(_engine_seconds), _own_seconds())
    busy, engine, own = (b - a for a, b in zip(before, after, strict=True))
    containers, shim = sum(in_containers), sum(shims)
    rest = busy - engine - own - containers - shim
    return (
        f"{n / wall:5.2f} starts/s ({n} in {wall:5.2f} s, {concurrency} at a time; each "
        f"p50 {statistics.median(latencies) * 1000:.0f} ms; {load:.2f} cores busy before)\n"
        f"      CPU-s per start: {busy / n:.3f} busy = sandboxes {containers / n:.3f} "
        f"+ dockerd/containerd {engine / n:.3f} + shims {shim / n:.3f} "
        f"+ host side {own / n:.3f} + rest {rest / n:.3f}"
    )


async def breakdown(
    docker: Any,
    configs: dict[str, SandboxConfig],
    bundle: Any,
    images: tuple[str, str],
    samples: int,
) -> None:
    """The cold start step by step, each config's p50; then the server's imports.

    ``images``: the runtime image (build mode) and the image used as it is (mount mode)."""
    runtime_image, mount_image = images
    steps: dict[str, list[dict[str, float]]] = {mode: [] for mode in configs}
    for i in range(samples):
        order = list(configs) if i % 2 == 0 else list(configs)[::-1]
        for mode in order:
            with_bundle = bundle if configs[mode].runtime_mode == "mount" else None
            steps[mode].append(await one_start(docker, configs[mode], with_bundle))
    print(f"{'step (p50, ms)':24}" + "".join(f"{mode:>11}" for mode in configs))
    for step in STEPS:
        row = [statistics.median(s[step] for s in steps[mode]) for mode in configs]
        print(f"{step:24}" + "".join(f"{value * 1000:11.1f}" for value in row))
    # The server's own entry point, up to its argument parsing.
    code = (
        "import sys, runpy; sys.argv[1:] = ['--help']; "
        "runpy.run_module('container_server', run_name='__main__', alter_sys=True)"
    )
    print(
        "server imports (build)  "
        + await import_profile(
            docker, runtime_image, [SERVER_PYTHON, "-I", "-X", "importtime", "-c", code], []
        )
    )
    site = f"{BUNDLE_MOUNT}/{bundle.manifest.site}"
    bundle_code = f"import sys; sys.path[:0] = [{site!r}]; {code}"
    print(
        "server imports (mount)  "
        + await import_profile(
            docker,
            mount_image,
            [*bundle.python_command(isolated=True), "-X", "importtime", "-c", bundle_code],
            [f"{bundle.path}:{BUNDLE_MOUNT}:ro"],
        )
    )


async def main(args: argparse.Namespace) -> None:
    print(f"start path: base {args.base_image}, {os.cpu_count()} cores, {args.samples} samples")
    runtime = await build_runtime_image(args.base_image)
    bundle = await anyio.to_thread.run_sync(make_bundle)
    modes = {
        "build": SandboxConfig(runtime_container_image=runtime.image, labels={RUN_LABEL: RUN_ID}),
        "mount": SandboxConfig(
            runtime_mode="mount",
            base_container_image=args.base_image,
            labels={RUN_LABEL: RUN_ID},
        ),
    }
    # tcp: the port Docker publishes (docker-proxy); unix: the socket in the run directory.
    configs = {
        # (tcp is the default: left unset, so that this runs on a tree without the field)
        mode if channel == "tcp" else f"{mode}/{channel}": (
            config if channel == "tcp" else dataclasses.replace(config, channel=channel)
        )
        for channel in args.channel
        for mode, config in modes.items()
    }
    try:
        if args.samples:
            async with open_docker() as docker:
                images = (runtime.image, args.base_image)
                await breakdown(docker, configs, bundle, images, args.samples)
        if args.sustained:
            print(f"sustained starts ({os.cpu_count()} cores):")
        for oci_runtime in args.oci_runtime if args.sustained else ():
            for mode, config in configs.items():
                variant = dataclasses.replace(
                    config, oci_runtime=None if oci_runtime == "runc" else oci_runtime
                )
                figures = await sustained(variant, args.sustained, args.concurrency)
                print(f"  {mode:10} {oci_runtime:5}  {figures}")
    finally:
        left = await remove_labelled_containers(f"{RUN_LABEL}={RUN_ID}")
        print(f"containers left             0 of ours ({len(left)} removed by the final sweep)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-image", default=DEFAULT_BASE_IMAGE)
    parser.add_argument("--samples", type=int, default=7, help="cold starts per mode")
    parser.add_argument("--sustained", type=int, default=30, help="sandboxes per run; 0: none")
    parser.add_argument("--concurrency", type=int, default=4, help="sustained starts at a time")
    parser.add_argument("--oci-runtime", nargs="*", default=["runc"], help="runc, runsc")
    parser.add_argument("--channel", nargs="*", default=["tcp", "unix"], help="tcp, unix")
    asyncio.run(main(parser.parse_args()))
