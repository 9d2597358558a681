"""Plugins as agents declare them: requirements, and the registry of plugin classes.

An agent lists :class:`PluginRequirement` objects (``sandbox_plugins``) in
``SandboxConfig.plugins``. Each names a plugin and the Python requirements it
needs inside the sandbox: those are installed into the runtime image (and so
take part in its lock tag) and the server initializes the named plugins.

``ALL_PLUGINS`` maps every known plugin name to its class: the built-ins plus
third-party plugins registered under the ``openhands_rt.plugins`` entry-point
group. :func:`offered_plugins` is what is offered to a user (in errors and
``--help``): every name but those of distributions marked with the keyword
:data:`TEST_PLUGIN_KEYWORD` (the test suite's plugins, installed with its
development dependencies; they still work when named).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from container_server import Plugin
from events.plugins import load_target, offered_plugin_names, plugin_targets
from events.wire import PLUGIN_ENTRY_POINT_GROUP, TEST_PLUGIN_KEYWORD
from openhands_rt.errors import SandboxError

__all__ = [
    "ALL_PLUGINS",
    "TEST_PLUGIN_KEYWORD",
    "AgentSkillsRequirement",
    "JupyterRequirement",
    "Plugin",
    "PluginRequirement",
    "UnknownPluginError",
    "check_plugins",
    "offered_plugins",
]


@dataclass(frozen=True)
class PluginRequirement:
    """A plugin an agent needs: its name and the Python requirements it installs."""

    name: str
    requirements: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class JupyterRequirement(PluginRequirement):
    """The built-in Jupyter plugin: a real IPython kernel for IPythonRunCellAction."""

    name: str = "jupyter"
    requirements: tuple[str, ...] = field(default=("jupyter_client", "ipykernel"))


@dataclass(frozen=True)
class AgentSkillsRequirement(PluginRequirement):
    """OpenHands' agent-skills: ``file_editor(**kwargs)`` in the IPython kernel.

    Needs :class:`JupyterRequirement` too (the kernel); installs nothing more.
    """

    name: str = "agent_skills"


class _PluginRegistry(Mapping[str, type[Plugin]]):
    """name -> Plugin class; classes are imported on first access."""

    def _targets(self) -> dict[str, str]:
        return plugin_targets()

    def __getitem__(self, name: str) -> type[Plugin]:
        target = self._targets().get(name)
        if target is None:
            raise KeyError(name)
        cls = load_target(target)
        if not (isinstance(cls, type) and issubclass(cls, Plugin)):
            raise TypeError(f"{target} is not a container_server.Plugin subclass")
        return cls

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._targets()))

    def __len__(self) -> int:
        return len(self._targets())

    def __repr__(self) -> str:
        return f"ALL_PLUGINS({sorted(self._targets())})"


ALL_PLUGINS: Mapping[str, type[Plugin]] = _PluginRegistry()


class UnknownPluginError(SandboxError, ValueError):
    """A plugin name nobody provides."""


def offered_plugins() -> list[str]:
    """The plugin names to offer a user, sorted: all but the test suite's (see above)."""
    return offered_plugin_names()


def check_plugins(requirements: list[PluginRequirement]) -> None:
    """Fail before any sandbox starts when a requirement names an unknown plugin."""
    known = set(ALL_PLUGINS)
    for req in requirements:
        if req.name not in known:
            raise UnknownPluginError(
                f"unknown plugin {req.name!r}; known plugins: {', '.join(offered_plugins())} "
                f"(third-party plugins register under the {PLUGIN_ENTRY_POINT_GROUP!r} "
                "entry-point group)"
            )
