"""The Jupyter plugin: kernel start, `print(1)` round trip, what the plugin adds to a start.

- kernel start: ``JupyterPlugin.initialize()`` in this process (spawn ipykernel,
  connect, first reply), then ``aclose()``;
- sandbox start with and without ``plugins=[JupyterRequirement()]``: ``connect()``
  of a LocalRuntime, and of a DockerRuntime (cold: create + start the container,
  wait for the server). The server starts the shell and the plugins side by side
  and answers only when both are ready, so the difference is what the plugin adds;
- ``IPythonRunCellAction("print(1)")`` round trips through ``run()``, warm kernel,
  locally and through Docker.

The Docker image with the plugin (jupyter installed from the wheelhouse) is built
or found first and that build is timed on its own line, apart from every start.
Containers carry a run label and are removed at the end, also after a failure.

Run: uv run python benchmarks/jupyter_latency.py [--n 1000] [--starts 5] [--no-docker]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _util import percentiles_ms, remove_labelled_containers

from container_server.jupyter import JupyterPlugin
from events import EventStream, IPythonRunCellAction, IPythonRunCellObservation
from openhands_rt import (
    DockerRuntime,
    JupyterRequirement,
    LocalRuntime,
    PluginRequirement,
    SandboxConfig,
)
from openhands_rt.docker_client import open_docker
from openhands_rt.image import DEFAULT_BASE_IMAGE, build_runtime_image
from openhands_rt.runtime import EventStreamRuntime

RUN_LABEL = "org.openhands-rt.bench-run"
RUN_ID = uuid.uuid4().hex[:12]
WARM_UP = 50
WIDTH = 40


def p50_ms(samples_s: Sequence[float]) -> str:
    return f"p50 {statistics.median(samples_s) * 1000:8.1f} ms   (n={len(samples_s)})"


async def kernel_starts(n: int) -> list[float]:
    samples = []
    with tempfile.TemporaryDirectory() as work:
        for _ in range(n):
            plugin = JupyterPlugin()
            t0 = time.perf_counter()
            try:
                await plugin.initialize(None, working_dir=work)
                samples.append(time.perf_counter() - t0)
            finally:
                await plugin.aclose()
    return samples


async def print_one(runtime: EventStreamRuntime) -> None:
    obs = await runtime.run(IPythonRunCellAction("print(1)"))
    if not isinstance(obs, IPythonRunCellObservation) or not obs.content.startswith("1\n"):
        raise RuntimeError(f"unexpected answer to print(1): {obs!r}")


async def cell_latency(runtime: EventStreamRuntime, n: int) -> list[float]:
    for _ in range(WARM_UP):
        await print_one(runtime)
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        await print_one(runtime)
        samples.append(time.perf_counter() - t0)
    return samples


class Sandboxes:
    """Makes runtimes of one kind (local or docker), with or without the jupyter plugin."""

    def __init__(self, kind: str, *, plain_image: str = "", jupyter_image: str = "") -> None:
        self.kind = kind
        self.images = {False: plain_image, True: jupyter_image}

    def runtime(self, stream: EventStream, *, plugin: bool) -> EventStreamRuntime:
        plugins: list[PluginRequirement] = [JupyterRequirement()] if plugin else []
        if self.kind == "local":
            return LocalRuntime(stream, SandboxConfig(plugins=plugins, timeout=60.0))
        config = SandboxConfig(
            plugins=plugins,
            timeout=60.0,
            # Each start runs the image made for it: only the jupyter one has the kernel.
            runtime_container_image=self.images[plugin],
            labels={RUN_LABEL: RUN_ID},
        )
        return DockerRuntime(stream, config, session_id=f"bench-{RUN_ID}-{uuid.uuid4().hex[:6]}")

    async def connect_times(self, n: int, *, plugin: bool) -> tuple[list[float], list[float]]:
        """``connect()`` durations, and (with the plugin) each fresh kernel's first cell."""
        starts, first_cells = [], []
        for _ in range(n):
            async with EventStream() as stream:
                runtime = self.runtime(stream, plugin=plugin)
                try:
                    t0 = time.perf_counter()
                    await runtime.connect()
                    t1 = time.perf_counter()
                    starts.append(t1 - t0)
                    if plugin:
                        await print_one(runtime)
                        first_cells.append(time.perf_counter() - t1)
                finally:
                    await runtime.aclose()
        return starts, first_cells

    async def report(self, n_starts: int, n_cells: int) -> None:
        without, _ = await self.connect_times(n_starts, plugin=False)
        with_plugin, first_cells = await self.connect_times(n_starts, plugin=True)
        added = statistics.median(with_plugin) - statistics.median(without)
        print(f"{self.kind} start, no plugin".ljust(WIDTH), p50_ms(without))
        print(f"{self.kind} start, jupyter plugin".ljust(WIDTH), p50_ms(with_plugin))
        print("  -> the plugin adds".ljust(WIDTH), f"{added * 1000:8.1f} ms (difference of p50s)")
        print("  first print(1) after the start".ljust(WIDTH), p50_ms(first_cells))
        async with AsyncExitStack() as stack:
            stream = await stack.enter_async_context(EventStream())
            runtime = self.runtime(stream, plugin=True)
            stack.push_async_callback(runtime.aclose)
            await runtime.connect()
            samples = await cell_latency(runtime, n_cells)
        print(f"print(1) via {self.kind} run()".ljust(WIDTH), percentiles_ms(samples))


async def remove_ours() -> int:
    return len(await remove_labelled_containers(f"{RUN_LABEL}={RUN_ID}"))


async def main(args: argparse.Namespace) -> None:
    kernel = await kernel_starts(args.starts)
    print("kernel start (JupyterPlugin.initialize)".ljust(WIDTH), p50_ms(kernel))
    await Sandboxes("local").report(args.starts, args.n)
    if not args.docker:
        return
    t0 = time.perf_counter()
    plain = await build_runtime_image(args.base_image)
    t1 = time.perf_counter()
    jupyter = await build_runtime_image(args.base_image, plugins=[JupyterRequirement()])
    t2 = time.perf_counter()
    print("image, no plugin".ljust(WIDTH), f"{t1 - t0:6.2f} s, step {plain.build_from!r}")
    print(
        "image, jupyter (build timed apart)".ljust(WIDTH),
        f"{t2 - t1:6.2f} s, step {jupyter.build_from!r} ({jupyter.image})",
    )
    try:
        await Sandboxes("docker", plain_image=plain.image, jupyter_image=jupyter.image).report(
            args.starts, args.n_docker
        )
    finally:
        removed = await remove_ours()
        async with open_docker() as docker:
            left = await docker.containers.list(
                all=True, filters={"label": [f"{RUN_LABEL}={RUN_ID}"]}
            )
        print("containers left".ljust(WIDTH), f"{len(left)} ({removed} removed by the final sweep)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-image", default=DEFAULT_BASE_IMAGE)
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--n", type=int, default=1000, help="local print(1) round trips to time")
    parser.add_argument("--n-docker", type=int, default=500, help="the same through Docker")
    parser.add_argument("--no-docker", dest="docker", action="store_false")
    asyncio.run(main(parser.parse_args()))
