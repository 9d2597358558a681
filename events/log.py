"""The durable event log: an append-only file, one framed record per event.

File format (all integers little-endian)::

    header   b"\\x89OHRTLOG\\r\\n\\x1a\\n" (12 bytes of magic) + u32 format version (1)
             + 16 random bytes: the log's identity (``log_id``), fixed at creation
    record   u32 length | u32 crc32(length bytes + payload) | payload
    payload  encode_event(event): the event's compact JSON, id included

Why binary framing rather than JSON lines: the length prefix tells a torn
record (its bytes run past the end of the file) from a complete one without
scanning for delimiters or trusting that the JSON never holds a raw newline,
and the CRC over the length *and* the payload catches bit rot, a corrupted
length and the zero-filled tails some filesystems leave after a crash (an
all-zero frame would otherwise be a valid empty record: ``crc32(b"") == 0``).
The payload stays plain JSON, so a log is still readable with a few lines of
code in any language (:func:`read_log` is ours).

The magic is PNG-style: a non-ASCII first byte (no text file starts like
that), CR LF and LF (a line-ending conversion breaks it). A file whose header
is wrong or absent is refused untouched; see :func:`scan_log` for the rules.

Recovery on open keeps every complete, valid record before the first bad one
(torn, CRC mismatch, undecodable, or an id that is not the next one: ids are
stored in the records and must run 0, 1, 2, ... gaplessly). Everything from
the first bad record on is truncated away, with a warning, before anything
new is written. When the bad record is *complete* (corruption rather than a
crash mid-write) and is followed by non-zero bytes, those bytes may be events
that were once on disk: they are copied to ``<log>.corrupt-<offset>-<ns>``
beside the log before the truncation, so recovery never destroys them.

Group commit: :meth:`EventLog.append` encodes and frames the event on the
caller's thread (so an event that cannot be encoded fails right there) and
queues the frame; one writer thread writes everything queued in a single
``write`` and ``fdatasync``s it, while new appends queue up for the next
batch. :meth:`EventLog.flush` waits until every event appended before the
call is on disk. A write or sync error stops the log for good: the error is
raised by the pending and every later ``flush``/``append`` and by ``close``,
handed to :attr:`EventLog.on_failure` at once (the stream fails its waiters);
the file is cut back to its last synced size (best effort), so it reopens
intact with everything that was synced. A process holds an exclusive
``flock`` on an open log, so two writers never interleave records.

Error tree::

    EventsError (events.errors)
     └── LogError
          ├── NotALogError (also ValueError)   the file is not an event log
          ├── LogLockedError                    another EventLog holds the file open
          ├── LogClosedError                    append after close()
          └── LogWriteError                     a write or fsync failed; events were not stored
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from events import codec
from events.codec import EventDecodeError, decode_event
from events.errors import EventsError
from events.models import Event

if sys.platform != "win32":
    import fcntl

__all__ = [
    "FORMAT_VERSION",
    "HEADER",
    "HEADER_SIZE",
    "MAGIC",
    "EventLog",
    "LogClosedError",
    "LogError",
    "LogLockedError",
    "LogScan",
    "LogWriteError",
    "NotALogError",
    "frame_record",
    "read_log",
    "scan_log",
]

logger = logging.getLogger(__name__)

MAGIC: Final = b"\x89OHRTLOG\r\n\x1a\n"
FORMAT_VERSION: Final = 1
_U32: Final = struct.Struct("<I")
_FRAME: Final = struct.Struct("<II")
HEADER: Final = MAGIC + _U32.pack(FORMAT_VERSION)  # followed by the 16-byte log id
_LOG_ID_SIZE: Final = 16
HEADER_SIZE: Final = len(HEADER) + _LOG_ID_SIZE
_FRAME_SIZE: Final = _FRAME.size

_fdatasync: Final[Callable[[int], None]] = getattr(os, "fdatasync", os.fsync)
_pack_u32: Final = _U32.pack
_pack_frame: Final = _FRAME.pack
_crc32: Final = zlib.crc32
# encode_event()'s encoder itself: append() runs once per event, and the wrapper's
# call is a tenth of it.
_encode: Final = codec._encoder.encode


class LogError(EventsError):
    """Root of the errors raised by the durable event log."""


class NotALogError(LogError, ValueError):
    """The file is not an event log (wrong or absent header, unknown format version)."""


class LogLockedError(LogError):
    """Another open :class:`EventLog` (in this or another process) holds the file."""


class LogClosedError(LogError):
    """The log was closed; it accepts no more events."""


class LogWriteError(LogError):
    """Writing or syncing the log failed; events from ``first_lost_id`` on are not on disk."""

    def __init__(self, message: str, *, first_lost_id: int) -> None:
        super().__init__(message)
        self.first_lost_id = first_lost_id


# --------------------------------------------------------------------------- pure core


def frame_record(payload: bytes) -> bytes:
    """Frame one encoded event: length, CRC of length + payload, payload."""
    length = len(payload)
    return _pack_frame(length, _crc32(payload, _crc32(_pack_u32(length)))) + payload


@dataclass
class LogScan:
    """What :func:`scan_log` found in the bytes of a log file.

    ``events`` are the valid records in order; ``end`` is the offset just past
    the last of them (the size the file must be cut to). ``problem`` says why
    scanning stopped before the end of the data (``None``: it did not), and
    ``torn`` is true when that looks like a crash mid-write (an incomplete
    record or a zero-filled tail) rather than corruption of complete records.
    ``header_torn`` means the data is a strict prefix of the header: a log
    whose creation was interrupted.
    """

    events: list[Event] = field(default_factory=list)
    end: int = 0
    problem: str | None = None
    torn: bool = False
    header_torn: bool = False
    log_id: str = ""  # 32 hex digits: this log's identity, fixed when it was created


def scan_log(data: bytes | bytearray | memoryview) -> LogScan:
    """Validate a whole log image and return its recoverable prefix.

    Raises :class:`NotALogError` for data that is not a log: neither empty nor
    a prefix of our header, and not starting with our magic; or with our
    magic but another format version.
    """
    view = memoryview(data)
    size = len(view)
    if size >= len(HEADER) and bytes(view[: len(MAGIC)]) == MAGIC:
        (version,) = _U32.unpack_from(view, len(MAGIC))
        if version != FORMAT_VERSION:
            raise NotALogError(
                f"unsupported event log format version {version} (this code reads {FORMAT_VERSION})"
            )
    if size < HEADER_SIZE:
        if HEADER.startswith(bytes(view[: len(HEADER)])):
            return LogScan(end=0, header_torn=size > 0, torn=size > 0)
        raise NotALogError("not an event log: the file does not start with the log header")
    if bytes(view[: len(MAGIC)]) != MAGIC:
        raise NotALogError("not an event log: the file does not start with the log header")
    scan = LogScan(end=HEADER_SIZE, log_id=bytes(view[len(HEADER) : HEADER_SIZE]).hex())
    pos = HEADER_SIZE
    events = scan.events
    crc32 = zlib.crc32
    while pos < size:
        if size - pos < _FRAME_SIZE:
            scan.problem, scan.torn = f"incomplete record header at offset {pos}", True
            break
        length, crc = _FRAME.unpack_from(view, pos)
        end = pos + _FRAME_SIZE + length
        if end > size:
            scan.problem, scan.torn = f"record at offset {pos} runs past the end of the file", True
            break
        payload = view[pos + _FRAME_SIZE : end]
        if crc32(payload, crc32(view[pos : pos + 4])) != crc:
            scan.problem = f"checksum mismatch in the record at offset {pos}"
            break
        try:
            event = decode_event(payload)
        except EventDecodeError as exc:
            scan.problem = f"undecodable record at offset {pos}: {exc}"
            break
        if event.id != len(events):
            scan.problem = (
                f"record at offset {pos} holds event id {event.id}, expected {len(events)}"
            )
            break
        events.append(event)
        pos = end
        scan.end = pos
    if scan.problem is not None and not scan.torn and not any(view[scan.end :]):
        # A zero-filled tail is what delayed allocation leaves after a crash.
        scan.torn = True
    return scan


def read_log(path: str | os.PathLike[str]) -> list[Event]:
    """Read the valid events of a log without opening it for writing or changing it.

    For tools that replay a log (also one another process is writing): a torn
    or corrupt tail is skipped with a warning, never repaired.
    """
    with open(path, "rb") as file:
        data = file.read()
    scan = scan_log(data)
    if scan.problem is not None:
        logger.warning("event log %s: %s; read %d events", path, scan.problem, len(scan.events))
    return scan.events


# --------------------------------------------------------------------------- the file


_FlushWaiter = tuple[int, asyncio.AbstractEventLoop, "asyncio.Future[None]"]


class EventLog:
    """An open, locked, recovered event log that appends with group commit.

    The constructor opens (creating it if absent), locks and recovers the
    file: that is blocking file I/O, done once. ``recovered`` holds the
    events found in it (the list is the caller's to keep, and to extend);
    the next appended event must have id :attr:`next_id` (``len(recovered)``
    at first), then the one after, and so on.

    ``append`` may be called from any thread. The writer thread starts with
    the first append. Call :meth:`close` or :meth:`aclose`: until then events
    that were appended but not flushed are in memory only, exactly as after a
    crash.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(self.path, flags, 0o666)  # like open(): the umask decides
        try:
            self._lock_file(fd)
            self.recovered = self._recover(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd: int | None = fd
        # append() takes the bare lock (acquire/release: a Condition's `with` runs
        # Python code); the writer waits on the condition built on it.
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._pending = bytearray()  # the framed records of the next batch
        self._appended = len(self.recovered)  # events handed to append(), recovered included
        self._durable = self._appended  # events written and synced
        self._synced_size = os.fstat(fd).st_size
        self._flush_waiters: list[_FlushWaiter] = []
        self._close_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._writer: threading.Thread | None = None
        self._writer_idle = False
        self._closing = False
        self._finished = threading.Event()
        self._error: Exception | None = None  # the write error that stopped the log
        self._first_lost_id = -1
        #: Called once, from the writer thread, with the error when a write or sync
        #: fails; the owner of the log uses it to fail whoever waits (it must not block).
        self.on_failure: Callable[[LogWriteError], None] | None = None

    # ------------------------------------------------------------------ opening

    def _lock_file(self, fd: int) -> None:
        if sys.platform == "win32":  # pragma: no cover - no flock: nothing stops a second writer
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LogLockedError(f"event log {self.path} is already open elsewhere") from None

    def _recover(self, fd: int) -> list[Event]:
        size = os.fstat(fd).st_size
        data = os.pread(fd, size, 0) if size else b""
        while len(data) < size:  # pread may return short reads on some filesystems
            chunk = os.pread(fd, size - len(data), len(data))
            if not chunk:
                break
            data += chunk
        scan = scan_log(data)  # NotALogError leaves the file as it was
        self.log_id = scan.log_id
        if size == 0 or scan.header_torn:
            if scan.header_torn:
                logger.warning(
                    "event log %s: creation was interrupted; rewriting its header", self.path
                )
            os.ftruncate(fd, 0)
            log_id = uuid.uuid4().bytes
            os.write(fd, HEADER + log_id)
            _fdatasync(fd)
            self._sync_directory()
            self.log_id = log_id.hex()
            return []
        if scan.problem is not None:
            dropped = len(data) - scan.end
            saved = ""
            if not scan.torn:
                saved_path = self._save_tail(data[scan.end :], scan.end)
                saved = f"; the dropped bytes were copied to {saved_path}"
            logger.warning(
                "event log %s: %s; recovered %d events, dropped %d bytes%s",
                self.path,
                scan.problem,
                len(scan.events),
                dropped,
                saved,
            )
            os.ftruncate(fd, scan.end)
            _fdatasync(fd)
        return scan.events

    def _save_tail(self, tail: bytes, offset: int) -> str:
        saved_path = f"{self.path}.corrupt-{offset}-{time.time_ns()}"
        with open(saved_path, "xb") as out:
            out.write(tail)
            out.flush()
            os.fsync(out.fileno())
        self._sync_directory()
        return saved_path

    def _sync_directory(self) -> None:
        try:
            dir_fd = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY)
        except OSError:  # pragma: no cover - e.g. no permission to open the directory
            return
        try:
            os.fsync(dir_fd)
        except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
            pass
        finally:
            os.close(dir_fd)

    # ------------------------------------------------------------------ appending

    @property
    def closed(self) -> bool:
        return self._closing

    @property
    def next_id(self) -> int:
        """The id the next appended event must carry."""
        return self._appended

    def append(self, event: Event) -> None:
        """Queue ``event`` (already carrying its id) for the next group commit.

        Raises ``TypeError``/``ValueError`` if the event cannot be encoded,
        ``ValueError`` if its id is not :attr:`next_id`,
        :class:`LogWriteError` after a disk error and :class:`LogClosedError`
        after close; in every case nothing was queued.
        """
        payload = _encode(event)
        length = len(payload)
        head = _pack_frame(length, _crc32(payload, _crc32(_pack_u32(length))))  # frame_record()
        mutex = self._mutex
        mutex.acquire()
        try:
            if self._error is not None:
                raise self._write_error()
            if self._closing:
                raise LogClosedError(f"event log {self.path} is closed")
            if event.id != self._appended:
                raise ValueError(f"expected event id {self._appended}, got {event.id}")
            pending = self._pending
            size = len(pending)
            try:
                pending += head
                pending += payload
            except BaseException:  # a MemoryError: never leave half a record queued
                del pending[size:]
                raise
            self._appended += 1
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._run_writer, name=f"event-log-writer:{self.path}", daemon=True
                )
                self._writer.start()
            elif self._writer_idle:
                self._writer_idle = False
                self._cond.notify()
        finally:
            mutex.release()

    async def flush(self) -> None:
        """Return once every event appended before this call is written and synced."""
        with self._cond:
            if self._error is not None:
                raise self._write_error()
            if self._durable >= self._appended:
                return
            loop = asyncio.get_running_loop()
            future: asyncio.Future[None] = loop.create_future()
            self._flush_waiters.append((self._appended, loop, future))
        await future

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        """Write and sync everything queued, then close the file (blocks the caller).

        Raises :class:`LogWriteError` if some appended events could not be
        stored. Idempotent.
        """
        self.start_close()
        if self._writer is not None:
            self._writer.join()
        self._finished.wait()
        self._raise_if_lost()

    async def aclose(self) -> None:
        """Like :meth:`close`, without blocking the event loop."""
        self.start_close()
        if not self._finished.is_set():
            loop = asyncio.get_running_loop()
            future: asyncio.Future[None] = loop.create_future()
            with self._cond:
                done = self._finished.is_set()
                if not done:
                    self._close_waiters.append((loop, future))
            if not done:
                await future
        self._raise_if_lost()

    def _raise_if_lost(self) -> None:
        if self._error is not None:
            raise self._write_error()

    def _write_error(self) -> LogWriteError:
        # A fresh instance per raise: re-raising one object keeps growing its traceback.
        error = LogWriteError(
            f"writing event log {self.path} failed ({self._error}); events from id "
            f"{self._first_lost_id} on are not on disk and the log accepts no more events",
            first_lost_id=self._first_lost_id,
        )
        error.__cause__ = self._error
        return error

    def start_close(self) -> None:
        """Refuse new appends; the writer syncs what is queued, then closes the file.

        Does not wait: :meth:`close` / :meth:`aclose` do. Idempotent.
        """
        with self._cond:
            if self._closing:
                return
            self._closing = True
            if self._writer is not None:
                self._writer_idle = False
                self._cond.notify()
                return
        self._close_fd()
        self._finished.set()

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # also releases the flock

    # ------------------------------------------------------------------ writer thread

    def _run_writer(self) -> None:
        fd = self._fd
        assert fd is not None
        try:
            while True:
                with self._cond:
                    while not self._pending and not self._closing:
                        self._writer_idle = True
                        self._cond.wait()
                    data, self._pending = self._pending, bytearray()
                    target = self._appended
                if not data:
                    break  # closing, and everything is written
                try:
                    _write_all(fd, data)
                    _fdatasync(fd)
                except Exception as exc:  # any failure must reach the waiters, not kill the thread
                    self._fail(fd, exc)
                    return
                self._synced_size += len(data)
                with self._cond:
                    self._durable = target
                    ready = [w for w in self._flush_waiters if w[0] <= target]
                    if ready:
                        self._flush_waiters = [w for w in self._flush_waiters if w[0] > target]
                for _, loop, future in ready:
                    _resolve_threadsafe(loop, future, None)
        finally:
            self._close_fd()
            with self._cond:
                self._finished.set()
                close_waiters, self._close_waiters = self._close_waiters, []
            for loop, future in close_waiters:
                _resolve_threadsafe(loop, future, None)

    def _fail(self, fd: int, exc: Exception) -> None:
        # Cut a half-written batch so the file ends on a record boundary; if even
        # that fails, reopening drops the torn tail.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, self._synced_size)
        with self._cond:
            self._error = exc
            self._first_lost_id = self._durable
            self._pending = bytearray()
            waiters, self._flush_waiters = self._flush_waiters, []
        logger.error("%s", self._write_error())
        for _, loop, future in waiters:
            _resolve_threadsafe(loop, future, self._write_error())
        on_failure = self.on_failure
        if on_failure is not None:
            try:
                on_failure(self._write_error())
            except Exception:
                logger.exception("the event log's failure callback raised")

    @property
    def write_error(self) -> LogWriteError | None:
        """The error that stopped the log (a fresh instance), ``None`` while it works."""
        with self._cond:
            return self._write_error() if self._error is not None else None


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _resolve_threadsafe(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[None], error: BaseException | None
) -> None:
    with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
        loop.call_soon_threadsafe(_resolve, future, error)


def _resolve(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return  # the waiter was cancelled
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
