"""The plugins a sandbox asks for, imported and instantiated inside it.

Names are resolved by the discovery both sides share (:mod:`events.plugins`):
the built-ins of :data:`events.wire.BUILTIN_PLUGINS` and third-party
:class:`container_server.plugins.Plugin` subclasses registered under the
``openhands_rt.plugins`` entry-point group (name = plugin name).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from container_server.errors import ServerError
from container_server.plugins import Plugin, PluginHost
from events.plugins import load_target, offered_plugin_names, plugin_targets

__all__ = ["PluginLoadError", "load_plugin_class", "load_plugins"]

logger = logging.getLogger(__name__)


class PluginLoadError(ServerError, ValueError):
    """A plugin name nobody provides, or a target that is not a :class:`Plugin` subclass."""


def load_plugin_class(target: str) -> type[Plugin]:
    cls = load_target(target)
    if not (isinstance(cls, type) and issubclass(cls, Plugin)):
        raise PluginLoadError(f"{target} is not a container_server.plugins.Plugin subclass")
    return cls


def load_plugins(names: Iterable[str], *, init_timeout: float = 60.0) -> PluginHost:
    """Instantiate the named plugins (an unknown name raises :class:`PluginLoadError`)."""
    names = list(dict.fromkeys(names))
    if not names:
        # No discovery (reading every distribution's entry points) for nothing.
        return PluginHost([], init_timeout=init_timeout)
    known = plugin_targets()
    plugins: list[Plugin] = []
    for name in names:
        target = known.get(name)
        if target is None:
            raise PluginLoadError(
                f"unknown plugin {name!r}; "
                f"known plugins: {', '.join(offered_plugin_names()) or 'none'}"
            )
        plugins.append(load_plugin_class(target)())
    return PluginHost(plugins, init_timeout=init_timeout)
