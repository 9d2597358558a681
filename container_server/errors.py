"""The root of every error the sandbox's server raises on purpose.

Tree (each module's errors derive from :class:`ServerError`)::

    ServerError
    ├── BashStartError          the shell could not be started (container_server.bash)
    ├── BashSessionError        the shell's PTY reader or exit watcher failed (bash)
    ├── ShellStateUnavailable   the shell's state cannot be read now (container_server.shell_state)
    ├── KernelStartError        the Jupyter kernel could not be started (container_server.jupyter)
    ├── PluginLoadError         a plugin name nobody provides, or not a Plugin (plugin_registry)
    ├── ReadError               a file action's path cannot be read (container_server.files)
    ├── EditorError             the editor refuses a command (container_server.editor)
    └── TransferError           an upload/download is refused (container_server.transfer)

Errors keep the builtin base they had before the root existed (``ValueError``,
``RuntimeError``), so code that caught those still does.
"""

from __future__ import annotations

__all__ = ["ServerError"]


class ServerError(Exception):
    """Something the server refuses or cannot do, said in words an agent can act on."""
