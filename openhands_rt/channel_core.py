"""The action channel's protocol, without I/O: which ids are in flight and what to do next.

A pure state machine in the style of websockets' ``protocol.py``: the adapter
(:class:`openhands_rt.channel.ChannelClient`) feeds it what happened — the
connection opened (:meth:`ChannelProtocol.connected`) or dropped
(:meth:`~ChannelProtocol.disconnected`), a connection attempt failed
(:meth:`~ChannelProtocol.connect_failed`), a frame arrived
(:meth:`~ChannelProtocol.frame`), the owner sends an action or asks for an
interrupt, the clock moved (:meth:`~ChannelProtocol.tick`) — with clock
readings as arguments, and reads back the decisions:

- :meth:`~ChannelProtocol.data_to_send`: frames to write on the current connection;
- :meth:`~ChannelProtocol.events_received`: events to deliver to the owner;
- :meth:`~ChannelProtocol.shell_states_received`: answers to requests for the
  shell's state (:meth:`~ChannelProtocol.request_shell_state`);
- :attr:`~ChannelProtocol.next_attempt`: when to try to reconnect (clock time);
  ``None`` while connected, after giving up, or once closed.

It never awaits, never reads a clock, never touches a socket, so every case is
tested synchronously (``tests/openhands_rt/test_channel_core.py``).

The rules it keeps:

- An action sent is *pending* until its observation arrives; every pending
  action gets exactly one answer: its observation, or an
  :class:`~events.ErrorObservation` (``ErrorId.CONNECTION_LOST``) when the
  channel gives up or is failed. A second observation for the same id (the
  server answers a resent id from its cache) is dropped; so are chunks of
  actions that are not pending.
- When a connection opens, every pending action is (re)sent, in id order.
- A request for the shell's state is sent only on an open connection and is
  answered once: by the server's :class:`~events.control.ShellState` or
  :class:`~events.control.ShellStateError`, or with a reason when the
  connection drops before (it is not resent: the state it would read is no
  longer the one asked for), when the channel fails or closes, or at once
  when no connection is open.
- After a drop, the first attempt is immediate; after each failed attempt the
  next waits ``backoff`` seconds (doubling from ``backoff_start`` up to
  ``backoff_max``); once the next attempt would start past
  ``reconnect_deadline`` seconds after the drop, the channel gives up: every
  pending action is answered with an error, a
  :class:`~events.RuntimeStatusObservation` (``error``) follows, and later
  actions are answered with the same error at once.
"""

from __future__ import annotations

import enum
import logging
from typing import Final, assert_never

import msgspec

from events import (
    Action,
    CmdOutputChunk,
    ErrorObservation,
    Event,
    EventDecodeError,
    Observation,
    OpenHandsEvent,
    RuntimeStatus,
    RuntimeStatusObservation,
    decode_event,
    encode_event,
)
from events.codec import AnyEvent
from events.control import (
    ControlDecodeError,
    InterruptRequest,
    ShellState,
    ShellStateError,
    ShellStateRequest,
    decode_reply,
    encode_control,
)
from events.wire import ErrorId
from openhands_rt.errors import SandboxClosedError

__all__ = ["BACKOFF_MAX", "BACKOFF_START", "ChannelProtocol", "ChannelState", "ShellStateAnswer"]

logger = logging.getLogger(__name__)

#: The first pause between two failed connection attempts, seconds.
BACKOFF_START = 0.02
#: The longest pause between two failed connection attempts, seconds.
BACKOFF_MAX = 1.0


class ChannelState(enum.Enum):
    IDLE = "idle"  # never connected yet
    OPEN = "open"
    RECONNECTING = "reconnecting"
    GAVE_UP = "gave_up"  # could not reconnect within the deadline
    CLOSED = "closed"


# Module constants: an enum member looked up on its class is slow on Python 3.11 (frame() is hot).
_IDLE: Final = ChannelState.IDLE
_OPEN: Final = ChannelState.OPEN
_RECONNECTING: Final = ChannelState.RECONNECTING
_GAVE_UP: Final = ChannelState.GAVE_UP
_CLOSED: Final = ChannelState.CLOSED


