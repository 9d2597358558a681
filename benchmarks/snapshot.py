"""Snapshots: how long ``rt.snapshot()`` takes with 10 MB changed, and a start from one.

For each runtime mode (and OCI runtime, ``--oci-runtime``):

- ``snapshot``: ``await rt.snapshot()`` of a sandbox in which the last action wrote
  10 MB of new files (half in the workspace, a bind mount; half outside it, in
  the container's layer), sampled ``--samples`` times, each after new 10 MB;
- ``paused``: how long the container was frozen within that (pause to unpause);
- ``start from a snapshot``: ``DockerRuntime(..., snapshot=ID)`` entered, to the
  observation of its first ``echo``.

:func:`measure_snapshot` returns the samples, for other scripts (pool_fork.py).

Run: uv run python benchmarks/snapshot.py [--samples 5] [--oci-runtime runsc]
Needs a running Docker engine and the base image (openhands-rt base-image bootstrap).
Everything it makes (containers, images, snapshot directories) is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _util import percentiles_ms, remove_labelled_images

from events import CmdOutputObservation, CmdRunAction, EventStream
from openhands_rt import DockerRuntime, SandboxConfig, remove_snapshot
from openhands_rt.docker import snapshot as snapshot_module
from openhands_rt.image import DEFAULT_BASE_IMAGE, build_runtime_image

RUN_LABEL = "org.openhands-rt.bench-run"
RUN_ID = uuid.uuid4().hex[:12]
CHANGE = (
    "head -c 5000000 /dev/urandom > /workspace/change.bin"
    " && head -c 5000000 /dev/urandom > ~/change.bin"
)


@dataclass
class SnapshotFigures:
    snapshot_s: list[float] = field(default_factory=list)
    paused_s: list[float] = field(default_factory=list)
    start_s: list[float] = field(default_factory=list)


class _PauseTimer:
    """Times pause → unpause inside :func:`openhands_rt.docker.snapshot.capture`."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._capture = snapshot_module.capture

    async def capture(self, *args: Any, **kwargs: Any) -> None:
        started = time.perf_counter()
        try:
            await self._capture(*args, **kwargs)
        finally:
            self.samples.append(time.perf_counter() - started)


async def _run(rt: DockerRuntime, command: str) -> CmdOutputObservation:
    obs = await rt.run(CmdRunAction(command, blocking=True))
    assert isinstance(obs, CmdOutputObservation), obs
    assert obs.exit_code == 0, obs
    return obs


async def measure_snapshot(config: SandboxConfig, *, samples: int = 5) -> SnapshotFigures:
    """Snapshot a sandbox of ``config`` ``samples`` times with 10 MB changed before each,
    and start a sandbox from each snapshot; every snapshot is removed afterwards."""
    figures = SnapshotFigures()
    timer = _PauseTimer()
    snapshot_module.capture = timer.capture
    made: list[str] = []
    try:
        with tempfile.TemporaryDirectory(prefix="openhands-rt-bench-") as workspace:
            source = SandboxConfig(**{**config.__dict__, "workspace_dir": workspace})
            async with EventStream() as stream, DockerRuntime(stream, source) as rt:
                for n in range(samples):
                    await _run(rt, CHANGE.format(n=n))
                    started = time.perf_counter()
                    snap = await rt.snapshot()
                    figures.snapshot_s.append(time.perf_counter() - started)
                    made.append(snap.snapshot_id)
            for snapshot_id in made:
                with tempfile.TemporaryDirectory(prefix="openhands-rt-bench-") as restored:
                    target = SandboxConfig(**{**config.__dict__, "workspace_dir": restored})
                    async with EventStream() as stream:
                        started = time.perf_counter()
                        async with DockerRuntime(stream, target, snapshot=snapshot_id) as rt:
                            await _run(rt, "echo hi")
                            figures.start_s.append(time.perf_counter() - started)
    finally:
        snapshot_module.capture = timer._capture
        for snapshot_id in made:
            await remove_snapshot(snapshot_id)
    figures.paused_s = timer.samples
    return figures


async def main(args: argparse.Namespace) -> None:
    runtime_image = (await build_runtime_image(args.base_image)).image
    labels = {RUN_LABEL: RUN_ID}
    try:
        with tempfile.TemporaryDirectory(prefix="openhands-rt-bench-data-") as data:
            os.environ["OPENHANDS_RT_DATA_DIR"] = data
            for mode in ("build", "mount"):
                config = SandboxConfig(
                    runtime_mode=mode,
                    base_container_image=args.base_image,
                    runtime_container_image=runtime_image if mode == "build" else None,
                    oci_runtime=args.oci_runtime,
                    labels=labels,
                )
                figures = await measure_snapshot(config, samples=args.samples)
                runtime = args.oci_runtime or "runc"
                print(f"{mode} mode, {runtime}:")
                print(f"  snapshot, 10 MB changed  {percentiles_ms(figures.snapshot_s)}")
                print(f"    of which paused        {percentiles_ms(figures.paused_s)}")
                print(f"  start from a snapshot    {percentiles_ms(figures.start_s)}")
    finally:
        await remove_labelled_images(f"{RUN_LABEL}={RUN_ID}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--base-image", default=DEFAULT_BASE_IMAGE)
    parser.add_argument("--oci-runtime", default=None, help="runc (default) or runsc")
    asyncio.run(main(parser.parse_args()))
