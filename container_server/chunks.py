"""ChunkCoalescer: streamed output of one action, as rate-limited CmdOutputChunk events.

Every piece of output is fed in as it is read; at most one chunk per
``interval`` seconds goes out (and sooner when ``max_chunk_chars`` pile up, so
no frame comes near the channel's size limit). An action that finishes within
the first interval emits no chunk at all — its observation carries everything;
once a chunk was sent, the chunks of that action together carry all its output.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from events import CmdOutputChunk

__all__ = ["ChunkCoalescer", "ChunkSink"]

ChunkSink = Callable[[CmdOutputChunk], None]


class ChunkCoalescer:
    """Collects output pieces of one action and emits them as chunks, rate-limited."""

    def __init__(
        self,
        cause: int,
        sink: ChunkSink,
        *,
        interval: float = 0.05,
        max_chunk_chars: int = 1 << 20,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._cause = cause
        self._max_chunk_chars = max_chunk_chars
        self._pending_chars = 0
        self._sink = sink
        self._interval = interval
        self._loop = loop or asyncio.get_running_loop()
        self._pending: list[str] = []
        self._timer: asyncio.TimerHandle | None = None
        self._seq = 0

    @property
    def sent_any(self) -> bool:
        return self._seq > 0

    def feed(self, text: str) -> None:
        if not text:
            return
        self._pending.append(text)
        self._pending_chars += len(text)
        if self._pending_chars >= self._max_chunk_chars:
            # Keep every frame far below the channel's frame limit, however fast the output.
            if self._timer is not None:
                self._timer.cancel()
            self._flush()
        elif self._timer is None:
            self._timer = self._loop.call_later(self._interval, self._flush)

    def _flush(self) -> None:
        self._timer = None
        if not self._pending:
            return
        data = "".join(self._pending)
        self._pending.clear()
        self._pending_chars = 0
        self._sink(CmdOutputChunk(self._cause, self._seq, data))
        self._seq += 1

    def close(self) -> None:
        """Stop the timer; send the rest only if the action already streamed."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._seq > 0:
            self._flush()
        self._pending.clear()
