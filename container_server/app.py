"""The aiohttp application: the server's endpoints over the executor, the hub and the files.

Endpoints (every one but ``/alive`` needs ``X-Session-API-Key``, compared in
constant time; a missing or wrong key gets 401 and nothing else):

- ``GET /ws?client_id=ID`` — the action channel (:mod:`container_server.channel`);
- ``GET /alive``, ``/server_info``, ``/files``, ``/download``, ``/openapi.json``
  and ``POST /upload`` (:mod:`container_server.routes`).

The shell, the plugins and the hub start and stop with the app
(:mod:`container_server.service`, an aiohttp cleanup context).
"""

from __future__ import annotations

import hmac
import logging
import os
import sys
import traceback
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from container_server import routes
from container_server.channel import websocket
from container_server.executor import ActionExecutor
from container_server.service import (
    DEFAULT_MAX_FRAME_BYTES,
    STATE,
    ServerSettings,
    ServerState,
    lifecycle,
)
from events.wire import API_KEY_HEADER, CHANNEL_PATH, Route

__all__ = ["API_KEY_HEADER", "DEFAULT_MAX_FRAME_BYTES", "STATE", "ServerSettings", "create_app"]


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
    if request.path != Route.ALIVE:
        state = request.app[STATE]
        if not _authorized(request, state.settings.api_key):
            # 401 and nothing else: no hint which part was wrong.
            return web.Response(status=401, text="unauthorized")
    return await handler(request)


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
            bash_path=settings.bash_path,
            restore=settings.restore,
        )
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
    app[STATE] = ServerState(settings, executor)
    app.router.add_get(Route.ALIVE, routes.alive)
    app.router.add_get(CHANNEL_PATH, websocket)
    app.router.add_get(Route.SERVER_INFO, routes.server_info)
    app.router.add_post(Route.UPLOAD, routes.upload)
    app.router.add_get(Route.DOWNLOAD, routes.download)
    app.router.add_get(Route.FILES, routes.files)
    app.router.add_get(Route.OPENAPI, routes.openapi)
    app.cleanup_ctx.append(lifecycle)
    return app
