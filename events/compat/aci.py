"""OpenHands' editor (its ACI, ``impl_source: "oh_aci"``) and our ``FileEditAction``.

OpenHands records one editor call in three shapes, all of which load as a
:class:`~events.models.FileEditAction` and are written back in the shape they
came in:

- ``edit`` with ``args.command`` (``create``, ``str_replace``, ``insert``,
  ``undo_edit``) — the modern form;
- ``read`` with ``args.impl_source == "oh_aci"`` — a ``view`` through the
  editor (numbered lines, directory listings), not a raw read;
- the legacy form: the call only in ``args.translated_ipython_code`` as
  ``print(file_editor(**{<literals>}))``. That code is parsed with :mod:`ast`
  and never evaluated: only the dict literal is read, with
  :func:`ast.literal_eval`; it is regenerated from the event's fields on output
  (the ``aci_code`` note says so).
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from typing import Any, Final

from events.compat.fields import Fields
from events.compat.notes import FORMAT_KEY, opt
from events.models import EDITOR_COMMANDS, FileEditAction

__all__ = ["editor_action", "parse_editor_call", "render_edit_action"]

_ACI_PREFIX: Final = "print(file_editor(**"
_EDITOR_OPTIONAL: Final = ("file_text", "old_str", "new_str", "insert_line", "view_range")


def parse_editor_call(code: str, where: str) -> dict[str, Any]:
    """The keyword dict of ``print(file_editor(**{...}))``, read as literals, never run."""
    refused = f"{where}: args.translated_ipython_code is not print(file_editor(**{{literals}}))"
    try:
        tree = ast.parse(code, mode="eval")
    except (SyntaxError, ValueError, RecursionError) as exc:
        raise ValueError(f"{refused}: {exc}") from exc
    outer = tree.body
    if not (
        isinstance(outer, ast.Call)
        and isinstance(outer.func, ast.Name)
        and outer.func.id == "print"
        and len(outer.args) == 1
        and not outer.keywords
    ):
        raise ValueError(refused)
    inner = outer.args[0]
    if not (
        isinstance(inner, ast.Call)
        and isinstance(inner.func, ast.Name)
        and inner.func.id == "file_editor"
        and not inner.args
        and len(inner.keywords) == 1
        and inner.keywords[0].arg is None
        and isinstance(inner.keywords[0].value, ast.Dict)
    ):
        raise ValueError(refused)
    try:
        kwargs = ast.literal_eval(inner.keywords[0].value)
    except (ValueError, TypeError, SyntaxError, RecursionError) as exc:
        raise ValueError(f"{refused}: {exc}") from exc
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise ValueError(refused)
    return kwargs


def editor_action(editor: Fields, path: str, thought: str, meta: dict[str, Any]) -> FileEditAction:
    """The editor call whose fields ``editor`` holds (``command`` required and known)."""
    command = editor.required_str("command")
    if command not in EDITOR_COMMANDS:
        raise ValueError(f"unknown OpenHands editor command {command!r}")
    return FileEditAction(
        path=path,
        command=command,
        file_text=editor.optional_str("file_text"),
        old_str=editor.optional_str("old_str"),
        new_str=editor.optional_str("new_str"),
        insert_line=editor.optional_int("insert_line"),
        view_range=editor.int_list("view_range"),
        thought=thought,
        **meta,
    )


def _aci_code(event: FileEditAction) -> str:
    """The legacy ``translated_ipython_code`` of ``event``, as OpenHands writes it."""
    kwargs: dict[str, Any] = {"command": event.command, "path": event.path}
    for name in _EDITOR_OPTIONAL:
        value = getattr(event, name)
        if value is not None:
            kwargs[name] = value
    return f"{_ACI_PREFIX}{kwargs!r}))"


def render_edit_action(event: FileEditAction, top: dict[str, Any]) -> dict[str, Any]:
    """``event`` in the OpenHands shape it was loaded from (``top``: the common keys)."""
    notes = (event.extra or {}).get(FORMAT_KEY)
    aci_code = isinstance(notes, Mapping) and notes.get("aci_code") is True
    is_view = event.command == "view"
    if is_view:
        top["message"] = f"Reading file: {event.path}"
    if aci_code:
        # OpenHands' legacy encoding: the editor call only in translated_ipython_code.
        args: dict[str, Any] = {"path": event.path}
        if not is_view:
            args["content"] = ""
        args |= {
            "start": 0 if is_view else 1,
            "end": -1,
            "thought": event.thought,
            "impl_source": "oh_aci",
            "translated_ipython_code": _aci_code(event),
        }
    elif is_view:
        args = {
            "path": event.path,
            "start": 0,
            "end": -1,
            "thought": event.thought,
            "impl_source": "oh_aci",
            "view_range": event.view_range,
            **{name: opt(getattr(event, name)) for name in _EDITOR_OPTIONAL[:-1]},
        }
    else:
        args = {
            "path": event.path,
            "command": event.command,
            "file_text": event.file_text,
            "old_str": event.old_str,
            "new_str": event.new_str,
            "insert_line": event.insert_line,
            "content": "",
            "start": 1,
            "end": -1,
            "thought": event.thought,
            "impl_source": "oh_aci",
            "view_range": opt(event.view_range),
        }
    return {**top, "action": "read" if is_view else "edit", "args": args}
