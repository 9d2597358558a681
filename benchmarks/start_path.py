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

Run: uv run python benchmarks/start_path.py [--samples 7] [--base-image IMG]
Needs a running Docker engine and the base image (openhands-rt base-image bootstrap).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import msgspec

sys.path.insert(0, str(Path(__file__).parent))

from _util import remove_labelled_containers

from events import CmdOutputObservation, CmdRunAction, Event
from openhands_rt import SandboxConfig
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

        client = ChannelClient(endpoint.url, api_key=api_key, client_id="bench", on_event=on_event)
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
    for line in text.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        own, total, name = (part.strip() for part in line.removeprefix("import time:").split("|"))
        rows.append((int(own), int(total), name.strip()))
    main = next((r for r in rows if r[2] == "container_server.main"), None)
    top = sorted(rows, reverse=True)[:6]
    shown = ", ".join(f"{name} {own / 1000:.0f}" for own, _, name in top)
    total_ms = main[1] / 1000 if main else float("nan")
    return f"{total_ms:6.0f} ms in all; biggest own times (ms): {shown}"


async def main(args: argparse.Namespace) -> None:
    print(f"start path: base {args.base_image}, {os.cpu_count()} cores, {args.samples} samples")
    runtime = await build_runtime_image(args.base_image)
    bundle = await anyio.to_thread.run_sync(make_bundle)
    configs = {
        "build": SandboxConfig(runtime_container_image=runtime.image, labels={RUN_LABEL: RUN_ID}),
        "mount": SandboxConfig(
            runtime_mode="mount",
            base_container_image=args.base_image,
            labels={RUN_LABEL: RUN_ID},
        ),
    }
    samples: dict[str, list[dict[str, float]]] = {mode: [] for mode in configs}
    try:
        async with open_docker() as docker:
            for i in range(args.samples):
                order = list(configs) if i % 2 == 0 else list(configs)[::-1]
                for mode in order:
                    with_bundle = bundle if mode == "mount" else None
                    samples[mode].append(await one_start(docker, configs[mode], with_bundle))
            print(f"{'step (p50, ms)':24}" + "".join(f"{mode:>10}" for mode in configs))
            for step in STEPS:
                row = [statistics.median(s[step] for s in samples[mode]) for mode in configs]
                print(f"{step:24}" + "".join(f"{value * 1000:10.1f}" for value in row))
            code = "import container_server.main"
            print(
                "server imports (build)  "
                + await import_profile(
                    docker, runtime.image, [SERVER_PYTHON, "-I", "-X", "importtime", "-c", code], []
                )
            )
            site = f"{BUNDLE_MOUNT}/{bundle.manifest.site}"
            bundle_code = f"import sys; sys.path[:0] = [{site!r}]; {code}"
            print(
                "server imports (mount)  "
                + await import_profile(
                    docker,
                    args.base_image,
                    [*bundle.python_command(isolated=True), "-X", "importtime", "-c", bundle_code],
                    [f"{bundle.path}:{BUNDLE_MOUNT}:ro"],
                )
            )
    finally:
        left = await remove_labelled_containers(f"{RUN_LABEL}={RUN_ID}")
        print(f"containers left             0 of ours ({len(left)} removed by the final sweep)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-image", default=DEFAULT_BASE_IMAGE)
    parser.add_argument("--samples", type=int, default=7, help="cold starts per mode")
    asyncio.run(main(parser.parse_args()))
