"""The ``agent_skills`` plugin: OpenHands' helper functions in the IPython kernel.

OpenHands' agent-skills plugin gives its kernel a ``file_editor(**kwargs)``
function, and recorded trajectories call it from IPython cells
(``print(file_editor(**{"command": "create", "path": ..., "file_text": ...}))``).
This plugin gives our kernel the same function, backed by our
``str_replace_editor`` (:class:`container_server.editor.FileEditor`): the same
commands, parameters and result texts (an error is returned as its
``ERROR:…`` text, as OpenHands does). Relative paths resolve against the
kernel's working directory. It serves no action itself and needs the
``jupyter`` plugin, which runs :attr:`AgentSkillsPlugin.kernel_setup` in every
kernel it starts.

The function runs in the kernel (the sandbox user's process); it imports this
module there, lazily, at its first call.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import ClassVar

from container_server.plugins import Plugin

__all__ = ["AgentSkillsPlugin", "file_editor"]

_SETUP = """\
def file_editor(**kwargs):
    \"\"\"OpenHands' str_replace_editor: command, path, file_text, old_str, new_str,
    insert_line, view_range. Returns the editor's text.\"\"\"
    from container_server.agent_skills import file_editor as _file_editor
    return _file_editor(**kwargs)
"""

_editor = None  # the kernel's FileEditor (undo history lives as long as the kernel)


def file_editor(
    command: str,
    path: str,
    file_text: str | None = None,
    old_str: str | None = None,
    new_str: str | None = None,
    insert_line: int | None = None,
    view_range: list[int] | None = None,
    **_ignored: object,
) -> str:
    """Run one editor command (in the kernel process); its result text."""
    global _editor
    from container_server.editor import FileEditor
    from events import FileEditAction

    if _editor is None:
        _editor = FileEditor()
    try:
        action = FileEditAction(
            path=path,
            command=command,
            file_text=file_text,
            old_str=old_str,
            new_str=new_str,
            insert_line=insert_line,
            view_range=view_range,
        )
    except (TypeError, ValueError) as exc:
        return f"ERROR:\n{exc}"
    return _editor.run_sync(action, os.getcwd()).content


class AgentSkillsPlugin(Plugin):
    """Gives the IPython kernel OpenHands' ``file_editor`` (see the module docstring)."""

    name = "agent_skills"
    kernel_setup: ClassVar[str] = _SETUP

    def __init__(self) -> None:
        self._with_jupyter = False

    def use_peers(self, plugins: Sequence[Plugin]) -> None:
        self._with_jupyter = any(p.name == "jupyter" for p in plugins)

    async def initialize(self, username: str | None, *, working_dir: str = ".") -> None:
        if not self._with_jupyter:
            raise RuntimeError(
                "agent_skills gives the IPython kernel its functions: add the jupyter plugin"
            )
