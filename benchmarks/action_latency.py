"""Action latency through LocalRuntime.run(): stream -> channel -> server -> bash -> stream.

``echo hi`` is measured against the floor (``benchmarks/_floor.py``): a bash
round trip on a PTY plus a WebSocket round trip (websockets client, aiohttp
server), one sample of each per iteration interleaved with ours, so load hits
all three alike. The ratio is our p50 over the sum of the floor's p50s; the
target (issue 20) is 1.25. The 1 KB read has no such floor (it is a file
read plus the same WebSocket round trip): its target is 0.1 ms.

Run: uv run python benchmarks/action_latency.py [--n 2000] [--uvloop]
(Streamed output throughput: benchmarks/streamed_output.py.)
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _floor import Floor
from _util import percentiles_ms, rss_mb

from events import CmdRunAction, EventStream, FileReadAction, FileWriteAction
from openhands_rt import LocalRuntime, SandboxConfig


async def timed(rt: LocalRuntime, make: object, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        action = make() if callable(make) else make
        t0 = time.perf_counter()
        await rt.run(action)  # type: ignore[arg-type]
        samples.append(time.perf_counter() - t0)
    return samples


async def against_floor(rt: LocalRuntime, n: int) -> None:
    """``echo hi`` and a 1 KB read through rt.run, each iteration interleaved with one
    sample of the floor's bash and WebSocket round trips."""
    echo: list[float] = []
    read: list[float] = []
    bash: list[float] = []
    ws: list[float] = []
    async with Floor() as floor:
        for _ in range(50):  # warm the floor's paths too
            await floor.sample()
        for _ in range(n):
            t0 = time.perf_counter()
            await rt.run(CmdRunAction("echo hi"))
            t1 = time.perf_counter()
            await rt.run(FileReadAction("1k.txt"))
            read.append(time.perf_counter() - t1)
            echo.append(t1 - t0)
            bash_s, ws_s = await floor.sample()
            bash.append(bash_s)
            ws.append(ws_s)
    median = statistics.median
    floor_s = median(bash) + median(ws)
    print(f"{'floor: bash on a PTY':<26} {percentiles_ms(bash)}")
    print(f"{'floor: WebSocket echo':<26} {percentiles_ms(ws)}")
    print(f"{'echo hi':<26} {percentiles_ms(echo)}")
    print(f"{'1 KB file read':<26} {percentiles_ms(read)}")
    print(
        f"{'echo hi / floor':<26} {median(echo) / floor_s:8.2f}x  "
        f"(floor = bash + WebSocket p50 = {floor_s * 1000:.3f} ms; target <= 1.25x)"
    )
    print(
        f"{'1 KB read / WebSocket':<26} {median(read) / median(ws):8.2f}x  "
        f"(target: read p50 <= 0.1 ms; this machine's WebSocket echo alone: "
        f"{median(ws) * 1000:.3f} ms)"
    )


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as work:
        Path(work, "1k.txt").write_text("x" * 1023 + "\n")
        stream = EventStream()
        config = SandboxConfig(workspace_dir=work, timeout=300, no_change_timeout=60)
        async with stream, LocalRuntime(stream, config) as rt:
            assert rt.process is not None
            await asyncio.sleep(0.5)
            print(f"idle server RSS            {rss_mb(rt.process.pid):8.1f} MB")
            await timed(rt, lambda: CmdRunAction("echo hi"), 200)  # warm up
            await against_floor(rt, n)
            cases = [
                ("1 MB write", lambda: FileWriteAction("1m.txt", "y" * (1 << 20)), 50),
                ("1 MB read", lambda: FileReadAction("1m.txt"), 50),
            ]
            for label, make, count in cases:
                print(f"{label:<26} {percentiles_ms(await timed(rt, make, count))}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument(
        "--uvloop",
        action="store_true",
        help="run this side (the host's runtime and the floor's client) on uvloop",
    )
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.run(main(args.n))
    else:
        asyncio.run(main(args.n))
