"""The action execution server that runs inside the sandbox."""

from container_server.app import API_KEY_HEADER, ServerSettings, create_app
from container_server.executor import ActionExecutor
from container_server.plugins import Plugin, PluginHost

__all__ = [
    "API_KEY_HEADER",
    "ActionExecutor",
    "Plugin",
    "PluginHost",
    "ServerSettings",
    "create_app",
]
