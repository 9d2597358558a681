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

The stream's names (``EventStream``, ``Subscription``) are imported on first use
(PEP 562): the action server needs the models and the codec only, and its idle
memory does not pay for the stream, its log and its delivery.
"""

from typing import TYPE_CHECKING

from events.codec import EventDecodeError, decode_event, encode_event
from events.errors import EventsError
from events.lazy import lazy_exports
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

if TYPE_CHECKING:
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

__getattr__, __dir__ = lazy_exports(
    globals(), {"EventStream": "events.stream", "Subscription": "events.stream"}
)
