"""The event stream: one ordered history of events, many subscribers.

:meth:`EventStream.append` gives each event the next id (gapless, from 0),
a UTC timestamp and its source, hides secrets, and stores the copy. The
history is the single source of truth: subscribers and followers are
cursors into it (:mod:`events.delivery`), so ``append`` never waits for
anyone. This follows the pull-by-position model of event sourcing; waking
the cursors is the push optimisation on top.

Where the history lives: in memory, for the life of the stream (a durable
stream also writes it to its :class:`~events.log.EventLog` and rehydrates it
from there on reopen). That makes ``get``, ``iter_events`` and replay to a
late subscriber O(1) per event and needs no disk reads, at the cost of
memory proportional to the stream's length: fine for an agent session
(thousands to a few million events), not for an unbounded firehose.

Threads: ``append`` takes a lock and may be called from any thread; a
subscriber woken from another thread is woken through
``call_soon_threadsafe``. ``subscribe``, ``follow`` and ``unsubscribe``
belong on the thread of the event loop that runs the deliveries (the stream
binds to the loop of its first subscriber).

A durable stream whose log cannot be written (a full disk, an I/O error)
fails at once and for good: the append or flush that meets the error raises
:class:`~events.log.LogWriteError` (naming the file and the OS error), and
so does every later ``append``/``flush``; ``follow()`` raises it once it has
yielded what is stored; :meth:`EventStream.wait_write_error` returns it to
whoever waits on the stream for something that can no longer come (a runtime
waiting for an observation). Reopening the log after making room gives the
events that reached the disk. Closing still completes (and raises the error).

Closing: ``aclose()`` (or leaving ``async with``) stops new appends, lets
every subscriber finish the events appended before the close for up to
``drain_timeout`` seconds, cancels those that have not, ends every
``follow()`` once it has yielded the last event, and closes the log (written
and synced). A subscriber that appends while being drained gets
:class:`StreamClosedError` (logged like any callback error): close the
runtime that subscribes before the stream. ``close()`` is the same for
code without a running loop; it blocks until the log is synced and does
not wait for deliveries.

Delivery (:mod:`events.delivery`): each subscriber's task is a child of one
``asyncio.TaskGroup`` the stream owns, started by the first ``subscribe()``
and ended by ``aclose()``. A delivery task that dies outside its callback (a
bug, never a callback's ``Exception``) takes the stream down: every delivery
is cancelled, the error is logged at once, and appends, subscribes and
``aclose()`` raise :class:`DeliveryError`.

Error tree::

    EventsError (events.errors), RuntimeError
     └── StreamClosedError        append/subscribe after close
          └── DeliveryError       a delivery task died outside its callback: the stream is down
    ValueError                    re-appending an event, duplicate subscriber id, bad id
    events.log.LogError           from a durable stream: see events.log
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import threading
import uuid
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Final, TypeVar

import msgspec

from events.clock import UtcClock
from events.delivery import Deliveries, EventCallback, Follower, Subscription, wake_all
from events.errors import EventsError
from events.log import EventLog, LogWriteError
from events.models import Event, EventSource
from events.secrets import SecretMasker

__all__ = ["DeliveryError", "EventCallback", "EventStream", "StreamClosedError", "Subscription"]

logger = logging.getLogger(__name__)

_E = TypeVar("_E", bound=Event)

_replace: Final = msgspec.structs.replace

# The exact classes already seen to be events. `type(event) in` this set costs a
# fraction of an isinstance() check through msgspec's Struct metaclass, which
# every append would otherwise pay. Only Event subclasses ever go in, so it is
# bounded by the number of event classes.
_event_classes: Final[set[type]] = set()


class StreamClosedError(EventsError, RuntimeError):
    """The stream was closed: it accepts no more events or subscribers."""


class DeliveryError(StreamClosedError):
    """A delivery task died outside any callback (a bug): the stream went down with it.

    Every delivery was cancelled; appends and subscribes raise this, and so
    does ``aclose()``. The original error is the ``__cause__``.
    """


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


_FailureWaiter = tuple[asyncio.AbstractEventLoop, "asyncio.Future[LogWriteError]"]


def _set_error_result(future: asyncio.Future[LogWriteError], error: LogWriteError) -> None:
    if not future.done():
        future.set_result(error)


class EventStream:
    """The ordered, append-only history of a session's events, with subscribers.

    ``EventStream()`` keeps events in memory. ``EventStream(log_path=path)``
    also writes them to a durable :class:`~events.log.EventLog`, opened and
    recovered right here (blocking file I/O, once): a file that is not a log
    raises :class:`~events.log.NotALogError` (a ``ValueError``) and is left
    untouched; a log's events are loaded and ids continue after them. A log
    is exclusively locked while a stream has it open
    (:class:`~events.log.LogLockedError` otherwise).

    ``drain_timeout`` (seconds) bounds how long :meth:`aclose` lets
    subscribers finish the events appended before the close.
    """

    def __init__(
        self, log_path: str | os.PathLike[str] | None = None, *, drain_timeout: float = 5.0
    ) -> None:
        if not drain_timeout >= 0:
            raise ValueError(f"drain_timeout must be >= 0 seconds, got {drain_timeout!r}")
        self._log = EventLog(log_path) if log_path is not None else None
        # The stream takes over the recovered list and extends it from here on.
        self._events: list[Event] = self._log.recovered if self._log is not None else []
        self._drain_timeout = drain_timeout
        self._lock = threading.Lock()
        self._now = UtcClock().now
        self._masker: SecretMasker | None = None
        self._closed = False
        self._subscriptions: dict[str, Subscription] = {}
        self._waiters: list[asyncio.Future[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._anonymous_ids = itertools.count()
        self._stream_id = self._log.log_id if self._log is not None else uuid.uuid4().hex
        self._failed = False
        self._failure_waiters: list[_FailureWaiter] = []
        self._deliveries = Deliveries(self._stream_id, self._delivery_failed)
        self._delivery_error: DeliveryError | None = None
        if self._log is not None:
            self._log.on_failure = self._log_failed

    def __repr__(self) -> str:
        where = f"log={self._log.path!r}" if self._log is not None else "in memory"
        return f"<EventStream {where} events={len(self._events)} closed={self._closed}>"

    # ------------------------------------------------------------------ history

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def stream_id(self) -> str:
        """This stream's identity (32 hex digits); a durable stream keeps it across reopens.

        Runtimes use it as their client identity towards a sandbox, so that a
        process that reopens the log after a crash gets the results of the
        actions the sandbox already ran instead of running them again.
        """
        return self._stream_id

    @property
    def log_path(self) -> str | None:
        """The durable log's path, ``None`` for an in-memory stream."""
        return self._log.path if self._log is not None else None

    def __len__(self) -> int:
        return len(self._events)

    @property
    def write_error(self) -> LogWriteError | None:
        """The error that stopped the durable log; ``None`` while it works (or in memory)."""
        return self._log.write_error if self._log is not None else None

    async def wait_write_error(self) -> LogWriteError:
        """Wait until the durable log fails and return its error (at once if it has).

        For code that waits on the stream for events (a runtime waiting for an
        observation): once the log has failed, no event can be appended any
        more, so such a wait must end with this error instead. Waits forever
        for an in-memory stream or a log that keeps working: cancel it.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[LogWriteError] = loop.create_future()
        entry = (loop, future)
        with self._lock:
            error = self.write_error
            if error is None:
                self._failure_waiters.append(entry)
        if error is not None:
            return error
        try:
            return await future
        finally:
            with self._lock, contextlib.suppress(ValueError):
                self._failure_waiters.remove(entry)

    def _log_failed(self, error: LogWriteError) -> None:
        # Called from the log's writer thread.
        with self._lock:
            self._failed = True
            waiters, self._failure_waiters = self._failure_waiters, []
        for loop, future in waiters:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(_set_error_result, future, error)
        self._wake()

    def get(self, event_id: int) -> Event:
        """The stored event with this id; ``KeyError`` if there is none."""
        if 0 <= event_id < len(self._events):
            return self._events[event_id]
        raise KeyError(event_id)

    def iter_events(self, start_id: int = 0, end_id: int | None = None) -> Iterator[Event]:
        """Stored events from ``start_id`` to ``end_id`` inclusive (default: the last one now).

        The range is fixed when this is called; events appended later are not
        included. Use :meth:`follow` to keep going.
        """
        if start_id < 0:
            raise ValueError(f"start_id must be >= 0, got {start_id}")
        events = self._events
        stop = len(events) if end_id is None else min(end_id + 1, len(events))
        return (events[i] for i in range(start_id, stop))

    # ------------------------------------------------------------------ appending

    def set_secrets(self, secrets: Mapping[str, str]) -> None:
        """Hide these values in every event appended from now on.

        Replaces the previous set; an empty value is ignored. Events already
        stored are not changed. See :mod:`events.secrets` for what is masked.
        """
        masker = SecretMasker(secrets)
        self._masker = masker if masker else None

    def append(self, event: _E, source: EventSource = EventSource.AGENT) -> _E:
        """Store ``event`` with the next id, a UTC timestamp and ``source``; return the copy.

        Raises ``ValueError`` if the event already has an id (>= 0) or if
        hiding secrets makes it invalid, :class:`StreamClosedError` after
        close and, for a durable stream, ``TypeError`` for an event that
        cannot be encoded and :class:`~events.log.LogWriteError` after a
        disk error. Whenever it raises, nothing was stored and no id was used.
        """
        if type(event) not in _event_classes:
            if not isinstance(event, Event):
                raise TypeError(f"expected an Event, got {type(event).__name__}")
            _event_classes.add(type(event))
        if event.id >= 0:
            raise ValueError(f"event already has id {event.id}: append a new event instead")
        if type(source) is not EventSource:
            source = EventSource(source)
        if self._masker is not None:
            return self._append_masked(event, source, self._masker)
        # acquire/release in try/finally rather than `with`: on CPython 3.11 the with
        # statement costs as much as the rest of the locked section.
        lock = self._lock
        lock.acquire()
        try:
            if self._closed:
                raise self._closed_error()
            events = self._events
            stored = _replace(event, id=len(events), timestamp=self._now(), source=source)
            if self._log is not None:
                self._log.append(stored)
            events.append(stored)
        finally:
            lock.release()
        if self._waiters:
            self._wake()
        return stored

    def append_copy(self, event: _E) -> _E:
        """Store ``event`` exactly as it is (id, timestamp, source, cause, content); return it.

        For a stream that starts as a copy of another one's history (a fork,
        :func:`openhands_rt.fork`): the event keeps the id it has there, which
        must be the next one here (``len(self)``), so copies go in order from
        0. Nothing is masked: the event was masked when it was first appended.
        Raises ``ValueError`` for any other id, and otherwise what
        :meth:`append` raises; whenever it raises, nothing was stored.
        """
        if not isinstance(event, Event):
            raise TypeError(f"expected an Event, got {type(event).__name__}")
        with self._lock:
            if self._closed:
                raise self._closed_error()
            if event.id != len(self._events):
                raise ValueError(
                    f"a copied event must have the next id, {len(self._events)}, not {event.id}"
                )
            if self._log is not None:
                self._log.append(event)
            self._events.append(event)
        if self._waiters:
            self._wake()
        return event

    def _append_masked(self, event: _E, source: EventSource, masker: SecretMasker) -> _E:
        changes = masker.changes(event)
        with self._lock:
            if self._closed:
                raise self._closed_error()
            try:
                stored = _replace(
                    event, id=len(self._events), timestamp=self._now(), source=source, **changes
                )
            except ValueError as exc:
                if not changes:
                    raise
                raise ValueError(f"hiding secrets made the event invalid: {exc}") from exc
            if self._log is not None:
                self._log.append(stored)
            self._events.append(stored)
        if self._waiters:
            self._wake()
        return stored

    async def flush(self) -> None:
        """Return once every event appended so far is on disk (no-op in memory).

        Raises :class:`~events.log.LogWriteError` if the log failed.
        """
        if self._log is not None:
            await self._log.flush()

    # ------------------------------------------------------------------ subscribers

    def subscribe(
        self,
        callback: EventCallback,
        subscriber_id: str | None = None,
        from_id: int | None = None,
    ) -> Subscription:
        """Deliver events to ``callback`` from a task the stream owns, starting now.

        ``from_id=None``: only events appended after this call; ``from_id=N``:
        the stored events from N on, then live ones, with no gap and no
        duplicate (N may be beyond the last id: delivery starts when event N
        arrives). The callback gets every event once, in id order, never two
        at a time; if it raises, the error is logged and delivery goes on.
        Must be called inside a running event loop. ``subscriber_id``
        defaults to a fresh unique name; one already in use raises
        ``ValueError``.
        """
        if self._closed:
            raise self._closed_error()
        if from_id is not None and from_id < 0:
            raise ValueError(f"from_id must be >= 0 or None, got {from_id}")
        loop = self._bind_loop()
        if subscriber_id is None:
            subscriber_id = f"subscriber-{next(self._anonymous_ids)}"
            while subscriber_id in self._subscriptions:
                subscriber_id = f"subscriber-{next(self._anonymous_ids)}"
        elif subscriber_id in self._subscriptions:
            raise ValueError(f"subscriber id {subscriber_id!r} is already in use")
        start = len(self._events) if from_id is None else from_id
        subscription = Subscription(self, callback, subscriber_id, start)
        self._subscriptions[subscriber_id] = subscription
        self._deliveries.start(subscription, loop)
        return subscription

    def follow(self, from_id: int = 0) -> Follower:
        """Iterate the stored events from ``from_id``, then live ones, until the stream closes."""
        if from_id < 0:
            raise ValueError(f"from_id must be >= 0, got {from_id}")
        return Follower(self, from_id)

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError("subscribing to an EventStream needs a running event loop") from None
        if loop is not self._loop:
            if self._loop is not None and not self._loop.is_closed() and self._deliveries.busy:
                raise RuntimeError("this EventStream delivers events in another event loop")
            self._waiters = []  # any left belong to the old loop, whose tasks are gone
            self._loop = loop
            self._loop_thread = threading.get_ident()
        return loop

    def _forget(self, subscription: Subscription) -> None:
        if self._subscriptions.get(subscription.subscriber_id) is subscription:
            del self._subscriptions[subscription.subscriber_id]

    def _closed_error(self) -> StreamClosedError:
        if self._delivery_error is not None:
            return self._delivery_error
        return StreamClosedError("the event stream is closed")

    def _delivery_failed(self, error: BaseException) -> None:
        # On the loop, from the deliveries' host task, after every delivery was cancelled.
        failure = DeliveryError(f"event delivery failed: {error!r}")
        failure.__cause__ = error
        with self._lock:
            self._delivery_error = failure
            self._closed = True
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        self._wake_futures(waiters)

    def _wake_futures(self, waiters: list[asyncio.Future[None]]) -> None:
        if threading.get_ident() == self._loop_thread:
            wake_all(waiters)
        elif self._loop is not None:
            with contextlib.suppress(RuntimeError):  # a closed loop: its waiters are gone
                self._loop.call_soon_threadsafe(wake_all, waiters)

    # ------------------------------------------------------------------ closing

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close: refuse appends, drain subscribers (bounded), end follows, sync the log.

        Raises :class:`~events.log.LogWriteError` if some events never reached
        the disk, :class:`DeliveryError` if delivery went down. Idempotent.
        """
        with self._lock:
            self._closed = True
        if self._log is not None:
            self._log.start_close()  # the writer syncs what is queued while we drain
        self._wake()
        await self._deliveries.aclose(self._drain_timeout)
        if self._log is not None:
            await self._log.aclose()
        if self._delivery_error is not None:
            raise self._delivery_error

    def close(self) -> None:
        """Close from code without a running event loop; blocks until the log is synced.

        Subscribers are woken to finish on their own loop. Inside a running
        loop use :meth:`aclose`: there, closing a durable stream with this
        raises ``RuntimeError`` rather than block the loop on the disk.
        """
        if self._log is not None and _loop_running():
            raise RuntimeError("EventStream.close() would block the event loop; use aclose()")
        with self._lock:
            self._closed = True
        self._wake()
        self._deliveries.stop()
        if self._log is not None:
            self._log.close()
