"""Conversion between our events and OpenHands' event dicts (its trajectory format).

OpenHands writes an event as a dict::

    action       {"id", "timestamp", "source", "message", "action": NAME, "args": {...}, "timeout"}
    observation  {"id", "timestamp", "source", "message", "cause", "observation": NAME,
                  "content": ..., "extras": {...}, "success"}

Mapping (OpenHands name → our event):

=================================  =============================================================
action ``run``                     :class:`CmdRunAction` (top-level ``timeout`` → ``timeout``)
action ``run_ipython``             :class:`IPythonRunCellAction`
action ``read``                    :class:`FileReadAction`; but ``FileEditAction(command="view")``
                                   when ``args.impl_source`` is ``"oh_aci"`` or the call is in
                                   ``args.translated_ipython_code``: OpenHands executes those with
                                   its editor (numbered lines, directory listings), as our editor's
                                   ``view`` does, not as a raw read
action ``write``                   :class:`FileWriteAction`
action ``edit``                    :class:`FileEditAction` (``args.command`` or the legacy
                                   ``translated_ipython_code``); an edit without a command (an
                                   OpenHands LLM-based edit) is not runnable here → OpenHandsEvent
observation ``run``                :class:`CmdOutputObservation` (``extras.metadata``; legacy
                                   ``extras.exit_code``/``command_id`` set ``exit_code``/``pid``)
observation ``run_ipython``        :class:`IPythonRunCellObservation`
observation ``read``/``write``     :class:`FileReadObservation` / :class:`FileWriteObservation`
observation ``edit``               :class:`FileEditObservation` (``extras.diff`` → ``diff``)
observation ``error``              :class:`ErrorObservation`
any other ``action``/``observation`` :class:`OpenHandsEvent` holding the original dict whole
                                   (``message``, ``finish``, ``think``, ``recall``, ``browse``,
                                   ``change_agent_state``, ``agent_state_changed``, ``null``, …)
=================================  =============================================================

A dict with neither an ``action`` nor an ``observation`` key (or both), a non-dict, a type name
that is not a non-empty string, a field of the wrong type, or an editor call in
``translated_ipython_code`` that is not ``print(file_editor(**{<literals>}))`` raises
``ValueError`` naming the culprit. The editor call is parsed with :mod:`ast`, never evaluated:
only the dict literal is read, with :func:`ast.literal_eval`.

``source``: OpenHands uses the same three values as :class:`EventSource` (``agent``, ``user``,
``environment``) and they map one to one. Any other value (or a missing one) leaves ``source``
``None``; the original value is kept (see below). ``id``/``cause`` may be ints or strings of
digits (``"4"``); both load as ints.

Lossless round trip: ``to_openhands_dict(from_openhands_dict(d)) == d`` for every dict this
module accepts, key order included (so a loaded and dumped trajectory is byte-identical when
written the way OpenHands writes it). ``from_openhands_dict`` renders the event it built and
keeps in ``event.extra`` exactly what that rendering misses:

- keys we do not model, under their own names and at their own level: top-level keys
  (``tool_call_metadata``, ``llm_metrics``, ``timeout`` of a file action, …) as
  ``extra[key]``; keys of ``args``/``extras`` as ``extra["args"][key]`` /
  ``extra["extras"][key]`` (and ``extra["extras"]["metadata"][key]``), e.g.
  ``impl_source``, ``confirmation_state``, ``formatted_output_and_error``;
- ``extra["_openhands_format"]``: how the original spelled what we do model, where it differs
  from our rendering: ``changed`` (``[path, fingerprint, original value]``: a string id
  ``"4"``, a ``message`` other than the usual one, ``120.0`` for ``120``, …), ``absent``
  (``[path, fingerprint]``: keys the original lacked, e.g. ``success`` in old logs),
  ``order`` (``[path, keys]``: key order) and ``aci_code`` (the editor call is written in
  ``translated_ipython_code``, regenerated from the fields on output). The fingerprint is a
  hash of our rendering of that key when the event was loaded: after a field is changed
  (e.g. ``msgspec.structs.replace(ev, id=9)``), its note no longer matches and is dropped,
  so the new value is written, never the stale original.

Rendering chooses, per key, what OpenHands itself writes (e.g. ``timeout`` as an int when it
is integral, ``cwd`` only when set, ``success`` for command output) so that the recorded
trajectories need few notes. An :class:`OpenHandsEvent` renders as its ``data``, with
``id``/``timestamp``/``source``/``cause`` updated if the event's fields were changed.

:class:`CmdOutputChunk` and :class:`RuntimeStatusObservation` have no OpenHands form:
:func:`to_openhands_dict` raises ``ValueError`` for them and
:func:`dump_openhands_trajectory` leaves them out.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

import msgspec

from events.models import (
    EDITOR_COMMANDS,
    CmdOutputChunk,
    CmdOutputMetadata,
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
)

__all__ = [
    "FORMAT_KEY",
    "dump_openhands_trajectory",
    "from_openhands_dict",
    "load_openhands_trajectory",
    "to_openhands_dict",
]

FORMAT_KEY: Final = "_openhands_format"
"""The key of ``Event.extra`` holding the notes on how an OpenHands original was spelled."""

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
_ACI_PREFIX: Final = "print(file_editor(**"
_EDITOR_OPTIONAL: Final = ("file_text", "old_str", "new_str", "insert_line", "view_range")
_MAX_ID: Final = 2**63


class _Omitted:
    """Marks a key we render only when its value is set: absent from the output."""

    def __repr__(self) -> str:
        return "<omitted>"


_OMIT: Final = _Omitted()


# --------------------------------------------------------------------------- public API


def from_openhands_dict(d: Mapping[str, Any]) -> Event:
    """Build the event an OpenHands event dict describes (see the module docstring)."""
    if not isinstance(d, Mapping):
        raise ValueError(f"an OpenHands event must be a JSON object, got {type(d).__name__}")
    original = dict(d)
    if FORMAT_KEY in original:
        raise ValueError(f"an OpenHands event cannot have the key {FORMAT_KEY!r} (reserved)")
    is_action, kind = _kind(original)
    event = _parse(original, kind, is_action=is_action)
    if isinstance(event, OpenHandsEvent):
        return event
    args = original.get("args")
    aci_code = (
        isinstance(event, FileEditAction)
        and isinstance(args, Mapping)
        and args.get("translated_ipython_code") is not None
    )
    format_notes: dict[str, Any] = {"aci_code": True} if aci_code else {}
    bare = _with_extra(event, {FORMAT_KEY: format_notes} if format_notes else None)
    canonical = _render(bare)
    patch: dict[str, Any] = {}
    changed: list[Any] = []
    absent: list[Any] = []
    _diff(original, canonical, [], patch, changed, absent)
    if changed:
        format_notes["changed"] = changed
    if absent:
        format_notes["absent"] = absent
    if format_notes:
        patch[FORMAT_KEY] = format_notes
    event = _with_extra(event, patch or None)
    order: list[Any] = []
    _diff_order(original, to_openhands_dict(event), [], order)
    if order:
        format_notes["order"] = order
        patch[FORMAT_KEY] = format_notes
        event = _with_extra(event, patch)
    return event


def to_openhands_dict(event: Event) -> dict[str, Any]:
    """The OpenHands dict of ``event``; ``ValueError`` for events OpenHands has no form of."""
    if isinstance(event, OpenHandsEvent):
        return _render_foreign(event)
    canonical = _render(event)
    extra = dict(event.extra or {})
    notes = extra.pop(FORMAT_KEY, None) or {}
    if not isinstance(notes, Mapping):
        raise ValueError(f"extra[{FORMAT_KEY!r}] must be an object, got {type(notes).__name__}")
    _apply_notes(canonical, notes)
    _merge(canonical, copy.deepcopy(extra))
    out = _strip(canonical)
    out = {**{k: out[k] for k in _TOP_ORDER if k in out}, **out}
    for path, keys in _entries(notes, "order", 2):
        out = _reorder(out, path, keys)
    result: dict[str, Any] = out
    return result


def load_openhands_trajectory(
    path_or_bytes: str | os.PathLike[str] | bytes | bytearray,
) -> list[Event]:
    """Load an OpenHands trajectory: a file path, or the JSON bytes of a list of event dicts."""
    if isinstance(path_or_bytes, bytes | bytearray):
        raw = bytes(path_or_bytes)
    else:
        raw = Path(path_or_bytes).read_bytes()
    try:
        data = json.loads(raw)
    except RecursionError as exc:
        raise ValueError("OpenHands trajectory: JSON nested too deeply") from exc
    except ValueError as exc:
        raise ValueError(f"OpenHands trajectory: not JSON: {exc}") from exc
    if not isinstance(data, list):
        raise ValueError(f"an OpenHands trajectory is a JSON list, got {type(data).__name__}")
    events: list[Event] = []
    try:
        # extend() keeps the events made before a failure: len(events) is the bad index.
        events.extend(from_openhands_dict(item) for item in data)
    except ValueError as exc:
        raise ValueError(f"OpenHands trajectory event #{len(events)}: {exc}") from exc
    return events


def dump_openhands_trajectory(events: Iterable[Event]) -> bytes:
    """Write events as an OpenHands trajectory, the way OpenHands writes it (2-space JSON).

    :class:`CmdOutputChunk` and :class:`RuntimeStatusObservation` are left out: OpenHands has
    no such events (a command's whole output is in its observation).
    """
    dicts = [
        to_openhands_dict(event)
        for event in events
        if not isinstance(event, CmdOutputChunk | RuntimeStatusObservation)
    ]
    return (json.dumps(dicts, indent=2) + "\n").encode("utf-8")


# --------------------------------------------------------------------------- reading


def _kind(d: dict[str, Any]) -> tuple[bool, str]:
    has_action, has_observation = "action" in d, "observation" in d
    if has_action == has_observation:
        which = "both" if has_action else "neither"
        raise ValueError(
            f"not an OpenHands event: {which} of 'action' and 'observation' "
            f"(keys: {sorted(map(str, d))[:20]})"
        )
    key = "action" if has_action else "observation"
    kind = d[key]
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"unknown OpenHands event type: {key}={kind!r}")
    return has_action, kind


def _event_id(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and -_MAX_ID <= value < _MAX_ID:
        return value
    # The length bound keeps int() away from huge digit strings (and its 4300-digit limit).
    if isinstance(value, str) and 0 < len(value) <= 19 and value.isascii() and value.isdigit():
        number = int(value)
        return number if number < _MAX_ID else None
    return None


def _metadata(d: Mapping[str, Any]) -> dict[str, Any]:
    source = d.get("source")
    timestamp = d.get("timestamp")
    event_id = _event_id(d.get("id"))
    return {
        "id": -1 if event_id is None else event_id,
        "timestamp": timestamp if isinstance(timestamp, str) else None,
        "source": EventSource(source) if isinstance(source, str) and source in _SOURCES else None,
        "cause": _event_id(d.get("cause")),
    }


_SOURCES: Final = frozenset(s.value for s in EventSource)


class _Fields:
    """Typed reads from one object of an OpenHands event; errors name the field."""

    def __init__(self, where: str, owner: Mapping[str, Any], key: str | None) -> None:
        value: Any = owner if key is None else owner.get(key)
        self.where = where if key is None else f"{where}.{key}"
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise ValueError(f"{self.where} must be an object, got {type(value).__name__}")
        self.data: Mapping[str, Any] = value

    def _fail(self, key: str, expected: str) -> ValueError:
        value = self.data.get(key)
        return ValueError(
            f"{self.where}.{key} must be {expected}, got {type(value).__name__} {value!r:.80}"
        )

    def required_str(self, key: str) -> str:
        value = self.data.get(key)
        if not isinstance(value, str):
            raise self._fail(key, "a string")
        return value

    def str_(self, key: str, default: str = "") -> str:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self._fail(key, "a string")
        return value

    def optional_str(self, key: str) -> str | None:
        value = self.data.get(key)
        if value is not None and not isinstance(value, str):
            raise self._fail(key, "a string or null")
        return value

    def bool_(self, key: str, default: bool = False) -> bool:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self._fail(key, "a boolean")
        return value

    def int_(self, key: str, default: int) -> int:
        value = self.optional_int(key)
        return default if value is None else value

    def optional_int(self, key: str) -> int | None:
        value = self.data.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise self._fail(key, "an integer")
        return value

    def int_list(self, key: str) -> list[int] | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or any(
            isinstance(v, bool) or not isinstance(v, int) for v in value
        ):
            raise self._fail(key, "a list of integers")
        return list(value)

    def str_list(self, key: str) -> list[str]:
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._fail(key, "a list of strings")
        return list(value)


def _timeout(d: Mapping[str, Any], where: str) -> float | None:
    value = d.get("timeout")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where}.timeout must be a number of seconds, got {value!r:.80}")
    try:
        return float(value)
    except OverflowError as exc:
        raise ValueError(f"{where}.timeout is out of range: {value!r:.80}") from exc


def _parse(d: dict[str, Any], kind: str, *, is_action: bool) -> Event:
    """The event ``d`` describes, without ``extra``."""
    meta = _metadata(d)
    where = f"OpenHands {kind!r} {'action' if is_action else 'observation'}"
    if is_action:
        args = _Fields(where, d, "args")
        if kind == "run":
            return CmdRunAction(
                command=args.required_str("command"),
                is_input=args.bool_("is_input"),
                blocking=args.bool_("blocking"),
                timeout=_timeout(d, where),
                cwd=args.optional_str("cwd"),
                hidden=args.bool_("hidden"),
                thought=args.str_("thought"),
                **meta,
            )
        if kind == "run_ipython":
            return IPythonRunCellAction(
                code=args.required_str("code"),
                timeout=_timeout(d, where),
                thought=args.str_("thought"),
                **meta,
            )
        if kind == "write":
            return FileWriteAction(
                path=args.required_str("path"),
                content=args.required_str("content"),
                start=args.int_("start", 0),
                end=args.int_("end", -1),
                thought=args.str_("thought"),
                **meta,
            )
        if kind in ("read", "edit"):
            code = args.data.get("translated_ipython_code")
            if code is not None:
                if not isinstance(code, str):
                    raise ValueError(f"{where}: args.translated_ipython_code must be a string")
                call = _parse_editor_call(code, where)
                editor = _Fields(f"{args.where}.translated_ipython_code", call, None)
                path = editor.optional_str("path")
                if path is None:
                    path = args.required_str("path")
                return _editor_action(editor, path, args.str_("thought"), meta)
            if kind == "read" and args.data.get("impl_source") != "oh_aci":
                return FileReadAction(
                    path=args.required_str("path"),
                    start=args.int_("start", 0),
                    end=args.int_("end", -1),
                    view_range=args.int_list("view_range"),
                    thought=args.str_("thought"),
                    **meta,
                )
            if kind == "read":
                editor = _Fields(args.where, {**args.data, "command": "view"}, None)
                return _editor_action(editor, args.required_str("path"), args.str_("thought"), meta)
            if args.data.get("command"):
                return _editor_action(args, args.required_str("path"), args.str_("thought"), meta)
    else:
        extras = _Fields(where, d, "extras")
        content = _Fields(where, d, None).str_("content")
        if kind == "run":
            return _cmd_output(content, extras, meta)
        if kind == "run_ipython":
            return IPythonRunCellObservation(
                content=content,
                code=extras.required_str("code"),
                image_urls=extras.str_list("image_urls"),
                **meta,
            )
        if kind == "read":
            return FileReadObservation(content=content, path=extras.required_str("path"), **meta)
        if kind == "write":
            return FileWriteObservation(path=extras.required_str("path"), content=content, **meta)
        if kind == "edit":
            return FileEditObservation(
                content=content,
                path=extras.str_("path"),
                prev_exist=extras.bool_("prev_exist"),
                old_content=extras.optional_str("old_content"),
                new_content=extras.optional_str("new_content"),
                diff=extras.str_("diff"),
                **meta,
            )
        if kind == "error":
            return ErrorObservation(content=content, error_id=extras.str_("error_id"), **meta)
    return OpenHandsEvent(kind=kind, data=copy.deepcopy(d), is_action=is_action, **meta)


def _editor_action(
    editor: _Fields, path: str, thought: str, meta: dict[str, Any]
) -> FileEditAction:
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


def _cmd_output(content: str, extras: _Fields, meta: dict[str, Any]) -> CmdOutputObservation:
    metadata = _Fields(extras.where, extras.data, "metadata")
    exit_code = metadata.int_("exit_code", -1)
    pid = metadata.int_("pid", -1)
    # Logs written before OpenHands PR 4881 carry these two at the top of extras.
    exit_code = extras.int_("exit_code", exit_code)
    pid = extras.int_("command_id", pid)
    return CmdOutputObservation(
        content=content,
        command=extras.required_str("command"),
        metadata=CmdOutputMetadata(
            exit_code=exit_code,
            pid=pid,
            username=metadata.optional_str("username"),
            hostname=metadata.optional_str("hostname"),
            working_dir=metadata.optional_str("working_dir"),
            py_interpreter_path=metadata.optional_str("py_interpreter_path"),
            prefix=metadata.str_("prefix"),
            suffix=metadata.str_("suffix"),
        ),
        hidden=extras.bool_("hidden"),
        **meta,
    )


def _parse_editor_call(code: str, where: str) -> dict[str, Any]:
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


# --------------------------------------------------------------------------- writing


def _with_extra(event: Event, extra: dict[str, Any] | None) -> Event:
    return msgspec.structs.replace(event, extra=extra)


def _number(value: float) -> int | float:
    # OpenHands' timeouts are ints; write 120, not 120.0.
    if isinstance(value, int):
        return value
    if value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def _top(event: Event, message: str) -> dict[str, Any]:
    return {
        "id": _OMIT if event.id == -1 else event.id,
        "timestamp": _OMIT if event.timestamp is None else event.timestamp,
        "source": _OMIT if event.source is None else EventSource(event.source).value,
        "message": message,
        "cause": _OMIT if event.cause is None else event.cause,
    }


def _opt(value: Any) -> Any:
    return _OMIT if value is None else value


def _aci_code(event: FileEditAction) -> str:
    kwargs: dict[str, Any] = {"command": event.command, "path": event.path}
    for name in _EDITOR_OPTIONAL:
        value = getattr(event, name)
        if value is not None:
            kwargs[name] = value
    return f"{_ACI_PREFIX}{kwargs!r}))"


def _render_edit_action(event: FileEditAction, top: dict[str, Any]) -> dict[str, Any]:
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
            **{name: _opt(getattr(event, name)) for name in _EDITOR_OPTIONAL[:-1]},
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
            "view_range": _opt(event.view_range),
        }
    return {**top, "action": "read" if is_view else "edit", "args": args}


def _render(event: Event) -> dict[str, Any]:
    """Our rendering of ``event``, before ``extra`` is applied; may hold ``_OMIT`` values."""
    if isinstance(event, CmdRunAction):
        return {
            **_top(event, f"Running command: {event.command}"),
            "action": "run",
            "args": {
                "command": event.command,
                "is_input": event.is_input,
                "thought": event.thought,
                "blocking": event.blocking,
                "cwd": _opt(event.cwd),
                "hidden": event.hidden,
            },
            "timeout": _OMIT if event.timeout is None else _number(event.timeout),
        }
    if isinstance(event, IPythonRunCellAction):
        return {
            **_top(event, f"Running Python code interactively: {event.code}"),
            "action": "run_ipython",
            "args": {"code": event.code, "thought": event.thought},
            "timeout": _OMIT if event.timeout is None else _number(event.timeout),
        }
    if isinstance(event, FileReadAction):
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
    if isinstance(event, FileWriteAction):
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
    if isinstance(event, FileEditAction):
        return _render_edit_action(event, _top(event, ""))
    if isinstance(event, CmdOutputObservation):
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
    if isinstance(event, IPythonRunCellObservation):
        return {
            **_top(event, "Code executed in IPython cell."),
            "observation": "run_ipython",
            "content": event.content,
            "extras": {"code": event.code, "image_urls": list(event.image_urls) or None},
            "success": True,
        }
    if isinstance(event, FileReadObservation):
        return {
            **_top(event, f"I read the file {event.path}."),
            "observation": "read",
            "content": event.content,
            "extras": {"path": event.path},
        }
    if isinstance(event, FileWriteObservation):
        return {
            **_top(event, f"I wrote to the file {event.path}."),
            "observation": "write",
            "content": event.content,
            "extras": {"path": event.path},
        }
    if isinstance(event, FileEditObservation):
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
                "diff": event.diff or _OMIT,
            },
        }
    if isinstance(event, ErrorObservation):
        return {
            **_top(event, event.content),
            "observation": "error",
            "content": event.content,
            "extras": {"error_id": event.error_id},
        }
    raise ValueError(f"{type(event).__name__} has no OpenHands form")


def _render_foreign(event: OpenHandsEvent) -> dict[str, Any]:
    data = event.data
    if not isinstance(data, Mapping) or ("action" in data) == ("observation" in data):
        raise ValueError("OpenHandsEvent.data must be an OpenHands event dict")
    out = copy.deepcopy(dict(data))
    recorded = _metadata(data)
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


# --------------------------------------------------------------------------- notes


def _fingerprint(value: Any) -> str:
    if value is _OMIT:
        return ""
    blob = json.dumps(_strip(value), sort_keys=True, separators=(",", ":"))
    # json.dumps escapes every non-ASCII character (lone surrogates too): plain ASCII bytes.
    return hashlib.sha256(blob.encode("ascii")).hexdigest()[:16]


def _same(a: Any, b: Any) -> bool:
    """JSON equality that tells ``1`` from ``1.0`` and ``True`` from ``1``."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    result: bool = a == b
    return result


def _diff(
    original: dict[str, Any],
    canonical: dict[str, Any],
    path: list[str],
    patch: dict[str, Any],
    changed: list[Any],
    absent: list[Any],
) -> None:
    for key, value in original.items():
        if key not in canonical:
            patch[key] = copy.deepcopy(value)
            continue
        ours = canonical[key]
        if isinstance(value, dict) and isinstance(ours, dict):
            sub: dict[str, Any] = {}
            _diff(value, ours, [*path, key], sub, changed, absent)
            if sub:
                patch[key] = sub
        elif ours is _OMIT or not _same(value, ours):
            changed.append([[*path, key], _fingerprint(ours), copy.deepcopy(value)])
    for key, ours in canonical.items():
        if key not in original and ours is not _OMIT:
            absent.append([[*path, key], _fingerprint(ours)])


def _diff_order(original: Any, ours: Any, path: list[str], order: list[Any]) -> None:
    if not (isinstance(original, dict) and isinstance(ours, dict)):
        return
    if original.keys() != ours.keys():
        return
    if list(original) != list(ours):
        order.append([path, list(original)])
    for key, value in original.items():
        _diff_order(value, ours[key], [*path, key], order)


def _entries(notes: Mapping[str, Any], name: str, width: int) -> list[list[Any]]:
    entries = notes.get(name, [])
    if not isinstance(entries, list) or not all(
        isinstance(e, list)
        and len(e) == width
        and isinstance(e[0], list)
        and all(isinstance(k, str) for k in e[0])
        and (name == "order" or isinstance(e[1], str))
        for e in entries
    ):
        raise ValueError(f"extra[{FORMAT_KEY!r}][{name!r}] is malformed")
    return entries


def _parent(root: dict[str, Any], path: list[str]) -> dict[str, Any] | None:
    node: Any = root
    for key in path[:-1]:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) and path else None


