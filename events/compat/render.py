"""Our event -> OpenHands' event dict.

Each event type is rendered the way OpenHands itself writes it (e.g. ``timeout``
as an int when it is integral, ``cwd`` only when set, ``success`` for command
output) so that recorded trajectories need few notes; the notes in
``event.extra`` (:mod:`events.compat.notes`) then put back whatever the
original spelled differently, and the unmodelled keys it had.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Final, assert_never, cast

from events.codec import EVENT_TYPES, AnyEvent
from events.compat.aci import render_edit_action
from events.compat.fields import read_metadata
from events.compat.notes import (
    FORMAT_KEY,
    OMIT,
    apply_notes,
    merge,
    opt,
    reorder_as_noted,
    strip_omitted,
)
from events.models import (
    CmdOutputChunk,
    CmdOutputObservation,
    CmdRunAction,
    ErrorObservation,
    Event,
    EventSource,
    FileEditAction,
    FileEditObservation,
    FileReadAction,
    FileReadObservation,
    FileWriteAction,
    FileWriteObservation,
    IPythonRunCellAction,
    IPythonRunCellObservation,
    OpenHandsEvent,
    RuntimeStatusObservation,
    SnapshotObservation,
)

__all__ = ["render", "to_openhands_dict"]

# The order in which OpenHands' event_to_dict writes the top-level keys.
_TOP_ORDER: Final = (
    "id",
    "timestamp",
    "source",
    "message",
    "cause",
    "action",
    "observation",
    "tool_call_metadata",
    "llm_metrics",
    "args",
    "timeout",
    "content",
    "extras",
    "success",
)


def to_openhands_dict(event: Event) -> dict[str, Any]:
    """The OpenHands dict of ``event``; ``ValueError`` for events OpenHands has no form of."""
    rendered = render(event)
    if isinstance(event, OpenHandsEvent):
        return rendered
    extra = dict(event.extra or {})
    notes = extra.pop(FORMAT_KEY, None) or {}
    if not isinstance(notes, Mapping):
        raise ValueError(f"extra[{FORMAT_KEY!r}] must be an object, got {type(notes).__name__}")
    apply_notes(rendered, notes)
    merge(rendered, copy.deepcopy(extra))
    out = strip_omitted(rendered)
    out = {**{k: out[k] for k in _TOP_ORDER if k in out}, **out}
    return reorder_as_noted(out, notes)


def render(event: Event) -> dict[str, Any]:
    """Our rendering of ``event``, before ``extra`` is applied; may hold :data:`OMIT` values.

    An :class:`OpenHandsEvent` renders as its ``data`` (with the fields changed
    since loading written over it): it is complete as it is.
    """
    if not isinstance(event, EVENT_TYPES):
        raise ValueError(f"{type(event).__name__} has no OpenHands form")
    return _render(cast("AnyEvent", event))  # EVENT_TYPES are AnyEvent's members


def _number(value: float) -> int | float:
    # OpenHands' timeouts are ints; write 120, not 120.0.
    if isinstance(value, int):
        return value
    if value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def _top(event: Event, message: str) -> dict[str, Any]:
    return {
        "id": OMIT if event.id == -1 else event.id,
        "timestamp": OMIT if event.timestamp is None else event.timestamp,
        "source": OMIT if event.source is None else EventSource(event.source).value,
        "message": message,
        "cause": OMIT if event.cause is None else event.cause,
    }


def _render(event: AnyEvent) -> dict[str, Any]:
    match event:
        case CmdRunAction():
            return {
                **_top(event, f"Running command: {event.command}"),
                "action": "run",
                "args": {
                    "command": event.command,
                    "is_input": event.is_input,
                    "thought": event.thought,
                    "blocking": event.blocking,
                    "cwd": opt(event.cwd),
                    "hidden": event.hidden,
                },
                "timeout": OMIT if event.timeout is None else _number(event.timeout),
            }
        case IPythonRunCellAction():
            return {
                **_top(event, f"Running Python code interactively: {event.code}"),
                "action": "run_ipython",
                "args": {"code": event.code, "thought": event.thought},
                "timeout": OMIT if event.timeout is None else _number(event.timeout),
            }
        case FileReadAction():
            return {
                **_top(event, f"Reading file: {event.path}"),
                "action": "read",
                "args": {
                    "path": event.path,
                    "start": event.start,
                    "end": event.end,
                    "thought": event.thought,
                    "impl_source": "default",
                    "view_range": event.view_range,
                },
            }
        case FileWriteAction():
            return {
                **_top(event, f"Writing file: {event.path}"),
                "action": "write",
                "args": {
                    "path": event.path,
                    "content": event.content,
                    "start": event.start,
                    "end": event.end,
                    "thought": event.thought,
                },
            }
        case FileEditAction():
            return render_edit_action(event, _top(event, ""))
        case CmdOutputObservation():
            metadata = event.metadata
            return {
                **_top(event, event.message),
                "observation": "run",
                "content": event.content,
                "extras": {
                    "command": event.command,
                    "metadata": {
                        "exit_code": metadata.exit_code,
                        "pid": metadata.pid,
                        "username": metadata.username,
                        "hostname": metadata.hostname,
                        "working_dir": metadata.working_dir,
                        "py_interpreter_path": metadata.py_interpreter_path,
                        "prefix": metadata.prefix,
                        "suffix": metadata.suffix,
                    },
                    "hidden": event.hidden,
                },
                "success": metadata.exit_code == 0,
            }
        case IPythonRunCellObservation():
            return {
                **_top(event, "Code executed in IPython cell."),
                "observation": "run_ipython",
                "content": event.content,
                "extras": {"code": event.code, "image_urls": list(event.image_urls) or None},
                "success": True,
            }
        case FileReadObservation():
            return {
                **_top(event, f"I read the file {event.path}."),
                "observation": "read",
                "content": event.content,
                "extras": {"path": event.path},
            }
        case FileWriteObservation():
            return {
                **_top(event, f"I wrote to the file {event.path}."),
                "observation": "write",
                "content": event.content,
                "extras": {"path": event.path},
            }
        case FileEditObservation():
            return {
                **_top(event, f"I edited the file {event.path}."),
                "observation": "edit",
                "content": event.content,
                "extras": {
                    "path": event.path,
                    "prev_exist": event.prev_exist,
                    "old_content": event.old_content,
                    "new_content": event.new_content,
                    # Our editor is OpenHands' ACI editor; without this OpenHands takes the
                    # observation for an LLM-based edit (and renders it as one).
                    "impl_source": "oh_aci",
                    "diff": event.diff or OMIT,
                },
            }
        case ErrorObservation():
            return {
                **_top(event, event.content),
                "observation": "error",
                "content": event.content,
                "extras": {"error_id": event.error_id},
            }
        case OpenHandsEvent():
            return _render_foreign(event)
        case CmdOutputChunk() | RuntimeStatusObservation() | SnapshotObservation():
            raise ValueError(f"{type(event).__name__} has no OpenHands form")
        case _:
            assert_never(event)


def _render_foreign(event: OpenHandsEvent) -> dict[str, Any]:
    data = event.data
    if not isinstance(data, Mapping) or ("action" in data) == ("observation" in data):
        raise ValueError("OpenHandsEvent.data must be an OpenHands event dict")
    out = copy.deepcopy(dict(data))
    recorded = read_metadata(data)
    current = {
        "id": None if event.id == -1 else event.id,
        "timestamp": event.timestamp,
        "source": None if event.source is None else EventSource(event.source).value,
        "cause": event.cause,
    }
    recorded["id"] = None if recorded["id"] == -1 else recorded["id"]
    if recorded["source"] is not None:
        recorded["source"] = recorded["source"].value
    for key, value in current.items():
        # Only a field changed since loading is written; untouched ones keep their spelling.
        if value != recorded[key]:
            if value is None:
                out.pop(key, None)
            else:
                out[key] = value
    return out