#: A request's answer: the state, the server's reason why there is none, or the channel's
#: (a lost connection, a failed or closed channel).
ShellStateAnswer = tuple[int, ShellState | ShellStateError | str]


class ChannelProtocol:
    """The sans-I/O core of one action channel (see the module docstring).

    ``failed`` is set once the channel answers every action with an error
    (it gave up reconnecting, or :meth:`fail` was told so by its owner).
    """

    def __init__(
        self,
        *,
        reconnect_deadline: float = 30.0,
        backoff_start: float = BACKOFF_START,
        backoff_max: float = BACKOFF_MAX,
    ) -> None:
        self.reconnect_deadline = reconnect_deadline
        self._backoff_start = backoff_start
        self._backoff_max = backoff_max
        self.state = _IDLE
        #: Encoded actions not answered yet, by id.
        self.pending: dict[int, bytes] = {}
        self.failed: str | None = None
        self.next_attempt: float | None = None
        self._deadline = 0.0
        self._backoff = backoff_start
        self._last_error = "connection closed"
        self._outgoing: list[bytes] = []
        self._incoming: list[Event] = []
        #: Requests for the shell's state sent and not answered yet.
        self.state_requests: set[int] = set()
        self._next_request_id = 0
        self._state_answers: list[ShellStateAnswer] = []

    def is_open(self) -> bool:
        """Whether a connection is open (frames go out now)."""
        return self.state is _OPEN

    # ------------------------------------------------------------------ decisions

    def data_to_send(self) -> list[bytes]:
        """Frames to write on the current connection, in order (and forget them)."""
        frames, self._outgoing = self._outgoing, []
        return frames

    def events_received(self) -> list[Event]:
        """Events to deliver to the owner, in order (and forget them)."""
        events, self._incoming = self._incoming, []
        return events

    @property
    def has_shell_states(self) -> bool:
        return bool(self._state_answers)

    def shell_states_received(self) -> list[ShellStateAnswer]:
        """Answers to requests for the shell's state, in order (and forget them)."""
        answers, self._state_answers = self._state_answers, []
        return answers

    # ------------------------------------------------------------------ the owner

    def send(self, action: Action) -> None:
        """``action`` (it must have an id) is pending until answered."""
        if self.state is _CLOSED:
            raise SandboxClosedError("the action channel is closed")
        if action.id < 0:
            raise ValueError("an action needs its stream id before it is sent")
        frame = encode_event(action)
        self.pending[action.id] = frame
        if self.failed is not None:
            self._answer_error(action.id, self.failed)
        elif self.state is _OPEN:
            self._outgoing.append(frame)
        # Otherwise the next connection sends it (connected()).

    def interrupt(self, action_id: int) -> None:
        """Ask the server to interrupt pending ``action_id``.

        Best effort: without a connection the request is dropped (a reconnect
        resends actions, not interrupts); the action is still answered by its
        own observation.
        """
        if action_id in self.pending and self.state is _OPEN:
            self._outgoing.append(encode_control(InterruptRequest(action_id)))

    def request_shell_state(self) -> int:
        """Ask for the shell's state; returns the request's id, which its answer carries."""
        if self.state is _CLOSED:
            raise SandboxClosedError("the action channel is closed")
        self._next_request_id += 1
        request_id = self._next_request_id
        if self.failed is not None:
            self._state_answers.append((request_id, self.failed))
        elif self.state is not _OPEN:
            self._state_answers.append(
                (request_id, f"the action channel is not connected ({self.state.value})")
            )
        else:
            self.state_requests.add(request_id)
            self._outgoing.append(encode_control(ShellStateRequest(request_id)))
        return request_id

    def fail(self, reason: str, *, permanently: bool = True) -> None:
        """Answer every pending action with an error (e.g. the sandbox died).

        ``permanently``: later actions are answered with the same error at once.
        """
        if permanently:
            self.failed = reason
        for action_id in sorted(self.pending):
            self._answer_error(action_id, reason)
        self._fail_state_requests(reason)

    def died(self, reason: str) -> None:
        """The reader ended by an error: fail for good, and say so after the answers."""
        self.fail(reason)
        self._incoming.append(RuntimeStatusObservation(RuntimeStatus.ERROR, reason))

    def close(self) -> None:
        """No more frames either way; what is pending stays unanswered (fail() first)."""
        self.state = _CLOSED
        self.next_attempt = None
        self._outgoing.clear()
        self._fail_state_requests("the action channel was closed")

    # ------------------------------------------------------------------ the connection

    def connected(self) -> None:
        """A connection opened: every pending action is sent on it, in id order."""
        if self.state is _CLOSED:
            return
        self.state = _OPEN
        self.next_attempt = None
        self._outgoing = [self.pending[action_id] for action_id in sorted(self.pending)]

    def disconnected(self, now: float) -> None:
        """The connection dropped at clock time ``now``: try again at once."""
        if self.state is not _OPEN:
            return
        self.state = _RECONNECTING
        self._outgoing.clear()  # they were for the lost connection; pending ones are resent
        self._fail_state_requests("the connection to the sandbox was lost")
        self._deadline = now + self.reconnect_deadline
        self._backoff = self._backoff_start
        self._last_error = "connection closed"
        self.next_attempt = now

    def connect_failed(self, now: float, error: str) -> None:
        """A reconnection attempt failed at ``now``: back off, or give up past the deadline."""
        if self.state is not _RECONNECTING:
            return
        self._last_error = error
        if now + self._backoff > self._deadline:
            self._give_up()
            return
        self.next_attempt = now + self._backoff
        self._backoff = min(self._backoff * 2, self._backoff_max)

    def tick(self, now: float) -> None:
        """The clock reads ``now``: give up if the reconnect deadline has passed."""
        if self.state is _RECONNECTING and now > self._deadline:
            self._give_up()

    def frame(self, data: bytes | str) -> None:
        """A frame arrived: route it to the owner, or drop it."""
        if self.state is _CLOSED:
            return
        try:
            event = decode_event(data)
        except EventDecodeError as exc:
            self._control_frame(data, exc)
            return
        if event.id >= 0:
            # Ids are the host stream's to give; the server's numbering means nothing here.
            event = msgspec.structs.replace(event, id=-1)
        routed: AnyEvent = event  # type: ignore[assignment]  # the decoder's union, no other
        match routed:
            case CmdOutputChunk():
                if routed.cause not in self.pending:
                    return  # output of an action answered already (or never ours)
            case Observation() | Action() | OpenHandsEvent():
                answers = routed.cause
                if answers is not None and self.pending.pop(answers, None) is None:
                    return  # a duplicate answer after a resend: already delivered
            case _:
                assert_never(routed)
        self._incoming.append(routed)

    # ------------------------------------------------------------------ internals

    def _control_frame(self, data: bytes | str, error: EventDecodeError) -> None:
        try:
            reply = decode_reply(data)
        except ControlDecodeError:
            logger.warning("dropping an undecodable frame from the sandbox: %s", error)
            return
        if reply.request_id not in self.state_requests:
            return  # failed already (the connection dropped meanwhile), or never ours
        self.state_requests.discard(reply.request_id)
        self._state_answers.append((reply.request_id, reply))

    def _fail_state_requests(self, reason: str) -> None:
        for request_id in sorted(self.state_requests):
            self._state_answers.append((request_id, reason))
        self.state_requests.clear()

    def _give_up(self) -> None:
        reason = f"could not reconnect within {self.reconnect_deadline} s ({self._last_error})"
        self.state = _GAVE_UP
        self.next_attempt = None
        self.fail(reason)
        self._incoming.append(
            RuntimeStatusObservation(RuntimeStatus.ERROR, f"action channel: {reason}")
        )

    def _answer_error(self, action_id: int, reason: str) -> None:
        if self.pending.pop(action_id, None) is None:
            return
        self._incoming.append(
            ErrorObservation(
                f"The sandbox connection was lost before this action finished: {reason}",
                error_id=ErrorId.CONNECTION_LOST,
                cause=action_id,
            )
        )
