"""What the machine allows for one action: the floor the latency benchmarks compare to.

An ``echo hi`` through a runtime is, at the least, one bash round trip on a
PTY (write the command, read its output up to the next prompt) plus one
WebSocket round trip between the host's client and the sandbox's server. The
floor measures both with the same libraries we use (a websockets client, an
aiohttp server) and nothing of ours: :class:`Floor` holds a bash on a PTY and
an echoing WebSocket server in a process of its own (as the sandbox's server
is: the round trip crosses processes, as ours does), and :meth:`Floor.sample`
times one of each, so a benchmark can take one sample of the floor per
iteration, interleaved with its own, and load hits all of them alike.

Run as a script, this module is that echo server: it prints its port, then
serves until stdin closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import signal
import sys
import time
from types import TracebackType

import websockets
from aiohttp import WSMsgType, web

_PROMPT = b"#FLOOR-PROMPT#"


class Floor:
    """A bash on a PTY plus a WebSocket echo pair; ``async with`` starts and stops both."""

    def __init__(self) -> None:
        self._pid = -1
        self._fd = -1
        self._readable: asyncio.Queue[bytes] = asyncio.Queue()
        self._server: asyncio.subprocess.Process | None = None
        self._client: websockets.ClientConnection | None = None

    async def __aenter__(self) -> Floor:
        loop = asyncio.get_running_loop()
        pid, fd = pty.fork()
        if pid == 0:  # the child: a quiet interactive bash whose prompt we know
            os.environ["PS1"] = _PROMPT.decode()
            os.environ["PS2"] = ""
            os.execvp("bash", ["bash", "--norc", "--noprofile", "-i"])
        self._pid, self._fd = pid, fd
        os.set_blocking(fd, False)
        loop.add_reader(fd, self._on_readable)
        await self._until_prompt()  # the first prompt
        await self._run_bash(b"stty -echo\n")

        self._server = await asyncio.create_subprocess_exec(
            sys.executable, __file__, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        assert self._server.stdout is not None
        port = int(await self._server.stdout.readline())
        self._client = await websockets.connect(
            f"ws://127.0.0.1:{port}/ws", compression=None, proxy=None
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._client is not None:
            await self._client.close()
        if self._server is not None:
            assert self._server.stdin is not None
            self._server.stdin.close()
            await self._server.wait()
        if self._fd >= 0:
            asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
        if self._pid > 0:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)
            await asyncio.to_thread(os.waitpid, self._pid, 0)

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, 65536)
        except (BlockingIOError, OSError):
            return
        self._readable.put_nowait(data)

    async def _until_prompt(self) -> bytes:
        seen = b""
        while not seen.endswith(_PROMPT):
            seen += await self._readable.get()
        return seen

    async def _run_bash(self, command: bytes) -> bytes:
        os.write(self._fd, command)
        return await self._until_prompt()

    async def bash_round_trip(self) -> float:
        """Seconds for ``echo hi`` on the PTY, from the write to the next prompt."""
        t0 = time.perf_counter()
        output = await self._run_bash(b"echo hi\n")
        elapsed = time.perf_counter() - t0
        assert b"hi" in output, output
        return elapsed

    async def ws_round_trip(self, frame: bytes) -> float:
        """Seconds for one frame to the aiohttp server and its echo back."""
        assert self._client is not None
        t0 = time.perf_counter()
        await self._client.send(frame)
        await self._client.recv()
        return time.perf_counter() - t0

    async def sample(self) -> tuple[float, float]:
        """One bash round trip and one WebSocket round trip (a ~200-byte frame, as an action)."""
        return await self.bash_round_trip(), await self.ws_round_trip(_FRAME)


_FRAME = b'{"action":"run","args":{"command":"echo hi","is_input":false,"blocking":false}' + (
    b" " * 120 + b"}"
)


async def _echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(max_msg_size=0)
    await ws.prepare(request)
    async for message in ws:
        if message.type is WSMsgType.BINARY:
            await ws.send_bytes(message.data)
        elif message.type is WSMsgType.TEXT:
            await ws.send_str(message.data)
    return ws


async def _serve() -> None:
    app = web.Application()
    app.router.add_get("/ws", _echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(runner.addresses[0][1], flush=True)
    # Until the benchmark closes our stdin (or dies).
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(_serve())
