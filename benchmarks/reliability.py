"""Soak and leak figures (issue 8): many sandboxes, many mixed actions, nothing lost.

N sandboxes (DockerRuntime, Jupyter plugin) each get M actions — bash commands,
file writes and reads, editor edits and IPython cells — issued by three
concurrent workers per sandbox in random order. Afterwards every action id
must be answered exactly once, and the host process must be back where it
started: no containers of ours, no child processes, no extra file
descriptors, memory within 10 %.

Memory: with CPython's default small-object allocator the process RSS keeps
some freed memory (arenas pinned by a few long-lived objects); run with
PYTHONMALLOC=malloc to see what is really retained (there, glibc's
malloc_trim hands everything back), and --trace-heap for the Python heap.

Run: uv run python benchmarks/reliability.py [--sandboxes 20] [--actions 500] [--local]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import ctypes
import gc
import os
import random
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _util import rss_mb

from events import (
    Action,
    CmdRunAction,
    ErrorObservation,
    EventStream,
    FileEditAction,
    FileReadAction,
    FileWriteAction,
    IPythonRunCellAction,
    Observation,
)
from openhands_rt import DockerRuntime, JupyterRequirement, LocalRuntime, SandboxConfig
from openhands_rt.docker_client import open_docker
from openhands_rt.image import DEFAULT_BASE_IMAGE, build_runtime_image
from openhands_rt.runtime import EventStreamRuntime
from openhands_rt.sandboxes import LABEL_SESSION

LABEL = "org.openhands-rt.benchmark"


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def child_pids() -> list[int]:
    me = str(os.getpid())
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me and fields[0] != "Z":
            children.append(int(entry))
    return children


async def our_containers() -> int:
    async with open_docker() as docker:
        return len(await docker.containers.list(all=True, filters={"label": [LABEL_SESSION]}))


async def worker(
    rt: EventStreamRuntime,
    kind: str,
    count: int,
    rng: random.Random,
    base: str,
    tally: collections.Counter[str],
) -> None:
    for i in range(count):
        action: Action
        if kind == "bash":
            action = rng.choice(
                [
                    CmdRunAction(f"echo bash-{i}"),
                    CmdRunAction(f"printf '%s\\n' {i} | wc -c"),
                    CmdRunAction("false"),
                    CmdRunAction(f"cd {base} && ls | head -3"),
                ]
            )
        elif kind == "file":
            path = f"{base}/f{i % 7}.txt"
            action = rng.choice(
                [
                    FileWriteAction(path, f"line {i}\n"),
                    FileReadAction(f"{base}/f0.txt"),
                    FileEditAction(f"{base}/e{i}.txt", "create", file_text=f"v{i}\n"),
                ]
            )
        else:
            action = IPythonRunCellAction(rng.choice([f"print({i})", f"x{i % 5} = {i}", "1+1"]))
        obs: Observation = await rt.run(action)
        tally[f"{kind}:{'error' if isinstance(obs, ErrorObservation) else 'ok'}"] += 1
        await asyncio.sleep(rng.random() * 0.002)  # random interleaving between sandboxes


async def soak(
    rt: EventStreamRuntime, actions: int, seed: int, base: str
) -> collections.Counter[str]:
    rng = random.Random(seed)
    tally: collections.Counter[str] = collections.Counter()
    # Seed the file the readers read.
    await rt.run(FileWriteAction(f"{base}/f0.txt", "seed\n"))
    share = actions // 3
    await asyncio.gather(
        worker(rt, "bash", share, random.Random(rng.random()), base, tally),
        worker(rt, "file", share, random.Random(rng.random()), base, tally),
        worker(rt, "ipython", actions - 2 * share, random.Random(rng.random()), base, tally),
    )
    return tally


def answered_once(stream: EventStream) -> tuple[int, int, int]:
    """(actions, answered exactly once, answered more than once)."""
    actions = [e.id for e in stream.iter_events() if isinstance(e, Action)]
    answers = collections.Counter(
        e.cause for e in stream.iter_events() if isinstance(e, Observation) and e.cause is not None
    )
    once = sum(1 for a in actions if answers[a] == 1)
    dupes = sum(1 for a in actions if answers[a] > 1)
    return len(actions), once, dupes


def settle_memory() -> float:
    """RSS in MB after a full collection and handing freed heap back to the OS."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return rss_mb(os.getpid())


