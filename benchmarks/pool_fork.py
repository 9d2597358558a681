"""Warm pools, snapshots and forks (issue 18): what a sandbox costs when it is not cold.

- acquire → first observation: a pool of ``--size`` sandboxes, full before each
  acquisition (waited for, not timed); from ``pool.acquire(stream)`` to the observation
  of the first ``echo hi`` (the hand-over: the container renamed to the session, the
  ``ready`` status on the caller's stream, then one round trip). Target p50 <= 20 ms;
- 30 acquisitions back to back from a pool of 4: each takes a sandbox, runs
  ``echo hi`` and leaves (the sandbox is removed, the pool refills behind); the total
  time, how many acquisitions found the pool empty and waited, and each one's time;
- sustained starts/s: a pool of ``--fill`` sandboxes filled from empty (starts run
  ``max_starting`` = the CPU count at a time, as the pool does), the rate at which
  started sandboxes arrive; the figure a pool can hand out sandboxes at for ever;
- cold start for comparison: ``DockerRuntime`` enter to first observation, no pool;
- snapshot with 10 MB changed: a session on a durable log writes 5 MB into the
  workspace and 5 MB outside it, then ``await rt.snapshot()`` (``--snapshots`` samples,
  each after new 10 MB); then 50 more actions (``echo``, ``cd``, ``export``, a file
  write each);
- fork at the snapshot, to first observation: ``fork(log, at_event=<the snapshot>)``
  entered (the log is closed: its session is over), then one ``echo``; nothing is
  re-executed;
- fork 50 actions past the snapshot: the same at the last event, the 50 actions
  re-executed in verify mode; and, for comparison, a fork of a log of the same 50
  actions and no snapshot (everything re-executed in a fresh sandbox).

Runs in build mode (the base's runtime image, built or found first) or mount mode
(``--mode mount``), under runc (``--oci-runtime runsc`` for gVisor). Every container it
makes carries this run's label and is removed at the end, also after a failure.

Run: uv run python benchmarks/pool_fork.py [--mode build|mount] [--size 4] [--n 20]
Needs a running Docker engine and the base image (openhands-rt base-image bootstrap).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import remove_labelled_containers

from events import CmdOutputObservation, CmdRunAction, EventStream
from openhands_rt import DockerRuntime, SandboxConfig, SandboxPool, fork, remove_snapshot
from openhands_rt.image import DEFAULT_BASE_IMAGE, build_runtime_image

RUN_LABEL = "org.openhands-rt.bench-run"
RUN_ID = uuid.uuid4().hex[:12]


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"[load {one:.2f}/{five:.2f}]"


def p50_p90(samples_s: list[float]) -> str:
    ordered = sorted(samples_s)
    p50 = statistics.median(ordered) * 1000
    p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))] * 1000
    worst = ordered[-1] * 1000
    return f"p50 {p50:8.1f} ms   p90 {p90:8.1f} ms   max {worst:8.1f} ms   (n={len(ordered)})"


async def echo(rt: DockerRuntime) -> None:
    obs = await rt.run(CmdRunAction("echo hi"))
    if not isinstance(obs, CmdOutputObservation) or obs.content.strip() != "hi":
        raise RuntimeError(f"unexpected answer: {obs!r}")


async def acquire_latency(config: SandboxConfig, size: int, n: int) -> list[float]:
    samples = []
    async with SandboxPool(config, size=size) as pool:
        for i in range(n):
            await pool.wait_ready()
            async with EventStream() as stream:
                start = time.perf_counter()
                async with pool.acquire(stream, session_id=f"bench-{RUN_ID}-{i}") as rt:
                    await echo(rt)
                    samples.append(time.perf_counter() - start)
    return samples


async def back_to_back(
    config: SandboxConfig, size: int, count: int
) -> tuple[float, int, list[float]]:
    each = []
    async with SandboxPool(config, size=size) as pool:
        await pool.wait_ready()
        start = time.perf_counter()
        for _ in range(count):
            async with EventStream() as stream:
                t = time.perf_counter()
                async with pool.acquire(stream) as rt:
                    await echo(rt)
                    each.append(time.perf_counter() - t)
        total = time.perf_counter() - start
        return total, pool.waits, each


async def fill_rate(config: SandboxConfig, count: int) -> tuple[float, int]:
    async with SandboxPool(config, size=count) as pool:
        start = time.perf_counter()
        await pool.wait_ready()
        return time.perf_counter() - start, pool.max_starting


async def cold_starts(config: SandboxConfig, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        async with EventStream() as stream:
            start = time.perf_counter()
            async with DockerRuntime(stream, config) as rt:
                await echo(rt)
                samples.append(time.perf_counter() - start)
    return samples


CHANGE_10MB = (
    "head -c 5000000 /dev/urandom > /workspace/change.bin"
    " && head -c 5000000 /dev/urandom > ~/change.bin"
)


def fifty_actions() -> list[str]:
    return [
        f"mkdir -p /workspace/d{i % 5} && cd /workspace/d{i % 5} && export STEP={i}"
        f" && echo {i} > f{i}.txt && echo $STEP"
        for i in range(50)
    ]


async def record_session(
    config: SandboxConfig, log: Path, *, snapshots: int
) -> tuple[list[float], int, list[str]]:
    """A session on a durable log: ``snapshots`` x (10 MB changed, snapshot), then 50
    actions. Returns the snapshot times, the last snapshot's event id, the snapshot ids."""
    times: list[float] = []
    ids: list[str] = []
    snapshot_event = -1
    async with EventStream(log_path=log) as stream, DockerRuntime(stream, config) as rt:
        for _ in range(snapshots):
            await rt.run(CmdRunAction(CHANGE_10MB))
            start = time.perf_counter()
            snap = await rt.snapshot()
            times.append(time.perf_counter() - start)
            ids.append(snap.snapshot_id)
            snapshot_event = snap.id
        for command in fifty_actions():
            await rt.run(CmdRunAction(command))
    return times, snapshot_event, ids


