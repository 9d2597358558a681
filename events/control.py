"""Control frames on the action channel: requests about the sandbox, not events.

The channel's frames are events (:mod:`events.codec`), with these exceptions,
which are not part of the session's history and so are not events either:

- **interrupt** (client → server): interrupt an action of the client's own
  that is running. It changes nothing by itself (the interrupted action's
  observation records what happened); it mirrors Jupyter's control channel,
  whose ``interrupt_request`` travels beside the cells, not among them. A
  command in the shell is interrupted the shell's own way instead: ``C-c``
  typed into it, an ordinary ``CmdRunAction`` on the stream.
- **shell state** (client → server, :class:`ShellStateRequest`): what the
  shell's working directory and exported environment are, read between
  actions (after every action the client sent before the request has
  finished). The answer (server → client) is a :class:`ShellState`, or a
  :class:`ShellStateError` saying why it cannot be read (a command is still
  running in the shell). A snapshot records it; a sandbox restored from the
  snapshot starts its shell in that state (the same :class:`ShellState`,
  written to a file the server reads at start: :func:`encode_control` and
  :func:`decode_shell_state`).

A control frame is a JSON object tagged by ``"control"`` (events are tagged by
``"type"``), so no control frame decodes as an event and no event as a
control frame.
"""

from __future__ import annotations

from typing import Final, TypeVar

import msgspec

from events.errors import EventsError

__all__ = [
    "MAX_CONTROL_FRAME_BYTES",
    "ControlDecodeError",
    "ControlFrame",
    "ControlReply",
    "ControlRequest",
    "InterruptRequest",
    "ShellState",
    "ShellStateError",
    "ShellStateRequest",
    "decode_control",
    "decode_reply",
    "decode_shell_state",
    "encode_control",
]


class InterruptRequest(msgspec.Struct, frozen=True, tag="interrupt", tag_field="control"):
    """Interrupt the running action ``action_id`` of the client that sends this."""

    action_id: int


class ShellStateRequest(
    msgspec.Struct, frozen=True, tag="shell_state_request", tag_field="control"
):
    """Ask for the shell's state; answered by a :class:`ShellState` or :class:`ShellStateError`
    with the same ``request_id`` (the client's numbering)."""

    request_id: int


class ShellState(msgspec.Struct, frozen=True, kw_only=True, tag="shell_state", tag_field="control"):
    """The shell's working directory and what it exports, between two actions.

    ``env``: every variable the interactive shell exports (what a command it
    starts sees), but the ones the shell or the server sets afresh for each
    shell (``container_server.shell_state.NOT_CAPTURED``: the prompt machinery,
    ``PWD`` — that is ``cwd`` —, ``SHLVL``, ``_``, ``HOSTNAME``). Values are
    text: bytes that are not UTF-8 are replaced (U+FFFD). Exported functions and
    arrays are not included (a command does not see an exported array either).
    ``request_id``: the request this answers (0 in a file).
    """

    request_id: int = 0
    cwd: str
    env: dict[str, str]


class ShellStateError(msgspec.Struct, frozen=True, tag="shell_state_error", tag_field="control"):
    """The shell's state cannot be read now: ``message`` says why."""

    request_id: int
    message: str


ControlRequest = InterruptRequest | ShellStateRequest
ControlReply = ShellState | ShellStateError
ControlFrame = ControlRequest | ControlReply


class ControlDecodeError(EventsError, ValueError):
    """The data is not a control frame."""


_encoder: Final = msgspec.json.Encoder()
_request_decoder: Final[msgspec.json.Decoder[ControlRequest]] = msgspec.json.Decoder(ControlRequest)
_reply_decoder: Final[msgspec.json.Decoder[ControlReply]] = msgspec.json.Decoder(ControlReply)
_state_decoder: Final = msgspec.json.Decoder(ShellState)


def encode_control(frame: ControlFrame) -> bytes:
    return _encoder.encode(frame)


#: A request is far shorter; anything longer is not parsed a second time.
MAX_CONTROL_FRAME_BYTES: Final = 256


def decode_control(data: bytes | bytearray | memoryview | str) -> ControlRequest:
    """Decode a client's control frame; :class:`ControlDecodeError` for anything else,
    hostile or not."""
    if not isinstance(data, bytes | bytearray | memoryview | str):
        raise ControlDecodeError(f"expected bytes or str, got {type(data).__name__}")
    if len(data) > MAX_CONTROL_FRAME_BYTES:
        raise ControlDecodeError("too long for a control frame")
    return _decode(_request_decoder, data)


def decode_reply(data: bytes | bytearray | memoryview | str) -> ControlReply:
    """Decode a server's control frame (its size is bounded by the channel's frame limit)."""
    if not isinstance(data, bytes | bytearray | memoryview | str):
        raise ControlDecodeError(f"expected bytes or str, got {type(data).__name__}")
    return _decode(_reply_decoder, data)


def decode_shell_state(data: bytes | bytearray | memoryview | str) -> ShellState:
    """Decode a :class:`ShellState` (a file the server is started with)."""
    return _decode(_state_decoder, data)


_T = TypeVar("_T")


def _decode(decoder: msgspec.json.Decoder[_T], data: bytes | bytearray | memoryview | str) -> _T:
    try:
        return decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ControlDecodeError(str(exc)) from None
    except (ValueError, TypeError, UnicodeError, RecursionError) as exc:
        raise ControlDecodeError(f"{type(exc).__name__}: {exc}") from None
