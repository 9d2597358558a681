"""The shared event vocabulary: models, codec, OpenHands compatibility, stream, log.

Error tree (every error this package raises on purpose; each keeps the builtin
base it had before the root existed)::

    EventsError                     events.errors
    ├── EventDecodeError            bytes that are not an event (events.codec; also ValueError)
    ├── ControlDecodeError          bytes that are not a control frame (events.control; ValueError)
    ├── StreamClosedError           append/subscribe after close (events.stream; also RuntimeError)
    │   └── DeliveryError           a delivery task died outside its callback: the stream is down
    └── LogError                    the durable log (events.log)
        ├── NotALogError            a file that is not a log of ours (also ValueError)
        ├── LogLockedError          another process holds the log
        ├── LogClosedError          the log was closed
        └── LogWriteError           a write or fsync failed (disk full, I/O error)
"""

from events.codec import EventDecodeError, decode_event, encode_event
from events.errors import EventsError
from events.models import (
    Action,
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
    Observation,
    OpenHandsEvent,
    RuntimeStatus,
    RuntimeStatusObservation,
    SnapshotObservation,
)
from events.stream import EventStream, Subscription

__all__ = [
    "Action",
    "CmdOutputChunk",
    "CmdOutputMetadata",
    "CmdOutputObservation",
    "CmdRunAction",
    "ErrorObservation",
    "Event",
    "EventDecodeError",
    "EventSource",
    "EventStream",
    "EventsError",
    "FileEditAction",
    "FileEditObservation",
    "FileReadAction",
    "FileReadObservation",
    "FileWriteAction",
    "FileWriteObservation",
    "IPythonRunCellAction",
    "IPythonRunCellObservation",
    "Observation",
    "OpenHandsEvent",
    "RuntimeStatus",
    "RuntimeStatusObservation",
    "SnapshotObservation",
    "Subscription",
    "decode_event",
    "encode_event",
]