async def run_round(
    image: str | None, sandboxes: int, actions: int, *, local: bool, report: bool
) -> None:
    def say(text: str) -> None:
        if report:
            print(text)

    with tempfile.TemporaryDirectory() as tmp:
        streams = [EventStream() for _ in range(sandboxes)]
        runtimes: list[EventStreamRuntime] = []
        bases = ["/workspace" if image else str(Path(tmp, f"ws{i}")) for i in range(sandboxes)]
        for i, stream in enumerate(streams):
            config = SandboxConfig(
                runtime_container_image=image,
                plugins=[JupyterRequirement()],
                labels={LABEL: "reliability"},
                workspace_dir=None if image else bases[i],
            )
            cls = LocalRuntime if local else DockerRuntime
            runtimes.append(cls(stream, config, session_id=f"soak{i}-{os.getpid()}"))
        t0 = time.perf_counter()
        try:
            await asyncio.gather(*(rt.connect() for rt in runtimes))
            say(f"{sandboxes} sandboxes started            {time.perf_counter() - t0:.2f} s")
            t0 = time.perf_counter()
            tallies = await asyncio.gather(
                *(soak(rt, actions, i, bases[i]) for i, rt in enumerate(runtimes))
            )
            elapsed = time.perf_counter() - t0
        finally:
            await asyncio.gather(*(rt.aclose() for rt in runtimes))
            for s in streams:
                await s.aclose()
        total = collections.Counter[str]()
        for t in tallies:
            total.update(t)
        counts = [answered_once(s) for s in streams]
        n_actions = sum(c[0] for c in counts)
        once = sum(c[1] for c in counts)
        dupes = sum(c[2] for c in counts)
        say(
            f"mixed actions                    {n_actions} in {elapsed:.1f} s "
            f"({n_actions / elapsed:.0f}/s); {dict(sorted(total.items()))}"
        )
        say(f"answered exactly once            {once}/{n_actions}")
        say(f"lost (no answer)                 {n_actions - once - dupes}")
        say(f"duplicated                       {dupes}")


async def main(args: argparse.Namespace) -> None:
    image = None
    if not args.local:
        t0 = time.perf_counter()
        result = await build_runtime_image(DEFAULT_BASE_IMAGE, plugins=[JupyterRequirement()])
        image = result.image
        print(
            f"runtime image with jupyter       {result.build_from} "
            f"in {time.perf_counter() - t0:.1f} s"
        )
    # A short round at the same concurrency first: imports, caches, thread pools and
    # allocator arenas reach their steady size, so what follows measures growth.
    await run_round(image, args.sandboxes, 30, local=args.local, report=False)
    fds0, kids0, rss0 = fd_count(), child_pids(), settle_memory()
    if args.trace_heap:
        tracemalloc.start()
        heap0 = tracemalloc.get_traced_memory()[0]
    rss: list[float] = []
    for round_no in range(args.rounds):
        await run_round(image, args.sandboxes, args.actions, local=args.local, report=round_no == 0)
        rss.append(settle_memory())
    await asyncio.sleep(0.5)
    if not args.local:
        print(f"containers left                  {await our_containers()}")
    print(f"child processes left             {len(set(child_pids()) - set(kids0))}")
    print(f"file descriptors                 {fds0} before, {fd_count()} after")
    if args.trace_heap:
        heap1 = tracemalloc.get_traced_memory()[0]
        print(f"Python heap (tracemalloc)        {(heap1 - heap0) / 1024:+.0f} KB after teardown")
    growth = ", ".join(f"{(r - rss0) / rss0 * 100:+.1f} %" for r in rss)
    print(
        f"host process RSS                 {rss0:.1f} MB before; after each of "
        f"{args.rounds} rounds: {growth}"
    )
    print("  (gc + malloc_trim before each reading; a warm-up round of the same size first)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--sandboxes", type=int, default=20)
    parser.add_argument("--actions", type=int, default=500)
    parser.add_argument("--local", action="store_true", help="LocalRuntime instead of Docker")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds (memory plateau)")
    parser.add_argument(
        "--trace-heap", action="store_true", help="also measure Python heap growth (slower)"
    )
    asyncio.run(main(parser.parse_args()))
