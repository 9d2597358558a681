"""Fast ISO-8601 UTC timestamps for appended events."""

from __future__ import annotations

import time
from typing import Final

__all__ = ["UtcClock"]

_MICROS_AND_ZONE: Final = tuple(f"{i:03d}+00:00" for i in range(1000))


class UtcClock:
    """ISO-8601 UTC timestamps with microseconds, formatting the rest once a millisecond.

    ``datetime.now(timezone.utc).isoformat()`` costs ~0.9 µs, a large share
    of an append; this costs ~0.15 µs. Not thread-safe: each stream owns one
    and uses it under its lock.
    """

    __slots__ = ("_next", "_prefix", "_start")

    def __init__(self) -> None:
        self._start = 0  # the current millisecond, in µs since the epoch
        self._next = 0
        self._prefix = ""  # "YYYY-MM-DDTHH:MM:SS.mmm" of that millisecond

    def now(self) -> str:
        return self.at(int(time.time() * 1e6))

    def at(self, micros: int) -> str:
        """The timestamp of ``micros`` microseconds since the epoch."""
        if micros >= self._next or micros < self._start:
            self._roll(micros)
        return self._prefix + _MICROS_AND_ZONE[micros - self._start]

    def _roll(self, micros: int) -> None:
        start = micros - micros % 1000
        second, milli = divmod(start // 1000, 1000)
        self._prefix = f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(second))}.{milli:03d}"
        self._start = start
        self._next = start + 1000
