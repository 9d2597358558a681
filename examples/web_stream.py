"""An aiohttp backend that embeds a sandbox and streams its events to a browser page.

- ``GET /``        a small page: a command box, and every event of the session
                   appended as it happens (JSON, as :func:`events.encode_event` writes it);
- ``POST /run``    ``{"command": "..."}`` (JSON) or a ``command`` form field: appends a
                   ``CmdRunAction`` (source ``user``) to the stream and answers
                   ``202 {"id": <action id>}``. Nothing here calls the runtime: it is a
                   subscriber of the stream and runs whatever actions appear on it;
- ``GET /events``  a WebSocket that sends the stream's events from ``?from=N``
                   (default 0: the whole history first, then live ones), one text
                   frame per event.

The event stream and the runtime belong to the application: a ``cleanup_ctx``
opens them when the app starts and closes them (removing the sandbox) when it
stops; open WebSockets are closed at shutdown so that the stop is prompt.

Run:
    uv run python examples/web_stream.py --port 8765           # sandbox in Docker
    uv run python examples/web_stream.py --local --port 0      # local server process, any free port
then open the printed URL.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import AsyncIterator

from aiohttp import WSCloseCode, web

from events import CmdRunAction, EventSource, EventStream, encode_event
from openhands_rt import DockerRuntime, LocalRuntime, SandboxConfig, SandboxError
from openhands_rt.image import DEFAULT_BASE_IMAGE
from openhands_rt.runtime import EventStreamRuntime

logger = logging.getLogger("web_stream")


class Sockets:
    """The open /events WebSockets, closed at shutdown."""

    def __init__(self) -> None:
        self.open: set[web.WebSocketResponse] = set()


LOCAL = web.AppKey("local", bool)
CONFIG = web.AppKey("config", SandboxConfig)
STREAM = web.AppKey("stream", EventStream)
RUNTIME = web.AppKey("runtime", EventStreamRuntime)
SOCKETS = web.AppKey("sockets", Sockets)

PAGE = """<!doctype html>
<html lang="en">
<meta charset="utf-8">
<title>openhands-rt sandbox</title>
<style>
  body { font: 14px/1.4 monospace; margin: 1.5em; }
  #events div { white-space: pre-wrap; border-bottom: 1px solid #eee; padding: 2px 0; }
  .cmd_run { color: #0550ae; } .cmd_output_chunk { color: #777; }
  .cmd_output { color: #116329; } .runtime_status { color: #8250df; }
</style>
<h1>openhands-rt sandbox</h1>
<form id="run"><input name="command" size="70" placeholder="ls -la /workspace" autofocus>
<button>run</button></form>
<p id="state">connecting...</p>
<div id="events"></div>
<script>
const list = document.getElementById("events");
const state = document.getElementById("state");
const scheme = location.protocol === "https:" ? "wss" : "ws";
const socket = new WebSocket(`${scheme}://${location.host}/events?from=0`);
socket.onopen = () => { state.textContent = "streaming events"; };
socket.onclose = () => { state.textContent = "the stream is closed"; };
socket.onmessage = (message) => {
  const event = JSON.parse(message.data);
  const line = document.createElement("div");
  line.className = event.type;
  line.textContent = message.data;
  list.append(line);
  line.scrollIntoView();
};
document.getElementById("run").onsubmit = async (submit) => {
  submit.preventDefault();
  const form = submit.target;
  await fetch("/run", { method: "POST", body: new FormData(form) });
  form.reset();
};
</script>
</html>
"""


def create_app(*, local: bool = False, config: SandboxConfig | None = None) -> web.Application:
    """The application; its sandbox starts when the app starts (LocalRuntime if ``local``)."""
    app = web.Application()
    app[LOCAL] = local
    app[CONFIG] = config or SandboxConfig(base_container_image=DEFAULT_BASE_IMAGE)
    app[SOCKETS] = Sockets()
    app.cleanup_ctx.append(sandbox)
    app.on_shutdown.append(close_sockets)
    app.router.add_get("/", index)
    app.router.add_post("/run", run_command)
    app.router.add_get("/events", events_socket)
    return app


async def sandbox(app: web.Application) -> AsyncIterator[None]:
    async with EventStream() as stream:
        runtime: EventStreamRuntime
        if app[LOCAL]:
            runtime = LocalRuntime(stream, app[CONFIG])
        else:
            runtime = DockerRuntime(stream, app[CONFIG])
        async with runtime:
            app[STREAM] = stream
            app[RUNTIME] = runtime
            yield


async def close_sockets(app: web.Application) -> None:
    # The handlers of open sockets would otherwise keep the shutdown waiting.
    sockets = list(app[SOCKETS].open)
    await asyncio.gather(
        *(ws.close(code=WSCloseCode.GOING_AWAY, message=b"server stopping") for ws in sockets)
    )


async def index(request: web.Request) -> web.Response:
    return web.Response(text=PAGE, content_type="text/html")


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
    stored = request.app[STREAM].append(CmdRunAction(command), source=EventSource.USER)
    return web.json_response({"id": stored.id}, status=202)


async def events_socket(request: web.Request) -> web.WebSocketResponse:
    try:
        from_id = int(request.query.get("from", "0"))
    except ValueError:
        raise web.HTTPBadRequest(text="from must be an event id") from None
    if from_id < 0:
        raise web.HTTPBadRequest(text="from must be >= 0")
    ws = web.WebSocketResponse(heartbeat=30.0)
    await ws.prepare(request)
    sockets = request.app[SOCKETS].open
    sockets.add(ws)
    forwarder = asyncio.create_task(forward(request.app[STREAM], ws, from_id))
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
    runner = web.AppRunner(create_app(local=args.local, config=config), handle_signals=False)
    print("starting the sandbox...", flush=True)
    await runner.setup()  # runs the cleanup_ctx: the sandbox is up after this
    try:
        site = web.TCPSite(runner, args.host, args.port)
        await site.start()
        host, port = runner.addresses[0][:2]
        print(f"serving on http://{host}:{port}/  (Ctrl-C stops)", flush=True)
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
