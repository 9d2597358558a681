"""An aiohttp backend that embeds sandboxes and streams their events to a terminal-like page.

Each sandbox has a name, its own runtime and its own durable event log
(``<log dir>/<name>.log``); it starts on first use (its page opened, or a command
posted) and stops with the app. Routes, for the sandbox ``main`` at the root and
for any other one under ``/s/NAME/``:

- ``GET /``, ``GET /s/NAME/``      the page (``web_stream.html`` beside this file): a
                                   terminal view of the sandbox (commands, their output as
                                   it streams, exit codes, the runtime's status) and an
                                   input to type commands;
- ``POST /run``, ``POST /s/NAME/run``   ``{"command": "..."}`` (JSON) or a ``command``
                                   form field: appends a ``CmdRunAction`` (source ``user``)
                                   to the sandbox's stream and answers ``202 {"id": N}``.
                                   Nothing here calls the runtime: it subscribes to the
                                   stream and runs whatever actions appear on it;
- ``GET /events``, ``GET /s/NAME/events``   a WebSocket that sends the stream's events
                                   from ``?from=N`` (default 0: the whole history first,
                                   replayed from the log, then live ones), one text frame
                                   (``events.encode_event``'s JSON) per event;
- ``GET /new``                     redirects to the page of a new sandbox.

The sandboxes belong to the application: a ``cleanup_ctx`` owns them, and each
one's stream and runtime live in one task that opens and closes both; at
shutdown open WebSockets are closed first so that the stop is prompt.

Run:
    uv run python examples/web_stream.py --port 8765           # sandboxes in Docker
    uv run python examples/web_stream.py --local --port 0      # local processes, any free port
then open the printed URL. The logs go to ./web_stream_logs (--log-dir): restart the
server and each page shows its sandbox's history again.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import WSCloseCode, web

from events import CmdRunAction, EventSource, EventStream, encode_event
from openhands_rt import DockerRuntime, LocalRuntime, SandboxConfig, SandboxError
from openhands_rt.image import DEFAULT_BASE_IMAGE
from openhands_rt.runtime import EventStreamRuntime

logger = logging.getLogger("web_stream")

DEFAULT_SANDBOX = "main"
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}"
PAGE_TEMPLATE = Path(__file__).with_name("web_stream.html").read_text(encoding="utf-8")

RuntimeFactory = Callable[[EventStream], EventStreamRuntime]


class TooManySandboxesError(Exception):
    """The app already runs as many sandboxes as it may."""


class Sandbox:
    """One named sandbox: its event stream now, its runtime once it has started."""

    def __init__(self, name: str, stream: EventStream) -> None:
        self.name = name
        self.stream = stream
        self.runtime: EventStreamRuntime | None = None


class Sandboxes:
    """The app's sandboxes by name, each opened on first use and all closed by :meth:`aclose`.

    A sandbox lives in one task that opens its stream (durable under ``log_dir``,
    in memory when it is None) and then its runtime, waits for the app to stop,
    and closes both in the reverse order: the runtime is entered and left in the
    same task, and the stream outlives it so that pages see its last status.
    """

    def __init__(
        self, make_runtime: RuntimeFactory, *, log_dir: Path | None, max_sandboxes: int
    ) -> None:
        self.make_runtime = make_runtime
        self.log_dir = log_dir
        self.max_sandboxes = max_sandboxes
        self._opened: dict[str, asyncio.Future[Sandbox]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()

    def names(self) -> list[str]:
        return sorted(self._opened)

    async def get(self, name: str) -> Sandbox:
        """The sandbox called ``name``, started now if it is not running yet."""
        opened = self._opened.get(name)
        if opened is None:
            if self._stop.is_set():
                raise SandboxError("the app is stopping")
            if len(self._opened) >= self.max_sandboxes:
                raise TooManySandboxesError(f"this app runs at most {self.max_sandboxes} sandboxes")
            opened = asyncio.get_running_loop().create_future()
            self._opened[name] = opened
            task = asyncio.create_task(self._own(name, opened), name=f"sandbox {name}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        # Shielded: a request that goes away must not cancel what other requests wait for.
        return await asyncio.shield(opened)

    async def _own(self, name: str, opened: asyncio.Future[Sandbox]) -> None:
        try:
            stream = await self._open_stream(name)
        except BaseException as exc:
            # Forgotten, so that a later request may try again (a locked log, say).
            del self._opened[name]
            if isinstance(exc, Exception):
                opened.set_exception(exc)
                opened.exception()  # retrieved: nobody may be waiting any more
                logger.warning("sandbox %s: could not open its event log: %s", name, exc)
                return
            opened.cancel()
            raise
        async with stream:
            sandbox = Sandbox(name, stream)
            opened.set_result(sandbox)
            runtime = self.make_runtime(stream)
            try:
                async with runtime:
                    sandbox.runtime = runtime
                    await self._stop.wait()
            except Exception as exc:
                # Already on the stream as an "error" runtime status, which the page shows;
                # the stream stays open for the pages until the app stops.
                logger.warning("sandbox %s stopped: %s", name, exc)
                await self._stop.wait()
            finally:
                sandbox.runtime = None

    async def _open_stream(self, name: str) -> EventStream:
        if self.log_dir is None:
            return EventStream()
        log_dir = self.log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        # Opening a log reads and checks the whole file: not on the event loop.
        return await asyncio.to_thread(EventStream, log_dir / f"{name}.log")

    async def aclose(self) -> None:
        """Stop every sandbox (runtime first, then its stream) and wait until all are closed."""
        self._stop.set()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class Sockets:
    """The open /events WebSockets, closed at shutdown."""

    def __init__(self) -> None:
        self.open: set[web.WebSocketResponse] = set()


SANDBOXES = web.AppKey("sandboxes", Sandboxes)
SOCKETS = web.AppKey("sockets", Sockets)


def create_app(
    *,
    local: bool = False,
    config: SandboxConfig | None = None,
    log_dir: Path | None = None,
    max_sandboxes: int = 8,
) -> web.Application:
    """The application. Sandboxes are LocalRuntimes if ``local``, else DockerRuntimes.

    ``log_dir``: where each sandbox's durable event log is kept (None: in memory
    only, the history goes with the app).
    """
    sandbox_config = config or SandboxConfig(base_container_image=DEFAULT_BASE_IMAGE)

    def make_runtime(stream: EventStream) -> EventStreamRuntime:
        if local:
            return LocalRuntime(stream, sandbox_config)
        return DockerRuntime(stream, sandbox_config)

    async def sandboxes(app: web.Application) -> AsyncIterator[None]:
        app[SANDBOXES] = Sandboxes(make_runtime, log_dir=log_dir, max_sandboxes=max_sandboxes)
        try:
            yield
        finally:
            await app[SANDBOXES].aclose()

    app = web.Application()
    app[SOCKETS] = Sockets()
    app.cleanup_ctx.append(sandboxes)
    app.on_shutdown.append(close_sockets)
    app.router.add_get("/", page)
    app.router.add_post("/run", run_command)
    app.router.add_get("/events", events_socket)
    app.router.add_get("/new", new_sandbox)
    app.router.add_get(f"/s/{{name:{NAME_PATTERN}}}", add_slash)
    app.router.add_get(f"/s/{{name:{NAME_PATTERN}}}/", page)
    app.router.add_post(f"/s/{{name:{NAME_PATTERN}}}/run", run_command)
    app.router.add_get(f"/s/{{name:{NAME_PATTERN}}}/events", events_socket)
    return app


async def close_sockets(app: web.Application) -> None:
    # The handlers of open sockets would otherwise keep the shutdown waiting.
    sockets = list(app[SOCKETS].open)
    await asyncio.gather(
        *(ws.close(code=WSCloseCode.GOING_AWAY, message=b"server stopping") for ws in sockets)
    )


def sandbox_name(request: web.Request) -> str:
    return request.match_info.get("name", DEFAULT_SANDBOX)


async def sandbox_for(request: web.Request) -> Sandbox:
    try:
        return await request.app[SANDBOXES].get(sandbox_name(request))
    except TooManySandboxesError as exc:
        raise web.HTTPServiceUnavailable(text=str(exc)) from None
    except (SandboxError, OSError, ValueError) as exc:
        raise web.HTTPInternalServerError(text=f"the sandbox is not available: {exc}") from None


async def page(request: web.Request) -> web.Response:
    # The name matched NAME_PATTERN (or is the default): nothing in it needs escaping.
    assert re.fullmatch(NAME_PATTERN, sandbox_name(request))
    text = PAGE_TEMPLATE.replace("{{sandbox}}", sandbox_name(request))
    return web.Response(text=text, content_type="text/html")


async def add_slash(request: web.Request) -> web.Response:
    raise web.HTTPFound(f"/s/{sandbox_name(request)}/")


async def new_sandbox(request: web.Request) -> web.Response:
    raise web.HTTPFound(f"/s/{uuid.uuid4().hex[:8]}/")


async def run_command(request: web.Request) -> web.Response:
    command: object
    if request.content_type == "application/json":
        try:
            body = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(text="the body is not JSON") from None
        command = body.get("command") if isinstance(body, dict) else None
    else:
        command = (await request.post()).get("command")
    if not isinstance(command, str) or not command.strip():
        raise web.HTTPBadRequest(text='give a non-empty "command"')
    sandbox = await sandbox_for(request)
    stored = sandbox.stream.append(CmdRunAction(command), source=EventSource.USER)
    return web.json_response({"id": stored.id}, status=202)


async def events_socket(request: web.Request) -> web.WebSocketResponse:
    try:
        from_id = int(request.query.get("from", "0"))
    except ValueError:
        raise web.HTTPBadRequest(text="from must be an event id") from None
    if from_id < 0:
        raise web.HTTPBadRequest(text="from must be >= 0")
    sandbox = await sandbox_for(request)
    ws = web.WebSocketResponse(heartbeat=30.0)
    await ws.prepare(request)
    sockets = request.app[SOCKETS].open
    sockets.add(ws)
    forwarder = asyncio.create_task(forward(sandbox.stream, ws, from_id))
    try:
        async for _ in ws:
            pass  # the page sends nothing; the loop ends when the socket closes
    finally:
        sockets.discard(ws)
        forwarder.cancel()
        await asyncio.wait([forwarder])
    return ws


async def forward(stream: EventStream, ws: web.WebSocketResponse, from_id: int) -> None:
    """Send the stream's events from ``from_id`` on, until the stream or the socket closes."""
    try:
        async for event in stream.follow(from_id):
            await ws.send_str(encode_event(event).decode())
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"the event stream closed")
    except ConnectionError:
        pass  # the browser went away; the handler's loop ends on its own


async def serve(args: argparse.Namespace) -> None:
    config = SandboxConfig(
        base_container_image=args.base_image, runtime_container_image=args.runtime_image
    )
    app = create_app(
        local=args.local, config=config, log_dir=args.log_dir, max_sandboxes=args.max_sandboxes
    )
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, args.host, args.port)
        await site.start()
        host, port = runner.addresses[0][:2]
        print(f"serving on http://{host}:{port}/  (Ctrl-C stops)", flush=True)
        print(f"event logs in {args.log_dir.resolve()}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        print("stopping...", flush=True)
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--local", action="store_true", help="LocalRuntime instead of Docker")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument("--log-dir", type=Path, default=Path("web_stream_logs"))
    parser.add_argument("--max-sandboxes", type=int, default=8)
    parser.add_argument("--base-image", default=DEFAULT_BASE_IMAGE)
    parser.add_argument("--runtime-image", help="use this runtime image as is (no build)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        asyncio.run(serve(args))
    except (SandboxError, OSError) as exc:
        print(f"web_stream: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
