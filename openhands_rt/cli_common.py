"""What the CLI's commands share: the one-line error and ``--plugins`` parsing."""

from __future__ import annotations

from openhands_rt.plugins import (
    ALL_PLUGINS,
    JupyterRequirement,
    PluginRequirement,
    offered_plugins,
)

__all__ = ["CliError", "plugin_requirements"]


class CliError(Exception):
    """A user-facing error: printed as one line."""


def plugin_requirements(names: list[str] | None) -> list[PluginRequirement]:
    """``--plugins`` as requirements; an unknown name is an error (build, run and replay alike)."""
    plugins: list[PluginRequirement] = []
    for name in names or []:
        if name == "jupyter":
            plugins.append(JupyterRequirement())
        elif name in ALL_PLUGINS:
            plugins.append(PluginRequirement(name))
        else:
            raise CliError(f"unknown plugin {name!r}; known: {', '.join(offered_plugins())}")
    return plugins
