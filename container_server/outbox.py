"""Outbox: one channel connection's outgoing frames, in order, bounded.

One outbox per connection, drained by that connection's one writer, so the
chunks of an action always precede its observation on the wire.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from events import Event

__all__ = ["Outbox"]


class Outbox:
    """One connection's outgoing frames, in order.

    Bounded: a peer that stops reading makes its frames pile up here once the
    socket buffers are full. Past ``max_frames`` the outbox closes and calls
    ``on_overflow`` (which drops the connection); results stay cached, so a
    client that reconnects and resends its ids loses nothing but chunks.
    """

    __slots__ = ("_max_frames", "_on_overflow", "_queue", "closed", "overflowed")

    def __init__(
        self, *, max_frames: int = 10_000, on_overflow: Callable[[], None] | None = None
    ) -> None:
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._max_frames = max_frames
        self._on_overflow = on_overflow
        self.closed = False
        self.overflowed = False

    def put(self, event: Event) -> None:
        if self.closed:
            return
        if self._queue.qsize() >= self._max_frames:
            self.overflowed = True
            self.close()
            if self._on_overflow is not None:
                self._on_overflow()
            return
        self._queue.put_nowait(event)

    def close(self) -> None:
        """Nothing more goes in; the writer sends what is queued, then stops."""
        if not self.closed:
            self.closed = True
            self._queue.put_nowait(None)

    async def get(self) -> Event | None:
        """The next frame, waiting for one; None once the outbox is closed and drained."""
        return await self._queue.get()

    def get_nowait(self) -> Event | None:
        """The next frame if one is queued (raises asyncio.QueueEmpty otherwise)."""
        return self._queue.get_nowait()
