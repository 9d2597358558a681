"""Whole OpenHands trajectories: a JSON list of event dicts, read and written."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from events.compat.parse import from_openhands_dict
from events.compat.render import to_openhands_dict
from events.models import CmdOutputChunk, Event, RuntimeStatusObservation, SnapshotObservation

__all__ = ["dump_openhands_trajectory", "load_openhands_trajectory"]


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

    :class:`CmdOutputChunk`, :class:`RuntimeStatusObservation` and
    :class:`SnapshotObservation` are left out: OpenHands has no such events (a command's
    whole output is in its observation; the runtime's facts are ours).
    """
    dicts = [
        to_openhands_dict(event)
        for event in events
        if not isinstance(event, CmdOutputChunk | RuntimeStatusObservation | SnapshotObservation)
    ]
    return (json.dumps(dicts, indent=2) + "\n").encode("utf-8")