def _apply_notes(canonical: dict[str, Any], notes: Mapping[str, Any]) -> None:
    # Decide every note against the untouched rendering, then apply: a note whose
    # fingerprint no longer matches describes a value that has since changed.
    updates: list[tuple[dict[str, Any], str, Any]] = []
    for path, fingerprint, value in _entries(notes, "changed", 3):
        parent = _parent(canonical, path)
        if parent is not None and _fingerprint(parent.get(path[-1], _OMIT)) == fingerprint:
            updates.append((parent, path[-1], copy.deepcopy(value)))
    for path, fingerprint in _entries(notes, "absent", 2):
        parent = _parent(canonical, path)
        if parent is None or path[-1] not in parent:
            continue
        if _fingerprint(parent[path[-1]]) == fingerprint:
            updates.append((parent, path[-1], _OMIT))
    for parent, key, value in updates:
        parent[key] = value


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if v is not _OMIT}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _reorder(node: Any, path: list[str], keys: list[str]) -> Any:
    if not isinstance(node, dict):
        return node
    if path:
        head, rest = path[0], path[1:]
        if head in node:
            node[head] = _reorder(node[head], rest, keys)
        return node
    if set(node) != set(keys) or len(keys) != len(node):
        return node
    return {k: node[k] for k in keys}
