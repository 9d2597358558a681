"""A recording: detecting and loading one, and pairing its actions with their observations.

Inputs (:func:`load_recording` tells them apart by their first bytes,
:func:`detect_format`):

- our durable event log (:mod:`events.log`; it starts with the log magic), read
  with :func:`events.log.read_log`, which never changes the file (a torn tail is
  skipped with a warning);
- an OpenHands trajectory: a JSON list of OpenHands event dicts, loaded with
  :func:`events.compat.load_openhands_trajectory` (string ids, legacy editor
  encodings, extra fields and event types we do not run are all accepted).

Anything else raises :class:`~openhands_rt.replay.ReplayInputError`.

Pairing: a *runnable* action (:func:`events.wire.is_runnable`: a shell, IPython,
read, write or editor action whose source is the agent or the user, or
unknown) is a :class:`RecordedStep` with its recorded observation, the first
:class:`~events.Observation` whose ``cause`` is the action's id. Recorded
:class:`~events.CmdOutputChunk`\\ s of runnable actions and
:class:`~events.RuntimeStatusObservation`\\ s are *replaced*: a replay makes
its own. :class:`~events.SnapshotObservation`\\ s are dropped the same way (they
name snapshots of the recorded sandbox, not of the replay's). Every other event
(OpenHands messages, finish, agent-state changes, ``null`` observations,
actions of the environment, ...) is *carried*: a replay appends it as it was,
never executes it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Final, Literal, TypeGuard, assert_never, get_args

import msgspec

from events import (
    Action,
    CmdOutputChunk,
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
    Observation,
    OpenHandsEvent,
    RuntimeStatusObservation,
    SnapshotObservation,
)
from events.codec import AnyEvent
from events.compat import load_openhands_trajectory
from events.log import MAGIC, NotALogError, read_log
from events.wire import is_runnable
from openhands_rt.replay.errors import ReplayInputError

__all__ = [
    "RecordedStep",
    "Recording",
    "RecordingFormat",
    "detect_format",
    "fresh_copy",
    "load_recording",
]

RecordingFormat = Literal["event_log", "openhands"]

_replace: Final = msgspec.structs.replace
_UNION_TYPES: Final = frozenset(get_args(AnyEvent))


def _in_union(event: Event) -> TypeGuard[AnyEvent]:
    """Whether ``event`` is of the codec's closed union (its exact type first: that is cheap)."""
    return type(event) in _UNION_TYPES or isinstance(event, AnyEvent)


@dataclass(frozen=True)
class RecordedStep:
    """A runnable recorded action and its recorded observation (``None``: none was recorded)."""

    action: Action
    observation: Observation | None


@dataclass
class _Pairing:
    """What :class:`Recording` learns in one pass over its events."""

    actions: list[Action] = field(default_factory=list)
    runnable: set[int] = field(default_factory=set)
    observations: dict[int, Observation] = field(default_factory=dict)
    chunks: dict[int, list[CmdOutputChunk]] = field(default_factory=dict)
    replaced: set[int] = field(default_factory=set)

    def add(self, event: Event) -> None:
        if is_runnable(event):
            self.actions.append(event)
            self.runnable.add(event.id)
            return
        if not _in_union(event):
            # Event is an open base class: a type outside the codec's union (a test's,
            # a future one's) is paired by its base class alone.
            if isinstance(event, Observation):
                self._observation(event)
            return
        match event:
            case (
                CmdOutputObservation()
                | IPythonRunCellObservation()
                | FileReadObservation()
                | FileWriteObservation()
                | FileEditObservation()
                | ErrorObservation()
            ):
                self._observation(event)
            case CmdOutputChunk():
                if event.cause in self.runnable:
                    self.replaced.add(event.id)
                    self.chunks.setdefault(event.cause, []).append(event)
            case RuntimeStatusObservation() | SnapshotObservation():
                # Facts about the recording's sandbox, not the replay's (whose own
                # snapshots, if any, it records itself).
                self.replaced.add(event.id)
            case (
                CmdRunAction()
                | IPythonRunCellAction()
                | FileReadAction()
                | FileWriteAction()
                | FileEditAction()
                | OpenHandsEvent()
            ):
                pass  # not runnable (the environment's action, a message, ...): carried
            case _:
                assert_never(event)

    def _observation(self, observation: Observation) -> None:
        if observation.cause is None or observation.cause not in self.runnable:
            return
        self.replaced.add(observation.id)
        self.observations.setdefault(observation.cause, observation)


@dataclass(frozen=True)
class Recording:
    """A loaded recording: every event in order, and the runnable steps among them."""

    events: list[Event]
    format: RecordingFormat
    steps: list[RecordedStep] = field(init=False)
    replaced: frozenset[int] = field(init=False)
    """Ids of recorded events a replay makes anew (observations, chunks, runtime status)."""
    _chunks: dict[int, list[CmdOutputChunk]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        pairing = _Pairing()
        for event in self.events:
            pairing.add(event)
        steps = [
            RecordedStep(action, pairing.observations.get(action.id)) for action in pairing.actions
        ]
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "replaced", frozenset(pairing.replaced))
        object.__setattr__(self, "_chunks", pairing.chunks)

    def chunks_of(self, action_id: int) -> list[CmdOutputChunk]:
        """The recorded output chunks of the action ``action_id``, in order."""
        return list(self._chunks.get(action_id, ()))

    def steps_until(self, until: int | None) -> list[RecordedStep]:
        """The steps whose recorded action id is at most ``until`` (all with ``None``)."""
        return [s for s in self.steps if until is None or s.action.id <= until]


def fresh_copy(event: Event, cause: int | None) -> Event:
    """``event`` as a new event to append: no id, timestamp or source, this ``cause``."""
    return _replace(event, id=-1, timestamp=None, source=None, cause=cause)


def detect_format(head: bytes) -> RecordingFormat:
    """Which kind of recording starts with ``head`` (a few hundred bytes suffice).

    Raises :class:`~openhands_rt.replay.ReplayInputError` when it is neither.
    """
    if head.startswith(MAGIC):
        return "event_log"
    text = head.lstrip(b"\xef\xbb\xbf").lstrip()
    if text.startswith(b"["):
        return "openhands"
    what = "an empty file, " if not head else ""
    raise ReplayInputError(
        f"{what}neither an openhands-rt event log (no log header) "
        "nor an OpenHands trajectory (a JSON list of events)"
    )


def load_recording(path: str | os.PathLike[str]) -> Recording:
    """Load an event log or an OpenHands trajectory (blocking file I/O: use a thread)."""
    try:
        with open(path, "rb") as file:
            head = file.read(4096)
    except OSError as exc:
        raise ReplayInputError(f"cannot read {os.fspath(path)}: {exc.strerror or exc}") from exc
    try:
        kind = detect_format(head)
    except ReplayInputError as exc:
        raise ReplayInputError(f"{os.fspath(path)}: {exc}") from None
    try:
        events = read_log(path) if kind == "event_log" else load_openhands_trajectory(path)
    except NotALogError as exc:
        raise ReplayInputError(f"{os.fspath(path)}: {exc}") from exc
    except ValueError as exc:
        raise ReplayInputError(
            f"{os.fspath(path)}: not a valid OpenHands trajectory: {exc}"
        ) from exc
    except OSError as exc:
        raise ReplayInputError(f"cannot read {os.fspath(path)}: {exc.strerror or exc}") from exc
    return Recording(events, kind)
