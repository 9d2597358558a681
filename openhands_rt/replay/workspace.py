"""``/workspace`` with a local sandbox: paths mapped into a host directory, and back.

OpenHands (and our Docker sandboxes) run with the workspace at ``/workspace``,
but a :class:`~openhands_rt.local.LocalRuntime` works in a host directory. With
``map_workspace=DIR`` every path-carrying action (read, write, edit ``path`` and
a command's ``cwd``) whose path is ``/workspace`` or below it is rewritten to
``DIR`` (:func:`map_action_paths`); command text and IPython code are never
rewritten (they are opaque). In the comparison, a replayed text is also tried
with ``DIR`` written back as ``/workspace`` (:func:`unmap_workspace`), so
listings and messages that name the path still match; a log recorded in that
same local directory matches as it is.
"""

from __future__ import annotations

import os
import re
from typing import Final, assert_never

import msgspec

from events import (
    Action,
    CmdRunAction,
    FileEditAction,
    FileReadAction,
    FileWriteAction,
    IPythonRunCellAction,
)
from events.wire import RunnableAction

__all__ = ["WORKSPACE", "map_action_paths", "unmap_workspace"]

WORKSPACE: Final = "/workspace"
"""Where OpenHands and our Docker sandboxes keep the workspace."""

_replace: Final = msgspec.structs.replace


def _maps(path: str) -> bool:
    return path == WORKSPACE or path.startswith(WORKSPACE + "/")


def _map_path(path: str, workspace: str) -> str:
    return workspace + path[len(WORKSPACE) :] if _maps(path) else path


def map_action_paths(action: Action, workspace: str) -> Action:
    """``action`` with a path at or under ``/workspace`` moved under ``workspace``."""
    if not isinstance(action, RunnableAction):
        return action  # Action is an open base class: a type the server does not run has no path
    match action:
        case FileReadAction() | FileWriteAction() | FileEditAction():
            if _maps(action.path):
                return _replace(action, path=_map_path(action.path, workspace))
        case CmdRunAction():
            if action.cwd is not None and _maps(action.cwd):
                return _replace(action, cwd=_map_path(action.cwd, workspace))
        case IPythonRunCellAction():
            pass  # code, like command text, is opaque
        case _:
            assert_never(action)
    return action


def unmap_workspace(text: str, workspace: str) -> str:
    """``text`` with the directory ``workspace`` (or its real path) written as ``/workspace``."""
    text = _workspace_pattern(workspace).sub(WORKSPACE, text)
    real = os.path.realpath(workspace)
    if real != workspace:
        text = _workspace_pattern(real).sub(WORKSPACE, text)
    return text


def _workspace_pattern(workspace: str) -> re.Pattern[str]:
    # Only the whole directory name: /tmp/ws must not match inside /tmp/ws2.
    return re.compile(re.escape(workspace.rstrip("/")) + r"(?![\w.-])")
