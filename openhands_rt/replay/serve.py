"""Serve-recorded: answering an agent's actions from a recording, with no sandbox.

Each action an agent runs is matched against the next recorded runnable action
(:func:`same_action`: type and every field but metadata, ``extra`` and
``thought``) and answered with the recorded chunks and observation.

Two layers, as in a sans-I/O protocol: :class:`RecordingCursor` is the pure
core (an action in, the recorded step or a :class:`ReplayMismatchError` out; no
stream, no I/O), and :class:`RecordedRuntime` the thin adapter that drives it
from an :class:`~events.EventStream` and appends the answers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import msgspec

from events import (
    Action,
    ErrorObservation,
    Event,
    EventSource,
    EventStream,
    Observation,
    RuntimeStatus,
    Subscription,
)
from events.wire import ErrorId, is_runnable
from openhands_rt.errors import SandboxClosedError
from openhands_rt.replay.errors import ReplayMismatchError
from openhands_rt.replay.recording import RecordedStep, Recording, fresh_copy
from openhands_rt.replay.verify import describe_action
from openhands_rt.runtime import EventStreamRuntime

__all__ = [
    "REPLAY_MISMATCH_ERROR_ID",
    "RecordedRuntime",
    "RecordingCursor",
    "action_fields",
    "same_action",
]

REPLAY_MISMATCH_ERROR_ID: Final = ErrorId.REPLAY_MISMATCH
"""``error_id`` of the ErrorObservation a :class:`RecordedRuntime` gives a divergent action."""

# Fields that say who/when, not what: never part of an action's identity.
_ACTION_METADATA: Final = frozenset({"id", "timestamp", "source", "cause", "extra", "thought"})


def action_fields(action: Action) -> dict[str, Any]:
    """What an action asks for: its fields without metadata, ``extra`` and ``thought``."""
    fields = msgspec.structs.asdict(action)
    return {k: v for k, v in fields.items() if k not in _ACTION_METADATA}


def same_action(recorded: Action, action: Action) -> bool:
    """Whether ``action`` asks for what ``recorded`` asked (see :func:`action_fields`)."""
    return type(recorded) is type(action) and action_fields(recorded) == action_fields(action)


class RecordingCursor:
    """Which recorded action comes next: the pure core of serve-recorded.

    :meth:`answer` takes an action and returns the recorded step it matches (and
    moves past it) or the :class:`ReplayMismatchError` that refuses it (and stays
    put, so the right action can still follow). It does no I/O.
    """

    def __init__(self, steps: Sequence[RecordedStep]) -> None:
        self._steps = steps
        self._position = 0

    @property
    def position(self) -> int:
        """How many recorded actions have been served."""
        return self._position

    @property
    def remaining(self) -> int:
        return len(self._steps) - self._position

    @property
    def next_step(self) -> RecordedStep | None:
        """The recorded step the next action must match (``None``: all were served)."""
        return self._steps[self._position] if self._position < len(self._steps) else None

    def answer(self, action: Action) -> RecordedStep | ReplayMismatchError:
        expected = self.next_step
        if expected is None or not same_action(expected.action, action):
            return self._mismatch(expected, action)
        self._position += 1
        return expected

    def _mismatch(self, expected: RecordedStep | None, action: Action) -> ReplayMismatchError:
        if expected is None:
            message = (
                f"action {action.id} ({describe_action(action)}) is not in the recording: "
                f"all {len(self._steps)} recorded actions were served"
            )
            return ReplayMismatchError(message, expected=None, actual=action)
        recorded = expected.action
        message = (
            f"action {action.id} ({describe_action(action)}) does not match recorded event "
            f"{recorded.id} ({describe_action(recorded)})"
        )
        differing = _differing_fields(recorded, action)
        if differing:
            message += f"; differing fields: {', '.join(differing)}"
        return ReplayMismatchError(message, expected=recorded, actual=action)


def _differing_fields(recorded: Action, action: Action) -> list[str]:
    if type(recorded) is not type(action):
        return [f"type ({type(recorded).__name__} recorded, {type(action).__name__} given)"]
    want: Mapping[str, Any] = action_fields(recorded)
    got: Mapping[str, Any] = action_fields(action)
    return [name for name in want if want[name] != got.get(name)]


class RecordedRuntime(EventStreamRuntime):
    """A runtime with no sandbox: answers each action with the recorded observation.

    The actions must come in the recorded order (:class:`RecordingCursor`). A
    match gets the recorded chunks and observation, appended to the stream with
    ``cause`` = the new action's id. A divergent action gets an
    :class:`~events.ErrorObservation` (``error_id``
    :data:`REPLAY_MISMATCH_ERROR_ID`) naming the recorded event, and :meth:`run`
    raises :class:`ReplayMismatchError`; the recording does not advance, so the
    right action can still follow. Like every runtime it also answers actions
    appended to the stream by anyone else (through its subscription, which the
    stream owns and :meth:`aclose` ends; this runtime starts no task).
    """

    def __init__(
        self,
        stream: EventStream,
        recording: Recording,
        *,
        session_id: str | None = None,
    ) -> None:
        super().__init__(stream, None, session_id=session_id)
        self.recording = recording
        self._cursor = RecordingCursor(recording.steps)
        self._answered: set[int] = set()
        self._feed: Subscription | None = None

    @property
    def position(self) -> int:
        """How many recorded actions have been served."""
        return self._cursor.position

    @property
    def remaining(self) -> int:
        return self._cursor.remaining

    async def connect(self) -> None:
        if self._closed:
            raise SandboxClosedError("this runtime was closed; make a new one")
        if self._connected:
            return
        self.report_status(RuntimeStatus.STARTING, f"serving recorded session {self.session_id}")
        self._feed = self.stream.subscribe(
            self._on_stream_event, subscriber_id=f"recorded-runtime-{self.client_id}"
        )
        self._connected = True
        self.report_status(
            RuntimeStatus.READY,
            f"recorded session {self.session_id}: {len(self.recording.steps)} actions",
        )

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._feed is not None:
            self._feed.unsubscribe()
            self._feed = None
        self._connected = False
        self.report_status(RuntimeStatus.CLOSED, f"recorded session {self.session_id} closed")

    async def run(self, action: Action) -> Observation:
        """Append ``action``, answer it from the recording, return the stored observation.

        Raises :class:`ReplayMismatchError` when it is not the next recorded action.
        """
        if self._closed or not self._connected:
            raise SandboxClosedError("the runtime is not connected")
        stored = self.stream.append(action, source=EventSource.AGENT)
        assert isinstance(stored, Action)
        self._answered.add(stored.id)
        observation, error = self._answer(stored)
        if error is not None:
            raise error
        return observation

    async def _on_stream_event(self, event: Event) -> None:
        if not is_runnable(event):
            return
        if event.id in self._answered:
            self._answered.discard(event.id)
            return
        self._answer(event)

    def _answer(self, action: Action) -> tuple[Observation, ReplayMismatchError | None]:
        answer = self._cursor.answer(action)
        if isinstance(answer, ReplayMismatchError):
            refusal = ErrorObservation(
                str(answer), error_id=REPLAY_MISMATCH_ERROR_ID, cause=action.id
            )
            return self._append(refusal), answer
        if answer.observation is None:
            missing = ErrorObservation(
                f"recorded event {answer.action.id} has no recorded observation to serve",
                error_id=REPLAY_MISMATCH_ERROR_ID,
                cause=action.id,
            )
            return self._append(missing), None
        for chunk in self.recording.chunks_of(answer.action.id):
            self.stream.append(fresh_copy(chunk, action.id), source=EventSource.ENVIRONMENT)
        return self._append(fresh_copy(answer.observation, action.id)), None

    def _append(self, observation: Event) -> Observation:
        stored = self.stream.append(observation, source=EventSource.ENVIRONMENT)
        assert isinstance(stored, Observation)
        return stored
