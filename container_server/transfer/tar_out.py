"""Streaming a download: a tar archive of a file or directory, produced as it is read.

Layout: a directory's *contents* (names relative to it, like ``tar -C DIR .``
without the ``./``), so that downloading P and uploading the result to Q makes
Q a copy of P; a single file under its base name. A top-level symlink is
followed; symlinks below it are stored as symlinks. Entries that cannot be read
are left out and logged. A file whose content is shorter or longer than its
size said (``/proc``, ``/sys``, a file written meanwhile) is padded with NULs
or cut to that size, as GNU tar does.

A worker thread runs :mod:`tarfile` and hands chunks to the event loop through
a bounded pipe, so the archive is produced only as fast as it is consumed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import stat
import tarfile
import threading
from collections.abc import AsyncGenerator
from typing import IO, Final, cast

__all__ = ["tar_stream"]

logger = logging.getLogger(__name__)

#: Chunks in flight between the tar thread and the consumer of a download.
_PIPE_CHUNKS: Final = 4


class _PipeClosed(Exception):
    """The consumer of a download went away."""


_END: Final = object()


class _ChunkPipe:
    """Bounded hand-over of chunks from one producer thread to the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_chunks: int) -> None:
        self._loop = loop
        self._credit = threading.Semaphore(max_chunks)
        self._items: collections.deque[object] = collections.deque()
        self._ready = asyncio.Event()
        self._closed = False

    # producer thread
    def put(self, chunk: bytes) -> None:
        # Checked before and after waiting: once closed, tarfile's own cleanup writes
        # must fail at once rather than wait for credit that never comes.
        if self._closed:
            raise _PipeClosed
        self._credit.acquire()
        if self._closed:
            raise _PipeClosed
        self._loop.call_soon_threadsafe(self._push, chunk)

    def finish(self, error: BaseException | None) -> None:
        # A closed loop (RuntimeError) means nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._push, _END if error is None else error)

    # event loop
    def _push(self, item: object) -> None:
        self._items.append(item)
        self._ready.set()

    async def get(self) -> object:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        item = self._items.popleft()
        if isinstance(item, bytes):
            self._credit.release()
        return item

    def close(self) -> None:
        self._closed = True
        self._credit.release()  # wakes a producer blocked for credit; it sees _closed


class _ChunkWriter:
    """The file object tarfile writes to: cuts the stream into ``chunk_size`` chunks."""

    def __init__(self, pipe: _ChunkPipe, chunk_size: int) -> None:
        self._pipe = pipe
        self._chunk_size = chunk_size
        self._buffer = bytearray()
        self._position = 0

    def write(self, b: bytes, /) -> int:
        self._buffer += b
        self._position += len(b)
        while len(self._buffer) >= self._chunk_size:
            chunk = bytes(self._buffer[: self._chunk_size])
            del self._buffer[: self._chunk_size]
            self._pipe.put(chunk)
        return len(b)

    def flush_rest(self) -> None:
        if self._buffer:
            self._pipe.put(bytes(self._buffer))
            self._buffer.clear()

    def read(self, size: int, /) -> bytes:
        raise OSError("write-only stream")

    def tell(self) -> int:
        return self._position

    def seek(self, pos: int, /) -> int:
        raise OSError("stream is not seekable")

    def close(self) -> None:
        pass


class _ExactSize:
    """A file's data cut or NUL-padded to the size its tar header announced.

    tarfile needs exactly that many bytes; files in /proc and /sys announce a size they do
    not have, and any file may shrink or grow while it is read.
    """

    def __init__(self, file: IO[bytes], size: int, path: str) -> None:
        self._file = file
        self._left = size
        self._path = path
        self._ended = False

    def read(self, size: int = -1, /) -> bytes:
        want = self._left if size < 0 else min(size, self._left)
        parts: list[bytes] = []
        got = 0
        while got < want and not self._ended:
            data = self._file.read(want - got)
            if not data:
                self._ended = True
                logger.warning(
                    "download: %s ended %d bytes short of its size; padded with NULs",
                    self._path,
                    self._left - got,
                )
                break
            parts.append(data)
            got += len(data)
        parts.append(bytes(want - got))
        self._left -= want
        return b"".join(parts)


def _add_entry(archive: tarfile.TarFile, path: str, arcname: str) -> None:
    try:
        # None for sockets, whatever typeshed says.
        info = cast("tarfile.TarInfo | None", archive.gettarinfo(path, arcname))
    except OSError as exc:
        logger.warning("download: skipped %s: %s", path, exc)
        return
    if info is None:  # sockets and other kinds tar cannot hold
        logger.warning("download: skipped %s: not a file tar can store", path)
        return
    if not info.isreg():
        archive.addfile(info)
        return
    try:
        file = open(path, "rb")  # noqa: SIM115 - closed right below, after a possible skip
    except OSError as exc:
        logger.warning("download: skipped %s: %s", path, exc)
        return
    with file:
        archive.addfile(info, cast("IO[bytes]", _ExactSize(file, info.size, path)))


def _log_walk_error(exc: OSError) -> None:
    logger.warning("download: skipped %s: %s", exc.filename, exc)


def _write_tar(path: str, pipe: _ChunkPipe, chunk_size: int) -> None:
    writer = _ChunkWriter(pipe, chunk_size)
    try:
        root = os.path.realpath(path)
        st = os.stat(root)
        with tarfile.open(
            fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT, bufsize=chunk_size
        ) as archive:
            if stat.S_ISDIR(st.st_mode):
                for directory, dirs, files in os.walk(root, onerror=_log_walk_error):
                    dirs.sort()
                    relative = os.path.relpath(directory, root)
                    for name in [*dirs, *sorted(files)]:
                        arcname = name if relative == "." else f"{relative}/{name}"
                        _add_entry(archive, os.path.join(directory, name), arcname)
            else:
                _add_entry(archive, root, os.path.basename(os.path.normpath(path)))
        writer.flush_rest()
    except _PipeClosed:
        return
    except BaseException as exc:
        pipe.finish(exc)
        return
    pipe.finish(None)


async def tar_stream(path: str, *, chunk_size: int = 64 * 1024) -> AsyncGenerator[bytes, None]:
    """Yield a tar archive of ``path`` (a file or a directory) in chunks of ``chunk_size`` bytes.

    At most a few chunks are buffered: the archive is produced by a worker
    thread only as fast as it is consumed. Closing the generator early stops
    the thread. A missing ``path`` raises :class:`FileNotFoundError` on the
    first iteration.
    """
    loop = asyncio.get_running_loop()
    pipe = _ChunkPipe(loop, _PIPE_CHUNKS)
    producer = loop.run_in_executor(None, _write_tar, path, pipe, chunk_size)
    try:
        while True:
            item = await pipe.get()
            if item is _END:
                break
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, bytes)
            yield item
    finally:
        pipe.close()
        await producer
