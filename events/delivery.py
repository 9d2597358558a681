"""Delivering a stream's events: subscriptions, followers and the task group they run in.

A subscriber is a cursor into the stream's history (the next id it has to
see) plus a wake-up future it parks on when it has caught up; a follower is
the same cursor driven by ``async for`` instead of a task. There is no
per-subscriber queue, so a slow subscriber costs O(1) memory however far
behind it falls and ``append`` never waits for anyone.

Task ownership: every subscriber's delivery task is a child of one
``asyncio.TaskGroup`` owned by :class:`Deliveries` (one per stream). The group
runs in a host task that the stream's first ``subscribe()`` starts (never a
constructor) and :meth:`Deliveries.aclose` ends: it lets the children finish
what was appended before the close for up to the drain timeout, cancels the
rest, and waits for the host. ``subscribe()`` is synchronous and needs no
``async with`` (docs/api.md), which is why the group needs a task of its own.

Failures, loudest first:

- a callback that raises an ``Exception``: logged with its traceback, delivery
  goes on with the next event (a failing subscriber never breaks the others);
- a callback that raises any other ``BaseException`` (a ``CancelledError`` of
  its own, not a cancellation of the delivery task, included): logged as an
  error, that subscription ends (``active`` becomes false), the others go on;
- ``KeyboardInterrupt``/``SystemExit`` propagate;
- a delivery task that dies outside any callback (a bug): the group cancels
  every delivery, the error is logged at once and handed to the stream, which
  goes down (see :class:`~events.stream.DeliveryError`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

from events.models import Event

if TYPE_CHECKING:
    from events.stream import EventStream

__all__ = ["Deliveries", "EventCallback", "Follower", "Subscription"]

logger = logging.getLogger(__name__)

EventCallback = Callable[[Event], Awaitable[None]]

YIELD_EVERY: Final = 256
"""Deliveries in a row after which a catching-up subscriber yields to the loop.

A callback that never suspends would otherwise run a long backlog in one go
and starve every other task (the appender included).
"""


def wake_all(waiters: list[asyncio.Future[None]]) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)


class Subscription:
    """A callback's place in the stream; made by :meth:`EventStream.subscribe`."""

    __slots__ = ("_active", "_callback", "_next_id", "_stream", "_subscriber_id", "_waiter")

    def __init__(
        self, stream: EventStream, callback: EventCallback, subscriber_id: str, next_id: int
    ) -> None:
        self._stream = stream
        self._callback = callback
        self._subscriber_id = subscriber_id
        self._next_id = next_id
        self._active = True
        self._waiter: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<Subscription {self._subscriber_id!r} next_id={self._next_id}>"

    @property
    def subscriber_id(self) -> str:
        return self._subscriber_id

    @property
    def next_id(self) -> int:
        """The id of the next event this subscriber will be given."""
        return self._next_id

    @property
    def active(self) -> bool:
        """False once unsubscribed or once its delivery task ended."""
        return self._active

    def unsubscribe(self) -> None:
        """Stop delivery: no callback starts after this returns (one already running finishes).

        The subscriber id can be used again right away. Idempotent.
        """
        if not self._active:
            return
        self._active = False
        self._stream._forget(self)
        waiter = self._waiter
        if waiter is not None:
            self._stream._wake_futures([waiter])

    async def run(self) -> None:
        """Deliver until unsubscribed, or until the stream is closed and this one caught up."""
        try:
            await self._deliver()
        finally:
            self._waiter = None
            if self._active:
                self._active = False
                self._stream._forget(self)

    async def _deliver(self) -> None:
        stream = self._stream
        events = stream._events
        callback = self._callback
        loop = asyncio.get_running_loop()
        while self._active:
            position = self._next_id
            end = len(events)
            while position < end and self._active:
                event = events[position]
                position += 1
                self._next_id = position
                try:
                    await callback(event)
                except Exception:
                    logger.exception(
                        "subscriber %r raised on event %d", self._subscriber_id, event.id
                    )
                except BaseException as exc:
                    if not self._died(exc, event):
                        raise
                    return
                if not position % YIELD_EVERY:
                    await asyncio.sleep(0)
            if position < len(events) or not self._active:
                continue
            if stream._closed:
                return
            waiter = self._waiter = loop.create_future()
            stream._waiters.append(waiter)
            # Re-check after registering: an append from another thread may have
            # run between the length check above and the registration.
            if position < len(events) or stream._closed or not self._active:
                continue
            await waiter

    def _died(self, exc: BaseException, event: Event) -> bool:
        """Whether the callback's ``exc`` ends only this subscription (logged); else re-raise."""
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            return False
        if isinstance(exc, asyncio.CancelledError):
            task = asyncio.current_task()
            if task is None or task.cancelling():
                return False  # the delivery task itself is being cancelled (close, group abort)
        logger.error(
            "subscriber %r raised %s on event %d: delivery to it stopped",
            self._subscriber_id,
            type(exc).__name__,
            event.id,
            exc_info=exc,
        )
        return True


