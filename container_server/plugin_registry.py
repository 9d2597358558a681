"""Which plugin class serves which name, inside the sandbox.

Built-in plugins are listed here; third-party plugins register a
:class:`container_server.plugins.Plugin` subclass under the
``openhands_rt.plugins`` entry-point group (name = plugin name).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable
from importlib.metadata import entry_points

from container_server.plugins import Plugin, PluginHost
from events.wire import PLUGIN_ENTRY_POINT_GROUP

__all__ = [
    "BUILTIN_PLUGINS",
    "ENTRY_POINT_GROUP",
    "TEST_PLUGIN_KEYWORD",
    "UnknownPluginError",
    "available_plugins",
    "load_plugins",
    "offered_plugin_names",
]

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = PLUGIN_ENTRY_POINT_GROUP

# name -> "module:Class"; imported lazily so a plugin's dependencies are only
# needed in sandboxes that ask for it.
BUILTIN_PLUGINS: dict[str, str] = {
    "jupyter": "container_server.jupyter:JupyterPlugin",
    "agent_skills": "container_server.agent_skills:AgentSkillsPlugin",
}


class UnknownPluginError(ValueError):
    """A plugin name that neither the built-ins nor an entry point provide."""


#: A plugin distribution whose metadata has this keyword is for tests: never offered.
TEST_PLUGIN_KEYWORD = "openhands-rt-test-plugin"


def offered_plugin_names() -> list[str]:
    """The plugin names to offer a user, sorted: all but the test suite's."""
    hidden = set()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        fields = (ep.dist.metadata.get_all("Keywords") or []) if ep.dist is not None else []
        if TEST_PLUGIN_KEYWORD in (k.strip() for f in fields for k in f.split(",")):
            hidden.add(ep.name)
    return sorted(name for name in available_plugins() if name not in hidden)


def available_plugins() -> dict[str, str]:
    found = dict(BUILTIN_PLUGINS)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep.value)
    return found


def _load_class(target: str) -> type[Plugin]:
    module_name, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, Plugin)):
        raise TypeError(f"{target} is not a container_server.plugins.Plugin subclass")
    return cls


def load_plugins(names: Iterable[str], *, init_timeout: float = 60.0) -> PluginHost:
    """Instantiate the named plugins (unknown names raise UnknownPluginError)."""
    known = available_plugins()
    plugins: list[Plugin] = []
    for name in dict.fromkeys(names):
        target = known.get(name)
        if target is None:
            raise UnknownPluginError(
                f"unknown plugin {name!r}; "
                f"known plugins: {', '.join(offered_plugin_names()) or 'none'}"
            )
        plugins.append(_load_class(target)())
    return PluginHost(plugins, init_timeout=init_timeout)
