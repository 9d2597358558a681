"""The action execution server that runs inside the sandbox.

Its public names are imported on first use (PEP 562), so the host, which
needs only :class:`Plugin`, does not load the server's web stack, and the
server's own start does not pay for what it never touches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from events.lazy import lazy_exports

if TYPE_CHECKING:
    from container_server.app import ServerSettings, create_app
    from container_server.executor import ActionExecutor
    from container_server.plugins import Plugin, PluginHost
    from events.wire import API_KEY_HEADER

__all__ = [
    "API_KEY_HEADER",
    "ActionExecutor",
    "Plugin",
    "PluginHost",
    "ServerSettings",
    "create_app",
]

_HOMES = {
    "API_KEY_HEADER": "events.wire",
    "ActionExecutor": "container_server.executor",
    "Plugin": "container_server.plugins",
    "PluginHost": "container_server.plugins",
    "ServerSettings": "container_server.app",
    "create_app": "container_server.app",
}


__getattr__, __dir__ = lazy_exports(globals(), _HOMES)
