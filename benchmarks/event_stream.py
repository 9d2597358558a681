"""Event stream throughput: in-memory append + delivery, durable group commit, codec.

Run: uv run python benchmarks/event_stream.py [--n 500000] [--repeat 3]

Each figure is the best of --repeat runs, in events per second. The events
are a mix of small actions and observations with a few hundred bytes of
output, the shape of a real agent session.

Rows with a target (issue 20) print it and the ratio figure / target. Rows
with a floor print the floor measured in the same run and figure / floor.
A floor is a plain loop doing only the work no implementation can skip:

- in memory: one ``msgspec.structs.replace`` (the id) and one list append
  per event (no timestamp, no lock, no checks);
- with a subscriber: that, plus one ``await callback(event)`` per event
  (no scheduling: the callbacks run straight after each batch);
- durable: that replace, one encode, the record's framing (length and CRC)
  and a list append per event; one ``write`` per batch and one
  ``fdatasync`` at the end (no writer thread, no lock).

The producers pass ``EventSource.AGENT`` from a local: on CPython 3.11 looking
the member up on the enum class costs about as much as a quarter of an
append, which is the caller's cost, not the stream's.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import struct
import tempfile
import time
import zlib
from collections.abc import Awaitable, Callable

import msgspec

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

# events per second (issue 20); the issue measured its "now" on a machine about 3x faster
MEMORY = "in-memory append only"
DELIVER_1 = "in-memory append + deliver to  1 subscriber(s)"
DURABLE = "durable append (group commit) + flush()"
TARGETS = {DELIVER_1: 2_000_000, DURABLE: 1_000_000}
# the floor row each measured row is compared with
FLOORS = {
    MEMORY: "floor: replace + list append",
    DELIVER_1: "floor: replace + list append + await callback",
    DURABLE: "floor: replace + encode + frame + write, 1 fdatasync",
}


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
    source = EventSource.AGENT
    start = time.perf_counter()
    for _ in range(n // BATCH):
        for event in batch:
            append(event, source)
        await asyncio.sleep(0)
    await done.wait()
    elapsed = time.perf_counter() - start
    await stream.aclose()
    return n / elapsed


async def append_only(n: int) -> float:
    stream = EventStream()
    batch = events_for(n)
    append = stream.append
    source = EventSource.AGENT
    start = time.perf_counter()
    for event in batch:
        append(event, source)
    elapsed = time.perf_counter() - start
    await stream.aclose()
    return n / elapsed


async def durable_append_flush(n: int, directory: str) -> tuple[float, float]:
    """Append n events to a durable stream then flush; also time reopening it."""
    path = os.path.join(directory, f"bench-{time.time_ns()}.log")
    stream = EventStream(log_path=path)
    batch = events_for(BATCH)
    append = stream.append
    source = EventSource.AGENT
    start = time.perf_counter()
    for _ in range(n // BATCH):
        for event in batch:
            append(event, source)
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


def floor_memory(n: int) -> float:
    """The in-memory floor: one replace (the id) and one list append per event."""
    replace = msgspec.structs.replace
    stored: list[Event] = []
    store = stored.append
    batch = events_for(n)
    start = time.perf_counter()
    for i, event in enumerate(batch):
        store(replace(event, id=i))
    return n / (time.perf_counter() - start)


async def floor_deliver(n: int) -> float:
    """The floor with one subscriber: the in-memory floor plus one awaited callback per event."""
    replace = msgspec.structs.replace
    stored: list[Event] = []
    store = stored.append
    batch = events_for(BATCH)
    seen = 0

    async def callback(event: Event) -> None:
        nonlocal seen
        seen += 1

    start = time.perf_counter()
    for b in range(n // BATCH):
        first = b * BATCH
        for i, event in enumerate(batch, first):
            store(replace(event, id=i))
        for event in stored[first:]:
            await callback(event)
    elapsed = time.perf_counter() - start
    assert seen == n
    return n / elapsed


def floor_durable(n: int, directory: str) -> float:
    """The durable floor: replace, encode, frame, one write per batch, one fdatasync."""
    replace = msgspec.structs.replace
    encode = msgspec.json.Encoder().encode
    frame_head = struct.Struct("<II").pack
    length_prefix = struct.Struct("<I").pack
    crc32 = zlib.crc32
    stored: list[Event] = []
    store = stored.append
    batch = events_for(BATCH)
    path = os.path.join(directory, f"floor-{time.time_ns()}.bin")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        start = time.perf_counter()
        for b in range(n // BATCH):
            frames: list[bytes] = []
            add = frames.append
            for i, event in enumerate(batch, b * BATCH):
                stored_event = replace(event, id=i)
                store(stored_event)
                payload = encode(stored_event)
                size = len(payload)
                add(frame_head(size, crc32(payload, crc32(length_prefix(size)))))
                add(payload)
            os.write(fd, b"".join(frames))
        os.fdatasync(fd)
        elapsed = time.perf_counter() - start
    finally:
        os.close(fd)
        os.unlink(path)
    return n / elapsed


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


def report(rows: dict[str, list[float]]) -> list[str]:
    """One line per row: best figure, target and figure / target, floor and figure / floor."""
    lines = [
        f"  {'':<52} {'events/s':>12} {'target':>11} {'/target':>8} {'floor':>11} {'/floor':>7}"
    ]
    for label, figures in rows.items():
        figure = max(figures)
        target = TARGETS.get(label)
        floor_label = FLOORS.get(label)
        floor = max(rows[floor_label]) if floor_label is not None else None
        lines.append(
            f"  {label:<52} {figure:>12,.0f}"
            + (f" {target:>11,} {figure / target:>8.2f}" if target else f" {'-':>11} {'-':>8}")
            + (f" {floor:>11,.0f} {figure / floor:>7.2f}" if floor else f" {'-':>11} {'-':>7}")
        )
    return lines


async def main(n: int, repeat: int) -> None:
    n -= n % BATCH
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as directory:
        rows: dict[str, list[float]] = {}
        for _ in range(repeat):
            gc.collect()
            rows.setdefault(MEMORY, []).append(await append_only(n))
            rows.setdefault(FLOORS[MEMORY], []).append(floor_memory(n))
            for subscribers in (1, 10):
                label = f"in-memory append + deliver to {subscribers:>2} subscriber(s)"
                rows.setdefault(label, []).append(await append_and_deliver(n, subscribers))
            rows.setdefault(FLOORS[DELIVER_1], []).append(await floor_deliver(n))
            durable, reopen = await durable_append_flush(n, directory)
            rows.setdefault(DURABLE, []).append(durable)
            rows.setdefault(FLOORS[DURABLE], []).append(floor_durable(n, directory))
            rows.setdefault("durable reopen (scan + decode + verify)", []).append(reopen)
            encode_rate, decode_rate = codec(n)
            rows.setdefault("encode_event", []).append(encode_rate)
            rows.setdefault("decode_event", []).append(decode_rate)
    # Stored events that the cyclic GC tracks make every full collection walk the
    # whole history: at this size that halves in-memory throughput.
    tracked = gc.is_tracked(EventStream().append(TEMPLATES[0]))
    print(f"event stream benchmark: {n:,} events, best of {repeat}; GC-tracked events: {tracked}")
    print("\n".join(report(rows)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500_000, help="events per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs; the best is shown")
    args = parser.parse_args()
    asyncio.run(main(args.n, args.repeat))
