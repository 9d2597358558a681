"""Replay throughput: verify-mode replay of recorded sessions (actions/s).

Records a session through a runtime into a durable event log, then replays that
log in verify mode into a fresh runtime of the same kind and times the replay
itself (sandbox start excluded; it is printed apart). Two sessions:

- ``echo``: N ``echo i`` commands (one shell, one after another): what the
  issue's target is about;
- ``mixed``: the same number of actions, a command, a file write, a command
  reading that file, a file read and an editor ``view`` in turn: the file and
  editor actions are barriers to pipelining (see openhands_rt.replay.execute).

Each session is replayed pipelined (``max_in_flight`` = MAX_IN_FLIGHT) and
serial (``max_in_flight=1``, every action waits for the previous answer) into
the same sandbox, alternately, ``--rounds`` times each, so load on a shared
machine hits both alike; the median of each is printed, with the target of
issue 20 and the ratio to it. Then the real OpenHands trajectories under
tests/data/openhands-trajectories that verify from an empty workspace are
replayed once each (they hold one to a few actions: their time is the round
trips, not throughput).

Runs through LocalRuntime, and through DockerRuntime when a Docker engine and
the base image are there (otherwise a note says why that part was skipped).

Run: uv run python benchmarks/replay.py [--n 1000] [--rounds 3] [--base-image IMG] [--no-docker]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from events import (
    Action,
    CmdRunAction,
    EventStream,
    FileEditAction,
    FileReadAction,
    FileWriteAction,
)
from openhands_rt import LocalRuntime, SandboxConfig
from openhands_rt.replay import MAX_IN_FLIGHT, Recording, load_recording, replay, replay_file
from openhands_rt.runtime import EventStreamRuntime

TARGET = 5000.0  # actions/s, issue 20: `replay --verify` of a recorded session
REAL = Path(__file__).resolve().parents[1] / "tests" / "data" / "openhands-trajectories"
# Real trajectories that verify from an empty workspace (see tests/openhands_rt/test_replay.py).
REAL_VERIFYING = ["basic.json"]


def make_runtime(kind: str, stream: EventStream, config: SandboxConfig) -> EventStreamRuntime:
    if kind == "local":
        return LocalRuntime(stream, config)
    from openhands_rt.docker_runtime import DockerRuntime

    return DockerRuntime(stream, config)


def echo_session(n: int) -> list[Action]:
    return [CmdRunAction(f"echo {i}") for i in range(n)]


def mixed_session(n: int) -> list[Action]:
    actions: list[Action] = []
    for i in range(n // 5):
        name = f"f{i % 10}.txt"
        actions += [
            CmdRunAction(f"echo {i}"),
            FileWriteAction(name, f"line {i}\n"),
            CmdRunAction(f"cat {name}"),
            FileReadAction(name),
            FileEditAction(name, "view"),
        ]
    return actions


async def record(
    kind: str, log: Path, config: SandboxConfig, actions: list[Action]
) -> tuple[Recording, float]:
    stream = EventStream(log_path=log)
    async with stream, make_runtime(kind, stream, config) as rt:
        t0 = time.perf_counter()
        for action in actions:
            await rt.run(action)
        elapsed = time.perf_counter() - t0
        await stream.flush()
    return load_recording(log), elapsed


async def timed_replay(recording: Recording, rt: EventStreamRuntime, depth: int) -> float:
    """One verify-mode replay into ``rt``: actions/s (exits when it diverges)."""
    t0 = time.perf_counter()
    result = await replay(recording, rt, verify=True, max_in_flight=depth)
    elapsed = time.perf_counter() - t0
    if not result.ok or result.matched != len(recording.steps):
        assert result.divergence is not None
        raise SystemExit(f"replay diverged:\n{result.divergence.describe()}")
    return len(recording.steps) / elapsed


async def measure(kind: str, config: SandboxConfig, n: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for label, actions in [("echo", echo_session(n)), ("mixed", mixed_session(n))]:
            recording, recorded_s = await record(kind, Path(tmp) / f"{label}.log", config, actions)
            stream = EventStream()
            t_start = time.perf_counter()
            async with stream, make_runtime(kind, stream, config) as rt:
                started = time.perf_counter() - t_start
                rates: dict[int, list[float]] = {1: [], MAX_IN_FLIGHT: []}
                for _ in range(rounds):
                    for depth in (MAX_IN_FLIGHT, 1):  # alternately: load hits both alike
                        rates[depth].append(await timed_replay(recording, rt, depth))
            serial, piped = statistics.median(rates[1]), statistics.median(rates[MAX_IN_FLIGHT])
            steps = len(recording.steps)
            print(
                f"{kind:<7} {label:<6} {steps} actions: record {steps / recorded_s:6.0f}/s   "
                f"verify-replay serial {serial:6.0f}/s   pipelined ({MAX_IN_FLIGHT} in flight) "
                f"{piped:6.0f}/s = {piped / serial:.2f}x serial   (median of {rounds}; "
                f"sandbox start {started:.2f} s)"
            )
            verdict = "meets" if piped >= TARGET else "MISSES"
            print(
                f"        target >= {TARGET:.0f} actions/s: {piped / TARGET:.2f}x the target "
                f"({verdict})"
            )


async def measure_real(config: SandboxConfig) -> None:
    for name in REAL_VERIFYING:
        path = REAL / name
        recording = load_recording(path)
        t0 = time.perf_counter()
        result = await replay_file(path, verify=True, local=True, config=config)
        elapsed = time.perf_counter() - t0
        outcome = "all matched" if result.ok else "DIVERGED"
        print(
            f"real    {name}: {len(recording.steps)} runnable of {len(recording.events)} events, "
            f"{result.matched} matched, {result.carried} carried ({outcome}), "
            f"{elapsed:.2f} s with the sandbox's start and stop"
        )


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


async def main(n: int, rounds: int, base_image: str, docker: bool) -> None:
    with tempfile.TemporaryDirectory() as work:
        config = SandboxConfig(workspace_dir=work, timeout=60, no_change_timeout=30)
        await measure("local", config, n, rounds)
    with tempfile.TemporaryDirectory() as work:
        await measure_real(SandboxConfig(workspace_dir=work, timeout=60, no_change_timeout=30))
    if not docker:
        print("docker  skipped (--no-docker)")
        return
    why_not = await docker_ready(base_image)
    if why_not is not None:
        print(f"docker  skipped: {why_not}")
        return
    config = SandboxConfig(base_container_image=base_image, timeout=60, no_change_timeout=30)
    await measure("docker", config, n, rounds)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--base-image",
        default=os.environ.get("OPENHANDS_RT_BASE_IMAGE", "openhands-rt/base:bookworm"),
    )
    parser.add_argument("--no-docker", action="store_true")
    ns = parser.parse_args()
    asyncio.run(main(ns.n, ns.rounds, ns.base_image, not ns.no_docker))