async def time_fork(log: Path, at_event: int, config: SandboxConfig) -> float:
    start = time.perf_counter()
    async with fork(log, at_event=at_event, config=config) as rt:
        await echo(rt)
        return time.perf_counter() - start


async def last_event(log: Path) -> int:
    async with EventStream(log_path=log) as stream:
        return len(stream) - 1


async def bench_fork(config: SandboxConfig, args: argparse.Namespace, workdir: Path) -> None:
    log = workdir / "session.log"
    times, snapshot_event, ids = await record_session(config, log, snapshots=args.snapshots)
    try:
        print(f"snapshot, 10 MB changed                        {p50_p90(times)}  {load()}")
        print("    target: <= 1 s")
        at_snapshot = [await time_fork(log, snapshot_event, config) for _ in range(args.forks)]
        print(f"fork at a snapshot -> first observation         {p50_p90(at_snapshot)}  {load()}")
        print("    target: <= 1 s")
        end = await last_event(log)
        past = [await time_fork(log, end, config) for _ in range(args.forks)]
        print(f"fork 50 actions past a snapshot -> first obs.   {p50_p90(past)}  {load()}")
        bare = workdir / "bare.log"
        await record_session(config, bare, snapshots=0)
        none = [await time_fork(bare, await last_event(bare), config) for _ in range(args.forks)]
        print(f"fork, no snapshot, 50 actions -> first obs.     {p50_p90(none)}  {load()}")
    finally:
        for snapshot_id in ids:
            await remove_snapshot(snapshot_id)


async def bench(args: argparse.Namespace) -> None:
    labels = {RUN_LABEL: RUN_ID}
    if args.mode == "mount":
        config = SandboxConfig(
            runtime_mode="mount",
            base_container_image=args.base_image,
            labels=labels,
            oci_runtime=args.oci_runtime,
        )
        print(f"mode mount: {args.base_image} as it is, {args.oci_runtime}, {os.cpu_count()} cores")
    else:
        result = await build_runtime_image(args.base_image)
        config = SandboxConfig(
            runtime_container_image=result.image, labels=labels, oci_runtime=args.oci_runtime
        )
        print(f"mode build: {result.image}, {args.oci_runtime}, {os.cpu_count()} cores")
    # The first sandbox of a process pays for finding the image (and the bundle).
    await cold_starts(config, 1)
    cold = await cold_starts(config, args.starts)
    print(f"cold start, no pool, to first observation      {p50_p90(cold)}  {load()}")
    warm = await acquire_latency(config, args.size, args.n)
    print(f"acquire -> first observation (ready pool of {args.size})  {p50_p90(warm)}  {load()}")
    print("    target: p50 <= 20 ms (floor 50 ms)")
    total, waits, each = await back_to_back(config, 4, args.back_to_back)
    print(
        f"{args.back_to_back} acquisitions back to back, size=4          total {total:6.2f} s, "
        f"{args.back_to_back / total:5.2f}/s; acquire waited {waits} times  {load()}"
    )
    print(f"    each acquisition (acquire + echo)           {p50_p90(each)}")
    seconds, concurrency = await fill_rate(config, args.fill)
    print(
        f"sustained starts: {args.fill} sandboxes, {concurrency} at a time     "
        f"{seconds:6.2f} s = {args.fill / seconds:5.2f} starts/s (goal >= 15/s)  {load()}"
    )
    if args.forks:
        with tempfile.TemporaryDirectory(prefix="pool-fork-bench-") as workdir:
            await bench_fork(config, args, Path(workdir))


async def main(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    try:
        await bench(args)
    finally:
        left = await remove_labelled_containers(f"{RUN_LABEL}={RUN_ID}")
        print(f"left behind {len(left)} containers; whole run {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-image", default=DEFAULT_BASE_IMAGE)
    parser.add_argument("--mode", choices=("build", "mount"), default="build")
    parser.add_argument("--oci-runtime", default="runc")
    parser.add_argument("--size", type=int, default=4, help="pool size for the acquire latency")
    parser.add_argument("--n", type=int, default=20, help="acquisitions to time from a full pool")
    parser.add_argument("--back-to-back", type=int, default=30)
    parser.add_argument("--fill", type=int, default=12, help="sandboxes for the starts/s figure")
    parser.add_argument("--starts", type=int, default=5, help="cold starts to time")
    parser.add_argument("--snapshots", type=int, default=3, help="snapshots to time")
    parser.add_argument("--forks", type=int, default=3, help="forks of each kind (0: none)")
    asyncio.run(main(parser.parse_args()))
