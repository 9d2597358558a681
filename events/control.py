"""Control frames on the action channel: requests about an action, not events.

The channel's frames are events (:mod:`events.codec`), with one exception: a
client may ask the server to interrupt an action of its own that is running.
That request is not part of the session's history (it changes nothing by
itself; the interrupted action's observation records what happened), so it
is not an event either: it mirrors Jupyter's control channel, whose
``interrupt_request`` travels beside the cells, not among them. A command in
the shell is interrupted the shell's own way instead: ``C-c`` typed into it,
an ordinary ``CmdRunAction`` on the stream.

A control frame is a JSON object tagged by ``"control"`` (events are tagged by
``"type"``), so no control frame decodes as an event and no event as a
control frame.
"""

from __future__ import annotations

from typing import Final

import msgspec

from events.errors import EventsError

__all__ = [
    "MAX_CONTROL_FRAME_BYTES",
    "ControlDecodeError",
    "InterruptRequest",
    "decode_control",
    "encode_control",
]


class InterruptRequest(msgspec.Struct, frozen=True, tag="interrupt", tag_field="control"):
    """Interrupt the running action ``action_id`` of the client that sends this."""

    action_id: int


class ControlDecodeError(EventsError, ValueError):
    """The data is not a control frame."""


_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder(InterruptRequest)


def encode_control(request: InterruptRequest) -> bytes:
    return _encoder.encode(request)


#: A control frame is far shorter; anything longer is not parsed a second time.
MAX_CONTROL_FRAME_BYTES: Final = 256


def decode_control(data: bytes | bytearray | memoryview | str) -> InterruptRequest:
    """Decode a control frame; :class:`ControlDecodeError` for anything else, hostile or not."""
    if not isinstance(data, bytes | bytearray | memoryview | str):
        raise ControlDecodeError(f"expected bytes or str, got {type(data).__name__}")
    if len(data) > MAX_CONTROL_FRAME_BYTES:
        raise ControlDecodeError("too long for a control frame")
    try:
        request: InterruptRequest = _decoder.decode(data)
        return request
    except msgspec.DecodeError as exc:
        raise ControlDecodeError(str(exc)) from None
    except (ValueError, TypeError, UnicodeError, RecursionError) as exc:
        raise ControlDecodeError(f"{type(exc).__name__}: {exc}") from None