class Follower:
    """The async iterator returned by :meth:`EventStream.follow`."""

    __slots__ = ("_budget", "_next_id", "_stream")

    def __init__(self, stream: EventStream, next_id: int) -> None:
        self._stream = stream
        self._next_id = next_id
        self._budget = YIELD_EVERY

    def __aiter__(self) -> Follower:
        return self

    async def __anext__(self) -> Event:
        stream = self._stream
        events = stream._events
        while True:
            position = self._next_id
            if position < len(events):
                self._next_id = position + 1
                self._budget -= 1
                if not self._budget:
                    self._budget = YIELD_EVERY
                    await asyncio.sleep(0)
                return events[position]
            if stream._failed:
                error = stream.write_error
                assert error is not None
                raise error
            if stream._closed:
                raise StopAsyncIteration
            loop = stream._bind_loop()
            waiter: asyncio.Future[None] = loop.create_future()
            stream._waiters.append(waiter)
            if self._next_id < len(events) or stream._closed or stream._failed:
                continue
            await waiter
            self._budget = YIELD_EVERY


class Deliveries:
    """The delivery tasks of one stream: children of a task group run by one host task.

    ``on_failure`` is called (on the loop) with the error of a delivery task
    that died outside its callback, after the group cancelled the others.
    """

    __slots__ = (
        "_group",
        "_host",
        "_loop",
        "_loop_thread",
        "_name",
        "_on_failure",
        "_pending",
        "_stop",
        "_stopping",
        "_tasks",
    )

    def __init__(self, name: str, on_failure: Callable[[BaseException], None]) -> None:
        self._name = name
        self._on_failure = on_failure
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._host: asyncio.Task[None] | None = None
        self._group: asyncio.TaskGroup | None = None
        self._pending: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop: asyncio.Future[None] | None = None
        self._stopping = False

    @property
    def busy(self) -> bool:
        """True while the group runs in a loop that is still open."""
        return (
            self._host is not None
            and not self._host.done()
            and self._loop is not None
            and not self._loop.is_closed()
        )

    def start(self, subscription: Subscription, loop: asyncio.AbstractEventLoop) -> None:
        """Run ``subscription`` in the group; the first call starts the host task."""
        if loop is not self._loop:
            # A new loop (the old one closed, or none yet): nothing of the old one runs.
            self._loop, self._loop_thread = loop, threading.get_ident()
            self._host, self._group, self._stop = None, None, None
            self._pending, self._tasks = [], set()
        if self._group is not None:
            self._spawn(self._group, subscription)
            return
        self._pending.append(subscription)
        if self._host is None or self._host.done():
            # The one task not started from a task group: the group's own host. It
            # cannot be entered in subscribe()'s caller (a synchronous call that needs
            # no `async with`); aclose() awaits it and reports its failure.
            self._host = loop.create_task(self._serve(), name=f"event-deliveries:{self._name}")

    def stop(self) -> None:
        """Let the host end once its children have; callable from any thread."""
        self._stopping = True
        stop, loop = self._stop, self._loop
        if stop is None or loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            wake_all([stop])
        else:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(wake_all, [stop])

    async def aclose(self, drain_timeout: float) -> None:
        """Stop, let the children finish for up to ``drain_timeout`` seconds, cancel the rest.

        Called from a delivery task (a subscriber closing its own stream), it
        waits for the other children only: the group waits for the caller.
        """
        self.stop()
        host = self._host
        if host is None or asyncio.get_running_loop() is not self._loop:
            return
        current = asyncio.current_task()
        inside = current in self._tasks
        waited = {t for t in self._tasks if t is not current} if inside else {host}
        waited = {t for t in waited if not t.done()}
        try:
            if waited:
                _, pending = await asyncio.wait(waited, timeout=drain_timeout)
                if pending:
                    busy = [t for t in self._tasks if t is not current and not t.done()]
                    logger.warning(
                        "cancelling %d event subscribers still busy %.1f s after close",
                        len(busy),
                        drain_timeout,
                    )
                    for task in busy:
                        task.cancel()
                    await asyncio.wait(pending)
        finally:
            # Only matters if we were cancelled ourselves: nothing outlives the close.
            for task in self._tasks:
                if task is not current:
                    task.cancel()

    def _spawn(self, group: asyncio.TaskGroup, subscription: Subscription) -> None:
        task = group.create_task(
            subscription.run(), name=f"event-subscriber:{subscription.subscriber_id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                pending, self._pending = self._pending, []
                for subscription in pending:
                    if subscription.active:
                        self._spawn(group, subscription)
                stop = self._stop = loop.create_future()
                if not self._stopping:
                    await stop
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise  # the host itself was cancelled (its loop shutting down)
            logger.error(
                "event delivery failed outside any callback; the stream delivers no more",
                exc_info=exc,
            )
            self._on_failure(exc)
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
        finally:
            self._group = None
