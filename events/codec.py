"""JSON codec for the event union: one prebuilt encoder, one typed decoder.

Error tree::

    EventsError, ValueError
     └── EventDecodeError      any input decode_event() cannot turn into an Event
"""

from typing import Final

import msgspec

from events.errors import EventsError
from events.models import (
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
    OpenHandsEvent,
    RuntimeStatusObservation,
    SnapshotObservation,
)

__all__ = ["EVENT_TYPES", "AnyEvent", "EventDecodeError", "decode_event", "encode_event"]

AnyEvent = (
    CmdRunAction
    | IPythonRunCellAction
    | FileReadAction
    | FileWriteAction
    | FileEditAction
    | CmdOutputObservation
    | CmdOutputChunk
    | IPythonRunCellObservation
    | FileReadObservation
    | FileWriteObservation
    | FileEditObservation
    | ErrorObservation
    | RuntimeStatusObservation
    | SnapshotObservation
    | OpenHandsEvent
)

EVENT_TYPES: Final[tuple[type[Event], ...]] = (
    CmdRunAction,
    IPythonRunCellAction,
    FileReadAction,
    FileWriteAction,
    FileEditAction,
    CmdOutputObservation,
    CmdOutputChunk,
    IPythonRunCellObservation,
    FileReadObservation,
    FileWriteObservation,
    FileEditObservation,
    ErrorObservation,
    RuntimeStatusObservation,
    SnapshotObservation,
    OpenHandsEvent,
)


class EventDecodeError(EventsError, ValueError):
    """Raised by :func:`decode_event` for any input that is not an encoded event."""


_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder(AnyEvent)
_DECODABLE: Final = (bytes, bytearray, memoryview, str)


def encode_event(event: Event) -> bytes:
    """Encode an event as compact JSON bytes."""
    return _encoder.encode(event)


def decode_event(data: bytes | bytearray | memoryview | str) -> Event:
    """Decode JSON produced by :func:`encode_event`.

    Raises :class:`EventDecodeError` (a ``ValueError``) on anything else:
    empty or truncated input, invalid UTF-8, unknown tags, wrong field types,
    values that fail validation, or an argument that is not bytes/str.
    """
    # A tuple, not `bytes | bytearray | ...`: isinstance() against a union costs as much
    # as decoding a small event (every record of a log being reopened comes through here).
    if not isinstance(data, _DECODABLE):
        raise EventDecodeError(f"expected bytes or str, got {type(data).__name__}")
    try:
        event: Event = _decoder.decode(data)
        return event
    except msgspec.DecodeError as exc:
        raise EventDecodeError(str(exc)) from exc
    except (ValueError, TypeError, UnicodeError, RecursionError) as exc:
        raise EventDecodeError(f"{type(exc).__name__}: {exc}") from exc
