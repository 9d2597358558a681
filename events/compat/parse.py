"""OpenHands' event dict -> our event, with the notes that make the round trip lossless.

:func:`from_openhands_dict` reads the dict into the event it describes (see
the package docstring for the mapping), renders that event back and keeps in
``event.extra`` exactly what the rendering misses (:mod:`events.compat.notes`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import msgspec

from events.compat.aci import editor_action, parse_editor_call
from events.compat.fields import Fields, read_metadata, read_timeout
from events.compat.notes import FORMAT_KEY, diff, diff_order
from events.compat.render import render, to_openhands_dict
from events.models import (
    CmdOutputMetadata,
    CmdOutputObservation,
    CmdRunAction,
    ErrorObservation,
    Event,
    FileEditAction,
    FileEditObservation,
    FileReadAction,
    FileReadObservation,
    FileWriteAction,
    FileWriteObservation,
    IPythonRunCellAction,
    IPythonRunCellObservation,
    OpenHandsEvent,
)

__all__ = ["from_openhands_dict"]


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
    canonical = render(bare)
    patch: dict[str, Any] = {}
    changed: list[Any] = []
    absent: list[Any] = []
    diff(original, canonical, [], patch, changed, absent)
    if changed:
        format_notes["changed"] = changed
    if absent:
        format_notes["absent"] = absent
    if format_notes:
        patch[FORMAT_KEY] = format_notes
    event = _with_extra(event, patch or None)
    order: list[Any] = []
    diff_order(original, to_openhands_dict(event), [], order)
    if order:
        format_notes["order"] = order
        patch[FORMAT_KEY] = format_notes
        event = _with_extra(event, patch)
    return event


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


def _parse(d: dict[str, Any], kind: str, *, is_action: bool) -> Event:
    """The event ``d`` describes, without ``extra``."""
    meta = read_metadata(d)
    where = f"OpenHands {kind!r} {'action' if is_action else 'observation'}"
    if is_action:
        args = Fields(where, d, "args")
        if kind == "run":
            return CmdRunAction(
                command=args.required_str("command"),
                is_input=args.bool_("is_input"),
                blocking=args.bool_("blocking"),
                timeout=read_timeout(d, where),
                cwd=args.optional_str("cwd"),
                hidden=args.bool_("hidden"),
                thought=args.str_("thought"),
                **meta,
            )
        if kind == "run_ipython":
            return IPythonRunCellAction(
                code=args.required_str("code"),
                timeout=read_timeout(d, where),
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
                call = parse_editor_call(code, where)
                editor = Fields(f"{args.where}.translated_ipython_code", call, None)
                path = editor.optional_str("path")
                if path is None:
                    path = args.required_str("path")
                return editor_action(editor, path, args.str_("thought"), meta)
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
                editor = Fields(args.where, {**args.data, "command": "view"}, None)
                return editor_action(editor, args.required_str("path"), args.str_("thought"), meta)
            if args.data.get("command"):
                return editor_action(args, args.required_str("path"), args.str_("thought"), meta)
    else:
        extras = Fields(where, d, "extras")
        content = Fields(where, d, None).str_("content")
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


def _cmd_output(content: str, extras: Fields, meta: dict[str, Any]) -> CmdOutputObservation:
    metadata = Fields(extras.where, extras.data, "metadata")
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


def _with_extra(event: Event, extra: dict[str, Any] | None) -> Event:
    return msgspec.structs.replace(event, extra=extra)
