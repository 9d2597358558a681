"""The root of every error the ``events`` package raises on purpose.

Tree::

    EventsError
    ├── EventDecodeError        bytes that are not an event (events.codec; also a ValueError)
    ├── ControlDecodeError      bytes that are not a control frame (events.control; ValueError)
    ├── StreamClosedError       append to a closed stream (events.stream; also a RuntimeError)
    │   └── DeliveryError       a delivery task died outside its callback: the stream is down
    └── LogError                the durable log (events.log)
        ├── NotALogError        a file that is not a log of ours (also a ValueError)
        ├── LogLockedError      another process holds the log
        ├── LogClosedError      the log was closed
        └── LogWriteError       a write or fsync failed (disk full, I/O error)

Errors keep the builtin base they had before the root existed, so code that
caught ``ValueError``/``RuntimeError`` still does.
"""

from __future__ import annotations

__all__ = ["EventsError"]


class EventsError(Exception):
    """Something the events package refuses or cannot do."""
