"""Event stream throughput: in-memory append + delivery, durable group commit, codec.

Run: uv run python benchmarks/event_stream.py [--n 500000] [--repeat 3]

Each figure is the best of --repeat runs, in events per second. The events
are a mix of small actions and observations with a few hundred bytes of
output, the shape of a real agent session.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import tempfile
import time
from collections.abc import Awaitable, Callable

from events import (
    CmdOutputMetadata,
    CmdOutputObservation,
    CmdRunAction,
    Event,
    EventSource,
    EventStream,
    FileReadObservation,
    decode_event,
    encode_event,
)

TEMPLATES: list[Event] = [
    CmdRunAction(command="ls -la /workspace"),
    CmdOutputObservation(
        content="total 8\ndrwxr-xr-x 2 root root 4096 .\n" * 4,
        command="ls -la /workspace",
        metadata=CmdOutputMetadata(exit_code=0, pid=42, working_dir="/workspace"),
        cause=0,
    ),
    CmdRunAction(command="python -c 'print(1)'", thought="check the interpreter"),
    FileReadObservation(content="def main() -> None:\n    pass\n" * 3, path="/workspace/a.py"),
]

BATCH = 1000  # events appended between two yields to the loop, as a busy producer would


def events_for(n: int) -> list[Event]:
    return [TEMPLATES[i % len(TEMPLATES)] for i in range(n)]


async def append_and_deliver(n: int, subscribers: int) -> float:
    """Append n events in batches while `subscribers` callbacks receive all of them."""
    stream = EventStream()
    batch = events_for(BATCH)
    done = asyncio.Event()
    remaining = subscribers
    last_id = n - 1

    def make_callback() -> Callable[[Event], Awaitable[None]]:
        async def callback(event: Event) -> None:
            nonlocal remaining
            if event.id == last_id:
                remaining -= 1
                if not remaining:
                    done.set()

        return callback

    for i in range(subscribers):
        stream.subscribe(make_callback(), subscriber_id=f"s{i}")
    append = stream.append
    start = time.perf_counter()
    for _ in range(n // BATCH):
        for event in batch:
            append(event, EventSource.AGENT)
        await asyncio.sleep(0)
    await done.wait()
    elapsed = time.perf_counter() - start
    await stream.aclose()
    return n / elapsed


async def append_only(n: int) -> float:
    stream = EventStream()
    batch = events_for(n)
    append = stream.append
    start = time.perf_counter()
    for event in batch:
        append(event, EventSource.AGENT)
    elapsed = time.perf_counter() - start
    await stream.aclose()
    return n / elapsed


async def durable_append_flush(n: int, directory: str) -> tuple[float, float]:
    """Append n events to a durable stream then flush; also time reopening it."""
    path = os.path.join(directory, f"bench-{time.time_ns()}.log")
    stream = EventStream(log_path=path)
    batch = events_for(BATCH)
    append = stream.append
    start = time.perf_counter()
    for _ in range(n // BATCH):
        for event in batch:
            append(event, EventSource.AGENT)
        await asyncio.sleep(0)
    await stream.flush()
    elapsed = time.perf_counter() - start
    await stream.aclose()
    start = time.perf_counter()
    reopened = EventStream(log_path=path)
    reopen_elapsed = time.perf_counter() - start
    assert len(reopened) == n
    await reopened.aclose()
    os.unlink(path)
    return n / elapsed, n / reopen_elapsed


def codec(n: int) -> tuple[float, float]:
    stream = EventStream()
    stored = [stream.append(event) for event in events_for(n)]
    start = time.perf_counter()
    encoded = [encode_event(event) for event in stored]
    encode_rate = n / (time.perf_counter() - start)
    start = time.perf_counter()
    for data in encoded:
        decode_event(data)
    decode_rate = n / (time.perf_counter() - start)
    return encode_rate, decode_rate


def best(figures: list[float]) -> str:
    return f"{max(figures):>12,.0f} events/s"


async def main(n: int, repeat: int) -> None:
    n -= n % BATCH
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as directory:
        rows: dict[str, list[float]] = {}
        for _ in range(repeat):
            gc.collect()
            rows.setdefault("in-memory append only", []).append(await append_only(n))
            for subscribers in (1, 10):
                label = f"in-memory append + deliver to {subscribers:>2} subscriber(s)"
                rows.setdefault(label, []).append(await append_and_deliver(n, subscribers))
            durable, reopen = await durable_append_flush(n, directory)
            rows.setdefault("durable append (group commit) + flush()", []).append(durable)
            rows.setdefault("durable reopen (scan + decode + verify)", []).append(reopen)
            encode_rate, decode_rate = codec(n)
            rows.setdefault("encode_event", []).append(encode_rate)
            rows.setdefault("decode_event", []).append(decode_rate)
    # Stored events that the cyclic GC tracks make every full collection walk the
    # whole history: at this size that halves in-memory throughput.
    tracked = gc.is_tracked(EventStream().append(TEMPLATES[0]))
    print(f"event stream benchmark: {n:,} events, best of {repeat}; GC-tracked events: {tracked}")
    for label, figures in rows.items():
        print(f"  {label:<48} {best(figures)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500_000, help="events per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs; the best is shown")
    args = parser.parse_args()
    asyncio.run(main(args.n, args.repeat))
