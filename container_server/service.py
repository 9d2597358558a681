"""The server's configuration, shared state and lifetime: start, serve, stop.

:class:`ServerState` is what the request handlers share (``app[STATE]``). Its
:meth:`~ServerState.serve` is the server's service, one task for the app's
whole life, which owns every other long-lived task:

- it starts the shell and the plugins side by side in a task group: when one
  start fails the other is cancelled, whatever started is closed again, and
  the error is logged, kept for ``/alive`` and raised from the app's startup;
- it holds the hub's task group (``async with hub``), where every action runs;
- on cleanup it is cancelled through its cancel scope: the running actions
  are cancelled, then the executor (shell, plugins) is closed;
- if it dies while serving (a broken invariant of the hub), it says so in
  the log and on ``/alive``, and sets :attr:`~ServerState.stopped` so that the
  process ends (:func:`container_server.main.serve`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import anyio
from aiohttp import web

from container_server import tls
from container_server.executor import ActionExecutor
from container_server.hub import ChannelHub
from container_server.plugins import PluginStatus
from container_server.transfer.limits import DEFAULT_MAX_MEMBERS
from events import Event, RuntimeStatus, RuntimeStatusObservation
from events.control import ShellState
from events.wire import MAX_FRAME_BYTES

__all__ = ["DEFAULT_MAX_FRAME_BYTES", "STATE", "ServerSettings", "ServerState", "lifecycle"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_FRAME_BYTES = MAX_FRAME_BYTES


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
    #: Characters of command output a connection may have queued (hub.Outbox).
    max_outbox_chunk_chars: int = 64 << 20
    max_upload_members: int = DEFAULT_MAX_MEMBERS
    #: The shell's binary; None: ``bash`` on the PATH (a bundle brings its own).
    bash_path: str | None = None
    #: The state the shell starts in (a snapshot's); None: a fresh shell in ``working_dir``.
    restore: ShellState | None = None


class ServerState:
    """The settings, the executor, the hub, and how far the service got."""

    def __init__(self, settings: ServerSettings, executor: ActionExecutor) -> None:
        self.settings = settings
        self.executor = executor
        self.hub = ChannelHub(executor, greeting=self.greeting)
        self.started_at = time.monotonic()
        #: Set once the shell and the plugins are up and the hub runs actions.
        self.ready = asyncio.Event()
        #: Set once the service ended: stopped on cleanup, or died.
        self.stopped = asyncio.Event()
        self.plugin_statuses: list[PluginStatus] = []
        #: Why the server cannot serve: its start failed, or its service died.
        self.init_error: str | None = None
        self.failure: BaseException | None = None
        # The service's cancel scope, made by serve() (a scope needs a running loop;
        # create_app may be called without one); stop() works before it too.
        self._scope: anyio.CancelScope | None = None
        self._stop_requested = False

    def greeting(self) -> list[Event]:
        """Facts about the sandbox's start, told once to every new client."""
        events: list[Event] = [
            RuntimeStatusObservation(RuntimeStatus.STARTING, note)
            for note in self.settings.startup_notes
        ]
        events.extend(
            RuntimeStatusObservation(RuntimeStatus.ERROR, status.error)
            for status in self.plugin_statuses
            if not status.ready
        )
        return events

    def stop(self) -> None:
        """Make :meth:`serve` cancel the running actions, close the executor and return."""
        self._stop_requested = True
        if self._scope is not None:
            self._scope.cancel()

    async def serve(self, started: asyncio.Future[None]) -> None:
        """Start, serve until :meth:`stop`, stop; ``started`` says when (or why not) it is up."""
        self._scope = scope = anyio.CancelScope()
        if self._stop_requested:
            scope.cancel()
        try:
            with scope:
                async with self.hub:
                    await self._start()
                    self.ready.set()
                    started.set_result(None)
                    await anyio.sleep_forever()
        except Exception as group:
            # Task groups wrap what ended them in an ExceptionGroup: report it as raised.
            exc = _first_error(group)
            self.init_error = f"{type(exc).__name__}: {exc}"
            self.failure = exc
            if started.done():
                logger.critical("the server's service died; the server stops", exc_info=exc)
            else:
                logger.error("server initialization failed", exc_info=exc)
                started.set_exception(exc)
            raise exc from None
        finally:
            # Outside the cancelled scope: closing the shell and the kernels runs to its end.
            try:
                await self.executor.aclose()
            finally:
                self.stopped.set()
                if not started.done():
                    started.cancel()

    async def _start(self) -> None:
        settings = self.settings
        statuses: list[PluginStatus] = []

        async def initialize_plugins() -> None:
            nonlocal statuses
            if settings.plugins and tls.ca_load_deferred():
                # A plugin may use aiohttp's client: its default context gets its CAs first.
                await anyio.to_thread.run_sync(tls.load_deferred_cas)
            statuses = await self.executor.plugins.initialize(
                settings.username, working_dir=settings.working_dir
            )

        # The shell and the plugins (e.g. a Jupyter kernel) start side by side; a failure
        # of either cancels the other.
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(self.executor.start, name="start the shell")
            task_group.start_soon(initialize_plugins, name="initialize the plugins")
        self.plugin_statuses = statuses


def _first_error(error: BaseException) -> BaseException:
    """The one error inside (nested) groups of one, or the group if it holds several."""
    # ruff targets Python 3.10, which has no BaseExceptionGroup; this package needs 3.11.
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:  # noqa: F821
        error = error.exceptions[0]
    return error


STATE: web.AppKey[ServerState] = web.AppKey("state", ServerState)


async def lifecycle(app: web.Application) -> AsyncIterator[None]:
    """aiohttp's cleanup context: the service starts with the app and stops with it."""
    state = app[STATE]
    loop = asyncio.get_running_loop()
    started: asyncio.Future[None] = loop.create_future()
    # The one task outside a task group, owned by this context: aiohttp may run an app's
    # startup and its cleanup in different tasks, and a task group must be left by the
    # task that entered it, so the service's task groups live in a task of their own,
    # started here and stopped and awaited below (or right away if the start fails).
    service = loop.create_task(state.serve(started), name="container_server service")
    try:
        await asyncio.shield(started)
    except BaseException:
        state.stop()
        await asyncio.wait([service])
        # Retrieved here, raised from ``started`` (or this context was cancelled).
        if not service.cancelled():
            service.exception()
        if started.done() and not started.cancelled():
            started.exception()
        raise
    yield
    state.stop()
    await asyncio.wait([service])
    if not service.cancelled() and service.exception() is not None:
        logger.debug("the service had died before the cleanup (reported then)")
