"""Replay throughput: verify-mode replay of 1,000 `echo` actions (actions/s).

Records N `echo i` actions into a durable event log through a runtime, then
replays that log in verify mode into a fresh runtime of the same kind and
times the replay itself (sandbox start excluded; it is printed apart). Runs
through LocalRuntime, and through DockerRuntime when a Docker engine and the
base image are there (otherwise a note says why that part was skipped).

Run: uv run python benchmarks/replay.py [--n 1000] [--base-image IMG] [--no-docker]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from events import CmdRunAction, EventStream
from openhands_rt import LocalRuntime, SandboxConfig
from openhands_rt.replay import load_recording, replay
from openhands_rt.runtime import EventStreamRuntime

TARGET_LOCAL = 300.0


def make_runtime(kind: str, stream: EventStream, config: SandboxConfig) -> EventStreamRuntime:
    if kind == "local":
        return LocalRuntime(stream, config)
    from openhands_rt.docker_runtime import DockerRuntime

    return DockerRuntime(stream, config)


async def record(kind: str, log: Path, config: SandboxConfig, n: int) -> float:
    stream = EventStream(log_path=log)
    async with stream, make_runtime(kind, stream, config) as rt:
        t0 = time.perf_counter()
        for i in range(n):
            await rt.run(CmdRunAction(f"echo {i}"))
        elapsed = time.perf_counter() - t0
        await stream.flush()
    return elapsed


async def measure(kind: str, config: SandboxConfig, n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "recorded.log"
        recorded_s = await record(kind, log, config, n)
        recording = load_recording(log)
        stream = EventStream()
        t_start = time.perf_counter()
        async with stream, make_runtime(kind, stream, config) as rt:
            started = time.perf_counter() - t_start
            t0 = time.perf_counter()
            result = await replay(recording, rt, verify=True)
            elapsed = time.perf_counter() - t0
        if not result.ok or result.matched != n:
            assert result.divergence is not None
            raise SystemExit(f"{kind}: replay diverged:\n{result.divergence.describe()}")
        rate = n / elapsed
        print(
            f"{kind:<7} record {n / recorded_s:8.0f} actions/s   "
            f"verify-replay {rate:8.0f} actions/s ({elapsed * 1000 / n:.3f} ms/action, "
            f"{result.matched}/{n} matched)   sandbox start {started:.2f} s"
        )
        if kind == "local":
            verdict = "meets" if rate >= TARGET_LOCAL else "MISSES"
            print(f"        target >= {TARGET_LOCAL:.0f} actions/s through LocalRuntime: {verdict}")


async def docker_ready(base_image: str) -> str | None:
    """``None`` when Docker can be used, else why not."""
    socket = os.environ.get("DOCKER_SOCKET", "/var/run/docker.sock")
    if not os.path.exists(socket):
        return f"no Docker engine ({socket} does not exist)"
    import aiodocker
    from aiodocker.exceptions import DockerError

    try:
        async with aiodocker.Docker() as docker:
            await docker.images.inspect(base_image)
    except DockerError as exc:
        return f"base image {base_image} is not there ({exc.message}); see `base-image bootstrap`"
    except OSError as exc:
        return f"Docker engine not reachable: {exc}"
    return None


async def main(n: int, base_image: str, docker: bool) -> None:
    with tempfile.TemporaryDirectory() as work:
        config = SandboxConfig(workspace_dir=work, timeout=60, no_change_timeout=30)
        await measure("local", config, n)
    if not docker:
        print("docker  skipped (--no-docker)")
        return
    why_not = await docker_ready(base_image)
    if why_not is not None:
        print(f"docker  skipped: {why_not}")
        return
    config = SandboxConfig(base_container_image=base_image, timeout=60, no_change_timeout=30)
    await measure("docker", config, n)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument(
        "--base-image",
        default=os.environ.get("OPENHANDS_RT_BASE_IMAGE", "openhands-rt/base:bookworm"),
    )
    parser.add_argument("--no-docker", action="store_true")
    ns = parser.parse_args()
    asyncio.run(main(ns.n, ns.base_image, not ns.no_docker))
