"""Which plugin serves which name: the one discovery both sides share.

A plugin is named by the built-in table :data:`events.wire.BUILTIN_PLUGINS` or
by an entry point in the :data:`events.wire.PLUGIN_ENTRY_POINT_GROUP` group
(name = plugin name, value = ``"module:Class"``). The host asks which names
exist (to refuse an unknown one before any sandbox starts, and to offer them
in ``--help``); the server imports the class of each name a sandbox asks for.
Nothing here imports a plugin until :func:`load_target` is called, nor
:mod:`importlib.metadata` (a sixth of the server's own imports) until entry
points are read.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from events.wire import BUILTIN_PLUGINS, PLUGIN_ENTRY_POINT_GROUP, TEST_PLUGIN_KEYWORD

if TYPE_CHECKING:
    from importlib.metadata import EntryPoints

__all__ = ["load_target", "offered_plugin_names", "plugin_targets"]


def _entry_points() -> EntryPoints:
    from importlib.metadata import entry_points

    return entry_points(group=PLUGIN_ENTRY_POINT_GROUP)


def plugin_targets() -> dict[str, str]:
    """name -> ``"module:Class"`` for every plugin: built-ins first, then entry points."""
    found = dict(BUILTIN_PLUGINS)
    for ep in _entry_points():
        found.setdefault(ep.name, ep.value)
    return found


def offered_plugin_names() -> list[str]:
    """The plugin names to offer a user, sorted: all but the test suite's."""
    hidden = set()
    for ep in _entry_points():
        fields = (ep.dist.metadata.get_all("Keywords") or []) if ep.dist is not None else []
        if TEST_PLUGIN_KEYWORD in (k.strip() for f in fields for k in f.split(",")):
            hidden.add(ep.name)
    return sorted(name for name in plugin_targets() if name not in hidden)


def load_target(target: str) -> object:
    """The object ``"module:attr"`` names, importing its module (the caller checks its type)."""
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)
