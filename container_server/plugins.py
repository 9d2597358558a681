"""In-sandbox plugins: the base class and the host that initializes and runs them.

A plugin extends what the sandbox can do: it is initialized when the server
starts (all plugins concurrently, each under its own deadline) and serves the
action types it lists in ``handles``. A plugin that fails or hangs while
initializing is reported and left out; the server serves everything else.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import ClassVar

import anyio

from events import Action, CmdOutputChunk, ErrorObservation, Observation
from events.wire import ErrorId

__all__ = ["Plugin", "PluginHost", "PluginStatus"]

logger = logging.getLogger(__name__)

ChunkSink = Callable[[CmdOutputChunk], None]


class Plugin:
    """Base class of sandbox plugins.

    Subclasses set ``name`` and ``handles`` (the action types they serve) and
    override :meth:`initialize`, :meth:`run` and :meth:`aclose` as needed.
    """

    name: ClassVar[str] = ""
    handles: ClassVar[tuple[type[Action], ...]] = ()
    #: Python code run in the namespace of every IPython kernel (e.g. helper functions
    #: for cells); the Jupyter plugin runs it at each kernel start.
    kernel_setup: ClassVar[str] = ""

    def use_peers(self, plugins: Sequence[Plugin]) -> None:
        """Called by the host, before :meth:`initialize`, with every plugin loaded."""

    async def initialize(self, username: str | None, *, working_dir: str = ".") -> None:
        """Prepare the plugin (start processes, warm caches). Called once, at server start."""

    async def run(
        self, action: Action, *, cwd: str, on_chunk: ChunkSink | None = None
    ) -> Observation:
        """Serve one action of a type listed in ``handles``."""
        raise NotImplementedError(f"plugin {self.name!r} does not run actions")

    def interrupt(self, action: Action) -> bool:
        """Interrupt ``action`` if this plugin is running it now; True if it was.

        The interrupted action still ends with an observation (saying so).
        Plugins that cannot interrupt keep this default.
        """
        return False

    async def aclose(self) -> None:
        """Release everything the plugin holds."""


class PluginStatus:
    """Outcome of one plugin's initialization."""

    __slots__ = ("error", "name", "ready")

    def __init__(self, name: str, *, ready: bool, error: str = "") -> None:
        self.name = name
        self.ready = ready
        self.error = error


class PluginHost:
    """Initializes plugins concurrently and routes actions to them."""

    def __init__(self, plugins: Iterable[Plugin] = (), *, init_timeout: float = 30.0) -> None:
        self._plugins = list(plugins)
        self._init_timeout = init_timeout
        for plugin in self._plugins:
            plugin.use_peers(self._plugins)
        self._ready: list[Plugin] = []
        self.statuses: dict[str, PluginStatus] = {}

    @property
    def names(self) -> list[str]:
        return [p.name for p in self._plugins]

    async def initialize(self, username: str | None, *, working_dir: str) -> list[PluginStatus]:
        """Initialize every plugin concurrently, each under ``init_timeout`` seconds.

        The initializations run in a task group that this call owns: when it
        returns, none is left running (one past its deadline is cancelled).
        """
        results: list[PluginStatus | None] = [None] * len(self._plugins)

        async def init_one(index: int, plugin: Plugin) -> None:
            try:
                with anyio.move_on_after(self._init_timeout) as scope:
                    await plugin.initialize(username, working_dir=working_dir)
            except Exception as exc:
                logger.exception("plugin %r failed to initialize", plugin.name)
                msg = f"plugin {plugin.name!r} failed to initialize: {type(exc).__name__}: {exc}"
                results[index] = PluginStatus(plugin.name, ready=False, error=msg)
                return
            if scope.cancelled_caught:
                msg = f"plugin {plugin.name!r} did not initialize within {self._init_timeout} s"
                logger.error(msg)
                results[index] = PluginStatus(plugin.name, ready=False, error=msg)
                return
            results[index] = PluginStatus(plugin.name, ready=True)

        async with anyio.create_task_group() as task_group:
            for index, plugin in enumerate(self._plugins):
                task_group.start_soon(init_one, index, plugin, name=f"plugin-init-{plugin.name}")
        statuses = [status for status in results if status is not None]
        assert len(statuses) == len(self._plugins)
        for plugin, status in zip(self._plugins, statuses, strict=True):
            self.statuses[plugin.name] = status
            if status.ready:
                self._ready.append(plugin)
        return statuses

    def plugin_for(self, action: Action) -> Plugin | None:
        for plugin in self._ready:
            if isinstance(action, plugin.handles):
                return plugin
        return None

    async def run(
        self, action: Action, *, cwd: str, on_chunk: ChunkSink | None = None
    ) -> Observation:
        plugin = self.plugin_for(action)
        if plugin is None:
            failed = [s for s in self.statuses.values() if not s.ready]
            detail = "; ".join(s.error for s in failed)
            return ErrorObservation(
                f"No plugin in this sandbox serves {type(action).__name__} "
                f"(loaded: {[p.name for p in self._ready] or 'none'})"
                + (f"; {detail}" if detail else ""),
                error_id=ErrorId.PLUGIN_UNAVAILABLE,
            )
        return await plugin.run(action, cwd=cwd, on_chunk=on_chunk)

    def interrupt(self, action: Action) -> bool:
        plugin = self.plugin_for(action)
        return plugin is not None and plugin.interrupt(action)

    async def aclose(self) -> None:
        for plugin in reversed(self._ready):
            try:
                await plugin.aclose()
            except Exception:
                logger.exception("plugin %r failed to close", plugin.name)
        self._ready.clear()
