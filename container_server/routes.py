"""The REST endpoints: liveness, server facts, and files in and out as streamed tar.

- ``GET /alive`` — "ok" once the shell and plugins are initialized, 503 before
  (and "failed: ..." if the start failed or the service died).
- ``GET /server_info`` — uptime, idle time, running actions, cpu and memory.
- ``POST /upload?path=DIR`` — a tar body, streamed and extracted safely under DIR.
- ``GET /download?path=P`` — a file or directory as a streamed tar.
- ``GET /files?path=DIR`` — a directory listing (JSON).
- ``GET /openapi.json`` — an OpenAPI description of these endpoints.

Paths are relative to the shell's current directory.
"""

from __future__ import annotations

import logging
import os
import resource
import time
import urllib.parse
from collections.abc import AsyncIterator

import msgspec
from aiohttp import web

from container_server.service import STATE, ServerState
from container_server.transfer.limits import TransferError

__all__ = ["ServerInfo", "alive", "download", "files", "openapi", "server_info", "upload"]

logger = logging.getLogger(__name__)


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

    # Imported here: the server's start and its first action need no tar (transfer/__init__).
    from container_server.transfer.tar_in import extract_tar_stream

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
    from container_server.transfer.tar_out import tar_stream

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
    from container_server.transfer.listing import list_dir

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
