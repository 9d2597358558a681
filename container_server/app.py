"""The aiohttp adapter: endpoints over the executor, the hub and the file transfer.

Endpoints (every one but ``/alive`` needs ``X-Session-API-Key``):

- ``GET /alive`` — "ok" once the shell and plugins are initialized, 503 before.
- ``GET /ws?client_id=ID`` — the action channel (msgspec JSON event frames).
- ``GET /server_info`` — uptime, idle time, running actions, cpu and memory.
- ``POST /upload?path=DIR`` — a tar body, streamed and extracted safely under DIR.
- ``GET /download?path=P`` — a file or directory as a streamed tar.
- ``GET /files?path=DIR`` — a directory listing (JSON).
- ``GET /openapi.json`` — an OpenAPI description of the REST endpoints.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import resource
import sys
import time
import traceback
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import WSMsgType, web

from container_server.executor import ACTION_TYPES, ActionExecutor
from container_server.hub import ChannelHub, ClientState, Outbox
from container_server.plugins import PluginStatus
from container_server.transfer import (
    DEFAULT_MAX_MEMBERS,
    TransferError,
    extract_tar_stream,
    list_dir,
    tar_stream,
)
from events import (
    ErrorObservation,
    Event,
    EventDecodeError,
    RuntimeStatus,
    RuntimeStatusObservation,
    decode_event,
    encode_event,
)
from events.control import ControlDecodeError, decode_control
from events.wire import (
    API_KEY_HEADER,
    CHANNEL_PATH,
    CLIENT_ID_PARAM,
    MAX_FRAME_BYTES,
    CloseCode,
    ErrorId,
)

__all__ = ["API_KEY_HEADER", "ServerSettings", "create_app"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_FRAME_BYTES = MAX_FRAME_BYTES
#: A frame-level error quotes at most this much of the decoder's message (which can quote
#: the offending input, e.g. a megabyte-long unknown tag).
MAX_ERROR_DETAIL_CHARS = 500


@dataclass
class ServerSettings:
    """Everything the server is configured with (from the command line)."""

    working_dir: str
    api_key: str
    username: str | None = None
    user_id: int | None = None
    no_change_timeout: float = 10.0
    default_timeout: float | None = 120.0
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    plugins: list[str] = field(default_factory=list)
    plugin_init_timeout: float = 60.0
    startup_notes: list[str] = field(default_factory=list)
    max_process_memory_mb: int | None = None
    allow_multiple_commands: bool = False
    max_outbox_frames: int = 10_000
    max_upload_members: int = DEFAULT_MAX_MEMBERS


@dataclass
class ServerState:
    settings: ServerSettings
    executor: ActionExecutor
    hub: ChannelHub
    started_at: float = field(default_factory=time.monotonic)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    plugin_statuses: list[PluginStatus] = field(default_factory=list)
    init_error: str | None = None


STATE: web.AppKey[ServerState] = web.AppKey("state", ServerState)

if TYPE_CHECKING:
    _LoggerAdapter = logging.LoggerAdapter[logging.Logger]
else:  # LoggerAdapter is subscriptable from 3.11 on only
    _LoggerAdapter = logging.LoggerAdapter


class _RedactingLogger(_LoggerAdapter):
    """aiohttp's server logger, with the API key cut out of messages and tracebacks.

    aiohttp logs a malformed request with its offending bytes, which can hold the key
    header; the traceback becomes part of the message so that it can be redacted too.
    """

    def __init__(self, logger: logging.Logger, secret: str) -> None:
        super().__init__(logger, {})
        self._secret = secret

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if not self.logger.isEnabledFor(level):
            return
        text = str(msg) % args if args else str(msg)
        exc_info = kwargs.pop("exc_info", None)
        if exc_info is True:
            exc_info = sys.exc_info()
        if isinstance(exc_info, BaseException):
            exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
        if isinstance(exc_info, tuple) and exc_info[0] is not None:
            text += "\n" + "".join(traceback.format_exception(*exc_info)).rstrip()
        if self._secret:
            text = text.replace(self._secret, "[redacted]")
        kwargs.setdefault("stacklevel", 2)
        self.logger.log(level, "%s", text, **kwargs)


def _authorized(request: web.Request, api_key: str) -> bool:
    given = request.headers.getall(API_KEY_HEADER, [])
    if len(given) != 1:
        # A repeated header is ambiguous (a proxy may join or pick either): never a match.
        return False
    # aiohttp hands header bytes that are not UTF-8 over surrogate-escaped.
    return hmac.compare_digest(given[0].encode("utf-8", "surrogateescape"), api_key.encode())


@web.middleware
async def auth_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if request.path != "/alive":
        state = request.app[STATE]
        if not _authorized(request, state.settings.api_key):
            # 401 and nothing else: no hint which part was wrong.
            return web.Response(status=401, text="unauthorized")
    return await handler(request)


async def alive(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.init_error is not None:
        return web.Response(status=503, text=f"failed: {state.init_error}")
    if not state.ready.is_set():
        return web.Response(status=503, text="initializing")
    return web.Response(text="ok")


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class ServerInfo(msgspec.Struct, frozen=True):
    uptime: float
    idle_time: float
    running_actions: int
    cpu_user_seconds: float
    cpu_system_seconds: float
    memory_rss_bytes: int
    pid: int
    working_dir: str
    cwd: str
    plugins: dict[str, str]


async def server_info(request: web.Request) -> web.Response:
    state = request.app[STATE]
    now = time.monotonic()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    info = ServerInfo(
        uptime=now - state.started_at,
        idle_time=0.0 if state.hub.running_actions else now - state.hub.last_activity,
        running_actions=state.hub.running_actions,
        cpu_user_seconds=usage.ru_utime,
        cpu_system_seconds=usage.ru_stime,
        memory_rss_bytes=_rss_bytes(),
        pid=os.getpid(),
        working_dir=state.settings.working_dir,
        cwd=state.executor.bash.cwd,
        plugins={s.name: "ready" if s.ready else s.error for s in state.plugin_statuses},
    )
    return web.Response(body=msgspec.json.encode(info), content_type="application/json")


def _resolve(state: ServerState, raw: str | None) -> str:
    if not raw:
        raise web.HTTPBadRequest(text="missing ?path=")
    if "\x00" in raw:
        raise web.HTTPBadRequest(text="path contains a NUL byte")
    return os.path.normpath(os.path.join(state.executor.bash.cwd, raw))


async def upload(request: web.Request) -> web.Response:
    state = request.app[STATE]
    dest = _resolve(state, request.query.get("path"))

    async def body() -> AsyncIterator[bytes]:
        async for chunk in request.content.iter_chunked(64 * 1024):
            yield chunk

    try:
        paths = await extract_tar_stream(
            body(), dest, max_members=state.settings.max_upload_members
        )
    except TransferError as exc:
        raise web.HTTPBadRequest(text=f"refused: {exc}") from None
    except web.RequestPayloadError as exc:
        # A malformed body (bad chunked framing, ...) is the client's error, not ours.
        raise web.HTTPBadRequest(text=f"bad request body: {exc}") from None
    except ConnectionError:
        logger.debug("upload to %s: the client went away", dest)
        raise web.HTTPBadRequest(text="upload interrupted") from None
    except OSError as exc:
        raise web.HTTPBadRequest(text=f"upload failed: {exc.strerror or exc}") from None
    return web.json_response({"path": dest, "files": paths})


def _attachment(name: str) -> str:
    """A Content-Disposition for ``name``: RFC 6266 ``filename*`` plus a plain ASCII fallback.

    File names may hold quotes, control characters (a header injection aiohttp refuses
    with an exception) or bytes that are not UTF-8 (surrogate-escaped by ``os``).
    """
    fallback = "".join(c if " " <= c < "\x7f" and c not in '"\\' else "_" for c in name)
    encoded = urllib.parse.quote(name.encode("utf-8", "surrogateescape"), safe="")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"


async def download(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    path = _resolve(state, request.query.get("path"))
    if not os.path.lexists(path):
        raise web.HTTPNotFound(text=f"no such file or directory: {path}")
    chunks = tar_stream(path)
    try:
        # The first chunk before the status line: a path that cannot be read (a dangling
        # or looping symlink, gone meanwhile, unreadable) gets a clean 4xx, not a broken 200.
        try:
            first = await chunks.__anext__()
        except StopAsyncIteration:  # pragma: no cover - a tar always ends with its end blocks
            first = b""
        except FileNotFoundError:
            raise web.HTTPNotFound(text=f"no such file or directory: {path}") from None
        except PermissionError:
            raise web.HTTPForbidden(text=f"permission denied: {path}") from None
        except OSError as exc:
            raise web.HTTPBadRequest(text=f"cannot read {path}: {exc.strerror or exc}") from None
        response = web.StreamResponse(
            headers={
                "Content-Type": "application/x-tar",
                "Content-Disposition": _attachment(f"{os.path.basename(path) or 'root'}.tar"),
            }
        )
        try:
            await response.prepare(request)
            await response.write(first)
            async for chunk in chunks:
                await response.write(chunk)
            await response.write_eof()
        except ConnectionError:
            logger.debug("download of %s: the client went away", path)
        except OSError as exc:
            logger.warning("download of %s failed after it started: %s", path, exc)
            # The status is sent: the only honest signal left is a connection cut short
            # (a clean end would pass a truncated archive off as complete).
            if request.transport is not None:
                request.transport.abort()
        return response
    finally:
        await chunks.aclose()


async def files(request: web.Request) -> web.Response:
    state = request.app[STATE]
    path = _resolve(state, request.query.get("path") or ".")
    try:
        entries = await list_dir(path)
    except FileNotFoundError:
        raise web.HTTPNotFound(text=f"no such directory: {path}") from None
    except NotADirectoryError:
        raise web.HTTPBadRequest(text=f"not a directory: {path}") from None
    except PermissionError:
        raise web.HTTPForbidden(text=f"permission denied: {path}") from None
    except OSError as exc:  # e.g. a name too long, a symlink loop
        raise web.HTTPBadRequest(text=f"cannot list {path}: {exc.strerror or exc}") from None
    return web.Response(body=msgspec.json.encode(entries), content_type="application/json")


async def openapi(request: web.Request) -> web.Response:
    from container_server.openapi import OPENAPI_SPEC

    return web.json_response(OPENAPI_SPEC)


def _encode_bounded(event: Event, max_bytes: int) -> bytes:
    frame = encode_event(event)
    if len(frame) <= max_bytes:
        return frame
    # The peer would drop the connection over an oversized frame: say so instead.
    return encode_event(
        ErrorObservation(
            f"The {type(event).__name__} is {len(frame)} bytes encoded, over the channel's "
            f"{max_bytes}-byte frame limit; read the file in ranges or download it instead.",
            error_id=ErrorId.OBSERVATION_TOO_LARGE,
            cause=event.cause,
        )
    )


async def _writer(ws: web.WebSocketResponse, outbox: Outbox, max_bytes: int) -> None:
    while True:
        event = await outbox.get()
        if event is None:
            return
        frames = [_encode_bounded(event, max_bytes)]
        # Drain whatever else is queued so a burst of chunks costs one wake-up.
        done = False
        while True:
            try:
                more = outbox.get_nowait()
            except asyncio.QueueEmpty:
                break
            if more is None:
                done = True
                break
            frames.append(_encode_bounded(more, max_bytes))
        for frame in frames:
            await ws.send_bytes(frame)
        if done:
            return


def _handle_frame(state: ServerState, client: ClientState, data: bytes | str) -> None:
    try:
        event = decode_event(data)
    except EventDecodeError as exc:
        with contextlib.suppress(ControlDecodeError):
            request = decode_control(data)
            state.hub.interrupt(client, request.action_id)
            return
        detail = str(exc)
        if len(detail) > MAX_ERROR_DETAIL_CHARS:
            half = MAX_ERROR_DETAIL_CHARS // 2
            detail = f"{detail[:half]} ... {detail[-half:]}"
        client.send(ErrorObservation(f"Bad frame: {detail}", error_id=ErrorId.BAD_FRAME))
        return
    if not isinstance(event, ACTION_TYPES):
        client.send(
            ErrorObservation(
                f"Not an action: {type(event).__name__} cannot be run",
                error_id=ErrorId.NOT_AN_ACTION,
                cause=event.id if event.id >= 0 else None,
            )
        )
        return
    if event.id < 0:
        client.send(
            ErrorObservation(
                "Action has no id: append it to a stream (or set id) before sending",
                error_id=ErrorId.MISSING_ACTION_ID,
            )
        )
        return
    state.hub.submit(client, event)


async def websocket(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    client_id = request.query.get(CLIENT_ID_PARAM) or "anonymous"
    if len(client_id) > 200:
        raise web.HTTPBadRequest(text="client_id too long")
    await state.ready.wait()
    ws = web.WebSocketResponse(
        # aiohttp refuses a message of exactly max_msg_size; ours is the largest allowed.
        max_msg_size=state.settings.max_frame_bytes + 1,
        heartbeat=30.0,
        compress=False,
    )
    await ws.prepare(request)

    def overflow() -> None:
        logger.warning("client %s does not read its replies; dropping its connection", client_id)
        if request.transport is not None:
            request.transport.abort()  # the writer may be blocked on a full socket

    client, outbox = state.hub.attach(
        client_id, max_frames=state.settings.max_outbox_frames, on_overflow=overflow
    )
    if not client.greeted:
        # Facts about the sandbox's start, told once to every new client.
        client.greeted = True
        for note in state.settings.startup_notes:
            client.send(RuntimeStatusObservation(RuntimeStatus.STARTING, note))
        for status in state.plugin_statuses:
            if not status.ready:
                client.send(RuntimeStatusObservation(RuntimeStatus.ERROR, status.error))
    writer = asyncio.get_running_loop().create_task(
        _writer(ws, outbox, state.settings.max_frame_bytes)
    )
    try:
        async for msg in ws:
            if msg.type in (WSMsgType.BINARY, WSMsgType.TEXT):
                _handle_frame(state, client, msg.data)
            elif msg.type == WSMsgType.ERROR:
                logger.warning("websocket error from %s: %s", client_id, ws.exception())
                break
        if ws.close_code == CloseCode.MESSAGE_TOO_BIG:
            logger.warning("client %s sent an oversized frame", client_id)
    finally:
        state.hub.detach(client, outbox)
        # A peer that is gone keeps its results cached for a reconnect.
        with contextlib.suppress(ConnectionError, RuntimeError):
            await writer
    return ws


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    try:
        # The shell and the plugins (e.g. a Jupyter kernel) start side by side.
        _, state.plugin_statuses = await asyncio.gather(
            state.executor.start(),
            state.executor.plugins.initialize(
                state.settings.username, working_dir=state.settings.working_dir
            ),
        )
    except Exception as exc:
        state.init_error = f"{type(exc).__name__}: {exc}"
        logger.exception("server initialization failed")
        raise
    state.ready.set()
    yield
    await state.hub.aclose()
    await state.executor.aclose()


def create_app(settings: ServerSettings, executor: ActionExecutor | None = None) -> web.Application:
    """Build the aiohttp application; the executor starts with the app."""
    if executor is None:
        from container_server.plugin_registry import load_plugins

        executor = ActionExecutor(
            working_dir=settings.working_dir,
            # Only a root server switches the shell to another user.
            username=settings.username if os.geteuid() == 0 else None,
            user_id=settings.user_id,
            no_change_timeout=settings.no_change_timeout,
            default_timeout=settings.default_timeout,
            plugins=load_plugins(settings.plugins, init_timeout=settings.plugin_init_timeout),
            max_process_memory_mb=settings.max_process_memory_mb,
            allow_multiple_commands=settings.allow_multiple_commands,
        )
    hub = ChannelHub(executor)
    app = web.Application(
        middlewares=[auth_middleware],
        client_max_size=1024**2,
        handler_args={
            # Uploads stay compressed on the wire: extract_tar_stream decompresses them
            # itself and refuses compression bombs, which aiohttp's decoding would not.
            "auto_decompress": False,
            "logger": _RedactingLogger(logging.getLogger("aiohttp.server"), settings.api_key),
        },
    )
    app[STATE] = ServerState(settings=settings, executor=executor, hub=hub)
    app.router.add_get("/alive", alive)
    app.router.add_get(CHANNEL_PATH, websocket)
    app.router.add_get("/server_info", server_info)
    app.router.add_post("/upload", upload)
    app.router.add_get("/download", download)
    app.router.add_get("/files", files)
    app.router.add_get("/openapi.json", openapi)
    app.cleanup_ctx.append(_lifecycle)
    return app
