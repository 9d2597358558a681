"""Streamed command output through LocalRuntime, against the floors measured in the same run.

A command that prints a lot (``head -c NM /dev/zero | base64``) runs blocking
through ``LocalRuntime.run``; a subscriber on the host counts the characters
of the ``CmdOutputChunk`` events it receives. Each round measures, one after
the other so that the machine's load hits all alike:

* ``floor, PTY``: a plain Python reader draining the same command from a
  PTY (``os.read`` of 1 MiB on the master until EIO), as the server reads it;
* ``floor, pipe``: the same command's bytes through a pipe;
* ``ours``: the command through the runtime, delivered as chunks.

Rates are of the command's output (the PTY's ``\\r`` before each ``\\n`` is
not counted). The host's and the server's RSS are sampled during each run of
ours (start / peak / end), and the CPU time each used (user + system, per 100 MB:
less sensitive to other load on the machine than the rates). ``base64`` to a
terminal writes one 77-byte line per system call; ``| cat`` writes 4 KiB
blocks. With line writes a blocking reader wakes for each line, so the PTY
"floor" is then no floor: a reader that lets lines pile up reads more per call.

Run: uv run python benchmarks/streamed_output.py [--mb 200] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pty
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _util import rss_mb

from events import CmdOutputChunk, CmdRunAction, Event, EventStream
from openhands_rt import LocalRuntime, SandboxConfig

_FLOOR_READ = 1 << 20
_RSS_INTERVAL = 0.05  # seconds between RSS samples


def drain_pty(command: str) -> tuple[int, float]:
    """(output bytes without the tty's CRs, seconds) of ``command`` read from a PTY master."""
    master, slave = pty.openpty()
    started = time.perf_counter()
    proc = subprocess.Popen(
        ["bash", "-c", command],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        close_fds=True,
    )
    os.close(slave)
    total = 0
    try:
        while True:
            try:
                data = os.read(master, _FLOOR_READ)
            except OSError:  # EIO: the last writer closed the slave
                break
            if not data:
                break
            total += len(data) - data.count(b"\r")
    finally:
        os.close(master)
        proc.wait()
    return total, time.perf_counter() - started


def drain_pipe(command: str) -> tuple[int, float]:
    """(output bytes, seconds) of ``command`` read from a pipe."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        ["bash", "-c", command], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    total = 0
    while data := os.read(fd, _FLOOR_READ):
        total += len(data)
    proc.stdout.close()
    proc.wait()
    return total, time.perf_counter() - started


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class RssTrace:
    """VmRSS samples of one process, in MB."""

    pid: int
    samples: list[float] = field(default_factory=list)
    cpu: float = 0.0  # CPU seconds used during the run

    def sample(self) -> None:
        self.samples.append(rss_mb(self.pid))

    def __str__(self) -> str:
        s = self.samples
        return f"{s[0]:6.1f} / {max(s):6.1f} / {s[-1]:6.1f}"


async def sample_rss(traces: list[RssTrace], stop: asyncio.Event) -> None:
    while not stop.is_set():
        for trace in traces:
            trace.sample()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), _RSS_INTERVAL)
    for trace in traces:
        trace.sample()


async def run_ours(
    rt: LocalRuntime, stream: EventStream, command: str, label: str
) -> tuple[int, float, RssTrace, RssTrace]:
    """(characters delivered as chunks, seconds, host RSS, server RSS)."""
    assert rt.process is not None
    streamed = 0
    last_id = -1
    seen = asyncio.Event()

    async def count(event: Event) -> None:
        nonlocal streamed, last_id
        if isinstance(event, CmdOutputChunk):
            streamed += len(event.data)
        last_id = event.id
        seen.set()

    host, server = RssTrace(os.getpid()), RssTrace(rt.process.pid)
    cpu_before = cpu_seconds(host.pid), cpu_seconds(server.pid)
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_rss([host, server], stop))
    sub = stream.subscribe(count, subscriber_id=f"bench-{label}")
    try:
        started = time.perf_counter()
        observation = await rt.run(CmdRunAction(command, blocking=True))
        # The observation comes after every chunk of its action: delivered, all are.
        while last_id < observation.id:
            seen.clear()
            await seen.wait()
        elapsed = time.perf_counter() - started
        host.cpu = cpu_seconds(host.pid) - cpu_before[0]
        server.cpu = cpu_seconds(server.pid) - cpu_before[1]
    finally:
        sub.unsubscribe()
        stop.set()
        await sampler
    return streamed, elapsed, host, server


async def main(megabytes: int, rounds: int) -> None:
    cases = [
        ("line writes", f"head -c {megabytes}M /dev/zero | base64"),
        ("block writes", f"head -c {megabytes}M /dev/zero | base64 | cat"),
    ]
    rates: dict[tuple[str, str], list[float]] = {}

    def record(label: str, kind: str, size: int, seconds: float) -> float:
        rate = size / seconds / 1e6
        rates.setdefault((label, kind), []).append(rate)
        return rate

    print(f"{megabytes} MB of zeros, base64: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as work:
        stream = EventStream()
        config = SandboxConfig(workspace_dir=work, timeout=600, no_change_timeout=60)
        async with stream, LocalRuntime(stream, config) as rt:
            await rt.run(CmdRunAction("echo warm"))
            for round_no in range(rounds):
                for label, command in cases:
                    size, seconds = await asyncio.to_thread(drain_pty, command)
                    pty_rate = record(label, "pty", size, seconds)
                    size, seconds = await asyncio.to_thread(drain_pipe, command)
                    pipe_rate = record(label, "pipe", size, seconds)
                    size, seconds, host, server = await run_ours(
                        rt, stream, command, f"{round_no}-{label}"
                    )
                    ours = record(label, "ours", size, seconds)
                    record(label, "host cpu", size, host.cpu)
                    record(label, "server cpu", size, server.cpu)
                    print(
                        f"round {round_no} {label:<13} ours {ours:7.1f} MB/s "
                        f"({size / 1e6:.0f} MB) | "
                        f"floor PTY {pty_rate:7.1f} MB/s, pipe {pipe_rate:7.1f} MB/s | "
                        f"RSS MB start/peak/end host {host}  server {server} | "
                        f"CPU s/100 MB host {host.cpu / size * 1e8:.2f} "
                        f"server {server.cpu / size * 1e8:.2f}"
                    )
    print("median over rounds:")
    for label, _ in cases:
        ours = statistics.median(rates[label, "ours"])
        pty_rate = statistics.median(rates[label, "pty"])
        pipe_rate = statistics.median(rates[label, "pipe"])
        print(
            f"streamed, {label:<13} {ours:7.1f} MB/s = {ours / pty_rate:.2f}x the PTY floor "
            f"({pty_rate:.1f} MB/s), {ours / pipe_rate:.2f}x the pipe ({pipe_rate:.1f} MB/s); "
            f"CPU s/100 MB host {100 / statistics.median(rates[label, 'host cpu']):.2f}, "
            f"server {100 / statistics.median(rates[label, 'server cpu']):.2f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=200, help="MB of zeros to base64-encode")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(main(args.mb, args.rounds))
